/* project_t.h -- concept projection, instantiated for REAL = float / double by project.c. */

/* a_i = LN(a_i) over the m concepts: (a - mean) / sqrt(var + 1e-5), per row */
static void FN(layernorm_rows)(REAL *a, int64_t rows, int m, int nt)
{
    int64_t i;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (i = 0; i < rows; i++) {
        REAL *r = a + i * (int64_t)m;
        double mean = 0.0, var = 0.0;
        for (int j = 0; j < m; j++) mean += r[j];
        mean /= m;
        for (int j = 0; j < m; j++) var += (r[j] - mean) * (r[j] - mean);
        var /= m;
        double inv = 1.0 / sqrt(var + 1e-5);
        for (int j = 0; j < m; j++) r[j] = (REAL)((r[j] - mean) * inv);
    }
}

/* a_ij = (a_ij - mean_j) / std_j */
static void FN(standardize_rows)(REAL *a, int64_t rows, int m, const REAL *mean, const REAL *std,
                                 int nt)
{
    int64_t i;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (i = 0; i < rows; i++) {
        REAL *r = a + i * (int64_t)m;
        for (int j = 0; j < m; j++) r[j] = (r[j] - mean[j]) / std[j];
    }
}

/* out = norm(F unit(P)^T), one GEMM per tile of rows, normalisation fused after it */
int FN(iis_project)(const iis_ctx *ctx, const REAL *f, int64_t n, int d, int64_t ldf,
                    const REAL *unit_p, int m, int norm, const REAL *mean, const REAL *std,
                    REAL *out)
{
    const int64_t tile = 4096;
    int nt = iis_nt_for(ctx, (n < tile ? n : tile) * (int64_t)m);
    if (n < 0 || d < 0 || m < 0 || ldf < d || !iis_fits_int(ldf)) return IIS_EINVAL;
    if (norm == IIS_NORM_STANDARDIZE && (!mean || !std)) return IIS_EINVAL;
    if (norm < IIS_NORM_NONE || norm > IIS_NORM_STANDARDIZE) return IIS_EINVAL;
    if (n == 0 || m == 0) return IIS_OK;
    if (d > 0 && !iis_blas_ok(ctx, IS_DOUBLE)) return IIS_ENOBLAS;
    for (int64_t r0 = 0; r0 < n; r0 += tile) {
        int rows = (int)(n - r0 < tile ? n - r0 : tile);
        REAL *o = out + r0 * (int64_t)m;
        if (d == 0) {
            memset(o, 0, sizeof(REAL) * (size_t)rows * (size_t)m);
        } else {
            /* column-major view: O^T (m x rows) = P (d x m)^T F^T (d x rows) */
            char ta = 'T', tb = 'N';
            int mm = m, nn = rows, kk = d, lda = d, ldb = (int)ldf, ldc = m;
            REAL one = 1, zero = 0;
            GEMM(ctx)(&ta, &tb, &mm, &nn, &kk, &one, unit_p, &lda, f + r0 * ldf, &ldb, &zero, o,
                      &ldc);
        }
        if (norm == IIS_NORM_LAYERNORM) FN(layernorm_rows)(o, rows, m, nt);
        else if (norm == IIS_NORM_STANDARDIZE) FN(standardize_rows)(o, rows, m, mean, std, nt);
        if (iis_interrupted(ctx)) return IIS_EINTR;
    }
    return IIS_OK;
}

/* mean_j = 1/n sum_i a_ij, std_j = sqrt(1/n sum_i (a_ij - mean_j)^2) (1 where 0);
 * row-wise partial sums per fixed chunk, added in chunk order (deterministic) */
int FN(iis_colstats)(const iis_ctx *ctx, const REAL *a, int64_t n, int m, int64_t lda, REAL *mean,
                     REAL *std)
{
    int nt = iis_nt_for(ctx, n * (int64_t)m), c;
    int nch = n < IIS_NCHUNK ? (int)n : IIS_NCHUNK;
    double *part, *mu;
    if (n <= 0 || m < 0 || lda < m) return IIS_EINVAL;
    if (m == 0) return IIS_OK;
    part = (double *)calloc((size_t)nch * (size_t)m * 2 + (size_t)m, sizeof(double));
    if (!part) return IIS_ENOMEM;
    mu = part + (size_t)nch * (size_t)m * 2;
    for (int pass = 0; pass < 2; pass++) {
        double *acc = part + (size_t)pass * (size_t)nch * (size_t)m;
#pragma omp parallel for num_threads(nt) schedule(static)
        for (c = 0; c < nch; c++) {
            int64_t lo, hi;
            double *p = acc + (size_t)c * (size_t)m;
            iis_chunk(n, nch, c, &lo, &hi);
            for (int64_t i = lo; i < hi; i++) {
                const REAL *r = a + i * lda;
                if (pass == 0)
                    for (int j = 0; j < m; j++) p[j] += r[j];
                else
                    for (int j = 0; j < m; j++) p[j] += (r[j] - mu[j]) * (r[j] - mu[j]);
            }
        }
        for (int j = 0; j < m; j++) {
            double t = 0.0;
            for (c = 0; c < nch; c++) t += acc[(size_t)c * (size_t)m + j];
            if (pass == 0) {
                mu[j] = t / (double)n;
                mean[j] = (REAL)mu[j];
            } else {
                double v = sqrt(t / (double)n);
                std[j] = (REAL)(v > 0.0 ? v : 1.0);
            }
        }
    }
    free(part);
    return IIS_OK;
}
