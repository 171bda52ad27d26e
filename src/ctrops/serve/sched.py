"""Shorter scheduler slices for a worker's threads (`server.sched_slice_us`; Linux 6.12+).

Why: a request crosses several threads of a worker (granian's I/O thread, the
thread that hands the request to the event loop, the loop itself, back to the
I/O thread), and at each hop the woken thread waits until the scheduler runs
it. With the default slice (1.4 ms on a 2-CPU machine) the thread already
running may keep the CPU until its slice is used; on a 2-CPU machine shared
with a load generator and the log writer, those waits add up into the p99.
Since Linux 6.12 the EEVDF scheduler lets a task ask for its own slice
(sched_setattr's sched_runtime for SCHED_OTHER): a shorter slice means an
earlier virtual deadline, so a woken request thread preempts sooner. The cost
is more context switches when the CPUs are saturated.

Threads inherit the slice of the thread that creates them, so setting every
thread of the worker once its runtime is up covers the threads made later.
Each thread keeps its policy and nice value; threads that are not SCHED_OTHER
(the log writer runs SCHED_IDLE, in its own process anyway) are left alone.
Older kernels accept the call but ignore the slice: `shorten_slices` reads it
back and says so.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import struct

log = logging.getLogger("ctrops.serve.sched")

MIN_SLICE_US = 100       # the kernel clamps custom slices to [0.1 ms, 100 ms]
MAX_SLICE_US = 100_000
# struct sched_attr, SCHED_ATTR_SIZE_VER1: size, policy, flags, nice, priority, runtime, deadline,
# period, util_min, util_max
_ATTR = struct.Struct("IIQiIQQQII")
_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}  # (sched_setattr, sched_getattr)
_libc = None


def supported() -> bool:
    """Whether this platform has the system calls (Linux on x86-64 or arm64)."""
    return os.name == "posix" and platform.system() == "Linux" and platform.machine() in _SYSCALLS


def _syscall(number: int, *args) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.syscall(number, *args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _get(tid: int) -> tuple:
    buf = ctypes.create_string_buffer(_ATTR.size)
    _syscall(_SYSCALLS[platform.machine()][1], ctypes.c_int(tid), buf, ctypes.c_uint(_ATTR.size), ctypes.c_uint(0))
    return _ATTR.unpack(buf.raw)


def thread_slice_us(tid: int = 0) -> int | None:
    """The slice the kernel reports for thread `tid` (0: the calling thread) in µs; None where it
    reports none (kernels before custom slices)."""
    runtime = _get(tid)[5]
    return runtime // 1000 if runtime else None


def set_thread_slice(tid: int, microseconds: int) -> bool:
    """Give thread `tid` a slice of `microseconds`, keeping its policy and nice value; False (nothing
    changed) when the thread is not SCHED_OTHER. OSError from the kernel (e.g. the thread is gone)."""
    size, policy, flags, nice, priority, _, deadline, period, umin, umax = _get(tid)
    if policy != os.SCHED_OTHER:
        return False
    attr = ctypes.create_string_buffer(
        _ATTR.pack(_ATTR.size, policy, flags, nice, priority, microseconds * 1000, deadline, period, umin, umax),
        _ATTR.size)
    _syscall(_SYSCALLS[platform.machine()][0], ctypes.c_int(tid), attr, ctypes.c_uint(0))
    return True


def shorten_slices(microseconds: int) -> int:
    """Set every SCHED_OTHER thread of this process to a slice of `microseconds`; returns how many
    threads took it (0 where the platform or the kernel has no custom slices, with a warning)."""
    if not supported():
        log.warning("server.sched_slice_us needs Linux on x86-64 or arm64; the setting has no effect here")
        return 0
    done = 0
    for name in os.listdir("/proc/self/task"):
        try:
            done += set_thread_slice(int(name), microseconds)
        except OSError as exc:  # a thread that ended meanwhile; anything else is worth a line
            if exc.errno != 3:  # ESRCH
                log.warning("could not shorten the scheduler slice of thread %s: %s", name, exc)
    if done and thread_slice_us(0) != microseconds:
        log.warning("this kernel ignores custom scheduler slices (they need Linux 6.12+ with EEVDF); "
                    "server.sched_slice_us has no effect")
        return 0
    return done
