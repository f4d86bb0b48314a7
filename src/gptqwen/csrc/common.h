/* Shared by the C kernels (products.c, norms.c, activations.c, rope.c, attention.c, decode.c, loss.c; gptqwen/ops/_clib.py
 * builds them into one library): includes, formats, return codes, fp16 conversion and the small SIMD helpers.
 * Everything here is static inline. */
#ifndef GQ_COMMON_H
#define GQ_COMMON_H
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#define QK 32      /* values per quantisation block */
#define MB 8       /* rows of x per pass of the products */
#define PAR_MIN 32768 /* elements below which a pass stays on one thread (an OpenMP region costs microseconds) */

enum { F32 = 0, Q8_0 = 1, Q4_1 = 2 }; /* weight formats of the products (ops/_clib.py FORMAT_CODES mirrors them) */
enum { GQ_OK = 0, GQ_ENOMEM = 1 };    /* what the entry points that allocate return (ops/_clib.py `check`) */

static inline float half_to_float(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) { bits = sign; }
        else { /* subnormal: normalise */
            int e = -1;
            do { e++; man <<= 1; } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000 | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

#ifdef __AVX2__
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

static inline float dot(const float *a, const float *b, int64_t n) {
    int64_t i = 0;
    float t = 0.f;
#ifdef __AVX2__
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    t = hsum(acc);
#endif
    for (; i < n; i++) t += a[i] * b[i];
    return t;
}

/* sum of a * b * c over n floats */
static inline float dot3(const float *a, const float *b, const float *c, int64_t n) {
    int64_t i = 0;
    float t = 0.f;
#ifdef __AVX2__
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8)
        acc = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)), _mm256_loadu_ps(c + i),
                              acc);
    t = hsum(acc);
#endif
    for (; i < n; i++) t += a[i] * b[i] * c[i];
    return t;
}

/* e^-x with x clamped so it stays finite (then 1 - sigmoid = e^-x sigmoid never becomes inf * 0) */
static inline float exp_neg(float x) { return expf(x < -88.f ? 88.f : -x); }

#ifdef __AVX2__
/* e^x for 8 floats (Cephes' expf: range reduction by ln 2, degree-5 polynomial; ~1 ulp). */
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

/* 1 / (1 + e^-x): the reciprocal estimate refined by one Newton step (~1 ulp short of a division, 3x faster) */
static inline __m256 sigmoid8_e(__m256 x, __m256 *e) { /* *e = e^-x, so 1 - sigmoid = e * sigmoid exactly */
    *e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
    const __m256 d = _mm256_add_ps(_mm256_set1_ps(1.f), *e);
    const __m256 r = _mm256_rcp_ps(d);
    return _mm256_mul_ps(r, _mm256_fnmadd_ps(d, r, _mm256_set1_ps(2.f)));
}

static inline __m256 sigmoid8(__m256 x) {
    __m256 e;
    return sigmoid8_e(x, &e);
}
#endif

#ifdef _OPENMP
#include <omp.h>
static inline int thread_id(void) { return omp_get_thread_num(); }
#else
static inline int thread_id(void) { return 0; }
#endif

/* Inside an OpenMP region: record that this thread could not allocate its workspace (the caller then returns
 * GQ_ENOMEM; the thread still enters the region's work-sharing loop and skips its share). */
static inline void note_failure(int *failed) {
    #pragma omp atomic write
    *failed = 1;
}

/* Sums per-thread partial rows part[t * n + j] over t into out[j] (in thread order: deterministic). */
static inline void reduce_partials(const float *part, int nthreads, int64_t n, float *out) {
    for (int64_t j = 0; j < n; j++) {
        float t = 0.f;
        for (int k = 0; k < nthreads; k++) t += part[k * n + j];
        out[j] = t;
    }
}

/* y[r] = x[r] * rstd(r) * w, rstd = 1 / sqrt(mean(x[r]^2) + eps), for `rows` rows of width D (contiguous);
 * rstd_out (may be NULL) receives rstd per row, for the backward. */
static inline void rms_rows(const float *x, const float *w, float *y, float *rstd_out, int64_t rows, int64_t D, float eps) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * D;
        float *yr = y + r * D;
        const float rstd = 1.f / sqrtf(dot(xr, xr, D) / (float)D + eps);
        if (rstd_out) rstd_out[r] = rstd;
        for (int64_t i = 0; i < D; i++) yr[i] = xr[i] * rstd * w[i];
    }
}

/* The rotation of RoPE: out = z cos + swap_halves(z) sin over D values, the tables' sine pre-signed as
 * [-sin, sin] (model/rope.py); out must not alias z. */
static inline void rope_rotate(const float *z, const float *cos, const float *sin, float *out, int64_t D) {
    const int64_t half = D / 2;
    for (int64_t i = 0; i < half; i++) out[i] = z[i] * cos[i] + z[i + half] * sin[i];
    for (int64_t i = half; i < D; i++) out[i] = z[i] * cos[i] + z[i - half] * sin[i];
}

/* entry points that other files call */
int gq_matmul(int fmt, const float *x, int64_t M, int64_t K, const void *w, const uint16_t *d, const uint16_t *m,
              int64_t N, float *y, int nthreads, int simd);
void gq_swiglu(const float *h, float *out, int64_t rows, int64_t I, int nthreads);
void gq_gelu(const float *x, const float *g, float *out, int64_t n, int nthreads);

#endif
