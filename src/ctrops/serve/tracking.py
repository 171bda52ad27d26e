"""Tracking ids: unique, sortable by time, and cheap enough to mint 100 per request.

An id is 128 bits written as 32 lowercase hex digits:

    48 bits  milliseconds since the Unix epoch   (ids sort by creation time)
    32 bits  random per process                   (workers never collide)
    32 bits  per-process request counter          (unique within a millisecond)
    16 bits  candidate position in the request    (one id per returned candidate)

A request mints one 28-digit prefix and the candidates append a precomputed
4-digit suffix, so minting costs one string concatenation per candidate.
"""

from __future__ import annotations

import itertools
import os
import time

MAX_CANDIDATES = 0x1000  # ids keep 4 hex digits; the request limit stays below this
SUFFIXES = tuple(f"{i:04x}" for i in range(MAX_CANDIDATES))


class TrackingIds:
    def __init__(self) -> None:
        self._process = int.from_bytes(os.urandom(4), "big")
        self._counter = itertools.count(int.from_bytes(os.urandom(4), "big"))

    def reseed(self) -> None:
        """Call after fork so two worker processes never share a process part."""
        self.__init__()

    def prefix(self, now_ms: int | None = None) -> str:
        """The 28-digit prefix of one request's ids (also usable as a request id)."""
        ms = int(time.time() * 1000) if now_ms is None else now_ms
        return f"{ms & 0xFFFF_FFFF_FFFF:012x}{self._process:08x}{next(self._counter) & 0xFFFF_FFFF:08x}"

    @staticmethod
    def for_candidates(prefix: str, n: int) -> list[str]:
        return [prefix + s for s in SUFFIXES[:n]]


def timestamp_ms(tracking_id: str) -> int:
    """Creation time (ms since epoch) encoded in a tracking id."""
    return int(tracking_id[:12], 16)
