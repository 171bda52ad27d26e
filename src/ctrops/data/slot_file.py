"""One copy of the request path's vocabulary slot table for every worker process on a machine.

The request encoder probes a (key, value) slot table that is a reordering of
the model file's vocabulary arrays (`_parse.SlotTable`, 16 bytes per slot:
32 MiB for a 1e6-value vocabulary). Built in each worker's private memory,
it costs that much per worker; written once to a file beside the cached model
and mapped read-only, it lives once in the page cache, shared like the model's
weights. The file is derived data, never trusted: a worker that maps it checks
every slot against the model's arrays (a ~20 ms pass, next to the model's own
validation) and rebuilds it when it differs (another model under the same name,
a torn write). Workers that load the same version at once race harmlessly:
each writes a private temporary file, and the first hard link to the final
name wins; the others map the winner's, so they share it.

Where the file cannot be written (read-only folder, full disk) the table is
built in private memory as before, with a warning.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
from pathlib import Path

import numpy as np

from ctrops.data import _parse

log = logging.getLogger(__name__)

SLOT_FILE_SUFFIX = ".slots"


def slot_file_for(model_path: str | os.PathLike) -> Path:
    """Where the shared slot table of the model file at `model_path` lives."""
    p = Path(model_path)
    return p.with_name(p.name + SLOT_FILE_SUFFIX)


def shared_slot_table(path: str | os.PathLike, keys: np.ndarray, values: np.ndarray) -> "_parse.SlotTable":
    """The slot table for (`keys`, `values`) served from the file at `path`, written there first if the
    file is missing or does not match; a private table when the file cannot be written."""
    path = Path(path)
    keys = np.ascontiguousarray(keys, dtype=np.uint64)
    values = np.ascontiguousarray(values, dtype=np.int32)
    if len(keys) == 0:
        return _parse.SlotTable(keys, values)  # nothing to share
    table = _map_if_matching(path, keys, values)
    if table is not None:
        return table
    stale = _inode(path)  # a file found wrong just now (None: there was none)
    private = _parse.SlotTable(keys, values)
    try:
        return _publish(path, private, keys, values, stale)
    except OSError as exc:
        log.warning("cannot write the shared slot table %s (%s): this process keeps a private copy "
                    "(%.0f MiB)", path, exc, private.nbytes / 2**20)
        return private


def _map_if_matching(path: Path, keys: np.ndarray, values: np.ndarray) -> "_parse.SlotTable | None":
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size != len(keys) * 16:
                log.info("slot table %s holds %d bytes, not %d: rebuilding it", path, size, len(keys) * 16)
                return None
            mapped = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot map the slot table %s (%s): rebuilding it", path, exc)
        return None
    try:
        return _parse.SlotTable(keys, values, buffer=mapped)
    except ValueError as exc:  # written for another model, or torn
        log.warning("slot table %s does not match the model (%s): rebuilding it", path, exc)
        mapped.close()
        return None


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _publish(path: Path, private: "_parse.SlotTable", keys: np.ndarray, values: np.ndarray,
             stale: int | None) -> "_parse.SlotTable":
    """Write `private` under a temporary name, link it to `path` (or replace the stale file there, inode
    `stale`) and map it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(private.bytes_view())
        try:
            os.link(tmp, path)  # first writer wins; a later one finds the file and maps it
        except FileExistsError:
            # another worker's fresh file is mapped; the one already found wrong is not checked twice
            table = None if _inode(path) == stale else _map_if_matching(path, keys, values)
            if table is not None:
                return table
            os.replace(tmp, path)  # the file there is stale: ours takes its place
    finally:
        tmp.unlink(missing_ok=True)
    table = _map_if_matching(path, keys, values)
    if table is None:
        raise OSError(f"the slot table just written to {path} does not read back")
    return table
