# cython: language_level=3
"""Native training and scoring kernels of the factorization-machine family.

Everything here runs without the GIL over raw arrays. Two weight layouts meet:

* the *model* layout of `params.py`: FFM latent [n_features, n_fields, k],
  FM latent [n_features, k], linear [n_features] (what files store and the
  server scores with);
* the *training* layout: the same blocks with each k-vector of weights
  followed by its k AdaGrad accumulators, i.e. [n_features, n_fields, 2k] for
  FFM and [n_features, 2k] for FM, linear [n_features, 2]. One update reads a
  weight and its accumulator from one cache line, as LIBFFM arranges it.

Scoring functions take the layout as strides (floats per feature `sj`, floats
per field `sf`), so the same code scores the model layout and, during early
stopping, the training layout without a copy.

The pair loops for k a multiple of 4 use SSE (present on every x86-64 CPU);
k = 4 has its own loops with four independent accumulators and, for one-hot
rows (all values 1, the usual case), no value products. The AdaGrad step
uses the approximate reciprocal square root (`rsqrtps`, ~12 bits) like
LIBFFM, since an exact sqrt+div per pair would cost far more. Any other k and
non-x86 machines take scalar loops with exact square roots. On CPUs with
AVX2 and FMA, FFM training with k = 4 runs the kernels of
`ffm_train_avx2.h` instead (two pairs per 256-bit register, fused
multiply-adds; ~1.3x faster an epoch), chosen once at import; batch
prediction uses its pair sum too (~1.1x).

Training reads every weight row of a row's features twice (forward pass,
then update); while one row is updated, the weight rows of the next one are
prefetched, which hides much of the memory latency that dominates an epoch
on a 1e6-feature model.

The request path (`score_request`: one context, N candidates; also called by
ctrops.data._parse to encode and score in one call, declared in _ffm.pxd)
computes the context's own terms once and, for FFM k=4, each distinct
candidate feature's term with the context once per request (candidates share
advertisers, campaigns, sizes), requesting weight rows 16 distinct features
ahead. On a 1e6-feature model nearly every candidate row misses the cache, so
the order of memory requests, not arithmetic, sets its speed.
"""

cimport cython
from libc.math cimport exp, log1p, sqrt, fabs
from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.stdlib cimport malloc, free
from cython.parallel cimport prange
cimport numpy as cnp
import numpy as np

cnp.import_array()

