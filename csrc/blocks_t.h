/* blocks_t.h -- the class-block preconditioner of the L-BFGS solver: the K damped
 * per-class Hessian blocks H_q at the current iterate, their Cholesky factors, and their
 * application (with the class centring that keeps the softmax's null direction out).
 * Instantiated for REAL by solver.c after precond_t.h.
 */

/* ---- class-block preconditioner ---------------------------------------------
 * The Gram preconditioner above treats every class alike; the Hessian of the data
 * term is sum_i x_i x_i^T (x) (diag(p_i) - p_i p_i^T) / n, whose diagonal blocks
 *   H_q = sum_i p_iq (1 - p_iq) x~_i x~_i^T / n    (x~ = [x' 1])
 * differ a lot between classes: each is carried by the rows where class q is in
 * play. Once the fit has moved off its start (iteration IIS_BLOCK_AT), the solver
 * builds every H_q at the current iterate and uses the block diagonal of the H_q
 * (each damped as P is, l2 on its weights) as the L-BFGS initial inverse Hessian.
 * H_q is estimated from the m = n / K rows of largest curvature p(1 - p) for class q
 * (block_wanted asks for m >= 2 (d + 1)), the rest of its curvature mass spread over
 * the Gram:
 *   H_q ~ sum_{i in R_q} w_iq x~_i x~_i^T / n + (sum_{i not in R_q} w_iq / n) G.
 * Same objective, stopping rule and optimum; only the iterations change. Measured
 * on W1 (benchmarks/) in a float64 prototype: 252 L-BFGS iterations over the
 * 8 ratios of the path with the Gram preconditioner, 108 with the class blocks
 * (m = 500); 102 with m = 1,000, 98 with m = 2,000. */
#define IIS_BLOCK_AT 3
/* the K packed float32 factors (K (d+1)(d+2)/2 floats) at most half the dense design's bytes or 64 MB */
#define IIS_BLOCK_MIN_CAP ((size_t)64 << 20)
/* curvature buckets: the top 11 bits of the float32 w (non-negative), i.e. the
 * exponent and 3 bits of mantissa */
#define IIS_BLOCK_BUCKETS 2048
#define IIS_BLOCK_SLAB 8
#define IIS_PACKED(d1) ((size_t)(d1) * ((size_t)(d1) + 1) / 2)

static int FN(block_wanted)(const iis_ctx *ctx, const iis_design *X, int K,
                            const iis_solver_params *prm)
{
    const iis_blas *bl = ctx ? ctx->blas : NULL;
    const int64_t d1 = (int64_t)X->d + 1;
    size_t need, cap;
    if (prm->precondition != IIS_PRECOND_BLOCKS || K < 2 || X->d < 1 || !bl || !SYRK(ctx) ||
        !bl->dtrsm || !bl->dpotrf)
        return 0;
    if (X->idx && (X->mu || X->sigma)) return 0;
    /* each block is estimated from its class's rows: with fewer than 2 (d + 1) rows per
     * class the blocks are mostly noise (on 100-200-row problems they took more
     * iterations than the Gram, or none converged) */
    if (d1 > 4096 || X->n / K < 2 * d1 || prm->max_iter <= IIS_BLOCK_AT) return 0;
    need = sizeof(float) * (size_t)K * IIS_PACKED(d1);
    cap = sizeof(REAL) * (size_t)X->n * (size_t)X->d / 2;
    if (cap < IIS_BLOCK_MIN_CAP) cap = IIS_BLOCK_MIN_CAP;
    return need <= cap;
}

static inline uint32_t FN(curv_bits)(float w)
{
    uint32_t u;
    memcpy(&u, &w, sizeof(u));
    return u;
}

