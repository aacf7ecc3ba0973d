"""A small PromQL parser for the tests: enough of the grammar and type rules for dashboards.

No pure-Python PromQL parser is on PyPI (``promql-parser`` wraps the Rust crate in a
compiled extension; ``promqlpy`` builds Go); this one covers what Prometheus' own parser
checks that matters here: tokens, operator precedence, binary modifiers (``bool``, ``on``,
``ignoring``, ``group_left/right``), aggregations with ``by``/``without`` and parameters,
functions with their argument types, range vectors, subqueries, ``offset`` and ``@``, and
the value types (scalar, instant vector, range vector, string). :func:`parse` returns the
query's type and the selectors and groupings in it; it raises :class:`PromQLError`.

Grafana's interval variables (``$__rate_interval``, ``$__interval``, ``$__range`` and the
``${...}`` forms) become ``5m`` first; any other ``$variable`` must sit inside a string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

SCALAR, VECTOR, MATRIX, STRING = "scalar", "vector", "matrix", "string"


class PromQLError(ValueError):
    """The query does not parse or does not type-check."""


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str


@dataclass(frozen=True)
class Selector:
    metric: str | None
    matchers: tuple[Matcher, ...]

    def names(self) -> set[str]:
        """Metric names the selector can match exactly (name or ``__name__="..."``)."""
        names = {self.metric} if self.metric else set()
        names |= {m.value for m in self.matchers if m.label == "__name__" and m.op == "="}
        return names


@dataclass
class Grouping:
    labels: tuple[str, ...]
    without: bool
    selectors: list[Selector]


@dataclass
class Query:
    type: str
    selectors: list[Selector] = field(default_factory=list)
    groupings: list[Grouping] = field(default_factory=list)

    def metric_names(self) -> set[str]:
        names: set[str] = set()
        for s in self.selectors:
            names |= s.names()
        return names


AGGREGATIONS = {
    "sum": None, "avg": None, "min": None, "max": None, "count": None, "group": None,
    "stddev": None, "stdvar": None, "topk": SCALAR, "bottomk": SCALAR, "quantile": SCALAR,
    "count_values": STRING, "limitk": SCALAR, "limit_ratio": SCALAR,
}

V, M, S, T = VECTOR, MATRIX, SCALAR, STRING
# name → (argument types, how many may be left out at the end, variadic last, result type)
FUNCTIONS: dict[str, tuple[tuple[str, ...], int, bool, str]] = {
    "abs": ((V,), 0, False, V), "absent": ((V,), 0, False, V),
    "absent_over_time": ((M,), 0, False, V), "ceil": ((V,), 0, False, V),
    "changes": ((M,), 0, False, V), "clamp": ((V, S, S), 0, False, V),
    "clamp_max": ((V, S), 0, False, V), "clamp_min": ((V, S), 0, False, V),
    "day_of_month": ((V,), 1, False, V), "day_of_week": ((V,), 1, False, V),
    "day_of_year": ((V,), 1, False, V), "days_in_month": ((V,), 1, False, V),
    "delta": ((M,), 0, False, V), "deriv": ((M,), 0, False, V), "exp": ((V,), 0, False, V),
    "floor": ((V,), 0, False, V), "histogram_avg": ((V,), 0, False, V),
    "histogram_count": ((V,), 0, False, V), "histogram_sum": ((V,), 0, False, V),
    "histogram_fraction": ((S, S, V), 0, False, V),
    "histogram_quantile": ((S, V), 0, False, V), "holt_winters": ((M, S, S), 0, False, V),
    "hour": ((V,), 1, False, V), "idelta": ((M,), 0, False, V),
    "increase": ((M,), 0, False, V), "irate": ((M,), 0, False, V),
    "label_join": ((V, T, T, T), 0, True, V), "label_replace": ((V, T, T, T, T), 0, False, V),
    "ln": ((V,), 0, False, V), "log2": ((V,), 0, False, V), "log10": ((V,), 0, False, V),
    "minute": ((V,), 1, False, V), "month": ((V,), 1, False, V),
    "predict_linear": ((M, S), 0, False, V), "rate": ((M,), 0, False, V),
    "resets": ((M,), 0, False, V), "round": ((V, S), 1, False, V),
    "scalar": ((V,), 0, False, S), "sgn": ((V,), 0, False, V), "sort": ((V,), 0, False, V),
    "sort_desc": ((V,), 0, False, V), "sqrt": ((V,), 0, False, V),
    "time": ((), 0, False, S), "timestamp": ((V,), 0, False, V),
    "vector": ((S,), 0, False, V), "year": ((V,), 1, False, V),
    "avg_over_time": ((M,), 0, False, V), "min_over_time": ((M,), 0, False, V),
    "max_over_time": ((M,), 0, False, V), "sum_over_time": ((M,), 0, False, V),
    "count_over_time": ((M,), 0, False, V), "stddev_over_time": ((M,), 0, False, V),
    "stdvar_over_time": ((M,), 0, False, V), "last_over_time": ((M,), 0, False, V),
    "present_over_time": ((M,), 0, False, V), "quantile_over_time": ((S, M), 0, False, V),
    "acos": ((V,), 0, False, V), "asin": ((V,), 0, False, V), "atan": ((V,), 0, False, V),
    "cos": ((V,), 0, False, V), "sin": ((V,), 0, False, V), "tan": ((V,), 0, False, V),
    "deg": ((V,), 0, False, V), "rad": ((V,), 0, False, V), "pi": ((), 0, False, S),
}

COMPARISONS = {"==", "!=", "<", ">", "<=", ">="}
SET_OPS = {"and", "or", "unless"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
            "and", "or", "unless", "atan2"}

_GRAFANA_INTERVALS = re.compile(r"\$__(rate_interval|interval|range)(_ms|_s)?\b|"
                                r"\$\{__(rate_interval|interval|range)\}")
_TOKEN = re.compile(r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+)(?![A-Za-z0-9_])
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?![A-Za-z_:])
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|`[^`]*`)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_:]*)
  | (?P<op>==|!=|<=|>=|=~|!~|[-+*/%^<>=(){}\[\],:@])
""", re.VERBOSE)
_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    pos: int


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise PromQLError(f"unexpected character {text[pos]!r} at {pos}: {text!r}")
        kind = m.lastgroup or ""
        if kind != "ws":
            tokens.append(Token(kind, m.group(), pos))
        pos = m.end()
    tokens.append(Token("eof", "", len(text)))
    return tokens


