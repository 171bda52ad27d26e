"""A worker's GIL switch interval: long while the event loop is the only busy thread, 0.5 ms while a
background thread runs Python-heavy work.

Why: CPython makes a thread that wants the GIL wait up to the switch
interval before it forces the holder to let go. The event loop wants it back
after every socket call; a busy background thread (a model load and its
validation in the watcher, or the prediction log's writer when it runs as a
thread) would make it wait up to 5 ms each time (the convoy effect), so those
get 0.5 ms. The rest of the time the only other thread that takes the GIL
is granian's, for a few microseconds per request to hand the next request to
the loop; forcing the loop to let go of a request in progress for it gains
nothing (the handed-over request waits for the loop anyway) and costs two
thread switches. Measured at 2,000 req/s with the process writer, three
alternating pairs: 593-687 µs of server CPU per request with 5 ms against
610-703 µs with 0.5 ms all the time.
"""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from typing import Iterator

RESPONSIVE = 0.0005  # seconds: the longest the event loop waits for a busy background thread
_lock = threading.Lock()
_busy = 0
_base: float | None = None  # the interval outside background work (None: what the process had)


def set_base(seconds: float) -> None:
    """The interval while no background work runs (applied now unless some is running)."""
    global _base
    with _lock:
        _base = seconds
        if _busy == 0:
            sys.setswitchinterval(seconds)


@contextmanager
def background_work() -> Iterator[None]:
    """Around Python-heavy work in a background thread: the interval is at most `RESPONSIVE` until
    the last such section ends, then back to the base."""
    global _busy, _base
    with _lock:
        if _busy == 0:
            if _base is None:
                _base = sys.getswitchinterval()
            sys.setswitchinterval(min(_base, RESPONSIVE))
        _busy += 1
    try:
        yield
    finally:
        with _lock:
            _busy -= 1
            if _busy == 0:
                sys.setswitchinterval(_base)
