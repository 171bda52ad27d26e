from libc.stdint cimport uint8_t, uint32_t, uint64_t

# The whole of feature_key (see hashing.py) as inline C, so every module that
# cimports it hashes tokens in its own nogil loops without a call across modules.

cdef inline uint64_t finalize_key(uint64_t h) noexcept nogil:
    h ^= h >> 30
    h *= 0xBF58476D1CE4E5B9ULL
    h ^= h >> 27
    h *= 0x94D049BB133111EBULL
    h ^= h >> 31
    return h


cdef inline uint64_t field_state(uint32_t field, uint64_t seed) noexcept nogil:
    """FNV-1a state after the field bytes and the separator: the part of a key shared by a field."""
    # the seed goes through the finaliser first so that (field, seed) pairs cannot
    # cancel each other in the first FNV step; finalize_key(0) == 0 keeps seed-0 keys
    cdef uint64_t h = 0xCBF29CE484222325ULL ^ finalize_key(seed)
    cdef uint64_t prime = 0x100000001B3ULL
    h = (h ^ (field & 0xFF)) * prime
    h = (h ^ ((field >> 8) & 0xFF)) * prime
    h = (h ^ ((field >> 16) & 0xFF)) * prime
    h = (h ^ ((field >> 24) & 0xFF)) * prime
    h = (h ^ 0x1F) * prime
    return h


cdef inline uint64_t key_from_state(uint64_t h, const char* data, Py_ssize_t n) noexcept nogil:
    """Finish a key from `field_state(field, seed)` and the token's n bytes."""
    cdef uint64_t prime = 0x100000001B3ULL
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ <uint8_t>data[i]) * prime
    return finalize_key(h)


cdef inline uint64_t key_bytes(uint32_t field, const char* data, Py_ssize_t n, uint64_t seed) noexcept nogil:
    """feature_key of the n bytes at data in field `field`."""
    return key_from_state(field_state(field, seed), data, n)


cdef uint64_t key_of(uint32_t field, object token, uint64_t seed) except? 0