/* Row r of the gathered block: s * [x'_i 1] (x' standardised; ELL rows scattered) */
static void FN(block_row)(const iis_design *X, int64_t i, double s, REAL *out)
{
    const int d = X->d;
    if (X->idx) {
        const int32_t *ix = X->idx + i * X->k;
        const REAL *vx = (const REAL *)X->val + i * X->k;
        memset(out, 0, sizeof(REAL) * (size_t)d);
        for (int a = 0; a < X->k; a++) out[ix[a]] = (REAL)(s * (double)vx[a]);
    } else {
        const REAL *xi = (const REAL *)X->x + i * X->ldx;
        const REAL *mu = (const REAL *)X->mu, *sg = (const REAL *)X->sigma;
        for (int j = 0; j < d; j++) {
            double v = (double)xi[j];
            if (mu) v -= (double)mu[j];
            if (sg) v /= (double)sg[j];
            out[j] = (REAL)(s * v);
        }
    }
    out[d] = (REAL)s;
}

/* The curvatures w_iq = p_iq (1 - p_iq) at theta of the rows [b0, b0 + rows) into wb
 * (rows x K, float32; NaN and negatives 0), in blocks of IIS_FUSED_BLOCK rows over
 * the threads (each with its own logits block in w and K + 1 doubles in sp) */
static int FN(block_curv)(const iis_ctx *ctx, const iis_design *X, const int32_t *y, int K,
                          const REAL *cr, FN(work) * w, int64_t b0, int rows, double *sp,
                          float *wb)
{
    const int nsub = (rows + IIS_FUSED_BLOCK - 1) / IIS_FUSED_BLOCK;
    int nt = iis_nt_for(ctx, (int64_t)rows * K * (X->idx ? (X->k > 0 ? X->k : 1) : X->d / 32 + 1)), sb;
    iis_poll pl = {0, 0.0};
#pragma omp parallel for num_threads(nt) schedule(static)
    for (sb = 0; sb < nsub; sb++) {
        const int64_t r0 = (int64_t)sb * IIS_FUSED_BLOCK;
        const int rr = (int)(rows - r0 < IIS_FUSED_BLOCK ? rows - r0 : IIS_FUSED_BLOCK);
        REAL *zb = FN(zblock)(w, K);
        if (iis_team_interrupted(ctx, &pl)) continue;
        FN(block_logits)(ctx, X, K, w->weff, cr, b0 + r0, rr, zb);
        FN(softmax_rows)(ctx, zb, y + b0 + r0, K, NULL, 0, rr, sp + (size_t)iis_thread_num() * (K + 1));
        for (int r = 0; r < rr; r++) {
            REAL *zi = zb + (size_t)r * K;
            float *wi = wb + (size_t)(r0 + r) * K;
            zi[y[b0 + r0 + r]] += 1;
            for (int q = 0; q < K; q++) {
                float pv = (float)zi[q], wv = pv * (1.0f - pv);
                wi[q] = wv > 0 ? wv : 0;
            }
        }
    }
    return pl.stop ? IIS_EINTR : IIS_OK;
}

/* rows per block of the curvatures in block_build (a multiple of IIS_FUSED_BLOCK) */
#define IIS_CURV_ROWS 4096

/* The K Cholesky factors of the damped H_q at theta into Lb (K of them, each the lower
 * triangle packed by columns in float32: IIS_PACKED(d1) floats); G0 is the undamped
 * Gram (lower). *ok = 0 when a block could not be factored (the solver keeps its
 * preconditioner). The curvatures are computed twice in blocks of IIS_CURV_ROWS rows
 * (never n x K of them): once for each class's histogram and mass, once to take its
 * rows. Every class is one thread's work from its rows in index order: the same bits
 * for any thread count. */
