"""Loading from storage: validation before the swap, refusal keeps the old model, start-up fallback."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from ctrops.artifact.format import PREAMBLE
from ctrops.artifact.manifest import publish_model, set_alias
from ctrops.predict import Predictor
from ctrops.serve.app import build_loader, create_app
from ctrops.serve.config import ServingConfig
from serve_support import fitted_encoder, make_model, reference_scores, save

NAME = "ctr"
CONTEXT = {"f0": "v1"}
CANDIDATES = [{"f1": f"v{i}", "f2": f"v{(3 * i) % 10}"} for i in range(6)]



def make_model_parts(model_type: str = "ffm", *, seed: int, values_per_field: int = 10):
    values = tuple(f"v{i}" for i in range(values_per_field))
    return make_model(seed, model_type, encoder=fitted_encoder(values=values))


def save_parts(path: Path, model) -> Path:
    return save(path, model)


def publish(tmp_path: Path, parts, version: int, aliases=("production",), canary=True):
    path = tmp_path / f"build-{version}.ctm"
    save_parts(path, parts)
    rows = [{"context": CONTEXT, "candidates": CANDIDATES,
             "expected": reference_scores(parts, CONTEXT, CANDIDATES).tolist()}] if canary else []
    return publish_model(str(tmp_path / "store"), NAME, path, version=version, canary=rows, aliases=aliases)


def inject(tmp_path: Path, version: int, blob: bytes, canary: list | None = None, alias="production") -> None:
    """Put a file the publisher would refuse (corrupt, NaN) into storage with a matching manifest entry."""
    rel = f"models/{NAME}/{version}/model.ctm"
    target = tmp_path / "store" / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(blob)
    mpath = tmp_path / "store" / "models" / NAME / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["versions"].insert(0, {"version": version, "path": rel, "sha256": hashlib.sha256(blob).hexdigest(),
                                    "size_bytes": len(blob), "created_at": "2026-11-23T00:00:00+00:00",
                                    "model_type": "ffm", "metrics": {}, "canary": canary or []})
    manifest["aliases"][alias] = version
    mpath.write_text(json.dumps(manifest))


def nan_file(tmp_path: Path, parts) -> bytes:
    """A model file whose latent section holds a NaN but whose checksums are all consistent."""
    path = tmp_path / "nan.ctm"
    save_parts(path, parts)
    raw = bytearray(path.read_bytes())
    header_len = PREAMBLE.unpack_from(raw)[3]
    header = json.loads(bytes(raw[64:64 + header_len]))
    sec = next(s for s in header["sections"] if s["name"] == "latent")
    struct.pack_into("<f", raw, sec["offset"] + 4 * 5, float("nan"))
    new_sha = hashlib.sha256(raw[sec["offset"]:sec["offset"] + sec["nbytes"]]).hexdigest()
    blob = bytes(raw[64:64 + header_len]).replace(sec["sha256"].encode(), new_sha.encode())
    raw[64:64 + header_len] = blob
    raw[24:56] = hashlib.sha256(blob).digest()  # header checksum in the preamble
    return bytes(raw)


def config(tmp_path: Path, **model) -> ServingConfig:
    return ServingConfig.from_dict({"model": {"storage": str(tmp_path / "store"), "name": NAME, "poll_seconds": 0,
                                              "cache_dir": str(tmp_path / "cache"), **model}}, source="t.yaml")


def test_predictor_matches_reference_and_explains(tmp_path):
    parts = make_model_parts("ffm", seed=1)
    publish(tmp_path, parts, 1)
    p = Predictor.from_manifest(str(tmp_path / "store"), NAME, "production", cache_dir=tmp_path / "cache")
    assert p.model_version == 1
    np.testing.assert_allclose(p.score(CONTEXT, CANDIDATES), reference_scores(parts, CONTEXT, CANDIDATES),
                               rtol=1e-5, atol=1e-7)
    ex = p.explain(CONTEXT, CANDIDATES[0])
    assert {f["field"] for f in ex["features"]} == {"f0", "f1", "f2"}
    assert ex["score"] == pytest.approx(float(reference_scores(parts, CONTEXT, CANDIDATES[:1])[0]), rel=1e-5)
    logit = ex["contributions"]["logit"]
    assert 1 / (1 + np.exp(-logit)) == pytest.approx(ex["score"], rel=1e-5)
    used = {f["index"] for f in ex["features"]}
    assert {t["index"] for t in ex["contributions"]["linear"]} == used  # indices are the model's own
    p.close()


def test_reload_swaps_to_a_good_new_version(tmp_path):
    publish(tmp_path, make_model_parts("ffm", seed=1), 1)
    loader = build_loader(config(tmp_path))
    assert loader.reload().outcome == "success"
    assert loader.state.versions() == {"production": 1}
    assert loader.reload().outcome == "unchanged"
    publish(tmp_path, make_model_parts("ffm", seed=2), 2)
    assert loader.reload().outcome == "success" and loader.state.versions() == {"production": 2}


@pytest.mark.parametrize("kind", ["bit_flip_after_publish", "corrupt_but_consistent_sha", "nan", "oversized",
                                  "canary_mismatch", "truncated"])
def test_bad_version_is_refused_and_old_model_keeps_serving(tmp_path, kind):
    good = make_model_parts("ffm", seed=1)
    publish(tmp_path, good, 1)
    max_bytes = None
    if kind == "bit_flip_after_publish":
        publish(tmp_path, make_model_parts("ffm", seed=2), 2)
        f = tmp_path / "store" / "models" / NAME / "2" / "model.ctm"
        raw = bytearray(f.read_bytes()); raw[-10] ^= 0xFF; f.write_bytes(bytes(raw))
    elif kind == "corrupt_but_consistent_sha":
        src = tmp_path / "v2.ctm"; save_parts(src, make_model_parts("ffm", seed=2))
        raw = bytearray(src.read_bytes()); raw[-10] ^= 0xFF
        inject(tmp_path, 2, bytes(raw))
    elif kind == "truncated":
        src = tmp_path / "v2.ctm"; save_parts(src, make_model_parts("ffm", seed=2))
        inject(tmp_path, 2, src.read_bytes()[:-100])
    elif kind == "nan":
        inject(tmp_path, 2, nan_file(tmp_path, make_model_parts("ffm", seed=2)))
    elif kind == "oversized":
        big = make_model_parts("ffm", seed=2, values_per_field=400)
        publish(tmp_path, big, 2)
        max_bytes = (tmp_path / "store" / "models" / NAME / "1" / "model.ctm").stat().st_size + 1000
    elif kind == "canary_mismatch":
        other = make_model_parts("ffm", seed=3)
        src = tmp_path / "v2.ctm"; save_parts(src, make_model_parts("ffm", seed=2))
        inject(tmp_path, 2, src.read_bytes(), canary=[{"context": CONTEXT, "candidates": CANDIDATES,
                                                       "expected": reference_scores(other, CONTEXT, CANDIDATES).tolist()}])
    loader = build_loader(config(tmp_path, max_bytes=max_bytes))
    from ctrops.serve.metrics import ServerMetrics
    loader.metrics = ServerMetrics()
    # start-up: the bad newest version falls back to the newest good one
    assert loader.reload().outcome == "success"
    assert loader.state.versions() == {"production": 1}
    reason = {"bit_flip_after_publish": "fetch", "corrupt_but_consistent_sha": "checksum", "nan": "nonfinite",
              "oversized": "size", "canary_mismatch": "canary", "truncated": "format"}[kind]
    assert f"version 2 refused ({reason})" in loader.state.arms["production"].problem
    # later polls keep serving version 1 and do not retry the refused file
    assert loader.reload().outcome == "unchanged"
    assert loader.state.versions() == {"production": 1}
    text = loader.metrics.render().decode()
    refused = [line for line in text.splitlines() if line.startswith("ctrops_model_versions_refused_total{")]
    assert len(refused) == 1 and refused[0].endswith(" 1.0"), refused
    # a following good version is picked up
    publish(tmp_path, make_model_parts("ffm", seed=4), 3)
    assert loader.reload().outcome == "success" and loader.state.versions() == {"production": 3}


def test_bad_version_during_serving_keeps_old_model(tmp_path):
    good = make_model_parts("ffm", seed=1)
    publish(tmp_path, good, 1)
    cfg = config(tmp_path)
    loader = build_loader(cfg)
    with TestClient(create_app(cfg, loader=loader)) as c:
        body = {"context": CONTEXT, "candidates": [{"id": i, "fields": f} for i, f in enumerate(CANDIDATES)]}
        before = c.post("/v1/predict", json=body).json()
        assert before["model_version"] == 1
        inject(tmp_path, 2, nan_file(tmp_path, make_model_parts("ffm", seed=2)))
        assert loader.reload().outcome == "failure"
        after = c.post("/v1/predict", json=body).json()
        assert after["model_version"] == 1
        assert [x["score"] for x in after["candidates"]] == [x["score"] for x in before["candidates"]]
        by_id = {x["id"]: x["score"] for x in after["candidates"]}
        np.testing.assert_allclose([by_id[i] for i in range(6)], reference_scores(good, CONTEXT, CANDIDATES),
                                   rtol=1e-5)


def test_no_good_version_fails_readiness_clearly(tmp_path):
    publish(tmp_path, make_model_parts("ffm", seed=1), 1)
    f = tmp_path / "store" / "models" / NAME / "1" / "model.ctm"
    raw = bytearray(f.read_bytes()); raw[-10] ^= 0xFF; f.write_bytes(bytes(raw))
    cfg = config(tmp_path)
    with TestClient(create_app(cfg)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503
        assert "arm 'production' has no model" in r.json()["message"] and "version 1" in r.json()["message"]
        assert c.post("/v1/predict", json={"context": {}, "candidates": [{"id": 1, "fields": {}}]}).status_code == 503


def test_missing_storage_fails_readiness(tmp_path):
    with TestClient(create_app(config(tmp_path))) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and "no manifest" in r.json()["message"]


def test_experiment_arms_bind_aliases_and_changes_apply_on_reload(tmp_path):
    publish(tmp_path, make_model_parts("ffm", seed=1), 1)
    publish(tmp_path, make_model_parts("ffm", seed=2), 2, aliases=("candidate",))
    exp = tmp_path / "exp.yaml"
    exp.write_text("name: e\nsalt: s\narms:\n  - {name: production, share: 80, model: production}\n"
                   "  - {name: candidate, share: 15, model: candidate}\n  - {name: random, share: 5, random: true}\n")
    cfg = ServingConfig.from_dict({"model": {"storage": str(tmp_path / "store"), "name": NAME, "poll_seconds": 0,
                                             "cache_dir": str(tmp_path / "cache")}, "experiment": "exp.yaml"},
                                  source="t.yaml", base_dir=tmp_path)
    loader = build_loader(cfg)
    assert loader.reload().outcome == "success"
    assert loader.state.versions() == {"production": 1, "candidate": 2, "random": None}
    # the same Predictor object serves every arm bound to one version
    exp.write_text("name: e2\nsalt: s\narms:\n  - {name: production, share: 50, model: production}\n"
                   "  - {name: candidate, share: 50, model: 1}\n")
    assert loader.reload().outcome == "success"
    assert loader.state.versions() == {"production": 1, "candidate": 1}
    assert loader.state.arms["production"].predictor is loader.state.arms["candidate"].predictor
    # an invalid edit is refused and the running experiment stays
    exp.write_text("name: e3\narms:\n  - {name: production, share: 50, model: nosuchalias}\n"
                   "  - {name: b, share: 50, model: 1}\n")
    result = loader.reload()
    assert result.outcome == "failure" and "nosuchalias" in result.message
    assert loader.state.experiment.name == "e2"
    # promoting through the manifest alias is picked up
    set_alias(str(tmp_path / "store"), NAME, "production", 2)
    exp.write_text("name: e2\nsalt: s\narms:\n  - {name: production, share: 100, model: production}\n")
    assert loader.reload().outcome == "success" and loader.state.versions() == {"production": 2}


def test_swap_under_concurrent_scoring_fails_nothing(tmp_path):
    publish(tmp_path, make_model_parts("ffm", seed=1), 1)
    loader = build_loader(config(tmp_path))
    loader.reload()
    errors: list[BaseException] = []
    stop = threading.Event()

    def score_forever():
        while not stop.is_set():
            try:
                state = loader.state
                p = state.arms["production"].predictor
                s = p.score(CONTEXT, CANDIDATES)
                assert s.shape == (6,) and np.all((s > 0) & (s < 1))
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=score_forever) for _ in range(2)]
    for t in threads:
        t.start()
    for v in range(2, 6):
        publish(tmp_path, make_model_parts("ffm", seed=v), v)
        assert loader.reload().outcome == "success"
    stop.set()
    for t in threads:
        t.join()
    assert not errors and loader.state.versions() == {"production": 5}


def test_whole_file_checks_run_once_per_file_and_in_another_process(tmp_path, monkeypatch):
    from ctrops.serve import loader as loader_mod

    publish(tmp_path, make_model_parts("ffm", seed=1), 1)
    first = build_loader(config(tmp_path))
    assert first.reload().outcome == "success"
    cached = next((tmp_path / "cache" / NAME / "1").rglob("*.ctm"))
    sha = hashlib.sha256(cached.read_bytes()).hexdigest()
    assert loader_mod.verified_marker_matches(cached, sha)
    assert not loader_mod.verified_marker_matches(cached, "0" * 64)

    calls = []
    monkeypatch.setattr(loader_mod.ModelStore, "_validate_elsewhere", lambda self, job: calls.append(job) or {})
    second = build_loader(config(tmp_path))  # a second worker, or a restart: the marker vouches for the file
    assert second.reload().outcome == "success" and calls == []

    fresh = cached.with_name("fresh")
    fresh.write_bytes(cached.read_bytes())
    fresh.replace(cached)  # same bytes in a new file (as a re-download writes it): checked again
    third = build_loader(config(tmp_path))
    third.reload()
    assert len(calls) == 1 and not third.state.ready  # the stub validator refused it


def test_swap_tears_down_the_retired_mapping_and_in_flight_scoring_still_works(tmp_path):
    from ctrops.serve import loader as loader_mod

    parts1 = make_model_parts("ffm", seed=1)
    publish(tmp_path, parts1, 1)
    loader = build_loader(config(tmp_path))
    assert loader.reload().outcome == "success"
    old = loader.state.arms["production"].predictor  # an in-flight request still holds this one
    before = old.score(CONTEXT, CANDIDATES)
    publish(tmp_path, make_model_parts("ffm", seed=2), 2)
    assert loader.reload().outcome == "success"  # the swap advised DONTNEED on version 1's mapping
    np.testing.assert_array_equal(old.score(CONTEXT, CANDIDATES), before)  # pages fault back in from the file
    if sys.platform == "linux":
        assert loader_mod.advise(loader.state.arms["production"].predictor, loader_mod.MADV_POPULATE_READ)


def test_local_storage_is_linked_into_the_cache_not_copied(tmp_path):
    publish(tmp_path, make_model_parts("ffm", seed=1), 1)
    assert build_loader(config(tmp_path)).reload().outcome == "success"
    cached = next((tmp_path / "cache" / NAME / "1").rglob("*.ctm"))
    stored = tmp_path / "store" / "models" / NAME / "1" / "model.ctm"
    assert cached.stat().st_ino == stored.stat().st_ino


def _pages_mapped(address: int, length: int) -> np.ndarray:
    """Whether each page of [address, address + length) has a page-table entry (/proc/self/pagemap, bit 63)."""
    page = os.sysconf("SC_PAGE_SIZE")
    with open("/proc/self/pagemap", "rb") as fh:
        fh.seek(address // page * 8)
        entries = np.frombuffer(fh.read((length + page - 1) // page * 8), dtype="<u8")
    return (entries >> np.uint64(63)).astype(bool)


@pytest.mark.skipif(sys.platform != "linux", reason="madvise(MADV_POPULATE_READ) is Linux-only")
def test_populate_gently_maps_every_page_of_the_model(tmp_path, monkeypatch):
    """The new model's pages are mapped before the swap, slice by slice, so requests take no page faults."""
    import mmap
    from types import SimpleNamespace

    from ctrops.serve import loader

    path = tmp_path / "weights.bin"
    size = 3 * (1 << 20) + 4096 * 5                      # not a whole number of slices
    path.write_bytes(np.random.default_rng(0).bytes(size))
    calls = []
    real = loader._madvise

    def recording(address: int, length: int, advice: int) -> bool:
        calls.append((address, length, advice))
        return real(address, length, advice)

    monkeypatch.setattr(loader, "_madvise", recording)
    with open(path, "rb") as fh:
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        address = np.frombuffer(buf, dtype=np.uint8).ctypes.data
        predictor = SimpleNamespace(_model=SimpleNamespace(_buffer=buf))
        assert loader.populate_gently(predictor, chunk_bytes=1 << 20, duty=0.9)
        # slices of at most a chunk that tile the mapping exactly, each a populate call that succeeded
        assert [c[2] for c in calls] == [loader.MADV_POPULATE_READ] * 4
        assert all(length <= 1 << 20 for _, length, _ in calls)
        starts = [a for a, _, _ in calls]
        assert starts[0] == address and all(a + n == b for (a, n, _), b in zip(calls, starts[1:]))
        assert calls[-1][0] + calls[-1][1] == address + size
        assert _pages_mapped(address, size).all()
        assert not loader.populate_gently(SimpleNamespace(_model=SimpleNamespace(_buffer=b"bytes, not a mapping")))
    finally:
        buf.close()


