# cython: language_level=3
"""The native fast path of POST /v1/predict: body bytes in, response bytes out.

The general path decodes the body into ~2,000 Python strings and 100 dicts
(msgspec), hands them to the encoder, sorts with NumPy and renders with a
join; about 300 µs a request, most of it making and dropping Python objects.
Here the body is scanned in place (nogil): each field value stays a span of
the body's bytes until the encoder hashes it (`RequestEncoder.score_raw`, the
same transforms and rules as for decoded values), the candidates are ranked
by a stable merge sort and the answer is written byte for byte as
`render_response` writes it, ids copied from the body's text.

The scanner accepts only what it reproduces exactly: the documented request
shape, strings without escapes or control characters (valid UTF-8), numbers
in the plain JSON grammar that fit an int64 or a double, no duplicate keys,
every limit met. For anything else it answers "not handled" (None) and the
caller runs the general path, which gives the answer or the 4xx message with
its path. The two paths are held byte-identical by a differential test.

Use: `scan(body)` -> None or (request_id, user_id) (the only Python strings
made; the caller needs them to pick the arm), then, with the arm's encoder
and model, `finish(body, encoder, model, head, prefix)` -> None or
(response bytes, scores, ranked order). A FastPath keeps one request's scan
between the two calls; calls from other threads meanwhile get None.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.pyport cimport PY_SSIZE_T_MAX
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.math cimport isfinite, isnan, rint
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc, strtod
from libc.string cimport memcmp, memcpy
cimport numpy as cnp

from ctrops.data._parse cimport RAW_FLOAT, RAW_INT, RAW_NULL, RAW_STR, RawValue, RequestEncoder, fmt_i64
from ctrops.models._ffm cimport CandidateModel

cnp.import_array()

cdef enum:
    NUMBUF = 64
    MAX_INT_DIGITS = 18         # every such integer fits an int64 and a double's exact range check
    ROW_FIXED = 96              # bytes of a response row besides its id (see _render)
    # what a scanned value may be
    ALLOW_BOOL = 1
    # a passthrough value's kind besides the RAW_* ones (`_pt_value`)
    PT_BOOL = 4


cdef struct Scan:
    const unsigned char* p
    Py_ssize_t n
    Py_ssize_t i


cdef struct Str:
    const char* s
    Py_ssize_t n          # bytes
    Py_ssize_t chars      # code points (the schema's max_length counts these)
    Py_ssize_t json_n     # bytes as json.encoder.encode_basestring_ascii writes it, quotes included
    bint plain            # printable ASCII only: written as is


cdef struct Entry:
    const char* name
    Py_ssize_t name_n
    RawValue v


cdef struct Cand:
    Str id_str
    int64_t id_int
    bint id_is_int
    Py_ssize_t e0, e1     # its fields: entries[e0:e1]
    Py_ssize_t id0, id1   # the id's JSON text: body[id0:id1]
    Py_ssize_t pt0, pt1   # its passthrough's JSON text (pt0 < 0: none given)


cdef const char* HEX = b"0123456789abcdef"


# ---------------------------------------------------------------------------
# scanning (nogil; False = not handled)
# ---------------------------------------------------------------------------

cdef extern from *:
    int __builtin_ctzll(unsigned long long x) noexcept nogil

cdef inline uint64_t _zero_bytes(uint64_t x) noexcept nogil:
    """0x80 in the lowest byte of x that is zero (higher flags may be spurious, never lower ones)."""
    return (x - 0x0101010101010101ULL) & ~x & 0x8080808080808080ULL


cdef inline Py_ssize_t _plain_run(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """The end of the run of printable ASCII other than '"' and '\\' from i: eight bytes a step."""
    cdef uint64_t v, m
    while i + 8 <= n:
        memcpy(&v, p + i, 8)
        m = (_zero_bytes(v ^ 0x2222222222222222ULL) | _zero_bytes(v ^ 0x5C5C5C5C5C5C5C5CULL)
             | _zero_bytes(v ^ 0x7F7F7F7F7F7F7F7FULL)
             | ((v - 0x2020202020202020ULL) & ~v) | v) & 0x8080808080808080ULL
        if m:
            return i + (__builtin_ctzll(m) >> 3)
        i += 8
    while i < n and 0x20 <= p[i] < 0x7F and p[i] != 34 and p[i] != 92:
        i += 1
    return i


cdef inline void _ws(Scan* s) noexcept nogil:
    cdef unsigned char c
    while s.i < s.n:
        c = s.p[s.i]
        if c != 32 and c != 10 and c != 13 and c != 9:
            return
        s.i += 1


cdef inline bint _expect(Scan* s, unsigned char c) noexcept nogil:
    _ws(s)
    if s.i < s.n and s.p[s.i] == c:
        s.i += 1
        return True
    return False


cdef inline bint _literal(Scan* s, const char* lit, Py_ssize_t n) noexcept nogil:
    if s.i + n <= s.n and memcmp(s.p + s.i, lit, n) == 0:
        s.i += n
        return True
    return False


cdef bint _string(Scan* s, Str* out) noexcept nogil:
    """A string at s.i (its opening quote); strict UTF-8, no escapes, no control characters."""
    cdef Py_ssize_t i = s.i + 1, n = s.n, chars = 0, json_n = 2, start
    cdef const unsigned char* p = s.p
    cdef unsigned char c, c1
    cdef bint plain = True
    if s.i >= n or p[s.i] != 34:
        return False
    out.s = <const char*>(p + i)
    while True:
        start = i
        i = _plain_run(p, i, n)
        chars += i - start
        json_n += i - start
        if i >= n:
            return False
        c = p[i]
        if c == 34:
            break
        if c < 0x80:
            if c < 0x20 or c == 92:  # control characters are invalid JSON, escapes need decoding
                return False
            if c == 0x7F:
                plain = False
                json_n += 6
            else:
                json_n += 1
            i += 1
        else:
            plain = False
            if 0xC2 <= c <= 0xDF:
                if i + 1 >= n or (p[i + 1] & 0xC0) != 0x80:
                    return False
                i += 2
                json_n += 6
            elif 0xE0 <= c <= 0xEF:
                if i + 2 >= n:
                    return False
                c1 = p[i + 1]
                if (c1 & 0xC0) != 0x80 or (p[i + 2] & 0xC0) != 0x80:
                    return False
                if (c == 0xE0 and c1 < 0xA0) or (c == 0xED and c1 > 0x9F):  # overlong, surrogate
                    return False
                i += 3
                json_n += 6
            elif 0xF0 <= c <= 0xF4:
                if i + 3 >= n:
                    return False
                c1 = p[i + 1]
                if (c1 & 0xC0) != 0x80 or (p[i + 2] & 0xC0) != 0x80 or (p[i + 3] & 0xC0) != 0x80:
                    return False
                if (c == 0xF0 and c1 < 0x90) or (c == 0xF4 and c1 > 0x8F):  # overlong, > U+10FFFF
                    return False
                i += 4
                json_n += 12  # a surrogate pair
            else:
                return False
        chars += 1
    out.n = <Py_ssize_t>((p + i) - <const unsigned char*>out.s)
    out.chars = chars
    out.json_n = json_n
    out.plain = plain
    s.i = i + 1
    return True


cdef double POW10[23]
cdef int _k
POW10[0] = 1.0
for _k in range(1, 23):
    POW10[_k] = POW10[_k - 1] * 10.0  # exact up to 1e22


cdef bint _number(Scan* s, RawValue* v) noexcept nogil:
    """A number in the JSON grammar: RAW_INT when integral (no fraction or exponent, at most 18
    digits), else RAW_FLOAT when it is a finite double, rounded correctly as msgspec does: exactly
    by one IEEE operation when the digits fit 2^53 and the power of ten is at most 1e22 (Clinger's
    fast path; plain decimals such as prices), else by strtod."""
    cdef const unsigned char* p = s.p
    cdef Py_ssize_t i = s.i, n = s.n, start = s.i, d0, digits
    cdef bint neg = False, integral = True, exp_neg = False
    cdef int64_t acc = 0, mant = 0
    cdef int sig = 0, exp10 = 0, e = 0
    cdef char buf[NUMBUF]
    cdef char* end
    if i < n and p[i] == 45:
        neg = True
        i += 1
    d0 = i
    while i < n and 48 <= p[i] <= 57:
        if i - d0 < MAX_INT_DIGITS:
            acc = acc * 10 + (p[i] - 48)
        if sig < 16 and (sig > 0 or p[i] != 48):
            mant = mant * 10 + (p[i] - 48)
            sig += 1
        elif sig >= 16:
            exp10 += 1
        i += 1
    digits = i - d0
    if digits == 0 or (p[d0] == 48 and digits > 1):
        return False
    if i < n and p[i] == 46:
        integral = False
        i += 1
        d0 = i
        while i < n and 48 <= p[i] <= 57:
            if sig < 16 and (sig > 0 or p[i] != 48):
                mant = mant * 10 + (p[i] - 48)
                sig += 1
                exp10 -= 1
            elif sig == 0:
                exp10 -= 1
            else:
                sig = 99  # more digits than the fast path takes
            i += 1
        if i == d0:
            return False
    if i < n and (p[i] == 101 or p[i] == 69):
        integral = False
        i += 1
        if i < n and (p[i] == 43 or p[i] == 45):
            exp_neg = p[i] == 45
            i += 1
        d0 = i
        while i < n and 48 <= p[i] <= 57:
            if e < 10000:
                e = e * 10 + (p[i] - 48)
            i += 1
        if i == d0:
            return False
        exp10 += -e if exp_neg else e
    s.i = i
    if integral:
        if digits > MAX_INT_DIGITS:
            return False
        v.kind = RAW_INT
        v.i = -acc if neg else acc
        return True
    v.kind = RAW_FLOAT
    if sig <= 15 and -22 <= exp10 <= 22:
        v.d = <double>mant
        v.d = v.d * POW10[exp10] if exp10 >= 0 else v.d / POW10[-exp10]
        if neg:
            v.d = -v.d
        return True
    if i - start >= NUMBUF:
        return False
    memcpy(buf, p + start, i - start)
    buf[i - start] = 0
    v.d = strtod(buf, &end)
    return end == buf + (i - start) and isfinite(v.d)


cdef bint _scalar(Scan* s, RawValue* v, Py_ssize_t max_string, int allow) noexcept nogil:
    """A field value (string within max_string, number, null; booleans with ALLOW_BOOL, read as null)."""
    if not _pt_value(s, v, max_string):
        return False
    if v.kind == PT_BOOL:
        if not allow & ALLOW_BOOL:
            return False
        v.kind = RAW_NULL
    return True


cdef inline bint _key(Scan* s, Str* k) noexcept nogil:
    """An object key and its colon."""
    _ws(s)
    return _string(s, k) and _expect(s, 58)


cdef inline int _next(Scan* s) noexcept nogil:
    """After an object member or array element: 1 more follow, 0 the end, -1 invalid."""
    _ws(s)
    if s.i < s.n:
        s.i += 1
        if s.p[s.i - 1] == 44:
            return 1
        if s.p[s.i - 1] == 125 or s.p[s.i - 1] == 93:
            return 0
    return -1


cdef inline bint _same(const char* a, const char* b, Py_ssize_t n) noexcept nogil:
    """a[:n] == b[:n]; field names are a few bytes, shorter than a call to memcmp."""
    cdef Py_ssize_t i
    if n > 16:
        return memcmp(a, b, n) == 0
    for i in range(n):
        if a[i] != b[i]:
            return False
    return True


cdef inline bint _is(const Str* k, const char* lit, Py_ssize_t n) noexcept nogil:
    return k.n == n and memcmp(k.s, lit, n) == 0


cdef bint _passthrough(Scan* s, Py_ssize_t max_keys, Py_ssize_t max_string) noexcept nogil:
    """null or an object of scalar values (booleans too) within the limits; checked, not kept."""
    cdef Str k
    cdef RawValue v
    cdef Py_ssize_t count = 0
    cdef int more
    _ws(s)
    if _literal(s, "null", 4):
        return True
    if not _expect(s, 123):
        return False
    _ws(s)
    if s.i < s.n and s.p[s.i] == 125:
        s.i += 1
        return True
    while True:
        count += 1
        if count > max_keys or not _key(s, &k) or not _scalar(s, &v, max_string, ALLOW_BOOL):
            return False
        more = _next(s)
        if more < 0 or (more == 0 and s.p[s.i - 1] != 125):
            return False
        if more == 0:
            return True


cdef bint _pt_value(Scan* s, RawValue* v, Py_ssize_t max_string) noexcept nogil:
    """Any scalar JSON value as a RawValue (a string of at most max_string characters); booleans
    as PT_BOOL with i = 0 or 1."""
    cdef Str t
    cdef unsigned char c
    _ws(s)
    if s.i >= s.n:
        return False
    c = s.p[s.i]
    if c == 34:
        if not _string(s, &t) or t.chars > max_string:
            return False
        v.kind, v.s, v.n = RAW_STR, t.s, t.n
        return True
    if c == 116:
        v.kind, v.i = PT_BOOL, 1
        return _literal(s, "true", 4)
    if c == 102:
        v.kind, v.i = PT_BOOL, 0
        return _literal(s, "false", 5)
    if c == 110:
        v.kind = RAW_NULL
        return _literal(s, "null", 4)
    return _number(s, v)


cdef inline bint _skip_value(Scan* s) noexcept nogil:
    cdef RawValue v
    return _pt_value(s, &v, PY_SSIZE_T_MAX)


cdef inline bint _integer(Scan* s, int64_t* out) noexcept nogil:
    cdef RawValue v
    _ws(s)
    if not _number(s, &v) or v.kind != RAW_INT:
        return False
    out[0] = v.i
    return True


# ---------------------------------------------------------------------------
# rendering helpers
# ---------------------------------------------------------------------------

cdef inline Py_ssize_t _put(char* out, const char* s, Py_ssize_t n) noexcept nogil:
    memcpy(out, s, n)
    return n


cdef inline Py_ssize_t _u_escape(char* out, uint32_t u) noexcept nogil:
    out[0] = 92
    out[1] = 117
    out[2] = HEX[(u >> 12) & 15]
    out[3] = HEX[(u >> 8) & 15]
    out[4] = HEX[(u >> 4) & 15]
    out[5] = HEX[u & 15]
    return 6


cdef Py_ssize_t _json_str(char* out, const Str* t) noexcept nogil:
    """The string as json.encoder.encode_basestring_ascii writes it (the text is valid UTF-8 without
    escapes or control characters, so only DEL and non-ASCII characters need escaping)."""
    cdef Py_ssize_t i = 0, w = 1
    cdef const unsigned char* p = <const unsigned char*>t.s
    cdef uint32_t u
    cdef unsigned char c
    out[0] = 34
    if t.plain:
        memcpy(out + 1, t.s, t.n)
        w += t.n
    else:
        while i < t.n:
            c = p[i]
            if c < 0x7F:
                out[w] = <char>c
                w += 1
                i += 1
                continue
            if c == 0x7F:
                u = c
                i += 1
            elif c < 0xE0:
                u = ((c & 0x1F) << 6) | (p[i + 1] & 0x3F)
                i += 2
            elif c < 0xF0:
                u = ((c & 0x0F) << 12) | ((p[i + 1] & 0x3F) << 6) | (p[i + 2] & 0x3F)
                i += 3
            else:
                u = (((c & 0x07) << 18) | ((p[i + 1] & 0x3F) << 12) | ((p[i + 2] & 0x3F) << 6)
                     | (p[i + 3] & 0x3F)) - 0x10000
                w += _u_escape(out + w, 0xD800 | (u >> 10))
                u = 0xDC00 | (u & 0x3FF)
                i += 4
            w += _u_escape(out + w, u)
    out[w] = 34
    return w + 1


cdef void _rank(const double* score, int32_t* order, int32_t* tmp, Py_ssize_t n) noexcept nogil:
    """Indices by descending score, ties in input order: np.argsort(-score, kind="stable")."""
    cdef Py_ssize_t width = 1, lo, mid, hi, a, b, w, i
    cdef int32_t* src = order
    cdef int32_t* dst = tmp
    cdef int32_t* t
    for i in range(n):
        order[i] = <int32_t>i
    while width < n:
        lo = 0
        while lo < n:
            mid = min(lo + width, n)
            hi = min(lo + 2 * width, n)
            a, b, w = lo, mid, lo
            while a < mid and b < hi:
                if score[src[b]] > score[src[a]]:  # strictly greater: equal scores keep their order
                    dst[w] = src[b]
                    b += 1
                else:
                    dst[w] = src[a]
                    a += 1
                w += 1
            while a < mid:
                dst[w] = src[a]
                a += 1
                w += 1
            while b < hi:
                dst[w] = src[b]
                b += 1
                w += 1
            lo = hi
        t = src
        src = dst
        dst = t
        width *= 2
    if src != order:
        memcpy(order, src, n * sizeof(int32_t))


# ---------------------------------------------------------------------------
# the fast path object
# ---------------------------------------------------------------------------

@cython.final
cdef class FastPath:
    """One worker's scanner, ranker and renderer with its scratch memory (see the module doc).

    The limits are the schema's (`schema.Limits`): a body beyond any of them is not handled here,
    so the general path reports it.
    """
    cdef Py_ssize_t max_candidates, max_fields, max_passthrough, max_string
    cdef Entry* entries
    cdef Py_ssize_t n_entries, entries_cap
    cdef Py_ssize_t ctx_e0, ctx_e1
    cdef Cand* cands
    cdef Py_ssize_t n_cands
    cdef int64_t top_k          # 0: not given
    cdef Py_ssize_t pt0, pt1    # the request passthrough's JSON text (pt0 < 0: none given)
    cdef object body            # the scanned body (its bytes back every span), None when none
    cdef bint busy
    # finish scratch
    cdef RawValue* raw
    cdef Py_ssize_t raw_cap
    cdef int64_t* raw_off
    cdef uint64_t* stamp
    cdef Py_ssize_t stamp_cap
    cdef uint64_t generation
    # name -> field by position in the object: candidates name their fields in the same order,
    # so the name at position k is usually the previous candidate's name at k (one memcmp, no hash)
    cdef const char** pos_name
    cdef Py_ssize_t* pos_len
    cdef int* pos_field
    cdef int32_t* order
    cdef int32_t* tmp
    cdef int64_t* nano
    cdef uint64_t* id_slots
    cdef char* out
    cdef Py_ssize_t out_cap
    # log columns scratch (_log_columns): the first candidate's passthrough keys, every candidate's
    # values (n_cands x keys), which keys a candidate named, the value kinds seen per key
    cdef Str* pt_keys
    cdef uint8_t* pt_seen
    cdef int* pt_bits
    cdef RawValue* ptv
    cdef Py_ssize_t ptv_cap

    def __cinit__(self, Py_ssize_t max_candidates, Py_ssize_t max_fields, Py_ssize_t max_passthrough,
                  Py_ssize_t max_string):
        if max_candidates < 1 or max_fields < 0 or max_passthrough < 0 or max_string < 1:
            raise ValueError("limits must be positive")
        self.max_candidates, self.max_fields = max_candidates, max_fields
        self.max_passthrough, self.max_string = max_passthrough, max_string
        n = max_candidates + 1
        self.cands = <Cand*>malloc(n * sizeof(Cand))
        self.raw_off = <int64_t*>malloc((n + 2) * sizeof(int64_t))
        self.order = <int32_t*>malloc(n * sizeof(int32_t))
        self.tmp = <int32_t*>malloc(n * sizeof(int32_t))
        self.nano = <int64_t*>malloc(n * sizeof(int64_t))
        self.id_slots = <uint64_t*>malloc(4 * n * sizeof(uint64_t))
        self.pos_name = <const char**>malloc((max_fields + 1) * sizeof(const char*))
        self.pos_len = <Py_ssize_t*>malloc((max_fields + 1) * sizeof(Py_ssize_t))
        self.pos_field = <int*>malloc((max_fields + 1) * sizeof(int))
        self.pt_keys = <Str*>malloc((max_passthrough + 1) * sizeof(Str))
        self.pt_seen = <uint8_t*>malloc((max_passthrough + 1) * sizeof(uint8_t))
        self.pt_bits = <int*>malloc((max_passthrough + 1) * sizeof(int))
        if (self.pos_name == NULL or self.pos_len == NULL or self.pos_field == NULL or self.cands == NULL or self.raw_off == NULL or self.order == NULL or self.tmp == NULL
                or self.nano == NULL or self.id_slots == NULL or self.pt_keys == NULL or self.pt_seen == NULL
                or self.pt_bits == NULL):
            raise MemoryError()
        self.body = None
        self.busy = False
        self.generation = 0

    def __dealloc__(self):
        free(self.entries)
        free(self.cands)
        free(self.raw)
        free(self.raw_off)
        free(self.stamp)
        free(self.order)
        free(self.tmp)
        free(self.nano)
        free(self.id_slots)
        free(self.pos_name)
        free(self.pos_len)
        free(self.pos_field)
        free(self.out)
        free(self.pt_keys)
        free(self.pt_seen)
        free(self.pt_bits)
        free(self.ptv)

    @classmethod
    def from_limits(cls, limits):
        """A FastPath for a `schema.Limits`."""
        return cls(limits.max_candidates, limits.max_fields, limits.max_passthrough, limits.max_string)

    # ---- scan ----------------------------------------------------------------------------------
    def scan(self, bytes body not None):
        """None (not handled: take the general path) or (request_id, user_id), each str or None.

        Checks the whole body against the schema; `finish` then only encodes, scores and renders.
        """
        cdef Scan s
        cdef Str rid, uid
        cdef int64_t uid_int = 0
        cdef int got = 0
        cdef bint ok
        if self.busy:
            return None
        self.busy = True
        self.body = None
        try:
            s.p = <const unsigned char*>PyBytes_AS_STRING(body)
            s.n = PyBytes_GET_SIZE(body)
            s.i = 0
            rid.s = NULL
            uid.s = NULL
            with nogil:
                ok = self._scan_top(&s, &rid, &uid, &uid_int, &got)
            if not ok:
                return None
            self.body = body
            request_id = PyUnicode_DecodeUTF8(rid.s, rid.n, NULL) if rid.s != NULL else None
            if uid.s != NULL:
                user_id = PyUnicode_DecodeUTF8(uid.s, uid.n, NULL)
            elif got & 32:
                user_id = str(uid_int)
            else:
                user_id = None
            return request_id, user_id
        finally:
            self.busy = False

    cdef bint _grow_entries(self) noexcept nogil:
        cdef Py_ssize_t cap = self.entries_cap * 2 if self.entries_cap else 1024
        cdef Entry* e = <Entry*>realloc(self.entries, cap * sizeof(Entry))
        if e == NULL:
            return False
        self.entries = e
        self.entries_cap = cap
        return True

    cdef bint _fields(self, Scan* s) noexcept nogil:
        """A fields object; its entries are appended to self.entries."""
        cdef Str k
        cdef Entry* e
        cdef Py_ssize_t count = 0
        cdef int more
        if not _expect(s, 123):
            return False
        _ws(s)
        if s.i < s.n and s.p[s.i] == 125:
            s.i += 1
            return True
        while True:
            count += 1
            if count > self.max_fields or not _key(s, &k):
                return False
            if self.n_entries == self.entries_cap and not self._grow_entries():
                return False
            e = &self.entries[self.n_entries]
            if not _scalar(s, &e.v, self.max_string, 0):
                return False
            e.name, e.name_n = k.s, k.n
            self.n_entries += 1
            more = _next(s)
            if more < 0 or (more == 0 and s.p[s.i - 1] != 125):
                return False
            if more == 0:
                return True

    cdef bint _candidate(self, Scan* s, Cand* c) noexcept nogil:
        cdef Str k
        cdef int got = 0, more
        cdef RawValue v
        c.pt0 = -1
        if not _expect(s, 123):
            return False
        while True:
            if not _key(s, &k):
                return False
            if _is(&k, "id", 2) and not got & 1:
                got |= 1
                _ws(s)
                c.id0 = s.i
                if s.i < s.n and s.p[s.i] == 34:
                    if not _string(s, &c.id_str) or c.id_str.chars == 0 or c.id_str.chars > self.max_string:
                        return False
                    c.id_is_int = False
                else:
                    if not _integer(s, &c.id_int):
                        return False
                    c.id_is_int = True
                c.id1 = s.i
            elif _is(&k, "fields", 6) and not got & 2:
                got |= 2
                c.e0 = self.n_entries
                if not self._fields(s):
                    return False
                c.e1 = self.n_entries
            elif _is(&k, "passthrough", 11) and not got & 4:
                got |= 4
                _ws(s)
                c.pt0 = s.i
                if not _passthrough(s, self.max_passthrough, self.max_string):
                    return False
                c.pt1 = s.i
            else:
                return False  # unknown or repeated key
            more = _next(s)
            if more < 0 or (more == 0 and s.p[s.i - 1] != 125):
                return False
            if more == 0:
                return got & 3 == 3

    cdef bint _candidates(self, Scan* s) noexcept nogil:
        cdef int more
        if not _expect(s, 91):
            return False
        while True:
            if self.n_cands >= self.max_candidates:
                return False
            if not self._candidate(s, &self.cands[self.n_cands]):
                return False
            self.n_cands += 1
            more = _next(s)
            if more < 0 or (more == 0 and s.p[s.i - 1] != 93):
                return False
            if more == 0:
                return self._ids_unique()

    cdef bint _ids_unique(self) noexcept nogil:
        """No two candidates share an id (a str and an int never equal each other)."""
        cdef Py_ssize_t size = 4, c, d, n = self.n_cands
        cdef uint64_t h, mask, slot
        cdef uint64_t* t = self.id_slots
        cdef Cand* a
        cdef Cand* b
        cdef Py_ssize_t j
        while size < 2 * n:
            size *= 2
        mask = <uint64_t>(size - 1)
        for j in range(size):
            t[j] = 0
        for c in range(n):
            a = &self.cands[c]
            if a.id_is_int:
                h = <uint64_t>a.id_int * 0x9E3779B97F4A7C15ULL + 1
            else:
                h = 0xCBF29CE484222325ULL
                for j in range(a.id_str.n):
                    h = (h ^ <uint8_t>a.id_str.s[j]) * 0x100000001B3ULL
            h ^= h >> 29
            slot = h & mask
            while t[slot] != 0:
                b = &self.cands[t[slot] - 1]
                if a.id_is_int == b.id_is_int and (
                        (a.id_is_int and a.id_int == b.id_int) or (not a.id_is_int and a.id_str.n == b.id_str.n
                                                                  and memcmp(a.id_str.s, b.id_str.s, a.id_str.n) == 0)):
                    return False
                slot = (slot + 1) & mask
            t[slot] = <uint64_t>(c + 1)
        return True

    cdef bint _scan_top(self, Scan* s, Str* rid, Str* uid, int64_t* uid_int, int* got_out) noexcept nogil:
        """The request object: each known key at most once, context and candidates required."""
        cdef Str k
        cdef int got = 0, more
        cdef int64_t top_k
        self.n_entries = 0
        self.n_cands = 0
        self.top_k = 0
        self.pt0 = -1
        if not _expect(s, 123):
            return False
        while True:
            if not _key(s, &k):
                return False
            _ws(s)
            if _is(&k, "context", 7) and not got & 1:
                got |= 1
                self.ctx_e0 = self.n_entries
                if not self._fields(s):
                    return False
                self.ctx_e1 = self.n_entries
            elif _is(&k, "candidates", 10) and not got & 2:
                got |= 2
                if not self._candidates(s):
                    return False
            elif _is(&k, "request_id", 10) and not got & 4:
                got |= 4
                if not _literal(s, "null", 4):
                    if not _string(s, rid) or rid.chars == 0 or rid.chars > self.max_string:
                        return False
            elif _is(&k, "user_id", 7) and not got & 8:
                got |= 8
                if not _literal(s, "null", 4):
                    if s.i < s.n and s.p[s.i] == 34:
                        if not _string(s, uid) or uid.chars == 0 or uid.chars > self.max_string:
                            return False
                    elif _integer(s, uid_int):
                        got |= 32
                    else:
                        return False
            elif _is(&k, "top_k", 5) and not got & 16:
                got |= 16
                if not _literal(s, "null", 4):
                    if not _integer(s, &top_k) or top_k < 1:
                        return False
                    self.top_k = top_k
            elif _is(&k, "passthrough", 11) and not got & 64:
                got |= 64
                self.pt0 = s.i  # _key and the _ws above leave s.i at the value
                if not _passthrough(s, self.max_passthrough, self.max_string):
                    return False
                self.pt1 = s.i
            else:
                return False
            more = _next(s)
            if more < 0 or (more == 0 and s.p[s.i - 1] != 125):
                return False
            if more == 0:
                break
        _ws(s)
        got_out[0] = got
        return s.i == s.n and got & 3 == 3

    # ---- finish --------------------------------------------------------------------------------
    def finish(self, bytes body not None, RequestEncoder encoder not None, CandidateModel model not None,
               bytes head not None, bytes prefix not None, int log_body=0):
        """None (take the general path) or (response bytes, scores float64 in input order, order int64
        of the returned candidates) for the body `scan` just accepted; with `log_body`, a fourth item:
        what the prediction log needs of the body. With 1: the body's log part as JSON text (see
        `_log_body`); with 2: the log columns (a tuple, see `_log_columns`) when the passthrough
        objects have their shape, else the log part.

        `head` is the response up to and including `"candidates":[`; `prefix` the request's 28-digit
        tracking-id prefix (ASCII). None when this thread's scan is not the latest one (another
        thread scanned since), a value needs the encoder's Python path, or a score is not in [0, 1).
        """
        cdef cnp.npy_intp dims[1]
        cdef Py_ssize_t n, k, i
        cdef int64_t* op
        if self.busy or self.body is not body or len(prefix) != 28:
            return None
        self.busy = True
        try:
            self.body = None  # one finish per scan
            n = self.n_cands
            if not self._resolve_names(encoder):
                return None
            dims[0] = n
            scores = cnp.PyArray_EMPTY(1, dims, cnp.NPY_FLOAT64, 0)
            if not encoder.score_raw(self.raw, self.raw_off[0], self.raw + self.raw_off[0], self.raw_off + 1,
                                     n, model, <double*>cnp.PyArray_DATA(scores)):
                return None
            k = n if self.top_k == 0 or self.top_k > n else <Py_ssize_t>self.top_k
            if not self._rank_and_check(<const double*>cnp.PyArray_DATA(scores), n, k):
                return None
            out = self._render(head, prefix, k)
            dims[0] = k
            order = cnp.PyArray_EMPTY(1, dims, cnp.NPY_INT64, 0)
            op = <int64_t*>cnp.PyArray_DATA(order)
            for i in range(k):
                op[i] = self.order[i]
            if log_body:
                part = self._log_columns(body) if log_body == 2 else None
                return out, scores, order, part if part is not None else self._log_body(body)
            return out, scores, order
        finally:
            self.busy = False

    cdef bytes _log_body(self, bytes body):
        """`{"candidates":[{"id":..,"passthrough":..},..],"passthrough":..}`, the values copied verbatim
        from `body`: what the log writer decodes (logging_sink.request_from_body) instead of the
        whole body, whose bulk (every candidate's fields) the log does not keep. About a fifth of the
        bytes to copy into the log's ring and to parse in the writer; being the body's own JSON
        text, it decodes to exactly the values the whole body would."""
        cdef const char* src = PyBytes_AS_STRING(body)
        cdef Py_ssize_t c, size = 17 + max(self.n_cands - 1, 0), w
        cdef Cand* a
        cdef char* dst
        for c in range(self.n_cands):
            a = &self.cands[c]
            size += 7 + (a.id1 - a.id0) + (15 + a.pt1 - a.pt0 if a.pt0 >= 0 else 0)
        if self.pt0 >= 0:
            size += 15 + self.pt1 - self.pt0
        out = PyBytes_FromStringAndSize(NULL, size)
        dst = PyBytes_AS_STRING(out)
        w = _put(dst, b'{"candidates":[', 15)
        for c in range(self.n_cands):
            a = &self.cands[c]
            if c:
                dst[w] = 44
                w += 1
            w += _put(dst + w, b'{"id":', 6)
            w += _put(dst + w, src + a.id0, a.id1 - a.id0)
            if a.pt0 >= 0:
                w += _put(dst + w, b',"passthrough":', 15)
                w += _put(dst + w, src + a.pt0, a.pt1 - a.pt0)
            dst[w] = 125
            w += 1
        dst[w] = 93
        w += 1
        if self.pt0 >= 0:
            w += _put(dst + w, b',"passthrough":', 15)
            w += _put(dst + w, src + self.pt0, self.pt1 - self.pt0)
        dst[w] = 125
        w += 1
        if w != size:
            raise AssertionError(f"log body of {w} bytes, {size} expected")
        return out

    cdef object _log_columns(self, bytes body):
        """The log's share of the body as columns, or None when its candidates' passthrough objects
        are not all of one shape: (ids, keys, kinds, columns, passthrough).

        ids: the candidate ids as UTF-8 text joined by NUL (integers in decimal), the form
        `logging_sink.compact_ids` gives; keys: the passthrough keys (str) in the first candidate's
        order, or None when no candidate sent a passthrough object (absent or null); kinds: one
        byte per key, b"f" float64, b"i" int64, b"b" bool (one byte each), b"s" strings (UTF-8
        joined by NUL); columns: one bytes object per key, in input order; passthrough: the
        request's passthrough object as JSON text, or None.

        Every candidate must send an object with the same keys (any order) whose values are all
        of one kind per key, integers and floats making a float column: exactly the objects
        `logging_sink.compact_objects` turns into columns, so the writer builds the same records
        from these bytes with no Python object per candidate. Strings cannot hold a NUL here: the
        scanner takes no escapes or control characters.
        """
        cdef const char* src = PyBytes_AS_STRING(body)
        cdef Py_ssize_t n = self.n_cands, nk = 0, c, j, w, size, have = 0
        cdef Cand* a
        cdef RawValue* v
        cdef int bits
        cdef char* dst
        cdef char digits[24]
        # ids
        size = n - 1 if n else 0
        for c in range(n):
            a = &self.cands[c]
            size += fmt_i64(digits, a.id_int) if a.id_is_int else a.id_str.n
        ids = PyBytes_FromStringAndSize(NULL, size)
        dst = PyBytes_AS_STRING(ids)
        w = 0
        for c in range(n):
            a = &self.cands[c]
            if c:
                dst[w] = 0
                w += 1
            if a.id_is_int:
                w += fmt_i64(dst + w, a.id_int)
            else:
                w += _put(dst + w, a.id_str.s, a.id_str.n)
        # passthrough values, checked for one shape
        for c in range(n):
            a = &self.cands[c]
            if a.pt0 >= 0 and src[a.pt0] != 110:  # an object, not null
                have += 1
        if have and have != n:
            return None
        if have:
            nk = self._passthrough_values(src)
            if nk <= 0:
                return None
        request_pt = PyBytes_FromStringAndSize(src + self.pt0, self.pt1 - self.pt0) if self.pt0 >= 0 else None
        if not have:
            return ids, None, b"", (), request_pt
        keys = tuple([PyUnicode_DecodeUTF8(self.pt_keys[j].s, self.pt_keys[j].n, NULL) for j in range(nk)])
        kinds = PyBytes_FromStringAndSize(NULL, nk)
        columns = []
        for j in range(nk):
            bits = self.pt_bits[j]
            if bits == 1 << RAW_STR:
                PyBytes_AS_STRING(kinds)[j] = 115  # s
                size = n - 1
                for c in range(n):
                    size += self.ptv[c * nk + j].n
                col = PyBytes_FromStringAndSize(NULL, size)
                dst = PyBytes_AS_STRING(col)
                w = 0
                for c in range(n):
                    v = &self.ptv[c * nk + j]
                    if c:
                        dst[w] = 0
                        w += 1
                    w += _put(dst + w, v.s, v.n)
            elif bits == 1 << PT_BOOL:
                PyBytes_AS_STRING(kinds)[j] = 98  # b
                col = PyBytes_FromStringAndSize(NULL, n)
                dst = PyBytes_AS_STRING(col)
                for c in range(n):
                    dst[c] = <char>self.ptv[c * nk + j].i
            elif bits == 1 << RAW_INT:
                PyBytes_AS_STRING(kinds)[j] = 105  # i
                col = PyBytes_FromStringAndSize(NULL, 8 * n)
                for c in range(n):
                    (<int64_t*>PyBytes_AS_STRING(col))[c] = self.ptv[c * nk + j].i
            else:  # floats, or integers and floats: float64 as Python's float(int) rounds
                PyBytes_AS_STRING(kinds)[j] = 102  # f
                col = PyBytes_FromStringAndSize(NULL, 8 * n)
                for c in range(n):
                    v = &self.ptv[c * nk + j]
                    (<double*>PyBytes_AS_STRING(col))[c] = <double>v.i if v.kind == RAW_INT else v.d
            columns.append(col)
        return ids, keys, kinds, tuple(columns), request_pt

    cdef Py_ssize_t _passthrough_values(self, const char* src) except -2:
        """Read every candidate's passthrough object into ptv (candidate-major, keys in the first
        candidate's order) and the kinds seen per key into pt_bits; the number of keys, or 0 when
        the objects differ in keys, a value is null, or a key's values mix kinds other than int
        and float."""
        cdef Py_ssize_t n = self.n_cands, nk = 0, c, j, m, count
        cdef Scan s
        cdef Str k
        cdef RawValue* v
        cdef RawValue* row
        cdef Cand* a
        cdef int more, bits
        cdef void* grown
        s.p = <const unsigned char*>src
        # the first object's keys
        a = &self.cands[0]
        s.i, s.n = a.pt0, a.pt1
        if not _expect(&s, 123):
            return 0
        _ws(&s)
        if s.i < s.n and s.p[s.i] == 125:
            return 0  # {}: compact_objects keeps empty objects as they are
        while True:
            if nk >= self.max_passthrough or not _key(&s, &self.pt_keys[nk]):
                return 0
            _ws(&s)
            if not _skip_value(&s):
                return 0
            nk += 1
            more = _next(&s)
            if more < 0 or (more == 0 and s.p[s.i - 1] != 125):
                return 0
            if more == 0:
                break
        if n * nk > self.ptv_cap:
            grown = realloc(self.ptv, n * nk * sizeof(RawValue))
            if grown == NULL:
                raise MemoryError()
            self.ptv = <RawValue*>grown
            self.ptv_cap = n * nk
        for j in range(nk):
            self.pt_bits[j] = 0
        for c in range(n):
            a = &self.cands[c]
            s.i, s.n = a.pt0, a.pt1
            row = self.ptv + c * nk
            for j in range(nk):
                self.pt_seen[j] = 0
            if not _expect(&s, 123):
                return 0
            count = 0
            while True:
                if count >= nk or not _key(&s, &k):
                    return 0
                j = count  # usually the first candidate's order
                if not (self.pt_keys[j].n == k.n and _same(self.pt_keys[j].s, k.s, k.n)):
                    j = -1
                    for m in range(nk):
                        if self.pt_keys[m].n == k.n and _same(self.pt_keys[m].s, k.s, k.n):
                            j = m
                            break
                    if j < 0:
                        return 0
                if self.pt_seen[j]:
                    return 0  # a key named twice
                self.pt_seen[j] = 1
                v = &row[j]
                if not _pt_value(&s, v, PY_SSIZE_T_MAX):
                    return 0
                self.pt_bits[j] |= 1 << v.kind
                count += 1
                more = _next(&s)
                if more < 0 or (more == 0 and s.p[s.i - 1] != 125):
                    return 0
                if more == 0:
                    break
            if count != nk:
                return 0
        for j in range(nk):
            bits = self.pt_bits[j]
            if not (bits == 1 << RAW_STR or bits == 1 << PT_BOOL or bits == 1 << RAW_INT
                    or bits == 1 << RAW_FLOAT or bits == (1 << RAW_INT | 1 << RAW_FLOAT)):
                return 0
        return nk

    cdef bint _resolve_names(self, RequestEncoder enc) except -1:
        """raw = the context's known fields (raw_off[0] of them), then each candidate's, candidate c's
        at raw[raw_off[0] + raw_off[1 + c] : raw_off[0] + raw_off[2 + c]]; False if a field is named
        twice in one object."""
        cdef Py_ssize_t c, e, w = 0, e0, e1, k, name_n
        cdef const char* name
        cdef int f
        cdef uint64_t gen
        cdef int nf = enc.n_fields
        cdef RawValue* r
        if self.raw_cap < self.n_entries:
            r = <RawValue*>realloc(self.raw, max(self.n_entries, 1024) * sizeof(RawValue))
            if r == NULL:
                raise MemoryError()
            self.raw = r
            self.raw_cap = max(self.n_entries, 1024)
        if self.stamp_cap < nf:
            free(self.stamp)
            self.stamp = <uint64_t*>malloc(max(nf, 1) * sizeof(uint64_t))
            if self.stamp == NULL:
                self.stamp_cap = 0
                raise MemoryError()
            self.stamp_cap = nf
            self.generation = 0
        if self.generation == 0 or self.generation > (<uint64_t>1 << 62):
            for f in range(self.stamp_cap):
                self.stamp[f] = 0
            self.generation = 1
        with nogil:
            for e in range(self.max_fields + 1):
                self.pos_len[e] = -1  # the names of an earlier body are gone
            for c in range(-1, self.n_cands):
                if c < 0:
                    e0, e1 = self.ctx_e0, self.ctx_e1
                else:
                    e0, e1 = self.cands[c].e0, self.cands[c].e1
                self.generation += 1
                gen = self.generation
                for e in range(e0, e1):
                    name, name_n, k = self.entries[e].name, self.entries[e].name_n, e - e0
                    if c >= 0 and self.pos_len[k] == name_n and _same(self.pos_name[k], name, name_n):
                        f = self.pos_field[k]
                    else:
                        f = enc.field_of_utf8(name, name_n)
                        if c >= 0:
                            self.pos_name[k], self.pos_len[k], self.pos_field[k] = name, name_n, f
                    if f < 0:
                        continue
                    if self.stamp[f] == gen:
                        return False
                    self.stamp[f] = gen
                    self.raw[w] = self.entries[e].v
                    self.raw[w].field = f
                    w += 1
                if c < 0:
                    self.raw_off[0] = w
                    self.raw_off[1] = 0
                else:
                    self.raw_off[c + 2] = w - self.raw_off[0]
        return True

    cdef bint _rank_and_check(self, const double* score, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
        """order = the ranking; nano = the first k scores in nano-units, each in [0, 1e9] (a
        probability; anything else, NaN or a scorer outside [0, 1], is left to the general renderer)."""
        cdef Py_ssize_t i
        cdef double x
        for i in range(n):
            if isnan(score[i]):
                return False
        _rank(score, self.order, self.tmp, n)
        for i in range(k):
            x = rint(score[self.order[i]] * 1e9)
            if not (0.0 <= x <= 1e9):
                return False
            self.nano[i] = <int64_t>x
        return True

    cdef bytes _render(self, bytes head, bytes prefix, Py_ssize_t k):
        """`render_response`'s bytes: head, then per ranked candidate
        {"id":ID,"score":0.DDDDDDDDD,"rank":R,"tracking_id":"PREFIXjjjj"} joined by commas, then ]}."""
        cdef Py_ssize_t need = PyBytes_GET_SIZE(head) + 2, i, w, j
        cdef Cand* c
        cdef char* o
        cdef int64_t v
        cdef int d
        cdef const char* pre = PyBytes_AS_STRING(prefix)
        cdef const char* hp = PyBytes_AS_STRING(head)
        cdef Py_ssize_t hn = PyBytes_GET_SIZE(head)
        for i in range(k):
            c = &self.cands[self.order[i]]
            need += ROW_FIXED + (24 if c.id_is_int else c.id_str.json_n)
        if need > self.out_cap:
            o = <char*>realloc(self.out, need)
            if o == NULL:
                raise MemoryError()
            self.out, self.out_cap = o, need
        o = self.out
        with nogil:
            w = _put(o, hp, hn)
            for i in range(k):
                j = self.order[i]
                c = &self.cands[j]
                if i:
                    o[w] = 44
                    w += 1
                w += _put(o + w, '{"id":', 6)
                if c.id_is_int:
                    w += fmt_i64(o + w, c.id_int)
                else:
                    w += _json_str(o + w, &c.id_str)
                v = self.nano[i]
                if v == 1000000000:  # rounds to 1: the general renderer's f"{1.0:.9f}"
                    w += _put(o + w, ',"score":1.000000000', 20)
                else:
                    w += _put(o + w, ',"score":0.', 11)
                    for d in range(8, -1, -1):
                        o[w + d] = <char>(48 + v % 10)
                        v //= 10
                    w += 9
                w += _put(o + w, ',"rank":', 8)
                w += fmt_i64(o + w, i + 1)
                w += _put(o + w, ',"tracking_id":"', 16)
                w += _put(o + w, pre, 28)
                o[w] = HEX[(j >> 12) & 15]
                o[w + 1] = HEX[(j >> 8) & 15]
                o[w + 2] = HEX[(j >> 4) & 15]
                o[w + 3] = HEX[j & 15]
                w += 4
                w += _put(o + w, '"}', 2)
            w += _put(o + w, ']}', 2)
        return PyBytes_FromStringAndSize(o, w)


def number_value(bytes text not None):
    """The int or float the scanner reads from a whole JSON number token, None if it hands the token
    to the general path (for tests against msgspec's reading)."""
    cdef Scan s
    cdef RawValue v
    s.p = <const unsigned char*>PyBytes_AS_STRING(text)
    s.n = PyBytes_GET_SIZE(text)
    s.i = 0
    if not _number(&s, &v) or s.i != s.n:
        return None
    return v.i if v.kind == RAW_INT else v.d