static int FN(block_build)(const iis_ctx *ctx, const iis_design *X, const int32_t *y, int K,
                           double l2, const double *theta, FN(work) * w, const double *G0,
                           float *Lb, int *ok)
{
    const int64_t n = X->n;
    const int d = X->d, d1 = d + 1;
    const size_t dd = (size_t)d1 * (size_t)d1;
    const int64_t m = n / K; /* rows per block (block_wanted: at least 2 d1, below n) */
    const int nslab = (K + IIS_BLOCK_SLAB - 1) / IIS_BLOCK_SLAB;
    int c, err = IIS_OK, bad = 0;
    int64_t *cnt = (int64_t *)calloc((size_t)K, sizeof(int64_t)), **rows = NULL;
    int64_t *room = (int64_t *)calloc((size_t)K, sizeof(int64_t)), *fill = (int64_t *)calloc((size_t)K, sizeof(int64_t));
    double *wsum = (double *)calloc((size_t)K, sizeof(double));
    double *wsel = (double *)calloc((size_t)K, sizeof(double));
    double *cv = (double *)malloc(sizeof(double) * (size_t)K);
    double *sp = (double *)calloc((size_t)iis_nthreads(ctx) * ((size_t)K + 1), sizeof(double));
    float *wb = (float *)malloc(sizeof(float) * IIS_CURV_ROWS * (size_t)K), **wrow = NULL;
    uint32_t *hist = (uint32_t *)calloc((size_t)K * IIS_BLOCK_BUCKETS, sizeof(uint32_t)), *tb = NULL;
    REAL *cr = w->gw;
    *ok = 0;
    if (!cnt || !room || !fill || !wsum || !wsel || !cv || !sp || !wb || !hist ||
        !(tb = (uint32_t *)calloc((size_t)K, sizeof(uint32_t))) ||
        !(rows = (int64_t **)calloc((size_t)K, sizeof(int64_t *))) ||
        !(wrow = (float **)calloc((size_t)K, sizeof(float *)))) {
        err = IIS_ENOMEM;
        goto done;
    }
    for (int j = 0; j < d1; j++) /* an overflowed Gram (see precond_build): no blocks */
        for (int r = j; r < d1; r++)
            if (!isfinite(G0[(size_t)j * d1 + r])) goto done;
    FN(effective)(X, K, theta, w->weff, cv);
    for (int q = 0; q < K; q++) cr[q] = (REAL)cv[q];
    /* first sweep: per class the histogram of the curvatures (buckets) and their mass */
    for (int64_t b0 = 0; b0 < n; b0 += IIS_CURV_ROWS) {
        const int nr = (int)(n - b0 < IIS_CURV_ROWS ? n - b0 : IIS_CURV_ROWS);
        if ((err = FN(block_curv)(ctx, X, y, K, cr, w, b0, nr, sp, wb)) != IIS_OK) goto done;
#pragma omp parallel for num_threads(iis_nt_for(ctx, (int64_t)nr * K)) schedule(dynamic, 1)
        for (c = 0; c < nslab; c++) {
            const int q0 = c * IIS_BLOCK_SLAB, q1 = q0 + IIS_BLOCK_SLAB < K ? q0 + IIS_BLOCK_SLAB : K;
            for (int r = 0; r < nr; r++) {
                const float *wi = wb + (size_t)r * K;
                for (int q = q0; q < q1; q++) {
                    wsum[q] += (double)wi[q];
                    hist[(size_t)q * IIS_BLOCK_BUCKETS + (FN(curv_bits)(wi[q]) >> 20)]++;
                }
            }
        }
    }
    /* per class: the m rows of largest w (all rows of buckets above the threshold
     * bucket, then the lowest indices of that bucket) */
    for (int q = 0; q < K; q++) {
        const uint32_t *h = hist + (size_t)q * IIS_BLOCK_BUCKETS;
        int64_t cum = 0;
        int b = IIS_BLOCK_BUCKETS - 1;
        for (; b > 1; b--) {
            if (cum + h[b] >= m) break;
            cum += h[b];
        }
        /* bucket 0 holds the zeros (and the smallest subnormals): never taken */
        tb[q] = (uint32_t)b;
        room[q] = cum + h[b] < m ? h[b] : m - cum;
        cnt[q] = cum + room[q];
        rows[q] = (int64_t *)malloc(sizeof(int64_t) * (size_t)(cnt[q] > 0 ? cnt[q] : 1));
        wrow[q] = (float *)malloc(sizeof(float) * (size_t)(cnt[q] > 0 ? cnt[q] : 1));
        if (!rows[q] || !wrow[q]) {
            err = IIS_ENOMEM;
            goto done;
        }
    }
    /* second sweep: the rows taken, their curvatures and the mass they carry */
    for (int64_t b0 = 0; b0 < n; b0 += IIS_CURV_ROWS) {
        const int nr = (int)(n - b0 < IIS_CURV_ROWS ? n - b0 : IIS_CURV_ROWS);
        if ((err = FN(block_curv)(ctx, X, y, K, cr, w, b0, nr, sp, wb)) != IIS_OK) goto done;
#pragma omp parallel for num_threads(iis_nt_for(ctx, (int64_t)nr * K)) schedule(dynamic, 1)
        for (c = 0; c < nslab; c++) {
            const int q0 = c * IIS_BLOCK_SLAB, q1 = q0 + IIS_BLOCK_SLAB < K ? q0 + IIS_BLOCK_SLAB : K;
            for (int r = 0; r < nr; r++) {
                const float *wi = wb + (size_t)r * K;
                for (int q = q0; q < q1; q++) {
                    uint32_t bk = FN(curv_bits)(wi[q]) >> 20;
                    if (bk < tb[q] || (bk == tb[q] && room[q]-- <= 0)) continue;
                    rows[q][fill[q]] = b0 + r;
                    wrow[q][fill[q]++] = wi[q];
                    wsel[q] += (double)wi[q];
                }
            }
        }
    }
    /* H_q from its rows (one syrk, or on AMX tiles: bf16 products are plenty for a
     * preconditioner), the rest of its curvature on the Gram, damped, factored in place */
#pragma omp parallel num_threads(iis_nt_for(ctx, (int64_t)K * m * d1 * d1 / 64))
    {
        REAL *buf = (REAL *)malloc(sizeof(REAL) * ((size_t)m * (size_t)d1 + dd));
        REAL *hf = buf ? buf + (size_t)m * (size_t)d1 : NULL;
        double *hd = (double *)malloc(sizeof(double) * dd);
        int q;
#if AMX_PASSES
        const int Dp = iis_amx_dpad(d1);
        const size_t xab = sizeof(uint16_t) * (size_t)IIS_AMX_RB * Dp;
        const int use_amx = iis_use_amx(ctx);
        unsigned char *ascr = use_amx ? (unsigned char *)malloc(3 * xab + sizeof(float) * ((size_t)Dp * Dp + 2 * (size_t)Dp) + 64) : NULL;
        uint16_t *xa = NULL, *xv = NULL, *gt = NULL;
        float *pc = NULL, *mu0 = NULL, *isg1 = NULL;
        if (ascr) {
            xa = (uint16_t *)iis_align64(ascr);
            xv = xa + (size_t)IIS_AMX_RB * Dp;
            gt = xv + (size_t)IIS_AMX_RB * Dp;
            pc = (float *)(gt + (size_t)IIS_AMX_RB * Dp);
            mu0 = pc + (size_t)Dp * Dp;
            isg1 = mu0 + Dp;
            for (int j = 0; j < Dp; j++) {
                mu0[j] = 0.0f;
                isg1[j] = j < d1 ? 1.0f : 0.0f;
            }
            iis_amx_begin();
        }
        if (use_amx && !ascr) {
#pragma omp atomic write
            err = IIS_ENOMEM;
        }
#endif
        if (!buf || !hd) {
#pragma omp atomic write
            err = IIS_ENOMEM;
        }
#pragma omp for schedule(dynamic, 1)
        for (q = 0; q < K; q++) {
            double *H = hd, rest;
            char lo = 'L', nn = 'N';
            int id1 = d1, ic = (int)cnt[q], info = 0, hld = d1;
            REAL one = 1, zero = 0;
            const REAL *hs = hf;
            if (!buf || !hd || err != IIS_OK) continue;
            for (int64_t r = 0; r < cnt[q]; r++) {
                const int64_t i = rows[q][r];
                FN(block_row)(X, i, sqrt((double)wrow[q][r] / (double)n),
                              buf + (size_t)r * d1);
            }
#if AMX_PASSES
            if (ascr && ic > 0) {
                for (int b0 = 0; b0 < ic; b0 += IIS_AMX_RB) {
                    int rws = ic - b0 < IIS_AMX_RB ? ic - b0 : IIS_AMX_RB;
                    iis_amx_convert(buf + (size_t)b0 * d1, d1, d1, mu0, isg1, rws, xa, xv, NULL, NULL);
                    iis_amx_gram_operand(xv, d1, gt);
                    iis_amx_gram_backward(gt, xv, d1, pc, b0 == 0);
                }
                hs = pc;
                hld = Dp;
            } else
#endif
            if (ic > 0) {
                SYRK(ctx)(&lo, &nn, &id1, &ic, &one, buf, &id1, &zero, hf, &id1);
            } else {
                for (size_t e = 0; e < dd; e++) hf[e] = 0;
            }
            rest = (wsum[q] - wsel[q]) / (double)n;
            if (rest < 0) rest = 0;
            for (int j = 0; j < d1; j++)
                for (int r = j; r < d1; r++)
                    H[(size_t)j * d1 + r] = (double)hs[(size_t)j * hld + r] + rest * G0[(size_t)j * d1 + r];
            FN(precond_damp)(d, l2, H);
            ctx->blas->dpotrf(&lo, &id1, H, &id1, &info);
            for (int j = 0; j < d1 && info == 0; j++)
                if (!(isfinite(H[(size_t)j * d1 + j]) && H[(size_t)j * d1 + j] > 0)) info = 1;
            if (info != 0) {
#pragma omp atomic write
                bad = 1;
                continue;
            }
            { /* the factor's lower triangle, packed by columns, in float32 */
                float *dst = Lb + (size_t)q * IIS_PACKED(d1);
                for (int j = 0; j < d1; j++)
                    for (int r = j; r < d1; r++) *dst++ = (float)H[(size_t)j * d1 + r];
            }
        }
#if AMX_PASSES
        if (ascr) iis_amx_end();
        free(ascr);
#endif
        free(buf);
        free(hd);
    }
    if (err == IIS_OK && !bad) *ok = 1;
done:
    for (int q = 0; q < K; q++) {
        if (rows) free(rows[q]);
        if (wrow) free(wrow[q]);
    }
    free(rows);
    free(wrow);
    free(room);
    free(fill);
    free(tb);
    free(sp);
    free(wb);
    free(hist);
    free(cnt);
    free(wsum);
    free(wsel);
    free(cv);
    return err;
}

