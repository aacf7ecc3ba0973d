"""The loop histogram renders exactly what prometheus-client's Histogram and Counter do."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from lockcell.observability.metrics import LoopHistogram

BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 1, 2.5, 60)


def _render_both(observations: list[tuple[str, float]]) -> tuple[bytes, bytes]:
    ours = CollectorRegistry()
    loop = LoopHistogram("x_seconds", "Latency", ("route",), BOUNDS, ours,
                         counter=("x_requests_total", "Requests"))
    theirs = CollectorRegistry()
    histogram = Histogram("x_seconds", "Latency", ["route"], buckets=BOUNDS, registry=theirs)
    counter = Counter("x_requests", "Requests", ["route"], registry=theirs)
    for route, value in observations:
        loop.labels(route).observe(value)
        histogram.labels(route).observe(value)
        counter.labels(route).inc()
    return generate_latest(ours), generate_latest(theirs)


def _samples(text: bytes) -> set[str]:
    return {line for line in text.decode().splitlines()
            if line and not line.startswith("#") and "_created" not in line}


def _types(text: bytes) -> set[str]:
    return {line for line in text.decode().splitlines()
            if line.startswith("# TYPE") and "_created" not in line}


def test_values_on_a_bound_count_in_that_bucket() -> None:
    ours, theirs = _render_both([("a", 0.001), ("a", 0.0010001), ("b", 60.0), ("b", 61.0)])
    assert _samples(ours) == _samples(theirs)
    assert _types(ours) == _types(theirs)
    assert 'x_seconds_bucket{le="0.001",route="a"} 1.0' in _samples(ours)
    assert 'x_seconds_bucket{le="+Inf",route="b"} 2.0' in _samples(ours)
    assert 'x_requests_total{route="b"} 2.0' in _samples(ours)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]),
                          st.floats(min_value=0, max_value=100, allow_nan=False)),
                max_size=40))
def test_any_observations_render_as_prometheus_client_renders_them(
        observations: list[tuple[str, float]]) -> None:
    ours, theirs = _render_both(observations)
    assert _samples(ours) == _samples(theirs)