def _locked_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmLck:"):
            return int(line.split()[1])
    raise AssertionError("no VmLck in /proc/self/status")


@pytest.mark.skipif(sys.platform != "linux", reason="mlock over /proc/self/status is checked on Linux")
def test_lock_memory_locks_the_serving_model_and_unlocks_the_retired_one(tmp_path):
    """model.lock_memory: the serving model's pages are locked (VmLck grows by the file's size), the
    retired model's are unlocked at the swap, and the locked model scores as before."""
    before = _locked_kib()
    publish(tmp_path, make_model_parts("ffm", seed=1), 1)
    loader = build_loader(config(tmp_path, lock_memory=True))
    assert loader.reload().outcome == "success"
    first = loader.state.arms["production"].predictor
    size1 = next((tmp_path / "cache" / NAME / "1").rglob("*.ctm")).stat().st_size
    if _locked_kib() == before:
        pytest.skip("this process may not lock memory (RLIMIT_MEMLOCK without CAP_IPC_LOCK)")
    assert _locked_kib() - before >= size1 // 1024
    scores = first.score(CONTEXT, CANDIDATES)
    publish(tmp_path, make_model_parts("ffm", seed=2), 2)
    assert loader.reload().outcome == "success"
    size2 = next((tmp_path / "cache" / NAME / "2").rglob("*.ctm")).stat().st_size
    assert size2 // 1024 <= _locked_kib() - before <= size2 // 1024 + 8  # version 1 unlocked: only 2's pages
    np.testing.assert_array_equal(first.score(CONTEXT, CANDIDATES), scores)  # in-flight holders still score


