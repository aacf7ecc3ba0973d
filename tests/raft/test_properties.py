"""Property tests (hypothesis): the Raft log, quorum arithmetic, membership and codecs."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lockcell.raft.confchange import ConfChangeError, apply_conf_change
from lockcell.raft.log import RaftLog
from lockcell.raft.tracker import VoteResult, joint_index, majority_index, vote_result
from lockcell.raft.types import (
    ChangeOp,
    ConfChange,
    ConfState,
    Entry,
    MemberChange,
    Snapshot,
    SnapshotMeta,
)

from .sim import model_conf

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------- RaftLog


def _check_log(log: RaftLog) -> None:
    """Structural invariants of a RaftLog."""
    assert [e.index for e in log.entries] == list(range(log.offset + 1, log.last_index() + 1))
    assert log.offset <= log.committed <= log.last_index()
    assert log.term(log.offset) == log.offset_term
    assert log.term(log.offset - 1) is None or log.offset == 0
    assert log.term(log.last_index() + 1) is None
    assert log.first_index() == log.offset + 1
    assert log.last_term() == (log.entries[-1].term if log.entries else log.offset_term)
    unstable = log.unstable_entries()
    assert list(unstable) == [e for e in log.entries if e.index > log.stable]


ops = st.lists(st.tuples(st.sampled_from(["append", "follow", "commit", "stable", "compact",
                                          "restore"]),
                         st.integers(0, 12), st.integers(0, 12), st.integers(1, 6),
                         st.integers(0, 4)),
               max_size=40)


@SETTINGS
@given(ops)
def test_raft_log_against_a_model(script: list[tuple[str, int, int, int, int]]) -> None:
    """RaftLog keeps Figure 2's receiver rules: append/maybe_append replace exactly the
    conflicting suffix, never touch committed entries, commit never goes back, compaction
    and restore keep the log contiguous; every result matches a plain list model."""
    log = RaftLog(Snapshot(), [], 0)
    model: dict[int, Entry] = {}  # index -> entry, the full (uncompacted) log
    serial = 0

    def make(first: int, n: int, term: int) -> list[Entry]:
        nonlocal serial
        serial += 1
        return [Entry(term + k // 3, first + k, data=f"{serial}.{k}".encode())
                for k in range(n)]

    def model_last() -> int:
        return max(model, default=0)

    for op, a, b, n, t in script:
        committed_before = log.committed
        committed_entries = {i: model[i] for i in range(log.offset + 1, log.committed + 1)}
        if op == "append":
            first = log.committed + 1 + a % (log.last_index() - log.committed + 1)
            entries = make(first, n, 1 + t)
            assert log.append(entries) == first + n - 1
            for i in [i for i in model if i >= first]:
                del model[i]
            model.update({e.index: e for e in entries})
        elif op == "follow":
            prev = max(0, log.offset - 1 + a % (log.last_index() - log.offset + 3))
            real = log.term(prev)
            prev_term = real if (real is not None and b % 4) else b
            entries = make(prev + 1, n % 4, 1 + t)
            if real is not None and entries:  # keep it a plausible leader message
                entries = [Entry(max(e.term, real), e.index, e.kind, e.data) for e in entries]
            conflict = next((e.index for e in entries if e.index > log.offset and
                             log.term(e.index) != e.term), 0)
            if real is None or real != prev_term:
                assert log.maybe_append(prev, prev_term, b, entries) is None
            elif conflict and conflict <= log.committed:
                with pytest.raises(ValueError):
                    log.maybe_append(prev, prev_term, b, entries)
                continue
            else:
                last_new = log.maybe_append(prev, prev_term, b, entries)
                assert last_new == prev + len(entries)
                if conflict:
                    for i in [i for i in model if i >= conflict]:
                        del model[i]
                    model.update({e.index: e for e in entries if e.index >= conflict})
                assert log.committed == max(committed_before, min(b, last_new))
        elif op == "commit":
            target = log.offset + a % (log.last_index() - log.offset + 1)
            log.commit_to(target)
            assert log.committed == max(committed_before, target)
        elif op == "stable":
            index = log.offset + a % (log.last_index() - log.offset + 1)
            before = log.stable
            term = log.term(index)
            log.stable_to(index, term if b % 3 else (term or 0) + 1)
            assert log.stable in (before, index)
        elif op == "compact":
            log.applied = log.offset + a % (log.committed - log.offset + 1)
            at = log.offset + b % (log.applied - log.offset + 1)
            term = log.term(at)
            assert term is not None
            snap = Snapshot(SnapshotMeta(at, term), b"img")
            log.compact(snap, retain=t)
            assert log.offset == max(committed_before and 0, at - t, log.offset)
            assert log.snapshot is snap
        else:  # restore a snapshot beyond our commit index
            at = log.committed + 1 + a
            term = max(1, t + (log.last_term() if log.entries else 1))
            snap = Snapshot(SnapshotMeta(at, term), b"img")
            log.restore(snap)
            assert log.last_index() == log.committed == log.offset == at
            assert log.pending_snapshot is snap
            model = {}
            log.pending_snapshot = None
            log.applied = at
            _check_log(log)
            continue
        _check_log(log)
        assert log.committed >= committed_before
        for i, e in committed_entries.items():  # committed entries never change
            if i > log.offset:
                assert log.entry(i) == e
        for i in range(log.offset + 1, log.last_index() + 1):
            assert log.entry(i) == model[i]
        assert log.last_index() == max(model_last(), log.offset)


@SETTINGS
@given(st.lists(st.integers(1, 6), min_size=1, max_size=15).map(sorted),
       st.integers(0, 20), st.integers(0, 8), st.integers(0, 5))
def test_find_conflict_by_term(terms: list[int], index: int, term: int, offset: int) -> None:
    """The hint a follower returns (and the leader refines) is the largest index at or
    below ``index`` whose term is at most ``term`` (paper §5.3, the optimization at its
    end), or the compaction point if no retained entry qualifies."""
    offset = min(offset, len(terms) - 1)
    entries = [Entry(t, i) for i, t in enumerate(terms, 1)]
    log = RaftLog(Snapshot(SnapshotMeta(offset, terms[offset - 1] if offset else 0)),
                  entries, offset)
    hint = log.find_conflict_by_term(index, term)
    top = min(index, log.last_index())
    if top <= log.offset:  # nothing retained to search: the leader will send a snapshot
        assert hint == top
        return
    expected = next((i for i in range(top, log.offset, -1) if terms[i - 1] <= term),
                    log.offset)
    assert hint == expected


@SETTINGS
@given(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5), st.integers(0, 5))
def test_is_up_to_date(my_index: int, my_term: int, index: int, term: int) -> None:
    """Paper §5.4.1: compare last terms; if equal, the longer log is more up-to-date."""
    entries = [Entry(min(i, my_term) or 1, i) for i in range(1, my_index + 1)]
    log = RaftLog(Snapshot(), entries, 0)
    mine = (log.last_term(), log.last_index())
    assert log.is_up_to_date(index, term) == ((term, index) >= mine)


@SETTINGS
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=12), st.integers(1, 12),
       st.integers(1, 12), st.integers(1, 200))
def test_slice_respects_bounds_and_size(datas: list[bytes], lo: int, hi: int,
                                       limit: int) -> None:
    """Batching (DESIGN §2): a slice is contiguous from ``lo``, never empty when something
    is available, and within ``max_bytes`` unless a single entry is larger."""
    log = RaftLog(Snapshot(), [Entry(1, i, data=d) for i, d in enumerate(datas, 1)], 0)
    lo = min(lo, log.last_index())
    out = log.slice(lo, hi, limit)
    if hi <= lo:
        assert out == []
        return
    assert out and out[0].index == lo
    assert [e.index for e in out] == list(range(lo, lo + len(out)))
    assert out[-1].index < min(hi, log.last_index() + 1)
    assert len(out) == 1 or sum(e.size() for e in out) <= limit


# ---------------------------------------------------------------------- quorum arithmetic

names = st.sampled_from(list("abcdefg"))
acks = st.dictionaries(names, st.integers(0, 20))


def _majority(voters: frozenset[str], acked: dict[str, int]) -> int:
    """Brute force: the largest v that more than half the voters acknowledged."""
    candidates = {0, *(acked.get(v, 0) for v in voters)}
    return max(v for v in candidates
               if sum(acked.get(x, 0) >= v for x in voters) * 2 > len(voters))


@SETTINGS
@given(st.frozensets(names, min_size=1), acks)
def test_majority_index_is_what_a_majority_acknowledged(voters: frozenset[str],
                                                        acked: dict[str, int]) -> None:
    """Paper §5.3: an index is replicated on a majority iff more than half the voters
    acknowledged it; majority_index is the largest such index."""
    assert majority_index(voters, acked) == _majority(voters, acked)


@SETTINGS
@given(st.frozensets(names), st.frozensets(names), acks)
def test_joint_index_needs_both_majorities(incoming: frozenset[str], outgoing: frozenset[str],
                                           acked: dict[str, int]) -> None:
    """Thesis §4.3: in C_old,new an index is committed only with a majority of each."""
    conf = ConfState(voters=incoming, voters_outgoing=outgoing)
    halves = [h for h in (incoming, outgoing) if h]
    expected = min((_majority(h, acked) for h in halves), default=0)
    assert joint_index(conf, acked) == expected


@SETTINGS
@given(st.frozensets(names), st.frozensets(names),
       st.dictionaries(names, st.booleans()))
def test_vote_result_matches_counting(incoming: frozenset[str], outgoing: frozenset[str],
                                      votes: dict[str, bool]) -> None:
    """Thesis §4.3 / paper §5.2: won with a majority of granted votes in each half; lost
    as soon as some half can no longer reach a majority; pending otherwise."""
    conf = ConfState(voters=incoming, voters_outgoing=outgoing)
    halves = [h for h in (incoming, outgoing) if h]
    result = vote_result(conf, votes)
    if not halves:
        assert result is VoteResult.LOST
        return

    def won(h: frozenset[str]) -> bool:
        return sum(votes.get(v) is True for v in h) * 2 > len(h)

    def lost(h: frozenset[str]) -> bool:
        return (len(h) - sum(votes.get(v) is False for v in h)) * 2 <= len(h)

    if any(lost(h) for h in halves):
        assert result is VoteResult.LOST
    elif all(won(h) for h in halves):
        assert result is VoteResult.WON
    else:
        assert result is VoteResult.PENDING
    # whatever the pending voters do, the outcome stays consistent
    granted_all = {**votes, **{v: True for h in halves for v in h if v not in votes}}
    if result is VoteResult.WON or vote_result(conf, granted_all) is not VoteResult.WON:
        assert result is not VoteResult.PENDING or vote_result(conf, granted_all) in (
            VoteResult.WON, VoteResult.LOST)


# ---------------------------------------------------------------------- membership

conf_states = st.builds(
    lambda v, o, learners: ConfState(voters=v, voters_outgoing=o if v else frozenset(),
                                     learners=learners - v - o),
    st.frozensets(names, max_size=4), st.one_of(st.just(frozenset()),
                                               st.frozensets(names, max_size=4)),
    st.frozensets(names, max_size=3))
changes = st.builds(lambda cs: ConfChange(tuple(cs)), st.lists(
    st.builds(MemberChange, st.sampled_from(list(ChangeOp)), st.sampled_from([*"abcdefg", ""])),
    max_size=4))


@SETTINGS
@given(conf_states, changes)
def test_apply_conf_change_agrees_with_an_independent_model(conf: ConfState,
                                                            change: ConfChange) -> None:
    """DESIGN §2 / thesis §4.3: a change that alters the voter set of a non-empty
    configuration enters C_old,new (outgoing = the old voters); learner-only changes and
    the first voters apply directly; an empty change leaves a joint configuration; anything
    else is rejected with ConfChangeError and the input is untouched."""
    expected = model_conf(conf, change)
    snapshot = (conf.voters, conf.voters_outgoing, conf.learners)
    if expected is None:
        with pytest.raises(ConfChangeError):
            apply_conf_change(conf, change)
    else:
        got = apply_conf_change(conf, change)
        assert got == expected
        assert got.voters and not (got.voters & got.learners)
        assert not (got.voters_outgoing & got.learners)
        if got.joint:
            assert got.voters_outgoing == conf.voters != got.voters
    assert (conf.voters, conf.voters_outgoing, conf.learners) == snapshot


node_ids = st.text(min_size=1, max_size=12)


@SETTINGS
@given(st.lists(st.builds(MemberChange, st.sampled_from(list(ChangeOp)), node_ids),
                max_size=6), st.text(max_size=20))
def test_conf_change_encode_decode_round_trip(members: list[MemberChange], context: str) -> None:
    """What the leader encodes into a CONF_CHANGE entry decodes to the same change."""
    change = ConfChange(tuple(members), context)
    assert ConfChange.decode(change.encode()) == change


@SETTINGS
@given(st.binary(max_size=80))
@example(b"")
@example(b"\xff\xfe\x00")
@example(b'{"c": 5}')
@example(b"[1, 2]")
@example(b'{"c": [[0]]}')
def test_conf_change_decode_of_arbitrary_bytes_raises_only_value_error(data: bytes) -> None:
    """types.ConfChange.decode: malformed input raises ValueError (the core treats such
    an entry as a no-op on every member; anything else would crash the apply loop)."""
    with contextlib.suppress(ValueError):
        ConfChange.decode(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 5) | st.floats(allow_nan=True,
                                                                allow_infinity=True)
    | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["c", "x", "y"]), inner, max_size=3),
    max_leaves=8)


@SETTINGS
@given(json_values)
@example({"c": [[float("inf"), "a"]]})
@example({"c": [[1.5, "a"]]})
@example({"c": [[0, 7]]})
def test_conf_change_decode_of_arbitrary_json_raises_only_value_error(doc: object) -> None:
    """types.ConfChange.decode: "raises ValueError on malformed input" -- whatever JSON a
    corrupted entry holds, decoding either yields exactly a change encode could have
    written or raises ValueError."""
    data = json.dumps(doc).encode()
    try:
        change = ConfChange.decode(data)
    except ValueError:
        return
    assert json.loads(change.encode()) == json.loads(data) or data == b'{"c": []}'


def test_conf_change_decode_of_deeply_nested_input_raises_value_error() -> None:
    """types.ConfChange.decode contract, for input nested beyond the JSON parser's limit."""
    with pytest.raises(ValueError):
        ConfChange.decode(b"[" * 100_000 + b"]" * 100_000)
