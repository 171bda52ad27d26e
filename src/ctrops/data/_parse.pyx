# cython: language_level=3
"""Native hot paths of the data stage.

Text parsing, the log2bin transform, feature hashing, token counting and the
vocabulary look-up run here, in nogil loops over raw bytes, because a Python
loop over 1.2M Criteo rows x 39 fields (47M tokens) takes minutes. The pure
Python definitions these must equal live in features.py / readers.py and the
tests hold the two equal.

A parsed chunk is a dense key matrix `keys[row, field]` (uint64): 0 means
"missing", any other value is the feature key of the row's token in that
field (a real key 0 is replaced by 1, the convention of the vocabulary table).
"""

cimport cython
from cpython.dict cimport PyDict_GetItem, PyDict_Next
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.buffer cimport PyBUF_FORMAT, PyBUF_ND, PyBUF_STRIDES, PyBUF_WRITABLE
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DATA, PyUnicode_GET_LENGTH

cdef extern from "Python.h":
    bint PyUnicode_IS_COMPACT_ASCII(object o)

cdef extern from *:
    void __builtin_prefetch(const void* addr) noexcept nogil
from cpython.long cimport PyLong_AsLongLongAndOverflow
from libc.math cimport log, floor, isfinite, isnan
from libc.stdint cimport uint8_t, int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport strtod, malloc, calloc, free, realloc
from libc.string cimport memcpy, memcmp, memchr, memmove
from libc.stdio cimport snprintf
cimport numpy as cnp
import numpy as np
from cython.parallel cimport prange

from ctrops.data._hashing cimport field_state, key_bytes, key_from_state, key_of
from ctrops.models._ffm cimport CandidateModel, CandidateRequest, entries_ok, score_request

cnp.import_array()

# column roles of the delimited-text parser
ROLE_IGNORE = 0
ROLE_LABEL = 1
ROLE_WEIGHT = 2
ROLE_CATEGORICAL = 3
ROLE_LOG2BIN = 4
ROLE_RAW = 5

# reject reasons (detail is a column number, a column count or an entry number)
REJECT_COLUMNS = 1
REJECT_LABEL = 2
REJECT_NUMBER = 3
REJECT_WEIGHT = 4
REJECT_ENTRY = 5

# request-path field kinds
KIND_CATEGORICAL = 0
KIND_LOG2BIN = 1
KIND_RAW = 2

cdef enum:
    # scoring requests a candidate's weight rows this many candidates after hashing its values,
    # by when the table slots prefetched at hashing time have arrived
    REQUEST_LAG = 4
    NUMBUF = 64


# ---------------------------------------------------------------------------
# small C helpers
# ---------------------------------------------------------------------------

cdef inline uint64_t stored(uint64_t k) noexcept nogil:
    return k if k != 0 else 1


cdef inline int log2bin_token(char* out, double v) noexcept nogil:
    """The log2bin token of a finite v: "~" + floor(log(v)**2) if v > 2, else int(v)."""
    cdef double l
    if v > 2.0:
        l = log(v)
        out[0] = 126  # '~'
        return 1 + fmt_i64(out + 1, <int64_t>floor(l * l))
    if v < -9.2e18:
        v = -9.2e18
    return fmt_i64(out, <int64_t>v)  # C truncates toward zero, as Python int() does


cdef inline uint64_t log2bin_key(uint32_t field, double v, uint64_t seed) noexcept nogil:
    cdef char buf[32]
    cdef int n = log2bin_token(buf, v)
    return stored(key_bytes(field, buf, n, seed))


cdef inline bint parse_number(const unsigned char* s, Py_ssize_t n, double* out) noexcept nogil:
    """Parse a whole token as a finite number (fast path for plain integers)."""
    cdef Py_ssize_t i = 0
    cdef int64_t acc = 0
    cdef bint neg = False
    cdef char buf[NUMBUF]
    cdef char* end
    if n <= 0:
        return False
    if s[0] == 45:
        neg = True
        i = 1
    if n - i > 0 and n - i <= 18:
        while i < n and 48 <= s[i] <= 57:
            acc = acc * 10 + (s[i] - 48)
            i += 1
        if i == n:
            out[0] = <double>(-acc if neg else acc)
            return True
    if n >= NUMBUF:
        return False
    memcpy(buf, s, n)
    buf[n] = 0
    out[0] = strtod(buf, &end)
    return end == buf + n and isfinite(out[0])


cdef inline bint parse_decimal(const unsigned char* s, Py_ssize_t n, double* out) noexcept nogil:
    """A token in the JSON number grammar (-?int(.digits)?([eE][+-]?digits)?, no leading zeros), which
    Python's float() reads as strtod does (both round correctly); False for anything else."""
    cdef Py_ssize_t i = 0, d0
    cdef char buf[NUMBUF]
    cdef char* end
    if n <= 0 or n >= NUMBUF:
        return False
    if s[i] == 45:
        i += 1
    d0 = i
    while i < n and 48 <= s[i] <= 57:
        i += 1
    if i == d0 or (s[d0] == 48 and i - d0 > 1):
        return False
    if i < n and s[i] == 46:
        i += 1
        d0 = i
        while i < n and 48 <= s[i] <= 57:
            i += 1
        if i == d0:
            return False
    if i < n and (s[i] == 101 or s[i] == 69):
        i += 1
        if i < n and (s[i] == 43 or s[i] == 45):
            i += 1
        d0 = i
        while i < n and 48 <= s[i] <= 57:
            i += 1
        if i == d0:
            return False
    if i != n:
        return False
    memcpy(buf, s, n)
    buf[n] = 0
    out[0] = strtod(buf, &end)
    return end == buf + n


cdef inline bint parse_label(const unsigned char* s, Py_ssize_t n, float* out) noexcept nogil:
    cdef double v
    if n == 1 and (s[0] == 48 or s[0] == 49):
        out[0] = <float>(s[0] - 48)
        return True
    if not parse_number(s, n, &v) or (v != 0.0 and v != 1.0):
        return False
    out[0] = <float>v
    return True


cdef inline bint is_missing(const unsigned char* s, Py_ssize_t n, const unsigned char* mdata,
                            const int64_t* moff, Py_ssize_t n_miss) noexcept nogil:
    cdef Py_ssize_t m
    if n == 0:
        return True
    for m in range(n_miss):
        if moff[m + 1] - moff[m] == n and memcmp(s, mdata + moff[m], n) == 0:
            return True
    return False


def log2bin_token_native(double v):
    """The native log2bin token of v (for tests against the Python definition)."""
    cdef char buf[32]
    cdef int n = log2bin_token(buf, v)
    return buf[:n].decode("ascii")


def count_lines(const unsigned char[::1] buf):
    """Number of lines in buf (a last line without newline counts)."""
    cdef Py_ssize_t n = buf.shape[0], i, c = 0
    with nogil:
        for i in range(n):
            if buf[i] == 10:
                c += 1
    if n and buf[n - 1] != 10:
        c += 1
    return c


# ---------------------------------------------------------------------------
# delimited text (Criteo TSV): bytes -> labels, weights, keys, values
# ---------------------------------------------------------------------------

