"""The sequencer (fencing token) string: format, construction and tolerant parsing."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

import orjson

from .values import LockMode

SEQUENCER_PREFIX = "lc1:"
"""Version prefix of every sequencer this code writes."""

MAX_SEQUENCER_LENGTH = 4096
"""Longer strings are never sequencers (they are refused before decoding)."""


@dataclass(frozen=True, slots=True)
class SequencerRef:
    """What a sequencer names: a lock (path and node instance), its mode and generation."""

    path: str
    mode: LockMode
    lock_generation: int
    instance: int

    def encode(self) -> str:
        """The opaque sequencer string, ``lc1:<url-safe base64 of a JSON array>``."""
        fields = [self.path, self.mode.value, self.lock_generation, self.instance]
        try:  # every replica encodes one per grant: orjson, where it writes the same text
            plain = self.path.isascii() and self.path.isprintable()
            body = orjson.dumps(fields) if plain else _standard_json(fields)
        except TypeError:  # an integer beyond 64 bits
            body = _standard_json(fields)
        return SEQUENCER_PREFIX + base64.urlsafe_b64encode(body).rstrip(b"=").decode("ascii")


def _standard_json(fields: list[str | int]) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode()


def parse_sequencer(text: object) -> SequencerRef | None:
    """Parse a sequencer string; ``None`` for anything forged, garbled or foreign."""
    if not isinstance(text, str) or len(text) > MAX_SEQUENCER_LENGTH:
        return None
    if not text.startswith(SEQUENCER_PREFIX):
        return None
    encoded = text[len(SEQUENCER_PREFIX) :]
    try:
        body = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        fields = json.loads(body)
    except (binascii.Error, ValueError, RecursionError):
        return None
    if type(fields) is not list or len(fields) != 4:
        return None
    path, mode, generation, instance = fields
    if type(path) is not str or type(generation) is not int or type(instance) is not int:
        return None
    if mode not in ("exclusive", "shared") or type(mode) is not str:
        return None
    reference = SequencerRef(path, LockMode(mode), generation, instance)
    # Only the canonical spelling of a reference is accepted.
    if reference.encode() != text:
        return None
    return reference
