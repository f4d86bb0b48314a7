/* CPU kernels, float32, called through ctypes (gptqwen/kernels.py builds and loads this file):
 *   gq_matmul — float32 and block-quantised matrix products (below), and gq_dequantize;
 *   gq_rms_norm (+ _backward), gq_swiglu (+ _backward), gq_gelu, gq_norm_rope (+ _backward) — the elementwise
 *     passes of a training step and of inference, each one pass over the data where torch runs several ops
 *     (its CPU rms_norm alone is ~8, ~17 us for one 576-wide row);
 *   gq_attention_forward / _backward — causal attention of short sequences, the lower triangle only;
 *   gq_decode_step — a whole decode step of a Llama/Qwen-layout model (gptqwen/infer/native.py).
 * Each entry point has a PyTorch counterpart that the tests compare it with.
 *
 * Block-quantised products for CPU decoding: y[M,N] = x[M,K] @ W[N,K]^T, x and y float32.
 *
 * W is stored in one of llama.cpp's block formats (blocks of 32 consecutive values of a row, K % 32 == 0):
 *   q8_0: w = d * q,      q int8,            d fp16 per block           (1.06 bytes per weight)
 *   q4_1: w = d * q + m,  q 4-bit unsigned,  d and m fp16 per block     (0.63 bytes per weight)
 * laid out as separate arrays: qs [N, K] int8 (q8_0) or [N, K/2] bytes (q4_1), d and m [N, K/32] fp16 bits.
 * A q4_1 block's 16 bytes are four little-endian 32-bit words; value e sits in word e % 4 at nibble
 * 2 * (e / 8) + (e % 8) / 4, so that AVX2 gets 8 consecutive values with one shift per lane and a mask
 * (GGUF's order, value j and j+16 in byte j, needs four byte shuffles per block: 2x slower here).
 *
 * The activations stay float32: each weight block is decoded to floats in registers once and multiplied
 * there with every row of x (up to 8 at a time), so the result is a float32 product with exactly the
 * dequantised weights, up to summation order — rounding the activations to int8 as well (llama.cpp's way)
 * flipped near-tied answers of a 135M model. Batch-1 decoding is bound by reading the weights, so fewer bytes
 * per weight is the speed-up; the rows of a small batch share every decoded block.
 *
 * No Python API or torch headers here: the file builds in about a second with the system C compiler.
 * Threads: OpenMP over output rows; torch's own libgomp is the one loaded in the process, so both share it.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#define QK 32
#define MB 8 /* rows of x per pass */

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

/* ------------------------------------------------------------------------------------------ products */
/* q4_1's m term needs the sum of each block of x: sums[r * G + g]. */
static void block_sums(const float *x, int mb, int64_t K, float *sums) {
    for (int64_t i = 0; i < (int64_t)mb * (K / QK); i++) {
        float s = 0.f;
        for (int j = 0; j < QK; j++) s += x[i * QK + j];
        sums[i] = s;
    }
}

enum { F32 = 0, Q8_0 = 1, Q4_1 = 2 }; /* weight formats of the products */

/* The 32 values q of block g of a row (unscaled); float32 rows are copied. */
static inline void decode_block(int fmt, const uint8_t *qs_row, int64_t g, float *w) {
    if (fmt == Q4_1) {
        const uint8_t *b = qs_row + g * (QK / 2);
        for (int e = 0; e < QK; e++) { /* value e: word e % 4, nibble 2 * (e / 8) + (e % 8) / 4 */
            const int nib = 2 * (e / 8) + (e % 8) / 4;
            w[e] = (float)((b[4 * (e % 4) + nib / 2] >> (4 * (nib % 2))) & 0x0f);
        }
    } else if (fmt == Q8_0) {
        for (int j = 0; j < QK; j++) w[j] = (float)(int8_t)qs_row[g * QK + j];
    } else {
        memcpy(w, (const float *)qs_row + g * QK, sizeof(float) * QK);
    }
}

/* Portable: one output row against mb rows of x. */
static void row_dot_scalar(int fmt, int mb, const float *x, const float *sums, int64_t K, const uint8_t *qs_row,
                           const uint16_t *d_row, const uint16_t *m_row, float *out) {
    const int64_t G = K / QK;
    float w[QK];
    for (int r = 0; r < mb; r++) out[r] = 0.f;
    if (fmt == F32) { /* any K */
        for (int r = 0; r < mb; r++)
            for (int64_t k = 0; k < K; k++) out[r] += x[r * K + k] * ((const float *)qs_row)[k];
        return;
    }
    for (int64_t g = 0; g < G; g++) {
        decode_block(fmt, qs_row, g, w);
        const float dw = fmt == F32 ? 1.f : half_to_float(d_row[g]), mw = fmt == Q4_1 ? half_to_float(m_row[g]) : 0.f;
        for (int r = 0; r < mb; r++) {
            const float *xr = x + r * K + g * QK;
            float t = 0.f;
            for (int j = 0; j < QK; j++) t += xr[j] * w[j];
            out[r] += dw * t + (fmt == Q4_1 ? mw * sums[r * G + g] : 0.f);
        }
    }
}

#ifdef __AVX2__
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* AVX2: decode the block's 32 weights to 4 x 8 floats (q, unscaled) once, then for each row of x: four FMAs
 * in two chains, and the block's d scales the sum into the row's accumulator. */