cdef Py_ssize_t _parse_segment(const unsigned char* base, Py_ssize_t pos, Py_ssize_t nbuf,
                               const int32_t* roles, const int32_t* field_of, Py_ssize_t ncols, Py_ssize_t n_fields,
                               const uint64_t* states, uint64_t seed, const uint64_t* raw_keys,
                               const unsigned char* mdata, const int64_t* moff, Py_ssize_t n_miss,
                               int64_t line_no, unsigned char sep, bint want_values,
                               float* labels, float* weights, uint64_t* keys, float* values,
                               int64_t* rejects, Py_ssize_t* n_rej_out) noexcept nogil:
    """Parse the lines of base[pos:nbuf] into rows starting at the given outputs; returns the row count."""
    cdef Py_ssize_t line_start, line_end, tok_start, tok_end, col, row = 0, n_rej = 0, i
    cdef int role, bad, detail
    cdef int32_t f
    cdef double v
    cdef float lab
    cdef const unsigned char* nl
    cdef uint64_t* krow
    line_no -= 1
    while pos < nbuf:
        line_start = pos
        nl = <const unsigned char*>memchr(base + pos, 10, nbuf - pos)
        if nl == NULL:
            line_end = nbuf
            pos = nbuf
        else:
            line_end = nl - base
            pos = line_end + 1
        line_no += 1
        if line_end > line_start and base[line_end - 1] == 13:
            line_end -= 1
        if line_end == line_start:
            continue
        # blank (space-only) lines are not rows
        i = line_start
        while i < line_end and base[i] == 32 and base[i] != sep:
            i += 1
        if i == line_end:
            continue
        krow = keys + row * n_fields
        for i in range(n_fields):
            krow[i] = 0
        weights[row] = 1.0
        if want_values:
            for i in range(n_fields):
                values[row * n_fields + i] = 1.0
        bad = 0
        detail = 0
        col = 0
        tok_start = line_start
        while True:
            nl = <const unsigned char*>memchr(base + tok_start, sep, line_end - tok_start)
            tok_end = line_end if nl == NULL else nl - base
            if col < ncols:
                role = roles[col]
                f = field_of[col]
                if role == 3:
                    if not is_missing(base + tok_start, tok_end - tok_start, mdata, moff, n_miss):
                        krow[f] = stored(key_from_state(states[f], <const char*>(base + tok_start),
                                                        tok_end - tok_start))
                elif role == 4 or role == 5:
                    if not is_missing(base + tok_start, tok_end - tok_start, mdata, moff, n_miss):
                        if not parse_number(base + tok_start, tok_end - tok_start, &v):
                            if bad == 0:
                                bad = 3
                                detail = <int>col
                        elif role == 4:
                            krow[f] = log2bin_key(<uint32_t>f, v, seed)
                        else:
                            krow[f] = raw_keys[f]
                            if want_values:
                                values[row * n_fields + f] = <float>v
                elif role == 1:
                    if not parse_label(base + tok_start, tok_end - tok_start, &lab):
                        if bad == 0:
                            bad = 2
                            detail = <int>col
                    else:
                        labels[row] = lab
                elif role == 2:
                    if not parse_number(base + tok_start, tok_end - tok_start, &v) or v < 0:
                        if bad == 0:
                            bad = 4
                            detail = <int>col
                    else:
                        weights[row] = <float>v
            col += 1
            if tok_end >= line_end:
                break
            tok_start = tok_end + 1
        if col != ncols:
            bad = 1
            detail = <int>col
        if bad:
            rejects[n_rej * 5 + 0] = line_no
            rejects[n_rej * 5 + 1] = bad
            rejects[n_rej * 5 + 2] = detail
            rejects[n_rej * 5 + 3] = line_start
            rejects[n_rej * 5 + 4] = line_end
            n_rej += 1
            continue
        row += 1
    n_rej_out[0] = n_rej
    return row


def parse_delimited(const unsigned char[::1] buf, const int32_t[::1] roles, const int32_t[::1] field_of,
                    int n_fields, unsigned long long seed, const uint64_t[::1] raw_keys,
                    const unsigned char[::1] missing_data, const int64_t[::1] missing_offsets,
                    int64_t first_line, unsigned char sep=9, bint want_values=False, int n_threads=1):
    """Parse complete lines of delimiter-separated text.

    roles[c] / field_of[c] say what column c is; raw_keys[f] is the key of the
    single feature of a `raw` numeric field. Blank lines are skipped. With
    n_threads > 1 the buffer is cut at line boundaries into that many
    segments parsed in parallel. Returns (labels, weights, keys, values,
    rejects, n_lines) where rejects is int64[n_rejected, 5]: line number,
    reason, detail, byte start, byte end.
    """
    cdef Py_ssize_t nbuf = buf.shape[0], ncols = roles.shape[0], i, s
    cdef int nseg = max(1, min(n_threads, 64))
    if nbuf < (1 << 20):
        nseg = 1
    cdef Py_ssize_t seg_start[65]
    cdef Py_ssize_t seg_lines[65]
    cdef Py_ssize_t seg_rows[64]
    cdef Py_ssize_t seg_rej[64]
    cdef const unsigned char* base = &buf[0] if nbuf > 0 else NULL
    cdef const unsigned char* nl
    # segment boundaries at line starts, and the lines before each segment
    seg_start[0] = 0
    for s in range(1, nseg):
        i = nbuf * s // nseg
        if i < seg_start[s - 1]:
            i = seg_start[s - 1]
        nl = <const unsigned char*>memchr(base + i, 10, nbuf - i) if i < nbuf else NULL
        seg_start[s] = nbuf if nl == NULL else (nl - base) + 1
    seg_start[nseg] = nbuf
    cdef Py_ssize_t total_lines = 0
    with nogil:
        for s in range(nseg):
            seg_lines[s] = total_lines
            for i in range(seg_start[s], seg_start[s + 1]):
                if base[i] == 10:
                    total_lines += 1
    if nbuf and base[nbuf - 1] != 10:
        total_lines += 1
    cdef Py_ssize_t max_rows = total_lines + 1
    labels_a = np.empty(max_rows, dtype=np.float32)
    weights_a = np.ones(max_rows, dtype=np.float32)
    keys_a = np.empty((max_rows, n_fields), dtype=np.uint64)
    values_a = np.empty((max_rows, n_fields), dtype=np.float32) if want_values else np.ones((1, n_fields), dtype=np.float32)
    rejects_a = np.empty((max_rows, 5), dtype=np.int64)
    cdef float* labels = <float*>cnp.PyArray_DATA(labels_a)
    cdef float* weights = <float*>cnp.PyArray_DATA(weights_a)
    cdef uint64_t* keys = <uint64_t*>cnp.PyArray_DATA(keys_a)
    cdef float* values = <float*>cnp.PyArray_DATA(values_a)
    cdef int64_t* rejects = <int64_t*>cnp.PyArray_DATA(rejects_a)
    states_a = np.array([field_state(<uint32_t>f, seed) for f in range(n_fields)], dtype=np.uint64)
    cdef const uint64_t* states = <const uint64_t*>cnp.PyArray_DATA(states_a)
    cdef Py_ssize_t n_miss = missing_offsets.shape[0] - 1
    cdef const unsigned char* mdata = &missing_data[0] if missing_data.shape[0] > 0 else NULL
    cdef const int64_t* moff = &missing_offsets[0]
    cdef const uint64_t* rk = &raw_keys[0] if raw_keys.shape[0] > 0 else NULL
    cdef const int32_t* rp = &roles[0] if ncols > 0 else NULL
    cdef const int32_t* fp = &field_of[0] if ncols > 0 else NULL
    cdef Py_ssize_t r0
    for s in prange(nseg, nogil=True, num_threads=nseg, schedule="static", chunksize=1):
        r0 = seg_lines[s]
        seg_rows[s] = _parse_segment(base, seg_start[s], seg_start[s + 1], rp, fp, ncols, n_fields, states,
                                     seed, rk, mdata, moff, n_miss, first_line + r0, sep, want_values,
                                     labels + r0, weights + r0, keys + r0 * n_fields,
                                     values + r0 * n_fields if want_values else values,
                                     rejects + r0 * 5, &seg_rej[s])
    # compact the segments' rows (and rejects) to be contiguous
    cdef Py_ssize_t row = seg_rows[0], n_rej = seg_rej[0]
    with nogil:
        for s in range(1, nseg):
            r0 = seg_lines[s]
            if seg_rows[s]:
                memmove(labels + row, labels + r0, seg_rows[s] * sizeof(float))
                memmove(weights + row, weights + r0, seg_rows[s] * sizeof(float))
                memmove(keys + row * n_fields, keys + r0 * n_fields, seg_rows[s] * n_fields * sizeof(uint64_t))
                if want_values:
                    memmove(values + row * n_fields, values + r0 * n_fields, seg_rows[s] * n_fields * sizeof(float))
            if seg_rej[s]:
                memmove(rejects + n_rej * 5, rejects + r0 * 5, seg_rej[s] * 5 * sizeof(int64_t))
            row += seg_rows[s]
            n_rej += seg_rej[s]
    return (labels_a[:row], weights_a[:row], keys_a[:row], values_a[:row] if want_values else None,
            rejects_a[:n_rej], total_lines)


# ---------------------------------------------------------------------------
# LIBFFM text: "label field:index:value ..." -> CSR arrays
# ---------------------------------------------------------------------------

