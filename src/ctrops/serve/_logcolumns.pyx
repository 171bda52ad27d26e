# cython: language_level=3
"""The prediction-log writer's gather of joined strings into one Arrow string column, in rank order.

The server's fast path hands each request's candidate ids (and string
passthrough values) to the log as one UTF-8 text joined by NUL
(`_fastpath.FastPath._log_columns`). The writer needs them as one Arrow string
column of the whole batch, each request's items in the order it returned
them. Done with Arrow kernels that took a split per request, a concatenation
and a take over the batch: about 10 µs a request of the writer's ~100 (in
process; about twice that in a loaded server), for what is two passes of
`memchr` and `memcpy`. Here: the first pass finds every item's bounds and
checks the counts and positions, the second writes the offsets and the bytes
Arrow takes as they are (`pyarrow.StringArray.from_buffers`).

The texts must be valid UTF-8 already (`logging_sink.request_from_columns`
checks each when it decodes a payload); nothing here looks inside an item.
"""

import numpy as np

cimport numpy as cnp
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport int32_t, int64_t
from libc.string cimport memchr, memcpy

cnp.import_array()

cdef int64_t _INT32_MAX = 2147483647


def gather_joined(list joined, list orders, const int64_t[::1] sizes):
    """(offsets int32[total + 1], data uint8[bytes]) of the items of `joined` (bytes, NUL-joined)
    taken in each request's `orders` (int64 positions into its `sizes[r]` items), request after request.

    ValueError, naming the request, when a text does not split into `sizes[r]` items or a
    position is outside them; when the column would pass Arrow's 2 GiB string offsets.
    """
    cdef Py_ssize_t n = len(joined), r, j, k, m, length, base = 0, n_bounds = 0, total = 0, nbytes = 0
    cdef Py_ssize_t o, w, start, stop
    cdef const char* s
    cdef const char* p
    cdef const char* end
    cdef const int64_t[::1] order
    cdef int64_t[::1] bounds
    cdef int32_t[::1] offsets
    cdef unsigned char[::1] data
    if len(orders) != n or sizes.shape[0] != n:
        raise ValueError(f"{n} texts, {len(orders)} orders and {sizes.shape[0]} sizes: one each per request")
    for r in range(n):
        if sizes[r] < 0:
            raise ValueError(f"request {r} of the batch has a negative item count")
        n_bounds += sizes[r] + 1
    bounds_np = np.empty(n_bounds, dtype=np.int64)
    bounds = bounds_np
    # pass 1: bounds[base + i] is where item i starts; bounds[base + m] is one past the text's end
    for r in range(n):
        text = joined[r]
        if type(text) is not bytes:
            raise TypeError(f"request {r} of the batch: joined items must be bytes, not {type(text).__name__}")
        s = PyBytes_AS_STRING(text)
        length = PyBytes_GET_SIZE(text)
        m = sizes[r]
        if m == 0:
            if length:
                raise ValueError(f"request {r} of the batch has no items but {length} bytes of them")
        else:
            bounds[base] = 0
            k = 1
            p = s
            end = s + length
            while p < end:
                p = <const char*>memchr(p, 0, end - p)
                if p == NULL:
                    break
                if k == m:
                    raise ValueError(f"request {r} of the batch has more than its {m} items")
                bounds[base + k] = p - s + 1
                k += 1
                p += 1
            if k != m:
                raise ValueError(f"request {r} of the batch has {k} items, {m} expected")
        bounds[base + m] = length + 1
        order = orders[r]
        for j in range(order.shape[0]):
            o = order[j]
            if o < 0 or o >= m:
                raise ValueError(f"request {r} of the batch returns item {o} of {m}")
            nbytes += bounds[base + o + 1] - 1 - bounds[base + o]
        total += order.shape[0]
        base += m + 1
    if nbytes > _INT32_MAX:
        raise ValueError(f"{nbytes} bytes of strings in one batch: over Arrow's 2 GiB per string column")
    offsets_np = np.empty(total + 1, dtype=np.int32)
    data_np = np.empty(nbytes, dtype=np.uint8)
    offsets = offsets_np
    data = data_np
    # pass 2: offsets and bytes
    base = 0
    w = 0
    k = 0
    offsets[0] = 0
    for r in range(n):
        s = PyBytes_AS_STRING(joined[r])
        order = orders[r]
        for j in range(order.shape[0]):
            o = order[j]
            start = bounds[base + o]
            stop = bounds[base + o + 1] - 1
            if stop > start:
                memcpy(&data[w], s + start, stop - start)
                w += stop - start
            k += 1
            offsets[k] = <int32_t>w
        base += sizes[r] + 1
    return offsets_np, data_np