cdef extern from *:
    """
    #include <math.h>
    #include <stdint.h>
    #include <string.h>
    #if defined(__SSE__) || defined(_M_X64) || defined(_M_AMD64)
    #include <xmmintrin.h>
    #define CTR_SSE 1
    #else
    #define CTR_SSE 0
    #endif
    #define CTR_MAXK 256

    #if CTR_SSE
    static inline float ctr_hsum(__m128 v) {
        __m128 s = _mm_add_ps(v, _mm_movehl_ps(v, v));
        s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        return _mm_cvtss_f32(s);
    }
    /* soft threshold: sign(w) * max(|w| - t, 0) */
    static inline __m128 ctr_shrink(__m128 w, __m128 t) {
        const __m128 sign_mask = _mm_set1_ps(-0.0f);
        __m128 sign = _mm_and_ps(w, sign_mask);
        __m128 mag = _mm_max_ps(_mm_sub_ps(_mm_andnot_ps(sign_mask, w), t), _mm_setzero_ps());
        return _mm_or_ps(mag, sign);
    }
    #endif

    static inline float ctr_shrink1(float w, float t) {
        float m = fabsf(w) - t;
        if (m <= 0.0f) return 0.0f;
        return w < 0.0f ? -m : m;
    }

    /* Ask for every cache line of the weight rows of a row's features (the next row to train),
       so its misses overlap the arithmetic of the current row. */
    static inline void ctr_prefetch_feature(const float* W, Py_ssize_t j, Py_ssize_t sj) {
    #if CTR_SSE
        const char* p = (const char*)(W + j * sj);
        const Py_ssize_t bytes = sj * (Py_ssize_t)sizeof(float);
        for (Py_ssize_t off = 0; off < bytes; off += 64) _mm_prefetch(p + off, _MM_HINT_T0);
    #endif
    }

    static inline void ctr_prefetch_entries(const void* p, Py_ssize_t nbytes) {
    #if CTR_SSE
        const char* c = (const char*)p;
        for (Py_ssize_t off = 0; off < nbytes; off += 64) _mm_prefetch(c + off, _MM_HINT_T0);
    #endif
    }

    static inline int ctr_all_ones(const float* x, Py_ssize_t n) {
        for (Py_ssize_t a = 0; a < n; a++) if (x[a] != 1.0f) return 0;
        return 1;
    }

    #if CTR_SSE
    /* one k=4 pair term: <wa[f_b], W[j_b, f_a]> x_a x_b */
    #define CTR_PAIR4(fb, jb, xb) _mm_mul_ps(_mm_set1_ps(xa * (xb)), \
            _mm_mul_ps(_mm_loadu_ps(wa + (Py_ssize_t)(fb) * sf), _mm_loadu_ps(W + (Py_ssize_t)(jb) * sj + fa)))

    /* k = 4: four accumulators, so consecutive pairs do not wait on one add chain */
    static inline float ctr_ffm_cross4(const int32_t* fA, const int32_t* jA, const float* xA, Py_ssize_t nA,
                                       const int32_t* fB, const int32_t* jB, const float* xB, Py_ssize_t nB,
                                       const float* W, Py_ssize_t sj, Py_ssize_t sf, int skip_lower) {
        __m128 acc0 = _mm_setzero_ps(), acc1 = _mm_setzero_ps(), acc2 = _mm_setzero_ps(), acc3 = _mm_setzero_ps();
        if (ctr_all_ones(xA, nA) && ctr_all_ones(xB, nB)) {
            /* one-hot rows (the usual case): no value products at all */
            for (Py_ssize_t a = 0; a < nA; a++) {
                const float* wa = W + (Py_ssize_t)jA[a] * sj;
                const Py_ssize_t fa = (Py_ssize_t)fA[a] * sf;
                Py_ssize_t b = skip_lower ? a + 1 : 0;
                for (; b + 3 < nB; b += 4) {
                    acc0 = _mm_add_ps(acc0, _mm_mul_ps(_mm_loadu_ps(wa + (Py_ssize_t)fB[b] * sf), _mm_loadu_ps(W + (Py_ssize_t)jB[b] * sj + fa)));
                    acc1 = _mm_add_ps(acc1, _mm_mul_ps(_mm_loadu_ps(wa + (Py_ssize_t)fB[b + 1] * sf), _mm_loadu_ps(W + (Py_ssize_t)jB[b + 1] * sj + fa)));
                    acc2 = _mm_add_ps(acc2, _mm_mul_ps(_mm_loadu_ps(wa + (Py_ssize_t)fB[b + 2] * sf), _mm_loadu_ps(W + (Py_ssize_t)jB[b + 2] * sj + fa)));
                    acc3 = _mm_add_ps(acc3, _mm_mul_ps(_mm_loadu_ps(wa + (Py_ssize_t)fB[b + 3] * sf), _mm_loadu_ps(W + (Py_ssize_t)jB[b + 3] * sj + fa)));
                }
                for (; b < nB; b++)
                    acc0 = _mm_add_ps(acc0, _mm_mul_ps(_mm_loadu_ps(wa + (Py_ssize_t)fB[b] * sf), _mm_loadu_ps(W + (Py_ssize_t)jB[b] * sj + fa)));
            }
            return ctr_hsum(_mm_add_ps(_mm_add_ps(acc0, acc1), _mm_add_ps(acc2, acc3)));
        }
        for (Py_ssize_t a = 0; a < nA; a++) {
            const float* wa = W + (Py_ssize_t)jA[a] * sj;
            const Py_ssize_t fa = (Py_ssize_t)fA[a] * sf;
            const float xa = xA[a];
            Py_ssize_t b = skip_lower ? a + 1 : 0;
            for (; b + 3 < nB; b += 4) {
                acc0 = _mm_add_ps(acc0, CTR_PAIR4(fB[b], jB[b], xB[b]));
                acc1 = _mm_add_ps(acc1, CTR_PAIR4(fB[b + 1], jB[b + 1], xB[b + 1]));
                acc2 = _mm_add_ps(acc2, CTR_PAIR4(fB[b + 2], jB[b + 2], xB[b + 2]));
                acc3 = _mm_add_ps(acc3, CTR_PAIR4(fB[b + 3], jB[b + 3], xB[b + 3]));
            }
            for (; b < nB; b++) acc0 = _mm_add_ps(acc0, CTR_PAIR4(fB[b], jB[b], xB[b]));
        }
        return ctr_hsum(_mm_add_ps(_mm_add_ps(acc0, acc1), _mm_add_ps(acc2, acc3)));
    }
    #endif

    /* Request path, k = 4: the context vectors each candidate field meets, W[j_b, field] x_b,
       packed side by side so every candidate entry runs one contiguous dot-product sweep. */
    static inline void ctr_ffm_pack4(const int32_t* jB, const float* xB, Py_ssize_t nB,
                                     const float* W, Py_ssize_t sj, Py_ssize_t sf, Py_ssize_t field, float* out) {
        for (Py_ssize_t b = 0; b < nB; b++) {
            const float* w = W + (Py_ssize_t)jB[b] * sj + field * sf;
            for (int d = 0; d < 4; d++) out[4 * b + d] = w[d] * xB[b];
        }
    }

    /* <W[j, f_b], pack[b]> summed over the nB context entries b, where foff[b] = f_b * sf:
       the cross term of one candidate feature with the whole context (pack from ctr_ffm_pack4) */
    static inline float ctr_dot4_packed(const float* wa, const Py_ssize_t* foff, const float* C, Py_ssize_t nB) {
        Py_ssize_t b = 0;
    #if CTR_SSE
        __m128 acc0 = _mm_setzero_ps(), acc1 = _mm_setzero_ps(), acc2 = _mm_setzero_ps(), acc3 = _mm_setzero_ps();
        for (; b + 3 < nB; b += 4) {
            acc0 = _mm_add_ps(acc0, _mm_mul_ps(_mm_loadu_ps(wa + foff[b]), _mm_loadu_ps(C + 4 * b)));
            acc1 = _mm_add_ps(acc1, _mm_mul_ps(_mm_loadu_ps(wa + foff[b + 1]), _mm_loadu_ps(C + 4 * b + 4)));
            acc2 = _mm_add_ps(acc2, _mm_mul_ps(_mm_loadu_ps(wa + foff[b + 2]), _mm_loadu_ps(C + 4 * b + 8)));
            acc3 = _mm_add_ps(acc3, _mm_mul_ps(_mm_loadu_ps(wa + foff[b + 3]), _mm_loadu_ps(C + 4 * b + 12)));
        }
        for (; b < nB; b++) acc0 = _mm_add_ps(acc0, _mm_mul_ps(_mm_loadu_ps(wa + foff[b]), _mm_loadu_ps(C + 4 * b)));
        return ctr_hsum(_mm_add_ps(_mm_add_ps(acc0, acc1), _mm_add_ps(acc2, acc3)));
    #else
        float acc = 0.0f;
        for (; b < nB; b++)
            for (int d = 0; d < 4; d++) acc += wa[foff[b] + d] * C[4 * b + d];
        return acc;
    #endif
    }

    /* Ask for every cache line of [p, p + nbytes): rows are not line-aligned (an FFM row of 39
       fields x k=4 is 624 bytes), so start from the line that holds p, not at p. */
    static inline void ctr_prefetch_span(const void* p, Py_ssize_t nbytes) {
        uintptr_t a = (uintptr_t)p & ~(uintptr_t)63;
        const uintptr_t end = (uintptr_t)p + (uintptr_t)nbytes;
        for (; a < end; a += 64) {
    #if CTR_SSE
            _mm_prefetch((const char*)a, _MM_HINT_T0);
    #elif defined(__GNUC__)
            __builtin_prefetch((const void*)a, 0, 3);
    #endif
        }
    }

    /* The distinct (field, feature) pairs among n entries, in first-appearance order: slot[e] is
       the distinct number of entry e. Candidates of one request repeat ad features (the same
       advertiser, campaign, creative size...), and a feature's term with the context does not
       depend on the candidate, so it is computed once per distinct pair. `keys` has `cap` slots,
       a power of two >= 2n (open addressing, linear probing; key 0 = empty). */
    static inline Py_ssize_t ctr_distinct_entries(const int32_t* f, const int32_t* j, Py_ssize_t n,
                                                  uint64_t* keys, int32_t* ids, Py_ssize_t cap,
                                                  int32_t* slot, int32_t* dist_f, int32_t* dist_j) {
        const uint64_t mask = (uint64_t)cap - 1;
        int shift = 64;
        for (Py_ssize_t c = cap; c > 1; c >>= 1) shift--;
        Py_ssize_t m = 0;
        memset(keys, 0, (size_t)cap * sizeof(uint64_t));
        for (Py_ssize_t e = 0; e < n; e++) {
            const uint64_t key = (((uint64_t)(uint32_t)f[e] << 32) | (uint32_t)j[e]) + 1;
            uint64_t s = shift < 64 ? (key * 0x9E3779B97F4A7C15ULL) >> shift : 0;
            while (keys[s] != 0 && keys[s] != key) s = (s + 1) & mask;
            if (keys[s] == 0) {
                keys[s] = key;
                ids[s] = (int32_t)m;
                dist_f[m] = f[e];
                dist_j[m] = j[e];
                m++;
            }
            slot[e] = ids[s];
        }
        return m;
    }

    /* cross[d] = <W[j_d, .], context> of each distinct candidate feature d (weights not yet times
       its value), while the weight rows `dist` features ahead are requested: the rows of a request's
       candidate features are scattered over the model, nearly every one misses the cache, and
       keeping many misses in flight at once is what bounds the request time. The caller has
       requested the first `ahead` rows already (before its context work, so they overlap it). */
    static inline void ctr_cross4_distinct(const int32_t* dist_f, const int32_t* dist_j, Py_ssize_t m,
                                           const Py_ssize_t* foff, const float* pack, Py_ssize_t nB,
                                           const float* W, Py_ssize_t sj, const float* L,
                                           Py_ssize_t ahead, float* cross) {
        const Py_ssize_t row_bytes = sj * (Py_ssize_t)sizeof(float);
        for (Py_ssize_t d = 0; d < m; d++) {
            if (d + ahead < m) {
                ctr_prefetch_span(W + (Py_ssize_t)dist_j[d + ahead] * sj, row_bytes);
                if (L) ctr_prefetch_span(L + dist_j[d + ahead], 4);
            }
            cross[d] = ctr_dot4_packed(W + (Py_ssize_t)dist_j[d] * sj, foff, pack + (Py_ssize_t)dist_f[d] * nB * 4,
                                       nB);
        }
    }

    /* FFM: sum over a<b of <W[j_a, f_b], W[j_b, f_a]> x_a x_b */
    static inline float ctr_ffm_pairs(const int32_t* f, const int32_t* j, const float* x, Py_ssize_t n,
                                      const float* W, Py_ssize_t sj, Py_ssize_t sf, int k) {
        Py_ssize_t a, b;
        int d;
    #if CTR_SSE
        if (k == 4) return ctr_ffm_cross4(f, j, x, n, f, j, x, n, W, sj, sf, 1);
        if ((k & 3) == 0) {
            __m128 acc = _mm_setzero_ps();
            for (a = 0; a < n; a++) {
                const float* wa = W + (Py_ssize_t)j[a] * sj;
                const Py_ssize_t fa = (Py_ssize_t)f[a] * sf;
                const float xa = x[a];
                for (b = a + 1; b < n; b++) {
                    const float* p1 = wa + (Py_ssize_t)f[b] * sf;
                    const float* p2 = W + (Py_ssize_t)j[b] * sj + fa;
                    const __m128 v = _mm_set1_ps(xa * x[b]);
                    for (d = 0; d < k; d += 4)
                        acc = _mm_add_ps(acc, _mm_mul_ps(v, _mm_mul_ps(_mm_loadu_ps(p1 + d), _mm_loadu_ps(p2 + d))));
                }
            }
            return ctr_hsum(acc);
        }
    #endif
        float acc = 0.0f;
        for (a = 0; a < n; a++) {
            const float* wa = W + (Py_ssize_t)j[a] * sj;
            const Py_ssize_t fa = (Py_ssize_t)f[a] * sf;
            for (b = a + 1; b < n; b++) {
                const float* p1 = wa + (Py_ssize_t)f[b] * sf;
                const float* p2 = W + (Py_ssize_t)j[b] * sj + fa;
                float dot = 0.0f;
                for (d = 0; d < k; d++) dot += p1[d] * p2[d];
                acc += dot * x[a] * x[b];
            }
        }
        return acc;
    }

    /* FFM: sum over a in A, b in B of <W[j_a, f_b], W[j_b, f_a]> x_a x_b (candidate x context) */
    static inline float ctr_ffm_cross(const int32_t* fA, const int32_t* jA, const float* xA, Py_ssize_t nA,
                                      const int32_t* fB, const int32_t* jB, const float* xB, Py_ssize_t nB,
                                      const float* W, Py_ssize_t sj, Py_ssize_t sf, int k) {
        Py_ssize_t a, b;
        int d;
    #if CTR_SSE
        if (k == 4) return ctr_ffm_cross4(fA, jA, xA, nA, fB, jB, xB, nB, W, sj, sf, 0);
        if ((k & 3) == 0) {
            __m128 acc = _mm_setzero_ps();
            for (a = 0; a < nA; a++) {
                const float* wa = W + (Py_ssize_t)jA[a] * sj;
                const Py_ssize_t fa = (Py_ssize_t)fA[a] * sf;
                const float xa = xA[a];
                for (b = 0; b < nB; b++) {
                    const float* p1 = wa + (Py_ssize_t)fB[b] * sf;
                    const float* p2 = W + (Py_ssize_t)jB[b] * sj + fa;
                    const __m128 v = _mm_set1_ps(xa * xB[b]);
                    for (d = 0; d < k; d += 4)
                        acc = _mm_add_ps(acc, _mm_mul_ps(v, _mm_mul_ps(_mm_loadu_ps(p1 + d), _mm_loadu_ps(p2 + d))));
                }
            }
            return ctr_hsum(acc);
        }
    #endif
        float acc = 0.0f;
        for (a = 0; a < nA; a++) {
            const float* wa = W + (Py_ssize_t)jA[a] * sj;
            const Py_ssize_t fa = (Py_ssize_t)fA[a] * sf;
            for (b = 0; b < nB; b++) {
                const float* p1 = wa + (Py_ssize_t)fB[b] * sf;
                const float* p2 = W + (Py_ssize_t)jB[b] * sj + fa;
                float dot = 0.0f;
                for (d = 0; d < k; d++) dot += p1[d] * p2[d];
                acc += dot * xA[a] * xB[b];
            }
        }
        return acc;
    }

    /* FFM AdaGrad step for every pair of a row, training layout (block = k weights, k accumulators).
       kr = dloss/dt * r; both vectors of a pair are updated from their values before the step. */
    static inline void ctr_ffm_update(const int32_t* f, const int32_t* j, const float* x, Py_ssize_t n,
                                      float* W, Py_ssize_t sj, Py_ssize_t sf, int k,
                                      float kr, float eta, float lam, float l1,
                                      const int32_t* j_next, Py_ssize_t n_next) {
        Py_ssize_t a, b;
        int d;
    #if CTR_SSE
        if ((k & 3) == 0) {
            const __m128 vlam = _mm_set1_ps(lam), veta = _mm_set1_ps(eta), vl1 = _mm_set1_ps(l1);
            const int ones = ctr_all_ones(x, n);
            const __m128 vkr = _mm_set1_ps(kr);
            for (a = 0; a < n; a++) {
                float* wa = W + (Py_ssize_t)j[a] * sj;
                if (a < n_next) ctr_prefetch_feature(W, j_next[a], sj);
                if (a == n - 1) for (b = n; b < n_next; b++) ctr_prefetch_feature(W, j_next[b], sj);
                const Py_ssize_t fa = (Py_ssize_t)f[a] * sf;
                const float xa = x[a];
                for (b = a + 1; b < n; b++) {
                    float* w1 = wa + (Py_ssize_t)f[b] * sf;
                    float* w2 = W + (Py_ssize_t)j[b] * sj + fa;
                    const __m128 v = ones ? vkr : _mm_set1_ps(kr * xa * x[b]);
                    for (d = 0; d < k; d += 4) {
                        __m128 W1 = _mm_loadu_ps(w1 + d), W2 = _mm_loadu_ps(w2 + d);
                        __m128 G1 = _mm_loadu_ps(w1 + k + d), G2 = _mm_loadu_ps(w2 + k + d);
                        __m128 g1 = _mm_add_ps(_mm_mul_ps(vlam, W1), _mm_mul_ps(v, W2));
                        __m128 g2 = _mm_add_ps(_mm_mul_ps(vlam, W2), _mm_mul_ps(v, W1));
                        G1 = _mm_add_ps(G1, _mm_mul_ps(g1, g1));
                        G2 = _mm_add_ps(G2, _mm_mul_ps(g2, g2));
                        __m128 s1 = _mm_mul_ps(veta, _mm_rsqrt_ps(G1));
                        __m128 s2 = _mm_mul_ps(veta, _mm_rsqrt_ps(G2));
                        W1 = _mm_sub_ps(W1, _mm_mul_ps(s1, g1));
                        W2 = _mm_sub_ps(W2, _mm_mul_ps(s2, g2));
                        if (l1 > 0.0f) {
                            W1 = ctr_shrink(W1, _mm_mul_ps(s1, vl1));
                            W2 = ctr_shrink(W2, _mm_mul_ps(s2, vl1));
                        }
                        _mm_storeu_ps(w1 + k + d, G1);
                        _mm_storeu_ps(w2 + k + d, G2);
                        _mm_storeu_ps(w1 + d, W1);
                        _mm_storeu_ps(w2 + d, W2);
                    }
                }
            }
            return;
        }
    #endif
        for (a = 0; a < n; a++) {
            float* wa = W + (Py_ssize_t)j[a] * sj;
            const Py_ssize_t fa = (Py_ssize_t)f[a] * sf;
            for (b = a + 1; b < n; b++) {
                float* w1 = wa + (Py_ssize_t)f[b] * sf;
                float* w2 = W + (Py_ssize_t)j[b] * sj + fa;
                const float v = kr * x[a] * x[b];
                for (d = 0; d < k; d++) {
                    float W1 = w1[d], W2 = w2[d];
                    float g1 = lam * W1 + v * W2, g2 = lam * W2 + v * W1;
                    float G1 = w1[k + d] + g1 * g1, G2 = w2[k + d] + g2 * g2;
                    float s1 = eta / sqrtf(G1), s2 = eta / sqrtf(G2);
                    W1 -= s1 * g1;
                    W2 -= s2 * g2;
                    if (l1 > 0.0f) { W1 = ctr_shrink1(W1, s1 * l1); W2 = ctr_shrink1(W2, s2 * l1); }
                    w1[k + d] = G1; w2[k + d] = G2;
                    w1[d] = W1; w2[d] = W2;
                }
            }
        }
    }

    /* FM: add sum_a W[j_a] x_a into S[0:k] and sum_a |W[j_a]|^2 x_a^2 into *sq */
    static inline void ctr_fm_sums(const int32_t* j, const float* x, Py_ssize_t n,
                                   const float* W, Py_ssize_t sj, int k, double* S, double* sq) {
        Py_ssize_t a;
        int d;
        double q = 0.0;
        for (a = 0; a < n; a++) {
            const float* w = W + (Py_ssize_t)j[a] * sj;
            const double xa = x[a];
            for (d = 0; d < k; d++) {
                const double t = w[d] * xa;
                S[d] += t;
                q += t * t;
            }
        }
        *sq += q;
    }

    static inline double ctr_fm_pairs(const int32_t* j, const float* x, Py_ssize_t n,
                                      const float* W, Py_ssize_t sj, int k) {
        double S[CTR_MAXK];
        double sq = 0.0, tot = 0.0;
        int d;
        for (d = 0; d < k; d++) S[d] = 0.0;
        ctr_fm_sums(j, x, n, W, sj, k, S, &sq);
        for (d = 0; d < k; d++) tot += S[d] * S[d];
        return 0.5 * (tot - sq);
    }

    /* FM AdaGrad step, training layout [n_features, 2k]: d pair / d v_a = x_a (S - v_a x_a) */
    static inline void ctr_fm_update(const int32_t* j, const float* x, Py_ssize_t n,
                                     float* W, Py_ssize_t sj, int k,
                                     float kr, float eta, float lam, float l1) {
        double S[CTR_MAXK];
        double sq = 0.0;
        Py_ssize_t a;
        int d;
        for (d = 0; d < k; d++) S[d] = 0.0;
        ctr_fm_sums(j, x, n, W, sj, k, S, &sq);
        for (a = 0; a < n; a++) {
            float* w = W + (Py_ssize_t)j[a] * sj;
            const float xa = x[a];
            for (d = 0; d < k; d++) {
                const float wd = w[d];
                const float g = lam * wd + kr * xa * (float)(S[d] - (double)wd * xa);
                const float G = w[k + d] + g * g;
                const float s = eta / sqrtf(G);
                float nw = wd - s * g;
                if (l1 > 0.0f) nw = ctr_shrink1(nw, s * l1);
                w[k + d] = G;
                w[d] = nw;
            }
        }
    }
    """
    int CTR_MAXK
    float ctr_ffm_pairs(const int32_t* f, const int32_t* j, const float* x, Py_ssize_t n,
                        const float* W, Py_ssize_t sj, Py_ssize_t sf, int k) noexcept nogil
    float ctr_ffm_cross(const int32_t* fA, const int32_t* jA, const float* xA, Py_ssize_t nA,
                        const int32_t* fB, const int32_t* jB, const float* xB, Py_ssize_t nB,
                        const float* W, Py_ssize_t sj, Py_ssize_t sf, int k) noexcept nogil
    void ctr_ffm_update(const int32_t* f, const int32_t* j, const float* x, Py_ssize_t n,
                        float* W, Py_ssize_t sj, Py_ssize_t sf, int k,
                        float kr, float eta, float lam, float l1,
                        const int32_t* j_next, Py_ssize_t n_next) noexcept nogil
    void ctr_prefetch_entries(const void* p, Py_ssize_t nbytes) noexcept nogil
    void ctr_prefetch_feature(const float* W, Py_ssize_t j, Py_ssize_t sj) noexcept nogil
    void ctr_fm_sums(const int32_t* j, const float* x, Py_ssize_t n,
                     const float* W, Py_ssize_t sj, int k, double* S, double* sq) noexcept nogil
    double ctr_fm_pairs(const int32_t* j, const float* x, Py_ssize_t n,
                        const float* W, Py_ssize_t sj, int k) noexcept nogil
    void ctr_fm_update(const int32_t* j, const float* x, Py_ssize_t n,
                       float* W, Py_ssize_t sj, int k,
                       float kr, float eta, float lam, float l1) noexcept nogil
    float ctr_shrink1(float w, float t) noexcept nogil
    void ctr_ffm_pack4(const int32_t* jB, const float* xB, Py_ssize_t nB,
                       const float* W, Py_ssize_t sj, Py_ssize_t sf, Py_ssize_t field, float* out) noexcept nogil
    void ctr_prefetch_span(const void* p, Py_ssize_t nbytes) noexcept nogil
    Py_ssize_t ctr_distinct_entries(const int32_t* f, const int32_t* j, Py_ssize_t n,
                                    uint64_t* keys, int32_t* ids, Py_ssize_t cap,
                                    int32_t* slot, int32_t* dist_f, int32_t* dist_j) noexcept nogil
    void ctr_cross4_distinct(const int32_t* dist_f, const int32_t* dist_j, Py_ssize_t m,
                             const Py_ssize_t* foff, const float* pack, Py_ssize_t nB,
                             const float* W, Py_ssize_t sj, const float* L,
                             Py_ssize_t ahead, float* cross) noexcept nogil