def _unquote(raw: str) -> str:
    if raw[0] == "`":
        return raw[1:-1]
    body = raw[1:-1]
    try:
        return body.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as exc:
        raise PromQLError(f"bad escape in {raw}") from exc


@dataclass
class _Node:
    type: str
    is_selector: bool = False
    selectors: list[Selector] = field(default_factory=list)
    number: float | None = None
    offsettable: bool = False


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.groupings: list[Grouping] = []

    # --------------------------------------------------------------- token helpers
    def peek(self, offset: int = 0) -> Token:
        return self.tokens[min(self.i + offset, len(self.tokens) - 1)]

    def next(self) -> Token:
        tok = self.peek()
        self.i += 1
        return tok

    def at(self, *texts: str) -> bool:
        tok = self.peek()
        return tok.kind in ("op", "ident") and tok.text in texts

    def expect(self, text: str) -> Token:
        tok = self.next()
        if tok.text != text:
            self.fail(f"expected {text!r}, found {tok.text or 'end of query'!r}", tok)
        return tok

    def fail(self, message: str, tok: Token | None = None) -> None:
        where = (tok or self.peek()).pos
        raise PromQLError(f"{message} at {where}: {self.text!r}")

    # --------------------------------------------------------------- grammar
    def parse(self) -> Query:
        if self.peek().kind == "eof":
            self.fail("empty query")
        node = self.expr()
        if self.peek().kind != "eof":
            self.fail(f"unexpected {self.peek().text!r}")
        return Query(node.type, node.selectors, self.groupings)

    def expr(self) -> _Node:
        return self.binary(0)

    _LEVELS: tuple[frozenset[str], ...] = (
        frozenset({"or"}), frozenset({"and", "unless"}), frozenset(COMPARISONS),
        frozenset({"+", "-"}), frozenset({"*", "/", "%", "atan2"}),
    )

    def binary(self, level: int) -> _Node:
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while self.peek().kind in ("op", "ident") and self.peek().text in self._LEVELS[level]:
            op = self.next().text
            is_bool = False
            if self.at("bool"):
                if op not in COMPARISONS:
                    self.fail("bool is only for comparisons")
                self.next()
                is_bool = True
            matching = self.binary_modifiers(op)
            right = self.binary(level + 1)
            left = self.combine(op, left, right, is_bool, matching)
        return left

    def binary_modifiers(self, op: str) -> bool:
        if not self.at("on", "ignoring"):
            return False
        self.next()
        self.label_list()
        if self.at("group_left", "group_right"):
            if op in SET_OPS:
                self.fail("group modifiers do not apply to set operators")
            self.next()
            if self.at("("):
                self.label_list()
        return True

    def combine(self, op: str, left: _Node, right: _Node, is_bool: bool,
                matching: bool) -> _Node:
        for side in (left, right):
            if side.type not in (SCALAR, VECTOR):
                self.fail(f"binary {op} needs scalars or instant vectors, not {side.type}")
        both_scalar = left.type == SCALAR and right.type == SCALAR
        if op in SET_OPS and (left.type != VECTOR or right.type != VECTOR):
            self.fail(f"set operator {op} needs instant vectors on both sides")
        if op in COMPARISONS and both_scalar and not is_bool:
            self.fail("comparisons between scalars need bool")
        if matching and (left.type != VECTOR or right.type != VECTOR):
            self.fail("vector matching needs instant vectors on both sides")
        kind = SCALAR if both_scalar else VECTOR
        return _Node(kind, selectors=left.selectors + right.selectors)

    def unary(self) -> _Node:
        if self.at("-", "+"):
            self.next()
            node = self.unary()
            if node.type not in (SCALAR, VECTOR):
                self.fail("unary sign needs a scalar or an instant vector")
            return _Node(node.type, selectors=node.selectors)
        return self.power()

    def power(self) -> _Node:
        base = self.postfix()
        if self.at("^"):
            self.next()
            matching = self.binary_modifiers("^")
            exponent = self.unary() if self.at("-", "+") else self.power()
            return self.combine("^", base, exponent, False, matching)
        return base

    def postfix(self) -> _Node:
        node = self.primary()
        while True:
            if self.at("["):
                self.next()
                self.duration()
                if self.at(":"):
                    self.next()
                    if not self.at("]"):
                        self.duration()
                    if node.type != VECTOR:
                        self.fail(f"subquery needs an instant vector, not {node.type}")
                else:
                    if not node.is_selector:
                        self.fail("a range needs a vector selector (use a subquery [r:s])")
                self.expect("]")
                node = _Node(MATRIX, selectors=node.selectors, offsettable=True)
            elif self.at("offset"):
                self.next()
                if self.at("-"):
                    self.next()
                self.duration()
                if not node.offsettable:
                    self.fail("offset needs a selector or subquery")
            elif self.at("@"):
                self.next()
                tok = self.next()
                if tok.kind == "ident" and tok.text in ("start", "end"):
                    self.expect("(")
                    self.expect(")")
                elif tok.kind != "number":
                    self.fail("@ needs a timestamp, start() or end()", tok)
            else:
                return node

    def duration(self) -> None:
        tok = self.next()
        if tok.kind != "duration":
            self.fail(f"expected a duration, found {tok.text!r}", tok)

    def primary(self) -> _Node:
        tok = self.peek()
        if tok.kind == "number":
            self.next()
            return _Node(SCALAR, number=float(int(tok.text, 16)) if tok.text[:2].lower() == "0x"
                         else float(tok.text))
        if tok.kind == "string":
            self.next()
            _unquote(tok.text)
            return _Node(STRING)
        if tok.kind == "duration":
            self.fail(f"a duration ({tok.text}) outside a range or offset", tok)
        if self.at("("):
            self.next()
            node = self.expr()
            self.expect(")")
            return _Node(node.type, selectors=node.selectors, number=node.number)
        if self.at("{"):
            return self.selector(None)
        if tok.kind == "ident":
            name = tok.text
            if name.lower() in ("inf", "nan"):
                self.next()
                return _Node(SCALAR, number=float(name))
            if name in AGGREGATIONS and self.peek(1).text in ("(", "by", "without"):
                return self.aggregation()
            if self.peek(1).text == "(" and self.peek(1).kind == "op":
                if name not in FUNCTIONS:
                    self.fail(f"unknown function {name}")
                return self.call()
            if name in KEYWORDS:
                self.fail(f"unexpected keyword {name}")
            self.next()
            return self.selector(name)
        self.fail(f"unexpected {tok.text or 'end of query'!r}")
        raise AssertionError  # unreachable

    def selector(self, metric: str | None) -> _Node:
        matchers: list[Matcher] = []
        if self.at("{"):
            self.next()
            while not self.at("}"):
                label = self.next()
                if label.kind != "ident" or not _LABEL.match(label.text):
                    self.fail(f"bad label name {label.text!r}", label)
                op = self.next()
                if op.text not in ("=", "!=", "=~", "!~"):
                    self.fail(f"bad matcher operator {op.text!r}", op)
                value = self.next()
                if value.kind != "string":
                    self.fail("a matcher's value must be a string", value)
                text = _unquote(value.text)
                if op.text in ("=~", "!~"):
                    try:
                        re.compile(text.replace("$", "_"))
                    except re.error as exc:
                        self.fail(f"bad regex {text!r}: {exc}", value)
                matchers.append(Matcher(label.text, op.text, text))
                if self.at(","):
                    self.next()
                elif not self.at("}"):
                    self.fail("expected ',' or '}'")
            self.next()
        if metric is None and all(_matches_empty(m) for m in matchers):
            self.fail("a selector needs a metric name or a matcher that excludes the empty "
                      "string")
        sel = Selector(metric, tuple(matchers))
        return _Node(VECTOR, is_selector=True, selectors=[sel], offsettable=True)

    def label_list(self) -> tuple[str, ...]:
        self.expect("(")
        labels: list[str] = []
        while not self.at(")"):
            tok = self.next()
            if tok.kind != "ident" or not _LABEL.match(tok.text):
                self.fail(f"bad label name {tok.text!r}", tok)
            labels.append(tok.text)
            if self.at(","):
                self.next()
            elif not self.at(")"):
                self.fail("expected ',' or ')'")
        self.next()
        return tuple(labels)

    def aggregation(self) -> _Node:
        name = self.next().text
        grouping: tuple[str, ...] | None = None
        without = False
        if self.at("by", "without"):
            without = self.next().text == "without"
            grouping = self.label_list()
        self.expect("(")
        param_type = AGGREGATIONS[name]
        if param_type is not None:
            param = self.expr()
            if param.type != param_type:
                self.fail(f"{name}'s parameter must be a {param_type}")
            self.expect(",")
        inner = self.expr()
        if inner.type != VECTOR:
            self.fail(f"{name} needs an instant vector, not {inner.type}")
        self.expect(")")
        if self.at("by", "without"):
            if grouping is not None:
                self.fail("grouping given twice")
            without = self.next().text == "without"
            grouping = self.label_list()
        if grouping is not None:
            self.groupings.append(Grouping(grouping, without, list(inner.selectors)))
        return _Node(VECTOR, selectors=inner.selectors)

    def call(self) -> _Node:
        name = self.next().text
        types, optional, variadic, result = FUNCTIONS[name]
        self.expect("(")
        args: list[_Node] = []
        while not self.at(")"):
            args.append(self.expr())
            if self.at(","):
                self.next()
                if self.at(")"):
                    self.fail("trailing comma in a call")
            elif not self.at(")"):
                self.fail("expected ',' or ')'")
        self.next()
        low = len(types) - optional
        if len(args) < low or (len(args) > len(types) and not variadic):
            self.fail(f"{name} takes {low}..{len(types)} arguments, got {len(args)}")
        selectors: list[Selector] = []
        for i, arg in enumerate(args):
            want = types[min(i, len(types) - 1)]
            if arg.type != want:
                self.fail(f"argument {i + 1} of {name} must be a {want}, not {arg.type}")
            selectors += arg.selectors
        return _Node(result, selectors=selectors)


def _matches_empty(m: Matcher) -> bool:
    if m.op == "=":
        return m.value == ""
    if m.op == "!=":
        return m.value != ""
    matched = re.fullmatch(m.value, "") is not None
    return matched if m.op == "=~" else not matched


def substitute_grafana(text: str) -> str:
    """Grafana's interval variables → 5m; other variables stay (they must be in strings)."""
    return _GRAFANA_INTERVALS.sub("5m", text)


def parse(text: str) -> Query:
    """Parse and type-check a PromQL query (Grafana interval variables allowed)."""
    text = substitute_grafana(text)
    outside = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', text)
    if "$" in outside:
        raise PromQLError(f"a Grafana variable outside a string: {text!r}")
    return _Parser(text).parse()
