/* The MLP activations, forward and backward (ops/activations.py; gq_swiglu and gq_gelu also serve the decode
 * step): gq_swiglu, gq_swiglu_backward, gq_gelu (forward, or backward when given the gradient). */
#include "common.h"

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
