/* The CPU kernels, float32, called through ctypes (gptqwen/ops/_clib.py builds this folder into one library and
 * holds every declaration; gptqwen/ops/ wraps each entry point beside its PyTorch reference):
 *   products.c    — gq_matmul: float32 and block-quantised matrix products (this file), and gq_dequantize;
 *   norms.c       — gq_rms_norm (+ _backward);
 *   activations.c — gq_swiglu (+ _backward), gq_gelu (forward and backward);
 *   rope.c        — gq_norm_rope (+ _backward): QK-norm + RoPE on the query/key heads;
 *                   (the elementwise passes of a training step and of inference, each one pass over the data
 *                   where torch runs several ops: its CPU rms_norm alone is ~8, ~17 us for one 576-wide row)
 *   attention.c   — gq_attention_forward / _backward: causal attention of short sequences, lower triangle only;
 *   decode.c      — gq_decode_step: a whole decode step of a Llama/Qwen- or GPT-2-layout model (ops/decode.py),
 *                   and gq_sizeof_* (the struct sizes the Python mirrors are checked against);
 *   tiles.h       — the register-tiled product for many rows of x (products.c includes it per instruction set);
 *   common.h      — formats, return codes, fp16 conversion, SIMD helpers.
 * Entry points that allocate return GQ_OK or GQ_ENOMEM (common.h); the Python side raises on the latter.
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
 * The activations stay float32, so the result is a float32 product with exactly the dequantised weights, up to
 * summation order — rounding the activations to int8 as well (llama.cpp's way) flipped near-tied answers of a
 * 135M model. Below TILE_ROWS rows of x each weight block is decoded to floats in registers and multiplied there
 * with every row: batch-1 decoding is bound by reading the weights, so fewer bytes per weight is the speed-up.
 * From TILE_ROWS rows the arithmetic dominates: matmul_tiled (tiles.h) dequantises rows of W to float32 once per
 * call and runs a register-tiled product over all rows of x.
 *
 * No Python API or torch headers here: the file builds in about a second with the system C compiler.
 * Threads: OpenMP over output rows; torch's own libgomp is the one loaded in the process, so both share it.
 */
#include "common.h"

#define TILE_ROWS 4 /* rows of x from which matmul_tiled is faster (bench/batch_step.py) */

/* q4_1's m term needs the sum of each block of x: sums[r * G + g]. */
static void block_sums(const float *x, int mb, int64_t K, float *sums) {
    for (int64_t i = 0; i < (int64_t)mb * (K / QK); i++) {
        float s = 0.f;
        for (int j = 0; j < QK; j++) s += x[i * QK + j];
        sums[i] = s;
    }
}

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
/* The 32 values q of block g of a row (unscaled) as 4 x 8 floats, in order. */
static inline __attribute__((always_inline)) void decode_block8(int fmt, const uint8_t *qs_row, int64_t g,
                                                                __m256 *w) {
    if (fmt == Q4_1) { /* the 16 bytes in both halves; lane l takes word l % 4 shifted to the nibble it needs */
        const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(qs_row + g * (QK / 2))));
        const __m256i low = _mm256_set1_epi32(0x0f);
        for (int i = 0; i < 4; i++)
            w[i] = _mm256_cvtepi32_ps(_mm256_and_si256(
                _mm256_srlv_epi32(v, _mm256_setr_epi32(8 * i, 8 * i, 8 * i, 8 * i, 8 * i + 4, 8 * i + 4, 8 * i + 4,
                                                       8 * i + 4)), low));
    } else {
        const int8_t *q = (const int8_t *)qs_row + g * QK;
        for (int i = 0; i < 4; i++)
            w[i] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + 8 * i))));
    }
}

/* AVX2: decode the block's 32 weights to 4 x 8 floats (q, unscaled) once, then for each row of x: four FMAs
 * in two chains, and the block's d scales the sum into the row's accumulator. */