def test_a_refused_lock_is_undone_and_the_model_serves_unlocked(tmp_path, monkeypatch, caplog):
    """When the kernel refuses to lock a slice (RLIMIT_MEMLOCK), the slices already locked are unlocked,
    a warning says how to allow it, and the version still loads and serves."""
    import ctypes
    from functools import partial
    from types import SimpleNamespace

    from ctrops.serve import loader as loader_mod

    real = loader_mod._libc()
    if real is None:
        pytest.skip("no libc through ctypes")
    calls = []

    def mlock(address, length):
        calls.append(("mlock", address.value, length.value))
        if len(calls) > 1:
            ctypes.set_errno(12)  # ENOMEM: over RLIMIT_MEMLOCK
            return -1
        return 0

    def munlock(address, length):
        calls.append(("munlock", address.value, length.value))
        return 0

    monkeypatch.setattr(loader_mod, "_libc", lambda: SimpleNamespace(mlock=mlock, munlock=munlock,
                                                                     madvise=real.madvise))
    monkeypatch.setattr(loader_mod, "_lock_warned", False)
    monkeypatch.setattr(loader_mod, "lock_gently", partial(loader_mod.lock_gently, chunk_bytes=4096))
    publish(tmp_path, make_model_parts("ffm", seed=1), 1)
    loader = build_loader(config(tmp_path, lock_memory=True))
    with caplog.at_level("WARNING", logger="ctrops.serve.loader"):
        assert loader.reload().outcome == "success"
    predictor = loader.state.arms["production"].predictor
    assert predictor.score(CONTEXT, CANDIDATES).shape == (len(CANDIDATES),)
    locks = [c for c in calls if c[0] == "mlock"]
    assert len(locks) == 2 and calls[2] == ("munlock", locks[0][1], locks[0][2])  # the first slice, undone
    assert "could not lock" in caplog.text and "RLIMIT_MEMLOCK" in caplog.text


