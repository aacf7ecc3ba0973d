"""The checkers accept good histories and reject known-bad ones (so they can fail)."""

from __future__ import annotations

import random

from .checkers import (
    Admission,
    Grant,
    Observation,
    Op,
    SessionLoss,
    check_linearizable,
    check_lock_safety,
    check_no_lost_writes,
    check_register,
    check_sessions,
    dump_history,
    load_history,
)

INIT = ("", 2)


def w(inv, done, value, gen=None, status="ok", key="a"):
    return Op(key, "write", inv, done, status, value=value, out_gen=gen)


def r(inv, done, value, gen, key="a", status="ok"):
    return Op(key, "read", inv, done, status, out_value=value, out_gen=gen)


def cas(inv, done, expect, value, status="ok", gen=None, key="a"):
    return Op(key, "cas", inv, done, status, value=value, expect=expect, out_gen=gen)


# ------------------------------------------------------------------ linearizability


def test_sequential_history_is_linearizable():
    ops = [w(0, 1, "x", 3), r(2, 3, "x", 3), cas(4, 5, 3, "y", gen=4), r(6, 7, "y", 4)]
    assert check_register(ops, INIT)


def test_concurrent_reads_may_see_either_value():
    ops = [w(0, 10, "x", 3), r(1, 2, "", 2), r(3, 4, "x", 3), r(11, 12, "x", 3)]
    assert check_register(ops, INIT)


def test_stale_read_after_acknowledged_write_is_rejected():
    ops = [w(0, 1, "x", 3), r(2, 3, "", 2)]
    result = check_register(ops, INIT)
    assert not result and "not linearizable" in result.problems[0]


def test_reads_going_back_in_time_are_rejected():
    # two concurrent writes; reads observe x then y then x again: impossible
    ops = [w(0, 100, "x"), w(0, 100, "y"), r(10, 11, "x", 3), r(12, 13, "y", 4),
           r(14, 15, "x", 3)]
    assert not check_register(ops, INIT)


def test_cas_success_with_wrong_generation_is_rejected():
    ops = [w(0, 1, "x", 3), cas(2, 3, 2, "y", gen=3)]
    assert not check_register(ops, INIT)


def test_cas_failure_when_generation_matched_is_rejected():
    ops = [w(0, 1, "x", 3), cas(2, 3, 3, "y", status="fail"), r(4, 5, "x", 3)]
    assert not check_register(ops, INIT)
    ok = [w(0, 1, "x", 3), cas(2, 3, 2, "y", status="fail"), r(4, 5, "x", 3)]
    assert check_register(ok, INIT)


def test_two_cas_on_same_generation_cannot_both_succeed():
    ops = [cas(0, 5, 2, "x", gen=3), cas(0, 5, 2, "y", gen=3)]
    assert not check_register(ops, INIT)


def test_unknown_write_may_or_may_not_happen():
    happened = [w(0, None, "x", status="unknown"), r(5, 6, "x", 3)]
    assert check_register(happened, INIT)
    not_happened = [w(0, None, "x", status="unknown"), r(5, 6, "", 2)]
    assert check_register(not_happened, INIT)
    # ... but it cannot happen before it was invoked
    too_early = [r(0, 1, "x", 3), w(2, None, "x", status="unknown")]
    assert not check_register(too_early, INIT)
    # ... nor un-happen
    flip = [w(0, None, "x", status="unknown"), r(5, 6, "x", 3), r(7, 8, "", 2)]
    assert not check_register(flip, INIT)


def test_lost_acknowledged_write_is_rejected_by_both_checkers():
    ops = [w(0, 1, "x", 3), w(2, 3, "y", 4), r(4, 5, "x", 3)]
    assert not check_register(ops, INIT)
    assert not check_no_lost_writes(ops, {"a": ("x", 3)})
    assert not check_no_lost_writes([w(0, 1, "x", 3)], {"a": ("", 2)})
    assert check_no_lost_writes([w(0, 1, "x", 3)], {"a": ("x", 3)})


def test_keys_are_checked_independently():
    ops = [w(0, 1, "x", 3, key="a"), r(2, 3, "", 2, key="b"), r(2, 3, "x", 3, key="a")]
    assert check_linearizable(ops, {"a": INIT, "b": INIT})
    bad = [*ops, r(4, 5, "zzz", 3, key="b")]
    result = check_linearizable(bad, {"a": INIT, "b": INIT})
    assert not result and "'b'" in result.problems[0]


