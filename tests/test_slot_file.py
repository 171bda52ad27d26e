"""The request table shared through a file: same scores as a private one, one file per model, never
trusted (a stale or torn file is rebuilt), and a private fallback where the folder is not writable."""

from __future__ import annotations

import logging
import mmap
import os
import sys

import numpy as np
import pytest

from ctrops.artifact.format import load_model
from ctrops.data import _parse
from ctrops.data.slot_file import shared_slot_table, slot_file_for
from ctrops.predict import Predictor
from serve_support import fitted_encoder, make_model, save

CONTEXT = {"f0": "v1"}
CANDIDATES = [{"f1": f"v{i}", "f2": f"v{(3 * i) % 10}"} for i in range(8)] + [{"f1": "unseen", "f2": None}]


@pytest.fixture()
def model_path(tmp_path):
    return save(tmp_path / "m.ctm", make_model(3, encoder=fitted_encoder(values=tuple(f"v{i}" for i in range(40)))))


def arrays(path):
    enc = Predictor.from_file(path).encoder
    return enc.table_keys_, enc.table_values_


def test_shared_table_scores_as_the_private_one_and_is_mapped_from_the_file(model_path):
    shared_file = slot_file_for(model_path)
    private = Predictor.from_file(model_path)
    shared = Predictor(load_model(model_path, mmap=True), shared_table=shared_file)
    table = shared.encoder.request_encoder().table
    assert table.shared and not private.encoder.request_encoder().table.shared
    assert shared_file.stat().st_size == table.nbytes == 16 * table.capacity
    np.testing.assert_array_equal(shared.score(CONTEXT, CANDIDATES), private.score(CONTEXT, CANDIDATES))
    assert bytes(table.bytes_view()) == bytes(private.encoder.request_encoder().table.bytes_view())
    if sys.platform == "linux":
        maps = open("/proc/self/maps").read()
        assert str(shared_file) in maps


def test_second_process_maps_the_existing_file_without_rewriting_it(model_path):
    shared_file = slot_file_for(model_path)
    Predictor(load_model(model_path, mmap=True), shared_table=shared_file)
    before = shared_file.stat()
    again = Predictor(load_model(model_path, mmap=True), shared_table=shared_file)
    after = shared_file.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert again.encoder.request_encoder().table.shared
    assert not [p for p in model_path.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("damage", ["flipped_value", "nonzero_pad", "truncated", "other_model"])
def test_a_file_that_does_not_match_the_model_is_rebuilt(model_path, tmp_path, damage, caplog):
    shared_file = slot_file_for(model_path)
    keys, values = arrays(model_path)
    good = bytes(_parse.SlotTable(keys, values).bytes_view())
    raw = bytearray(good)
    occupied = int(np.flatnonzero(keys)[0])
    if damage == "flipped_value":
        raw[occupied * 16 + 8] ^= 1
    elif damage == "nonzero_pad":
        raw[occupied * 16 + 12] = 7
    elif damage == "truncated":
        raw = raw[:-16]
    else:
        other = save(tmp_path / "other.ctm", make_model(4, encoder=fitted_encoder(
            values=tuple(f"w{i}" for i in range(40)))))
        raw = bytearray(_parse.SlotTable(*arrays(other)).bytes_view())
    shared_file.write_bytes(bytes(raw))
    with caplog.at_level(logging.INFO, logger="ctrops.data.slot_file"):
        p = Predictor(load_model(model_path, mmap=True), shared_table=shared_file)
    assert shared_file.read_bytes() == good
    assert caplog.text.count("rebuilding") == 1  # found wrong once, not checked again before replacing
    np.testing.assert_array_equal(p.score(CONTEXT, CANDIDATES), Predictor.from_file(model_path).score(
        CONTEXT, CANDIDATES))


def test_losing_the_race_maps_the_winners_file(model_path, monkeypatch):
    """Two workers building at once: the second's link finds the first's file and maps it (one copy)."""
    from ctrops.data import slot_file

    shared_file = slot_file_for(model_path)
    keys, values = arrays(model_path)
    real_link = os.link

    def first_writer_wins_meanwhile(src, dst):
        shared_file.write_bytes(bytes(_parse.SlotTable(keys, values).bytes_view()))  # the other worker
        return real_link(src, dst)

    monkeypatch.setattr(slot_file.os, "link", first_writer_wins_meanwhile)
    table = shared_slot_table(shared_file, keys, values)
    winner = shared_file.stat().st_ino
    monkeypatch.undo()
    assert table.shared
    maps = [line for line in open("/proc/self/maps") if str(shared_file) in line] if sys.platform == "linux" else []
    assert all(int(line.split()[4]) == winner for line in maps)
    assert not [p for p in model_path.parent.iterdir() if p.name.endswith(".tmp")]


def test_unwritable_folder_keeps_a_private_table(model_path, monkeypatch, caplog):
    from ctrops.data import slot_file

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(slot_file.os, "link", refuse)
    with caplog.at_level(logging.WARNING, logger="ctrops.data.slot_file"):
        p = Predictor(load_model(model_path, mmap=True), shared_table=slot_file_for(model_path))
    assert not p.encoder.request_encoder().table.shared
    assert "private copy" in caplog.text
    np.testing.assert_array_equal(p.score(CONTEXT, CANDIDATES), Predictor.from_file(model_path).score(
        CONTEXT, CANDIDATES))


def test_slot_table_refuses_a_buffer_that_is_not_the_table(model_path):
    keys, values = arrays(model_path)
    good = bytearray(_parse.SlotTable(keys, values).bytes_view())
    with pytest.raises(ValueError, match="needs"):
        _parse.SlotTable(keys, values, buffer=bytes(good[:-16]))
    occupied = int(np.flatnonzero(keys)[0])
    good[occupied * 16] ^= 0xFF
    m = mmap.mmap(-1, len(good))
    m.write(bytes(good))
    with pytest.raises(ValueError, match=f"slot {occupied} of the buffer"):
        _parse.SlotTable(keys, values, buffer=m)
    m.close()
    with pytest.raises(ValueError, match="aligned"):
        _parse.SlotTable(keys, values, buffer=memoryview(bytearray(len(good) + 1))[1:])