MAX_K = CTR_MAXK
MODEL_CODES = {"ffm": 0, "fm": 1, "lr": 2}

# batches below this many rows are scored on the calling thread only
PARALLEL_MIN_ROWS = 2048


cdef extern from "ffm_train_avx2.h":
    int CTR_HAVE_AVX2_KERNELS
    int ctr_avx2_usable() noexcept nogil
    int ctr_fast_rows
    float ctr_ffm_pairs4_avx2(const int32_t* f, const int32_t* j, const float* x, Py_ssize_t n,
                              const float* W, Py_ssize_t sj, Py_ssize_t sf) noexcept nogil
    void ctr_ffm_update4_avx2(const int32_t* f, const int32_t* j, const float* x, Py_ssize_t n,
                              float* W, Py_ssize_t sj, float kr, float eta, float lam, float l1,
                              const int32_t* j_next, Py_ssize_t n_next) noexcept nogil

# Whether this CPU runs the AVX2+FMA training kernels for k = 4 (decided once, at import).
AVX2_TRAINING = bool(ctr_avx2_usable())
cdef bint _use_avx2 = AVX2_TRAINING


def set_avx2_training(bint enabled):
    """Switch the AVX2 training kernels off (or back on, where the CPU has them); for tests and A/B runs."""
    global _use_avx2
    _use_avx2 = enabled and AVX2_TRAINING


