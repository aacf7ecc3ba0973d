"""Listening ports for local cells stay out of the kernel's ephemeral range."""

from __future__ import annotations

import random
import socket

from lockcell.cli.localcell import ephemeral_port_range, free_port_base, port_is_free


def test_bases_lie_below_the_ephemeral_range_and_are_free() -> None:
    low, _ = ephemeral_port_range()
    rng = random.Random(7)
    for _ in range(50):
        base = free_port_base([0, 1, 2, 100, 101, 102], rng)
        assert base >= 10000 and base + 102 < low
        assert all(port_is_free(base + offset) for offset in (0, 1, 2, 100, 101, 102))


def test_a_taken_port_is_never_handed_out() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", free_port_base([0])))
        listener.listen()
        taken = listener.getsockname()[1]
        assert not port_is_free(taken)
        # Only one candidate base exists; it is taken, so the search must give up.
        class OnlyTaken(random.Random):
            def randrange(self, *args: object, **kwargs: object) -> int:  # type: ignore[override]
                return taken
        try:
            free_port_base([0], OnlyTaken(), attempts=5)
        except RuntimeError as exc:
            assert "no free loopback ports" in str(exc)
        else:
            raise AssertionError("a taken port was handed out")