def test_workers_share_the_request_table_through_a_file_beside_the_cached_model(tmp_path):
    """Each worker's loader maps the same slot-table file (one copy in the page cache for all of them)
    instead of building the table in its own memory; the second does not rewrite it."""
    publish(tmp_path, make_model_parts("ffm", seed=1), 1)
    first = build_loader(config(tmp_path))
    assert first.reload().outcome == "success"
    cached = next((tmp_path / "cache" / NAME / "1").rglob("*.ctm"))
    slots = cached.with_name(cached.name + ".slots")
    written = slots.stat()
    second = build_loader(config(tmp_path))
    assert second.reload().outcome == "success"
    assert (slots.stat().st_ino, slots.stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    for loader in (first, second):
        predictor = loader.state.arms["production"].predictor
        table = predictor.encoder.request_encoder().table
        assert table.shared and table.nbytes == written.st_size
    np.testing.assert_array_equal(second.state.arms["production"].predictor.score(CONTEXT, CANDIDATES),
                                  Predictor.from_file(cached).score(CONTEXT, CANDIDATES))


def test_a_storage_failure_is_retried_at_the_next_poll_not_remembered(tmp_path, monkeypatch):
    """Storage that cannot be read says nothing about the file: the version is tried again at the next
    reload (and serves then), while the current model keeps serving meanwhile. A wrong file (sha256
    mismatch) stays refused."""
    from ctrops.artifact.storage import Storage
    from ctrops.serve import loader as loader_mod

    monkeypatch.setattr(loader_mod.ModelStore, "_validate_elsewhere", lambda self, job: loader_mod.validate_version(
        **job))
    publish(tmp_path, make_model_parts("ffm", seed=1), 1)
    loader = build_loader(config(tmp_path))
    assert loader.reload().outcome == "success"
    publish(tmp_path, make_model_parts("ffm", seed=2), 2)
    real = Storage.download_verified
    failures = []

    def unreachable_once(self, relative, local_path, sha256):
        if not failures:
            failures.append(relative)
            raise ConnectionError("storage endpoint unreachable")
        return real(self, relative, local_path, sha256)

    monkeypatch.setattr(Storage, "download_verified", unreachable_once)
    first = loader.reload()
    assert first.outcome == "failure" and "will retry" in first.message and "unreachable" in first.message
    assert loader.state.versions() == {"production": 1}  # the current model keeps serving
    second = loader.reload()
    assert second.outcome == "success" and loader.state.versions() == {"production": 2}
    assert failures == ["models/ctr/2/model.ctm"]


@pytest.mark.parametrize("exc, transient", [
    (ConnectionError("reset"), True), (TimeoutError("read timed out"), True), (PermissionError(13, "denied"), True),
    (FileNotFoundError(2, "gone"), True), (ValueError("bad"), False), (RuntimeError("bug"), False)])
def test_fetch_failures_are_told_apart(exc, transient):
    from ctrops.errors import ModelFileError
    from ctrops.serve.loader import _transient

    assert _transient(exc) is transient
    assert _transient(ModelFileError("s3://m/x.ctm: model file of version 3 is missing from storage"))
    assert not _transient(ModelFileError("s3://m/x.ctm: sha256 ab does not match the manifest's cd"))


def _cached_versions(tmp_path: Path) -> list[int]:
    return sorted(int(d.name) for d in (tmp_path / "cache" / NAME).iterdir() if d.is_dir())


@pytest.fixture()
def copying_storage(monkeypatch):
    """Storage on another filesystem than the cache (or remote): fetched files are copies, not links."""
    from ctrops.artifact.storage import Storage
    from ctrops.serve import loader as loader_mod

    monkeypatch.setattr(Storage, "_link_verified", lambda self, relative, local_path, sha256: False)
    # validated in this process, so that the patch applies
    monkeypatch.setattr(loader_mod.ModelStore, "_validate_elsewhere",
                        lambda self, job: loader_mod.validate_version(**job))


def test_the_cache_keeps_what_is_in_use_and_the_newest_and_drops_the_rest(tmp_path, copying_storage):
    """Each swap deletes cached versions nobody needs: the serving one, the manifest's aliases and the
    `cache_keep` newest stay; a retired model whose files were deleted still scores (its mapping lives)."""
    publish(tmp_path, make_model_parts("ffm", seed=1), 1, aliases=("production", "candidate"))
    loader = build_loader(config(tmp_path, cache_keep=1))
    assert loader.reload().outcome == "success"
    first = loader.state.arms["production"].predictor
    before = first.score(CONTEXT, CANDIDATES)
    for v in (2, 3, 4):
        publish(tmp_path, make_model_parts("ffm", seed=v), v)
        assert loader.reload().outcome == "success"
    # 4 serves (production) and is the newest; 1 is still the manifest's 'candidate'; 2 and 3 are gone
    assert _cached_versions(tmp_path) == [1, 4]
    publish(tmp_path, make_model_parts("ffm", seed=5), 5, aliases=("production", "candidate"))
    assert loader.reload().outcome == "success"
    assert _cached_versions(tmp_path) == [5]
    assert not (tmp_path / "cache" / NAME / "1").exists()
    np.testing.assert_array_equal(first.score(CONTEXT, CANDIDATES), before)  # an in-flight holder of version 1


def test_the_cache_spares_a_version_being_validated_and_keeps_all_when_told(tmp_path, copying_storage):
    import fcntl

    publish(tmp_path, make_model_parts("ffm", seed=1), 1)
    loader = build_loader(config(tmp_path, cache_keep=0))
    assert loader.reload().outcome == "success"
    publish(tmp_path, make_model_parts("ffm", seed=2), 2)
    with open(tmp_path / "cache" / NAME / "1" / ".validate.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another worker fetching or validating version 1 right now
        assert loader.reload().outcome == "success"
        assert _cached_versions(tmp_path) == [1, 2]
    assert loader.store.prune_cache({2}) == [1] and _cached_versions(tmp_path) == [2]

    publish(tmp_path, make_model_parts("ffm", seed=3), 3)
    keep_all = build_loader(config(tmp_path, cache_keep=None))
    assert keep_all.reload().outcome == "success"
    publish(tmp_path, make_model_parts("ffm", seed=4), 4)
    assert keep_all.reload().outcome == "success"
    assert _cached_versions(tmp_path) == [2, 3, 4]


def test_the_cache_keeps_versions_linked_to_local_storage(tmp_path):
    """A cached file hard-linked to local storage costs no space: deleting it would free nothing and
    make a rollback validate it again, so it stays."""
    publish(tmp_path, make_model_parts("ffm", seed=1), 1)
    loader = build_loader(config(tmp_path, cache_keep=0))
    assert loader.reload().outcome == "success"
    publish(tmp_path, make_model_parts("ffm", seed=2), 2)
    assert loader.reload().outcome == "success"
    assert _cached_versions(tmp_path) == [1, 2]


def test_cache_keep_must_not_be_negative(tmp_path):
    from ctrops.errors import ConfigError

    with pytest.raises(ConfigError, match="model.cache_keep must be 0 or more"):
        config(tmp_path, cache_keep=-1)
    with pytest.raises(ConfigError, match="cache_keep must be an integer"):
        config(tmp_path, cache_keep="2")