def set_fast_rows(bint enabled):
    """Send every row through the general AVX2 update (False) or let the usual Criteo rows (values 1,
    distinct features and fields, no L1) take the unchecked one (True, the default); for tests and A/B runs."""
    global ctr_fast_rows
    ctr_fast_rows = 1 if enabled else 0


cdef inline double _sigmoid(double z) noexcept nogil:
    if z >= 0:
        return 1.0 / (1.0 + exp(-z))
    cdef double e = exp(z)
    return e / (1.0 + e)


cdef inline double _logistic_step(double t, float label, double weight, double* kappa) noexcept nogil:
    """Weighted log loss of logit t for a 0/1 label; writes d loss / d t into kappa."""
    cdef double y = 1.0 if label > 0.5 else -1.0
    cdef double m = -y * t          # loss = log(1 + exp(m))
    cdef double e, loss, wrong
    if m > 0:
        e = exp(-m)
        loss = m + log1p(e)
        wrong = 1.0 / (1.0 + e)
    else:
        e = exp(m)
        loss = log1p(e)
        wrong = e / (1.0 + e)
    kappa[0] = -y * wrong * weight
    return loss * weight


cdef inline double _row_scale(const float* x, Py_ssize_t n, bint normalize) noexcept nogil:
    cdef double ss = 0.0
    cdef Py_ssize_t a
    if not normalize:
        return 1.0
    for a in range(n):
        ss = ss + <double>x[a] * x[a]
    return 1.0 / ss if ss > 0 else 1.0