cdef inline bint parse_uint31(const unsigned char* s, Py_ssize_t n, int32_t* out) noexcept nogil:
    cdef int64_t acc = 0
    cdef Py_ssize_t i
    if n <= 0 or n > 10:
        return False
    for i in range(n):
        if s[i] < 48 or s[i] > 57:
            return False
        acc = acc * 10 + (s[i] - 48)
    if acc > 2147483646:
        return False
    out[0] = <int32_t>acc
    return True


def parse_libffm(const unsigned char[::1] buf, int64_t first_line):
    """Parse complete LIBFFM lines. Labels 0/1 (also -1/+1, read as 0/1).

    Returns (labels, indptr, fields, indices, values, rejects, n_lines) with
    rejects as in `parse_delimited` (detail: 1-based entry number).
    """
    cdef Py_ssize_t nbuf = buf.shape[0], i
    cdef Py_ssize_t max_rows = 1, max_nnz = nbuf // 6 + 1
    for i in range(nbuf):
        if buf[i] == 10:
            max_rows += 1
    labels_a = np.empty(max_rows, dtype=np.float32)
    indptr_a = np.zeros(max_rows + 1, dtype=np.int64)
    fields_a = np.empty(max_nnz, dtype=np.int32)
    indices_a = np.empty(max_nnz, dtype=np.int32)
    values_a = np.empty(max_nnz, dtype=np.float32)
    rejects_a = np.empty((max_rows, 5), dtype=np.int64)
    cdef float[::1] labels = labels_a
    cdef int64_t[::1] indptr = indptr_a
    cdef int32_t[::1] fields = fields_a
    cdef int32_t[::1] indices = indices_a
    cdef float[::1] values = values_a
    cdef int64_t[:, ::1] rejects = rejects_a
    cdef const unsigned char* base = &buf[0] if nbuf > 0 else NULL
    cdef const unsigned char* nl
    cdef Py_ssize_t pos = 0, line_start, line_end, s, e, c1, c2, row = 0, nnz = 0, row_nnz0, n_rej = 0
    cdef int64_t line_no = first_line - 1
    cdef int bad, detail, entry
    cdef double v
    cdef int32_t fi, ii
    with nogil:
        while pos < nbuf:
            line_start = pos
            nl = <const unsigned char*>memchr(base + pos, 10, nbuf - pos)
            if nl == NULL:
                line_end = nbuf
                pos = nbuf
            else:
                line_end = nl - base
                pos = line_end + 1
            line_no += 1
            if line_end > line_start and base[line_end - 1] == 13:
                line_end -= 1
            s = line_start
            while s < line_end and (base[s] == 32 or base[s] == 9):
                s += 1
            if s == line_end:
                continue
            bad = 0
            detail = 0
            row_nnz0 = nnz
            e = s
            while e < line_end and base[e] != 32 and base[e] != 9:
                e += 1
            if e - s == 2 and base[s] == 45 and base[s + 1] == 49:       # "-1"
                labels[row] = 0.0
            elif e - s == 2 and base[s] == 43 and base[s + 1] == 49:     # "+1"
                labels[row] = 1.0
            elif not parse_label(base + s, e - s, &labels[row]):
                bad = 2
            entry = 0
            while not bad:
                s = e
                while s < line_end and (base[s] == 32 or base[s] == 9):
                    s += 1
                if s >= line_end:
                    break
                e = s
                while e < line_end and base[e] != 32 and base[e] != 9:
                    e += 1
                entry += 1
                c1 = s
                while c1 < e and base[c1] != 58:
                    c1 += 1
                c2 = c1 + 1
                while c2 < e and base[c2] != 58:
                    c2 += 1
                if (c2 >= e or not parse_uint31(base + s, c1 - s, &fi)
                        or not parse_uint31(base + c1 + 1, c2 - c1 - 1, &ii)
                        or not parse_number(base + c2 + 1, e - c2 - 1, &v)):
                    bad = 5
                    detail = entry
                    break
                fields[nnz] = fi
                indices[nnz] = ii
                values[nnz] = <float>v
                nnz += 1
            if bad:
                rejects[n_rej, 0] = line_no
                rejects[n_rej, 1] = bad
                rejects[n_rej, 2] = detail
                rejects[n_rej, 3] = line_start
                rejects[n_rej, 4] = line_end
                n_rej += 1
                nnz = row_nnz0
                continue
            row += 1
            indptr[row] = nnz
    n_lines = line_no - first_line + 1
    return (labels_a[:row], indptr_a[:row + 1], fields_a[:nnz], indices_a[:nnz], values_a[:nnz],
            rejects_a[:n_rej], n_lines)


def format_libffm(const int64_t[::1] indptr, const int32_t[::1] fields, const int32_t[::1] indices,
                  const float[::1] values, const float[::1] labels):
    """LIBFFM text of CSR rows: "label f:i:v ..." per line (v == 1 written as "1")."""
    cdef Py_ssize_t n = labels.shape[0], r, a, pos = 0, cap
    cdef char* out
    cdef int w
    cdef double lab
    cap = 64 * n + 48 * (indptr[n] if n else 0) + 64
    out = <char*>malloc(cap)
    if out == NULL:
        raise MemoryError()
    try:
        with nogil:
            for r in range(n):
                lab = labels[r]
                if lab == 0.0 or lab == 1.0:
                    out[pos] = <char>(48 + <int>lab)
                    pos += 1
                else:
                    pos += snprintf(out + pos, 32, "%.9g", lab)
                for a in range(indptr[r], indptr[r + 1]):
                    out[pos] = 32
                    pos += 1
                    pos += fmt_i64(out + pos, fields[a])
                    out[pos] = 58
                    pos += 1
                    pos += fmt_i64(out + pos, indices[a])
                    out[pos] = 58
                    pos += 1
                    if values[a] == 1.0:
                        out[pos] = 49
                        pos += 1
                    else:
                        pos += snprintf(out + pos, 32, "%.9g", <double>values[a])
                out[pos] = 10
                pos += 1
        return out[:pos]
    finally:
        free(out)


# ---------------------------------------------------------------------------
# columnar input (Arrow buffers): keys of one column
# ---------------------------------------------------------------------------

def string_column_keys(uint64_t[:, ::1] keys, int col, uint32_t field, const int64_t[::1] offsets,
                       const unsigned char[::1] data, const uint8_t[::1] valid, unsigned long long seed):
    """keys[:, col] = key of string r (bytes data[offsets[r]:offsets[r+1]]) where valid[r]."""
    cdef Py_ssize_t n = valid.shape[0], r
    cdef const char* base = <const char*>&data[0] if data.shape[0] > 0 else <const char*>""
    with nogil:
        for r in range(n):
            if valid[r]:
                keys[r, col] = stored(key_bytes(field, base + offsets[r], offsets[r + 1] - offsets[r], seed))


def number_column_keys(uint64_t[:, ::1] keys, int col, uint32_t field, const double[::1] numbers,
                       const uint8_t[::1] valid, unsigned long long seed):
    """keys[:, col] = log2bin key of numbers[r] where valid[r] (numbers must be finite there)."""
    cdef Py_ssize_t n = valid.shape[0], r
    with nogil:
        for r in range(n):
            if valid[r]:
                keys[r, col] = log2bin_key(field, numbers[r], seed)


# ---------------------------------------------------------------------------
# token counting and the vocabulary table
# ---------------------------------------------------------------------------

cdef struct CountSlot:
    uint64_t key      # 0 = empty
    double count
    int32_t field


