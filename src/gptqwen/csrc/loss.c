/* The elementwise half of the bf16 LM head + cross-entropy (ops/loss.py): the head's logits arrive one block of
 * vocabulary rows at a time, [rows, N] bf16 (row v holds logit v0 + v of every token; a block is small enough to
 * stay in cache), and are consumed before the next block is computed. Entry points:
 *   gq_ce_stats: the running max and sum of exponentials per token (the log-sum-exp), and each token's target logit;
 *   gq_ce_grad:  the block's logits -> their gradient (softmax - one-hot) * scale, written over them in bf16.
 * bf16 -> fp32 is exact (a shift); fp32 -> bf16 rounds to nearest even, as torch does. */
#include "common.h"

static inline float bf16_load(uint16_t h) {
    const uint32_t b = (uint32_t)h << 16;
    float f;
    memcpy(&f, &b, 4);
    return f;
}

static inline uint16_t bf16_round(float f) {
    uint32_t b;
    memcpy(&b, &f, 4);
    if ((b & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((b >> 16) | 0x40); /* NaN stays NaN */
    return (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

#ifdef __AVX2__
static inline __m256 bf16_load8(const uint16_t *p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

/* round-to-nearest-even of 8 finite floats (gradients here are finite: exp of a non-positive argument) */
static inline void bf16_store8(uint16_t *p, __m256 v) {
    const __m256i b = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7fff)), lsb), 16);
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0xd8);
    _mm_storeu_si128((__m128i *)p, _mm256_castsi256_si128(packed));
}
#endif

/* Columns [lo, hi) of the block: fold its rows into the running (m, s) per token (s = sum exp(logit - m)), and
 * pick each token's target logit when the target lies in rows [v0, v0 + rows). */
static void stats_columns(const uint16_t *l, int64_t rows, int64_t N, int64_t v0, const int64_t *targets,
                          float *m, float *s, float *picked, int64_t lo, int64_t hi, float *bmax) {
    for (int64_t j = lo; j < hi; j++) bmax[j - lo] = m[j];
    for (int64_t v = 0; v < rows; v++) {
        const uint16_t *row = l + v * N;
        int64_t j = lo;
#ifdef __AVX2__
        for (; j + 8 <= hi; j += 8)
            _mm256_storeu_ps(bmax + j - lo, _mm256_max_ps(_mm256_loadu_ps(bmax + j - lo), bf16_load8(row + j)));
#endif
        for (; j < hi; j++) {
            const float x = bf16_load(row[j]);
            bmax[j - lo] = x > bmax[j - lo] ? x : bmax[j - lo];
        }
    }
    /* rescale the running sums to the new max (exp(-inf) = 0 on the first block) */
    for (int64_t j = lo; j < hi; j++) {
        s[j] = m[j] == -INFINITY ? 0.f : s[j] * expf(m[j] - bmax[j - lo]);
        m[j] = bmax[j - lo];
    }
    for (int64_t v = 0; v < rows; v++) {
        const uint16_t *row = l + v * N;
        int64_t j = lo;
#ifdef __AVX2__
        for (; j + 8 <= hi; j += 8) {
            const __m256 e = exp8(_mm256_sub_ps(bf16_load8(row + j), _mm256_loadu_ps(m + j)));
            _mm256_storeu_ps(s + j, _mm256_add_ps(_mm256_loadu_ps(s + j), e));
        }
#endif
        for (; j < hi; j++) s[j] += expf(bf16_load(row[j]) - m[j]);
    }
    for (int64_t j = lo; j < hi; j++) {
        const int64_t t = targets[j] - v0;
        if (t >= 0 && t < rows) picked[j] = bf16_load(l[t * N + j]);
    }
}

/* Column ranges per thread, in multiples of 8 (whole vectors); every thread runs all rows of its columns. */
static inline void column_range(int64_t N, int nthreads, int t, int64_t *lo, int64_t *hi) {
    const int64_t per = ((N + nthreads - 1) / nthreads + 7) / 8 * 8;
    *lo = t * per < N ? t * per : N;
    *hi = *lo + per < N ? *lo + per : N;
}

int gq_ce_stats(const uint16_t *logits, int64_t rows, int64_t N, int64_t v0, const int64_t *targets, float *m,
                float *s, float *picked, int nthreads) {
    if (nthreads < 1 || rows * N < PAR_MIN) nthreads = 1;
    float *bmax = malloc(sizeof(float) * (size_t)(N + 8 * nthreads));
    if (!bmax) return GQ_ENOMEM;
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int t = 0; t < nthreads; t++) {
        int64_t lo, hi;
        column_range(N, nthreads, t, &lo, &hi);
        if (lo < hi) stats_columns(logits, rows, N, v0, targets, m, s, picked, lo, hi, bmax + lo);
    }
    free(bmax);
    return GQ_OK;
}

/* g = (exp(logit - lse[token]) - [token's target is this row]) * scale[token], over the block, in place;
 * `picked` holds each token's target logit (gq_ce_stats), so the one-hot rows are set from it in fp32. */
void gq_ce_grad(uint16_t *logits, int64_t rows, int64_t N, int64_t v0, const int64_t *targets, const float *lse,
                const float *scale, const float *picked, int nthreads) {
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && rows * N >= PAR_MIN)
    for (int64_t v = 0; v < rows; v++) {
        uint16_t *row = logits + v * N;
        int64_t j = 0;
#ifdef __AVX2__
        for (; j + 8 <= N; j += 8) {
            const __m256 p = exp8(_mm256_sub_ps(bf16_load8(row + j), _mm256_loadu_ps(lse + j)));
            bf16_store8(row + j, _mm256_mul_ps(p, _mm256_loadu_ps(scale + j)));
        }
#endif
        for (; j < N; j++) row[j] = bf16_round(expf(bf16_load(row[j]) - lse[j]) * scale[j]);
    }
    for (int64_t j = 0; j < N; j++) {
        const int64_t t = targets[j] - v0;
        if (t >= 0 && t < rows) logits[t * N + j] = bf16_round((expf(picked[j] - lse[j]) - 1.f) * scale[j]);
    }
}
