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

/* max |x| over rows x rows of d entries (ld ldx); NaN if any entry is NaN or +-Inf */
IIS_HOT static double FN(absmax_rows)(const REAL *x, int64_t rows, int d, int64_t ldx)
{
    REAL mx = 0, zero = 0; /* zero stays 0 unless an entry is NaN or +-Inf (x - x) */
    for (int64_t i = 0; i < rows; i++) {
        const REAL *r = x + i * ldx;
#pragma omp simd reduction(max : mx) reduction(+ : zero)
        for (int j = 0; j < d; j++) {
            REAL v = r[j] < 0 ? -r[j] : r[j];
            mx = v > mx ? v : mx;
            zero += r[j] - r[j];
        }
    }
    return zero != 0 ? (double)NAN : (double)mx;
}

/* out = norm(F unit(P)^T): tiles of rows run in parallel, each one single-threaded
 * BLAS GEMM into its slice of out followed by the normalisation while it is in cache */
int FN(iis_project)(const iis_ctx *ctx, const REAL *f, int64_t n, int d, int64_t ldf,
                    const REAL *unit_p, int m, int norm, const REAL *mean, const REAL *std,
                    REAL *out, double *absmax)
{
    const int64_t tile = 1024;
    int nt = iis_nt_for(ctx, n * (int64_t)m * (d > 0 ? d : 1) / 32);
    int64_t ntiles;
    double *tmax = NULL; /* per-tile max |F| when the caller asks for the input check */
    if (n < 0 || d < 0 || m < 0 || ldf < d || !iis_fits_int(ldf)) return IIS_EINVAL;
    if (norm == IIS_NORM_STANDARDIZE && (!mean || !std)) return IIS_EINVAL;
    if (norm < IIS_NORM_NONE || norm > IIS_NORM_STANDARDIZE) return IIS_EINVAL;
    if (absmax) *absmax = 0.0;
    if (n == 0 || m == 0) return IIS_OK;
    if (d > 0 && !iis_blas_ok(ctx, IS_DOUBLE)) return IIS_ENOBLAS;
    ntiles = (n + tile - 1) / tile;
    if (absmax && !(tmax = (double *)malloc(sizeof(double) * (size_t)ntiles))) return IIS_ENOMEM;
    {
        /* one parallel region, tiles handed out one by one (no idle thread at the end of
         * each of several rounds); Ctrl-C is looked at before every tile */
        iis_poll pl = {0, 0.0};
        int64_t t;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
        for (t = 0; t < ntiles; t++) {
            int64_t r0 = t * tile;
            if (iis_team_interrupted(ctx, &pl)) continue;
            int rows = (int)(n - r0 < tile ? n - r0 : tile);
            REAL *o = out + r0 * (int64_t)m;
            /* the input check first: it streams the tile from memory into cache, where
             * the GEMM then finds it */
            if (tmax) tmax[t] = FN(absmax_rows)(f + r0 * ldf, rows, d, ldf);
            if (d == 0) {
                memset(o, 0, sizeof(REAL) * (size_t)rows * (size_t)m);
            } else {
                /* column-major view: O^T (m x rows) = P (d x m)^T F^T (d x rows) */
                char ta = 'T', tb = 'N';
                int mm = m, nn = rows, kk = d, lda = d, ldb = (int)ldf, ldc = m;
                REAL one = 1, zero = 0;
                GEMM(ctx)(&ta, &tb, &mm, &nn, &kk, &one, unit_p, &lda, f + r0 * ldf, &ldb, &zero,
                          o, &ldc);
            }
            if (norm == IIS_NORM_LAYERNORM) FN(layernorm_rows)(o, rows, m, 1);
            else if (norm == IIS_NORM_STANDARDIZE) FN(standardize_rows)(o, rows, m, mean, std, 1);
        }
        if (pl.stop) {
            free(tmax);
            return IIS_EINTR;
        }
    }
    if (absmax) { /* a max: the same whatever order the tiles ran in */
        double mx = 0.0;
        for (int64_t t = 0; t < ntiles; t++) {
            if (tmax[t] != tmax[t]) {
                mx = tmax[t];
                break;
            }
            mx = tmax[t] > mx ? tmax[t] : mx;
        }
        *absmax = mx;
        free(tmax);
    }
    return IIS_OK;
}

/* mean_j = 1/n sum_i a_ij, std_j = sqrt(1/n sum_i (a_ij - mean_j)^2) (1 where 0);
 * row-wise partial sums per fixed chunk, added in chunk order (deterministic).
 * A column whose entries all equal its first one gets exactly that mean and std 1:
 * the rounded mean of a constant 0.1 column is off by an ulp, which gave a std of
 * 1e-17 and standardised values of +-1 instead of 0. */
int FN(iis_colstats)(const iis_ctx *ctx, const REAL *a, int64_t n, int m, int64_t lda, REAL *mean,
                     REAL *std)
{
    int nt = iis_nt_for(ctx, n * (int64_t)m), c;
    int nch = n < IIS_NCHUNK ? (int)n : IIS_NCHUNK;
    size_t sec = (size_t)nch * (size_t)m;
    double *part, *mu;
    if (n <= 0 || m < 0 || lda < m) return IIS_EINVAL;
    if (m == 0) return IIS_OK;
    part = (double *)calloc(sec * 3 + (size_t)m, sizeof(double));
    if (!part) return IIS_ENOMEM;
    mu = part + sec * 3;
    for (int pass = 0; pass < 2; pass++) {
        double *acc = part + (size_t)pass * sec, *dif = part + 2 * sec;
#pragma omp parallel for num_threads(nt) schedule(static)
        for (c = 0; c < nch; c++) {
            int64_t lo, hi;
            double *p = acc + (size_t)c * (size_t)m, *q = dif + (size_t)c * (size_t)m;
            iis_chunk(n, nch, c, &lo, &hi);
            for (int64_t i = lo; i < hi; i++) {
                const REAL *r = a + i * lda;
                if (pass == 0)
                    for (int j = 0; j < m; j++) {
                        p[j] += r[j];
                        q[j] += r[j] != a[j]; /* entries that differ from row 0 */
                    }
                else
                    for (int j = 0; j < m; j++) p[j] += (r[j] - mu[j]) * (r[j] - mu[j]);
            }
        }
        for (int j = 0; j < m; j++) {
            double t = 0.0, nd = 0.0;
            for (c = 0; c < nch; c++) t += acc[(size_t)c * (size_t)m + j];
            for (c = 0; c < nch; c++) nd += dif[(size_t)c * (size_t)m + j];
            if (pass == 0) {
                mu[j] = nd == 0.0 ? (double)a[j] : t / (double)n;
                mean[j] = (REAL)mu[j];
            } else {
                double v = sqrt(t / (double)n);
                std[j] = (REAL)(v > 0.0 && nd > 0.0 ? v : 1.0);
            }
        }
    }
    free(part);
    return IIS_OK;
}
