/* mask_t.h -- per-row top-k by magnitude, instantiated for REAL by mask.c. */

/* Bit patterns of nonnegative REALs order as the values do, and NaN magnitudes, whose
 * patterns are mapped to one (NAN_BITS, above +Inf's), order above every number: a NaN
 * counts as the largest magnitude, ties broken to the lower index like any other
 * (the Python layer refuses NaN; the kernel stays defined without trusting it). The
 * selection compares patterns only, never REALs. So the k-th largest magnitude is the largest
 * pattern t with #{j : b[j] >= t} >= k, found by bisection over the patterns: at most
 * 31 (float) or 63 (double) branch-free counting sweeps that vectorise, where a
 * quickselect spends most of its time on mispredicted compares. A sweep that counts
 * exactly k ends it (one more sweep takes the minimum of those k), usually after a
 * dozen sweeps; ties at the k-th value run the bisection to the end. The result is
 * an entry of b: the count only changes at the entries' patterns. */
static IIS_ALWAYS_INLINE UINT FN(kth_largest)(const UINT *restrict b, int m, int k)
{
    UINT lo = 0, hi = 0; /* #{b >= lo} >= k (lo = 0 counts all m >= k), #{b >= hi} < k */
    for (int j = 0; j < m; j++) hi = b[j] > hi ? b[j] : hi;
    if (k <= 1) return hi;
    hi += 1; /* below the sign bit: no overflow */
    while (hi - lo > 1) {
        UINT mid = lo + (hi - lo) / 2;
        int c = 0;
        for (int j = 0; j < m; j++) c += b[j] >= mid;
        if (c == k) { /* exactly k at or above mid: the k-th largest is their minimum */
            UINT t = hi;
            for (int j = 0; j < m; j++) t = b[j] >= mid && b[j] < t ? b[j] : t;
            return t;
        }
        if (c > k) lo = mid;
        else hi = mid;
    }
    return lo;
}

/* the pattern of |a|, every NaN mapped to NAN_BITS */
static IIS_ALWAYS_INLINE UINT FN(mag_bits)(REAL a)
{
    UINT u;
    a = FABS(a);
    memcpy(&u, &a, sizeof(u));
    return u > INF_BITS ? NAN_BITS : u;
}

/* For one row: the kept columns in ascending order (idx), their (masked)
 * values (val), or the whole masked row (dense, when not NULL). The top k by
 * |a| with ties to the lower index: everything above tau = the k-th largest
 * |a|, then the first columns equal to tau until k are kept. mag is scratch of
 * m entries. */
IIS_HOT static void FN(topk_row)(const REAL *r, int m, int k, int soft, UINT *mag,
                                 int32_t *idx, REAL *val, REAL *dense)
{
    UINT tau;
    REAL tsoft = 0;
    int c = 0, eq;
    if (k >= m || k == 0) {
        for (int j = 0; j < m; j++) {
            if (dense) dense[j] = k ? r[j] : 0;
            else if (k) { idx[j] = j; val[j] = r[j]; }
        }
        return;
    }
    for (int j = 0; j < m; j++) mag[j] = FN(mag_bits)(r[j]);
    tau = FN(kth_largest)(mag, m, k);
    if (soft) { /* the (k+1)-th largest |a| */
        UINT u = FN(kth_largest)(mag, m, k + 1);
        memcpy(&tsoft, &u, sizeof(u));
    }
    eq = k;
    {
        int ties = 0;
        for (int j = 0; j < m; j++) {
            eq -= mag[j] > tau;
            ties += mag[j] == tau;
        }
        if (!soft && ties == eq) {
            /* every entry at tau is kept (no tie to break): keep = |a| >= tau, without a
             * data-dependent branch (the general loop below mispredicts about once per
             * kept/dropped switch: 50-100 ms per W1 ratio) */
            if (dense) {
                for (int j = 0; j < m; j++) dense[j] = mag[j] >= tau ? r[j] : 0;
            } else {
                for (int j = 0; j < m && c < k; j++) {
                    idx[c] = j;
                    val[c] = r[j];
                    c += mag[j] >= tau;
                }
            }
            return;
        }
    }
    for (int j = 0; j < m; j++) {
        REAL a = FABS(r[j]), v;
        int keep = mag[j] > tau || (mag[j] == tau && eq-- > 0);
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
    UINT *mag;
    if (n < 0 || m < 0 || k < 0 || k > m || lda < m) return IIS_EINVAL;
    if (n == 0 || m == 0) return IIS_OK;
    /* per-thread scratch, allocated before the parallel region */
    mag = (UINT *)malloc(sizeof(UINT) * (size_t)m * (size_t)nt);
    if (!mag) return IIS_ENOMEM;
#pragma omp parallel num_threads(nt)
    {
        UINT *mg = mag + (size_t)iis_thread_num() * m;
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

