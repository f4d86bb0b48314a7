/* Training-time attention of short sequences (T <= 1024), forward and backward, for one (batch, KV head) at a
 * time: the T x T scores of a head are materialised (they fit the L2 cache), only the lower triangle is
 * computed, and every product is one register-tiled loop (tile_gemm). torch's CPU flash attention processes
 * such shapes at a fraction of the FMA rate and computes masked blocks it then discards. Same results as
 * softmax(Q K^T / sqrt(d) + causal mask) V up to summation order; the backward recomputes the scores from the
 * saved log-sum-exp per row, as flash attention does. Entry points (ops/attention.py): gq_attention_forward,
 * gq_attention_backward; both return GQ_ENOMEM when a thread's workspace cannot be allocated. */
#include "common.h"

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
int gq_attention_forward(const float *q, int64_t qs, const float *k, int64_t ks, const float *v, int64_t vs,
                         float *o, float *lse, int64_t B, int64_t T, int64_t hq, int64_t hk, int64_t d,
                         int nthreads) {
    const int64_t group = hq / hk;
    const float scale = 1.f / sqrtf((float)d);
    int failed = 0;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        float *P = malloc(sizeof(float) * T * T), *kt = malloc(sizeof(float) * d * T);
        if (!P || !kt) note_failure(&failed);
        #pragma omp for schedule(static)
        for (int64_t bg = 0; bg < B * hk; bg++) {
            if (!P || !kt) continue;
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
    return failed ? GQ_ENOMEM : GQ_OK;
}

/* The backward: go (dO) and o [B, T, hq, d] contiguous; dq [B, T, hq, d], dk and dv [B, T, hk, d] contiguous
 * (overwritten). Per head: P from the saved lse, dP = dO V^T, dS = P (dP - rowsum(dO o)) / sqrt(d),
 * dV += P^T dO, dK += dS^T Q, dQ = dS K (the KV gradients summed over the heads that share them). */
int gq_attention_backward(const float *q, int64_t qs, const float *k, int64_t ks, const float *v, int64_t vs,
                          const float *o, const float *lse, const float *go, float *dq, float *dk, float *dv,
                          int64_t B, int64_t T, int64_t hq, int64_t hk, int64_t d, int nthreads) {
    const int64_t group = hq / hk;
    const float scale = 1.f / sqrtf((float)d);
    int failed = 0;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        /* one workspace per thread: P and dS [T, T], the head's keys and values transposed [d, T], D [T] */
        float *work = malloc(sizeof(float) * (2 * T * T + 2 * d * T + T));
        if (!work) note_failure(&failed);
        #pragma omp for schedule(static)
        for (int64_t bg = 0; bg < B * hk; bg++) {
            if (!work) continue;
            float *P = work, *dS = P + T * T, *kt = dS + T * T, *vt = kt + d * T, *D = vt + d * T;
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
        free(work);
    }
    return failed ? GQ_ENOMEM : GQ_OK;
}

