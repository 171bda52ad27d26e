"""The model file (`.ctm`), pruning, and publishing to storage behind a manifest.

    save_model / load_model / inspect_model   docs/model-format.md
    prune_model                               shrink vocab-indexed models
    publish_model / read_manifest / set_alias / fetch_model   docs/manifest.md
"""

from ctrops.artifact.format import (
    ModelFile,
    ModelFileInfo,
    ModelParts,
    file_size_of,
    inspect_model,
    load_model,
    save_model,
    save_parts,
)
from ctrops.artifact.manifest import (
    Manifest,
    ManifestEntry,
    fetch_model,
    publish_model,
    read_manifest,
    remove_alias,
    set_alias,
)
from ctrops.artifact.prune import PruneReport, prune_model

__all__ = [
    "Manifest", "ManifestEntry", "ModelFile", "ModelFileInfo", "ModelParts", "PruneReport",
    "fetch_model", "file_size_of", "inspect_model", "load_model", "prune_model", "publish_model",
    "read_manifest", "remove_alias", "save_model", "save_parts", "set_alias",
]