/* v (the K x d1 column-major view of theta's layout) <- each class row times H_q^-1,
 * and u too when given (the L-BFGS step and its scale gamma want the same blocks: one
 * sweep over the factors serves both): the class's entries gathered, L_q y = v_q
 * forward (column axpys) and L_q^T x = y backward (column dots), scattered back. Each
 * class on its own: the same bits for any thread count. (OpenBLAS's dtrsm on one
 * strided row took 15-20 ms for W1's 100 blocks of 201; these loops read each factor's
 * lower half once per sweep, and the factors, 8 MB for W1's path, do not stay in
 * cache: two vectors per sweep halve the reads, 2.8 -> 1.5 ms per iteration.) */
IIS_HOT static void FN(block_solve)(const float *restrict Lq, int d1, double *restrict x,
                                    double *restrict z)
{
    const float *restrict col = Lq;
    for (int j = 0; j < d1; j++) { /* column j: L[j..d1-1][j] */
        const double xj = x[j] / (double)col[0];
        x[j] = xj;
        if (z) {
            const double zj = z[j] / (double)col[0];
            z[j] = zj;
#pragma omp simd
            for (int r = j + 1; r < d1; r++) {
                x[r] -= (double)col[r - j] * xj;
                z[r] -= (double)col[r - j] * zj;
            }
        } else {
#pragma omp simd
            for (int r = j + 1; r < d1; r++) x[r] -= (double)col[r - j] * xj;
        }
        col += d1 - j;
    }
    for (int j = d1 - 1; j >= 0; j--) {
        double t = 0.0, tz = 0.0;
        col -= d1 - j;
        if (z) {
#pragma omp simd reduction(+ : t, tz)
            for (int r = j + 1; r < d1; r++) {
                t += (double)col[r - j] * x[r];
                tz += (double)col[r - j] * z[r];
            }
            z[j] = (z[j] - tz) / (double)col[0];
        } else {
#pragma omp simd reduction(+ : t)
            for (int r = j + 1; r < d1; r++) t += (double)col[r - j] * x[r];
        }
        x[j] = (x[j] - t) / (double)col[0];
    }
}

