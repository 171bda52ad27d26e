"""The prediction-log writer process: drains workers' rings into the Arrow/Parquet/JSONL writer.

Two ways to start it (both read the log config as JSON on the first line of
stdin, not from the command line: storage options may hold credentials):

- `python -m ctrops.serve.log_writer --ring <fd> <parent pid>`: one ring, inherited
  as a file descriptor, for one `ProcessPredictionLog` that started its own writer
  (in-process users, tests). It stops when the ring's STOP slot is set or when
  its parent is gone.
- `python -m ctrops.serve.log_writer --hub <name>`: one writer for every worker of a
  server, started by the server's supervisor (`LogHub`). Workers connect to the
  abstract Unix socket `name` and hand over their ring's descriptor
  (SCM_RIGHTS); a worker that sets STOP or whose connection closes is drained
  and let go. It stops when its stdin closes (the supervisor's `close()`, or the
  supervisor's death). One process for all workers pays Python's and Arrow's
  memory floor (~60 MiB) once instead of per worker.

Either way it runs the same `PredictionLog` as in-process users do, in one
thread: it pulls records from the rings, decodes them (re-deriving ids and
passthrough objects from raw bodies) and queues them, and runs the
`PredictionLog`'s rounds (build, write) itself when they are due, instead of
a second thread that would hand the GIL back and forth with it. The process
runs at `WRITER_NICENESS`, or under SCHED_IDLE (see `lower_priority`). SIGTERM and SIGINT
are ignored: a signal to the whole process group reaches the workers too,
whose shutdown stops their rings after their last request, so nothing served
before the signal is lost.

Each ring's header gets that worker's own counters (requests taken and settled,
records written, drops, errors) after every step. The columnar writer settles
requests in the order they were queued (a batch is built, written or dropped
as a whole, in order), so a FIFO of (ring, records) attributes each settled
request to its worker exactly; drops and write errors go to the requests
settled in the same step.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import socket
import struct
import sys
import threading
import time
from collections import deque
from typing import Any

import msgspec

from ctrops.serve import log_ring as lr
from ctrops.serve.log_records import DEBUG, decode_entry
from ctrops.serve.logging_sink import _WRITE_REQUESTS, WRITER_NICENESS, LogConfig, PredictionLog

log = logging.getLogger("ctrops.serve.log_writer")

_PULL = 256           # records per pull
_IDLE_SECONDS = 0.01  # pause between pulls unless a ring is backlogged (see `Writer.step`)


class RingPump:
    """One worker's ring: pulls its records, holds what the sink's queue cannot take yet, and keeps
    the worker's counters."""

    def __init__(self, ring: lr.Ring, conn: socket.socket | None = None, worker: int = 0,
                 ring_id: tuple[int, int] | None = None) -> None:
        self.ring = ring
        self.conn = conn
        self.worker = worker
        self.ring_id = ring_id  # (device, inode) of the ring's memfd: which ring this is, whoever hands it
        s = ring.slots
        # a restarted writer continues the counters of the one before it (the worker reset the rest)
        self.base_written, self.base_errors, self.base_dropped = (
            int(s[lr.RECORDS_WRITTEN]), int(s[lr.WRITE_ERRORS]), int(s[lr.DROPPED]))
        self.req_pulled, self.rec_pulled = int(s[lr.REQ_PULLED]), int(s[lr.REC_PULLED])
        self.req_settled, self.rec_settled = int(s[lr.REQ_SETTLED]), self.rec_pulled - int(s[lr.REC_QUEUED])
        self.written = self.dropped = self.errors = 0
        self.carry: deque = deque()  # decoded, waiting for room in the sink's queue
        self.stopping = False
        self.flush_asked = False
        s[lr.WRITER_DONE] = 0
        s[lr.WRITER_PID] = os.getpid()

    @property
    def drained(self) -> bool:
        return self.ring.used == 0 and not self.carry and self.req_settled == self.req_pulled

    def publish(self) -> None:
        s = self.ring.slots
        s[lr.RECORDS_WRITTEN] = self.base_written + self.written
        s[lr.WRITE_ERRORS] = self.base_errors + self.errors
        s[lr.DROPPED] = self.base_dropped + self.dropped
        s[lr.REQ_SETTLED] = self.req_settled
        s[lr.REQ_QUEUED] = self.req_pulled - self.req_settled
        s[lr.REC_QUEUED] = self.rec_pulled - self.rec_settled

    def connection_closed(self) -> bool:
        """Whether the worker's connection (hub mode) is gone: the worker exited or crashed."""
        if self.conn is None:
            return False
        try:
            return self.conn.recv(1, socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True


class Writer:
    """Pumps any number of rings into one `PredictionLog`."""

    def __init__(self, config: LogConfig) -> None:
        self.sink = PredictionLog(config)
        # one build per write (no tables to merge): build and merge 24 vs 36 µs a request in process, the
        # queue holding ~2 MB of compact payloads at most
        self.sink.wake_requests = self.sink.build_requests = _WRITE_REQUESTS
        self.pumps: list[RingPump] = []
        self._fifo: deque = deque()  # (pump, records) per request queued into the sink, in order
        self._queued = 0             # requests queued into the sink so far
        self._settled = 0            # of those, settled (written or dropped) so far
        self._seen_dropped = self._seen_errors = 0
        self.backlogged = False      # the last step left records in a ring (see `step`)

    def start(self) -> None:
        self.sink.start(thread=False)  # its rounds run in `step`: one thread, no GIL hand-offs

    def step(self) -> int:
        """Pull one batch from every ring, then let the sink build and write when due; the number of
        records pulled. `backlogged` tells whether a ring had more than one pull's worth: the loop
        then steps again at once, else it pauses `_IDLE_SECONDS`.

        Why pause while records trickle in: stepping again as soon as anything moved
        took about one request per step at 2,000 req/s, each step paying its fixed
        cost (a pull per ring, the counters published to every ring, the sink's
        check). A pause of 10 ms lets a few dozen requests gather per step; the ring
        holds seconds of traffic, so nothing waits on it. (Measured in the server:
        177 vs 183 µs of writer CPU per request, within the noise; the builds of
        `_WRITE_REQUESTS` requests, see `__init__`, were what moved it.)
        """
        moved = 0
        self.backlogged = False
        for pump in self.pumps:
            if self._queue_carried(pump):
                pulled = self._pull(pump)
                moved += pulled
                self.backlogged |= pulled >= _PULL
        self.sink.work_if_due()
        return moved

    def _queue_carried(self, pump: RingPump) -> bool:
        """Queue what the ring's last pull left over; False while the sink's queue is full (the ring
        then fills and its worker counts the drops: back-pressure, not a second place to drop)."""
        sink = self.sink
        while pump.carry:
            entry = pump.carry[0]
            n = len(entry.order)
            if not sink.has_room(n) and sink.depth:
                return False
            sink.submit_compacted(entry)  # into an empty queue only if larger than queue_records: counted
            self._fifo.append((pump, n))
            self._queued += 1
            pump.carry.popleft()
        return True

    def _pull(self, pump: RingPump) -> int:
        records = pump.ring.pull(_PULL)
        for kind, payload, split in records:
            if kind == DEBUG:
                try:
                    self.sink.submit_debug(json.loads(payload))
                except ValueError:
                    log.exception("a debug record from a worker is not JSON")
                continue
            pump.req_pulled += 1
            try:
                entry = decode_entry(kind, payload, split)
            except (ValueError, TypeError, msgspec.DecodeError) as exc:
                log.error("a logged request cannot be read (%s): dropped", exc)
                pump.req_settled += 1
                pump.dropped += 1
                pump.errors += 1
                continue
            pump.rec_pulled += len(entry.order)
            pump.carry.append(entry)
        s = pump.ring.slots
        s[lr.REQ_PULLED] = pump.req_pulled
        s[lr.REC_PULLED] = pump.rec_pulled
        if records:
            self._queue_carried(pump)
        return len(records)

    def publish(self) -> None:
        """Attribute what the sink settled since the last call to the rings' workers, in queue order."""
        sink = self._sink_counts()
        settled_now = self._queued - sink[0] - sink[1]  # depth read before unsettled: never over-counts
        new_drops = sink[2] - self._seen_dropped
        new_errors = sink[3] - self._seen_errors
        self._seen_dropped, self._seen_errors = sink[2], sink[3]
        last = None
        while self._settled < settled_now and self._fifo:
            pump, n = self._fifo.popleft()
            self._settled += 1
            pump.req_settled += 1
            pump.rec_settled += n
            if new_drops > 0:
                pump.dropped += 1
                new_drops -= 1
            else:
                pump.written += n
            last = pump
        if new_errors and (last or self.pumps):
            (last or self.pumps[0]).errors += new_errors
        for pump in self.pumps:
            pump.publish()

    def _sink_counts(self) -> tuple[int, int, int, int]:
        s = self.sink
        depth = s.depth
        return depth, s.unsettled_requests, s.dropped, s.write_errors

    def finish(self, pump: RingPump) -> bool:
        """For a stopping ring: once everything it sent is settled, mark it done (the worker's
        close() waits for that); True then. Asks the sink to write its queue now, once."""
        if not pump.drained:
            if pump.ring.used == 0 and not pump.carry and not pump.flush_asked:
                self.sink.flush()
                pump.flush_asked = True
            return False
        pump.publish()
        pump.ring.slots[lr.WRITER_DONE] = 1
        return True

    def close(self, timeout: float) -> None:
        self.sink.close(timeout=timeout)
        self.publish()


def run_single(fd: int, config: LogConfig, parent: int) -> int:
    """One ring (`ProcessPredictionLog` started this writer itself); returns the exit status."""
    ring = lr.Ring.attach(fd)
    os.close(fd)  # the mapping keeps the memory
    writer = Writer(config)
    pump = RingPump(ring)
    writer.pumps.append(pump)
    writer.start()
    while True:
        if ring.slots[lr.STOP] or os.getppid() != parent:
            pump.stopping = True
        writer.step()
        writer.publish()
        if pump.stopping and pump.drained:
            break
        if pump.stopping:
            writer.finish(pump)
        if not writer.backlogged:
            time.sleep(_IDLE_SECONDS)
    writer.close(timeout=max(config.flush_seconds * 4, 60.0))
    ring.slots[lr.WRITER_DONE] = 1
    ring.close()
    return 0


def run_hub(name: str, config: LogConfig, stop: threading.Event) -> int:
    """Every worker that connects to the abstract socket `name`, until `stop` (stdin closed)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind("\0" + name)
    server.listen(64)
    arrivals: queue.SimpleQueue = queue.SimpleQueue()

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                if stop.is_set():
                    return
                log.exception("accepting a worker's connection failed")
                continue
            fds: list[int] = []
            try:
                # an abstract socket has no file permissions: only this user's processes are served
                _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
                if uid != os.getuid():
                    raise ValueError(f"a process of uid {uid} connected")
                conn.settimeout(5.0)
                msg, fds, _, _ = socket.recv_fds(conn, 64, 1)
                conn.settimeout(None)
                if not fds:
                    raise ValueError("no file descriptor")
                st = os.fstat(fds[0])
                ring = lr.Ring.attach(fds[0])
                arrivals.put(RingPump(ring, conn, int(msg or b"0"), ring_id=(st.st_dev, st.st_ino)))
            except (OSError, ValueError) as exc:
                log.error("a connection did not hand over a log ring (%s): ignored", exc)
                conn.close()
            finally:
                for fd in fds:
                    os.close(fd)  # the mapping keeps the memory

    threading.Thread(target=accept, name="ctrops-log-accept", daemon=True).start()
    writer = Writer(config)
    writer.start()
    while True:
        while not arrivals.empty():
            pump = arrivals.get()
            # the same ring again while its first connection is open (a worker that took a hiccup for
            # the hub's death): a second reader would take its records twice, so the newcomer is
            # ignored. Identity is the ring's, not the worker's pid: one process may own several rings.
            if any(p.ring_id == pump.ring_id and not p.connection_closed() for p in writer.pumps):
                log.error("worker %d handed the same ring over twice: the second connection is ignored",
                          pump.worker)
                pump.conn.close()
                pump.ring.close()
                continue
            writer.pumps.append(pump)
        stopping = stop.is_set()
        for pump in writer.pumps:
            if stopping or pump.ring.slots[lr.STOP] or pump.connection_closed():
                pump.stopping = True
        writer.step()
        writer.publish()
        for pump in [p for p in writer.pumps if p.stopping and writer.finish(p)]:
            writer.pumps.remove(pump)
            if pump.conn is not None:
                pump.conn.close()
            pump.ring.close()
        if stopping and not writer.pumps:
            break
        if not writer.backlogged:
            time.sleep(_IDLE_SECONDS)
    server.close()
    writer.close(timeout=max(config.flush_seconds * 4, 60.0))
    return 0


def lower_priority(priority: str) -> None:
    """Put this process below the workers (this thread; threads started later inherit it).

    "idle" (SCHED_IDLE): the writer runs only on CPU the workers leave, and a
    worker that wakes takes the CPU back at once. Measured at 2,000 req/s on 2
    cores: p99 32 ms with nice 5, 15 ms with SCHED_IDLE (see README). The price:
    on a saturated machine the writer gets almost nothing, the rings fill and
    requests' records are dropped (counted). "low" (nice 5) keeps the writer a
    small fixed share of the CPU instead, at the cost of latency.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, 0, WRITER_NICENESS)
        if priority == "idle" and hasattr(os, "SCHED_IDLE"):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except OSError as exc:
        log.warning("could not lower the log writer's priority (%s)", exc)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not (len(argv) == 3 and argv[0] == "--ring") and not (len(argv) == 2 and argv[0] == "--hub"):
        print("usage: python -m ctrops.serve.log_writer --ring <fd> <parent pid> | --hub <socket name>\n"
              "(the LogConfig as JSON on the first line of stdin)", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    logging.basicConfig(level=os.environ.get("CTROPS_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    raw: dict[str, Any] = json.loads(sys.stdin.readline())
    config = LogConfig(**raw)
    lower_priority(config.writer_priority)
    if argv[0] == "--ring":
        return run_single(int(argv[1]), config, int(argv[2]))
    stop = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()  # returns when the supervisor closes the pipe or exits
        stop.set()

    threading.Thread(target=wait_for_eof, name="ctrops-log-stdin", daemon=True).start()
    return run_hub(argv[1], config, stop)


if __name__ == "__main__":
    sys.exit(main())