static inline __attribute__((always_inline)) void block_step(
        int fmt, int mb, const float *x, int64_t K, const uint8_t *qs_row, const float *dw, int64_t g,
        __m256 *acc) {
    __m256 w0, w1, w2, w3;
    if (fmt == Q4_1) { /* the 16 bytes in both halves; lane l takes word l % 4 shifted to the nibble it needs */
        const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(qs_row + g * (QK / 2))));
        const __m256i low = _mm256_set1_epi32(0x0f);
        w0 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(v, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)), low));
        w1 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(v, _mm256_setr_epi32(8, 8, 8, 8, 12, 12, 12, 12)), low));
        w2 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(v, _mm256_setr_epi32(16, 16, 16, 16, 20, 20, 20, 20)), low));
        w3 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(v, _mm256_setr_epi32(24, 24, 24, 24, 28, 28, 28, 28)), low));
    } else {
        const int8_t *q = (const int8_t *)qs_row + g * QK;
        w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)q)));
        w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + 8))));
        w2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + 16))));
        w3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + 24))));
    }
    const __m256 dv = _mm256_broadcast_ss(dw + g);
    for (int r = 0; r < mb; r++) {
        const float *xr = x + r * K + g * QK;
        __m256 t = _mm256_mul_ps(_mm256_loadu_ps(xr), w0);
        __m256 u = _mm256_mul_ps(_mm256_loadu_ps(xr + 8), w1);
        t = _mm256_fmadd_ps(_mm256_loadu_ps(xr + 16), w2, t);
        u = _mm256_fmadd_ps(_mm256_loadu_ps(xr + 24), w3, u);
        acc[r] = _mm256_fmadd_ps(_mm256_add_ps(t, u), dv, acc[r]);
    }
}

/* fp16 -> float for n values (8 at a time). */
static inline void halves_to_floats(const uint16_t *h, float *f, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(f + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    for (; i < n; i++) f[i] = half_to_float(h[i]);
}

/* One output row against `mb` rows of x. `mb` is a compile-time constant after inlining, so the accumulators
 * live in registers; up to 2 rows use two sets (even and odd blocks) so consecutive blocks do not wait on each
 * other's FMA (more sets would spill registers). `scratch` holds 2 * G floats. */
static inline __attribute__((always_inline)) void row_dot(
        int fmt, int mb, const float *x, const float *sums, int64_t K, const uint8_t *qs_row,
        const uint16_t *d_row, const uint16_t *m_row, float *out, float *scratch) {
    const int64_t G = K / QK;
    float *dw = scratch, *mw = scratch + G;
    halves_to_floats(d_row, dw, G);
    __m256 acc[MB], acc2[MB];
    for (int r = 0; r < mb; r++) { acc[r] = _mm256_setzero_ps(); acc2[r] = _mm256_setzero_ps(); }
    int64_t g = 0;
    if (mb <= 2)
        for (; g + 1 < G; g += 2) {
            block_step(fmt, mb, x, K, qs_row, dw, g, acc);
            block_step(fmt, mb, x, K, qs_row, dw, g + 1, acc2);
        }
    for (; g < G; g++) block_step(fmt, mb, x, K, qs_row, dw, g, acc);
    for (int r = 0; r < mb; r++) out[r] = hsum(_mm256_add_ps(acc[r], acc2[r]));
    if (fmt == Q4_1) { /* the m term: sum over blocks of m_g * sum(x_g) */
        halves_to_floats(m_row, mw, G);
        for (int r = 0; r < mb; r++) {
            const float *xs = sums + r * G;
            __m256 a = _mm256_setzero_ps();
            int64_t i = 0;
            for (; i + 8 <= G; i += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(mw + i), _mm256_loadu_ps(xs + i), a);
            float t = hsum(a);
            for (; i < G; i++) t += mw[i] * xs[i];
            out[r] += t;
        }
    }
}
#endif

#ifdef __AVX2__
/* float32 weights: one FMA chain per row of x (two for up to 4 rows, so the chains hide the FMA latency
 * without spilling registers); batch-1 decoding reads each weight once from memory. Writes y[r * ldy]. */
static inline __attribute__((always_inline)) void row_dot_f32(int mb, const float *x, int64_t K, const float *w,
                                                              float *y, int64_t ldy) {
    __m256 acc[MB], acc2[MB];
    for (int r = 0; r < mb; r++) acc[r] = acc2[r] = _mm256_setzero_ps();
    int64_t k = 0;
    if (mb <= 4)
        for (; k + 16 <= K; k += 16) {
            const __m256 w0 = _mm256_loadu_ps(w + k), w1 = _mm256_loadu_ps(w + k + 8);
            for (int r = 0; r < mb; r++) {
                acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(x + r * K + k), w0, acc[r]);
                acc2[r] = _mm256_fmadd_ps(_mm256_loadu_ps(x + r * K + k + 8), w1, acc2[r]);
            }
        }
    for (; k + 8 <= K; k += 8) {
        if (mb > 4 && !(k & 15)) /* many rows: the arithmetic per weight slows the stream; fetch the next row early */
            _mm_prefetch((const char *)(w + K + k), _MM_HINT_T0);
        const __m256 w0 = _mm256_loadu_ps(w + k);
        for (int r = 0; r < mb; r++) acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(x + r * K + k), w0, acc[r]);
    }
    for (int r = 0; r < mb; r++) {
        float t = hsum(mb <= 4 ? _mm256_add_ps(acc[r], acc2[r]) : acc[r]);
        for (int64_t j = k; j < K; j++) t += x[r * K + j] * w[j];
        y[r * ldy] = t;
    }
}

/* y[M, N] = x[M, K] @ W[N, K]^T, float32, MB rows of x per pass: one parallel loop per row count, so the
 * accumulators are registers (this loop is ~13% faster than dispatching on the count per output). */
static void matmul_f32(const float *x, int64_t M, int64_t K, const float *w, int64_t N, float *y, int nthreads) {
    for (int64_t m0 = 0; m0 < M; m0 += MB) {
        const int mb = (int)(M - m0 < MB ? M - m0 : MB);
        const float *xb = x + m0 * K;
        float *yb = y + m0 * N;
        switch (mb) {
#define CASE(B) case B: {                                                                              \
            _Pragma("omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)")         \
            for (int64_t n = 0; n < N; n++) row_dot_f32(B, xb, K, w + n * K, yb + n, N);               \
            break; }
            CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
#undef CASE
        }
    }
}
#endif

