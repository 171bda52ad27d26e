# cython: language_level=3
"""Native `feature_key` (see hashing.py for the definition) for hot paths.

Hashes Python strings straight from their cached UTF-8 buffer, so the request
path hashes a few hundred raw values in microseconds.
"""

from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t, int32_t
cimport numpy as cnp
import numpy as np

cnp.import_array()

cdef uint64_t key_of(uint32_t field, object token, uint64_t seed) except? 0:
    """Key of one str or bytes token (C-level API for other Cython modules)."""
    cdef const char* buf
    cdef Py_ssize_t n
    if isinstance(token, str):
        buf = PyUnicode_AsUTF8AndSize(token, &n)
        return key_bytes(field, buf, n, seed)
    if isinstance(token, bytes):
        return key_bytes(field, <const char*>(<bytes>token), len(<bytes>token), seed)
    raise TypeError(f"feature values must be str or bytes, got {type(token).__name__}")


def feature_key(unsigned int field, token, unsigned long long seed=0):
    """64-bit key of `token` in field `field`; equal to hashing.feature_key."""
    return key_of(field, token, seed)


def feature_keys(fields, tokens, unsigned long long seed=0):
    """Keys of parallel sequences of field numbers and str/bytes tokens, as uint64."""
    cdef Py_ssize_t n = len(tokens), i
    if len(fields) != n:
        raise ValueError(f"{len(fields)} field numbers for {n} tokens")
    out = np.empty(n, dtype=np.uint64)
    cdef uint64_t[::1] o = out
    for i in range(n):
        o[i] = key_of(<uint32_t>fields[i], tokens[i], seed)
    return out


def field_keys(unsigned int field, tokens, unsigned long long seed=0):
    """Keys of many tokens of one field, as uint64."""
    cdef Py_ssize_t n = len(tokens), i
    out = np.empty(n, dtype=np.uint64)
    cdef uint64_t[::1] o = out
    for i in range(n):
        o[i] = key_of(field, tokens[i], seed)
    return out
