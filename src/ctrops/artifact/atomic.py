"""Write a local file so readers see the old content or the new, never a half-written file.

The model file, the manifest and downloaded copies all go through here: a temp
file in the target's folder (same filesystem, so the rename is atomic), fsync,
then rename; on any error the temp file is removed and the target untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_local_file(target: str | os.PathLike) -> Iterator[BinaryIO]:
    """Yield a binary file; when the block ends without error it replaces `target`.

    Raising inside the block (e.g. a checksum mismatch) abandons the write.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; the serving user must be able to read the file
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
