"""The tests' PromQL parser accepts what Prometheus accepts and refuses what it refuses
(for the grammar the dashboards use; checked once against the promql-parser package)."""

from __future__ import annotations

import pytest

from .promql import MATRIX, SCALAR, VECTOR, PromQLError, parse

GOOD = [
    ("sum(rate(x[5m]))", VECTOR),
    ("a + on(b) group_left(c) d", VECTOR),
    ("a / ignoring(le) group_right b", VECTOR),
    ("1 + 2 * 3 ^ 2", SCALAR),
    ("1 > bool 2", SCALAR),
    ("x > bool 1", VECTOR),
    ("-x ^ 2", VECTOR),
    ("topk(3, x)", VECTOR),
    ('count_values("v", x)', VECTOR),
    ("quantile(0.9, x)", VECTOR),
    ("x offset 5m", VECTOR),
    ("x offset -1h", VECTOR),
    ("rate(x[5m] offset 1h)", VECTOR),
    ("max_over_time(rate(x[5m])[1h:1m])", VECTOR),
    ("x[5m:]", MATRIX),
    ("x[1h30m]", MATRIX),
    ('{__name__="a"}', VECTOR),
    ("x @ start()", VECTOR),
    ("x @ 1700000000", VECTOR),
    ("sum by (a) (x) / ignoring(b) y", VECTOR),
    ("sum(x) by (y)", VECTOR),
    ("avg without (le) (x)", VECTOR),
    ('label_replace(x, "a", "$1", "b", "(.*)")', VECTOR),
    ('label_join(x, "a", ",", "b", "c", "d")', VECTOR),
    ("0x1f", SCALAR),
    ("Inf", SCALAR),
    ('x{a="b",}', VECTOR),
    ("a:b:c", VECTOR),
    ("time()", SCALAR),
    ("vector(1) or x", VECTOR),
    ("round(x)", VECTOR),
    ("round(x, 0.5)", VECTOR),
    ("x and on() y unless z", VECTOR),
    ("histogram_quantile(0.99, sum by (le) (rate(m_bucket{a=~\"$x\"}[$__rate_interval])))",
     VECTOR),
    ("increase(x[$__range])", VECTOR),
    ("# a comment\nx", VECTOR),
]

BAD = [
    "", "rate(x)", "sum(x[5m])", "x[5m] + 1", "1 > 2", "x and 1", "1 and 2", "{}", '{a=""}',
    "foo(x)", "sum(x", "x{a=b}", "x offset", "(x + y)[5m]", "sum(x) offset 5m", "topk(x)",
    "histogram_quantile(x, y)", "x $y", "5m", 'x{a=~"("}', "round()", "sum by (a) (x) by (b)",
    "x + ", "x y", "sum(x) by", "x == bool", "x + bool y", "rate(x[5m]", "x{a=\"b\"",
    "x and on(a) group_left y", "abs(1)", "scalar(x[5m])", "x[5]", "x[5m] offset",
]


@pytest.mark.parametrize(("query", "kind"), GOOD, ids=[g[0] for g in GOOD])
def test_accepts(query: str, kind: str) -> None:
    assert parse(query).type == kind


@pytest.mark.parametrize("query", BAD)
def test_refuses(query: str) -> None:
    with pytest.raises(PromQLError):
        parse(query)


def test_reports_selectors_and_groupings() -> None:
    q = parse('sum by (mode, le) (rate(a_bucket{x="1", y=~"2|3"}[5m])) / on() group_left '
              'max(b{__name__="c"})')
    assert q.metric_names() == {"a_bucket", "b", "c"}
    assert [g.labels for g in q.groupings] == [("mode", "le")]
    (first, _) = q.selectors
    assert [(m.label, m.op, m.value) for m in first.matchers] == [("x", "=", "1"),
                                                                  ("y", "=~", "2|3")]
