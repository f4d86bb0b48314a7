/* QK-norm + RoPE on the query/key heads, forward and backward (ops/rope.py): gq_norm_rope, gq_norm_rope_backward. */
#include "common.h"

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
int gq_norm_rope_backward(const float *x, int64_t xs, const float *cos, const float *sin, int64_t cbs,
                          const float *w, const float *rstd, const float *gy, float *gx, float *gw, int64_t B,
                          int64_t T, int64_t H, int64_t D, int nthreads) {
    const int64_t half = D / 2;
    if (!(nthreads > 1 && B * T * H * D >= PAR_MIN)) nthreads = 1;
    float *part = (w && gw) ? calloc((size_t)nthreads * H * D, sizeof(float)) : NULL;
    if (w && gw && !part) return GQ_ENOMEM;
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
    return GQ_OK;
}
