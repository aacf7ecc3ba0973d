"""History checkers for the chaos tests: linearizability, lock safety, sessions, durability.

All checkers are pure functions over recorded histories, so they can be unit-tested on
hand-made (known-good and known-bad) histories and re-run on a saved history for replay.

Register model (one per file): the state is ``(data, content_generation)``.

* ``read`` (GetContentsAndStat) returns ``(data, generation)`` and must equal the state;
* ``write`` (SetContents) sets the data; the content generation grows by exactly one per
  write (the cell's observed behaviour, see the probe in the chaos report); an ok write
  returns the new generation;
* ``cas`` (SetContents with ``if_generation``) writes only if the generation equals the
  expected one; a ``fail`` outcome (409 conflict) means the generation differed.

Outcomes: ``ok`` and ``fail`` are definite; ``unknown`` (timeout, connection lost, 503 of a
write that may have been forwarded) may or may not have taken effect, at any time after the
invocation. Unknown reads are dropped (they cannot change the state).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

INF = float("inf")


# --------------------------------------------------------------------------- ops


@dataclass
class Op:
    """One register operation of a client on a key (file)."""

    key: str
    kind: str  # "read" | "write" | "cas"
    invoke: float
    complete: float | None  # None: unknown outcome (never completed as far as we know)
    status: str  # "ok" | "fail" | "unknown"
    value: str | None = None  # write/cas: the data written
    expect: int | None = None  # cas: the expected generation
    out_value: str | None = None  # read: data read
    out_gen: int | None = None  # read/write/cas ok: the generation answered
    client: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(raw: dict[str, Any]) -> Op:
        return Op(**raw)


@dataclass
class CheckResult:
    """A checker's verdict; ``problems`` explain every violation found."""

    ok: bool
    problems: list[str] = field(default_factory=list)
    checked: int = 0

    def __bool__(self) -> bool:
        return self.ok


def _step(state: tuple[str, int], op: Op) -> tuple[bool, tuple[str, int]]:
    """Apply ``op`` to the register ``state``: (legal?, new state)."""
    value, gen = state
    if op.kind == "read":
        return (op.out_value == value and op.out_gen == gen), state
    if op.kind == "write":
        assert op.value is not None
        if op.status == "ok" and op.out_gen is not None and op.out_gen != gen + 1:
            return False, state
        return True, (op.value, gen + 1)
    if op.kind == "cas":
        assert op.value is not None
        if op.status == "fail":
            return gen != op.expect, state
        if gen != op.expect:
            return False, state
        if op.status == "ok" and op.out_gen is not None and op.out_gen != gen + 1:
            return False, state
        return True, (op.value, gen + 1)
    raise ValueError(f"unknown op kind {op.kind}")


def check_register(ops: Sequence[Op], init: tuple[str, int],
                   max_states: int = 2_000_000) -> CheckResult:
    """Wing-Gong/Lowe search (porcupine style) with memoization on (linearized set, state).

    ``ops`` are the operations on one key. Raises nothing; a search that exceeds
    ``max_states`` is reported as a failure ("undecided") so that it is never silently
    passed.
    """
    useful = [o for o in ops if not (o.kind == "read" and o.status != "ok")]
    n = len(useful)
    if n == 0:
        return CheckResult(True, checked=0)
    # events: (time, order, is_return, op index); calls sort before returns at equal times
    events: list[tuple[float, int, int]] = []
    for i, o in enumerate(useful):
        events.append((o.invoke, 0, i))
        done = o.complete if (o.status != "unknown" and o.complete is not None) else INF
        events.append((done, 1, i))
    events.sort()
    # a doubly linked list over events (index 0 is the head sentinel)
    size = len(events) + 1
    nxt = list(range(1, size + 1))
    prv = list(range(-1, size - 1))
    nxt[size - 1] = -1
    kind = [0] + [e[1] for e in events]  # 0 call, 1 return
    opi = [-1] + [e[2] for e in events]
    match = [0] * size  # call node -> its return node
    call_node = {}
    for node in range(1, size):
        if kind[node] == 0:
            call_node[opi[node]] = node
        else:
            match[call_node[opi[node]]] = node
    unknown = [useful[i].status == "unknown" for i in range(n)]

    def lift(node: int) -> None:
        prv_node, nxt_node = prv[node], nxt[node]
        nxt[prv_node] = nxt_node
        if nxt_node != -1:
            prv[nxt_node] = prv_node
        ret = match[node]
        prv_ret, nxt_ret = prv[ret], nxt[ret]
        nxt[prv_ret] = nxt_ret
        if nxt_ret != -1:
            prv[nxt_ret] = prv_ret

    def unlift(node: int) -> None:
        ret = match[node]
        nxt[prv[ret]] = ret
        if nxt[ret] != -1:
            prv[nxt[ret]] = ret
        nxt[prv[node]] = node
        if nxt[node] != -1:
            prv[nxt[node]] = node

    cache: set[tuple[int, tuple[str, int]]] = set()
    stack: list[tuple[int, tuple[str, int]]] = []
    state = init
    linearized = 0
    node = nxt[0]
    explored = 0
    deepest = 0
    while True:
        if node == -1 or (kind[node] == 1 and unknown[opi[node]]):
            return CheckResult(True, checked=n)
        explored += 1
        if explored > max_states:
            return CheckResult(False, [f"undecided: search exceeded {max_states} steps"], n)
        if kind[node] == 0:
            legal, new_state = _step(state, useful[opi[node]])
            if legal:
                bits = linearized | (1 << opi[node])
                if (bits, new_state) not in cache:
                    cache.add((bits, new_state))
                    stack.append((node, state))
                    state = new_state
                    linearized = bits
                    lift(node)
                    deepest = max(deepest, len(stack))
                    node = nxt[0]
                    continue
            node = nxt[node]
            continue
        # a return whose op is not linearized yet: backtrack
        if not stack:
            first = useful[opi[node]]
            return CheckResult(False, [
                f"not linearizable: no order explains the history of {first.key!r} "
                f"(longest linearizable prefix {deepest} of {n} ops; stuck at {first})"], n)
        top, state = stack.pop()
        linearized &= ~(1 << opi[top])
        unlift(top)
        node = nxt[top]


