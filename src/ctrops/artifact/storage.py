"""The few storage operations publishing needs, on any fsspec filesystem.

Plain paths and `file://` URLs are the local default; `s3://bucket/prefix`
works through s3fs (pass `storage_options`, e.g. `{"endpoint_url": ...}`).
Atomicity is what matters here: a reader must never see half a manifest.
Locally that is temp file + fsync + rename in the same folder; on object stores
a single PUT (or a completed multipart upload) is all-or-nothing by design.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ctrops.artifact.atomic import atomic_local_file

_CHUNK = 1 << 22


class Storage:
    """A storage root: an fsspec filesystem plus the root path inside it."""

    def __init__(self, url: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> None:
        self.url = str(url)
        self.fs, root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.root = root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def path(self, relative: str) -> str:
        """Absolute path in the filesystem of a path relative to the root."""
        return f"{self.root}/{relative.lstrip('/')}" if self.root else relative.lstrip("/")

    def describe(self, relative: str) -> str:
        """A human-readable location for error messages."""
        return f"{self.url.rstrip('/')}/{relative.lstrip('/')}"

    def read_bytes(self, relative: str) -> bytes:
        return bytes(self.fs.cat_file(self.path(relative)))

    def write_bytes_atomic(self, relative: str, data: bytes) -> None:
        """Replace `relative` with `data` so readers see the old or the new content, never a mix."""
        target = self.path(relative)
        if self.is_local:
            with atomic_local_file(target) as fh:
                fh.write(data)
        else:
            self.fs.pipe_file(target, data)

    def upload_file_atomic(self, local_path: str | os.PathLike, relative: str) -> None:
        """Copy a local file to `relative`; the target name appears only once complete."""
        target = self.path(relative)
        if self.is_local:
            with atomic_local_file(target) as out, open(local_path, "rb") as src:
                _copy(src, out)
        else:
            self.fs.put_file(str(local_path), target)

    def download_verified(self, relative: str, local_path: Path, sha256: str) -> None:
        """Download to a temp file beside `local_path`, check its sha256, then rename into place.

        From local storage on the same filesystem the file is hard-linked, not
        copied: published files are never modified in place (a new version is
        a new file, written by rename), and copying hundreds of MB, then
        fsyncing them, is an I/O burst a serving host does not need.
        """
        if self.is_local and self._link_verified(relative, Path(local_path), sha256):
            return
        digest = hashlib.sha256()
        with atomic_local_file(local_path) as out, self.fs.open(self.path(relative), "rb") as src:
            _copy(src, out, digest)
            if digest.hexdigest() != sha256:  # raising here abandons the download
                raise ValueError(f"{self.describe(relative)}: sha256 {digest.hexdigest()} does not match the "
                                 f"manifest's {sha256}")

    def _link_verified(self, relative: str, local_path: Path, sha256: str) -> bool:
        """Hard-link `relative` to `local_path` once its sha256 matches; False when linking is impossible."""
        local_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = local_path.with_name(f".{local_path.name}.{os.getpid()}.link")
        tmp.unlink(missing_ok=True)
        try:
            os.link(self.path(relative), tmp)
        except OSError:  # another filesystem, no permission, missing: the copy path decides
            return False
        try:
            got = sha256_file(tmp)
            if got != sha256:
                raise ValueError(f"{self.describe(relative)}: sha256 {got} does not match the manifest's {sha256}")
            os.replace(tmp, local_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return True

    def remove_tree(self, relative: str) -> None:
        """Delete a folder and everything under it; absent is fine (listing caches may be stale)."""
        self.fs.invalidate_cache(self.path(relative))
        try:
            self.fs.rm(self.path(relative), recursive=True)
        except FileNotFoundError:
            pass


def _copy(src: BinaryIO, out: BinaryIO, digest: Any = None) -> None:
    while chunk := src.read(_CHUNK):
        if digest is not None:
            digest.update(chunk)
        out.write(chunk)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a local file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