cdef inline double _linear_sum(const int32_t* j, const float* x, Py_ssize_t n,
                               const float* lin, Py_ssize_t stride) noexcept nogil:
    cdef double s = 0.0
    cdef Py_ssize_t a
    for a in range(n):
        s = s + <double>lin[<Py_ssize_t>j[a] * stride] * x[a]
    return s


cdef inline void _adagrad_linear(const int32_t* j, const float* x, Py_ssize_t n, float* lin,
                                 float kappa, float eta, float lam, float l1) noexcept nogil:
    """AdaGrad on linear weights stored as (w, G) pairs."""
    cdef Py_ssize_t a
    cdef float* p
    cdef float g, G, s, w
    for a in range(n):
        p = lin + 2 * <Py_ssize_t>j[a]
        w = p[0]
        g = lam * w + kappa * x[a]
        G = p[1] + g * g
        s = eta / <float>sqrt(G)
        w = w - s * g
        if l1 > 0:
            w = ctr_shrink1(w, s * l1)
        p[1] = G
        p[0] = w


cdef inline void _adagrad_bias(double* b, double kappa, double eta) noexcept nogil:
    b[1] = b[1] + kappa * kappa
    b[0] = b[0] - eta / sqrt(b[1]) * kappa


def fm_family_epoch(int model_code,
                    const int64_t[::1] indptr, const int32_t[::1] fields, const int32_t[::1] indices,
                    const float[::1] values, const float[::1] labels, const float[::1] weights,
                    const int64_t[::1] order,
                    float[::1] latent_state, int n_fields, int k,
                    float[::1] linear_state, double[::1] bias_state,
                    float eta, float lam, float l1, bint normalize, int n_threads, float eta_linear=-1.0):
    """One AdaGrad epoch of FFM (model_code 0) or FM (1) over rows in `order`.

    `eta_linear` is the learning rate of the linear terms (negative: `eta`).

    latent_state is the flattened training layout; linear_state ((w, G) per
    feature) and bias_state ((b, G)) may be empty to disable those terms;
    weights may be empty (all rows weigh 1). Rows are split over `n_threads`
    without locks (Hogwild); with one thread the result is deterministic.
    Returns (weighted loss sum, weight sum) measured before each row's update.
    """
    cdef Py_ssize_t n_order = order.shape[0]
    cdef Py_ssize_t p, i, lo, n, nxt, lo_next, n_next
    cdef Py_ssize_t sf = 2 * k
    cdef Py_ssize_t sj = (<Py_ssize_t>n_fields * sf) if model_code == 0 else 2 * k
    cdef bint has_lin = linear_state.shape[0] > 0
    cdef bint has_bias = bias_state.shape[0] > 0
    cdef bint has_w = weights.shape[0] > 0
    cdef double loss = 0.0, wsum = 0.0
    cdef double r, t, wt, kappa
    cdef float* W = &latent_state[0]
    cdef float* L = &linear_state[0] if has_lin else NULL
    cdef double* B = &bias_state[0] if has_bias else NULL
    cdef bint fast4 = _use_avx2 and model_code == 0 and k == 4
    cdef float eta_lin = eta_linear if eta_linear > 0 else eta
    if n_order == 0:
        return 0.0, 0.0
    for p in prange(n_order, nogil=True, num_threads=max(n_threads, 1), schedule="dynamic", chunksize=64):
        i = order[p]
        lo = indptr[i]
        n = indptr[i + 1] - lo
        wt = weights[i] if has_w else 1.0
        r = _row_scale(&values[lo], n, normalize)
        if fast4:
            t = r * ctr_ffm_pairs4_avx2(&fields[lo], &indices[lo], &values[lo], n, W, sj, sf)
        elif model_code == 0:
            t = r * ctr_ffm_pairs(&fields[lo], &indices[lo], &values[lo], n, W, sj, sf, k)
        else:
            t = r * ctr_fm_pairs(&indices[lo], &values[lo], n, W, sj, k)
        if has_lin:
            t = t + _linear_sum(&indices[lo], &values[lo], n, L, 2)
        if has_bias:
            t = t + B[0]
        loss += _logistic_step(t, labels[i], wt, &kappa)
        wsum += wt
        if model_code == 0:
            # the next row's weights are fetched during this row's update; the entries of
            # the row after it are fetched now so that its indices are at hand next time
            lo_next = 0
            n_next = 0
            if p + 1 < n_order:
                nxt = order[p + 1]
                lo_next = indptr[nxt]
                n_next = indptr[nxt + 1] - lo_next
            if p + 2 < n_order:
                nxt = order[p + 2]
                ctr_prefetch_entries(&indices[indptr[nxt]], (indptr[nxt + 1] - indptr[nxt]) * 4)
                ctr_prefetch_entries(&fields[indptr[nxt]], (indptr[nxt + 1] - indptr[nxt]) * 4)
                ctr_prefetch_entries(&values[indptr[nxt]], (indptr[nxt + 1] - indptr[nxt]) * 4)
            if fast4:
                ctr_ffm_update4_avx2(&fields[lo], &indices[lo], &values[lo], n, W, sj,
                                     <float>(kappa * r), eta, lam, l1, &indices[lo_next], n_next)
            else:
                ctr_ffm_update(&fields[lo], &indices[lo], &values[lo], n, W, sj, sf, k,
                               <float>(kappa * r), eta, lam, l1, &indices[lo_next], n_next)
        else:
            ctr_fm_update(&indices[lo], &values[lo], n, W, sj, k, <float>(kappa * r), eta, lam, l1)
        if has_lin:
            _adagrad_linear(&indices[lo], &values[lo], n, L, <float>kappa, eta_lin, lam, l1)
        if has_bias:
            _adagrad_bias(B, kappa, eta)
    return loss, wsum