def check_linearizable(ops: Iterable[Op], inits: dict[str, tuple[str, int]]) -> CheckResult:
    """Check every key's sub-history (registers compose: P-compositionality)."""
    by_key: dict[str, list[Op]] = {}
    for o in ops:
        by_key.setdefault(o.key, []).append(o)
    problems: list[str] = []
    checked = 0
    for key, key_ops in sorted(by_key.items()):
        result = check_register(key_ops, inits[key])
        checked += result.checked
        problems += result.problems
    return CheckResult(not problems, problems, checked)


# --------------------------------------------------------------------------- locks


@dataclass
class Admission:
    """One request a fenced resource received: who, with which generation, accepted?"""

    t: float  # resource clock at admission
    owner: str  # the holder (session id / worker name)
    path: str
    generation: int
    accepted: bool
    section: int  # the holder's critical-section number (one per lock grant it got)
    end: float | None = None  # resource clock when the guarded operation finished
    late: bool = False  # sent after the holder released that grant: known to be stale


def check_lock_safety(admissions: Sequence[Admission]) -> CheckResult:
    """Critical sections accepted by the fenced resource never overlap, and the resource
    never accepts a generation lower than one it already accepted (per lock path), nor a
    sequencer known to be stale (``late``: its grant was released before it was sent); one
    exclusive generation never belongs to two holders."""
    problems: list[str] = []
    per_path: dict[str, list[Admission]] = {}
    checked = 0
    for a in admissions:
        if a.late:
            checked += 1
            if a.accepted:
                problems.append(f"{a.path}: stale sequencer (generation {a.generation}, "
                                f"released by {a.owner!r}) accepted at {a.t:.4f}")
            continue
        if a.accepted:
            per_path.setdefault(a.path, []).append(a)
    for path, accepted in per_path.items():
        accepted.sort(key=lambda a: a.t)
        highest = None
        owner_of: dict[int, str] = {}
        for a in accepted:
            checked += 1
            if highest is not None and a.generation < highest:
                problems.append(f"{path}: accepted generation {a.generation} at {a.t:.4f} after "
                                f"generation {highest}")
            highest = a.generation if highest is None else max(highest, a.generation)
            prev = owner_of.setdefault(a.generation, a.owner)
            if prev != a.owner:
                problems.append(f"{path}: generation {a.generation} accepted for two holders "
                                f"{prev!r} and {a.owner!r}")
        # critical sections: [first start, last end] of every (owner, section)
        spans: dict[tuple[str, int], list[float]] = {}
        for a in accepted:
            end = a.end if a.end is not None else a.t
            span = spans.setdefault((a.owner, a.section), [a.t, end])
            span[0], span[1] = min(span[0], a.t), max(span[1], end)
        ordered = sorted(spans.items(), key=lambda kv: kv[1][0])
        latest_end, latest_key = -INF, None
        for key, (s, e) in ordered:
            if latest_key is not None and s < latest_end:
                problems.append(f"{path}: critical sections overlap: {latest_key} (until "
                                f"{latest_end:.4f}) and {key} [{s:.4f},{e:.4f}]")
            if e > latest_end:
                latest_end, latest_key = e, key
    # de-duplicate (an overlap may be found by both passes)
    seen: set[str] = set()
    unique = [p for p in problems if not (p in seen or seen.add(p))]
    return CheckResult(not unique, unique, checked)