cdef class KeyCounter:
    """Occurrences of each (non-zero) key, remembering the field it came from.

    An open-addressing map of (key, count, field) slots grown by doubling; one
    slot per cache access, one pass over the key matrix, which is what makes
    fitting a vocabulary on millions of rows take seconds.
    """
    cdef CountSlot* slots
    cdef Py_ssize_t capacity
    cdef Py_ssize_t size

    def __cinit__(self, Py_ssize_t capacity=1 << 16):
        cdef Py_ssize_t cap = 16
        while cap < capacity:
            cap <<= 1
        self.slots = <CountSlot*>calloc(cap, sizeof(CountSlot))
        if self.slots == NULL:
            raise MemoryError()
        self.capacity = cap
        self.size = 0

    def __dealloc__(self):
        free(self.slots)

    cdef inline void _insert(self, uint64_t k, int32_t f, double c) noexcept nogil:
        cdef uint64_t mask = self.capacity - 1
        cdef uint64_t s = k & mask
        while self.slots[s].key != 0:
            if self.slots[s].key == k:
                self.slots[s].count += c
                return
            s = (s + 1) & mask
        self.slots[s].key = k
        self.slots[s].field = f
        self.slots[s].count = c
        self.size += 1

    cdef void _grow(self) except *:
        cdef CountSlot* old = self.slots
        cdef Py_ssize_t ocap = self.capacity, i
        self.slots = <CountSlot*>calloc(ocap * 2, sizeof(CountSlot))
        if self.slots == NULL:
            self.slots = old
            raise MemoryError()
        self.capacity = ocap * 2
        self.size = 0
        for i in range(ocap):
            if old[i].key != 0:
                self._insert(old[i].key, old[i].field, old[i].count)
        free(old)

    def add(self, const uint64_t[:, ::1] keys, const float[::1] weights=None):
        """Count every non-zero keys[r, f] (column f is the field), weighted by weights[r] if given."""
        cdef Py_ssize_t n = keys.shape[0], nf = keys.shape[1], r, f, start, stop, block = 4096
        cdef uint64_t k
        cdef double w = 1.0
        cdef bint weighted = weights is not None
        for start in range(0, n, block):
            stop = min(n, start + block)
            # at most half full even if every key of the block is new
            while (self.size + (stop - start) * nf) * 2 > self.capacity:
                self._grow()
            with nogil:
                for r in range(start, stop):
                    if weighted:
                        w = weights[r]
                    for f in range(nf):
                        k = keys[r, f]
                        if k != 0:
                            self._insert(k, <int32_t>f, w)

    def __len__(self):
        return self.size

    def items(self):
        """(keys uint64, fields int32, counts float64) of every counted key, in slot order."""
        out_k = np.empty(self.size, dtype=np.uint64)
        out_f = np.empty(self.size, dtype=np.int32)
        out_c = np.empty(self.size, dtype=np.float64)
        cdef uint64_t[::1] ok = out_k
        cdef int32_t[::1] of = out_f
        cdef double[::1] oc = out_c
        cdef Py_ssize_t i, j = 0
        for i in range(self.capacity):
            if self.slots[i].key != 0:
                ok[j] = self.slots[i].key
                of[j] = self.slots[i].field
                oc[j] = self.slots[i].count
                j += 1
        return out_k, out_f, out_c


def build_table(const uint64_t[::1] keys, const int32_t[::1] values, Py_ssize_t capacity):
    """Open-addressing table: slot = key & (capacity-1), linear probing, 0 = empty, empty value -1.

    Keys must be unique and non-zero (stored form); inserted in the given order.
    """
    if capacity & (capacity - 1) or capacity <= keys.shape[0]:
        raise ValueError(f"capacity {capacity} must be a power of two above {keys.shape[0]}")
    tk_a = np.zeros(capacity, dtype=np.uint64)
    tv_a = np.full(capacity, -1, dtype=np.int32)
    cdef uint64_t[::1] tk = tk_a
    cdef int32_t[::1] tv = tv_a
    cdef uint64_t mask = capacity - 1, s, k
    cdef Py_ssize_t i
    with nogil:
        for i in range(keys.shape[0]):
            k = keys[i]
            s = k & mask
            while tk[s] != 0:
                s = (s + 1) & mask
            tk[s] = k
            tv[s] = values[i]
    return tk_a, tv_a


cdef inline int32_t table_find(const uint64_t* tk, const int32_t* tv, uint64_t mask, uint64_t k) noexcept nogil:
    cdef uint64_t s = k & mask
    while tk[s] != 0:
        if tk[s] == k:
            return tv[s]
        s = (s + 1) & mask
    return -1


def lookup_keys(const uint64_t[::1] table_keys, const int32_t[::1] table_values, const uint64_t[::1] keys):
    """Table value of each key (stored form), -1 where absent."""
    out_a = np.empty(keys.shape[0], dtype=np.int32)
    cdef int32_t[::1] out = out_a
    cdef Py_ssize_t i, cap = table_keys.shape[0]
    if cap == 0:
        out_a.fill(-1)
        return out_a
    cdef uint64_t mask = cap - 1
    with nogil:
        for i in range(keys.shape[0]):
            out[i] = table_find(&table_keys[0], &table_values[0], mask, keys[i])
    return out_a


