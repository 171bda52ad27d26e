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


cdef inline uint64_t key_bytes(uint32_t field, const char* data, Py_ssize_t n, uint64_t seed) noexcept nogil:
    """feature_key of the n bytes at data in field `field`."""
    cdef uint64_t h = 0xCBF29CE484222325ULL ^ seed
    cdef uint64_t prime = 0x100000001B3ULL
    cdef Py_ssize_t i
    h = (h ^ (field & 0xFF)) * prime
    h = (h ^ ((field >> 8) & 0xFF)) * prime
    h = (h ^ ((field >> 16) & 0xFF)) * prime
    h = (h ^ ((field >> 24) & 0xFF)) * prime
    h = (h ^ 0x1F) * prime
    for i in range(n):
        h = (h ^ <uint8_t>data[i]) * prime
    return finalize_key(h)


cdef uint64_t key_of(uint32_t field, object token, uint64_t seed) except? 0