cdef inline double _ftrl_weight(double z, double nn, double alpha, double beta,
                                double l1, double l2) noexcept nogil:
    if fabs(z) <= l1:
        return 0.0
    cdef double s = -1.0 if z < 0 else 1.0
    return -(z - s * l1) / ((beta + sqrt(nn)) / alpha + l2)


cdef inline void _ftrl_update(double* zn, double g, double w, double alpha) noexcept nogil:
    cdef double n_new = zn[1] + g * g
    cdef double sigma = (sqrt(n_new) - sqrt(zn[1])) / alpha
    zn[0] = zn[0] + g - sigma * w
    zn[1] = n_new


def lr_ftrl_epoch(const int64_t[::1] indptr, const int32_t[::1] indices,
                  const float[::1] values, const float[::1] labels, const float[::1] weights,
                  const int64_t[::1] order,
                  double[::1] zn, double[::1] bias_zn,
                  double alpha, double beta, double l1, double l2, int n_threads):
    """One FTRL-proximal epoch of logistic regression (McMahan et al. 2013).

    zn holds (z, n) per feature; bias_zn (z, n) of the bias (empty: no bias;
    the bias gets no L1/L2). Weights are derived from (z, n) on the fly, so an
    L1 above |z| yields exact zeros. Returns (weighted loss sum, weight sum).
    """
    cdef Py_ssize_t n_order = order.shape[0]
    cdef Py_ssize_t p, i, lo, n, a
    cdef bint has_bias = bias_zn.shape[0] > 0
    cdef bint has_w = weights.shape[0] > 0
    cdef double loss = 0.0, wsum = 0.0
    cdef double t, wt, kappa, w
    cdef double* Z = &zn[0]
    cdef double* BZ = &bias_zn[0] if has_bias else NULL
    cdef double* q
    if n_order == 0:
        return 0.0, 0.0
    for p in prange(n_order, nogil=True, num_threads=max(n_threads, 1), schedule="dynamic", chunksize=256):
        i = order[p]
        lo = indptr[i]
        n = indptr[i + 1] - lo
        wt = weights[i] if has_w else 1.0
        t = 0.0
        if has_bias:
            t = _ftrl_weight(BZ[0], BZ[1], alpha, beta, 0.0, 0.0)
        for a in range(n):
            q = Z + 2 * <Py_ssize_t>indices[lo + a]
            t = t + _ftrl_weight(q[0], q[1], alpha, beta, l1, l2) * values[lo + a]
        loss += _logistic_step(t, labels[i], wt, &kappa)
        wsum += wt
        for a in range(n):
            q = Z + 2 * <Py_ssize_t>indices[lo + a]
            w = _ftrl_weight(q[0], q[1], alpha, beta, l1, l2)
            _ftrl_update(q, kappa * values[lo + a], w, alpha)
        if has_bias:
            w = _ftrl_weight(BZ[0], BZ[1], alpha, beta, 0.0, 0.0)
            _ftrl_update(BZ, kappa, w, alpha)
    return loss, wsum


def ftrl_weights(const double[::1] zn, double alpha, double beta, double l1, double l2):
    """Weights of every feature from FTRL (z, n) state, as float32."""
    cdef Py_ssize_t n = zn.shape[0] // 2, i
    out = np.empty(n, dtype=np.float32)
    cdef float[::1] o = out
    with nogil:
        for i in range(n):
            o[i] = <float>_ftrl_weight(zn[2 * i], zn[2 * i + 1], alpha, beta, l1, l2)
    return out


def predict_logits(int model_code,
                   const int64_t[::1] indptr, const int32_t[::1] fields, const int32_t[::1] indices,
                   const float[::1] values,
                   const float[::1] latent, Py_ssize_t sj, Py_ssize_t sf, int k,
                   const float[::1] linear, Py_ssize_t linear_stride, double bias,
                   bint normalize, double[::1] out, int n_threads):
    """Logits of every row into `out` (float64), any layout given by strides.

    latent / linear may be empty (no such term). Batches under
    PARALLEL_MIN_ROWS rows stay on the calling thread.
    """
    cdef Py_ssize_t n_rows = out.shape[0]
    cdef Py_ssize_t i, lo, n, a
    cdef bint has_lat = latent.shape[0] > 0 and model_code != 2
    cdef bint has_lin = linear.shape[0] > 0
    cdef const float* W = &latent[0] if latent.shape[0] > 0 else NULL
    cdef const float* L = &linear[0] if has_lin else NULL
    cdef double t
    cdef int nt = n_threads if n_rows >= PARALLEL_MIN_ROWS else 1
    cdef bint fast4 = _use_avx2 and has_lat and model_code == 0 and k == 4
    if n_rows == 0:
        return out
    for i in prange(n_rows, nogil=True, num_threads=max(nt, 1), schedule="static"):
        lo = indptr[i]
        n = indptr[i + 1] - lo
        if has_lat and model_code == 0 and i + 1 < n_rows:
            # FFM reads whole weight rows of every feature: request the next row's now
            for a in range(indptr[i + 1], indptr[i + 2]):
                ctr_prefetch_feature(W, indices[a], sj)
        t = bias
        if has_lin:
            t = t + _linear_sum(&indices[lo], &values[lo], n, L, linear_stride)
        if has_lat and n > 1:
            if fast4:
                t = t + _row_scale(&values[lo], n, normalize) * ctr_ffm_pairs4_avx2(
                    &fields[lo], &indices[lo], &values[lo], n, W, sj, sf)
            elif model_code == 0:
                t = t + _row_scale(&values[lo], n, normalize) * ctr_ffm_pairs(
                    &fields[lo], &indices[lo], &values[lo], n, W, sj, sf, k)
            else:
                t = t + _row_scale(&values[lo], n, normalize) * ctr_fm_pairs(
                    &indices[lo], &values[lo], n, W, sj, k)
        out[i] = t
    return out


cdef bint entries_ok(const int32_t* f, const int32_t* j, Py_ssize_t n,
                     int n_fields, Py_ssize_t n_features) noexcept nogil:
    cdef Py_ssize_t a
    for a in range(n):
        if f[a] < 0 or f[a] >= n_fields or j[a] < 0 or j[a] >= n_features:
            return False
    return True


cdef inline bint _is_vec(object arr, int typenum, Py_ssize_t n):
    return (isinstance(arr, cnp.ndarray)
            and cnp.PyArray_TYPE(<cnp.ndarray>arr) == typenum
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>arr)
            and cnp.PyArray_SIZE(<cnp.ndarray>arr) >= n)


# distinct candidate features whose weight rows are requested ahead of the one being scored:
# enough misses in flight to cover memory latency, few enough that the rows stay in L1/L2
# (measured on the 1e6-feature bench model: 8 to 64 score alike, 1 is 15% slower)
cdef enum:
    REQUEST_PREFETCH_AHEAD = 16


