"""Manifest and publishing: atomic order, keep-last-K, aliases, validation, s3 through moto."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from ctrops.artifact import manifest as manifest_mod
from ctrops.artifact.format import load_model, save_parts
from ctrops.artifact.manifest import (
    MANIFEST_FORMAT,
    fetch_model,
    publish_model,
    read_manifest,
    remove_alias,
    set_alias,
)
from ctrops.artifact.storage import Storage, sha256_file
from ctrops.artifact.testing import make_model_parts
from ctrops.errors import ConfigError, ModelFileError

CANARY = [{"context": {"f0": "v1"}, "candidates": [{"f1": "v2", "f2": "v3"}, {"f1": "v4"}], "expected": [0.25, 0.5]}]


@pytest.fixture
def model_files(tmp_path: Path) -> list[Path]:
    out = []
    for seed in range(8):
        path = tmp_path / "build" / f"m{seed}.ctm"
        save_parts(path, make_model_parts("ffm", seed=seed))
        out.append(path)
    return out


def _version_dirs(root: Path, name: str) -> list[int]:
    return sorted(int(p.name) for p in (root / "models" / name).iterdir() if p.is_dir())


def test_publish_writes_file_then_manifest(tmp_path, model_files):
    root = tmp_path / "store"
    entry = publish_model(root, "ctr", model_files[0], metrics={"auc": 0.71}, canary=CANARY,
                          aliases=["production"])
    assert entry.version == 1 and entry.path == "models/ctr/1/model.ctm"
    assert entry.sha256 == sha256_file(model_files[0]) and entry.size_bytes == model_files[0].stat().st_size
    data = json.loads((root / "models/ctr/manifest.json").read_text())
    assert data["format"] == MANIFEST_FORMAT and data["model_name"] == "ctr"
    assert data["aliases"] == {"production": 1}
    assert data["versions"][0]["aliases"] == ["production"]
    assert data["versions"][0]["model_type"] == "ffm"
    m = read_manifest(f"file://{root}", "ctr")
    assert m.resolve("production").sha256 == entry.sha256
    assert m.resolve(1) == m.resolve("1") == m.latest
    assert m.latest.canary == CANARY and m.latest.metrics == {"auc": 0.71}


def test_versions_are_newest_first_and_auto_numbered(tmp_path, model_files):
    root = tmp_path / "store"
    for path in model_files[:3]:
        publish_model(root, "ctr", path)
    m = read_manifest(root, "ctr")
    assert [e.version for e in m.versions] == [3, 2, 1]
    with pytest.raises(ConfigError, match="already published with different content"):
        publish_model(root, "ctr", model_files[4], version=2)
    publish_model(root, "ctr", model_files[1], version=2)  # same bytes again: idempotent
    assert [e.version for e in read_manifest(root, "ctr").versions] == [3, 2, 1]


def test_keep_last_k_deletes_old_folders_but_never_aliased_ones(tmp_path, model_files):
    root = tmp_path / "store"
    publish_model(root, "ctr", model_files[0], aliases=["production"], keep_last=3)
    for path in model_files[1:6]:
        publish_model(root, "ctr", path, keep_last=3)
    m = read_manifest(root, "ctr")
    assert [e.version for e in m.versions] == [6, 5, 4, 1]
    assert _version_dirs(root, "ctr") == [1, 4, 5, 6]
    set_alias(root, "ctr", "production", 6)
    publish_model(root, "ctr", model_files[6], keep_last=3)
    assert [e.version for e in read_manifest(root, "ctr").versions] == [7, 6, 5]
    assert _version_dirs(root, "ctr") == [5, 6, 7]


def test_crash_between_file_and_manifest_keeps_previous_manifest(tmp_path, model_files, monkeypatch):
    root = tmp_path / "store"
    publish_model(root, "ctr", model_files[0], aliases=["production"])
    before = (root / "models/ctr/manifest.json").read_bytes()

    def crash(self, relative, data):
        raise OSError("simulated crash before the manifest write")
    monkeypatch.setattr(Storage, "write_bytes_atomic", crash)
    with pytest.raises(OSError, match="simulated crash"):
        publish_model(root, "ctr", model_files[1])
    monkeypatch.undo()
    assert (root / "models/ctr/manifest.json").read_bytes() == before
    m = read_manifest(root, "ctr")
    assert [e.version for e in m.versions] == [1]
    assert (root / "models/ctr/2/model.ctm").exists()  # orphan, unreferenced
    # the next publish reuses the number and overwrites the orphan
    entry = publish_model(root, "ctr", model_files[2])
    assert entry.version == 2 and sha256_file(root / entry.path) == sha256_file(model_files[2])


def test_crash_midway_through_the_manifest_write_is_invisible(tmp_path, model_files, monkeypatch):
    root = tmp_path / "store"
    publish_model(root, "ctr", model_files[0])
    before = (root / "models/ctr/manifest.json").read_bytes()

    def replace_fails(src, dst):
        raise OSError("simulated crash at rename")
    monkeypatch.setattr("ctrops.artifact.storage.os.replace", replace_fails)
    with pytest.raises(OSError, match="simulated crash at rename"):
        publish_model(root, "ctr", model_files[1])
    monkeypatch.undo()
    assert (root / "models/ctr/manifest.json").read_bytes() == before
    assert not [p for p in (root / "models/ctr").rglob(".*tmp")]  # temp files cleaned up


def test_publish_refuses_a_corrupt_file(tmp_path, model_files):
    raw = bytearray(model_files[0].read_bytes())
    raw[-3] ^= 0x10
    model_files[0].write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        publish_model(tmp_path / "store", "ctr", model_files[0])
    assert not (tmp_path / "store").exists()


def test_aliases(tmp_path, model_files):
    root = tmp_path / "store"
    publish_model(root, "ctr", model_files[0], aliases=["production"])
    publish_model(root, "ctr", model_files[1], aliases=["candidate"])
    m = set_alias(root, "ctr", "production", 2)
    assert m.aliases == {"production": 2, "candidate": 2}
    with pytest.raises(ModelFileError, match="no version 9"):
        set_alias(root, "ctr", "production", 9)
    remove_alias(root, "ctr", "candidate")
    m = read_manifest(root, "ctr")
    assert m.aliases == {"production": 2}
    with pytest.raises(ModelFileError, match="no alias 'candidate'"):
        m.resolve("candidate")
    with pytest.raises(ConfigError, match="alias"):
        set_alias(root, "ctr", "bad alias!", 1)


def test_fetch_verifies_sha256_and_reuses_a_good_copy(tmp_path, model_files):
    root = tmp_path / "store"
    entry = publish_model(root, "ctr", model_files[0])
    local = fetch_model(root, entry, tmp_path / "cache")
    assert local == tmp_path / "cache" / entry.path and sha256_file(local) == entry.sha256
    with load_model(local) as model:
        assert model.params.model_type == "ffm"
    stamp = local.stat().st_mtime_ns
    assert fetch_model(root, entry, tmp_path / "cache").stat().st_mtime_ns == stamp
    # corrupted in storage: refused, the good local copy is not replaced by bad bytes
    stored = root / entry.path
    raw = bytearray(stored.read_bytes())
    raw[100] ^= 1
    stored.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="does not match the manifest"):
        fetch_model(root, entry, tmp_path / "other-cache")
    assert not (tmp_path / "other-cache" / entry.path).exists()
    stored.unlink()
    with pytest.raises(ModelFileError, match="missing from storage"):
        fetch_model(root, entry, tmp_path / "third-cache")


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(format="other/9"), "unknown manifest format"),
    (lambda d: d.pop("versions"), "key 'versions'"),
    (lambda d: d["versions"][0].pop("sha256"), r"versions\[0\]: key 'sha256'"),
    (lambda d: d["aliases"].update(production=42), "alias 'production' points to 42"),
    (lambda d: d["versions"][0].update(created_at="yesterday"), "not ISO-8601"),
    (lambda d: d["versions"][0].update(path="../../etc/passwd"), "must be relative"),
    (lambda d: d["versions"][0]["canary"][0].update(expected=[0.1]), "one probability per candidate"),
])
def test_invalid_manifests_are_refused_with_the_path(tmp_path, model_files, mutate, message):
    root = tmp_path / "store"
    publish_model(root, "ctr", model_files[0], aliases=["production"], canary=CANARY)
    path = root / "models/ctr/manifest.json"
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match=message) as err:
        read_manifest(root, "ctr")
    assert "models/ctr/manifest.json" in str(err.value)


def test_missing_manifest_and_bad_inputs(tmp_path, model_files):
    with pytest.raises(ModelFileError, match="no manifest"):
        read_manifest(tmp_path, "ctr")
    (tmp_path / "models/ctr").mkdir(parents=True)
    (tmp_path / "models/ctr/manifest.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid UTF-8 JSON"):
        read_manifest(tmp_path, "ctr")
    with pytest.raises(ConfigError, match="model name"):
        publish_model(tmp_path, "../evil", model_files[0])
    with pytest.raises(ConfigError, match="canary"):
        publish_model(tmp_path / "s2", "ctr", model_files[0], canary=[{"context": {}, "candidates": [{}],
                                                                       "expected": [2.0]}])
    with pytest.raises(ConfigError, match="keep_last"):
        publish_model(tmp_path / "s2", "ctr", model_files[0], keep_last=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_s3_publish_read_fetch_and_retire(tmp_path, model_files, s3_endpoint, monkeypatch):
    import s3fs

    for var, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(var, value)
    options = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("ctrops-test-bucket")
    url = "s3://ctrops-test-bucket/prefix"
    publish_model(url, "ctr", model_files[0], aliases=["production"], keep_last=2, storage_options=options,
                  canary=CANARY)
    for path in model_files[1:4]:
        publish_model(url, "ctr", path, keep_last=2, storage_options=options)
    m = read_manifest(url, "ctr", storage_options=options)
    assert [e.version for e in m.versions] == [4, 3, 1]
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls("ctrops-test-bucket/prefix/models/ctr")) == \
        ["1", "3", "4", "manifest.json"]
    local = fetch_model(url, m.resolve("production"), tmp_path / "cache", storage_options=options)
    assert sha256_file(local) == sha256_file(model_files[0])
    set_alias(url, "ctr", "production", 4, storage_options=options)
    assert read_manifest(url, "ctr", storage_options=options).resolve("production").version == 4
    # crash before the manifest write: previous manifest still valid on the object store
    monkeypatch.setattr(manifest_mod, "_write", lambda storage, manifest: (_ for _ in ()).throw(OSError("crash")))
    with pytest.raises(OSError):
        publish_model(url, "ctr", model_files[4], storage_options=options)
    monkeypatch.undo()
    assert [e.version for e in read_manifest(url, "ctr", storage_options=options).versions] == [4, 3, 1]