/* y[M, N] = x[M, K] @ W[N, K]^T for W in format `fmt`; OpenMP over output rows, MB rows of x per pass. */
static void matmul(int fmt, const float *x, int64_t M, int64_t K, const void *w, const uint16_t *d,
                   const uint16_t *m, int64_t N, float *y, int nthreads, int simd) {
#ifdef __AVX2__
    if (fmt == F32 && simd) {
        matmul_f32(x, M, K, w, N, y, nthreads);
        return;
    }
#endif
    const int64_t G = K / QK, row_bytes = fmt == Q4_1 ? K / 2 : fmt == Q8_0 ? K : K * 4;
    const uint8_t *qs = w;
    float *sums = malloc(sizeof(float) * MB * (G + 1));
    for (int64_t m0 = 0; m0 < M; m0 += MB) {
        const int mb = (int)(M - m0 < MB ? M - m0 : MB);
        const float *xb = x + m0 * K;
        if (fmt == Q4_1) block_sums(xb, mb, K, sums);
        #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
        {
        float *scratch = malloc(sizeof(float) * 2 * (G + 1));
        #pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            float out[MB];
            const uint8_t *qrow = qs + n * row_bytes;
            const uint16_t *mrow = fmt == Q4_1 ? m + n * G : 0, *drow = fmt == F32 ? 0 : d + n * G;
#ifdef __AVX2__
            if (simd) {
                switch (mb) { /* one specialised loop per batch size */
#define CASE(B) case B: { if (fmt == Q4_1) row_dot(Q4_1, B, xb, sums, K, qrow, drow, mrow, out, scratch); \
                        else row_dot(Q8_0, B, xb, sums, K, qrow, drow, mrow, out, scratch); } break;
                    CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
#undef CASE
                }
            } else
#endif
                row_dot_scalar(fmt, mb, xb, sums, K, qrow, drow, mrow, out);
            for (int r = 0; r < mb; r++) y[(m0 + r) * N + n] = out[r];
        }
        free(scratch);
        }
    }
    free(sums);
    (void)simd;
}

/* The products for Python (quant.py, tests): fmt 0 float32 (w [N, K] floats), 1 q8_0, 2 q4_1 (w = qs; d, m the
 * fp16 scales and mins, NULL where the format has none). simd = 0 forces the portable loop (tests compare). */
void gq_matmul(int fmt, const float *x, int64_t M, int64_t K, const void *w, const uint16_t *d, const uint16_t *m,
               int64_t N, float *y, int nthreads, int simd) {
    matmul(fmt, x, M, K, w, d, m, N, y, nthreads, simd);
}

/* The float32 matrix out [N, K] the blocks stand for: long prefills multiply it with the float GEMM, which
 * beats the kernels above once x has more than a few dozen rows. */
void gq_dequantize(int is_q4, const uint8_t *qs, const uint16_t *d, const uint16_t *m, int64_t N, int64_t K,
                   float *out, int nthreads) {
    const int64_t G = K / QK, row_bytes = is_q4 ? K / 2 : K;
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int64_t n = 0; n < N; n++)
        for (int64_t g = 0; g < G; g++) {
            float *o = out + n * K + g * QK;
            decode_block(is_q4 ? Q4_1 : Q8_0, qs + n * row_bytes, g, o);
            const float dv = half_to_float(d[n * G + g]), mv = is_q4 ? half_to_float(m[n * G + g]) : 0.f;
            for (int j = 0; j < QK; j++) o[j] = o[j] * dv + mv;
        }
}

/* ------------------------------------------------------------------------------ normalisation, SwiGLU */
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

/* y[r] = x[r] * rstd(r) * w, rstd = 1 / sqrt(mean(x[r]^2) + eps), for `rows` rows of width D (contiguous);
 * rstd_out (may be NULL) receives rstd per row, for the backward. */
static void rms_rows(const float *x, const float *w, float *y, float *rstd_out, int64_t rows, int64_t D, float eps) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * D;
        float *yr = y + r * D;
        const float rstd = 1.f / sqrtf(dot(xr, xr, D) / (float)D + eps);
        if (rstd_out) rstd_out[r] = rstd;
        for (int64_t i = 0; i < D; i++) yr[i] = xr[i] * rstd * w[i];
    }
}

#define PAR_MIN 32768 /* elements below which a pass stays on one thread (an OpenMP region costs microseconds) */

void gq_rms_norm(const float *x, const float *w, float *y, float *rstd_out, int64_t rows, int64_t D, float eps,
                 int nthreads) {
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && rows * D >= PAR_MIN)
    for (int64_t r = 0; r < rows; r++) rms_rows(x + r * D, w, y + r * D, rstd_out ? rstd_out + r : NULL, 1, D, eps);
}

#ifdef _OPENMP
#include <omp.h>
static int thread_id(void) { return omp_get_thread_num(); }
#else
static int thread_id(void) { return 0; }
#endif

/* Sums per-thread partial rows part[t * n + j] over t into out[j] (in thread order: deterministic). */
static void reduce_partials(const float *part, int nthreads, int64_t n, float *out) {
    for (int64_t j = 0; j < n; j++) {
        float t = 0.f;
        for (int k = 0; k < nthreads; k++) t += part[k * n + j];
        out[j] = t;
    }
}

/* RMSNorm backward (closed form, as model/norms.py): dx = rstd * (g w - x rstd^2 mean(g w x)),
 * dw = sum over rows of g x rstd (dw may be NULL). */
