"""The vectorised vocabulary table: every key found, absent keys not, same answers as the native encoder's."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ctrops.artifact import vocab
from ctrops.data import _parse

keys_strategy = st.lists(st.integers(min_value=2, max_value=2**64 - 1), min_size=0, max_size=200, unique=True)


@settings(max_examples=150, deadline=None)
@given(keys=keys_strategy, probes=st.lists(st.integers(min_value=0, max_value=2**64 - 1), max_size=50))
def test_build_then_lookup_finds_exactly_the_inserted_keys(keys, probes):
    keys_arr = np.array(keys, dtype=np.uint64)
    values = np.arange(len(keys), dtype=np.int32) + 10
    tk, tv = vocab.build_table(keys_arr, values)
    assert tk.size == vocab.capacity_for(len(keys)) and tk.size >= 2 * len(keys)
    np.testing.assert_array_equal(vocab.lookup(tk, tv, keys_arr), values)
    probe_arr = np.array(probes, dtype=np.uint64)
    expected = [values[keys.index(p)] if p in keys else (values[keys.index(1)] if p == 0 and 1 in keys else -1)
                for p in probes]
    np.testing.assert_array_equal(vocab.lookup(tk, tv, probe_arr), np.array(expected, dtype=np.int64))
    # the native encoder reads the table identically
    np.testing.assert_array_equal(_parse.lookup_keys(tk, tv, vocab.stored_key(probe_arr)),
                                  np.array(expected, dtype=np.int32))


@settings(max_examples=50, deadline=None)
@given(keys=keys_strategy.filter(lambda k: len(k) > 0), small_capacity=st.booleans())
def test_clustered_keys_and_full_tables(keys, small_capacity):
    # keys sharing their low bits all start at one slot: long probe runs, wrap-around
    clustered = np.array([(k << 10) & (2**64 - 1) or 1024 for k in keys], dtype=np.uint64)
    clustered = np.unique(clustered)
    capacity = 1 << max(0, (len(clustered) - 1).bit_length()) if small_capacity else None
    tk, tv = vocab.build_table(clustered, np.arange(clustered.size), capacity=capacity)
    np.testing.assert_array_equal(vocab.lookup(tk, tv, clustered), np.arange(clustered.size))


def test_entries_round_trip_and_key_zero_is_stored_as_one():
    keys = np.array([0, 5, 2**63], dtype=np.uint64)
    tk, tv = vocab.build_table(keys, np.array([7, 8, 9]))
    got_keys, got_values = vocab.table_entries(tk, tv)
    assert sorted(zip(got_keys.tolist(), got_values.tolist())) == [(1, 7), (5, 8), (2**63, 9)]
    assert vocab.lookup(tk, tv, np.array([0], dtype=np.uint64))[0] == 7
