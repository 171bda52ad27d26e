"""Score one context and N candidate ads from raw field values, in process.

This is the one scoring path of ctrops delivery: the HTTP server, Python ad
servers that embed ctrops, and the benchmarks all call `Predictor.score`.
It maps the model file (weights stay in the page cache, shared by every worker
process), rebuilds the feature encoder from the file's header, encodes the
request once (context entries are shared by all candidates) and runs the
native candidate kernel.

    p = Predictor.from_manifest("s3://models", "ctr", "production")
    probs = p.score({"site": "news", "device": "ios"}, [{"ad": "a1"}, {"ad": "a2"}])
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ctrops.artifact.format import ModelFile, load_model
from ctrops.errors import ModelFileError


class Predictor:
    """A loaded model ready to score requests; immutable once built, safe to share across threads."""

    def __init__(self, model: ModelFile, *, version: int | None = None, model_name: str | None = None,
                 shared_table: str | os.PathLike | None = None) -> None:
        """`shared_table`: a file through which processes serving this model share the request path's
        vocabulary slot table (ctrops.data.slot_file; the server puts it beside its cached model file);
        None keeps the table in this process's memory."""
        from ctrops.data.features import FeatureEncoder
        from ctrops.models import scoring

        self._model = model
        # float16 files load as float16 views: convert once here, not on every request
        self.params = scoring.as_native(model.params)
        self.metadata: dict = dict(model.metadata)
        self.encoder = FeatureEncoder.from_header(model.encoder_header, model.encoder_arrays)
        self.model_version: int | None = version if version is not None else _int_or_none(
            self.metadata.get("version"))
        self.model_name: str | None = model_name or self.metadata.get("model_name")
        self.path: Path = Path(model.path)
        self.checksum: str = model.checksum
        self.nbytes: int = int(model.nbytes)
        self._contributions = getattr(scoring, "contributions", None)
        self._candidate_model = scoring.candidate_model(self.params)
        # build the native request encoder (and its look-up table) now, not on the first request
        if shared_table is not None:
            self.encoder.share_request_table(shared_table)
        self.encoder.encode_request({}, [])

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike, *, verify: bool = True, max_bytes: int | None = None,
                  version: int | None = None, model_name: str | None = None) -> "Predictor":
        """Load a `.ctm` file (memory-mapped; `verify` checks every checksum and that weights are finite)."""
        return cls(load_model(path, mmap=True, verify=verify, max_bytes=max_bytes),
                   version=version, model_name=model_name)

    @classmethod
    def from_manifest(cls, storage_url: str, model_name: str, alias_or_version: str | int = "production",
                      *, cache_dir: str | os.PathLike | None = None, max_bytes: int | None = None,
                      canary_tolerance: float | None = 1e-4) -> "Predictor":
        """Fetch the version an alias (or number) names in the storage's manifest, validated like the server does."""
        from ctrops.serve.loader import ModelStore

        store = ModelStore(storage_url, model_name,
                           cache_dir=cache_dir or Path(tempfile.gettempdir()) / "ctrops-models",
                           max_bytes=max_bytes, canary_tolerance=canary_tolerance)
        manifest = store.manifest()
        version = store.resolve(manifest, alias_or_version)
        return store.load(manifest, version)

    # ---- scoring ------------------------------------------------------------------------------
    def encode(self, context: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]]):
        """The request's entries (context once, then each candidate's), as the kernel takes them."""
        return self.encoder.encode_request(context, candidates)

    def score(self, context: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Click probability of each candidate shown in `context` (float64 array, input order)."""
        return self.encoder.score_request(context, candidates, self._candidate_model)

    def explain(self, context: Mapping[str, Any], candidate: Mapping[str, Any]) -> dict[str, Any]:
        """Features one candidate was scored with and the weights that contributed (for debug logs).

        Returns {"model_version", "score", "bias", "features": [{"field", "index", "value",
        "linear"}...], "interactions": [{"a", "b", "term"}...]} where a/b index `features`.
        """
        e = self.encoder.encode_request(context, [candidate])
        lo, hi = int(e.cand_indptr[0]), int(e.cand_indptr[1])
        fields = np.concatenate([e.ctx_fields, e.cand_fields[lo:hi]]).astype(np.int32)
        indices = np.concatenate([e.ctx_indices, e.cand_indices[lo:hi]]).astype(np.int32)
        values = np.concatenate([e.ctx_values, e.cand_values[lo:hi]]).astype(np.float32)
        names = self.field_names
        score = float(self.score(context, [candidate])[0])
        out: dict[str, Any] = {"model_name": self.model_name, "model_version": self.model_version,
                               "score": score, "bias": float(self.params.bias)}
        linear = self.params.linear
        out["features"] = [
            {"field": names[f] if 0 <= f < len(names) else int(f), "index": int(j), "value": float(x),
             "linear": float(linear[j]) if linear is not None else 0.0}
            for f, j, x in zip(fields.tolist(), indices.tolist(), values.tolist())]
        if self._contributions is not None:
            # score the row on a model cut down to its own features: the contribution routine converts
            # whole weight arrays to float64, which on a 1e6-feature model means gigabytes and seconds
            uniq, local = np.unique(indices, return_inverse=True)
            p = self.params
            small = type(p)(model_type=p.model_type, n_features=len(uniq), n_fields=p.n_fields, k=p.k,
                            bias=p.bias, normalize=p.normalize,
                            linear=None if p.linear is None else np.asarray(p.linear[uniq]),
                            latent=None if p.latent is None else np.asarray(p.latent[uniq]))
            try:
                contrib = self._contributions(small, fields, local.astype(np.int32), values, top_pairs=20)
            except TypeError:  # a scorer without top_pairs
                contrib = self._contributions(small, fields, local.astype(np.int32), values)
            plain = _plain(contrib)
            for term in plain.get("linear", []):  # back to the model's feature indices
                term["index"] = int(uniq[term["index"]])
            for term in plain.get("pairs", []):
                term["indices"] = [int(uniq[j]) for j in term["indices"]]
            out["contributions"] = plain
        return out

    # ---- the server's native fast path ----------------------------------------------------------
    @property
    def request_encoder(self) -> Any:
        """The native request encoder `score` uses (`ctrops.data._parse.RequestEncoder`)."""
        return self.encoder.request_encoder()

    @property
    def candidate_model(self) -> Any:
        """The weights as the native candidate kernel takes them (`ctrops.models._ffm.CandidateModel`)."""
        return self._candidate_model

    # ---- description --------------------------------------------------------------------------
    @property
    def model_type(self) -> str:
        return self.params.model_type

    @property
    def field_names(self) -> list[str]:
        names = getattr(self.encoder, "field_names", None)
        return list(names) if names is not None else list(self._model.field_names)

    def describe(self) -> dict[str, Any]:
        p = self.params
        return {"model_name": self.model_name, "model_version": self.model_version,
                "model_type": p.model_type, "n_features": p.n_features, "n_fields": p.n_fields, "k": p.k,
                "nbytes": self.nbytes, "checksum": self.checksum, "path": str(self.path)}

    def close(self) -> None:
        """Release the memory map now (otherwise it goes when the last array using it does)."""
        self._model.close()

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Predictor({self.model_name!r}, version={self.model_version}, {self.params.model_type})"


def _int_or_none(v: Any) -> int | None:
    try:
        return None if v is None else int(v)
    except (TypeError, ValueError):
        return None


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "_asdict"):
        return _plain(obj._asdict())
    if hasattr(obj, "__dict__"):
        return _plain(vars(obj))
    return obj


__all__ = ["Predictor", "ModelFileError"]
