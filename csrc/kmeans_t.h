/* kmeans_t.h -- k-means++ seeding and Lloyd iterations, instantiated for REAL by kmeans.c. */

/* dist_i = min(dist_i, ||x_i - c||^2) for one centre c */
static void FN(update_mind)(const REAL *x, int64_t n, int d, const REAL *c, double *mind, int nt)
{
    int64_t i;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (i = 0; i < n; i++) {
        const REAL *xi = x + i * (int64_t)d;
        double s = 0.0;
        for (int j = 0; j < d; j++) {
            double t = (double)xi[j] - (double)c[j];
            s += t * t;
        }
        if (s < mind[i]) mind[i] = s;
    }
}

/* labels_i = argmin_c ||x_i - c||^2 (ties: lower c), via one GEMM per tile;
 * dist_i receives the minimum. Checks the interrupt hook between tiles (IIS_EINTR). */
static int FN(assign)(const iis_ctx *ctx, const REAL *x, int64_t n, int d, const REAL *cen, int k,
                       const double *xn, const double *cn, REAL *tilebuf, int64_t tile,
                       int32_t *labels, double *dist)
{
    /* tiles in parallel, each a single-threaded GEMM into its own buffer (nt x tile x k) */
    int nt = iis_nt_for(ctx, n * (int64_t)d * k / 32);
    int64_t ntiles = (n + tile - 1) / tile, t;
    int stop = 0;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (t = 0; t < ntiles; t++) {
        int halt;
#pragma omp atomic read
        halt = stop;
        if (halt) continue; /* Ctrl-C: skip the remaining tiles */
        REAL *buf = tilebuf + (size_t)iis_thread_num() * (size_t)tile * (size_t)k;
        int64_t r0 = t * tile;
        int rows = (int)(n - r0 < tile ? n - r0 : tile);
        /* column-major view: T^T (k x rows) = C (d x k)^T X^T (d x rows) */
        char ta = 'T', tb = 'N';
        int mm = k, nn = rows, kk = d, lda = d, ldb = d, ldc = k;
        REAL one = 1, zero = 0;
        GEMM(ctx)(&ta, &tb, &mm, &nn, &kk, &one, cen, &lda, x + r0 * d, &ldb, &zero, buf, &ldc);
        for (int i = 0; i < rows; i++) {
            const REAL *tr = buf + (int64_t)i * k;
            double best = 0.0;
            int bi = 0;
            for (int c = 0; c < k; c++) {
                double v = xn[r0 + i] - 2.0 * (double)tr[c] + cn[c];
                if (c == 0 || v < best) {
                    best = v;
                    bi = c;
                }
            }
            labels[r0 + i] = bi;
            dist[r0 + i] = best > 0.0 ? best : 0.0;
        }
        if (iis_thread_num() == 0 && t + 1 < ntiles && iis_interrupted(ctx)) {
            /* thread 0 is the calling thread, which may take the GIL */
#pragma omp atomic write
            stop = 1;
        }
    }
    return stop ? IIS_EINTR : IIS_OK;
}

