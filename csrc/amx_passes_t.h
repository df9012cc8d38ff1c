/* amx_passes_t.h -- the solver's glue to amx.c's tiles (float32 dense designs on CPUs
 * with AMX-BF16; only the level macros where AMX_PASSES is 0): when they pay, their set-up (the
 * standardisation, the centring, the scratch), the pass (logits, softmax, X'^T G) and
 * the Gram for the preconditioner. Instantiated for REAL by solver.c after passes_t.h.
 */

/* The AMX pass levels (work.amx): the bf16 passes (the design rounded to bf16 once: the
 * fit's first phase), then the precise passes (the design as bf16 hi + lo parts, three
 * products where the bf16 pass takes two: logits and gradients to about 2^-16 of
 * each product, float32-grade, in 0.4-0.5x the time of a float32 BLAS pass) that take
 * the stopping test */
#define IIS_AMX_BF16 1
#define IIS_AMX_PRECISE 2

#if AMX_PASSES
/* AMX passes pay from a few million multiply-adds per GEMM on; below that, and for
 * partials over 128 MB, the float32 passes run alone */
#define IIS_AMX_MIN_WORK ((int64_t)1 << 22)
#define IIS_AMX_MAX_PARTIALS ((size_t)128 << 20)

/* AMX tiles for a dense n x d design whose products cost work_per_row multiply-adds
 * per row: the CPU and the kernel setting allow them and the work pays */
static int FN(amx_pays)(const iis_ctx *ctx, int64_t n, int d, int64_t work_per_row)
{
    return d >= 1 && iis_use_amx(ctx) &&
           n >= 2 * IIS_AMX_RB && n * work_per_row >= IIS_AMX_MIN_WORK;
}

/* The AMX passes run on a dense n x d design with K classes (amx_setup) */
static int FN(amx_wanted)(const iis_ctx *ctx, int64_t n, int d, int K)
{
    return K >= 2 && FN(amx_pays)(ctx, n, d, (int64_t)d * K);
}

/* mu_p, isg_p (Dp floats, zero-padded) = mu and 1 / sigma of X's implicit
 * standardisation (0 and 1 without it), as iis_amx_convert takes them */
static void FN(amx_standardisation)(const iis_design *X, float *mu_p, float *isg_p)
{
    const REAL *mu = (const REAL *)X->mu, *sg = (const REAL *)X->sigma;
    for (int j = 0; j < X->d; j++) {
        mu_p[j] = mu ? (float)mu[j] : 0.0f;
        isg_p[j] = sg ? (float)(1.0 / (double)sg[j]) : 1.0f;
    }
}

/* A design without its own mu is centred inside the AMX passes: they round
 * (x - m) / sigma to bf16 (m the column means, mu_p) and add back exactly what m takes
 * out, cx_j = m_j / sigma_j: c_q + sum_j cx_j W_jq to the bias of the logits and
 * cx_j sum_i G_iq to the gradient of W_jq. Rounding x itself, an offset large against
 * the spread (masked activations, raw features) left the products at the rounding of
 * the offset: W's gradient is a sum over rows whose G sums to almost zero, and the
 * precise passes' gradient was 1.6e-6 off the float32 one (features with offset 3
 * and unit spread) where the tolerance is 1e-5; centred, 1e-7. */
static int FN(amx_center)(const iis_ctx *ctx, const iis_design *X, FN(work) * w)
{
    const int64_t n = X->n, ldx = X->ldx;
    const int d = X->d, nch = n < IIS_NCHUNK ? (int)n : IIS_NCHUNK;
    const REAL *x = (const REAL *)X->x;
    int c;
    double *part = (double *)calloc((size_t)nch * (size_t)d, sizeof(double));
    if (!part || !(w->cx = (double *)malloc(sizeof(double) * (size_t)d))) {
        free(part);
        return IIS_ENOMEM;
    }
#pragma omp parallel for num_threads(iis_nt_for(ctx, n * (int64_t)d)) schedule(static)
    for (c = 0; c < nch; c++) {
        int64_t lo, hi;
        double *pc = part + (size_t)c * (size_t)d;
        iis_chunk(n, nch, c, &lo, &hi);
        for (int64_t i = lo; i < hi; i++)
            for (int j = 0; j < d; j++) pc[j] += (double)x[i * ldx + j];
    }
    for (int j = 0; j < d; j++) {
        double t = 0.0;
        for (c = 0; c < nch; c++) t += part[(size_t)c * (size_t)d + j];
        w->mu_p[j] = (float)(t / (double)n);
        /* what the pass takes out, exactly: the float m, scaled as the pass scales */
        w->cx[j] = (double)w->mu_p[j] * (double)w->isg_p[j];
    }
    free(part);
    return IIS_OK;
}

