/* The tiled product y[M, N] = x[M, K] @ W[N, K]^T for many rows of x, written once for any vector width and
 * included by products.c once per instruction set, which defines first:
 *   TILE_NAME(f)  the name of this instance's functions (f##_avx2, f##_avx512);
 *   TILE_TARGET   a function attribute selecting the instruction set (empty: the file's own flags);
 *   VEC, VW       the vector type and its width in floats; VLOAD, VFMA, VZERO, VHSUM its operations;
 *   TM, TN        rows of x and of W per register tile (TM * TN accumulators + TN + 1 registers must fit).
 * and this file undefines them all at its end. products.c also provides dequant_row.
 *
 * Each thread dequantises TN rows of W to float32 into its own tile (exactly the reference's values: q * d + m)
 * and multiplies them with every row of x, TM at a time: per VW-wide slice of K, TN loads of W and TM of x feed
 * TM * TN FMAs. Each output is one accumulator summed along K in the same order whatever the batch, the tile
 * or the thread count, so a row's result does not depend on what else is in the batch. */

/* out[i * TN + j] = x_i . w_j over K */
static inline TILE_TARGET __attribute__((always_inline)) void TILE_NAME(tile_dot)(
        const float *const *xr, const float *const *wr, int64_t K, float *out) {
    VEC acc[TM][TN];
    for (int i = 0; i < TM; i++)
        for (int j = 0; j < TN; j++) acc[i][j] = VZERO();
    int64_t k = 0;
    for (; k + VW <= K; k += VW) {
        VEC wv[TN];
        for (int j = 0; j < TN; j++) wv[j] = VLOAD(wr[j] + k);
        for (int i = 0; i < TM; i++) {
            const VEC xv = VLOAD(xr[i] + k);
            for (int j = 0; j < TN; j++) acc[i][j] = VFMA(xv, wv[j], acc[i][j]);
        }
    }
    for (int i = 0; i < TM; i++)
        for (int j = 0; j < TN; j++) {
            float t = VHSUM(acc[i][j]);
            for (int64_t kk = k; kk < K; kk++) t += xr[i][kk] * wr[j][kk];
            out[i * TN + j] = t;
        }
}

static TILE_TARGET int TILE_NAME(matmul_tiled)(int fmt, const float *x, int64_t M, int64_t K, const void *w,
                                               const uint16_t *d, const uint16_t *m, int64_t N, float *y,
                                               int nthreads) {
    const int64_t G = K / QK, row_bytes = fmt == Q4_1 ? K / 2 : K;
    int failed = 0;
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
    float *tile = fmt == F32 ? NULL : malloc(sizeof(float) * TN * K);
    if (fmt != F32 && !tile) note_failure(&failed);
    #pragma omp for schedule(static)
    for (int64_t t = 0; t < (N + TN - 1) / TN; t++) {
        if (fmt != F32 && !tile) continue;
        const int64_t n0 = t * TN;
        const int nn = (int)(N - n0 < TN ? N - n0 : TN);
        const float *wr[TN], *xr[TM];
        for (int j = 0; j < TN; j++) { /* a short last tile repeats its first row; those outputs are dropped */
            const int64_t n = n0 + (j < nn ? j : 0);
            if (fmt == F32) {
                wr[j] = (const float *)w + n * K;
            } else {
                if (j < nn) dequant_row(fmt, (const uint8_t *)w + n * row_bytes, d + n * G, m ? m + n * G : 0, K,
                                        tile + j * K);
                wr[j] = tile + (j < nn ? j : 0) * K;
            }
        }
        for (int64_t m0 = 0; m0 < M; m0 += TM) { /* likewise a short last group of rows of x */
            const int mm = (int)(M - m0 < TM ? M - m0 : TM);
            float out[TM * TN];
            for (int i = 0; i < TM; i++) xr[i] = x + (m0 + (i < mm ? i : 0)) * K;
            TILE_NAME(tile_dot)(xr, wr, K, out);
            for (int i = 0; i < mm; i++)
                for (int j = 0; j < nn; j++) y[(m0 + i) * N + n0 + j] = out[i * TN + j];
        }
    }
    free(tile);
    }
    return failed ? GQ_ENOMEM : GQ_OK;
}

#undef TILE_NAME
#undef TILE_TARGET
#undef VEC
#undef VW
#undef TM
#undef TN
#undef VLOAD
#undef VFMA
#undef VZERO
#undef VHSUM
