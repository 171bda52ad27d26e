# Request-path scoring, shared with ctrops.data._parse so one native call can
# encode a request's raw values and score its candidates (no arrays in between).
from libc.stdint cimport int32_t, int64_t

cdef struct CandidateRequest:
    # one context and N candidates; score_request expects them checked (see score_candidates)
    int model_code
    const float* W
    Py_ssize_t sj
    Py_ssize_t sf
    int k
    const float* L
    double bias
    bint normalize
    int n_fields
    const int32_t* xf
    const int32_t* xj
    const float* xv
    Py_ssize_t nc
    const int64_t* cptr
    const int32_t* cf
    const int32_t* cj
    const float* cv
    Py_ssize_t n_cand
    double* out


cdef class CandidateModel:
    # a model's arrays checked once and held as raw pointers, for many requests
    cdef readonly object latent
    cdef readonly object linear
    cdef readonly int model_code
    cdef const float* W
    cdef const float* L
    cdef readonly Py_ssize_t sj
    cdef Py_ssize_t sf
    cdef int k
    cdef double bias
    cdef bint normalize
    cdef readonly int n_fields
    cdef readonly Py_ssize_t n_features
    cdef int fill(self, CandidateRequest* q) noexcept


cdef bint entries_ok(const int32_t* f, const int32_t* j, Py_ssize_t n, int n_fields,
                     Py_ssize_t n_features) noexcept nogil
cdef int score_request(CandidateRequest* q) except -1