/* Sets w->amx when the passes over X run on AMX tiles first (iis_solver_kernel),
 * with its buffers (any_size: whatever the problem size). IIS_ENOMEM when they were
 * wanted but could not be allocated (w->amx stays 0: the float32 passes can still run). */
static int FN(amx_setup)(const iis_ctx *ctx, const iis_design *X, int K, FN(work) * w,
                         int any_size)
{
    int Dp, Kp, nt;
    size_t per, xab, zb, gtb;
    if (X->idx || X->d < 1 || !iis_use_amx(ctx))
        return IIS_OK;
    if (!any_size && !FN(amx_wanted)(ctx, X->n, X->d, K)) return IIS_OK;
    Dp = iis_amx_dpad(X->d);
    Kp = iis_amx_kpad(K);
    per = sizeof(float) * (size_t)Kp * (size_t)Dp;
    w->namx = w->natz;
    while (w->namx > 1 && (size_t)w->namx * per > IIS_AMX_MAX_PARTIALS) w->namx--;
    if ((size_t)w->namx * per > IIS_AMX_MAX_PARTIALS) return IIS_OK;
    xab = sizeof(uint16_t) * (size_t)IIS_AMX_RB * (size_t)Dp;
    zb = sizeof(float) * (size_t)IIS_AMX_RB * (size_t)Kp;
    gtb = sizeof(uint16_t) * 2 * (size_t)Kp * (size_t)IIS_AMX_RB;
    /* + the block's logits and residuals (RB x K floats): they never go to memory */
    /* xa, xv and their remainders xal, xvl (the precise passes) */
    w->scr_bytes = (4 * xab + zb + gtb + sizeof(float) * (size_t)IIS_AMX_RB * (size_t)K + 255) / 64 * 64;
    nt = ctx->n_threads > 0 ? ctx->n_threads : 1;
    w->wv = (uint16_t *)malloc(sizeof(uint16_t) * (size_t)Dp * 2 * (size_t)Kp);
    w->mu_p = (float *)calloc((size_t)Dp, sizeof(float));
    w->isg_p = (float *)calloc((size_t)Dp, sizeof(float));
    w->pt = (float *)malloc(per * (size_t)w->namx);
    w->scr = (unsigned char *)malloc(w->scr_bytes * (size_t)nt + 64);
    w->acc = (double *)malloc(sizeof(double) * (size_t)X->d * (size_t)nt);
    if (!w->wv || !w->mu_p || !w->isg_p || !w->pt || !w->scr || !w->acc) return IIS_ENOMEM;
    w->nscr = nt;
    FN(amx_standardisation)(X, w->mu_p, w->isg_p);
    if (!X->mu && FN(amx_center)(ctx, X, w) != IIS_OK) return IIS_ENOMEM;
    w->amx = IIS_AMX_BF16;
    return IIS_OK;
}

/* A thread's block scratch (amx_setup's layout): xa, xv, xal, xvl (RB x Dp bf16 each),
 * z2 (RB x Kp float), gt (2 Kp x RB bf16), zb (RB x K float) */
typedef struct {
    uint16_t *xa, *xv, *xal, *xvl, *gt;
    float *z2, *zb;
} FN(amx_scr);

static FN(amx_scr) FN(amx_scratch)(const FN(work) * w, int Dp, int Kp)
{
    FN(amx_scr) a;
    const size_t xab = (size_t)IIS_AMX_RB * (size_t)Dp;
    a.xa = (uint16_t *)(iis_align64(w->scr) + w->scr_bytes * (size_t)iis_thread_num());
    a.xv = a.xa + xab;
    a.xal = a.xv + xab;
    a.xvl = a.xal + xab;
    a.z2 = (float *)(a.xvl + xab);
    a.gt = (uint16_t *)(a.z2 + (size_t)IIS_AMX_RB * Kp);
    a.zb = (float *)(a.gt + 2 * (size_t)Kp * IIS_AMX_RB);
    return a;
}

/* out[j][q] = the sum over the chunks' partials pt (Kp x Dp each), in chunk order, plus
 * cx_j ts_q when ts is given (the centring's share, amx_center); one class per
 * iteration, the partials read along their rows */
