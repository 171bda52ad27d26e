/* FFM training kernels for k = 4 on CPUs with AVX2 and FMA (chosen at run time).
 *
 * Why a second set of kernels: an epoch on a 1e6-feature model is mostly
 * arithmetic, not memory (the same rows on a 5,000-feature model run only
 * ~25% faster), and the SSE kernels of _ffm.pyx fill only half of a 256-bit
 * FP unit. Here two field pairs share one 256-bit register, and multiply-adds
 * are fused, which cuts the vector instructions of a pair roughly in half.
 *
 * Layout: the training layout of _ffm.pyx with k = 4, i.e. per (feature,
 * field) a 32-byte block [w0..w3, G0..G3] (weights, then AdaGrad sums).
 *
 * Semantics equal the SSE kernels' up to float rounding (FMA rounds once
 * instead of twice; the forward sum is taken in another order): two pairs are
 * updated together only when their four blocks are distinct, otherwise one
 * after the other as the SSE kernel does. With one thread the result is
 * still bit-for-bit reproducible on a given machine.
 *
 * An epoch is bound by instruction throughput more than by memory (callgrind counted ~35k
 * instructions a 39-field row; the same rows over a 100-feature model, which fits in L2, run only
 * ~20% faster than over 1e6 features). So both loops take their block addresses from per-row
 * tables, and the usual Criteo row (values 1, distinct features and fields, no L1) is updated by a
 * loop without alias tests or per-pair branches: ~23% fewer instructions a row, same arithmetic.
 *
 * Everything is compiled with a per-function target attribute, so the module
 * builds and runs on any x86-64 CPU: ctr_avx2_usable() says whether to call it.
 */
#ifndef CTROPS_FFM_TRAIN_AVX2_H
#define CTROPS_FFM_TRAIN_AVX2_H

#include <stdint.h>

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <immintrin.h>
#define CTR_HAVE_AVX2_KERNELS 1

static int ctr_avx2_usable(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

#define CTR_AVX2 __attribute__((target("avx2,fma")))

/* two 16-byte blocks side by side: lo from p, hi from q */
CTR_AVX2 static inline __m256 ctr_load_pair(const float* p, const float* q) {
    return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(p)), _mm_loadu_ps(q), 1);
}

CTR_AVX2 static inline float ctr_hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