# --------------------------------------------------------------------------- sessions


@dataclass
class SessionLoss:
    """A session abandoned by its client (no more KeepAlives after ``last_keepalive_sent``).

    ``valid_ms``: what the last KeepAlive (or CreateSession) answer granted; the server
    cannot expire the session before ``last_keepalive_sent + valid_ms`` (client clock).
    ``confirmed_expired_at``: client clock when the cell first answered 410 for it.
    """

    session: str
    last_keepalive_sent: float
    valid_ms: int
    ephemeral_paths: list[str]
    locks: dict[str, int]  # path -> lock_delay_ms granted at Open
    confirmed_expired_at: float | None = None


@dataclass
class Observation:
    """``path`` existed (or not) in a read that was invoked at ``t`` (client clock)."""

    t: float
    path: str
    exists: bool


@dataclass
class Grant:
    """Another session's Acquire on ``path`` returned a grant at ``t`` (client clock)."""

    t: float
    path: str
    session: str


def check_sessions(losses: Sequence[SessionLoss], observations: Sequence[Observation],
                   grants: Sequence[Grant]) -> CheckResult:
    """An expired session's ephemeral files are gone once its expiry was confirmed, and its
    locks go to nobody else before its lock-delay ends (expiry ≥ last KeepAlive sent +
    valid_ms; a grant to another session must return no sooner than that + lock-delay)."""
    problems: list[str] = []
    checked = 0
    for loss in losses:
        if loss.confirmed_expired_at is not None:
            for obs in observations:
                if obs.path in loss.ephemeral_paths and obs.t >= loss.confirmed_expired_at:
                    checked += 1
                    if obs.exists:
                        problems.append(
                            f"ephemeral {obs.path} of expired session {loss.session} still "
                            f"exists at {obs.t:.3f} (expiry confirmed at "
                            f"{loss.confirmed_expired_at:.3f})")
        earliest_expiry = loss.last_keepalive_sent + loss.valid_ms / 1000.0
        for g in grants:
            if g.session == loss.session or g.path not in loss.locks:
                continue
            checked += 1
            free_at = earliest_expiry + loss.locks[g.path] / 1000.0
            if g.t < free_at:
                problems.append(
                    f"lock {g.path} of lost session {loss.session} granted to {g.session} at "
                    f"{g.t:.3f}, before its lock-delay could end ({free_at:.3f})")
    return CheckResult(not problems, problems, checked)


def check_no_lost_writes(ops: Sequence[Op], finals: dict[str, tuple[str, int]]) -> CheckResult:
    """No acknowledged write is lost: every read invoked after a write was acknowledged
    sees that write's generation or a later one, and the final state of each key is at
    least the highest acknowledged generation (with that write's data if equal)."""
    problems: list[str] = []
    acked = [o for o in ops if o.kind in ("write", "cas") and o.status == "ok"
             and o.out_gen is not None]
    reads = [o for o in ops if o.kind == "read" and o.status == "ok"]
    checked = 0
    for key in {o.key for o in acked}:
        key_acks = sorted((o for o in acked if o.key == key), key=lambda o: o.complete or 0)
        top = max(key_acks, key=lambda o: o.out_gen or 0)
        if key in finals:
            checked += 1
            data, gen = finals[key]
            assert top.out_gen is not None
            if gen < top.out_gen or (gen == top.out_gen and data != top.value):
                problems.append(f"{key}: acknowledged write gen {top.out_gen} "
                                f"({top.value!r}) lost; final state gen {gen} ({data!r})")
        for r in reads:
            if r.key != key:
                continue
            before = [w.out_gen for w in key_acks
                      if w.complete is not None and w.complete < r.invoke]
            if before:
                checked += 1
                assert r.out_gen is not None
                if r.out_gen < max(g for g in before if g is not None):
                    problems.append(f"{key}: read at {r.invoke:.4f} saw gen {r.out_gen} after "
                                    f"gen {max(before)} (lost or stale)")  # type: ignore[type-var]
    return CheckResult(not problems, problems, checked)


def dump_history(path: str, ops: Sequence[Op], inits: dict[str, tuple[str, int]]) -> None:
    """Save a register history for replay (``load_history``)."""
    with open(path, "w") as out:
        json.dump({"inits": {k: list(v) for k, v in inits.items()},
                   "ops": [o.to_json() for o in ops]}, out)


def load_history(path: str) -> tuple[list[Op], dict[str, tuple[str, int]]]:
    with open(path) as src:
        raw = json.load(src)
    return ([Op.from_json(o) for o in raw["ops"]],
            {k: (v[0], int(v[1])) for k, v in raw["inits"].items()})
