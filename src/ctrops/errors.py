"""Errors users see. Each carries where the problem is (file, line, field)."""

from __future__ import annotations


class CtropsError(Exception):
    """Base class: everything ctrops raises on purpose derives from it."""


class DataError(CtropsError, ValueError):
    """Input data is unusable; the message names the file, line and field."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        where = ", ".join(
            part for part in (
                f"file {path}" if path else "",
                f"line {line}" if line is not None else "",
                f"field {field!r}" if field else "",
            ) if part
        )
        super().__init__(f"{message} ({where})" if where else message)
        self.path, self.line, self.field = path, line, field


class ModelFileError(CtropsError, ValueError):
    """A model file is corrupt, truncated, too large or otherwise refused."""


class ConfigError(CtropsError, ValueError):
    """A YAML/CLI configuration is invalid; the message names the key."""
