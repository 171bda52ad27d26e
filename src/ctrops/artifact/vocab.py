"""The open-addressing vocabulary table stored in vocab-indexed model files.

    keys    uint64 [capacity]   0 = empty slot; a real key 0 is stored as 1
    values  int32  [capacity]   feature index of the key in that slot
    capacity is a power of two; a key starts at slot key & (capacity - 1) and
    probes linearly (slot + 1, wrapping) until it finds itself or an empty slot.

Chosen because a C++/Go/Java reader needs a dozen lines to look a key up in
place (no hash library, no rebuild at load), and the arrays memory-map as is.
Both functions here are vectorised so rebuilding a million-entry table after
pruning takes well under a second.
"""

from __future__ import annotations

import numpy as np

EMPTY_KEY = np.uint64(0)
MAX_LOAD = 0.5  # at most half the slots used: short probe runs


def stored_key(keys: np.ndarray) -> np.ndarray:
    """Keys as stored: 0 (the empty marker) becomes 1."""
    keys = np.asarray(keys, dtype=np.uint64)
    return np.where(keys == 0, np.uint64(1), keys)


def capacity_for(n_keys: int, max_load: float = MAX_LOAD) -> int:
    """Smallest power of two holding `n_keys` at a load factor of at most `max_load` (at least 8)."""
    need = max(8, int(np.ceil(n_keys / max_load)))
    return 1 << (need - 1).bit_length()


def build_table(keys: np.ndarray, values: np.ndarray, capacity: int | None = None,
                empty_value: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Insert unique `keys` -> `values` in order; returns (table_keys uint64, table_values int32).

    Insertion proceeds in rounds: every pending key tries its current slot, the
    first key (in input order) claiming a free slot wins, the others probe on.
    A key only ever moves past occupied slots, so the linear-probing invariant
    (no empty slot between a key's home slot and its slot) holds and `lookup`
    in any language finds it; the layout is deterministic for a given input.
    """
    keys = stored_key(keys)
    values = np.asarray(values, dtype=np.int32)
    if keys.shape != values.shape:
        raise ValueError(f"{keys.shape[0]} keys for {values.shape[0]} values")
    if np.unique(keys).size != keys.size:
        raise ValueError("vocabulary keys are not unique")
    capacity = capacity or capacity_for(keys.size)
    if capacity & (capacity - 1) or capacity < keys.size:
        raise ValueError(f"capacity {capacity} is not a power of two holding {keys.size} keys")
    mask = np.uint64(capacity - 1)
    table_keys = np.zeros(capacity, dtype=np.uint64)
    table_values = np.full(capacity, empty_value, dtype=np.int32)
    slot = (keys & mask).astype(np.int64)
    pending = np.arange(keys.size)
    while pending.size:
        s = slot[pending]
        free = table_keys[s] == EMPTY_KEY
        contenders, contender_slots = pending[free], s[free]
        # np.unique returns the first occurrence; pending stays in input order
        won_slots, first = np.unique(contender_slots, return_index=True)
        winners = contenders[first]
        table_keys[won_slots] = keys[winners]
        table_values[won_slots] = values[winners]
        won = np.zeros(keys.size, dtype=bool)
        won[winners] = True
        pending = pending[~won[pending]]
        slot[pending] = (slot[pending] + 1) & (capacity - 1)
    return table_keys, table_values


def lookup(table_keys: np.ndarray, table_values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Feature index of each key, or -1 where the key is not in the table."""
    keys = stored_key(np.atleast_1d(keys))
    capacity = table_keys.size
    mask = np.uint64(capacity - 1)
    out = np.full(keys.size, -1, dtype=np.int64)
    slot = (keys & mask).astype(np.int64)
    pending = np.arange(keys.size)
    for _ in range(capacity):
        if not pending.size:
            break
        found = table_keys[slot[pending]]
        hit = found == keys[pending]
        out[pending[hit]] = table_values[slot[pending[hit]]]
        pending = pending[~hit & (found != EMPTY_KEY)]
        slot[pending] = (slot[pending] + 1) & (capacity - 1)
    return out


def table_entries(table_keys: np.ndarray, table_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(keys, values) of the occupied slots, in slot order."""
    used = table_keys != EMPTY_KEY
    return np.asarray(table_keys[used]), np.asarray(table_values[used])
