/* RMSNorm, SwiGLU, GELU and QK-norm + RoPE passes, forward and backward (see products.c for the overview). */
#include "common.h"

void gq_rms_norm(const float *x, const float *w, float *y, float *rstd_out, int64_t rows, int64_t D, float eps,
                 int nthreads) {
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && rows * D >= PAR_MIN)
    for (int64_t r = 0; r < rows; r++) rms_rows(x + r * D, w, y + r * D, rstd_out ? rstd_out + r : NULL, 1, D, eps);
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
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && B * T * H * D >= PAR_MIN)
    for (int64_t bt = 0; bt < B * T; bt++) {
        const float *c = cos + (bt / T) * cbs + (bt % T) * D, *s = sin + (bt / T) * cbs + (bt % T) * D;
        float z[D];
        for (int64_t h = 0; h < H; h++) {
            const float *v = x + bt * xs + h * D;
            float *out = y + (bt * H + h) * D;
            if (w) rms_rows(v, w + h * D, z, rstd + bt * H + h, 1, D, eps);
            else memcpy(z, v, sizeof(float) * D);
            rope_rotate(z, c, s, out, D);
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