int FN(iis_kmeans)(const iis_ctx *ctx, const REAL *x, int64_t n, int d, int k, uint64_t seed,
                   int max_iter, double tol, REAL *centers, int32_t *labels, double *inertia,
                   int *n_iter)
{
    const int64_t tile = n < 1024 ? (n > 0 ? n : 1) : 1024; /* per-thread buffers of tile x k */
    int nt = iis_nt_for(ctx, n * (int64_t)d), err = IIS_OK, it = 0;
    uint64_t rng = seed;
    double *mind = NULL, *xn = NULL, *cn = NULL, *sums = NULL, tolv = 0.0;
    REAL *tilebuf = NULL;
    int64_t *count = NULL, *order = NULL, *start = NULL;
    if (n < 1 || d < 1 || k < 1 || k > n || max_iter < 0 || !iis_fits_int(n)) return IIS_EINVAL;
    if (!iis_blas_ok(ctx, IS_DOUBLE)) return IIS_ENOBLAS;
    mind = (double *)malloc(sizeof(double) * (size_t)n);
    xn = (double *)malloc(sizeof(double) * (size_t)n);
    cn = (double *)malloc(sizeof(double) * (size_t)k);
    sums = (double *)malloc(sizeof(double) * (size_t)k * (size_t)d);
    tilebuf = (REAL *)malloc(sizeof(REAL) * (size_t)iis_nthreads(ctx) * (size_t)tile * (size_t)k);
    count = (int64_t *)malloc(sizeof(int64_t) * (size_t)k);
    start = (int64_t *)malloc(sizeof(int64_t) * ((size_t)k + 1));
    order = (int64_t *)malloc(sizeof(int64_t) * (size_t)n);
    if (!mind || !xn || !cn || !sums || !tilebuf || !count || !start || !order) {
        err = IIS_ENOMEM;
        goto cleanup;
    }
    {
        int64_t i;
        double mean_var = 0.0;
#pragma omp parallel for num_threads(nt) schedule(static)
        for (i = 0; i < n; i++) {
            const REAL *xi = x + i * (int64_t)d;
            double s = 0.0;
            for (int j = 0; j < d; j++) s += (double)xi[j] * xi[j];
            xn[i] = s;
        }
        /* tol is relative to the mean per-feature variance (scikit-learn's rule) */
        for (int j = 0; j < d; j++) {
            double mu = 0.0, v = 0.0;
            for (i = 0; i < n; i++) mu += x[i * d + j];
            mu /= (double)n;
            for (i = 0; i < n; i++) v += (x[i * d + j] - mu) * (x[i * d + j] - mu);
            mean_var += v / (double)n;
        }
        tolv = tol * mean_var / d;
    }
    /* k-means++: first centre uniform, then each with probability ~ D^2 */
    {
        int64_t first = (int64_t)(iis_rng_uniform(&rng) * (double)n);
        if (first >= n) first = n - 1;
        memcpy(centers, x + first * d, sizeof(REAL) * (size_t)d);
        for (int64_t i = 0; i < n; i++) mind[i] = INFINITY;
        FN(update_mind)(x, n, d, centers, mind, nt);
        for (int c = 1; c < k; c++) {
            double total = 0.0, r, acc = 0.0;
            int64_t pick = -1;
            for (int64_t i = 0; i < n; i++) total += mind[i];
            r = iis_rng_uniform(&rng) * total;
            for (int64_t i = 0; i < n; i++) {
                acc += mind[i];
                if (mind[i] > 0.0 && acc >= r) {
                    pick = i;
                    break;
                }
            }
            if (pick < 0) { /* all remaining mass is zero: take the farthest (ties: first) */
                pick = 0;
                for (int64_t i = 1; i < n; i++)
                    if (mind[i] > mind[pick]) pick = i;
            }
            memcpy(centers + (size_t)c * d, x + pick * d, sizeof(REAL) * (size_t)d);
            FN(update_mind)(x, n, d, centers + (size_t)c * d, mind, nt);
            if ((c & 15) == 0 && iis_interrupted(ctx)) {
                err = IIS_EINTR;
                goto cleanup;
            }
        }
    }
    /* Lloyd */
    for (it = 0; it < max_iter; it++) {
        double shift = 0.0;
        int c;
        for (c = 0; c < k; c++) {
            double s = 0.0;
            for (int j = 0; j < d; j++) s += (double)centers[(size_t)c * d + j] * centers[(size_t)c * d + j];
            cn[c] = s;
        }
        if ((err = FN(assign)(ctx, x, n, d, centers, k, xn, cn, tilebuf, tile, labels, mind)) != IIS_OK)
            goto cleanup;
        /* counting sort of the rows by label: deterministic per-cluster sums */
        memset(count, 0, sizeof(int64_t) * (size_t)k);
        for (int64_t i = 0; i < n; i++) count[labels[i]]++;
        start[0] = 0;
        for (c = 0; c < k; c++) start[c + 1] = start[c] + count[c];
        for (c = 0; c < k; c++) count[c] = start[c];
        for (int64_t i = 0; i < n; i++) order[count[labels[i]]++] = i;
        /* per-cluster shifts go to cn (recomputed before its next use) and are
         * added in cluster order: an OpenMP reduction would make the stopping
         * test depend on the thread count */
#pragma omp parallel for num_threads(nt) schedule(dynamic, 4)
        for (c = 0; c < k; c++) {
            double *sc = sums + (size_t)c * d, sh = 0.0;
            int64_t cnt = start[c + 1] - start[c];
            memset(sc, 0, sizeof(double) * (size_t)d);
            cn[c] = 0.0;
            if (cnt == 0) continue;
            for (int64_t r = start[c]; r < start[c + 1]; r++) {
                const REAL *xi = x + order[r] * d;
                for (int j = 0; j < d; j++) sc[j] += xi[j];
            }
            for (int j = 0; j < d; j++) {
                double nv = sc[j] / (double)cnt;
                double t = nv - (double)centers[(size_t)c * d + j];
                sh += t * t;
                centers[(size_t)c * d + j] = (REAL)nv;
            }
            cn[c] = sh;
        }
        for (c = 0; c < k; c++) shift += cn[c];
        /* empty clusters: move to the row farthest from its centre (ties: first) */
        for (c = 0; c < k; c++) {
            if (start[c + 1] - start[c] > 0) continue;
            int64_t far = 0;
            for (int64_t i = 1; i < n; i++)
                if (mind[i] > mind[far]) far = i;
            memcpy(centers + (size_t)c * d, x + far * d, sizeof(REAL) * (size_t)d);
            mind[far] = 0.0;
            shift = INFINITY;
        }
        if (iis_interrupted(ctx)) {
            err = IIS_EINTR;
            goto cleanup;
        }
        if (shift <= tolv) {
            it++;
            break;
        }
    }
    /* final assignment and inertia against the final centres */
    for (int c = 0; c < k; c++) {
        double s = 0.0;
        for (int j = 0; j < d; j++) s += (double)centers[(size_t)c * d + j] * centers[(size_t)c * d + j];
        cn[c] = s;
    }
    if ((err = FN(assign)(ctx, x, n, d, centers, k, xn, cn, tilebuf, tile, labels, mind)) != IIS_OK)
        goto cleanup;
    {
        double tot = 0.0;
        for (int64_t i = 0; i < n; i++) tot += mind[i];
        if (inertia) *inertia = tot;
    }
    if (n_iter) *n_iter = it;
cleanup:
    free(mind);
    free(xn);
    free(cn);
    free(sums);
    free(tilebuf);
    free(count);
    free(start);
    free(order);
    return err;
}
