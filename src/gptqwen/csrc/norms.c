/* RMSNorm over the last dim, forward and backward (the training step and inference; ops/norms.py):
 *   gq_rms_norm, gq_rms_norm_backward. */
#include "common.h"

void gq_rms_norm(const float *x, const float *w, float *y, float *rstd_out, int64_t rows, int64_t D, float eps,
                 int nthreads) {
    #pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && rows * D >= PAR_MIN)
    for (int64_t r = 0; r < rows; r++) rms_rows(x + r * D, w, y + r * D, rstd_out ? rstd_out + r : NULL, 1, D, eps);
}

/* RMSNorm backward (closed form; ops/norms.py holds the formula it replaces): dx = rstd * (g w - x rstd^2 mean(g w x)),
 * dw = sum over rows of g x rstd (dw may be NULL). */
int gq_rms_norm_backward(const float *x, const float *w, const float *rstd, const float *g, float *dx, float *dw,
                         int64_t rows, int64_t D, int nthreads) {
    if (!(nthreads > 1 && rows * D >= PAR_MIN)) nthreads = 1;
    float *part = dw ? calloc((size_t)nthreads * D, sizeof(float)) : NULL;
    if (dw && !part) return GQ_ENOMEM;
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
    return GQ_OK;
}
