"""data stage of ctrops: field specs, readers, the feature encoder, the binary cache, conversion.

Public names are imported lazily so `import ctrops.data.matrix` stays light.
Conversion is `ctrops.data.convert.convert` (the submodule shares its name).
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "FieldMatrix": "ctrops.data.matrix",
    "FieldSpec": "ctrops.data.spec",
    "FieldDef": "ctrops.data.spec",
    "FeatureEncoder": "ctrops.data.features",
    "RequestEntries": "ctrops.data.features",
    "KeyedChunk": "ctrops.data.readers",
    "FORMATS": "ctrops.data.readers",
    "iter_keyed_chunks": "ctrops.data.readers",
    "read_libffm": "ctrops.data.readers",
    "open_binary": "ctrops.data.readers",
    "RejectLog": "ctrops.data.rejects",
    "load_dataset": "ctrops.data.dataset",
    "ReadReport": "ctrops.data.dataset",
    "ConvertReport": "ctrops.data.convert",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ctrops.data' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
