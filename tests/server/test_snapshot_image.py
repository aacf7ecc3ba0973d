"""The member's snapshot image codec (orjson) and restore (collector paused)."""

from __future__ import annotations

import gc
import json

import pytest

from lockcell.node import cell as node_cell
from lockcell.node.cell import CellService
from lockcell.statemachine import CellState
from lockcell.statemachine.commands import SetContents
from lockcell.statemachine.values import NodeKind

from ..statemachine.support import ROOT, Harness


def _state_with(name: str, data: bytes) -> CellState:
    harness = Harness()
    session = harness.new_session()
    handle = harness.open(session, f"{ROOT}/{name}", create=NodeKind.FILE)
    harness.ok(SetContents(now_ms=harness.now, session=session, handle=handle, data=data))
    return harness.state


def test_the_members_encoder_writes_what_the_json_module_writes_for_ascii() -> None:
    state = _state_with("plain", b"\x00\xffbytes")
    fast = state.snapshot(node_cell._encode_image)
    assert fast == state.snapshot()
    assert fast == json.dumps(json.loads(fast), sort_keys=True, separators=(",", ":")).encode()


def test_text_outside_ascii_stays_utf8_and_reads_back_alike() -> None:
    value = {"z": "caf\u00e9 \u6587\u4ef6", "a": [1, None, True], "m": {"y": 2, "b": "\x00"}}
    fast = node_cell._encode_image(value)
    assert "caf\u00e9".encode() in fast
    assert json.loads(fast) == value
    assert fast == json.dumps(value, sort_keys=True, separators=(",", ":"),
                              ensure_ascii=False).encode()


@pytest.mark.parametrize("enabled", [True, False])
def test_restore_pauses_the_collector_and_leaves_it_as_it_was(
        enabled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    service = CellService("demo")
    image = service.snapshot()
    seen: list[bool] = []
    real = CellState.restore

    def restore(snapshot: bytes) -> CellState:
        seen.append(gc.isenabled())
        return real(snapshot)

    monkeypatch.setattr(node_cell.CellState, "restore", staticmethod(restore))
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        service.restore(image)
        assert seen == [False]
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()