cdef struct RequestScratch:
    uint64_t* keys
    int32_t* ids
    Py_ssize_t cap
    float* pack
    Py_ssize_t* foff
    char* packed
    int32_t* slot
    int32_t* dist_f
    int32_t* dist_j
    float* cross




def score_candidates(int model_code, object latent, Py_ssize_t sj, Py_ssize_t sf, int k,
                     object linear, double bias, bint normalize,
                     int n_fields, Py_ssize_t n_features,
                     object ctx_fields, object ctx_indices, object ctx_values,
                     object cand_indptr, object cand_fields, object cand_indices, object cand_values,
                     object out):
    """Probabilities of N candidates sharing one context, written into `out`.

    Arrays must already have the native dtypes (int32 fields/indices, float32
    values, int64 indptr, float64 out; latent/linear float32 or None); this
    entry point avoids memoryview set-up so a request costs a few microseconds
    of overhead. The context's own pairs and linear part are computed once;
    each candidate adds its linear part, its pairs with the context and its
    own pairs. Normalization uses the full row (context + candidate).
    Returns 0 on success, 1 if an array has the wrong type or length, 2 if an
    entry has a field or feature index out of range.
    """
    cdef Py_ssize_t nc, nn, n_cand, c
    if not (_is_vec(ctx_fields, cnp.NPY_INT32, 0) and _is_vec(cand_indptr, cnp.NPY_INT64, 1)):
        return 1
    nc = cnp.PyArray_SIZE(<cnp.ndarray>ctx_fields)
    n_cand = cnp.PyArray_SIZE(<cnp.ndarray>cand_indptr) - 1
    if not (_is_vec(ctx_indices, cnp.NPY_INT32, nc) and _is_vec(ctx_values, cnp.NPY_FLOAT32, nc)
            and _is_vec(out, cnp.NPY_FLOAT64, n_cand)):
        return 1
    cdef const int64_t* cptr = <const int64_t*>cnp.PyArray_DATA(<cnp.ndarray>cand_indptr)
    nn = cptr[n_cand]
    if cptr[0] != 0 or nn < 0:
        return 1
    if not (_is_vec(cand_fields, cnp.NPY_INT32, nn) and _is_vec(cand_indices, cnp.NPY_INT32, nn)
            and _is_vec(cand_values, cnp.NPY_FLOAT32, nn)):
        return 1
    cdef bint has_lat = latent is not None and model_code != 2
    cdef bint has_lin = linear is not None
    if has_lat and not _is_vec(latent, cnp.NPY_FLOAT32, 0):
        return 1
    if has_lin and not _is_vec(linear, cnp.NPY_FLOAT32, n_features):
        return 1
    if k > CTR_MAXK:
        return 1
    for c in range(n_cand):
        if cptr[c + 1] < cptr[c]:
            return 1
    cdef CandidateRequest q
    q.model_code = model_code
    q.W = <const float*>cnp.PyArray_DATA(<cnp.ndarray>latent) if has_lat else NULL
    q.sj, q.sf, q.k = sj, sf, k
    q.L = <const float*>cnp.PyArray_DATA(<cnp.ndarray>linear) if has_lin else NULL
    q.bias, q.normalize, q.n_fields = bias, normalize, n_fields
    q.xf = <const int32_t*>cnp.PyArray_DATA(<cnp.ndarray>ctx_fields)
    q.xj = <const int32_t*>cnp.PyArray_DATA(<cnp.ndarray>ctx_indices)
    q.xv = <const float*>cnp.PyArray_DATA(<cnp.ndarray>ctx_values)
    q.nc = nc
    q.cptr = cptr
    q.cf = <const int32_t*>cnp.PyArray_DATA(<cnp.ndarray>cand_fields)
    q.cj = <const int32_t*>cnp.PyArray_DATA(<cnp.ndarray>cand_indices)
    q.cv = <const float*>cnp.PyArray_DATA(<cnp.ndarray>cand_values)
    q.n_cand = n_cand
    q.out = <double*>cnp.PyArray_DATA(<cnp.ndarray>out)
    if not entries_ok(q.xf, q.xj, nc, n_fields, n_features) or not entries_ok(q.cf, q.cj, nn, n_fields,
                                                                                 n_features):
        return 2
    return score_request(&q)


@cython.final
cdef class CandidateModel:
    """A model's weights checked once for the request path (`score_request`, and the encoder's
    fused encode-and-score call): per request only the request's own arrays need checking.

    latent/linear must be float32 C-contiguous (see scoring.as_native) or None.
    """

    def __init__(self, str model_type, object latent, object linear, double bias, bint normalize,
                 int n_fields, Py_ssize_t n_features, int k):
        if model_type not in MODEL_CODES:
            raise ValueError(f"unknown model type {model_type!r}")
        self.model_code = MODEL_CODES[model_type]
        if self.model_code == 2:
            latent = None
        if latent is not None and not _is_vec(latent, cnp.NPY_FLOAT32, 0):
            raise ValueError("latent weights must be a float32 C-contiguous array")
        if linear is not None and not _is_vec(linear, cnp.NPY_FLOAT32, n_features):
            raise ValueError(f"linear weights must be a float32 C-contiguous array of {n_features}")
        if k > CTR_MAXK:
            raise ValueError(f"k={k} exceeds the supported maximum {CTR_MAXK}")
        self.k = k
        self.sf = k if self.model_code == 0 else 0
        self.sj = n_fields * k if self.model_code == 0 else k
        if latent is not None and cnp.PyArray_SIZE(<cnp.ndarray>latent) < n_features * self.sj:
            raise ValueError(f"latent weights hold {cnp.PyArray_SIZE(<cnp.ndarray>latent)} floats, "
                             f"the model needs {n_features * self.sj}")
        self.latent, self.linear = latent, linear
        self.W = <const float*>cnp.PyArray_DATA(<cnp.ndarray>latent) if latent is not None else NULL
        self.L = <const float*>cnp.PyArray_DATA(<cnp.ndarray>linear) if linear is not None else NULL
        self.bias, self.normalize, self.n_fields, self.n_features = bias, normalize, n_fields, n_features

    cdef int fill(self, CandidateRequest* q) noexcept:
        q.model_code, q.W, q.sj, q.sf, q.k = self.model_code, self.W, self.sj, self.sf, self.k
        q.L, q.bias, q.normalize, q.n_fields = self.L, self.bias, self.normalize, self.n_fields
        return 0


cdef int score_request(CandidateRequest* q) except -1:
    """Score a checked request into q.out (the FFM k=4 path needs scratch memory, allocated here)."""
    cdef Py_ssize_t nn = q.cptr[q.n_cand], cap = 16
    cdef size_t nbytes
    cdef char* block = NULL
    cdef RequestScratch z
    if q.W != NULL and q.model_code == 0 and q.k == 4 and q.sf == 4 and q.nc > 0:
        while cap < 2 * nn:
            cap *= 2
        # one block: pack | foff | distinct-table keys | ids | slot | dist_f | dist_j | cross | packed
        nbytes = (<size_t>q.n_fields * q.nc * 4 * sizeof(float) + <size_t>q.nc * sizeof(Py_ssize_t)
                  + <size_t>cap * (sizeof(uint64_t) + sizeof(int32_t))
                  + <size_t>nn * (3 * sizeof(int32_t) + sizeof(float)) + <size_t>q.n_fields + 64)
        block = <char*>malloc(nbytes)
        if block == NULL:
            raise MemoryError()
        z.keys = <uint64_t*>block
        z.pack = <float*>(z.keys + cap)
        z.foff = <Py_ssize_t*>(z.pack + <size_t>q.n_fields * q.nc * 4)
        z.ids = <int32_t*>(z.foff + q.nc)
        z.slot = z.ids + cap
        z.dist_f = z.slot + nn
        z.dist_j = z.dist_f + nn
        z.cross = <float*>(z.dist_j + nn)
        z.packed = <char*>(z.cross + nn)
        z.cap = cap
        with nogil:
            _score_ffm4(q, &z)
        free(block)
        return 0
    with nogil:
        _score_generic(q)
    return 0


