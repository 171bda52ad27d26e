"""A single-producer, single-consumer byte ring in shared memory, between a server worker and its
prediction-log writer process.

Why shared memory and not a pipe or a multiprocessing queue: the request
thread must hand a request over in a few microseconds and never block. A pipe
write is a system call that blocks when the reader lags; a queue pickles and
takes a lock shared with the other process. Here the producer copies one
encoded record into the ring and publishes the new write position with one
8-byte store; the consumer polls. A full ring is the producer's to see: the
record is dropped and counted, never waited for.

The memory is an anonymous `memfd` handed to the writer as an inherited file
descriptor: it has no name to leak when a worker is killed, and it needs no
resource-tracker process (Python 3.11's `multiprocessing.shared_memory` starts
one per process that attaches and unlinks the segment when that one exits).
Records survive a writer crash: a restarted writer resumes at the read
position.

Ordering: the producer writes a record, then the write position; the consumer
reads the write position, then the records. x86-64 keeps stores in order and
loads in order (TSO) and an aligned 8-byte store is atomic, which is all this
needs; weaker memory models would need fences, so `supported()` is False
elsewhere and callers keep the thread writer there.

Layout: a 4 KiB header of int64 slots (the producer's on one cache line, the
consumer's on others, so neither side's stores invalidate the other's line),
then `capacity` bytes of records. A record is a 16-byte head (payload length,
kind, split, reserved) and the payload, padded to 16 bytes; a record never
wraps: when it does not fit before the end, a PAD head fills the tail and the
record starts at 0. A payload is written from two parts (`split` is where the
second starts), so a large part such as a request body is copied into the ring
once, not first joined with the rest.

The pages are allocated when the ring is created and mapped populated, so the
request thread never takes a page fault on first use of a ring page.
"""

from __future__ import annotations

import mmap
import os
import platform
import struct
from typing import Any

HEADER_BYTES = 4096
_MAGIC = 0x31474E52_53504F43  # "COPSRNG1"

# int64 slots of the header
MAGIC, CAPACITY = 0, 1
WRITE_POS, STOP = 8, 9                 # producer's cache line
READ_POS = 16                          # consumer's: bytes consumed, then its published counters
REQ_PULLED, REQ_SETTLED, REQ_QUEUED = 17, 18, 19
REC_PULLED, REC_QUEUED = 20, 21
RECORDS_WRITTEN, WRITE_ERRORS, DROPPED = 24, 25, 26
WRITER_PID, WRITER_DONE = 32, 33

PAD = 0xFFFF_FFFF
_HEAD = struct.Struct("<IIII")  # payload length, kind, split (length of the first part), reserved
_HEAD_SIZE = _HEAD.size
_ALIGN = 16  # records start 16-byte aligned, so a tail too short for a record still holds a PAD head


def supported() -> bool:
    """Whether the ring's ordering assumptions hold here (Linux memfd, x86-64 TSO)."""
    return hasattr(os, "memfd_create") and platform.machine().lower() in ("x86_64", "amd64")


class Ring:
    """The mapping of one ring; `create` in the worker, `attach` in the writer process."""

    def __init__(self, fd: int, owner: bool) -> None:
        self.fd = fd
        self.owner = owner
        size = os.fstat(fd).st_size
        self._mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
        self._view = memoryview(self._mm)
        self.slots = self._view[:HEADER_BYTES].cast("q")
        if self.slots[MAGIC] != _MAGIC:
            raise ValueError(f"file descriptor {fd} does not hold a prediction-log ring")
        self.capacity = int(self.slots[CAPACITY])
        if size != HEADER_BYTES + self.capacity:
            raise ValueError(f"ring of {size} bytes, its header says {HEADER_BYTES + self.capacity}")
        self._data = self._view[HEADER_BYTES:]

    @classmethod
    def create(cls, capacity: int) -> "Ring":
        """A new zeroed ring of `capacity` data bytes (rounded up to 16) on an anonymous memfd.

        The descriptor is inheritable only when passed explicitly (subprocess's `pass_fds`).
        """
        capacity = (capacity + _ALIGN - 1) // _ALIGN * _ALIGN
        fd = os.memfd_create("ctrops-prediction-log", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, HEADER_BYTES + capacity)
            os.posix_fallocate(fd, 0, HEADER_BYTES + capacity)  # the pages now, not on the request path
            with mmap.mmap(fd, HEADER_BYTES) as mm:
                slots = memoryview(mm).cast("q")
                slots[CAPACITY] = capacity
                slots[MAGIC] = _MAGIC
                slots.release()
            return cls(fd, owner=True)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def attach(cls, fd: int) -> "Ring":
        return cls(fd, owner=False)

    # ---- producer -----------------------------------------------------------------------------
    def push(self, kind: int, head: bytes, body: bytes = b"", *more: Any) -> bool:
        """Append one record whose payload is `head` + `body` + `more` (byte buffers: bytes, or
        format-"B" memoryviews); `split` in the record's head is len(head). False (nothing written)
        when the ring has no room for it.

        One producer at a time: callers in several threads hold a lock around it.
        """
        slots, cap = self.slots, self.capacity
        w = slots[WRITE_POS]
        split = len(head)
        n = split + len(body)
        for part in more:
            n += len(part)
        need = _HEAD_SIZE + ((n + _ALIGN - 1) & -_ALIGN)
        pos = w % cap
        tail = cap - pos
        skip = tail if need > tail else 0
        if w + skip + need - slots[READ_POS] > cap:
            return False
        data = self._data
        if skip:
            _HEAD.pack_into(data, pos, tail - _HEAD_SIZE, PAD, 0, 0)
            pos = 0
        _HEAD.pack_into(data, pos, n, kind, split, 0)
        start = pos + _HEAD_SIZE
        end = start + split
        data[start:end] = head
        if body:
            data[end:end + len(body)] = body
            end += len(body)
        for part in more:
            data[end:end + len(part)] = part
            end += len(part)
        slots[WRITE_POS] = w + skip + need  # publish after the bytes (x86-64 keeps stores in order)
        return True

    @property
    def used(self) -> int:
        """Bytes written and not yet consumed."""
        return int(self.slots[WRITE_POS] - self.slots[READ_POS])

    # ---- consumer -----------------------------------------------------------------------------
    def pull(self, limit: int) -> list[tuple[int, bytes, int]]:
        """Up to `limit` records (kind, payload copied out, split), oldest first; the space is released."""
        slots, cap, data = self.slots, self.capacity, self._data
        r = slots[READ_POS]
        w = slots[WRITE_POS]
        out: list[tuple[int, bytes, int]] = []
        while r < w and len(out) < limit:
            pos = r % cap
            n, kind, split, _ = _HEAD.unpack_from(data, pos)
            if kind == PAD:
                r += cap - pos
                continue
            out.append((kind, bytes(data[pos + _HEAD_SIZE:pos + _HEAD_SIZE + n]), split))
            r += _HEAD_SIZE + ((n + _ALIGN - 1) & -_ALIGN)
        slots[READ_POS] = r
        return out

    def close(self) -> None:
        """Unmap; the owner also closes the descriptor (the memory goes when no process maps it)."""
        for view in (self.slots, self._data, self._view):
            view.release()
        self._mm.close()
        if self.owner:
            os.close(self.fd)