void gq_rms_norm_backward(const float *x, const float *w, const float *rstd, const float *g, float *dx, float *dw,
                          int64_t rows, int64_t D, int nthreads) {
    if (!(nthreads > 1 && rows * D >= PAR_MIN)) nthreads = 1;
    float *part = dw ? calloc((size_t)nthreads * D, sizeof(float)) : NULL;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        float *pw = part ? part + (int64_t)thread_id() * D : NULL;
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            const float *xr = x + r * D, *gr = g + r * D;
            const float rs = rstd[r];
            const float coef = dot3(gr, xr, w, D) * rs * rs * rs / (float)D;
            for (int64_t i = 0; i < D; i++) dx[r * D + i] = gr[i] * w[i] * rs - xr[i] * coef;
            if (pw)
                for (int64_t i = 0; i < D; i++) pw[i] += gr[i] * xr[i] * rs;
        }
    }
    if (dw) reduce_partials(part, nthreads, D, dw);
    free(part);
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

/* SwiGLU on the fused projection h [rows, 2I] = [gate | up]: out [rows, I] = silu(gate) * up. */
void gq_swiglu(const float *h, float *out, int64_t rows, int64_t I, int nthreads) {
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && rows * I >= PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *g = h + r * 2 * I, *u = g + I;
        float *o = out + r * I;
        int64_t i = 0;
#ifdef __AVX2__
        for (; i + 8 <= I; i += 8) {
            const __m256 gv = _mm256_loadu_ps(g + i);
            _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_mul_ps(gv, sigmoid8(gv)), _mm256_loadu_ps(u + i)));
        }
#endif
        for (; i < I; i++) o[i] = g[i] / (1.f + exp_neg(g[i])) * u[i];
    }
}

/* Its backward from h and grad [rows, I]: grad_h [rows, 2I] = [grad * up * silu'(gate) | grad * silu(gate)],
 * silu'(x) = s (1 + x (1 - s)), s = sigmoid(x). */
void gq_swiglu_backward(const float *h, const float *grad, float *grad_h, int64_t rows, int64_t I, int nthreads) {
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && rows * I >= PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *g = h + r * 2 * I, *u = g + I, *go = grad + r * I;
        float *dg = grad_h + r * 2 * I, *du = dg + I;
        int64_t i = 0;
#ifdef __AVX2__
        const __m256 one = _mm256_set1_ps(1.f);
        for (; i + 8 <= I; i += 8) {
            __m256 e;
            const __m256 gv = _mm256_loadu_ps(g + i), s = sigmoid8_e(gv, &e), gov = _mm256_loadu_ps(go + i);
            _mm256_storeu_ps(du + i, _mm256_mul_ps(gov, _mm256_mul_ps(gv, s)));
            const __m256 d = _mm256_mul_ps(s, _mm256_fmadd_ps(gv, _mm256_mul_ps(e, s), one));
            _mm256_storeu_ps(dg + i, _mm256_mul_ps(_mm256_mul_ps(gov, _mm256_loadu_ps(u + i)), d));
        }
#endif
        for (; i < I; i++) {
            const float e = exp_neg(g[i]), s = 1.f / (1.f + e);
            du[i] = go[i] * g[i] * s;
            dg[i] = go[i] * u[i] * (s * (1.f + g[i] * (e * s)));
        }
    }
}

/* GELU, tanh approximation (GPT), as x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3) (= 0.5 x (1 + tanh u)),
 * over n contiguous floats; the backward recomputes the sigmoid from x:
 * d/dx = s + x s (1 - s) 2 sqrt(2/pi) (1 + 3 0.044715 x^2), with 1 - s taken as e^-z s (no cancellation). */
#define GELU_C 1.5957691216057308f /* 2 sqrt(2 / pi) */
#define GELU_K 0.044715f

/* out = gelu(x) when g is NULL, else the backward out = g * gelu'(x). */
void gq_gelu(const float *x, const float *g, float *out, int64_t n, int nthreads) {
    const int64_t chunk = 4096;
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && n >= PAR_MIN)
    for (int64_t c0 = 0; c0 < n; c0 += chunk) {
        const int64_t end = c0 + chunk < n ? c0 + chunk : n;
        int64_t i = c0;
#ifdef __AVX2__
        const __m256 c = _mm256_set1_ps(GELU_C), ck = _mm256_set1_ps(GELU_C * GELU_K);
        const __m256 ck3 = _mm256_set1_ps(3.f * GELU_C * GELU_K);
        for (; i + 8 <= end; i += 8) {
            const __m256 v = _mm256_loadu_ps(x + i), v2 = _mm256_mul_ps(v, v);
            __m256 e;
            const __m256 s = sigmoid8_e(_mm256_mul_ps(v, _mm256_fmadd_ps(v2, ck, c)), &e);
            if (!g) {
                _mm256_storeu_ps(out + i, _mm256_mul_ps(v, s));
                continue;
            }
            const __m256 dz = _mm256_fmadd_ps(v2, ck3, c);  /* dz/dx */
            const __m256 d = _mm256_fmadd_ps(_mm256_mul_ps(v, _mm256_mul_ps(s, _mm256_mul_ps(e, s))), dz, s);
            _mm256_storeu_ps(out + i, _mm256_mul_ps(d, _mm256_loadu_ps(g + i)));
        }
#endif
        for (; i < end; i++) {
            const float v = x[i], z = v * (GELU_C + GELU_C * GELU_K * v * v);
            const float e = exp_neg(z), s = 1.f / (1.f + e);
            out[i] = g ? g[i] * (s + v * s * (e * s) * (GELU_C + 3.f * GELU_C * GELU_K * v * v)) : v * s;
        }
    }
}

/* -------------------------------------------------------------------------------------- QK-norm + RoPE */
/* Queries/keys x [B, T, H, D] (heads contiguous, row (b, t) at x + (b T + t) xs: a view into the fused QKV
 * output) -> y [B, T, H, D] contiguous: per head an optional RMSNorm with weight w [H, D] (Qwen3's QK-norm;
 * w NULL: none, rstd unused), then the rotation y = z cos + swap_halves(z) sin with the tables' rows
 * cos/sin + b cbs + t D (cbs 0: shared by the batch; sine pre-signed, model/rope.py). rstd [B, T, H] out. */
