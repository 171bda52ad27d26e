# The request encoder's C interface, for native request paths in other modules
# (ctrops.serve._fastpath scans a JSON body and hands the encoder raw values).
cimport cython
from cpython.object cimport PyObject
from libc.stdint cimport uint8_t, int32_t, int64_t, uint64_t

from ctrops.models._ffm cimport CandidateModel

cdef enum:
    NAME_CACHE_BITS = 8
    NAME_CACHE = 256
    # kinds of a RawValue
    RAW_NULL = 0
    RAW_STR = 1
    RAW_INT = 2
    RAW_FLOAT = 3


cdef struct RawValue:
    # one field value as a JSON scanner sees it, with no Python object behind it
    const char* s       # RAW_STR: UTF-8 bytes (no escapes left in them)
    Py_ssize_t n        # RAW_STR: byte length
    int64_t i           # RAW_INT
    double d            # RAW_FLOAT (finite)
    int32_t field       # the encoder's field number (the caller resolves names: field_of_utf8)
    int32_t kind        # RAW_*


cdef struct VocabSlot:
    uint64_t key
    int32_t value
    int32_t unused


@cython.final
cdef class SlotTable:
    cdef VocabSlot* slots
    cdef readonly Py_ssize_t capacity
    cdef object owner   # the buffer the slots live in (None: private memory, freed here)


@cython.final
cdef class RequestEncoder:
    cdef dict field_of
    cdef readonly int n_fields
    cdef int32_t[::1] kinds
    cdef uint64_t[::1] raw_keys
    cdef Py_ssize_t cap
    cdef uint64_t seed, hash_space
    cdef object missing
    cdef bint has_missing
    cdef tuple missing_utf8
    cdef list names
    cdef readonly SlotTable table   # the vocabulary slots it probes (private or a shared file map)
    # field names as UTF-8 in an open-addressing table, for callers that hold raw bytes
    cdef char* name_bytes
    cdef int64_t* name_off
    cdef int32_t* name_slot
    cdef uint64_t name_mask
    # scratch: keys/values as encoded, then the output entries
    cdef int32_t* ctx_idx
    cdef uint64_t* ctx_key
    cdef float* ctx_val
    cdef uint8_t* ctx_set
    cdef uint8_t* in_cands
    cdef uint64_t* ent_k
    cdef int32_t* ent_f
    cdef int32_t* ent_i
    cdef float* ent_v
    cdef Py_ssize_t ent_cap
    cdef int32_t* oc_f
    cdef int32_t* oc_i
    cdef float* oc_v
    cdef Py_ssize_t n_ctx_out
    cdef int64_t* own_off
    cdef int64_t* o_p
    cdef Py_ssize_t cand_cap
    cdef int32_t* o_f
    cdef int32_t* o_i
    cdef float* o_v
    cdef Py_ssize_t out_cap
    cdef Py_ssize_t n_c
    # raw views of the arrays above (kept alive by the memoryviews / the table)
    cdef const int32_t* kinds_p
    cdef const VocabSlot* slots
    cdef uint64_t mask
    cdef uint64_t* states
    # name -> field cache by object identity: dict keys are usually the same
    # str objects request after request, and comparing a pointer is cheaper
    # than hashing; the cached objects are referenced so addresses stay unique
    cdef PyObject* name_ptr[NAME_CACHE]
    cdef int name_field[NAME_CACHE]
    cdef list name_refs
    # scratch buffers are per object: a call that re-enters (another thread
    # running while this one is in Python code, e.g. str() of an odd value)
    # works on a private copy instead (sharing the table)
    cdef bint busy
    cdef tuple init_args
    cdef RequestEncoder spare

    cdef int _build_name_table(self) except -1
    cdef void _reserve(self, Py_ssize_t need) except *
    cdef void _reserve_cands(self, Py_ssize_t need) except *
    cdef void _reserve_out(self, Py_ssize_t need) except *
    cdef int _field_of(self, PyObject* name) except -2
    cdef int _encode(self, int f, object v, uint64_t* key, float* val) except -1
    cdef int _key(self, int f, object v, uint64_t* key, float* val) except -1
    cdef int _key_raw(self, const RawValue* v, uint64_t* key, float* val) except -2
    cdef void _resolve(self, const uint64_t* keys, const int32_t* fields, int32_t* out,
                       Py_ssize_t n) noexcept nogil
    cdef RequestEncoder _spare(self)
    cdef tuple _arrays(self)
    cdef int _encode_entries(self, context, candidates, const float* W=*, Py_ssize_t row_bytes=*) except -1
    cdef int _assemble(self, Py_ssize_t n_c, Py_ssize_t ne, Py_ssize_t in_count) except -1
    cdef bint _score_scratch(self, CandidateModel model, double* out) except -1
    cdef int field_of_utf8(self, const char* s, Py_ssize_t n) noexcept nogil
    cdef int score_raw(self, const RawValue* ctx, Py_ssize_t n_ctx, const RawValue* ents,
                       const int64_t* cand_off, Py_ssize_t n_c, CandidateModel model,
                       double* out) except -1


# shared with ctrops.serve._fastpath (tracking ids, integer ids): defined here so both inline it
cdef inline int fmt_i64(char* out, int64_t v) noexcept nogil:
    """Decimal digits of v (like Python's str(int)); returns the length."""
    cdef char tmp[24]
    cdef int n = 0, i = 0, j
    cdef uint64_t u
    if v < 0:
        out[0] = 45  # '-'
        i = 1
        u = <uint64_t>(-(v + 1)) + 1
    else:
        u = <uint64_t>v
    while True:
        tmp[n] = <char>(48 + u % 10)
        n += 1
        u //= 10
        if u == 0:
            break
    for j in range(n):
        out[i + j] = tmp[n - 1 - j]
    return i + n