/* The softmax is unchanged when the same vector is added to every class's weights (or
 * the same number to every bias): the data term is flat along these class-mean
 * directions, where only l2 curves the objective and its optimum has every weight row
 * summing to zero over the classes. The blocks know nothing of that (each H_q curves
 * every direction): steps along the class mean would come out l2 / H_q too short, and
 * in float32 the mean of a gradient is rounding only. So the iterate is moved onto
 * the optimum's subspace when the blocks start (block_center: exact, the data term
 * does not change) and M = C B^-1 C keeps it there (C: minus the class mean). */
static void FN(class_center)(double *v, int d1, int K, double *mean_out)
{
    for (int j = 0; j < d1; j++) {
        double t = 0.0, *vj = v + (size_t)j * K;
        for (int q = 0; q < K; q++) t += vj[q];
        t /= K;
        for (int q = 0; q < K; q++) vj[q] -= t;
        if (mean_out) mean_out[j] = t;
    }
}

/* theta <- C theta; f and g follow exactly: the data term and its gradient are
 * unchanged, the penalty loses l2/2 K mean_j^2 per weight row and its gradient
 * l2 mean_j. mean is d1 scratch. */
static void FN(block_center)(double *theta, double *g, double *f, int d, int K, double l2, double *mean)
{
    FN(class_center)(theta, d + 1, K, mean);
    for (int j = 0; j < d; j++) {
        *f -= 0.5 * l2 * K * mean[j] * mean[j];
        for (int q = 0; q < K; q++) g[(size_t)j * K + q] -= l2 * mean[j];
    }
}