void gq_norm_rope(const float *x, int64_t xs, const float *cos, const float *sin, int64_t cbs, const float *w,
                  float *y, float *rstd, int64_t B, int64_t T, int64_t H, int64_t D, float eps, int nthreads) {
    const int64_t half = D / 2;
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && B * T * H * D >= PAR_MIN)
    for (int64_t bt = 0; bt < B * T; bt++) {
        const float *c = cos + (bt / T) * cbs + (bt % T) * D, *s = sin + (bt / T) * cbs + (bt % T) * D;
        float z[D];
        for (int64_t h = 0; h < H; h++) {
            const float *v = x + bt * xs + h * D;
            float *out = y + (bt * H + h) * D;
            if (w) {
                const float r = 1.f / sqrtf(dot(v, v, D) / (float)D + eps);
                rstd[bt * H + h] = r;
                for (int64_t i = 0; i < D; i++) z[i] = v[i] * r * w[h * D + i];
            } else {
                memcpy(z, v, sizeof(float) * D);
            }
            for (int64_t i = 0; i < half; i++) out[i] = z[i] * c[i] + z[i + half] * s[i];
            for (int64_t i = half; i < D; i++) out[i] = z[i] * c[i] + z[i - half] * s[i];
        }
    }
}

/* Its backward: gy [B, T, H, D] contiguous -> gx [B, T, H, D] contiguous and, when w and gw, gw [H, D]
 * (summed over B, T). The rotation's transpose: gz_j = gy_j c_j + gy_j' s_j' (j' the partner in the other
 * half); the norm's: gx = rstd (gz w - xhat mean(gz w xhat)), xhat = x rstd. */
void gq_norm_rope_backward(const float *x, int64_t xs, const float *cos, const float *sin, int64_t cbs,
                           const float *w, const float *rstd, const float *gy, float *gx, float *gw, int64_t B,
                           int64_t T, int64_t H, int64_t D, int nthreads) {
    const int64_t half = D / 2;
    if (!(nthreads > 1 && B * T * H * D >= PAR_MIN)) nthreads = 1;
    float *part = (w && gw) ? calloc((size_t)nthreads * H * D, sizeof(float)) : NULL;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        float *pw = part ? part + (int64_t)thread_id() * H * D : NULL;
        float gz[D];
        #pragma omp for schedule(static)
        for (int64_t bt = 0; bt < B * T; bt++) {
            const float *c = cos + (bt / T) * cbs + (bt % T) * D, *s = sin + (bt / T) * cbs + (bt % T) * D;
            for (int64_t h = 0; h < H; h++) {
                const float *g = gy + (bt * H + h) * D, *v = x + bt * xs + h * D;
                float *out = gx + (bt * H + h) * D;
                for (int64_t i = 0; i < half; i++) gz[i] = g[i] * c[i] + g[i + half] * s[i + half];
                for (int64_t i = half; i < D; i++) gz[i] = g[i] * c[i] + g[i - half] * s[i - half];
                if (!w) { memcpy(out, gz, sizeof(float) * D); continue; }
                const float r = rstd[bt * H + h], *wh = w + h * D;
                const float coef = dot3(gz, wh, v, D) * r / (float)D;  /* mean(gz w xhat) */
                for (int64_t i = 0; i < D; i++) out[i] = r * (gz[i] * wh[i] - v[i] * r * coef);
                if (pw)
                    for (int64_t i = 0; i < D; i++) pw[h * D + i] += gz[i] * v[i] * r;
            }
        }
    }
    if (part) reduce_partials(part, nthreads, H * D, gw);
    free(part);
}

/* ------------------------------------------------------------------------------ causal self-attention */
/* Training-time attention of short sequences (T <= 1024), forward and backward, for one (batch, KV head) at a
 * time: the T x T scores of a head are materialised (they fit the L2 cache), only the lower triangle is
 * computed, and every product is one register-tiled loop (tile_gemm). torch's CPU flash attention processes
 * such shapes at a fraction of the FMA rate and computes masked blocks it then discards. Same results as
 * softmax(Q K^T / sqrt(d) + causal mask) V up to summation order; the backward recomputes the scores from the
 * saved log-sum-exp per row, as flash attention does. */
#define TM 4 /* rows of C per register tile */

/* C[i, j] (+)= sum_k A[i lda + k ask] B[k ldb + j], i < M, j < N, over the k range `tri` allows for the tile's
 * first row i0: 0 all k < K; 1 (C lower-triangular) all k, columns j < i0 + TM rounded up to 8 (the callers
 * ignore j > i); 2 (A lower-triangular) k < i0 + TM; 3 (A upper-triangular) k >= i0. */
