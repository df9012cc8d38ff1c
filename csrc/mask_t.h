/* mask_t.h -- per-row top-k by magnitude, instantiated for REAL by mask.c. */

/* j ranks before i: |a_j| > |a_i|, ties to the lower index (a strict total order) */
#define BEFORE(r, j, i) (FABS((r)[j]) > FABS((r)[i]) || (FABS((r)[j]) == FABS((r)[i]) && (j) < (i)))

/* Reorder ord[0..m) so that its first k entries are the k top-ranked columns of
 * row r (quickselect with median-of-three pivots; deterministic). */
static void FN(select_top)(const REAL *r, int32_t *ord, int m, int k)
{
    int lo = 0, hi = m - 1;
    while (hi > lo) {
        int mid = lo + (hi - lo) / 2, i, j;
        int32_t t, piv;
        /* median of three to ord[mid] */
        if (BEFORE(r, ord[mid], ord[lo])) { t = ord[mid]; ord[mid] = ord[lo]; ord[lo] = t; }
        if (BEFORE(r, ord[hi], ord[lo])) { t = ord[hi]; ord[hi] = ord[lo]; ord[lo] = t; }
        if (BEFORE(r, ord[hi], ord[mid])) { t = ord[hi]; ord[hi] = ord[mid]; ord[mid] = t; }
        piv = ord[mid];
        i = lo;
        j = hi;
        while (i <= j) {
            while (BEFORE(r, ord[i], piv)) i++;
            while (BEFORE(r, piv, ord[j])) j--;
            if (i <= j) {
                t = ord[i]; ord[i] = ord[j]; ord[j] = t;
                i++;
                j--;
            }
        }
        /* now ord[lo..j] rank before-or-equal piv, ord[i..hi] after-or-equal */
        if (k - 1 <= j) hi = j;
        else if (k - 1 >= i) lo = i;
        else break;
    }
}

/* For one row: the kept columns in ascending order (idx), their (masked)
 * values (val). mark is scratch of m bytes, ord scratch of m ints. */
static void FN(topk_row)(const REAL *r, int m, int k, int soft, int32_t *ord, unsigned char *mark,
                         int32_t *idx, REAL *val)
{
    REAL tau = 0;
    int c = 0;
    if (k >= m) {
        for (int j = 0; j < m; j++) { idx[j] = j; val[j] = r[j]; }
        return;
    }
    if (k == 0) return;
    for (int j = 0; j < m; j++) ord[j] = j;
    FN(select_top)(r, ord, m, k);
    memset(mark, 0, (size_t)m);
    for (int j = 0; j < k; j++) mark[ord[j]] = 1;
    if (soft) { /* tau = the (k+1)-th largest |a| = max over the rest */
        int best = ord[k];
        for (int j = k + 1; j < m; j++)
            if (BEFORE(r, ord[j], best)) best = ord[j];
        tau = FABS(r[best]);
    }
    for (int j = 0; j < m; j++) {
        if (!mark[j]) continue;
        idx[c] = j;
        if (soft) {
            REAL mag = FABS(r[j]) - tau;
            val[c] = mag > 0 ? (r[j] > 0 ? mag : -mag) : 0;
        } else {
            val[c] = r[j];
        }
        c++;
    }
}

static int FN(topk_any)(const iis_ctx *ctx, const REAL *a, int64_t n, int m, int64_t lda, int k,
                        int soft, int32_t *idx, REAL *val, REAL *dense)
{
    int nt = iis_nt_for(ctx, n * (int64_t)m), err = 0;
    int64_t i;
    int32_t *ord;
    unsigned char *mark;
    int32_t *ridx;
    REAL *rval;
    if (n < 0 || m < 0 || k < 0 || k > m || lda < m) return IIS_EINVAL;
    if (n == 0 || m == 0) return IIS_OK;
    /* per-thread scratch, allocated before the parallel region */
    ord = (int32_t *)malloc(sizeof(int32_t) * (size_t)m * (size_t)nt);
    mark = (unsigned char *)malloc((size_t)m * (size_t)nt);
    ridx = dense ? (int32_t *)malloc(sizeof(int32_t) * (size_t)m * (size_t)nt) : NULL;
    rval = dense ? (REAL *)malloc(sizeof(REAL) * (size_t)m * (size_t)nt) : NULL;
    if (!ord || !mark || (dense && (!ridx || !rval))) {
        err = IIS_ENOMEM;
        goto cleanup;
    }
#pragma omp parallel num_threads(nt)
    {
#ifdef _OPENMP
        int t = omp_get_thread_num();
#else
        int t = 0;
#endif
        int32_t *o = ord + (size_t)t * m;
        unsigned char *mk = mark + (size_t)t * m;
#pragma omp for schedule(static)
        for (i = 0; i < n; i++) {
            const REAL *r = a + i * lda;
            if (dense) {
                int32_t *ri = ridx + (size_t)t * m;
                REAL *rv = rval + (size_t)t * m;
                REAL *out = dense + i * (int64_t)m;
                FN(topk_row)(r, m, k, soft, o, mk, ri, rv);
                memset(out, 0, sizeof(REAL) * (size_t)m);
                for (int j = 0; j < k; j++) out[ri[j]] = rv[j];
            } else {
                FN(topk_row)(r, m, k, soft, o, mk, idx + i * (int64_t)k, val + i * (int64_t)k);
            }
        }
    }
cleanup:
    free(ord);
    free(mark);
    free(ridx);
    free(rval);
    return err;
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

#undef BEFORE