def simulate(seed: int, n_ops: int = 60, clients: int = 5) -> list[Op]:
    """A linearizable history from an atomic register with random overlapping intervals."""
    rng = random.Random(seed)
    value, gen = INIT
    ops: list[Op] = []
    t = 0.0
    for i in range(n_ops):
        t += rng.random()
        kind = rng.choice(["read", "write", "cas"])
        inv = t - rng.random() * 3  # invoked before its linearization point
        done = t + rng.random() * 3
        if kind == "read":
            ops.append(r(inv, done, value, gen))
        elif kind == "write":
            value, gen = f"v{i}", gen + 1
            status = "unknown" if rng.random() < 0.1 else "ok"
            ops.append(w(inv, None if status == "unknown" else done, value,
                         gen if status == "ok" else None, status))
        else:
            expect = gen if rng.random() < 0.5 else gen - 1
            if expect == gen:
                value, gen = f"c{i}", gen + 1
                ops.append(cas(inv, done, expect, value, gen=gen))
            else:
                ops.append(cas(inv, done, expect, f"c{i}", status="fail"))
    return ops


def test_random_linearizable_histories_pass_and_mutations_fail():
    failures = 0
    for seed in range(40):
        ops = simulate(seed)
        assert check_register(ops, INIT), seed
        # corrupt one ok read to a value never written: must be rejected
        reads = [o for o in ops if o.kind == "read"]
        if reads:
            reads[len(reads) // 2].out_value = "never-written"
            assert not check_register(ops, INIT)
            failures += 1
    assert failures > 30


def test_history_round_trips_for_replay(tmp_path):
    ops = simulate(7)
    dump_history(str(tmp_path / "h.json"), ops, {"a": INIT})
    again, inits = load_history(str(tmp_path / "h.json"))
    assert again == ops and inits == {"a": INIT}
    assert check_linearizable(again, inits)


# ------------------------------------------------------------------ lock safety


def adm(t, owner, gen, section, end=None, accepted=True, path="/ls/local/L", late=False):
    return Admission(t, owner, path, gen, accepted, section, end, late)


def test_lock_safety_accepts_sequential_sections():
    hist = [adm(0, "A", 1, 0, 0.5), adm(1, "A", 1, 0, 1.5), adm(2, "B", 2, 0, 2.5),
            adm(3, "A", 1, 1, accepted=False), adm(4, "A", 3, 2, 4.5)]
    assert check_lock_safety(hist)


def test_lock_safety_rejects_overlapping_sections():
    hist = [adm(0, "A", 1, 0, 0.5), adm(1, "B", 2, 0, 1.5), adm(2, "A", 1, 0, 2.5)]
    result = check_lock_safety(hist)
    assert not result
    assert any("overlap" in p for p in result.problems)
    assert any("accepted generation 1" in p for p in result.problems)


def test_lock_safety_rejects_a_long_section_covering_later_ones():
    hist = [adm(0, "A", 5, 0, 10), adm(1, "B", 6, 0, 2), adm(3, "C", 7, 0, 4)]
    result = check_lock_safety(hist)
    assert sum("overlap" in p for p in result.problems) == 2


def test_lock_safety_rejects_lower_generation_and_shared_generation():
    assert not check_lock_safety([adm(0, "A", 3, 0, 0.1), adm(1, "B", 2, 0, 1.1)])
    result = check_lock_safety([adm(0, "A", 3, 0, 0.1), adm(1, "B", 3, 0, 1.1)])
    assert not result and "two holders" in result.problems[0]
    # different paths are independent
    assert check_lock_safety([adm(0, "A", 3, 0, 0.1), adm(1, "B", 2, 0, 1.1, path="/x")])


def test_lock_safety_rejects_an_accepted_late_write():
    hist = [adm(0, "A", 3, 0, 0.1), adm(1, "A", 3, 0, accepted=False, late=True)]
    assert check_lock_safety(hist)
    result = check_lock_safety([adm(0, "A", 3, 0, 0.1), adm(1, "A", 3, 0, 1.1, late=True)])
    assert not result and "stale sequencer" in result.problems[0]


# ------------------------------------------------------------------ sessions


def test_sessions_checker():
    loss = SessionLoss("S", last_keepalive_sent=10.0, valid_ms=2000, ephemeral_paths=["/e"],
                       locks={"/l": 3000}, confirmed_expired_at=13.0)
    good_obs = [Observation(12.5, "/e", True), Observation(13.5, "/e", False)]
    good_grants = [Grant(15.1, "/l", "T"), Grant(11.0, "/l", "S")]
    assert check_sessions([loss], good_obs, good_grants)
    result = check_sessions([loss], [Observation(13.5, "/e", True)], [])
    assert not result and "still exists" in result.problems[0]
    result = check_sessions([loss], [], [Grant(14.9, "/l", "T")])
    assert not result and "before its lock-delay" in result.problems[0]