static void FN(amx_reduce)(const iis_ctx *ctx, const FN(work) * w, int d, int K, const double *ts,
                           double *out)
{
    const int Dp = iis_amx_dpad(d), nch = w->namx;
    const size_t per = (size_t)iis_amx_kpad(K) * (size_t)Dp;
    int64_t j;
#pragma omp parallel for num_threads(iis_nt_for(ctx, (int64_t)d * K * nch)) schedule(static)
    for (j = 0; j < K; j++) {
        const int q = (int)j;
        double *acc = w->acc + (size_t)iis_thread_num() * (size_t)d;
        for (int jj = 0; jj < d; jj++) acc[jj] = 0.0;
        for (int cc = 0; cc < nch; cc++) {
            const float *pq = w->pt + (size_t)cc * per + (size_t)q * Dp;
            for (int jj = 0; jj < d; jj++) acc[jj] += (double)pq[jj];
        }
        for (int jj = 0; jj < d; jj++)
            out[(size_t)jj * K + q] = acc[jj] + (ts && w->cx ? w->cx[jj] * ts[q] : 0.0);
    }
}

/* One pass of amx.c's tiles over the standardised design: per block of IIS_AMX_RB
 * rows, z = X_b (W_hi + W_lo) + b, softmax and loss in place, then
 * pt_c += (G_hi + G_lo)^T X_b. On return grad[0, dk) holds X'^T G for the
 * standardised X' (the centring's share is fgrad's) and w->part the namx softmax
 * partials.
 * With T (n x K; theta, bias and y unused): G = T, grad[0, dk) = X'^T T with the
 * centring's share and grad[dk, dk + K) the column sums of T: the start from logits,
 * which only needs to be near the optimum (on W1's probe 22-30 ms against 59 ms for its
 * float32 GEMM pass). */
static int FN(amx_pass)(const iis_ctx *ctx, const iis_design *X, const int32_t *y, int K,
                        const double *theta, const REAL *bias, const REAL *T, FN(work) * w,
                        double *grad)
{
    const int64_t n = X->n, ldx = X->ldx;
    const int d = X->d, nch = w->namx, Dp = iis_amx_dpad(d), Kp = iis_amx_kpad(K);
    const size_t per = (size_t)Kp * (size_t)Dp;
    const REAL *x = (const REAL *)X->x;
    const int precise = w->amx == IIS_AMX_PRECISE && !T;
    int nt = iis_nt_for(ctx, n * (int64_t)K * d / 32), c;
    iis_poll pl = {0, 0.0};
    if (nt > w->nscr) nt = w->nscr;
    if (!T) iis_amx_pack_w(theta, d, K, w->wv);
    { /* chunks handed out as threads free up, as in the fused pass */
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
        for (c = 0; c < nch; c++) {
            int64_t lo, hi;
            const FN(amx_scr) a = FN(amx_scratch)(w, Dp, Kp);
            float *pt = w->pt + (size_t)c * per;
            double *p = w->part + (size_t)c * (K + 1);
            iis_chunk(n, nch, c, &lo, &hi);
            memset(p, 0, sizeof(double) * (size_t)(K + 1));
            if (hi <= lo) memset(pt, 0, sizeof(float) * per);
            iis_amx_begin();
            for (int64_t b0 = lo; b0 < hi && !iis_team_interrupted(ctx, &pl); b0 += IIS_AMX_RB) {
                int rows = (int)(hi - b0 < IIS_AMX_RB ? hi - b0 : IIS_AMX_RB);
                const REAL *g = T ? T + b0 * K : a.zb;
                iis_amx_convert(x + b0 * ldx, ldx, d, w->mu_p, w->isg_p, rows, a.xa, a.xv,
                                precise ? a.xal : NULL, precise ? a.xvl : NULL);
                if (T) {
                    for (int r = 0; r < rows; r++)
                        for (int q = 0; q < K; q++) p[q] += (double)g[(size_t)r * K + q];
                } else {
                    iis_amx_forward(a.xa, precise ? a.xal : NULL, w->wv, d, K, a.z2);
                    /* z + bias, softmax (AMX implies AVX-512), in the thread's block
                     * scratch: Z and G never make a round trip to memory */
                    iis_simd_softmax_rows(a.zb, y + b0, K, bias, 0, rows, p, a.z2, Kp);
                }
                iis_amx_residuals(g, rows, K, a.gt);
                iis_amx_backward_hilo(a.gt, a.xv, precise ? a.xvl : NULL, d, K, pt, b0 == lo);
            }
            iis_amx_end();
        }
    }
    if (pl.stop) return IIS_EINTR;
    if (T) {
        double *ts = grad + (size_t)d * (size_t)K;
        for (int q = 0; q < K; q++) {
            double t = 0.0;
            for (c = 0; c < nch; c++) t += w->part[(size_t)c * (K + 1) + q];
            ts[q] = t;
        }
        FN(amx_reduce)(ctx, w, d, K, ts, grad);
    } else {
        FN(amx_reduce)(ctx, w, d, K, NULL, grad);
    }
    return IIS_OK;
}

