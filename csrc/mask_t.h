/* mask_t.h -- per-row top-k by magnitude, instantiated for REAL by mask.c. */

/* The k-th largest entry of v[0..m) (1 <= k <= m), by quickselect on the values
 * themselves (no index indirection, so the inner loops are plain compares). v is
 * reordered: afterwards v[0..k) >= v[k-1] >= v[k..m). */
static REAL FN(kth_largest)(REAL *v, int m, int k)
{
    int lo = 0, hi = m - 1, target = k - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2, i = lo, j = hi;
        REAL a = v[lo], b = v[mid], c = v[hi], piv, t;
        /* median of three */
        piv = a > b ? (b > c ? b : (a > c ? c : a)) : (a > c ? a : (b > c ? c : b));
        while (i <= j) { /* descending Hoare partition */
            while (v[i] > piv) i++;
            while (v[j] < piv) j--;
            if (i <= j) {
                t = v[i]; v[i] = v[j]; v[j] = t;
                i++;
                j--;
            }
        }
        if (target <= j) hi = j;
        else if (target >= i) lo = i;
        else break; /* v[j+1..i-1] all equal piv */
    }
    return v[target];
}

/* For one row: the kept columns in ascending order (idx), their (masked)
 * values (val), or the whole masked row (dense, when not NULL). The top k by
 * |a| with ties to the lower index: everything above tau = the k-th largest
 * |a|, then the first columns equal to tau until k are kept. mag is scratch of
 * m entries. */
IIS_HOT static void FN(topk_row)(const REAL *r, int m, int k, int soft, REAL *mag, int32_t *idx,
                         REAL *val, REAL *dense)
{
    REAL tau, tsoft = 0;
    int c = 0, eq;
    if (k >= m || k == 0) {
        for (int j = 0; j < m; j++) {
            if (dense) dense[j] = k ? r[j] : 0;
            else if (k) { idx[j] = j; val[j] = r[j]; }
        }
        return;
    }
    for (int j = 0; j < m; j++) mag[j] = FABS(r[j]);
    tau = FN(kth_largest)(mag, m, k);
    if (soft) { /* the (k+1)-th largest |a|: the largest of the rest */
        tsoft = mag[k];
        for (int j = k + 1; j < m; j++) tsoft = mag[j] > tsoft ? mag[j] : tsoft;
    }
    eq = k;
    for (int j = 0; j < m; j++) eq -= FABS(r[j]) > tau;
    for (int j = 0; j < m; j++) {
        REAL a = FABS(r[j]), v;
        int keep = a > tau || (a == tau && eq-- > 0);
        if (!keep) {
            if (dense) dense[j] = 0;
            continue;
        }
        if (soft) {
            REAL d = a - tsoft;
            v = d > 0 ? (r[j] > 0 ? d : -d) : 0;
        } else {
            v = r[j];
        }
        if (dense) dense[j] = v;
        else {
            idx[c] = j;
            val[c] = v;
        }
        c++;
    }
}

static int FN(topk_any)(const iis_ctx *ctx, const REAL *a, int64_t n, int m, int64_t lda, int k,
                        int soft, int32_t *idx, REAL *val, REAL *dense)
{
    int nt = iis_nt_for(ctx, n * (int64_t)m);
    int64_t i;
    REAL *mag;
    if (n < 0 || m < 0 || k < 0 || k > m || lda < m) return IIS_EINVAL;
    if (n == 0 || m == 0) return IIS_OK;
    /* per-thread scratch, allocated before the parallel region */
    mag = (REAL *)malloc(sizeof(REAL) * (size_t)m * (size_t)nt);
    if (!mag) return IIS_ENOMEM;
#pragma omp parallel num_threads(nt)
    {
#ifdef _OPENMP
        int t = omp_get_thread_num();
#else
        int t = 0;
#endif
        REAL *mg = mag + (size_t)t * m;
#pragma omp for schedule(static)
        for (i = 0; i < n; i++) {
            const REAL *r = a + i * lda;
            if (dense) FN(topk_row)(r, m, k, soft, mg, NULL, NULL, dense + i * (int64_t)m);
            else FN(topk_row)(r, m, k, soft, mg, idx + i * (int64_t)k, val + i * (int64_t)k, NULL);
        }
    }
    free(mag);
    return IIS_OK;
}

int FN(iis_topk)(const iis_ctx *ctx, const REAL *a, int64_t n, int m, int64_t lda, int k, int soft,
                 int32_t *idx, REAL *val)
{
    return FN(topk_any)(ctx, a, n, m, lda, k, soft, idx, val, NULL);
}

int FN(iis_mask_dense)(const iis_ctx *ctx, const REAL *a, int64_t n, int m, int64_t lda, int k,
                       int soft, REAL *out)
{
    return FN(topk_any)(ctx, a, n, m, lda, k, soft, NULL, NULL, out);
}