cdef void _score_ffm4(CandidateRequest* q, RequestScratch* z) noexcept nogil:
    """FFM k=4: context terms once, each distinct candidate feature's context term once, then per
    candidate only its linear part and its own pairs.

    Memory order matters more than arithmetic here (a 1e6-feature model's rows miss the cache):
    the context rows are requested first, then the first distinct candidate rows, so those misses
    overlap the de-duplication and the context pairs; the remaining rows are requested a fixed
    distance ahead of the loop that reads them.
    """
    cdef const float* W = q.W
    cdef Py_ssize_t sj = q.sj, nc = q.nc, nn = q.cptr[q.n_cand], m, a, c, lo, n, ahead
    cdef Py_ssize_t row_bytes = sj * sizeof(float)
    cdef double ctx_ss = 0.0, ctx_lin = 0.0, ctx_pairs, cand_ss, r, zz, cross
    cdef int32_t fa
    for a in range(nc):
        ctr_prefetch_span(W + <Py_ssize_t>q.xj[a] * sj, row_bytes)
    m = ctr_distinct_entries(q.cf, q.cj, nn, z.keys, z.ids, z.cap, z.slot, z.dist_f, z.dist_j)
    ahead = min(REQUEST_PREFETCH_AHEAD, m)
    for a in range(ahead):
        ctr_prefetch_span(W + <Py_ssize_t>z.dist_j[a] * sj, row_bytes)
        if q.L != NULL:
            ctr_prefetch_span(q.L + z.dist_j[a], 4)
    for a in range(nc):
        ctx_ss += <double>q.xv[a] * q.xv[a]
        z.foff[a] = <Py_ssize_t>q.xf[a] * 4
    if q.L != NULL:
        ctx_lin = _linear_sum(q.xj, q.xv, nc, q.L, 1)
    ctx_pairs = ctr_ffm_pairs(q.xf, q.xj, q.xv, nc, W, sj, 4, 4)
    for a in range(q.n_fields):
        z.packed[a] = 0
    for a in range(m):
        fa = z.dist_f[a]
        if not z.packed[fa]:
            ctr_ffm_pack4(q.xj, q.xv, nc, W, sj, 4, fa, z.pack + <Py_ssize_t>fa * nc * 4)
            z.packed[fa] = 1
    ctr_cross4_distinct(z.dist_f, z.dist_j, m, z.foff, z.pack, nc, W, sj, q.L, REQUEST_PREFETCH_AHEAD, z.cross)
    for c in range(q.n_cand):
        lo = q.cptr[c]
        n = q.cptr[c + 1] - lo
        zz = q.bias + ctx_lin
        if q.L != NULL:
            zz = zz + _linear_sum(&q.cj[lo], &q.cv[lo], n, q.L, 1)
        cand_ss = 0.0
        cross = 0.0
        for a in range(lo, lo + n):
            cand_ss = cand_ss + <double>q.cv[a] * q.cv[a]
            cross = cross + <double>q.cv[a] * z.cross[z.slot[a]]
        r = 1.0
        if q.normalize and ctx_ss + cand_ss > 0:
            r = 1.0 / (ctx_ss + cand_ss)
        zz = zz + r * (ctx_pairs + cross + ctr_ffm_pairs(&q.cf[lo], &q.cj[lo], &q.cv[lo], n, W, sj, 4, 4))
        q.out[c] = _sigmoid(zz)


cdef void _score_generic(CandidateRequest* q) noexcept nogil:
    """Any model type and k: the context part once, then each candidate (its rows prefetched one
    candidate ahead)."""
    cdef const float* W = q.W
    cdef bint has_lat = W != NULL and q.model_code != 2
    cdef bint has_lin = q.L != NULL
    cdef double ctx_lin = 0.0, ctx_ss = 0.0, ctx_pairs = 0.0, ctx_sq = 0.0
    cdef double cand_ss, zz, pairs, r, sq, tot
    cdef double S_ctx[256]
    cdef double S[256]
    cdef Py_ssize_t a, c, lo, n
    cdef Py_ssize_t sj = q.sj, sf = q.sf, nc = q.nc, n_cand = q.n_cand
    cdef int k = q.k, d
    cdef const int64_t* cptr = q.cptr
    for a in range(nc):
        ctx_ss += <double>q.xv[a] * q.xv[a]
    if has_lin:
        ctx_lin = _linear_sum(q.xj, q.xv, nc, q.L, 1)
    if has_lat:
        if q.model_code == 0:
            ctx_pairs = ctr_ffm_pairs(q.xf, q.xj, q.xv, nc, W, sj, sf, k)
        else:
            for d in range(k):
                S_ctx[d] = 0.0
            ctr_fm_sums(q.xj, q.xv, nc, W, sj, k, S_ctx, &ctx_sq)
    if has_lat and q.model_code == 0:
        for a in range(cptr[0], cptr[1] if n_cand > 0 else 0):
            ctr_prefetch_feature(W, q.cj[a], sj)
    for c in range(n_cand):
        lo = cptr[c]
        n = cptr[c + 1] - lo
        if has_lat and q.model_code == 0 and c + 1 < n_cand:
            for a in range(cptr[c + 1], cptr[c + 2]):
                ctr_prefetch_feature(W, q.cj[a], sj)
        zz = q.bias + ctx_lin
        if has_lin:
            zz = zz + _linear_sum(&q.cj[lo], &q.cv[lo], n, q.L, 1)
        if has_lat:
            cand_ss = 0.0
            for a in range(n):
                cand_ss = cand_ss + <double>q.cv[lo + a] * q.cv[lo + a]
            r = 1.0
            if q.normalize and ctx_ss + cand_ss > 0:
                r = 1.0 / (ctx_ss + cand_ss)
            if q.model_code == 0:
                pairs = ctx_pairs + ctr_ffm_cross(&q.cf[lo], &q.cj[lo], &q.cv[lo], n, q.xf, q.xj, q.xv, nc, W,
                                                  sj, sf, k) \
                    + ctr_ffm_pairs(&q.cf[lo], &q.cj[lo], &q.cv[lo], n, W, sj, sf, k)
            else:
                for d in range(k):
                    S[d] = S_ctx[d]
                sq = ctx_sq
                ctr_fm_sums(&q.cj[lo], &q.cv[lo], n, W, sj, k, S, &sq)
                tot = 0.0
                for d in range(k):
                    tot = tot + S[d] * S[d]
                pairs = 0.5 * (tot - sq)
            zz = zz + r * pairs
        q.out[c] = _sigmoid(zz)