static void tile_gemm(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, int64_t ask, const float *B,
                      int64_t ldb, float *C, int64_t ldc, int tri, int accumulate) {
    for (int64_t i0 = 0; i0 < M; i0 += TM) {
        const int64_t mi = M - i0 < TM ? M - i0 : TM;
        int64_t n_hi = N, k_lo = 0, k_hi = K;
        if (tri == 1) { n_hi = (i0 + TM + 7) / 8 * 8; n_hi = n_hi < N ? n_hi : N; }
        if (tri == 2) k_hi = i0 + TM < K ? i0 + TM : K;
        if (tri == 3) k_lo = i0;
        int64_t j = 0;
#ifdef __AVX2__
        if (mi == TM) {
            for (; j + 16 <= n_hi; j += 16) {
                __m256 c[TM][2];
                for (int r = 0; r < TM; r++) c[r][0] = c[r][1] = _mm256_setzero_ps();
                for (int64_t k = k_lo; k < k_hi; k++) {
                    const float *bk = B + k * ldb + j, *ak = A + i0 * lda + k * ask;
                    const __m256 b0 = _mm256_loadu_ps(bk), b1 = _mm256_loadu_ps(bk + 8);
                    for (int r = 0; r < TM; r++) {
                        const __m256 a = _mm256_broadcast_ss(ak + r * lda);
                        c[r][0] = _mm256_fmadd_ps(a, b0, c[r][0]);
                        c[r][1] = _mm256_fmadd_ps(a, b1, c[r][1]);
                    }
                }
                for (int r = 0; r < TM; r++) {
                    float *cr = C + (i0 + r) * ldc + j;
                    if (accumulate) {
                        c[r][0] = _mm256_add_ps(c[r][0], _mm256_loadu_ps(cr));
                        c[r][1] = _mm256_add_ps(c[r][1], _mm256_loadu_ps(cr + 8));
                    }
                    _mm256_storeu_ps(cr, c[r][0]);
                    _mm256_storeu_ps(cr + 8, c[r][1]);
                }
            }
            for (; j + 8 <= n_hi; j += 8) {
                __m256 c[TM];
                for (int r = 0; r < TM; r++) c[r] = _mm256_setzero_ps();
                for (int64_t k = k_lo; k < k_hi; k++) {
                    const __m256 b0 = _mm256_loadu_ps(B + k * ldb + j);
                    for (int r = 0; r < TM; r++)
                        c[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(A + (i0 + r) * lda + k * ask), b0, c[r]);
                }
                for (int r = 0; r < TM; r++) {
                    float *cr = C + (i0 + r) * ldc + j;
                    _mm256_storeu_ps(cr, accumulate ? _mm256_add_ps(c[r], _mm256_loadu_ps(cr)) : c[r]);
                }
            }
        }
#endif
        for (; j < n_hi; j++)
            for (int64_t r = 0; r < mi; r++) {
                float t = 0.f;
                for (int64_t k = k_lo; k < k_hi; k++) t += A[(i0 + r) * lda + k * ask] * B[k * ldb + j];
                float *cr = C + (i0 + r) * ldc + j;
                *cr = accumulate ? *cr + t : t;
            }
    }
}

/* Row i of the scores S (T x T, scaled by `scale` here) -> probabilities exp(S - lse) for j <= i, zeros after.
 * lse_in NULL: compute the row's log-sum-exp into *lse_out (forward); else use it (backward recompute). */
static void softmax_row(float *s, int64_t i, int64_t T, float scale, const float *lse_in, float *lse_out) {
    const int64_t n = i + 1;
    float m;
    if (lse_in) {
        m = *lse_in;
    } else {
        m = -INFINITY;
        int64_t j = 0;
#ifdef __AVX2__
        __m256 vmax = _mm256_set1_ps(-INFINITY);
        for (; j + 8 <= n; j += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(s + j));
        float lanes[8];
        _mm256_storeu_ps(lanes, vmax);
        for (int l = 0; l < 8; l++) m = lanes[l] > m ? lanes[l] : m;
#endif
        for (; j < n; j++) m = s[j] > m ? s[j] : m;
        m *= scale; /* scale > 0: the max of the scaled row */
    }
    float sum = 0.f;
    int64_t j = 0;
#ifdef __AVX2__
    const __m256 vs = _mm256_set1_ps(scale), vm = _mm256_set1_ps(m);
    __m256 acc = _mm256_setzero_ps();
    for (; j + 8 <= n; j += 8) {
        const __m256 e = exp8(_mm256_fmsub_ps(_mm256_loadu_ps(s + j), vs, vm));
        _mm256_storeu_ps(s + j, e);
        acc = _mm256_add_ps(acc, e);
    }
    sum = hsum(acc);
#endif
    for (; j < n; j++) { s[j] = expf(s[j] * scale - m); sum += s[j]; }
    for (j = n; j < T; j++) s[j] = 0.f;
    if (!lse_in) {
        const float inv = 1.f / sum;
        for (j = 0; j < n; j++) s[j] *= inv;
        *lse_out = m + logf(sum);
    }
}

/* kt[dd T + t] = rows[t rs + dd]: a head's keys (or values) as [d, T], the layout the score products read. */
static void transpose_head(const float *rows, int64_t rs, int64_t T, int64_t d, float *kt) {
    for (int64_t t = 0; t < T; t++)
        for (int64_t dd = 0; dd < d; dd++) kt[dd * T + t] = rows[t * rs + dd];
}

/* q [B, T, hq, d], k and v [B, T, hk, d], row (b, t) of each at base + (b T + t) * stride (heads contiguous);
 * o [B, T, hq, d] contiguous, lse [B, hq, T]. Query head h reads KV head h / (hq / hk). */
void gq_attention_forward(const float *q, int64_t qs, const float *k, int64_t ks, const float *v, int64_t vs,
                          float *o, float *lse, int64_t B, int64_t T, int64_t hq, int64_t hk, int64_t d,
                          int nthreads) {
    const int64_t group = hq / hk;
    const float scale = 1.f / sqrtf((float)d);
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        float *P = malloc(sizeof(float) * T * T), *kt = malloc(sizeof(float) * d * T);
        #pragma omp for schedule(static)
        for (int64_t bg = 0; bg < B * hk; bg++) {
            const int64_t b = bg / hk, g = bg % hk;
            const float *kb = k + b * T * ks + g * d, *vb = v + b * T * vs + g * d;
            transpose_head(kb, ks, T, d, kt);
            for (int64_t h = g * group; h < (g + 1) * group; h++) {
                const float *qb = q + b * T * qs + h * d;
                float *ob = o + (b * T * hq + h) * d, *lb = lse + (b * hq + h) * T;
                tile_gemm(T, T, d, qb, qs, 1, kt, T, P, T, 1, 0);            /* S = Q K^T */
                for (int64_t i = 0; i < T; i++) softmax_row(P + i * T, i, T, scale, NULL, lb + i);
                tile_gemm(T, d, T, P, T, 1, vb, vs, ob, hq * d, 2, 0);       /* O = P V */
            }
        }
        free(P); free(kt);
    }
}

/* The backward: go (dO) and o [B, T, hq, d] contiguous; dq [B, T, hq, d], dk and dv [B, T, hk, d] contiguous
 * (overwritten). Per head: P from the saved lse, dP = dO V^T, dS = P (dP - rowsum(dO o)) / sqrt(d),
 * dV += P^T dO, dK += dS^T Q, dQ = dS K (the KV gradients summed over the heads that share them). */
