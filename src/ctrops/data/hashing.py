"""The stable feature hash shared by training, the model file and every reader.

A raw value is identified by the 64-bit key `feature_key(field, token, seed)`.
Vocabulary indexing looks the key up in a sorted key table stored in the model
file; hash indexing takes `key % hash_space`. Because the key, not the string,
is what the model file stores, an ad server in another language only needs
this one function (documented in docs/model-format.md) to score raw rows.

Definition (all arithmetic modulo 2**64):
    h = 0xCBF29CE484222325 XOR mix(seed)
    for each byte b of  field.to_bytes(4, "little") + b"\\x1f" + token_utf8:
        h = (h XOR b) * 0x100000001B3                    # FNV-1a
    h ^= h >> 30; h *= 0xBF58476D1CE4E5B9                 # splitmix64 finaliser
    h ^= h >> 27; h *= 0x94D049BB133111EB
    h ^= h >> 31
    where mix(x) is that same splitmix64 finaliser applied to x (mix(0) == 0), so
    that a seed cannot cancel the field's first byte.

This module is the readable reference; `ctrops.data._hashing` is the native
implementation used on hot paths, and the tests hold the two equal.
"""

from __future__ import annotations

MASK64 = (1 << 64) - 1
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
FIELD_SEPARATOR = 0x1F


def feature_key(field: int, token: str | bytes, seed: int = 0) -> int:
    """64-bit key of `token` in field number `field` (reference implementation)."""
    data = token.encode("utf-8") if isinstance(token, str) else bytes(token)
    h = (FNV_OFFSET ^ _mix(seed & MASK64)) & MASK64
    for b in int(field).to_bytes(4, "little") + bytes([FIELD_SEPARATOR]) + data:
        h = ((h ^ b) * FNV_PRIME) & MASK64
    return _mix(h)


def _mix(h: int) -> int:
    """The splitmix64 finaliser (a bijection of 64-bit integers; _mix(0) == 0)."""
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & MASK64
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & MASK64
    h ^= h >> 31
    return h


def reserved_missing(field: int) -> int:
    """Feature index of 'value missing' in `field` (the first 2*n_fields indices are reserved)."""
    return 2 * field


def reserved_rare(field: int) -> int:
    """Feature index of 'value rare or unseen' in `field`."""
    return 2 * field + 1
