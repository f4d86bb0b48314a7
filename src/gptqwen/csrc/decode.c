/* One decode step of a whole pre-norm model in one call — Llama/Qwen layout (RMSNorm, RoPE, GQA with optional
 * QKV bias and QK-norm, SwiGLU) or GPT-2 layout (LayerNorm, learned positions, GELU, biases): a token per
 * sequence in, logits out. The PyTorch forward computes the same thing (gptqwen/model); a
 * step there is ~400 small ops whose Python and dispatch overhead (~8 ms on SmolLM2) rivals the products
 * themselves at batch 1. Products go through gq_matmul (products.c: float32 or block weights).
 * The KV cache is the model's own (`KVCache`: [n_layer, B, n_kv_head, max_len, head_dim] float32), so
 * prefill (PyTorch) and decode (here) share it; row b attends to slots starts[b]..fill (left padding).
 * Entry points (ops/decode.py): gq_decode_step, and gq_sizeof_linear / _layer / _model, which ops/_clib.py compares
 * with its ctypes mirrors of the structs below when it loads the library. */
#include "common.h"

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

size_t gq_sizeof_linear(void) { return sizeof(gq_linear); }
size_t gq_sizeof_layer(void) { return sizeof(gq_layer); }
size_t gq_sizeof_model(void) { return sizeof(gq_model); }

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

static int linear(const gq_linear *L, const float *x, int64_t M, float *y, int nthreads, int simd) {
    if (gq_matmul((int)L->fmt, x, M, L->K, L->w, L->d, L->m, L->N, y, nthreads, simd) != GQ_OK) return GQ_ENOMEM;
    if (L->bias)
        for (int64_t r = 0; r < M; r++)
            for (int64_t n = 0; n < L->N; n++) y[r * L->N + n] += L->bias[n];
    return GQ_OK;
}

/* Returns GQ_ENOMEM (cache and logits then undefined) when a work buffer cannot be allocated. */
int gq_decode_step(const gq_model *M, int64_t B, const int64_t *tokens, const int64_t *positions,
                   const int64_t *starts, int64_t fill, const float *cos, const float *sin, float *k_cache,
                   float *v_cache, int64_t max_len, float *logits, int nthreads, int simd) {
    const int64_t D = M->dim, hq = M->n_head, hk = M->n_kv_head, hd = M->head_dim, I = M->inter;
    const int64_t QKV = (hq + 2 * hk) * hd, S = fill + 1, group = hq / hk;
    const float scale = 1.f / sqrtf((float)hd);
    const int nt = nthreads > 1 ? nthreads : 1;
    float *x = malloc(sizeof(float) * B * D), *h = malloc(sizeof(float) * B * D);
    float *qkv = malloc(sizeof(float) * B * QKV), *att = malloc(sizeof(float) * B * hq * hd);
    float *gu = malloc(sizeof(float) * B * 2 * I), *act = malloc(sizeof(float) * B * I);
    float *tmp = malloc(sizeof(float) * hd), *probs = malloc(sizeof(float) * nt * S); /* a row of scores per thread */
    int rc = (x && h && qkv && att && gu && act && tmp && probs) ? GQ_OK : GQ_ENOMEM;
    if (rc != GQ_OK) goto done;
    for (int64_t b = 0; b < B; b++) {
        memcpy(x + b * D, M->embed + tokens[b] * D, sizeof(float) * D);
        if (M->wpe)
            for (int64_t i = 0; i < D; i++) x[b * D + i] += M->wpe[positions[b] * D + i];
    }
    for (int64_t l = 0; l < M->n_layer; l++) {
        const gq_layer *L = M->layers + l;
        norm_rows(x, L->ln1, L->ln1_b, h, B, D, M->eps);
        if ((rc = linear(&L->qkv, h, B, qkv, nthreads, simd)) != GQ_OK) goto done;
        for (int64_t b = 0; b < B; b++) {
            for (int64_t j = 0; j < hq + hk && cos; j++) { /* q and k heads: QK-norm, then RoPE */
                float *v = qkv + b * QKV + j * hd;
                const float *w = j < hq ? L->q_norm : L->k_norm;
                if (w) rms_rows(v, w, v, NULL, 1, hd, M->qk_eps);
                memcpy(tmp, v, sizeof(float) * hd);
                rope_rotate(tmp, cos + positions[b] * hd, sin + positions[b] * hd, v, hd);
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
            float *out = att + b * hq * hd + j * hd, *p = probs + (int64_t)thread_id() * S, mx = -INFINITY, sum = 0.f;
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
        }
        if ((rc = linear(&L->proj, att, B, h, nthreads, simd)) != GQ_OK) goto done;
        for (int64_t i = 0; i < B * D; i++) x[i] += h[i];
        norm_rows(x, L->ln2, L->ln2_b, h, B, D, M->eps);
        if ((rc = linear(&L->up, h, B, gu, nthreads, simd)) != GQ_OK) goto done;
        if (M->gelu) gq_gelu(gu, NULL, act, B * I, nthreads);
        else gq_swiglu(gu, act, B, I, nthreads);
        if ((rc = linear(&L->down, act, B, h, nthreads, simd)) != GQ_OK) goto done;
        for (int64_t i = 0; i < B * D; i++) x[i] += h[i];
    }
    norm_rows(x, M->ln_f, M->ln_f_b, h, B, D, M->eps);
    rc = linear(&M->head, h, B, logits, nthreads, simd);
done:
    free(x); free(h); free(qkv); free(att); free(gu); free(act); free(tmp); free(probs);
    return rc;
}