void gq_attention_backward(const float *q, int64_t qs, const float *k, int64_t ks, const float *v, int64_t vs,
                           const float *o, const float *lse, const float *go, float *dq, float *dk, float *dv,
                           int64_t B, int64_t T, int64_t hq, int64_t hk, int64_t d, int nthreads) {
    const int64_t group = hq / hk;
    const float scale = 1.f / sqrtf((float)d);
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        float *P = malloc(sizeof(float) * T * T), *dS = malloc(sizeof(float) * T * T);
        float *kt = malloc(sizeof(float) * d * T), *vt = malloc(sizeof(float) * d * T), *D = malloc(sizeof(float) * T);
        #pragma omp for schedule(static)
        for (int64_t bg = 0; bg < B * hk; bg++) {
            const int64_t b = bg / hk, g = bg % hk;
            const float *kb = k + b * T * ks + g * d, *vb = v + b * T * vs + g * d;
            float *dkb = dk + (b * T * hk + g) * d, *dvb = dv + (b * T * hk + g) * d;
            transpose_head(kb, ks, T, d, kt);
            transpose_head(vb, vs, T, d, vt);
            for (int64_t t = 0; t < T; t++) {
                memset(dkb + t * hk * d, 0, sizeof(float) * d);
                memset(dvb + t * hk * d, 0, sizeof(float) * d);
            }
            for (int64_t h = g * group; h < (g + 1) * group; h++) {
                const float *qb = q + b * T * qs + h * d, *ob = o + (b * T * hq + h) * d;
                const float *gob = go + (b * T * hq + h) * d, *lb = lse + (b * hq + h) * T;
                float *dqb = dq + (b * T * hq + h) * d;
                const int64_t rs = hq * d; /* row stride of o, go, dq */
                tile_gemm(T, T, d, qb, qs, 1, kt, T, P, T, 1, 0);
                for (int64_t i = 0; i < T; i++) {
                    softmax_row(P + i * T, i, T, scale, lb + i, NULL);
                    D[i] = dot(gob + i * rs, ob + i * rs, d);
                }
                tile_gemm(T, T, d, gob, rs, 1, vt, T, dS, T, 1, 0);          /* dP = dO V^T */
                for (int64_t i = 0; i < T; i++) {
                    float *ds = dS + i * T;
                    const float *pr = P + i * T;
                    for (int64_t j = 0; j <= i; j++) ds[j] = pr[j] * (ds[j] - D[i]) * scale;
                    for (int64_t j = i + 1; j < T; j++) ds[j] = 0.f;
                }
                tile_gemm(T, d, T, P, 1, T, gob, rs, dvb, hk * d, 3, 1);     /* dV += P^T dO */
                tile_gemm(T, d, T, dS, 1, T, qb, qs, dkb, hk * d, 3, 1);     /* dK += dS^T Q */
                tile_gemm(T, d, T, dS, T, 1, kb, ks, dqb, rs, 2, 0);         /* dQ = dS K */
            }
        }
        free(P); free(dS); free(kt); free(vt); free(D);
    }
}

/* ------------------------------------------------------------------------------------- decode step */
/* One decode step of a whole pre-norm model in one call — Llama/Qwen layout (RMSNorm, RoPE, GQA with optional
 * QKV bias and QK-norm, SwiGLU) or GPT-2 layout (LayerNorm, learned positions, GELU, biases): a token per
 * sequence in, logits out. The PyTorch forward computes the same
 * thing (gptqwen/model); a step there is ~400 small ops whose Python and dispatch overhead (~8 ms on SmolLM2)
 * rivals the products themselves at batch 1. Products go through matmul() above (float32 or block weights).
 * The KV cache is the model's own (`KVCache`: [n_layer, B, n_kv_head, max_len, head_dim] float32), so
 * prefill (PyTorch) and decode (here) share it; row b attends to slots starts[b]..fill (left padding). */
typedef struct {
    int64_t fmt, N, K;      /* fmt: F32, Q8_0 or Q4_1 */
    const void *w;          /* float [N, K], or the blocks' qs */
    const uint16_t *d, *m;  /* fp16 scales (q8_0, q4_1) and mins (q4_1) per block, else NULL */
    const float *bias;      /* [N] or NULL */
} gq_linear;

typedef struct {
    gq_linear qkv, proj, up, down;    /* qkv rows: [q heads | k heads | v heads]; up: [gate | up] (SwiGLU) or fc */
    const float *ln1, *ln2;           /* norm weights [dim] */
    const float *ln1_b, *ln2_b;       /* LayerNorm biases [dim]; NULL: RMSNorm */
    const float *q_norm, *k_norm;     /* QK-norm weights [head_dim], or NULL */
} gq_layer;

typedef struct {
    int64_t n_layer, dim, n_head, n_kv_head, head_dim, inter, vocab, gelu;  /* gelu 0: SwiGLU MLP */
    float eps, qk_eps;
    const float *embed;  /* [vocab, dim] */
    const float *wpe;    /* learned positions [max_len, dim], or NULL: RoPE tables passed to the step */
    const float *ln_f, *ln_f_b;
    gq_linear head;
    const gq_layer *layers;
} gq_model;

/* RMSNorm rows, or LayerNorm rows when b is given (two-pass mean and biased variance, as torch). */
static void norm_rows(const float *x, const float *w, const float *b, float *y, int64_t rows, int64_t D, float eps) {
    if (!b) {
        rms_rows(x, w, y, NULL, rows, D, eps);
        return;
    }
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * D;
        float *yr = y + r * D, mean = 0.f, var = 0.f;
        for (int64_t i = 0; i < D; i++) mean += xr[i];
        mean /= (float)D;
        for (int64_t i = 0; i < D; i++) var += (xr[i] - mean) * (xr[i] - mean);
        const float rstd = 1.f / sqrtf(var / (float)D + eps);
        for (int64_t i = 0; i < D; i++) yr[i] = (xr[i] - mean) * rstd * w[i] + b[i];
    }
}

