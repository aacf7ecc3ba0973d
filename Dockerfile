# syntax=docker/dockerfile:1
# One image for both sides of lockcell:
#   cells:     lockcell serve                 (what the operator's StatefulSets run)
#   operator:  kopf run --standalone --all-namespaces --module=lockcell_operator.handlers
# Multi-stage: the build stage installs into a virtualenv; only that virtualenv is copied
# into the final slim image, so no compilers, pip caches or sources are left behind.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/lockcell
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY operator ./operator
RUN /opt/lockcell/bin/pip install . \
 && /opt/lockcell/bin/python -m compileall -q /opt/lockcell/lib \
 && /opt/lockcell/bin/pip uninstall --yes pip

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="lockcell" \
      org.opencontainers.image.description="Chubby-style lock service cells and their Kubernetes operator"
ENV PATH=/opt/lockcell/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 lockcell \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/lockcell \
      --no-create-home --shell /usr/sbin/nologin lockcell \
 && mkdir -p /var/lib/lockcell \
 && chown 10001:10001 /var/lib/lockcell
COPY --from=build /opt/lockcell /opt/lockcell
USER 10001:10001
WORKDIR /var/lib/lockcell
# 7001 client API, 7101 peer transport, 8080 operator liveness.
EXPOSE 7001 7101 8080
CMD ["lockcell", "serve"]