static int FN(block_apply)(const iis_ctx *ctx, const float *Lb, int d1, int K, double *v, double *u)
{
    const size_t dd = IIS_PACKED(d1);
    int nt = iis_nt_for(ctx, (int64_t)K * d1 * d1), q, err = IIS_OK;
    FN(class_center)(v, d1, K, NULL);
    if (u) FN(class_center)(u, d1, K, NULL);
#pragma omp parallel num_threads(nt)
    {
        double *x = (double *)malloc(sizeof(double) * 2 * (size_t)d1), *z = u ? x + d1 : NULL;
        if (!x) {
#pragma omp atomic write
            err = IIS_ENOMEM;
        }
#pragma omp for schedule(static)
        for (q = 0; q < K; q++) {
            if (!x) continue;
            for (int j = 0; j < d1; j++) x[j] = v[(size_t)j * K + q];
            if (z)
                for (int j = 0; j < d1; j++) z[j] = u[(size_t)j * K + q];
            FN(block_solve)(Lb + (size_t)q * dd, d1, x, z);
            for (int j = 0; j < d1; j++) v[(size_t)j * K + q] = x[j];
            if (z)
                for (int j = 0; j < d1; j++) u[(size_t)j * K + q] = z[j];
        }
        free(x);
    }
    FN(class_center)(v, d1, K, NULL);
    if (u) FN(class_center)(u, d1, K, NULL);
    return err;
}