static void linear(const gq_linear *L, const float *x, int64_t M, float *y, int nthreads, int simd) {
    matmul((int)L->fmt, x, M, L->K, L->w, L->d, L->m, L->N, y, nthreads, simd);
    if (L->bias)
        for (int64_t r = 0; r < M; r++)
            for (int64_t n = 0; n < L->N; n++) y[r * L->N + n] += L->bias[n];
}

/* In place: v = v * cos + swap_halves(v) * sin, the tables' sine pre-signed as [-sin, sin] (model/rope.py). */
static void rope(float *v, const float *cos, const float *sin, int64_t hd, float *tmp) {
    const int64_t half = hd / 2;
    memcpy(tmp, v, sizeof(float) * hd);
    for (int64_t i = 0; i < hd; i++) v[i] = tmp[i] * cos[i] + tmp[(i + half) % hd] * sin[i];
}

void gq_decode_step(const gq_model *M, int64_t B, const int64_t *tokens, const int64_t *positions,
                    const int64_t *starts, int64_t fill, const float *cos, const float *sin, float *k_cache,
                    float *v_cache, int64_t max_len, float *logits, int nthreads, int simd) {
    const int64_t D = M->dim, hq = M->n_head, hk = M->n_kv_head, hd = M->head_dim, I = M->inter;
    const int64_t QKV = (hq + 2 * hk) * hd, S = fill + 1, group = hq / hk;
    const float scale = 1.f / sqrtf((float)hd);
    float *x = malloc(sizeof(float) * B * D), *h = malloc(sizeof(float) * B * D);
    float *qkv = malloc(sizeof(float) * B * QKV), *att = malloc(sizeof(float) * B * hq * hd);
    float *gu = malloc(sizeof(float) * B * 2 * I), *act = malloc(sizeof(float) * B * I);
    float *tmp = malloc(sizeof(float) * hd);
    for (int64_t b = 0; b < B; b++) {
        memcpy(x + b * D, M->embed + tokens[b] * D, sizeof(float) * D);
        if (M->wpe)
            for (int64_t i = 0; i < D; i++) x[b * D + i] += M->wpe[positions[b] * D + i];
    }
    for (int64_t l = 0; l < M->n_layer; l++) {
        const gq_layer *L = M->layers + l;
        norm_rows(x, L->ln1, L->ln1_b, h, B, D, M->eps);
        linear(&L->qkv, h, B, qkv, nthreads, simd);
        for (int64_t b = 0; b < B; b++) {
            for (int64_t j = 0; j < hq + hk && cos; j++) { /* q and k heads: QK-norm, then RoPE */
                float *v = qkv + b * QKV + j * hd;
                const float *w = j < hq ? L->q_norm : L->k_norm;
                if (w) rms_rows(v, w, v, NULL, 1, hd, M->qk_eps);
                rope(v, cos + positions[b] * hd, sin + positions[b] * hd, hd, tmp);
            }
            for (int64_t j = 0; j < hk; j++) { /* this token's keys and values into slot `fill` */
                const int64_t slot = (((l * B + b) * hk + j) * max_len + fill) * hd;
                memcpy(k_cache + slot, qkv + b * QKV + (hq + j) * hd, sizeof(float) * hd);
                memcpy(v_cache + slot, qkv + b * QKV + (hq + hk + j) * hd, sizeof(float) * hd);
            }
        }
        #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && B * hq * S * hd >= 65536)
        for (int64_t bh = 0; bh < B * hq; bh++) {
            const int64_t b = bh / hq, j = bh % hq, start = starts[b];
            const float *q = qkv + b * QKV + j * hd;
            const int64_t base = ((l * B + b) * hk + j / group) * max_len * hd;
            const float *K = k_cache + base, *V = v_cache + base;
            float *out = att + b * hq * hd + j * hd, *p = malloc(sizeof(float) * S), mx = -INFINITY, sum = 0.f;
            for (int64_t t = start; t < S; t++) {
                p[t] = dot(q, K + t * hd, hd) * scale;
                mx = p[t] > mx ? p[t] : mx;
            }
            int64_t t = start;
#ifdef __AVX2__
            __m256 vsum = _mm256_setzero_ps();
            for (; t + 8 <= S; t += 8) {
                const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p + t), _mm256_set1_ps(mx)));
                _mm256_storeu_ps(p + t, e);
                vsum = _mm256_add_ps(vsum, e);
            }
            sum = hsum(vsum);
#endif
            for (; t < S; t++) { p[t] = expf(p[t] - mx); sum += p[t]; }
            for (int64_t i = 0; i < hd; i++) out[i] = 0.f;
            for (int64_t t = start; t < S; t++) {
                const float pt = p[t] / sum, *vt = V + t * hd;
                for (int64_t i = 0; i < hd; i++) out[i] += pt * vt[i];
            }
            free(p);
        }
        linear(&L->proj, att, B, h, nthreads, simd);
        for (int64_t i = 0; i < B * D; i++) x[i] += h[i];
        norm_rows(x, L->ln2, L->ln2_b, h, B, D, M->eps);
        linear(&L->up, h, B, gu, nthreads, simd);
        if (M->gelu) gq_gelu(gu, NULL, act, B * I, nthreads);
        else gq_swiglu(gu, act, B, I, nthreads);
        linear(&L->down, act, B, h, nthreads, simd);
        for (int64_t i = 0; i < B * D; i++) x[i] += h[i];
    }
    norm_rows(x, M->ln_f, M->ln_f_b, h, B, D, M->eps);
    linear(&M->head, h, B, logits, nthreads, simd);
    free(x); free(h); free(qkv); free(att); free(gu); free(act); free(tmp);
}
