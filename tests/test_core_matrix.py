"""FieldMatrix: slicing, row selection and the binary cache."""

import numpy as np
import pytest

from ctrops.data.matrix import FieldMatrix


def make_matrix(n_rows=50, n_fields=4, seed=0, weights=False):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 6, size=n_rows)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    nnz = int(indptr[-1])
    return FieldMatrix.from_arrays(
        indptr, rng.integers(0, n_fields, nnz), rng.integers(0, 100, nnz), rng.random(nnz),
        rng.integers(0, 2, n_rows), n_fields=n_fields, n_features=100,
        weights=rng.random(n_rows) if weights else None)


def rows_of(m):
    return [(m.labels[r], list(zip(m.fields[m.indptr[r]:m.indptr[r + 1]],
                                   m.indices[m.indptr[r]:m.indptr[r + 1]],
                                   m.values[m.indptr[r]:m.indptr[r + 1]]))) for r in range(m.n_rows)]


def test_take_slice_and_indices_agree():
    m = make_matrix()
    assert rows_of(m.take(slice(10, 30))) == rows_of(m)[10:30]
    picked = np.array([3, 3, 49, 0, 17])
    assert rows_of(m.take(picked)) == [rows_of(m)[i] for i in picked]
    assert m.take(slice(5, 5)).n_rows == 0


def test_cache_round_trip_is_memory_mapped(tmp_path):
    m = make_matrix(weights=True)
    m.save(tmp_path / "cache")
    loaded = FieldMatrix.load(tmp_path / "cache")
    assert isinstance(loaded.indices, np.memmap)
    assert rows_of(loaded) == rows_of(m)
    np.testing.assert_array_equal(loaded.weights, m.weights)
    assert (loaded.n_fields, loaded.n_features) == (m.n_fields, m.n_features)


def test_incomplete_cache_is_refused(tmp_path):
    m = make_matrix()
    m.save(tmp_path / "cache")
    (tmp_path / "cache" / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match="not a complete"):
        FieldMatrix.load(tmp_path / "cache")


def test_inconsistent_shapes_are_refused():
    with pytest.raises(ValueError, match="indptr"):
        FieldMatrix.from_arrays([0, 1], [0], [0], [1.0], [1, 0], n_fields=1, n_features=1)
    with pytest.raises(ValueError, match="fields"):
        FieldMatrix.from_arrays([0, 2], [0], [0, 1], [1.0, 1.0], [1], n_fields=1, n_features=2)