CTR_AVX2 static inline float ctr_hsum128f(__m128 v) {
    __m128 s = _mm_add_ps(v, _mm_movehl_ps(v, v));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

/* soft threshold sign(w) * max(|w| - t, 0), for the L1 proximal step */
CTR_AVX2 static inline __m256 ctr_shrink256(__m256 w, __m256 t) {
    const __m256 sign_mask = _mm256_set1_ps(-0.0f);
    __m256 sign = _mm256_and_ps(w, sign_mask);
    __m256 mag = _mm256_max_ps(_mm256_sub_ps(_mm256_andnot_ps(sign_mask, w), t), _mm256_setzero_ps());
    return _mm256_or_ps(mag, sign);
}

CTR_AVX2 static inline __m128 ctr_shrink128f(__m128 w, __m128 t) {
    const __m128 sign_mask = _mm_set1_ps(-0.0f);
    __m128 sign = _mm_and_ps(w, sign_mask);
    __m128 mag = _mm_max_ps(_mm_sub_ps(_mm_andnot_ps(sign_mask, w), t), _mm_setzero_ps());
    return _mm_or_ps(mag, sign);
}

static inline int ctr_ones(const float* x, Py_ssize_t n) {
    for (Py_ssize_t a = 0; a < n; a++) if (x[a] != 1.0f) return 0;
    return 1;
}

/* While feature a of a row is updated, request the weight rows of the next row's feature a (and,
   at the row's last feature, of all its remaining ones): spread over the update, the next row's
   weights arrive by the time its forward pass reads them. */
static inline void ctr_prefetch_next_row(const float* W, Py_ssize_t sj, const int32_t* j_next,
                                         Py_ssize_t n_next, Py_ssize_t a, Py_ssize_t n) {
    const Py_ssize_t row_bytes = sj * (Py_ssize_t)sizeof(float);
    const Py_ssize_t last = a == n - 1 ? n_next : (a < n_next ? a + 1 : a);
    for (Py_ssize_t c = a; c < last; c++) {
        const char* p = (const char*)(W + (Py_ssize_t)j_next[c] * sj);
        for (Py_ssize_t off = 0; off < row_bytes; off += 64) _mm_prefetch(p + off, _MM_HINT_T0);
    }
}

/* Rows up to this long may take the table-driven loops below (their per-row tables live on the stack). */
#define CTR_FAST_ROW_MAX 128

/* sum over a < b of <W[j_a, f_b], W[j_b, f_a]> x_a x_b for rows longer than CTR_FAST_ROW_MAX */
CTR_AVX2 static float ctr_ffm_pairs4_long(const int32_t* f, const int32_t* j, const float* x, Py_ssize_t n,
                                          const float* W, Py_ssize_t sj, Py_ssize_t sf) {
    __m128 acc = _mm_setzero_ps();
    for (Py_ssize_t a = 0; a < n; a++) {
        const float* wa = W + (Py_ssize_t)j[a] * sj;
        const Py_ssize_t fa = (Py_ssize_t)f[a] * sf;
        for (Py_ssize_t b = a + 1; b < n; b++) {
            const __m128 p = _mm_mul_ps(_mm_loadu_ps(wa + (Py_ssize_t)f[b] * sf), _mm_set1_ps(x[a] * x[b]));
            acc = _mm_fmadd_ps(p, _mm_loadu_ps(W + (Py_ssize_t)j[b] * sj + fa), acc);
        }
    }
    return ctr_hsum128f(acc);
}

/* sum over a < b of <W[j_a, f_b], W[j_b, f_a]> x_a x_b; blocks are sf floats apart (sf >= 4).
   Every block address comes from two per-row tables (feature span, field offset), computed once
   per row rather than once per pair: two multiplications fewer for each of the row's pairs. */
CTR_AVX2 static float ctr_ffm_pairs4_avx2(const int32_t* f, const int32_t* j, const float* x, Py_ssize_t n,
                                          const float* W, Py_ssize_t sj, Py_ssize_t sf) {
    if (n > CTR_FAST_ROW_MAX) return ctr_ffm_pairs4_long(f, j, x, n, W, sj, sf);
    const float* span[CTR_FAST_ROW_MAX];
    Py_ssize_t foff[CTR_FAST_ROW_MAX];
    for (Py_ssize_t a = 0; a < n; a++) {
        span[a] = W + (Py_ssize_t)j[a] * sj;
        foff[a] = (Py_ssize_t)f[a] * sf;
    }
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m128 tail = _mm_setzero_ps();
    const int ones = ctr_ones(x, n);
    for (Py_ssize_t a = 0; a < n; a++) {
        const float* const wa = span[a];
        const Py_ssize_t fa = foff[a];
        const float xa = x[a];
        Py_ssize_t b = a + 1;
        for (; b + 3 < n; b += 4) {
            __m256 p = ctr_load_pair(wa + foff[b], wa + foff[b + 1]);
            __m256 q = ctr_load_pair(span[b] + fa, span[b + 1] + fa);
            __m256 r = ctr_load_pair(wa + foff[b + 2], wa + foff[b + 3]);
            __m256 s = ctr_load_pair(span[b + 2] + fa, span[b + 3] + fa);
            if (!ones) {
                p = _mm256_mul_ps(p, _mm256_setr_m128(_mm_set1_ps(xa * x[b]), _mm_set1_ps(xa * x[b + 1])));
                r = _mm256_mul_ps(r, _mm256_setr_m128(_mm_set1_ps(xa * x[b + 2]), _mm_set1_ps(xa * x[b + 3])));
            }
            acc0 = _mm256_fmadd_ps(p, q, acc0);
            acc1 = _mm256_fmadd_ps(r, s, acc1);
        }
        for (; b < n; b++) {
            __m128 p = _mm_loadu_ps(wa + foff[b]);
            if (!ones) p = _mm_mul_ps(p, _mm_set1_ps(xa * x[b]));
            tail = _mm_fmadd_ps(p, _mm_loadu_ps(span[b] + fa), tail);
        }
    }
    return ctr_hsum256(_mm256_add_ps(acc0, acc1)) + ctr_hsum128f(tail);
}

/* one pair's AdaGrad step on blocks w1, w2 (128-bit, fused multiply-adds) */
CTR_AVX2 static inline void ctr_pair_step4(float* w1, float* w2, __m128 v, __m128 vlam, __m128 veta,
                                           float l1) {
    __m128 W1 = _mm_loadu_ps(w1), W2 = _mm_loadu_ps(w2);
    __m128 G1 = _mm_loadu_ps(w1 + 4), G2 = _mm_loadu_ps(w2 + 4);
    __m128 g1 = _mm_fmadd_ps(v, W2, _mm_mul_ps(vlam, W1));
    __m128 g2 = _mm_fmadd_ps(v, W1, _mm_mul_ps(vlam, W2));
    G1 = _mm_fmadd_ps(g1, g1, G1);
    G2 = _mm_fmadd_ps(g2, g2, G2);
    __m128 s1 = _mm_mul_ps(veta, _mm_rsqrt_ps(G1));
    __m128 s2 = _mm_mul_ps(veta, _mm_rsqrt_ps(G2));
    W1 = _mm_fnmadd_ps(s1, g1, W1);
    W2 = _mm_fnmadd_ps(s2, g2, W2);
    if (l1 > 0.0f) {
        const __m128 vl1 = _mm_set1_ps(l1);
        W1 = ctr_shrink128f(W1, _mm_mul_ps(s1, vl1));
        W2 = ctr_shrink128f(W2, _mm_mul_ps(s2, vl1));
    }
    _mm_storeu_ps(w1 + 4, G1);
    _mm_storeu_ps(w2 + 4, G2);
    _mm_storeu_ps(w1, W1);
    _mm_storeu_ps(w2, W2);
}

/* 0 sends every row through the general loop (tests compare the two; A/B timing) */
static int ctr_fast_rows = 1;

/* Whether the n values are pairwise distinct (n <= CTR_FAST_ROW_MAX): a 256-slot open-addressing
   set, a few instructions per value. */
static inline int ctr_all_distinct(const int32_t* v, Py_ssize_t n) {
    int32_t slot_value[256];
    unsigned char used[256] = {0};
    for (Py_ssize_t a = 0; a < n; a++) {
        unsigned h = ((uint32_t)v[a] * 2654435761u) >> 24;
        while (used[h]) {
            if (slot_value[h] == v[a]) return 0;
            h = (h + 1) & 255u;
        }
        used[h] = 1;
        slot_value[h] = v[a];
    }
    return 1;
}

/* Two pairs' AdaGrad steps at once, blocks p1b/p2b and p1c/p2c (all four distinct), v their
   kr * x_a * x_b (lanes 0-3 the first pair's, 4-7 the second's). */
CTR_AVX2 static inline void ctr_two_pairs_step4(float* p1b, float* p1c, float* p2b, float* p2c, __m256 v,
                                                __m256 vlam, __m256 veta, float l1) {
    const __m256 A1 = _mm256_loadu_ps(p1b), C1 = _mm256_loadu_ps(p1c);
    const __m256 A2 = _mm256_loadu_ps(p2b), C2 = _mm256_loadu_ps(p2c);
    __m256 W1 = _mm256_permute2f128_ps(A1, C1, 0x20), G1 = _mm256_permute2f128_ps(A1, C1, 0x31);
    __m256 W2 = _mm256_permute2f128_ps(A2, C2, 0x20), G2 = _mm256_permute2f128_ps(A2, C2, 0x31);
    const __m256 g1 = _mm256_fmadd_ps(v, W2, _mm256_mul_ps(vlam, W1));
    const __m256 g2 = _mm256_fmadd_ps(v, W1, _mm256_mul_ps(vlam, W2));
    G1 = _mm256_fmadd_ps(g1, g1, G1);
    G2 = _mm256_fmadd_ps(g2, g2, G2);
    const __m256 s1 = _mm256_mul_ps(veta, _mm256_rsqrt_ps(G1));
    const __m256 s2 = _mm256_mul_ps(veta, _mm256_rsqrt_ps(G2));
    W1 = _mm256_fnmadd_ps(s1, g1, W1);
    W2 = _mm256_fnmadd_ps(s2, g2, W2);
    if (l1 > 0.0f) {
        const __m256 vl1 = _mm256_set1_ps(l1);
        W1 = ctr_shrink256(W1, _mm256_mul_ps(s1, vl1));
        W2 = ctr_shrink256(W2, _mm256_mul_ps(s2, vl1));
    }
    /* stores in the SSE kernel's order, so a pair whose two blocks coincide ends the same */
    _mm256_storeu_ps(p1b, _mm256_permute2f128_ps(W1, G1, 0x20));
    _mm256_storeu_ps(p2b, _mm256_permute2f128_ps(W2, G2, 0x20));
    _mm256_storeu_ps(p1c, _mm256_permute2f128_ps(W1, G1, 0x31));
    _mm256_storeu_ps(p2c, _mm256_permute2f128_ps(W2, G2, 0x31));
}

/* The usual Criteo row: all values 1, no L1 step, every feature and every field distinct. Then no
   two pairs of the row can touch one block (W[j_a, f_b] = W[j_c, f_d] needs j_a = j_c, i.e. a = c,
   and then f_b = f_d, i.e. b = d), so pairs go two by two with no alias test, no value products and
   no per-pair branch; every block address comes from two per-row tables (feature span, field
   offset) instead of two multiplications. About a third fewer instructions than the general loop;
   the arithmetic, and so the result, is the general loop's. */
CTR_AVX2 static void ctr_ffm_update4_fast(const int32_t* f, const int32_t* j, Py_ssize_t n, float* W,
                                          Py_ssize_t sj, float kr, float eta, float lam,
                                          const int32_t* j_next, Py_ssize_t n_next) {
    const Py_ssize_t sf = 8;
    float* span[CTR_FAST_ROW_MAX];
    Py_ssize_t foff[CTR_FAST_ROW_MAX];
    for (Py_ssize_t a = 0; a < n; a++) {
        span[a] = W + (Py_ssize_t)j[a] * sj;
        foff[a] = (Py_ssize_t)f[a] * sf;
    }
    const __m256 vlam = _mm256_set1_ps(lam), veta = _mm256_set1_ps(eta), v = _mm256_set1_ps(kr);
    const __m128 vlam4 = _mm_set1_ps(lam), veta4 = _mm_set1_ps(eta), v4 = _mm_set1_ps(kr);
    for (Py_ssize_t a = 0; a < n; a++) {
        float* const wa = span[a];
        ctr_prefetch_next_row(W, sj, j_next, n_next, a, n);
        const Py_ssize_t fa = foff[a];
        Py_ssize_t b = a + 1;
        for (; b + 1 < n; b += 2) {
            float* const p1b = wa + foff[b];
            float* const p1c = wa + foff[b + 1];
            float* const p2b = span[b] + fa;
            float* const p2c = span[b + 1] + fa;
            ctr_two_pairs_step4(p1b, p1c, p2b, p2c, v, vlam, veta, 0.0f);
        }
        if (b < n) ctr_pair_step4(wa + foff[b], span[b] + fa, v4, vlam4, veta4, 0.0f);
    }
}

/* AdaGrad step for every pair of a row (training layout, sf == 8); kr = dloss/dt * scale.
   While row i is updated, the weight blocks of the next row (j_next) are prefetched. */
CTR_AVX2 static void ctr_ffm_update4_avx2(const int32_t* f, const int32_t* j, const float* x, Py_ssize_t n,
                                          float* W, Py_ssize_t sj, float kr, float eta, float lam, float l1,
                                          const int32_t* j_next, Py_ssize_t n_next) {
    const Py_ssize_t sf = 8;
    const int ones = ctr_ones(x, n);
    if (ctr_fast_rows && ones && l1 <= 0.0f && n <= CTR_FAST_ROW_MAX && ctr_all_distinct(f, n) && ctr_all_distinct(j, n)) {
        ctr_ffm_update4_fast(f, j, n, W, sj, kr, eta, lam, j_next, n_next);
        return;
    }
    const __m256 vlam = _mm256_set1_ps(lam), veta = _mm256_set1_ps(eta), vkr = _mm256_set1_ps(kr);
    const __m128 vlam4 = _mm_set1_ps(lam), veta4 = _mm_set1_ps(eta);
    for (Py_ssize_t a = 0; a < n; a++) {
        float* wa = W + (Py_ssize_t)j[a] * sj;
        /* spread the next row's prefetches over this row's work */
        ctr_prefetch_next_row(W, sj, j_next, n_next, a, n);
        const Py_ssize_t fa = (Py_ssize_t)f[a] * sf;
        const float xa = x[a];
        Py_ssize_t b = a + 1;
        for (; b + 1 < n; b += 2) {
            float* p1b = wa + (Py_ssize_t)f[b] * sf;
            float* p1c = wa + (Py_ssize_t)f[b + 1] * sf;
            float* p2b = W + (Py_ssize_t)j[b] * sj + fa;
            float* p2c = W + (Py_ssize_t)j[b + 1] * sj + fa;
            const float vb = ones ? kr : kr * xa * x[b];
            const float vc = ones ? kr : kr * xa * x[b + 1];
            if (p1c == p1b || p1c == p2b || p2c == p1b || p2c == p2b) {
                /* the two pairs share a block (a repeated field or a hash collision): in turn */
                ctr_pair_step4(p1b, p2b, _mm_set1_ps(vb), vlam4, veta4, l1);
                ctr_pair_step4(p1c, p2c, _mm_set1_ps(vc), vlam4, veta4, l1);
                continue;
            }
            const __m256 v = ones ? vkr : _mm256_setr_m128(_mm_set1_ps(vb), _mm_set1_ps(vc));
            ctr_two_pairs_step4(p1b, p1c, p2b, p2c, v, vlam, veta, l1);
        }
        for (; b < n; b++) {
            float* p1 = wa + (Py_ssize_t)f[b] * sf;
            float* p2 = W + (Py_ssize_t)j[b] * sj + fa;
            ctr_pair_step4(p1, p2, _mm_set1_ps(ones ? kr : kr * xa * x[b]), vlam4, veta4, l1);
        }
    }
}

#else
#define CTR_HAVE_AVX2_KERNELS 0
static int ctr_avx2_usable(void) { return 0; }
static float ctr_ffm_pairs4_avx2(const int32_t* f, const int32_t* j, const float* x, Py_ssize_t n,
                                 const float* W, Py_ssize_t sj, Py_ssize_t sf) { return 0.0f; }
static void ctr_ffm_update4_avx2(const int32_t* f, const int32_t* j, const float* x, Py_ssize_t n,
                                 float* W, Py_ssize_t sj, float kr, float eta, float lam, float l1,
                                 const int32_t* j_next, Py_ssize_t n_next) {}
#endif

#endif
