"""The prediction-log writer process: drains one worker's ring into the Arrow/Parquet/JSONL writer.

Started by `ProcessPredictionLog` as `python -m ctrops.serve.log_writer <fd>` with the ring's
file descriptor inherited and the log config as JSON on stdin (not on the
command line: storage options may hold credentials). It runs the same
`PredictionLog` as in-process users do: its main thread pulls records from the
ring, decodes them (re-deriving ids and passthrough objects from raw bodies)
into compact entries and queues them; `PredictionLog`'s own thread builds and
writes the files. Everything runs at `WRITER_NICENESS`, below the server.

It stops when the worker sets the ring's STOP slot or when the worker is gone
(the parent pid changes): either way it first writes every record left in the
ring. SIGTERM and SIGINT are ignored: a signal sent to the whole process group
(Ctrl-C, a container stop) reaches the worker too, whose shutdown then sets STOP
after its last request, so nothing served after the signal is lost.

Counters (records written, write errors, drops, what is queued) are published
in the ring's header after every step; the worker reads them for /metrics.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections import deque
from typing import Any

import msgspec

from ctrops.serve import log_ring as lr
from ctrops.serve.log_records import DEBUG, decode_entry
from ctrops.serve.logging_sink import WRITER_NICENESS, LogConfig, PredictionLog

log = logging.getLogger("ctrops.serve.log_writer")

_PULL = 256          # records per pull
_IDLE_SECONDS = 0.01  # poll interval while the ring is empty (a poll costs microseconds)


class Pump:
    """Moves records from the ring into a `PredictionLog`, publishing its counters in the ring."""

    def __init__(self, ring: lr.Ring, sink: PredictionLog) -> None:
        self.ring = ring
        self.sink = sink
        s = ring.slots
        # a restarted writer continues the counters of the one before it
        self._base_written, self._base_errors, self._base_dropped = (
            int(s[lr.RECORDS_WRITTEN]), int(s[lr.WRITE_ERRORS]), int(s[lr.DROPPED]))
        self.req_pulled, self.rec_pulled = int(s[lr.REQ_PULLED]), int(s[lr.REC_PULLED])
        self.bad_records = 0
        self._carry: deque = deque()  # decoded, waiting for room in the sink's queue

    def _queue_carried(self) -> bool:
        """Queue what the last pull left over; False while the sink's queue is full (the ring then
        fills, and the worker counts its drops: back-pressure instead of a second place to drop)."""
        carry, sink = self._carry, self.sink
        while carry:
            entry = carry[0]
            if not sink.has_room(len(entry.order)) and sink.depth:
                return False
            sink.submit_compacted(entry)  # into an empty queue only if larger than queue_records: counted
            carry.popleft()
        return True

    def step(self) -> int:
        """Pull one batch of records and queue them (what does not fit waits in `_carry`); the
        number pulled."""
        if not self._queue_carried():
            return 0
        records = self.ring.pull(_PULL)
        if not records:
            return 0
        n_req = n_rec = 0
        for kind, payload, split in records:
            if kind == DEBUG:
                try:
                    self.sink.submit_debug(json.loads(payload))
                except ValueError:
                    log.exception("a debug record from the worker is not JSON")
                continue
            n_req += 1
            try:
                entry = decode_entry(kind, payload, split)
            except (ValueError, TypeError, msgspec.DecodeError) as exc:
                log.error("a logged request cannot be read (%s): dropped", exc)
                self.bad_records += 1
                continue
            n_rec += len(entry.order)
            self._carry.append(entry)
        self.req_pulled += n_req
        self.rec_pulled += n_rec
        s = self.ring.slots
        s[lr.REQ_PULLED] = self.req_pulled
        s[lr.REC_PULLED] = self.rec_pulled
        self._queue_carried()
        return len(records)

    @property
    def carrying(self) -> bool:
        return bool(self._carry)

    def publish(self) -> None:
        s, sink = self.ring.slots, self.sink
        carried = len(self._carry)
        depth, queued = sink.depth + carried, sink.queued_records + sum(len(e.order) for e in self._carry)
        s[lr.RECORDS_WRITTEN] = self._base_written + sink.records_written
        s[lr.WRITE_ERRORS] = self._base_errors + sink.write_errors + self.bad_records
        s[lr.DROPPED] = self._base_dropped + sink.dropped + self.bad_records
        s[lr.REQ_QUEUED] = depth
        s[lr.REC_QUEUED] = queued
        s[lr.REQ_SETTLED] = self.req_pulled - depth - sink.unsettled_requests


def run(fd: int, config: LogConfig, parent: int) -> int:
    """The writer loop; returns the exit status."""
    ring = lr.Ring.attach(fd)
    ring.slots[lr.WRITER_PID] = os.getpid()
    sink = PredictionLog(config)
    pump = Pump(ring, sink)
    sink.start()  # its thread inherits this thread's niceness
    stopping = False
    while True:
        stopping = stopping or bool(ring.slots[lr.STOP]) or os.getppid() != parent
        moved = pump.step()
        pump.publish()
        if stopping and ring.used == 0 and not pump.carrying:
            break
        if not moved:
            time.sleep(_IDLE_SECONDS)
    sink.close(timeout=max(config.flush_seconds * 4, 60.0))
    pump.publish()
    ring.slots[lr.WRITER_DONE] = 1
    ring.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m ctrops.serve.log_writer <ring fd> <parent pid>  (LogConfig JSON on stdin)",
              file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, WRITER_NICENESS)  # this thread; threads started later inherit it
    except OSError:
        pass
    logging.basicConfig(level=os.environ.get("CTROPS_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    raw: dict[str, Any] = json.loads(sys.stdin.read())
    return run(int(argv[0]), LogConfig(**raw), int(argv[1]))


if __name__ == "__main__":
    sys.exit(main())
