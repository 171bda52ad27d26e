"""server.sched_slice_us: every worker thread gets the slice, keeps its nice value; bad values are refused."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from ctrops.errors import ConfigError
from ctrops.serve.config import ServingConfig
from serve_support import kernel_has_custom_slices


needs_slices = pytest.mark.skipif(not kernel_has_custom_slices(),
                                  reason="custom scheduler slices need Linux 6.12+ on x86-64 or arm64")


@needs_slices
def test_every_thread_takes_the_slice_and_keeps_its_nice_value():
    """In a child process: threads running before the call and a thread started after it all report
    the slice in /proc (se.slice, ns), and the process's nice value is what it was."""
    code = textwrap.dedent("""
        import json, os, threading
        from ctrops.serve import sched

        def slice_ns(tid):
            try:  # a thread that has just ended (the joined one) may still be listed
                with open(f"/proc/self/task/{tid}/sched") as f:
                    return next(int(line.split()[-1]) for line in f if line.startswith("se.slice"))
            except FileNotFoundError:
                return None

        os.nice(3)
        stop = threading.Event()
        early = [threading.Thread(target=stop.wait, daemon=True) for _ in range(3)]
        try:
            for t in early:
                t.start()
            done = sched.shorten_slices(250)
            late = {}
            t = threading.Thread(target=lambda: late.update(ns=slice_ns(threading.get_native_id())))
            t.start(); t.join()
            seen = {tid: ns for tid in os.listdir("/proc/self/task") if (ns := slice_ns(int(tid))) is not None}
        finally:
            stop.set()
        print(json.dumps({"done": done, "threads": len(seen), "seen": sorted(set(seen.values())),
                          "late": late["ns"], "nice": os.nice(0)}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["done"] == got["threads"] >= 4, got  # the main thread, the 3 started before, any the imports made
    assert got["seen"] == [250_000], got
    assert got["late"] == 250_000, got
    assert got["nice"] == 3, got


@needs_slices
def test_threads_of_other_policies_are_left_alone():
    code = textwrap.dedent("""
        import os
        from ctrops.serve import sched
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        print(sched.set_thread_slice(0, 500), os.sched_getscheduler(0) == os.SCHED_IDLE,
              sched.thread_slice_us(0) != 500)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["False", "True", "True"]


@pytest.mark.parametrize("value, words", [
    (50, "must be 0 .* from 100 to 100000 microseconds, got 50"),
    (100_001, "must be 0 .* from 100 to 100000 microseconds, got 100001"),
    (-1, "must be 0 .* from 100 to 100000 microseconds, got -1"),
    (1.5, "must be an integer, got 1.5"),
    ("fast", "must be an integer, got 'fast'"),
    (True, "must be an integer, got True"),
])
def test_bad_slices_are_refused_with_the_field_named(value, words):
    raw = {"model": {"storage": "/tmp/x", "name": "m"}, "server": {"sched_slice_us": value}}
    with pytest.raises(ConfigError, match=rf"serving.yaml: server.sched_slice_us {words}"):
        ServingConfig.from_dict(raw, source="serving.yaml")


@pytest.mark.parametrize("value", [0, 100, 250, 100_000])
def test_good_slices_are_taken(value):
    raw = {"model": {"storage": "/tmp/x", "name": "m"}, "server": {"sched_slice_us": value}}
    assert ServingConfig.from_dict(raw).server.sched_slice_us == value