def encode_keys(const uint64_t[:, ::1] keys, const float[:, ::1] values, const uint64_t[::1] table_keys,
                const int32_t[::1] table_values, unsigned long long hash_space, int n_threads=1,
                int32_t[::1] out_indices=None, float[::1] out_values=None):
    """Feature indices and values of a key matrix: one entry per (row, field), row-major.

    missing (key 0) -> 2f with value 1; key in the table -> its value; key not
    in the table -> 2f+1 (rare); an empty table (hash indexing without rare
    routing) -> 2*n_fields + key % hash_space. `values` None means all 1.
    Writes into out_indices / out_values (n*n_fields each) when given.
    """
    cdef Py_ssize_t n = keys.shape[0], nf = keys.shape[1], r, f, cap = table_keys.shape[0], e
    if out_indices is None:
        idx_a = np.empty(n * nf, dtype=np.int32)
        out_indices = idx_a
    else:
        idx_a = out_indices
    if out_values is None:
        val_a = np.empty(n * nf, dtype=np.float32)
        out_values = val_a
    else:
        val_a = out_values
    if out_indices.shape[0] != n * nf or out_values.shape[0] != n * nf:
        raise ValueError(f"output arrays must hold {n * nf} entries")
    cdef int32_t[::1] idx = out_indices
    cdef float[::1] val = out_values
    cdef bint has_values = values is not None
    cdef const uint64_t* tk = &table_keys[0] if cap > 0 else NULL
    cdef const int32_t* tv = &table_values[0] if cap > 0 else NULL
    cdef uint64_t mask = cap - 1 if cap > 0 else 0, k
    cdef int64_t base = 2 * nf
    cdef int32_t j
    cdef Py_ssize_t block = 8, b, r_end, rr
    if cap == 0 and hash_space == 0:
        raise ValueError("hash_space must be positive when there is no table")
    for b in prange((n + block - 1) // block, nogil=True, num_threads=max(1, n_threads), schedule="static"):
        # prefetch the table slots of a few rows, then look them up: the misses overlap
        r_end = min(n, (b + 1) * block)
        if cap > 0:
            for rr in range(b * block, r_end):
                for f in range(nf):
                    k = keys[rr, f]
                    if k != 0:
                        __builtin_prefetch(tk + (k & mask))
                        __builtin_prefetch(tv + (k & mask))
        for r in range(b * block, r_end):
            for f in range(nf):
                e = r * nf + f
                k = keys[r, f]
                val[e] = 1.0
                if k == 0:
                    idx[e] = <int32_t>(2 * f)
                    continue
                if cap > 0:
                    j = table_find(tk, tv, mask, k)
                    idx[e] = j if j >= 0 else <int32_t>(2 * f + 1)
                else:
                    idx[e] = <int32_t>(base + <int64_t>(k % hash_space))
                if has_values:
                    val[e] = values[r, f]
    return idx_a, val_a


# ---------------------------------------------------------------------------
# the request path: raw Python values -> entries, in microseconds
# ---------------------------------------------------------------------------

cdef extern from *:
    """
    #include <stdlib.h>
    #if defined(__linux__)
    #include <sys/mman.h>
    #endif
    /* Memory for a table probed at random: 2 MiB-aligned and, on Linux, marked for transparent
       huge pages, so a probe costs a cache miss but seldom a TLB miss (a page walk) on top. */
    static void* ctr_table_alloc(size_t nbytes) {
        void* p = NULL;
        const size_t huge = (size_t)2 << 20;
        const size_t align = nbytes >= huge ? huge : 64;
        if (posix_memalign(&p, align, nbytes ? nbytes : 1) != 0) return NULL;
    #if defined(__linux__) && defined(MADV_HUGEPAGE)
        if (align == huge) madvise(p, nbytes, MADV_HUGEPAGE);
    #endif
        return p;
    }
    """
    void* ctr_table_alloc(size_t nbytes) noexcept nogil


cdef inline int32_t slot_find(const VocabSlot* t, uint64_t mask, uint64_t k) noexcept nogil:
    cdef uint64_t s = k & mask
    while t[s].key != 0:
        if t[s].key == k:
            return t[s].value
        s = (s + 1) & mask
    return -1


cdef class SlotTable:
    """The vocabulary table with each key beside its value, for the request path.

    The model file stores keys and values as two arrays (docs/contracts.md), so
    a look-up there touches two cache lines; a request makes ~1,000 look-ups in
    a table far larger than the cache, and they are what the encoder waits on.
    This copy puts (key, value) in one 16-byte slot (same capacity, same slot
    order): one miss per look-up. It costs 16 bytes per slot (32 MiB for a
    1e6-value vocabulary).

    `SlotTable(keys, values)` builds the copy in private memory on huge pages.
    `SlotTable(keys, values, buffer=b)` serves from `b` instead (a read-only
    map of a file written from `bytes_view()`, see ctrops.data.slot_file) once
    every slot of it equals what the arrays say, so several worker processes
    can share one copy through the page cache; the buffer stays referenced
    (mapped) as long as the table is.
    """
    def __cinit__(self, const uint64_t[::1] keys, const int32_t[::1] values, buffer=None):
        cdef Py_ssize_t cap = keys.shape[0], i
        cdef const unsigned char[::1] view
        cdef const VocabSlot* given
        if values.shape[0] != cap:
            raise ValueError(f"table keys ({cap}) and values ({values.shape[0]}) differ in length")
        if cap & (cap - 1):
            raise ValueError(f"table capacity {cap} is not a power of two")
        self.capacity = cap
        if buffer is not None:
            view = buffer
            if view.shape[0] != cap * <Py_ssize_t>sizeof(VocabSlot):
                raise ValueError(f"slot buffer holds {view.shape[0]} bytes, a {cap}-slot table needs "
                                 f"{cap * sizeof(VocabSlot)}")
            if cap == 0:
                raise ValueError("an empty table has no slot buffer")
            if (<size_t>&view[0]) % sizeof(VocabSlot):
                raise ValueError("slot buffer is not aligned to 16 bytes")
            given = <const VocabSlot*>&view[0]
            with nogil:
                i = _first_slot_mismatch(given, &keys[0], &values[0], cap)
            if i >= 0:
                raise ValueError(f"slot {i} of the buffer is (key {given[i].key}, value {given[i].value}, "
                                 f"pad {given[i].unused}); the table says (key {keys[i]}, value {values[i]}, pad 0)")
            self.slots = <VocabSlot*>given
            self.owner = view
            return
        self.slots = <VocabSlot*>ctr_table_alloc(<size_t>max(cap, 1) * sizeof(VocabSlot))
        if self.slots == NULL:
            raise MemoryError(f"cannot allocate the {cap}-slot request table")
        with nogil:
            for i in range(cap):
                self.slots[i].key = keys[i]
                self.slots[i].value = values[i]
                self.slots[i].unused = 0

    def __dealloc__(self):
        if self.owner is None:
            free(self.slots)
        # else the slots belong to the buffer; dropping the reference unmaps it when nothing else holds it

    @property
    def nbytes(self):
        return self.capacity * sizeof(VocabSlot)

    @property
    def shared(self):
        """True when the slots live in a buffer given at construction (e.g. a shared file map)."""
        return self.owner is not None

    def bytes_view(self):
        """The slots as read-only bytes (native byte order; the view keeps the table alive): what a
        shared file holds."""
        return memoryview(self)

    def __getbuffer__(self, Py_buffer* view, int flags):
        if flags & PyBUF_WRITABLE:
            raise BufferError("a slot table is read-only")
        view.buf = <void*>self.slots
        view.obj = self
        view.len = self.capacity * sizeof(VocabSlot)
        view.readonly = 1
        view.itemsize = 1
        view.format = NULL
        if flags & PyBUF_FORMAT:
            view.format = b"B"
        view.ndim = 1
        view.shape = &view.len if (flags & PyBUF_ND) else NULL
        view.strides = &view.itemsize if (flags & PyBUF_STRIDES) else NULL
        view.suboffsets = NULL
        view.internal = NULL

    def __releasebuffer__(self, Py_buffer* view):
        pass


cdef Py_ssize_t _first_slot_mismatch(const VocabSlot* t, const uint64_t* keys, const int32_t* values,
                                     Py_ssize_t cap) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(cap):
        if t[i].key != keys[i] or t[i].value != values[i] or t[i].unused != 0:
            return i
    return -1


cdef class RequestEncoder:
    """Encodes one context dict and N candidate dicts of raw values.

    A field present in a candidate overrides the context's value of that field
    for that candidate. Fields that some candidate sets are emitted per
    candidate; all others once in the context part. Every joined row (context
    part + candidate part) holds exactly one entry per field, as `transform`.
    Names that are not fields are ignored.

    `encode` returns the entries as arrays; `score` hands them straight to the
    scoring kernel (one native call per request, no arrays in between).
    """
    def __cinit__(self, list names, kinds, raw_keys, table_keys, table_values,
                  unsigned long long seed, unsigned long long hash_space, missing_values=(),
                  SlotTable table=None):
        cdef Py_ssize_t f
        self.names = names
        self.busy = False
        self.n_fields = len(names)
        self.field_of = {name: f for f, name in enumerate(names)}
        self.kinds = np.ascontiguousarray(kinds, dtype=np.int32)
        self.raw_keys = np.ascontiguousarray(raw_keys, dtype=np.uint64)
        self.cap = len(table_keys)
        if self.cap == 0 and hash_space == 0:
            raise ValueError("hash_space must be positive when there is no table")
        if table is None:
            table = SlotTable(table_keys, table_values)
        elif table.capacity != self.cap:
            raise ValueError(f"slot table capacity {table.capacity} differs from the table's {self.cap}")
        self.table = table
        self.init_args = (names, kinds, raw_keys, table_keys, table_values, seed, hash_space, missing_values,
                          table)
        self.seed = seed
        self.hash_space = hash_space
        self.kinds_p = &self.kinds[0] if self.n_fields > 0 else NULL
        self.slots = table.slots
        self.mask = <uint64_t>(self.cap - 1) if self.cap > 0 else 0
        self.name_refs = [None] * NAME_CACHE
        for f in range(NAME_CACHE):
            self.name_ptr[f] = NULL
            self.name_field[f] = -1
        self.missing = frozenset(str(m) for m in missing_values)
        self.has_missing = len(self.missing) > 0
        self.missing_utf8 = tuple(m.encode("utf-8", "surrogatepass") for m in self.missing)
        self._build_name_table()
        nf = max(1, self.n_fields)
        self.ctx_idx = <int32_t*>malloc(nf * sizeof(int32_t))
        self.ctx_key = <uint64_t*>malloc(nf * sizeof(uint64_t))
        self.ctx_val = <float*>malloc(nf * sizeof(float))
        self.ctx_set = <uint8_t*>malloc(nf)
        self.in_cands = <uint8_t*>malloc(nf)
        self.oc_f = <int32_t*>malloc(nf * sizeof(int32_t))
        self.oc_i = <int32_t*>malloc(nf * sizeof(int32_t))
        self.oc_v = <float*>malloc(nf * sizeof(float))
        self.states = <uint64_t*>malloc(nf * sizeof(uint64_t))
        self.ent_cap = 0
        self.cand_cap = 0
        self.out_cap = 0
        if (self.ctx_idx == NULL or self.ctx_key == NULL or self.ctx_val == NULL or self.ctx_set == NULL
                or self.in_cands == NULL or self.oc_f == NULL or self.oc_i == NULL or self.oc_v == NULL
                or self.states == NULL):
            raise MemoryError()
        for f in range(self.n_fields):
            self.states[f] = field_state(<uint32_t>f, seed)
        self._reserve(4096)
        self._reserve_cands(256)
        self._reserve_out(4096)

    def __dealloc__(self):
        free(self.name_bytes)
        free(self.name_off)
        free(self.name_slot)
        free(self.ctx_key)
        free(self.states)
        free(self.ctx_idx)
        free(self.ctx_val)
        free(self.ctx_set)
        free(self.in_cands)
        free(self.oc_f)
        free(self.oc_i)
        free(self.oc_v)
        free(self.ent_k)
        free(self.ent_f)
        free(self.ent_i)
        free(self.ent_v)
        free(self.own_off)
        free(self.o_p)
        free(self.o_f)
        free(self.o_i)
        free(self.o_v)

    cdef int _build_name_table(self) except -1:
        """The field names' UTF-8 bytes in an open-addressing table (`field_of_utf8`)."""
        cdef Py_ssize_t f, total = 0, size = 4
        cdef uint64_t s
        cdef bytes b
        utf8 = [str(name).encode("utf-8", "surrogatepass") for name in self.names]
        for b in utf8:
            total += len(b)
        while size < 2 * self.n_fields:
            size *= 2
        self.name_bytes = <char*>malloc(max(total, 1))
        self.name_off = <int64_t*>malloc((self.n_fields + 1) * sizeof(int64_t))
        self.name_slot = <int32_t*>malloc(size * sizeof(int32_t))
        if self.name_bytes == NULL or self.name_off == NULL or self.name_slot == NULL:
            raise MemoryError()
        self.name_mask = <uint64_t>(size - 1)
        for f in range(size):
            self.name_slot[f] = -1
        self.name_off[0] = 0
        for f in range(self.n_fields):
            b = utf8[f]
            memcpy(self.name_bytes + self.name_off[f], <const char*>b, len(b))
            self.name_off[f + 1] = self.name_off[f] + len(b)
        for f in range(self.n_fields - 1, -1, -1):  # last first: a repeated name maps as in `field_of`
            b = utf8[f]
            if self.field_of_utf8(<const char*>b, len(b)) >= 0:
                continue
            s = key_bytes(0, <const char*>b, len(b), 0) & self.name_mask
            while self.name_slot[s] >= 0:
                s = (s + 1) & self.name_mask
            self.name_slot[s] = <int32_t>f
        return 0

    cdef int field_of_utf8(self, const char* s, Py_ssize_t n) noexcept nogil:
        """Field number of a name given as UTF-8 bytes, -1 if it is not a field (as `_field_of`)."""
        cdef uint64_t slot = key_bytes(0, s, n, 0) & self.name_mask
        cdef int32_t f
        while True:
            f = self.name_slot[slot]
            if f < 0:
                return -1
            if self.name_off[f + 1] - self.name_off[f] == n and memcmp(self.name_bytes + self.name_off[f], s, n) == 0:
                return f
            slot = (slot + 1) & self.name_mask

    cdef void _reserve(self, Py_ssize_t need) except *:
        """Room for `need` encoded candidate entries."""
        cdef Py_ssize_t cap = max(self.ent_cap, 16)
        if need <= self.ent_cap:
            return
        while cap < need:
            cap *= 2
        self.ent_f = <int32_t*>_grow(self.ent_f, cap * sizeof(int32_t))
        self.ent_i = <int32_t*>_grow(self.ent_i, cap * sizeof(int32_t))
        self.ent_v = <float*>_grow(self.ent_v, cap * sizeof(float))
        self.ent_k = <uint64_t*>_grow(self.ent_k, cap * sizeof(uint64_t))
        self.ent_cap = cap

    cdef void _reserve_cands(self, Py_ssize_t need) except *:
        """Room for the offsets of `need` candidates."""
        cdef Py_ssize_t cap = max(self.cand_cap, 16)
        if need + 1 <= self.cand_cap:
            return
        while cap < need + 1:
            cap *= 2
        self.own_off = <int64_t*>_grow(self.own_off, cap * sizeof(int64_t))
        self.o_p = <int64_t*>_grow(self.o_p, cap * sizeof(int64_t))
        self.cand_cap = cap

    cdef void _reserve_out(self, Py_ssize_t need) except *:
        """Room for `need` output candidate entries."""
        cdef Py_ssize_t cap = max(self.out_cap, 16)
        if need <= self.out_cap:
            return
        while cap < need:
            cap *= 2
        self.o_f = <int32_t*>_grow(self.o_f, cap * sizeof(int32_t))
        self.o_i = <int32_t*>_grow(self.o_i, cap * sizeof(int32_t))
        self.o_v = <float*>_grow(self.o_v, cap * sizeof(float))
        self.out_cap = cap

    cdef int _field_of(self, PyObject* name) except -2:
        """Field number of a dict key, -1 if it is not a field."""
        # Fibonacci hashing of the address: objects sit 16..64 bytes apart, so low bits alone collide
        cdef size_t slot = <size_t>((<uint64_t><size_t>name * 0x9E3779B97F4A7C15ULL) >> (64 - NAME_CACHE_BITS))
        cdef PyObject* pf
        cdef int f
        if self.name_ptr[slot] == name:
            return self.name_field[slot]
        pf = PyDict_GetItem(self.field_of, <object>name)
        f = -1 if pf == NULL else <int>(<object>pf)
        if type(<object>name) is str:
            self.name_refs[slot] = <object>name
            self.name_ptr[slot] = name
            self.name_field[slot] = f
        return f

    cdef int _encode(self, int f, object v, uint64_t* key, float* val) except -1:
        """Stored key (0 = missing) and value of raw value v in field f; returns 1 if present.

        The key's table slot is requested at once, so the look-up (`_resolve`,
        after all values are hashed) finds it in cache: the misses of a whole
        request overlap with the hashing instead of queueing one by one.
        """
        cdef int r = self._key(f, v, key, val)
        if self.cap > 0 and key[0] != 0:
            __builtin_prefetch(self.slots + (key[0] & self.mask))
        return r

    cdef int _key(self, int f, object v, uint64_t* key, float* val) except -1:
        cdef int kind = self.kinds_p[f]
        cdef const char* buf
        cdef Py_ssize_t n
        cdef char num[32]
        cdef long long iv
        cdef int overflow = 0
        cdef double d
        cdef uint64_t k
        if v is None:
            key[0] = 0
            val[0] = 1.0
            return 0
        if kind == 0:
            if type(v) is str:
                if PyUnicode_IS_COMPACT_ASCII(v):
                    # ASCII str keeps its bytes inline: no conversion, no call
                    buf = <const char*>PyUnicode_DATA(v)
                    n = PyUnicode_GET_LENGTH(v)
                else:
                    buf = PyUnicode_AsUTF8AndSize(v, &n)
                if n == 0 or (self.has_missing and v in self.missing):
                    key[0] = 0
                    val[0] = 1.0
                    return 0
                k = key_from_state(self.states[f], buf, n)
            elif type(v) is int:
                iv = PyLong_AsLongLongAndOverflow(v, &overflow)
                if overflow:
                    k = key_of(<uint32_t>f, str(v), self.seed)
                else:
                    k = key_from_state(self.states[f], num, fmt_i64(num, iv))
            elif type(v) is float:
                d = v
                if isnan(d):
                    key[0] = 0
                    val[0] = 1.0
                    return 0
                if d == floor(d) and -9.2e18 < d < 9.2e18:
                    k = key_bytes(<uint32_t>f, num, fmt_i64(num, <int64_t>d), self.seed)
                else:
                    k = key_of(<uint32_t>f, categorical_token(v), self.seed)
            else:
                tok = categorical_token(v)
                if tok == "" or (self.has_missing and tok in self.missing):
                    key[0] = 0
                    val[0] = 1.0
                    return 0
                k = key_of(<uint32_t>f, tok, self.seed)
            key[0] = stored(k)
            val[0] = 1.0
            return 1
        # numeric
        if type(v) is float or type(v) is int:
            d = v
        else:
            if isinstance(v, (str, bytes)):
                s = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
                if s == "" or (self.has_missing and s in self.missing):
                    key[0] = 0
                    val[0] = 1.0
                    return 0
                try:
                    d = float(s)
                except ValueError:
                    raise _request_error(self.names[f], v) from None
            else:
                try:
                    d = float(v)
                except (TypeError, ValueError):
                    raise _request_error(self.names[f], v) from None
        if isnan(d):
            key[0] = 0
            val[0] = 1.0
            return 0
        if not isfinite(d):
            raise _request_error(self.names[f], v)
        if kind == 1:
            key[0] = log2bin_key(<uint32_t>f, d, self.seed)
            val[0] = 1.0
        else:
            key[0] = self.raw_keys[f]
            val[0] = <float>d
            if not isfinite(val[0]):  # beyond float32: the score would be NaN
                raise _range_error(self.names[f], v)
        return 1

    cdef int _key_raw(self, const RawValue* v, uint64_t* key, float* val) except -2:
        """`_key` of a value that a JSON scanner found (no Python object): the same key and value as
        `_key` gives the decoded value. Returns 1 present, 0 missing, -1 when this value needs the
        Python path (a string in a numeric field that is not a plain decimal number, or not finite);
        the caller then takes that path for the whole request, which reports errors."""
        cdef int f = v.field
        cdef int kind = self.kinds_p[f]
        cdef char num[32]
        cdef double d
        cdef uint64_t k
        cdef bytes m
        key[0] = 0
        val[0] = 1.0
        if v.kind == RAW_NULL:
            return 0
        if v.kind == RAW_STR:
            if v.n == 0:
                return 0
            if self.has_missing:
                for m in self.missing_utf8:
                    if len(m) == v.n and memcmp(<const char*>m, v.s, v.n) == 0:
                        return 0
        if kind == 0:
            if v.kind == RAW_STR:
                k = key_from_state(self.states[f], v.s, v.n)
            elif v.kind == RAW_INT:
                k = key_from_state(self.states[f], num, fmt_i64(num, v.i))
            else:
                d = v.d
                if not isfinite(d):
                    return -1
                if d == floor(d) and -9.2e18 < d < 9.2e18:
                    k = key_bytes(<uint32_t>f, num, fmt_i64(num, <int64_t>d), self.seed)
                else:
                    k = key_of(<uint32_t>f, categorical_token(d), self.seed)
            key[0] = stored(k)
            return 1
        # numeric
        if v.kind == RAW_INT:
            d = <double>v.i
        elif v.kind == RAW_FLOAT:
            d = v.d
        elif not parse_decimal(<const unsigned char*>v.s, v.n, &d):
            return -1
        if not isfinite(d):
            return -1
        if kind == 1:
            key[0] = log2bin_key(<uint32_t>f, d, self.seed)
        else:
            key[0] = self.raw_keys[f]
            val[0] = <float>d
            if not isfinite(val[0]):
                return -1  # `_key` reports it
        return 1

    cdef void _resolve(self, const uint64_t* keys, const int32_t* fields, int32_t* out,
                       Py_ssize_t n) noexcept nogil:
        """Indices of n stored keys (field i of key i when `fields` is NULL); slots were prefetched."""
        cdef Py_ssize_t i
        cdef uint64_t k
        cdef int32_t f, j
        for i in range(n):
            f = fields[i] if fields != NULL else <int32_t>i
            k = keys[i]
            if k == 0:
                out[i] = 2 * f
            elif self.cap > 0:
                j = slot_find(self.slots, self.mask, k)
                out[i] = j if j >= 0 else 2 * f + 1
            else:
                out[i] = <int32_t>(2 * self.n_fields + <int64_t>(k % self.hash_space))

    def encode(self, context, candidates):
        """(ctx_fields, ctx_indices, ctx_values, cand_indptr, cand_fields, cand_indices, cand_values)."""
        if self.busy:
            return self._spare().encode(context, candidates)
        self.busy = True
        try:
            self._encode_entries(context, candidates)
            return self._arrays()
        finally:
            self.busy = False

    def score(self, context, candidates, CandidateModel model not None):
        """Probabilities (float64, candidate order) of the candidates, encoded and scored in one call.

        Equal to `score_candidates` of `encode`'s arrays; raises DataError if
        an entry falls outside the model (an encoder and weights that disagree).
        """
        cdef cnp.npy_intp dims[1]
        if self.busy:
            return self._spare().score(context, candidates, model)
        self.busy = True
        try:
            self._encode_entries(context, candidates, model.W if model.model_code == 0 else NULL,
                                 model.sj * sizeof(float))
            dims[0] = self.n_c
            out = cnp.PyArray_EMPTY(1, dims, cnp.NPY_FLOAT64, 0)
            if not self._score_scratch(model, <double*>cnp.PyArray_DATA(out)):
                raise _model_mismatch(model.n_fields, model.n_features, self._arrays())
            return out
        finally:
            self.busy = False

    cdef RequestEncoder _spare(self):
        """A second encoder (same table) for a call that arrives while this one is busy; kept for the
        next such call, since a server thread pool makes them routine, not rare."""
        if self.spare is None:
            self.spare = RequestEncoder(*self.init_args)
        return self.spare

    cdef tuple _arrays(self):
        """The entries of the last `_encode_entries` as new arrays."""
        cdef Py_ssize_t total = self.o_p[self.n_c]
        return (_copy_array(self.oc_f, self.n_ctx_out, cnp.NPY_INT32),
                _copy_array(self.oc_i, self.n_ctx_out, cnp.NPY_INT32),
                _copy_array(self.oc_v, self.n_ctx_out, cnp.NPY_FLOAT32),
                _copy_array(self.o_p, self.n_c + 1, cnp.NPY_INT64),
                _copy_array(self.o_f, total, cnp.NPY_INT32),
                _copy_array(self.o_i, total, cnp.NPY_INT32),
                _copy_array(self.o_v, total, cnp.NPY_FLOAT32))

    cdef int _encode_entries(self, context, candidates, const float* W=NULL, Py_ssize_t row_bytes=0) except -1:
        """Encode into the scratch outputs: oc_* (n_ctx_out context entries), o_p (n_c + 1 offsets), o_*.

        With W (scoring), each entry's weight row is requested as soon as its
        index is known, a few candidates behind the hashing: the rows' cache
        misses then overlap the work on the Python objects of later candidates
        instead of all waiting for the scoring kernel.
        """
        cdef int nf = self.n_fields, f
        cdef Py_ssize_t pos, n_c, c, ne = 0, e, in_count = 0, done = 0, upto
        cdef PyObject* pk
        cdef PyObject* pv
        cdef list cand_list
        cdef int64_t* own_off
        for f in range(nf):
            self.ctx_key[f] = 0
            self.ctx_val[f] = 1.0
            self.ctx_set[f] = 0
            self.in_cands[f] = 0
        # context
        if context is not None:
            if type(context) is not dict:
                context = dict(context)
            pos = 0
            while PyDict_Next(context, &pos, &pk, &pv):
                f = self._field_of(pk)
                if f < 0:
                    continue
                self._encode(f, <object>pv, &self.ctx_key[f], &self.ctx_val[f])
                self.ctx_set[f] = 1
        if W != NULL:
            self._resolve(self.ctx_key, NULL, self.ctx_idx, nf)
            for f in range(nf):
                _prefetch_span(W + <Py_ssize_t>self.ctx_idx[f] * (row_bytes // sizeof(float)), row_bytes)
        # candidates, first pass: own entries into scratch
        cand_list = candidates if type(candidates) is list else list(candidates)
        n_c = PyList_GET_SIZE(cand_list)
        self._reserve_cands(n_c)
        own_off = self.own_off
        own_off[0] = 0
        for c in range(n_c):
            cand = <object>PyList_GET_ITEM(cand_list, c)
            if type(cand) is not dict:
                cand = dict(cand)
            self._reserve(ne + len(<dict>cand))
            pos = 0
            while PyDict_Next(cand, &pos, &pk, &pv):
                f = self._field_of(pk)
                if f < 0:
                    continue
                self.ent_f[ne] = f
                self._encode(f, <object>pv, &self.ent_k[ne], &self.ent_v[ne])
                if not self.in_cands[f]:
                    self.in_cands[f] = 1
                    in_count += 1
                ne += 1
            own_off[c + 1] = ne
            if W != NULL and c >= REQUEST_LAG:
                upto = own_off[c - REQUEST_LAG + 1]
                self._resolve(self.ent_k + done, self.ent_f + done, self.ent_i + done, upto - done)
                for e in range(done, upto):
                    _prefetch_span(W + <Py_ssize_t>self.ent_i[e] * (row_bytes // sizeof(float)), row_bytes)
                done = upto
        if W == NULL:
            self._resolve(self.ctx_key, NULL, self.ctx_idx, nf)
        self._resolve(self.ent_k + done, self.ent_f + done, self.ent_i + done, ne - done)
        return self._assemble(n_c, ne, in_count)

    cdef int _assemble(self, Py_ssize_t n_c, Py_ssize_t ne, Py_ssize_t in_count) except -1:
        """The output entries from the resolved scratch (ctx_idx/ctx_val, ent_*, own_off, in_cands)."""
        cdef int nf = self.n_fields, f
        cdef Py_ssize_t c, e, w, own
        cdef int64_t* own_off = self.own_off
        cdef int64_t* o_p
        cdef int32_t* o_f
        cdef int32_t* o_i
        cdef float* o_v
        # context part: fields no candidate sets
        w = 0
        for f in range(nf):
            if not self.in_cands[f]:
                self.oc_f[w] = f
                self.oc_i[w] = self.ctx_idx[f]
                self.oc_v[w] = self.ctx_val[f]
                w += 1
        self.n_ctx_out = w
        # candidate part: own entries, then context/missing for candidate fields it lacks
        self._reserve_out(n_c * in_count)
        o_p, o_f, o_i, o_v = self.o_p, self.o_f, self.o_i, self.o_v
        w = 0
        o_p[0] = 0
        for c in range(n_c):
            own = own_off[c + 1] - own_off[c]
            for e in range(own_off[c], own_off[c + 1]):
                o_f[w] = self.ent_f[e]
                o_i[w] = self.ent_i[e]
                o_v[w] = self.ent_v[e]
                w += 1
            if own < in_count:
                # mark own fields, fill the rest of the candidate fields from the context
                for e in range(own_off[c], own_off[c + 1]):
                    self.ctx_set[self.ent_f[e]] |= 2
                for f in range(nf):
                    if self.in_cands[f] and not (self.ctx_set[f] & 2):
                        o_f[w] = f
                        o_i[w] = self.ctx_idx[f]
                        o_v[w] = self.ctx_val[f]
                        w += 1
                for e in range(own_off[c], own_off[c + 1]):
                    self.ctx_set[self.ent_f[e]] &= 1
            o_p[c + 1] = w
        self.n_c = n_c
        return 0

    cdef bint _score_scratch(self, CandidateModel model, double* out) except -1:
        """Score the scratch outputs into out; False (nothing scored) if an entry is outside the model."""
        cdef CandidateRequest q
        if not (entries_ok(self.oc_f, self.oc_i, self.n_ctx_out, model.n_fields, model.n_features)
                and entries_ok(self.o_f, self.o_i, self.o_p[self.n_c], model.n_fields, model.n_features)):
            return False
        model.fill(&q)
        q.xf, q.xj, q.xv, q.nc = self.oc_f, self.oc_i, self.oc_v, self.n_ctx_out
        q.cptr, q.cf, q.cj, q.cv, q.n_cand = self.o_p, self.o_f, self.o_i, self.o_v, self.n_c
        q.out = out
        score_request(&q)
        return True

    cdef int score_raw(self, const RawValue* ctx, Py_ssize_t n_ctx, const RawValue* ents,
                       const int64_t* cand_off, Py_ssize_t n_c, CandidateModel model,
                       double* out) except -1:
        """`score` of raw values: ctx[0:n_ctx] the context, ents[cand_off[c]:cand_off[c+1]] candidate c's
        own values, every one a field (`field_of_utf8`) and no field twice in one object. Writes the
        n_c probabilities to out and returns 1, or returns 0 with nothing scored when some value needs
        the Python path (see `_key_raw`), an entry is outside the model, or the encoder is busy.
        The same entries in the same order as `score` of the decoded dicts, hence the same scores.
        """
        cdef int nf = self.n_fields, f, r
        cdef Py_ssize_t i, c, ne, in_count = 0, done = 0, upto, e
        cdef const float* W = model.W if model.model_code == 0 else NULL
        cdef Py_ssize_t row = model.sj
        if self.busy:
            return 0
        self.busy = True
        try:
            for f in range(nf):
                self.ctx_key[f] = 0
                self.ctx_val[f] = 1.0
                self.ctx_set[f] = 0
                self.in_cands[f] = 0
            for i in range(n_ctx):
                f = ctx[i].field
                if self._key_raw(&ctx[i], &self.ctx_key[f], &self.ctx_val[f]) < 0:
                    return 0
                if self.cap > 0 and self.ctx_key[f] != 0:
                    __builtin_prefetch(self.slots + (self.ctx_key[f] & self.mask))
                self.ctx_set[f] = 1
            if W != NULL:
                self._resolve(self.ctx_key, NULL, self.ctx_idx, nf)
                for f in range(nf):
                    _prefetch_span(W + <Py_ssize_t>self.ctx_idx[f] * row, row * sizeof(float))
            ne = cand_off[n_c]
            self._reserve(ne)
            self._reserve_cands(n_c)
            self.own_off[0] = 0
            for c in range(n_c):
                for i in range(cand_off[c], cand_off[c + 1]):
                    f = ents[i].field
                    self.ent_f[i] = f
                    r = self._key_raw(&ents[i], &self.ent_k[i], &self.ent_v[i])
                    if r < 0:
                        return 0
                    if self.cap > 0 and self.ent_k[i] != 0:
                        __builtin_prefetch(self.slots + (self.ent_k[i] & self.mask))
                    if not self.in_cands[f]:
                        self.in_cands[f] = 1
                        in_count += 1
                self.own_off[c + 1] = cand_off[c + 1]
                if W != NULL and c >= REQUEST_LAG:
                    upto = self.own_off[c - REQUEST_LAG + 1]
                    self._resolve(self.ent_k + done, self.ent_f + done, self.ent_i + done, upto - done)
                    for e in range(done, upto):
                        _prefetch_span(W + <Py_ssize_t>self.ent_i[e] * row, row * sizeof(float))
                    done = upto
            if W == NULL:
                self._resolve(self.ctx_key, NULL, self.ctx_idx, nf)
            self._resolve(self.ent_k + done, self.ent_f + done, self.ent_i + done, ne - done)
            self._assemble(n_c, ne, in_count)
            return 1 if self._score_scratch(model, out) else 0
        finally:
            self.busy = False


cdef inline void _prefetch_span(const void* p, Py_ssize_t nbytes) noexcept nogil:
    """Request every cache line of [p, p + nbytes) (rows are not line-aligned)."""
    cdef size_t a = <size_t>p & ~(<size_t>63)
    cdef size_t end = <size_t>p + <size_t>nbytes
    while a < end:
        __builtin_prefetch(<const void*>a)
        a += 64


cdef void* _grow(void* p, size_t nbytes) except NULL:
    cdef void* q = realloc(p, nbytes)
    if q == NULL:
        raise MemoryError()
    return q


cdef object _copy_array(const void* src, Py_ssize_t n, int typenum):
    cdef cnp.npy_intp dims[1]
    dims[0] = n
    arr = cnp.PyArray_EMPTY(1, dims, typenum, 0)
    if n > 0:
        memcpy(cnp.PyArray_DATA(arr), src, <size_t>n * cnp.PyArray_ITEMSIZE(arr))
    return arr


def _model_mismatch(int n_fields, Py_ssize_t n_features, tuple entries):
    from ctrops.errors import DataError
    for name, arr, limit in (("context field", entries[0], n_fields), ("context feature index", entries[1], n_features),
                             ("candidate field", entries[4], n_fields),
                             ("candidate feature index", entries[5], n_features)):
        if arr.size and (arr.min() < 0 or arr.max() >= limit):
            bad = int(arr.min()) if arr.min() < 0 else int(arr.max())
            return DataError(f"{name} {bad} outside [0, {limit}) of the model: the encoder and the weights "
                             f"do not belong together")
    return DataError("an entry is outside the model's fields or features")


def categorical_token(v):
    """Token of a raw categorical value: str as is, integral numbers as integers, else str()."""
    if isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, float):
        if v == v and v not in (_INF, -_INF) and v == int(v):
            return str(int(v))
        return str(v)
    return str(v)


_INF = float("inf")


def _range_error(name, value):
    from ctrops.errors import DataError
    return DataError(f"value {value!r} is outside the float32 range of a raw numeric field", field=name)


def _request_error(name, value):
    from ctrops.errors import DataError
    return DataError(f"value {value!r} is not a number", field=name)