/* The Gram of the design for the preconditioner on AMX tiles (float32, where the AMX
 * tiles would run and n d^2 is worth it): per block the standardised rows rounded to
 * bf16 (iis_amx_convert), their 32-bit transpose (iis_amx_gram_operand), and the
 * backward tiles accumulate X_b'^T X_b' in float32, in the Gram's fixed chunks (partials
 * added in chunk order: the same bits for any thread count). The rounding (2^-9 of
 * each entry of X') changes P by far less than its damping; the preconditioner only
 * shapes the steps, never the optimum. Measured on W1's probe (50,000 x 768): 77-87 ms
 * against 137-209 ms with syrk; s = 0 (50,000 x 200) 8-9 ms against 15-21 ms. Fills P's
 * lower triangle (d x d part and the column sums) as gram does. */
static int FN(gram_chunks)(int64_t n, int d);

static int FN(amx_gram_wanted)(const iis_ctx *ctx, const iis_design *X)
{
    return !X->idx && FN(amx_pays)(ctx, X->n, X->d, (int64_t)X->d * X->d);
}

static int FN(gram_amx)(const iis_ctx *ctx, const iis_design *X, double *P)
{
    const int64_t n = X->n, ldx = X->ldx;
    const int d = X->d, Dp = iis_amx_dpad(d);
    const size_t per = (size_t)Dp * (size_t)Dp, xab = sizeof(uint16_t) * (size_t)IIS_AMX_RB * Dp;
    const size_t scr_bytes = (3 * xab + 255) / 64 * 64; /* xa, xv, gt */
    const REAL *x = (const REAL *)X->x;
    int nch = FN(gram_chunks)(n, Dp), c;
    int nt = iis_nt_for(ctx, n * (int64_t)d * d / 32);
    float *pt = NULL, *mu_p = NULL, *isg_p = NULL;
    double *csum = NULL;
    unsigned char *scr = NULL, *scr0;
    int err = IIS_OK;
    iis_poll pl = {0, 0.0};
    if (nt < 1) nt = 1;
    pt = (float *)malloc(sizeof(float) * per * (size_t)nch);
    csum = (double *)calloc((size_t)nch * (size_t)d, sizeof(double));
    mu_p = (float *)calloc((size_t)Dp, sizeof(float));
    isg_p = (float *)calloc((size_t)Dp, sizeof(float));
    scr = (unsigned char *)malloc(scr_bytes * (size_t)nt + 64);
    if (!pt || !csum || !mu_p || !isg_p || !scr) {
        err = IIS_ENOMEM;
        goto done;
    }
    FN(amx_standardisation)(X, mu_p, isg_p);
    scr0 = iis_align64(scr);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (c = 0; c < nch; c++) {
        int64_t lo, hi;
        unsigned char *sc = scr0 + scr_bytes * (size_t)iis_thread_num();
        uint16_t *xa = (uint16_t *)sc, *xv = xa + (size_t)IIS_AMX_RB * Dp, *gt = xv + (size_t)IIS_AMX_RB * Dp;
        float *pc = pt + (size_t)c * per;
        double *cs = csum + (size_t)c * d;
        iis_chunk(n, nch, c, &lo, &hi);
        if (hi <= lo) memset(pc, 0, sizeof(float) * per);
        iis_amx_begin();
        for (int64_t b0 = lo; b0 < hi && !iis_team_interrupted(ctx, &pl); b0 += IIS_AMX_RB) {
            int rows = (int)(hi - b0 < IIS_AMX_RB ? hi - b0 : IIS_AMX_RB);
            iis_amx_convert(x + b0 * ldx, ldx, d, mu_p, isg_p, rows, xa, xv, NULL, NULL);
            iis_amx_gram_operand(xv, d, gt);
            iis_amx_gram_backward(gt, xv, d, pc, b0 == lo);
            {   /* the column sums of X' over the block, in float, then in double */
                float *cf = (float *)xa; /* xa is free again: Dp floats fit in it */
                for (int j = 0; j < d; j++) cf[j] = 0.0f;
                for (int r = 0; r < rows; r++) {
                    const REAL *xr = x + (b0 + r) * ldx;
                    for (int j = 0; j < d; j++) cf[j] += ((float)xr[j] - mu_p[j]) * isg_p[j];
                }
                for (int j = 0; j < d; j++) cs[j] += (double)cf[j];
            }
        }
        iis_amx_end();
    }
    if (pl.stop) err = IIS_EINTR;
    if (err == IIS_OK) FN(gram_sum)(ctx, pt, per, Dp, d, nch, csum, n, P);
done:
    free(pt);
    free(csum);
    free(mu_p);
    free(isg_p);
    free(scr);
    return err;
}
#endif