static inline __attribute__((always_inline)) void block_step(
        int fmt, int mb, const float *x, int64_t K, const uint8_t *qs_row, const float *dw, int64_t g,
        __m256 *acc) {
    __m256 w[4];
    decode_block8(fmt, qs_row, g, w);
    const __m256 w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
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

#ifdef __AVX2__
/* Row n of W as float32 into out[K], exactly as gq_dequantize / the PyTorch reference round it: q * d, then + m. */
static void dequant_row(int fmt, const uint8_t *qs_row, const uint16_t *d_row, const uint16_t *m_row, int64_t K,
                        float *out) {
    for (int64_t g = 0; g < K / QK; g++) {
        __m256 w[4];
        decode_block8(fmt, qs_row, g, w);
        const __m256 dv = _mm256_set1_ps(half_to_float(d_row[g]));
        const __m256 mv = _mm256_set1_ps(fmt == Q4_1 ? half_to_float(m_row[g]) : 0.f);
        for (int i = 0; i < 4; i++) _mm256_storeu_ps(out + g * QK + 8 * i, _mm256_add_ps(_mm256_mul_ps(w[i], dv), mv));
    }
}

/* Many rows of x (a decode step of a large batch): the per-row kernels above decode each weight block again
 * for every 8 rows and spend 3 instructions per FMA on loads, scales and the two chains. matmul_tiled instead
 * dequantises a tile of TN rows of W to float32 once per thread (it stays in L1) and multiplies it with every row
 * of x by a TM x TN register tile (tiles.h). It is built twice: for AVX2, and for AVX-512 through a target
 * attribute, taken when the CPU has it (99 vs 86 GFLOP/s at 32 rows on a Xeon with both; measured by
 * bench/batch_step.py). */
#define TILE_NAME(f) f##_avx2
#define TILE_TARGET
#define VEC __m256
#define VW 8
#define TM 4 /* 16 registers: 12 accumulators, 3 rows of W, 1 of x */
#define TN 3
#define VLOAD _mm256_loadu_ps
#define VFMA _mm256_fmadd_ps
#define VZERO _mm256_setzero_ps
#define VHSUM hsum
#include "tiles.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define TILES_AVX512 1
#define TILE_NAME(f) f##_avx512
#define TILE_TARGET __attribute__((target("avx512f")))
#define VEC __m512
#define VW 16
#define TM 4 /* 32 registers: 24 accumulators, 6 rows of W, 1 of x */
#define TN 6
#define VLOAD _mm512_loadu_ps
#define VFMA _mm512_fmadd_ps
#define VZERO _mm512_setzero_ps
#define VHSUM _mm512_reduce_add_ps
#include "tiles.h"
#endif

/* simd 1: the widest the CPU has; 2: AVX2 (tests compare the two) */
static int matmul_tiled(int fmt, const float *x, int64_t M, int64_t K, const void *w, const uint16_t *d,
                        const uint16_t *m, int64_t N, float *y, int nthreads, int simd) {
#ifdef TILES_AVX512
    if (simd == 1 && __builtin_cpu_supports("avx512f"))
        return matmul_tiled_avx512(fmt, x, M, K, w, d, m, N, y, nthreads);
#endif
    return matmul_tiled_avx2(fmt, x, M, K, w, d, m, N, y, nthreads);
}
#endif

/* y[M, N] = x[M, K] @ W[N, K]^T for W in format `fmt`; OpenMP over output rows, MB rows of x per pass. */
static int matmul(int fmt, const float *x, int64_t M, int64_t K, const void *w, const uint16_t *d,
                  const uint16_t *m, int64_t N, float *y, int nthreads, int simd) {
#ifdef __AVX2__
    if (simd && M >= TILE_ROWS) return matmul_tiled(fmt, x, M, K, w, d, m, N, y, nthreads, simd);
    if (fmt == F32 && simd) {
        matmul_f32(x, M, K, w, N, y, nthreads);
        return GQ_OK;
    }
#endif
    const int64_t G = K / QK, row_bytes = fmt == Q4_1 ? K / 2 : fmt == Q8_0 ? K : K * 4;
    const uint8_t *qs = w;
    float *sums = malloc(sizeof(float) * MB * (G + 1));
    int failed = !sums;
    for (int64_t m0 = 0; m0 < M && !failed; m0 += MB) {
        const int mb = (int)(M - m0 < MB ? M - m0 : MB);
        const float *xb = x + m0 * K;
        if (fmt == Q4_1) block_sums(xb, mb, K, sums);
        #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
        {
        float *scratch = malloc(sizeof(float) * 2 * (G + 1));
        if (!scratch) note_failure(&failed);
        #pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            if (!scratch) continue;
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
    return failed ? GQ_ENOMEM : GQ_OK;
}

/* The products for Python (ops/quant.py): fmt 0 float32 (w [N, K] floats), 1 q8_0, 2 q4_1 (w = qs; d, m the
 * fp16 scales and mins, NULL where the format has none). simd = 0 forces the portable loop, 2 AVX2 where AVX-512
 * would be taken (tests compare them). */
int gq_matmul(int fmt, const float *x, int64_t M, int64_t K, const void *w, const uint16_t *d, const uint16_t *m,
              int64_t N, float *y, int nthreads, int simd) {
    return matmul(fmt, x, M, K, w, d, m, N, y, nthreads, simd);
}

/* The float32 matrix out [N, K] the blocks stand for: long prefills multiply it with the float GEMM, which
 * beats the kernels above once x has more than a few dozen rows. */
void gq_dequantize(int is_q4, const uint8_t *qs, const uint16_t *d, const uint16_t *m, int64_t N, int64_t K,
                   float *out, int nthreads) {
    const int fmt = is_q4 ? Q4_1 : Q8_0;
    const int64_t G = K / QK, row_bytes = is_q4 ? K / 2 : K;
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int64_t n = 0; n < N; n++) {
#ifdef __AVX2__
        dequant_row(fmt, qs + n * row_bytes, d + n * G, is_q4 ? m + n * G : 0, K, out + n * K);
#else
        for (int64_t g = 0; g < G; g++) {
            float *o = out + n * K + g * QK;
            decode_block(fmt, qs + n * row_bytes, g, o);
            const float dv = half_to_float(d[n * G + g]), mv = is_q4 ? half_to_float(m[n * G + g]) : 0.f;
            for (int j = 0; j < QK; j++) o[j] = o[j] * dv + mv;
        }
#endif
    }
}
