"""The prediction log's settings (the `log:` section of serving.yaml), apart from the writer.

A module of its own, with nothing heavier than the standard library, so the
server's supervisor can validate a config and start the log writer process
without importing NumPy, fsspec or Arrow: the supervisor's memory counts
against the server's budget (docs/serving.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from ctrops.errors import ConfigError

WRITER_NICENESS = 5
FORMATS = ("jsonl", "parquet")
WRITERS = ("process", "thread")
WRITER_PRIORITIES = ("idle", "low")
_MIN_RING_BYTES = 4 << 20


@dataclass(frozen=True)
class LogConfig:
    path: str                         # local directory or fsspec URL (s3://bucket/prefix)
    format: str = "jsonl"             # "jsonl" or "parquet"
    rotate_records: int = 1_000_000   # start a new file after this many records ...
    rotate_seconds: float = 300.0     # ... or after this long
    queue_size: int = 20_000          # requests waiting for the writer before drops start ...
    queue_records: int = 200_000      # ... or candidate records waiting (bounds the backlog's memory)
    flush_seconds: float = 0.5        # the writer wakes at least this often
    debug_every: int = 1000           # every n-th request also logs features and weights; 0 = never
    storage_options: dict | None = None
    compression: str = "zstd"         # Parquet codec: zstd, lz4, snappy, gzip or none
    writer: str = "process"           # `ctrops serve`: "process" (one writer process per server) or "thread"
    ring_bytes: int = 8 << 20         # process writer: shared-memory hand-off per worker (a full ring drops)
    writer_priority: str = "idle"     # process writer's CPU: "idle" (only what workers leave) or "low" (nice 5)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"log.format must be one of {FORMATS}, got {self.format!r}")
        for name in ("rotate_records", "queue_size", "queue_records"):
            if getattr(self, name) < 1:
                raise ConfigError(f"log.{name} must be at least 1")
        if self.rotate_seconds <= 0 or self.flush_seconds <= 0:
            raise ConfigError("log.rotate_seconds and log.flush_seconds must be positive")
        if self.debug_every < 0:
            raise ConfigError("log.debug_every must be 0 (off) or a positive request count")
        if self.writer not in WRITERS:
            raise ConfigError(f"log.writer must be one of {WRITERS}, got {self.writer!r}")
        if self.writer_priority not in WRITER_PRIORITIES:
            raise ConfigError(f"log.writer_priority must be one of {WRITER_PRIORITIES}, got {self.writer_priority!r}")
        if self.ring_bytes < _MIN_RING_BYTES:
            raise ConfigError(f"log.ring_bytes must be at least {_MIN_RING_BYTES} (4 MiB: a request body can "
                              f"be 2 MB), got {self.ring_bytes}")
        if self.compression not in _CODECS:
            raise ConfigError(f"log.compression must be one of {sorted(_CODECS)}, got {self.compression!r}")


_CODECS = {"zstd": 1, "lz4": None, "snappy": None, "gzip": None, "none": None}  # codec -> level
