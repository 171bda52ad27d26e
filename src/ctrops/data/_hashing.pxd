from libc.stdint cimport uint32_t, uint64_t

cdef uint64_t key_of(uint32_t field, object token, uint64_t seed) except? 0
