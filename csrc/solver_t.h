/* solver_t.h -- multinomial logistic regression, instantiated for REAL by solver.c.
 *
 * Objective (theta = [W (d x K), b (K)]):
 *   f = 1/n sum_i [logsumexp(z_i) - z_i,y_i] + l2/2 ||W||^2,  z_i = W^T x_i + b
 * Solver: L-BFGS with a backtracking Armijo line search. It is deterministic,
 * needs only gradients (each costs two GEMMs, or two k-sparse passes for
 * masked designs), and on this smooth, strongly convex problem (l2 > 0)
 * converges reliably; a Newton-type method would need K*d x K*d Hessian
 * products per inner step for no gain at the tolerances that matter for top-1
 * accuracy. History and iterates are kept in double; the data passes run in
 * REAL (float32 end to end for float32 input).
 */

typedef struct {
    REAL *z;       /* n x K logits, then softmax - onehot */
    REAL *weff;    /* d x K effective weights (W / sigma) */
    REAL *gw;      /* the bias c in REAL (K + 1 entries) */
    REAL *gpart;   /* dense: natz x d x K partial products of X^T G */
    int natz;
    double *part;  /* chunk partials: nch x (K + 1) (colsum of G, loss) */
    REAL *ellacc;  /* ELL: nch_ell x d x K partial products of X^T G */
    int nch, nch_ell;
    /* AMX passes (amx.c; float32 dense designs): on while amx != 0, IIS_AMX_BF16 or
     * IIS_AMX_PRECISE */
    int amx, namx;   /* namx fixed row chunks, each with a Kp x Dp partial in pt */
    uint16_t *wv;    /* [W_hi | W_lo] packed for the forward tiles */
    float *mu_p, *isg_p; /* Dp: mu and 1 / sigma of the implicit standardisation, 0-padded */
    double *cx;      /* d, or NULL: the design's column means (times 1 / sigma) that the
                        AMX passes take out of X when it has no mu of its own */
    float *pt;
    double *acc;     /* per thread: d doubles (the sum over chunks) */
    unsigned char *scr; /* per thread: xa, xv, xal, xvl, z2, gt, zb (scr_bytes each) */
    size_t scr_bytes;
    int nscr;
    int keep_z; /* the AMX pass copies its p - e_y rows to z (as the other passes leave them) */
} FN(work);

static void FN(work_free)(FN(work) * w)
{
    free(w->z);
    free(w->weff);
    free(w->gw);
    free(w->gpart);
    free(w->part);
    free(w->ellacc);
    free(w->wv);
    free(w->mu_p);
    free(w->isg_p);
    free(w->cx);
    free(w->pt);
    free(w->acc);
    free(w->scr);
}

static int FN(work_alloc)(FN(work) * w, const iis_design *X, int K, int need_grad)
{
    size_t dk = (size_t)X->d * (size_t)K;
    memset(w, 0, sizeof(*w));
    w->nch = X->n < IIS_NCHUNK ? (int)(X->n > 0 ? X->n : 1) : IIS_NCHUNK;
    w->z = (REAL *)malloc(sizeof(REAL) * (size_t)X->n * (size_t)K + sizeof(REAL));
    w->weff = (REAL *)malloc(sizeof(REAL) * (dk + 1));
    w->gw = (REAL *)malloc(sizeof(REAL) * (dk + (size_t)K + 1));
    w->part = (double *)malloc(sizeof(double) * (size_t)w->nch * (size_t)(K + 1));
    if (!w->z || !w->weff || !w->gw || !w->part) return IIS_ENOMEM;
    if (!X->idx && need_grad && X->d > 0) {
        w->natz = FN(atz_chunks)(X->n, X->d, K);
        w->gpart = (REAL *)malloc(sizeof(REAL) * ((size_t)w->natz * dk + 1));
        if (!w->gpart) return IIS_ENOMEM;
    }
    if (X->idx && need_grad) {
        /* cap the scatter buffers at ~64 MB; the chunk count depends only on the
         * problem size, never on the thread count */
        size_t cap = (size_t)(64u << 20) / (sizeof(REAL) * (dk + 1));
        int nch = (int)(cap < 1 ? 1 : (cap > 32 ? 32 : cap));
        if (X->n < nch) nch = (int)(X->n > 0 ? X->n : 1);
        w->nch_ell = nch;
        w->ellacc = (REAL *)malloc(sizeof(REAL) * (size_t)nch * (dk + 1));
        if (!w->ellacc) return IIS_ENOMEM;
    }
    return IIS_OK;
}

/* weff = W / sigma (per row), c = b - sum_j mu_j / sigma_j W_j */
static void FN(effective)(const iis_design *X, int K, const double *theta, REAL *weff, double *c)
{
    const REAL *mu = (const REAL *)X->mu, *sg = (const REAL *)X->sigma;
    size_t dk = (size_t)X->d * (size_t)K;
    for (int q = 0; q < K; q++) c[q] = theta[dk + q];
    for (int j = 0; j < X->d; j++) {
        double inv = sg ? 1.0 / (double)sg[j] : 1.0;
        for (int q = 0; q < K; q++) {
            double wv = theta[(size_t)j * K + q] * inv;
            weff[(size_t)j * K + q] = (REAL)wv;
            if (mu) c[q] -= (double)mu[j] * wv;
        }
    }
}

/* Row kernels of a pass (IIS_HOT: built per instruction set, see internal.h).
 * Each works on its own rows [lo, hi); the callers split rows into fixed chunks. */

/* y += v x over K entries (inlined into the IIS_HOT callers, so vectorised per ISA) */
static inline void FN(axpy)(int K, REAL v, const REAL *restrict x, REAL *restrict y)
{
    for (int q = 0; q < K; q++) y[q] += v * x[q];
}

/* ELL logits: z_i = c + sum_j v_ij weff[idx_ij] */
IIS_HOT static void FN(ell_logits_rows)(const int32_t *restrict idx, const REAL *restrict val, int k,
                                        const REAL *restrict weff, const REAL *restrict cr, int K,
                                        int64_t lo, int64_t hi, REAL *restrict z)
{
    for (int64_t i = lo; i < hi; i++) {
        REAL *restrict zi = z + i * (int64_t)K;
        const int32_t *ix = idx + i * (int64_t)k;
        const REAL *vx = val + i * (int64_t)k;
        for (int q = 0; q < K; q++) zi[q] = cr[q];
        for (int j = 0; j < k; j++) FN(axpy)(K, vx[j], weff + (size_t)ix[j] * K, zi);
    }
}

/* ELL gradient: acc (d x K) = sum_i x_i g_i^T over rows [lo, hi) */
IIS_HOT static void FN(ell_grad_rows)(const int32_t *restrict idx, const REAL *restrict val, int k,
                                      const REAL *restrict g, int K, size_t dk, int64_t lo,
                                      int64_t hi, REAL *restrict acc)
{
    memset(acc, 0, sizeof(REAL) * dk);
    for (int64_t i = lo; i < hi; i++) {
        const REAL *restrict gi = g + i * (int64_t)K;
        const int32_t *ix = idx + i * (int64_t)k;
        const REAL *vx = val + i * (int64_t)k;
        for (int j = 0; j < k; j++) FN(axpy)(K, vx[j], gi, acc + (size_t)ix[j] * K);
    }
}

/* Softmax rows: z_i (+= c when cr), loss_i = lse(z_i) - z_iy, z_i <- softmax(z_i) - e_y;
 * p (K + 1 doubles) gets the column sums of the result and the loss. */
IIS_HOT static void FN(softmax_rows)(const iis_ctx *ctx, REAL *restrict z,
                                     const int32_t *restrict y, int K, const REAL *restrict cr,
                                     int64_t lo, int64_t hi, double *restrict p)
{
#if !IS_DOUBLE
    if (iis_use_simd(ctx)) {
        iis_simd_softmax_rows(z, y, K, cr, lo, hi, p, NULL, 0);
        return;
    }
#endif
    for (int64_t i = lo; i < hi; i++) {
        REAL *restrict zi = z + i * (int64_t)K;
        REAL mx, zy, inv;
        double sr = 0.0;
        if (cr)
            for (int q = 0; q < K; q++) zi[q] += cr[q];
        mx = zi[0];
        zy = zi[y[i]];
#pragma omp simd reduction(max : mx)
        for (int q = 1; q < K; q++) mx = zi[q] > mx ? zi[q] : mx;
        for (int q = 0; q < K; q++) zi[q] = VEXP(zi[q] - mx);
        {
            /* eight running sums in REAL (each at most K/8 terms <= 1), added in double */
            REAL s8[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            int q = 0;
            for (; q + 8 <= K; q += 8)
                for (int j = 0; j < 8; j++) s8[j] += zi[q + j];
            for (; q < K; q++) s8[0] += zi[q];
            for (int j = 0; j < 8; j++) sr += (double)s8[j];
        }
        p[K] += (double)mx + log(sr) - (double)zy;
        inv = (REAL)(1.0 / sr);
        for (int q = 0; q < K; q++) {
            zi[q] *= inv;
            p[q] += (double)zi[q];
        }
        zi[y[i]] -= 1;
        p[y[i]] -= 1.0;
    }
}

/* w->z (n x K logits) <- softmax - e_y row by row, over the fixed chunks; w->part gets
 * each chunk's column sums and loss */
static void FN(softmax_chunks)(const iis_ctx *ctx, const int32_t *y, int K, int64_t n, int nt,
                               FN(work) * w)
{
    int c;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (c = 0; c < w->nch; c++) {
        int64_t lo, hi;
        double *p = w->part + (size_t)c * (K + 1);
        iis_chunk(n, w->nch, c, &lo, &hi);
        memset(p, 0, sizeof(double) * (size_t)(K + 1));
        FN(softmax_rows)(ctx, w->z, y, K, NULL, lo, hi, p);
    }
}

/* out[e] = sum over the nch partial products part[c] (each dk long), in chunk order
 * and in double: the same sum for any thread count */
static void FN(sum_parts)(const iis_ctx *ctx, const REAL *part, int nch, size_t dk, double *out)
{
    int64_t e, edk = (int64_t)dk;
#pragma omp parallel for num_threads(iis_nt_for(ctx, edk * nch)) schedule(static)
    for (e = 0; e < edk; e++) {
        double t = 0.0;
        for (int c = 0; c < nch; c++) t += (double)part[(size_t)c * dk + (size_t)e];
        out[e] = t;
    }
}

/* rows per block of the fused pass: X_b (512 x d floats) stays in a 2 MB L2 for d up
 * to ~1000, Z_b (512 x K) in L1/L2; 256 to 2,048 measured within noise on W1 */
#define IIS_FUSED_BLOCK 512

/* One pass over a dense design, fused: for each block of rows, Z_b = X_b weff + c
 * (one GEMM), softmax and loss on Z_b while it is in cache, then part_c += X_b^T G_b
 * (a second GEMM while X_b is in cache). X is streamed once per pass instead of twice
 * and Z never makes a round trip to memory. Rows are cut into w->natz fixed chunks
 * (one partial d x K product and one K + 1 partial per chunk, added in chunk order),
 * so the result does not depend on the thread count. On return grad[0, dk) = X^T G
 * in double and w->part holds the natz softmax partials. */
static int FN(fused_dense_pass)(const iis_ctx *ctx, const iis_design *X, const int32_t *y, int K,
                                const REAL *weff, const REAL *cr, FN(work) * w, double *grad)
{
    const int64_t n = X->n, ldx = X->ldx;
    const int d = X->d, nch = w->natz;
    const size_t dk = (size_t)d * (size_t)K;
    const REAL *x = (const REAL *)X->x;
    int nt = iis_nt_for(ctx, n * (int64_t)K * d / 32), c;
    iis_poll pl = {0, 0.0};
    { /* chunks handed out as threads free up (a preempted core does not hold the
       * other at a barrier); each chunk has its own partials: the same bits */
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
        for (c = 0; c < nch; c++) {
            int64_t lo, hi;
            REAL *part = w->gpart + (size_t)c * dk;
            double *p = w->part + (size_t)c * (K + 1);
            iis_chunk(n, nch, c, &lo, &hi);
            memset(p, 0, sizeof(double) * (size_t)(K + 1));
            if (hi <= lo) memset(part, 0, sizeof(REAL) * dk);
            /* a chunk can run for seconds on large problems (ImageNet-sized N, d, K):
             * Ctrl-C is looked at before every block, not only between rounds */
            for (int64_t b0 = lo; b0 < hi && !iis_team_interrupted(ctx, &pl);
                 b0 += IIS_FUSED_BLOCK) {
                int rows = (int)(hi - b0 < IIS_FUSED_BLOCK ? hi - b0 : IIS_FUSED_BLOCK);
                REAL *zb = w->z + b0 * K;
                REAL one = 1, zero = 0, beta = b0 == lo ? 0 : 1;
                /* column-major views: Z_b^T (K x rows) = weff^T X_b^T;
                 * part^T (K x d) (+)= G_b^T (K x rows) X_b (rows x d) */
                char nn = 'N', tt = 'T';
                int ik = K, id = d, ir = rows, il = (int)ldx;
                GEMM(ctx)(&nn, &nn, &ik, &ir, &id, &one, weff, &ik, x + b0 * ldx, &il, &zero, zb,
                          &ik);
                FN(softmax_rows)(ctx, w->z, y, K, cr, b0, b0 + rows, p);
                GEMM(ctx)(&nn, &tt, &ik, &id, &ir, &one, zb, &ik, x + b0 * ldx, &il, &beta, part,
                          &ik);
            }
        }
    }
    if (pl.stop) return IIS_EINTR;
    FN(sum_parts)(ctx, w->gpart, nch, dk, grad);
    return IIS_OK;
}

/* z (n x K) = X weff + c, with c in REAL */
static int FN(logits)(const iis_ctx *ctx, const iis_design *X, int K, const REAL *weff,
                      const REAL *cr, REAL *z)
{
    int64_t i, n = X->n;
    int nt = iis_nt_for(ctx, n * (int64_t)K * (X->idx ? (X->k > 0 ? X->k : 1) : 1));
    if (X->idx) {
        int64_t nb = (n + 255) / 256, bi;
#pragma omp parallel for num_threads(nt) schedule(static)
        for (bi = 0; bi < nb; bi++) {
            int64_t lo = bi * 256, hi = lo + 256 < n ? lo + 256 : n;
            FN(ell_logits_rows)(X->idx, (const REAL *)X->val, X->k, weff, cr, K, lo, hi, z);
        }
        return IIS_OK;
    }
    if (FN(par_gemm_ab)(ctx, iis_nt_for(ctx, n * (int64_t)K * X->d / 32), n, X->d, K,
                        (const REAL *)X->x, X->ldx, weff, z) != IIS_OK)
        return IIS_EINTR;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (i = 0; i < n; i++) {
        REAL *zi = z + i * (int64_t)K;
        for (int q = 0; q < K; q++) zi[q] += cr[q];
    }
    return IIS_OK;
}

/* P's lower triangle from the Gram's chunk partials (nch of them, stride apart, rows ld
 * apart) and column sums: added in chunk order in double, divided by n */
static void FN(gram_sum)(const iis_ctx *ctx, const REAL *part, size_t stride, int ld, int d,
                         int nch, const double *csum, int64_t n, double *P)
{
    const int d1 = d + 1;
    int64_t jj;
#pragma omp parallel for num_threads(iis_nt_for(ctx, (int64_t)d * d * nch)) schedule(static)
    for (jj = 0; jj < d; jj++) {
        const int j = (int)jj;
        for (int r = j; r < d; r++) {
            double t = 0.0;
            for (int c = 0; c < nch; c++) t += (double)part[(size_t)c * stride + (size_t)j * ld + r];
            P[(size_t)j * d1 + r] = t / (double)n;
        }
    }
    for (int j = 0; j < d; j++) {
        double t = 0.0;
        for (int c = 0; c < nch; c++) t += csum[(size_t)c * d + j];
        P[(size_t)j * d1 + d] = t / (double)n;
    }
    P[(size_t)d * d1 + d] = 1.0;
}

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
                    if (w->keep_z) memcpy(w->z + b0 * K, a.zb, sizeof(float) * (size_t)rows * (size_t)K);
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

/* f and gradient at theta; z is overwritten by G = softmax(z) - onehot(y) */
static int FN(fgrad)(const iis_ctx *ctx, const iis_design *X, const int32_t *y, int K, double l2,
                     const double *theta, double *grad, double *fval, FN(work) * w)
{
    int64_t n = X->n;
    int nt = iis_nt_for(ctx, n * (int64_t)K * (X->idx ? (X->k > 0 ? X->k : 1) : 1)), c;
    int d = X->d;
    size_t dk = (size_t)d * (size_t)K;
    double *cvec = grad + dk; /* borrow the bias part of grad for c */
    double loss = 0.0, reg = 0.0;
    const REAL *mu = (const REAL *)X->mu, *sg = (const REAL *)X->sigma;
    REAL *cr = w->gw; /* c in REAL */
    int npart;

    if (w->amx) { /* the AMX pass standardises X itself: W and b as they are (and the
                     centring's share of the logits in the bias, amx_center) */
        for (int q = 0; q < K; q++) cvec[q] = theta[dk + q];
        if (w->cx)
            for (int j = 0; j < d; j++)
                for (int q = 0; q < K; q++) cvec[q] += w->cx[j] * theta[(size_t)j * K + q];
        for (int q = 0; q < K; q++) cr[q] = (REAL)cvec[q];
    } else {
        FN(effective)(X, K, theta, w->weff, cvec);
        for (int q = 0; q < K; q++) cr[q] = (REAL)cvec[q];
    }
#if AMX_PASSES
    if (w->amx) {
        if (FN(amx_pass)(ctx, X, y, K, theta, cr, NULL, w, grad) != IIS_OK) return IIS_EINTR;
        npart = w->namx;
    } else
#endif
    if (!X->idx && d > 0) {
        if (FN(fused_dense_pass)(ctx, X, y, K, w->weff, cr, w, grad) != IIS_OK) return IIS_EINTR;
        npart = w->natz;
    } else {
        int err = FN(logits)(ctx, X, K, w->weff, cr, w->z);
        if (err != IIS_OK) return err;
        /* per row: loss_i = lse(z_i) - z_iy; z_i <- softmax(z_i) - e_y; partial sums
         * per fixed chunk */
        FN(softmax_chunks)(ctx, y, K, n, nt, w);
        npart = w->nch;
    }
    for (int q = 0; q < K; q++) grad[dk + q] = 0.0;
    for (c = 0; c < npart; c++) {
        const double *p = w->part + (size_t)c * (K + 1);
        loss += p[K];
        for (int q = 0; q < K; q++) grad[dk + q] += p[q];
    }
    /* gradient wrt the effective weights: X^T G */
    if (X->idx) {
        int nch = w->nch_ell;
#pragma omp parallel for num_threads(nt) schedule(static)
        for (c = 0; c < nch; c++) {
            int64_t lo, hi;
            iis_chunk(n, nch, c, &lo, &hi);
            FN(ell_grad_rows)(X->idx, (const REAL *)X->val, X->k, w->z, K, dk, lo, hi,
                              w->ellacc + (size_t)c * dk);
        }
        FN(sum_parts)(ctx, w->ellacc, nch, dk, grad);
    } else if (d > 0) { /* X^T G is in grad already (fused or AMX pass) */
        if (w->amx && w->cx)
            for (int j = 0; j < d; j++)
                for (int q = 0; q < K; q++) grad[(size_t)j * K + q] += w->cx[j] * grad[dk + q];
        if ((sg || mu) && !w->amx)
            for (int j = 0; j < d; j++) {
                double inv = sg ? 1.0 / (double)sg[j] : 1.0, m0 = mu ? (double)mu[j] : 0.0;
                for (int q = 0; q < K; q++)
                    grad[(size_t)j * K + q] = (grad[(size_t)j * K + q] - m0 * grad[dk + q]) * inv;
            }
    } else {
        for (size_t e = 0; e < dk; e++) grad[e] = 0.0;
    }
    /* scale by 1/n and add the penalty */
    for (size_t e = 0; e < dk; e++) {
        grad[e] = grad[e] / (double)n + l2 * theta[e];
        reg += theta[e] * theta[e];
    }
    for (int q = 0; q < K; q++) grad[dk + q] /= (double)n;
    *fval = loss / (double)n + 0.5 * l2 * reg;
    return IIS_OK;
}

/* ---- preconditioner ------------------------------------------------------
 * L-BFGS with H0 = gamma P^-1 instead of gamma I, where
 *   P = [X 1]^T [X 1] / n + diag(l2 on the weights) + damp * mean(diag) I
 * is the Gram matrix of the (standardised) design with its bias column: the
 * Hessian of the data term is sum_i x_i x_i^T (x) (diag(p_i) - p_i p_i^T) / n,
 * so P^-1 takes out the correlation between columns and leaves the (much
 * smaller) spread of the softmax curvature to the L-BFGS pairs. The objective,
 * the stopping rule and so the optimum are unchanged. The damping bounds the
 * step along directions the design does not span (the layernorm design has
 * one: its rows sum to zero), where float32 gradients carry only rounding.
 * Measured on W1 (benchmarks/): L-BFGS iterations to max|grad| <= 1e-5 fall from
 * 90 to 55 for the probe and from 330 to 147 over the five dense ratios of the
 * path; k-sparse (ELL) designs gained nothing in a prototype and are left plain.
 * Damping from 1e-2 to 1e-1 measured the same; 1e-3 and below let the rounding
 * in the null direction of the layernorm design slow the s = 0 fit. */
#define IIS_PRECOND_DAMP 1e-2
/* P^-1 is applied as one GEMM per slab of classes: the rows of the K x (d+1)
 * right-hand side are independent, so slabs fixed by K (at most IIS_PRECOND_SLAB
 * classes, of equal size) run in parallel and give the same bits for any thread
 * count */
#define IIS_PRECOND_SLAB 32

/* Worth it: a dense design, the Gram (n d^2 flops) at most 16 passes (4 n d K),
 * P small enough to factor, enough rows to estimate it, and the BLAS/LAPACK
 * routines in the table. */
static int FN(precond_wanted)(const iis_ctx *ctx, const iis_design *X, int K,
                              const iis_solver_params *prm)
{
    const iis_blas *bl = ctx ? ctx->blas : NULL;
    int64_t d1 = (int64_t)X->d + 1;
    if (!prm->precondition || X->idx || X->d < 1 || !bl) return 0;
    if (!SYRK(ctx) || !bl->dsyrk || !bl->dtrsm || !bl->dpotrf) return 0;
    return d1 <= 4096 && X->n >= 2 * d1 && (int64_t)X->d <= 64 * (int64_t)K;
}

/* chunks of the Gram: fixed by the problem size (never the thread count), the
 * d x d REAL partials capped at ~128 MB in all */
static int FN(gram_chunks)(int64_t n, int d)
{
    size_t cap = ((size_t)128 << 20) / (sizeof(REAL) * (size_t)d * (size_t)d + 1);
    int64_t c = n / 4096;
    if (c > 16) c = 16;
    if ((size_t)c > cap) c = (int64_t)cap;
    return c < 1 ? 1 : (int)c;
}

/* Chunk c of the Gram into its partials: pc (d x d, column-major lower) = X'_c^T X'_c
 * and cs (d) = the column sums of X'_c, X' the design after its implicit
 * standardisation. One syrk per 512-row block, on a standardised copy of the block
 * when mu/sigma are set; Ctrl-C is looked at before each block, as in the fused pass. */
static int FN(gram_chunk)(const iis_ctx *ctx, const iis_design *X, int nch, int c, REAL *pc,
                          double *cs, iis_poll *pl)
{
    const int64_t ldx = X->ldx;
    const int d = X->d;
    const REAL *x = (const REAL *)X->x, *mu = (const REAL *)X->mu, *sg = (const REAL *)X->sigma;
    REAL *scr = NULL;
    int64_t lo, hi;
    iis_chunk(X->n, nch, c, &lo, &hi);
    if ((mu || sg) && !(scr = (REAL *)malloc(sizeof(REAL) * (size_t)IIS_FUSED_BLOCK * d)))
        return IIS_ENOMEM;
    for (int64_t b0 = lo; b0 < hi && !iis_team_interrupted(ctx, pl); b0 += IIS_FUSED_BLOCK) {
        int rows = (int)(hi - b0 < IIS_FUSED_BLOCK ? hi - b0 : IIS_FUSED_BLOCK);
        const REAL *xb = x + b0 * ldx;
        int ld = (int)ldx, id = d;
        char lo_ = 'L', nn = 'N';
        REAL one = 1;
        if (scr) {
            for (int r = 0; r < rows; r++)
                for (int j = 0; j < d; j++) {
                    REAL v = xb[(int64_t)r * ldx + j];
                    if (mu) v -= mu[j];
                    if (sg) v /= sg[j];
                    scr[(size_t)r * d + j] = v;
                }
            xb = scr;
            ld = d;
        }
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < d; j++) cs[j] += (double)xb[(int64_t)r * ld + j];
        /* column-major: X_b^T is d x rows (ld ld), so pc += X_b^T X_b */
        SYRK(ctx)(&lo_, &nn, &id, &rows, &one, xb, &ld, &one, pc, &id);
    }
    free(scr);
    return IIS_OK;
}

/* P (d+1 x d+1, column-major, lower triangle) = [X' 1]^T [X' 1] / n. Each fixed chunk
 * of rows has its own REAL partial; the partials are added in chunk order in double,
 * so the result is the same for any thread count. */
static int FN(gram)(const iis_ctx *ctx, const iis_design *X, double *P, int amx)
{
    const int64_t n = X->n;
    const int d = X->d, nch = FN(gram_chunks)(n, d);
    const size_t dd = (size_t)d * (size_t)d;
    const int nt = iis_nt_for(ctx, n * (int64_t)d * d / 32);
    REAL *part;
    double *csum;
    int err = IIS_OK, c;
    iis_poll pl = {0, 0.0};
#if AMX_PASSES
    if (amx) return FN(gram_amx)(ctx, X, P);
#else
    (void)amx;
#endif
    part = (REAL *)calloc((size_t)nch * dd + 1, sizeof(REAL));
    csum = (double *)calloc((size_t)nch * (size_t)d, sizeof(double));
    if (!part || !csum) err = IIS_ENOMEM;
    if (err == IIS_OK) {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (c = 0; c < nch; c++) {
            int e = FN(gram_chunk)(ctx, X, nch, c, part + (size_t)c * dd, csum + (size_t)c * d,
                                   &pl);
            if (e != IIS_OK) {
#pragma omp atomic write
                err = e;
            }
        }
        if (err == IIS_OK && pl.stop) err = IIS_EINTR;
    }
    if (err == IIS_OK) FN(gram_sum)(ctx, part, dd, d, d, nch, csum, n, P);
    free(part);
    free(csum);
    return err;
}

/* l2 on the weights and the damping (IIS_PRECOND_DAMP times the mean of the first d
 * diagonal entries, 1 when that is not positive) on the diagonal of the d1 x d1 P */
static void FN(precond_damp)(int d, double l2, double *P)
{
    const int d1 = d + 1;
    double mean = 0.0, damp;
    for (int j = 0; j < d; j++) mean += P[(size_t)j * d1 + j];
    damp = IIS_PRECOND_DAMP * (mean / d > 0 ? mean / d : 1.0);
    for (int j = 0; j < d1; j++) P[(size_t)j * d1 + j] += damp + (j < d ? l2 : 0.0);
}

/* P itself (lower triangle), l2 on the weights and the damping on the diagonal */
static int FN(precond_matrix)(const iis_ctx *ctx, const iis_design *X, double l2, double *P,
                              int amx)
{
    int err;
    if ((err = FN(gram)(ctx, X, P, amx)) != IIS_OK) return err;
    FN(precond_damp)(X->d, l2, P);
    return IIS_OK;
}

int FN(iis_logreg_precond)(const iis_ctx *ctx, const iis_design *X, double l2, int amx, double *P)
{
    int err;
    size_t d1;
    if (!X || !P || X->idx || X->n < 1 || X->d < 1 || !(l2 >= 0)) return IIS_EINVAL;
    if (X->ldx < X->d || !iis_fits_int(X->ldx) || !iis_fits_int(X->n)) return IIS_EINVAL;
    if (!ctx || !ctx->blas || !SYRK(ctx)) return IIS_ENOBLAS;
#if AMX_PASSES
    if (amx && !iis_use_amx(ctx)) return IIS_EINVAL;
#else
    if (amx) return IIS_EINVAL;
#endif
    if ((err = FN(precond_matrix)(ctx, X, l2, P, amx)) != IIS_OK) return err;
    d1 = (size_t)X->d + 1;
    for (size_t j = 0; j < d1; j++) /* mirror the lower triangle */
        for (size_t r = j + 1; r < d1; r++) P[r * d1 + j] = P[j * d1 + r];
    return IIS_OK;
}

static int FN(ell_gram)(const iis_ctx *ctx, const iis_design *X, double *G);

/* [X' 1]^T [X' 1] / n (lower) for any design: the ELL Gram for k-sparse rows, else the
 * dense one, on AMX tiles where they pay */
static int FN(design_gram)(const iis_ctx *ctx, const iis_design *X, double *P)
{
    if (X->idx) return FN(ell_gram)(ctx, X, P);
#if AMX_PASSES
    return FN(gram)(ctx, X, P, FN(amx_gram_wanted)(ctx, X));
#else
    return FN(gram)(ctx, X, P, 0);
#endif
}

/* P^-1 (symmetric, both triangles, column-major) in place of P, from its Cholesky
 * factor L: P^-1 = L^-T L^-1. *ok = 0 when P could not be factored (the solver then
 * runs plain). Applied to the K x (d+1) right-hand side every iteration, the
 * explicit inverse is one GEMM per slab of classes where the factor took two
 * triangular solves: measured on W1's probe (d = 768, K = 100, 2 threads) 1.4 ms
 * per apply instead of 6.5 ms, twice per L-BFGS iteration (the step and its
 * scale gamma). */
static int FN(precond_build)(const iis_ctx *ctx, const iis_design *X, double l2, double *P,
                             double *G0, int *ok)
{
    const int d1 = X->d + 1;
    char lo = 'L', le = 'L', nn = 'N', tt = 'T';
    int info = 0, err;
    double one = 1.0, zero = 0.0, *Li;
    *ok = 0;
    if ((err = FN(design_gram)(ctx, X, P)) != IIS_OK) return err;
    /* the undamped Gram, when the class blocks will want it */
    if (G0) memcpy(G0, P, sizeof(double) * (size_t)d1 * (size_t)d1);
    FN(precond_damp)(X->d, l2, P);
    /* a Gram that overflowed (|x| near the float32 range with normalize="none") is
     * not factored: the solver runs plain, as it would without the routines */
    for (int j = 0; j < d1; j++)
        for (int r = j; r < d1; r++)
            if (!isfinite(P[(size_t)j * d1 + r])) return IIS_OK;
    ctx->blas->dpotrf(&lo, &d1, P, &d1, &info);
    *ok = info == 0;
    for (int j = 0; j < d1 && *ok; j++) *ok = isfinite(P[(size_t)j * d1 + j]) && P[(size_t)j * d1 + j] > 0;
    if (!*ok) return IIS_OK;
    /* L^-1 = L \ I, then P^-1 = L^-T L^-1 (lower), mirrored */
    if (!(Li = (double *)calloc((size_t)d1 * (size_t)d1, sizeof(double)))) return IIS_ENOMEM;
    for (int j = 0; j < d1; j++) Li[(size_t)j * d1 + j] = 1.0;
    ctx->blas->dtrsm(&le, &lo, &nn, &nn, &d1, &d1, &one, P, &d1, Li, &d1);
    ctx->blas->dsyrk(&lo, &tt, &d1, &d1, &one, Li, &d1, &zero, P, &d1);
    free(Li);
    for (int j = 0; j < d1; j++)
        for (int r = j + 1; r < d1; r++) P[(size_t)r * d1 + j] = P[(size_t)j * d1 + r];
    for (size_t e = 0; e < (size_t)d1 * (size_t)d1 && *ok; e++) *ok = isfinite(P[e]);
    return IIS_OK;
}

/* out (the K x (d+1) column-major view of theta's layout) = v P^-1 (Pi = P^-1,
 * symmetric); out and v do not overlap */
static void FN(precond_apply)(const iis_ctx *ctx, const double *Pi, int d1, int K, const double *v,
                              double *out)
{
    const int ns = (K + IIS_PRECOND_SLAB - 1) / IIS_PRECOND_SLAB, width = (K + ns - 1) / ns;
    int nt = iis_nt_for(ctx, (int64_t)K * d1 * d1), sl;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (sl = 0; sl < ns; sl++) {
        int q0 = sl * width, m = K - q0 < width ? K - q0 : width;
        char nn = 'N';
        double one = 1.0, zero = 0.0;
        if (m > 0)
            ctx->blas->dgemm(&nn, &nn, &m, &d1, &d1, &one, v + q0, &K, Pi, &d1, &zero, out + q0, &K);
    }
}

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

/* The ELL design's Gram [X 1]^T [X 1] / n (lower triangle, column-major, d1 x d1):
 * fixed chunks of rows, each with its own partial, added in chunk order */
static int FN(ell_gram)(const iis_ctx *ctx, const iis_design *X, double *G)
{
    const int64_t n = X->n;
    const int d = X->d, d1 = d + 1, k = X->k;
    const size_t dd = (size_t)d1 * (size_t)d1;
    const REAL *val = (const REAL *)X->val;
    int nch = (int)(n / 4096 > 8 ? 8 : (n / 4096 < 1 ? 1 : n / 4096)), c;
    double *part = (double *)calloc((size_t)nch * dd, sizeof(double));
    if (!part) return IIS_ENOMEM;
#pragma omp parallel for num_threads(iis_nt_for(ctx, n * (int64_t)k * k)) schedule(static)
    for (c = 0; c < nch; c++) {
        int64_t lo, hi;
        double *pc = part + (size_t)c * dd;
        iis_chunk(n, nch, c, &lo, &hi);
        for (int64_t i = lo; i < hi; i++) {
            const int32_t *ix = X->idx + i * k;
            const REAL *vx = val + i * k;
            for (int a = 0; a < k; a++) {
                const int ja = ix[a];
                const double va = (double)vx[a];
                pc[(size_t)ja * d1 + d] += va;
                for (int b = 0; b < k; b++) {
                    const int jb = ix[b];
                    if (jb >= ja) pc[(size_t)ja * d1 + jb] += va * (double)vx[b];
                }
            }
        }
    }
    for (size_t e = 0; e < dd; e++) {
        double t = 0.0;
        for (c = 0; c < nch; c++) t += part[(size_t)c * dd + e];
        G[e] = t / (double)n;
    }
    G[(size_t)d * d1 + d] = 1.0;
    free(part);
    return IIS_OK;
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

/* The K Cholesky factors of the damped H_q at theta into Lb (K of them, each the lower
 * triangle packed by columns in float32: IIS_PACKED(d1) floats); G0 is the undamped
 * Gram (lower). *ok = 0 when a block could not be
 * factored (the solver keeps its preconditioner). Every class is one thread's
 * work from its rows in index order: the same bits for any thread count. */
static int FN(block_build)(const iis_ctx *ctx, const iis_design *X, const int32_t *y, int K,
                           double l2, const double *theta, int have_z, FN(work) * w,
                           const double *G0, float *Lb, int *ok)
{
    const int64_t n = X->n;
    const int d = X->d, d1 = d + 1;
    const size_t dd = (size_t)d1 * (size_t)d1;
    const int64_t m = n / K; /* rows per block (block_wanted: at least 2 d1, below n) */
    const int nslab = (K + IIS_BLOCK_SLAB - 1) / IIS_BLOCK_SLAB;
    int nt = iis_nt_for(ctx, n * (int64_t)K), c, err = IIS_OK, bad = 0;
    int64_t *cnt = (int64_t *)calloc((size_t)K, sizeof(int64_t)), **rows = NULL;
    double *wsum = (double *)calloc((size_t)K, sizeof(double));
    double *wsel = (double *)calloc((size_t)K, sizeof(double));
    double *cv = (double *)malloc(sizeof(double) * (size_t)K);
    REAL *cr = w->gw;
    *ok = 0;
    if (!cnt || !wsum || !wsel || !cv || !(rows = (int64_t **)calloc((size_t)K, sizeof(int64_t *)))) {
        err = IIS_ENOMEM;
        goto done;
    }
    for (int j = 0; j < d1; j++) /* an overflowed Gram (see precond_build): no blocks */
        for (int r = j; r < d1; r++)
            if (!isfinite(G0[(size_t)j * d1 + r])) goto done;
    /* p - e_y at theta into w->z, unless the last pass (at theta) left it there */
    if (have_z) goto probs_ready;
    FN(effective)(X, K, theta, w->weff, cv);
    for (int q = 0; q < K; q++) cr[q] = (REAL)cv[q];
    if ((err = FN(logits)(ctx, X, K, w->weff, cr, w->z)) != IIS_OK) goto done;
    FN(softmax_chunks)(ctx, y, K, n, nt, w);
probs_ready:
    /* w->z <- the curvatures w_iq = p_iq (1 - p_iq) (float32; NaN and negatives 0) */
#pragma omp parallel for num_threads(nt) schedule(static)
    for (c = 0; c < w->nch; c++) {
        int64_t lo, hi;
        iis_chunk(n, w->nch, c, &lo, &hi);
        for (int64_t i = lo; i < hi; i++) {
            REAL *zi = w->z + i * (int64_t)K;
            zi[y[i]] += 1;
            for (int q = 0; q < K; q++) {
                float pv = (float)zi[q], wv = pv * (1.0f - pv);
                zi[q] = wv > 0 ? wv : 0;
            }
        }
    }
    /* per class: the m rows of largest w (all rows of buckets above the threshold
     * bucket, then the lowest indices of that bucket), and the curvature masses */
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (c = 0; c < nslab; c++) {
        const int q0 = c * IIS_BLOCK_SLAB, q1 = q0 + IIS_BLOCK_SLAB < K ? q0 + IIS_BLOCK_SLAB : K;
        const int ns = q1 - q0;
        uint32_t *hist = (uint32_t *)calloc((size_t)IIS_BLOCK_SLAB * IIS_BLOCK_BUCKETS, sizeof(uint32_t));
        int64_t room[IIS_BLOCK_SLAB], fill[IIS_BLOCK_SLAB];
        uint32_t tb[IIS_BLOCK_SLAB];
        double ws[IIS_BLOCK_SLAB];
        int fail = !hist;
        for (int t = 0; t < ns; t++) ws[t] = 0.0;
        if (!fail) {
            for (int64_t i = 0; i < n; i++) {
                const REAL *zi = w->z + i * (int64_t)K + q0;
                for (int t = 0; t < ns; t++) {
                    float wv = (float)zi[t];
                    ws[t] += (double)wv;
                    hist[(size_t)t * IIS_BLOCK_BUCKETS + (FN(curv_bits)(wv) >> 20)]++;
                }
            }
            for (int t = 0; t < ns && !fail; t++) {
                const uint32_t *h = hist + (size_t)t * IIS_BLOCK_BUCKETS;
                int64_t cum = 0;
                int b = IIS_BLOCK_BUCKETS - 1;
                for (; b > 1; b--) {
                    if (cum + h[b] >= m) break;
                    cum += h[b];
                }
                /* bucket 0 holds the zeros (and the smallest subnormals): never taken */
                tb[t] = (uint32_t)b;
                room[t] = cum + h[b] < m ? h[b] : m - cum;
                cnt[q0 + t] = cum + room[t];
                wsum[q0 + t] = ws[t];
                fill[t] = 0;
                rows[q0 + t] = (int64_t *)malloc(sizeof(int64_t) * (size_t)(cnt[q0 + t] > 0 ? cnt[q0 + t] : 1));
                fail = !rows[q0 + t];
            }
        }
        free(hist);
        if (fail) {
#pragma omp atomic write
            err = IIS_ENOMEM;
            continue;
        }
        for (int t = 0; t < ns; t++) ws[t] = 0.0;
        for (int64_t i = 0; i < n; i++) {
            const REAL *zi = w->z + i * (int64_t)K + q0;
            for (int t = 0; t < ns; t++) {
                float wv = (float)zi[t];
                uint32_t bk = FN(curv_bits)(wv) >> 20;
                if (bk < tb[t] || (bk == tb[t] && room[t]-- <= 0)) continue;
                rows[q0 + t][fill[t]++] = i;
                ws[t] += (double)wv;
            }
        }
        for (int t = 0; t < ns; t++) wsel[q0 + t] = ws[t];
    }
    if (err != IIS_OK) goto done;
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
                FN(block_row)(X, i, sqrt((double)w->z[i * (int64_t)K + q] / (double)n),
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
    if (rows)
        for (int q = 0; q < K; q++) free(rows[q]);
    free(rows);
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

/* The start from target logits T (n x K, iis_solver_params.start_logits): theta =
 * P^-1 [X' 1]^T T / n, the (damped) least-squares fit of T by this design, through
 * the preconditioner's inverse Pi. One GEMM pass over X in the fused pass's fixed
 * chunks, partials added in chunk order (the same bits for any thread count); theta
 * is left as it was if the fit is not finite; on the AMX tiles (amx_pass) where the
 * passes run there. Measured on W1 (benchmarks/): the probe started from the s = 0
 * predictor's train logits takes 42 L-BFGS iterations instead of 60 from zero. */
static int FN(start_from_logits)(const iis_ctx *ctx, const iis_design *X, int K, const REAL *T,
                                 const double *Pi, FN(work) * w, double *theta)
{
    const int64_t n = X->n, ldx = X->ldx;
    const int d = X->d, nch = w->natz;
    const size_t dk = (size_t)d * (size_t)K, p = dk + (size_t)K;
    const REAL *x = (const REAL *)X->x, *mu = (const REAL *)X->mu, *sg = (const REAL *)X->sigma;
    int nt = iis_nt_for(ctx, n * (int64_t)K * d / 32), c, on_tiles = 0;
    double *v = (double *)malloc(sizeof(double) * p), *ts = (double *)calloc((size_t)nch * K, sizeof(double));
    double *theta_new = (double *)malloc(sizeof(double) * p);
    iis_poll pl = {0, 0.0};
    int err = IIS_OK;
    if (!v || !ts || !theta_new) err = IIS_ENOMEM;
#if AMX_PASSES
    /* X'^T T and the column sums of T directly (amx_pass with T) */
    on_tiles = w->amx;
    if (err == IIS_OK && on_tiles && FN(amx_pass)(ctx, X, NULL, K, NULL, NULL, T, w, v) != IIS_OK)
        err = IIS_EINTR;
#endif
    if (err == IIS_OK && !on_tiles) {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (c = 0; c < nch; c++) {
            int64_t lo, hi;
            REAL *part = w->gpart + (size_t)c * dk;
            double *tc = ts + (size_t)c * K;
            iis_chunk(n, nch, c, &lo, &hi);
            if (hi <= lo) memset(part, 0, sizeof(REAL) * dk);
            for (int64_t b0 = lo; b0 < hi && !iis_team_interrupted(ctx, &pl); b0 += IIS_FUSED_BLOCK) {
                int rows = (int)(hi - b0 < IIS_FUSED_BLOCK ? hi - b0 : IIS_FUSED_BLOCK);
                const REAL *tb = T + b0 * K;
                REAL one = 1, beta = b0 == lo ? 0 : 1;
                char nn = 'N', tt = 'T';
                int ik = K, id = d, ir = rows, il = (int)ldx;
                /* column-major: part^T (K x d) (+)= T_b^T (K x rows) X_b (rows x d) */
                GEMM(ctx)(&nn, &tt, &ik, &id, &ir, &one, tb, &ik, x + b0 * ldx, &il, &beta, part, &ik);
                for (int r = 0; r < rows; r++)
                    for (int q = 0; q < K; q++) tc[q] += (double)tb[(size_t)r * K + q];
            }
        }
        if (pl.stop) err = IIS_EINTR;
        if (err == IIS_OK) {
            FN(sum_parts)(ctx, w->gpart, nch, dk, v);
            for (int q = 0; q < K; q++) {
                double t = 0.0;
                for (c = 0; c < nch; c++) t += ts[(size_t)c * K + q];
                v[dk + q] = t;
            }
            /* X'^T T = diag(1 / sigma) (X^T T - mu 1^T T) */
            for (int j = 0; j < d; j++) {
                double inv = sg ? 1.0 / (double)sg[j] : 1.0, m0 = mu ? (double)mu[j] : 0.0;
                for (int q = 0; q < K; q++)
                    v[(size_t)j * K + q] = (v[(size_t)j * K + q] - m0 * v[dk + q]) * inv;
            }
        }
    }
    if (err == IIS_OK) {
        int finite = 1;
        for (size_t e = 0; e < p; e++) v[e] /= (double)n;
        FN(precond_apply)(ctx, Pi, d + 1, K, v, theta_new);
        for (size_t e = 0; e < p && finite; e++) finite = isfinite(theta_new[e]);
        if (finite) memcpy(theta, theta_new, sizeof(double) * p);
    }
    free(v);
    free(ts);
    free(theta_new);
    return err;
}

/* ---- L-BFGS vector algebra over the p = (d + 1) K parameters --------------------
 * Serial, these loops (about 50 sweeps of p doubles per iteration, over a history that
 * outgrows the L2 for the probe) were what kept 2 threads from 2x once the passes got
 * fast. They run over fixed chunks of IIS_VEC_CHUNK entries: a dot product adds its
 * chunk partials in chunk order, so the result does not depend on the thread count. */
#ifndef IIS_VEC_CHUNK
#define IIS_VEC_CHUNK 8192
#define IIS_VEC_PAR_MIN 32768 /* entries below which the loops stay serial */
#endif

static int FN(vec_threads)(const iis_ctx *ctx, size_t p)
{
    return p < IIS_VEC_PAR_MIN ? 1 : iis_nthreads(ctx);
}

/* sum of a[i] b[i]; part: scratch of ceil(p / IIS_VEC_CHUNK) doubles */
static double FN(dot)(const iis_ctx *ctx, const double *a, const double *b, size_t p, double *part)
{
    int64_t nc = (int64_t)((p + IIS_VEC_CHUNK - 1) / IIS_VEC_CHUNK), c;
    double s = 0.0;
#pragma omp parallel for num_threads(FN(vec_threads)(ctx, p)) schedule(static)
    for (c = 0; c < nc; c++) {
        size_t lo = (size_t)c * IIS_VEC_CHUNK, hi = lo + IIS_VEC_CHUNK < p ? lo + IIS_VEC_CHUNK : p;
        double t = 0.0;
        for (size_t i = lo; i < hi; i++) t += a[i] * b[i];
        part[c] = t;
    }
    for (c = 0; c < nc; c++) s += part[c];
    return s;
}

/* out = a + c b (elementwise: the same bits for any thread count; out may be a;
 * c = -1 gives a - b exactly) */
static void FN(vcomb)(const iis_ctx *ctx, double *out, const double *a, double c, const double *b,
                      size_t p)
{
    int64_t i, ip = (int64_t)p;
#pragma omp parallel for num_threads(FN(vec_threads)(ctx, p)) schedule(static)
    for (i = 0; i < ip; i++) out[i] = a[i] + c * b[i];
}

/* out = c a (out may be a) */
static void FN(vscale)(const iis_ctx *ctx, double *out, double c, const double *a, size_t p)
{
    int64_t i, ip = (int64_t)p;
#pragma omp parallel for num_threads(FN(vec_threads)(ctx, p)) schedule(static)
    for (i = 0; i < ip; i++) out[i] = c * a[i];
}

static double FN(amax)(const iis_ctx *ctx, const double *a, size_t p)
{
    double m = 0.0;
    int64_t i, ip = (int64_t)p;
#pragma omp parallel for num_threads(FN(vec_threads)(ctx, p)) schedule(static) reduction(max : m)
    for (i = 0; i < ip; i++) m = fabs(a[i]) > m ? fabs(a[i]) : m;
    return m;
}

/* A design the solver can take, labels in [0, K), and the BLAS it needs */
static int FN(check_problem)(const iis_ctx *ctx, const iis_design *X, const int32_t *y, int K)
{
    if (!X || !y || K < 1 || X->n <= 0 || X->d < 0) return IIS_EINVAL;
    if (!X->idx && (X->ldx < X->d || !iis_fits_int(X->ldx) || !iis_fits_int(X->n)))
        return IIS_EINVAL;
    if (!X->idx && X->d > 0 && !iis_blas_ok(ctx, IS_DOUBLE)) return IIS_ENOBLAS;
    for (int64_t i = 0; i < X->n; i++)
        if (y[i] < 0 || y[i] >= K) return IIS_EINVAL;
    return IIS_OK;
}

/* Ends the bf16 passes: f and g at theta again from a precise pass (or, from the
 * precise passes, a float32 one). The L-BFGS pairs gathered so far are kept (they
 * carry the curvature of the same objective up to the rounding of the design). */
static int FN(leave_amx)(const iis_ctx *ctx, const iis_design *X, const int32_t *y, int K,
                         double l2, const double *theta, double *g, double *f, FN(work) * w)
{
    w->amx = w->amx == IIS_AMX_BF16 ? IIS_AMX_PRECISE : 0;
    return FN(fgrad)(ctx, X, y, K, l2, theta, g, f, w);
}

/* The relative-decrease stop needs this many iterations in a row in which neither f
 * (by more than ftol) nor the largest gradient entry (below its best so far) improved.
 * Near the optimum of a float32 fit f is flat to rounding while the gradient still
 * shrinks: on the digits demo's hidden layer (M = 200 concepts of d = 32) the s = 0 fit
 * stopped at max|grad| = 4.3e-5 (the true gradient too) with 3 iterations counted
 * whatever the gradient did; counting only iterations without progress and 20 of them,
 * it reaches tol = 1e-5 in 217 iterations (float64: 205), and the demo's fits all do */
#ifndef IIS_FTOL_RUN
#define IIS_FTOL_RUN 20
#endif

int FN(iis_logreg_fit)(const iis_ctx *ctx, const iis_design *X, const int32_t *y, int n_classes,
                       const iis_solver_params *prm, REAL *wout, REAL *bout,
                       iis_solver_info *info)
{
    const int K = n_classes, mem = prm->memory > 0 ? prm->memory : 10;
    const double ftol = FTOL;
    size_t dk, p;
    int err = IIS_OK, it = 0, hist = 0, head = 0, stop = IIS_STOP_MAX_ITER;
    double f = 0.0, fnew = 0.0, gmax = 0.0, gbest = HUGE_VAL;
    double *theta = NULL, *g = NULL, *tn = NULL, *gn = NULL, *dir = NULL, *S = NULL, *Y = NULL;
    double *rho = NULL, *alpha = NULL, *Pi = NULL, *vpart = NULL, *G0 = NULL;
    float *Hb = NULL; /* the class blocks' factors */
    int pre = 0, ftol_hits = 0, blk = 0, blk_on = 0;
    FN(work) w;
    memset(&w, 0, sizeof(w));
    if (!prm || prm->l2 < 0 || prm->max_iter < 0) return IIS_EINVAL;
    if ((err = FN(check_problem)(ctx, X, y, K)) != IIS_OK) return err;
    dk = (size_t)X->d * (size_t)K;
    p = dk + (size_t)K;
    theta = (double *)malloc(sizeof(double) * p);
    g = (double *)malloc(sizeof(double) * p);
    tn = (double *)malloc(sizeof(double) * p);
    gn = (double *)malloc(sizeof(double) * p);
    dir = (double *)malloc(sizeof(double) * p);
    S = (double *)malloc(sizeof(double) * p * (size_t)mem);
    Y = (double *)malloc(sizeof(double) * p * (size_t)mem);
    rho = (double *)malloc(sizeof(double) * (size_t)mem);
    alpha = (double *)malloc(sizeof(double) * (size_t)mem);
    vpart = (double *)malloc(sizeof(double) * (p / IIS_VEC_CHUNK + 1));
    if (!theta || !g || !tn || !gn || !dir || !S || !Y || !rho || !alpha || !vpart) {
        err = IIS_ENOMEM;
        goto cleanup;
    }
    if ((err = FN(work_alloc)(&w, X, K, 1)) != IIS_OK) goto cleanup;
#if AMX_PASSES
    (void)FN(amx_setup)(ctx, X, K, &w, 0); /* without its buffers: the float32 passes */
#endif
    blk = FN(block_wanted)(ctx, X, K, prm);
    if (blk && !(G0 = (double *)malloc(sizeof(double) * ((size_t)X->d + 1) * ((size_t)X->d + 1)))) {
        err = IIS_ENOMEM;
        goto cleanup;
    }
    if (FN(precond_wanted)(ctx, X, K, prm)) {
        size_t d1 = (size_t)X->d + 1;
        if (!(Pi = (double *)malloc(sizeof(double) * d1 * d1))) {
            err = IIS_ENOMEM;
            goto cleanup;
        }
        if ((err = FN(precond_build)(ctx, X, prm->l2, Pi, G0, &pre)) != IIS_OK) goto cleanup;
    }
    /* the class blocks still want the Gram */
    if (blk && !Pi && (err = FN(design_gram)(ctx, X, G0)) != IIS_OK) goto cleanup;
    for (size_t e = 0; e < dk; e++) theta[e] = wout[e];
    for (int q = 0; q < K; q++) theta[dk + q] = bout[q];
    if (pre && prm->start_logits &&
        (err = FN(start_from_logits)(ctx, X, K, (const REAL *)prm->start_logits, Pi, &w, theta)) != IIS_OK)
        goto cleanup;

    if ((err = FN(fgrad)(ctx, X, y, K, prm->l2, theta, g, &f, &w)) != IIS_OK) goto cleanup;
    for (it = 0; it < prm->max_iter; it++) {
        double gd, step, gnorm;
        int ls, accepted = 0, scaled = pre;
        gmax = FN(amax)(ctx, g, p);
        if (gmax <= prm->tol) {
            if (w.amx != IIS_AMX_BF16) {
                stop = IIS_STOP_CONVERGED;
                break;
            }
            /* the bf16 passes meet the tolerance: the test is taken again on a precise
             * (or float32) pass */
            if ((err = FN(leave_amx)(ctx, X, y, K, prm->l2, theta, g, &f, &w)) != IIS_OK)
                goto cleanup;
            gmax = FN(amax)(ctx, g, p);
            if (gmax <= prm->tol) {
                stop = IIS_STOP_CONVERGED;
                break;
            }
        }
        /* the passes of the iteration before the blocks leave p - e_y in w.z */
        if (blk && it == IIS_BLOCK_AT - 1) w.keep_z = 1;
        if (blk && it == IIS_BLOCK_AT) {
            int ok = 0, z_at_theta = w.keep_z;
            w.keep_z = 0;
            if (!(Hb = (float *)malloc(sizeof(float) * (size_t)K * IIS_PACKED(X->d + 1)))) {
                err = IIS_ENOMEM;
                goto cleanup;
            }
            if ((err = FN(block_build)(ctx, X, y, K, prm->l2, theta, z_at_theta, &w, G0, Hb, &ok)) !=
                IIS_OK)
                goto cleanup;
            if (ok) { /* a new metric: the pairs start again, from the class-centred iterate */
                blk_on = 1;
                hist = head = 0;
                FN(block_center)(theta, g, &f, X->d, K, prm->l2, tn);
                gmax = FN(amax)(ctx, g, p);
                if (gmax <= prm->tol && w.amx != IIS_AMX_BF16) {
                    stop = IIS_STOP_CONVERGED;
                    break;
                }
            }
        }
        scaled = pre || blk_on;
        /* two-loop recursion: dir = -H g */
        FN(vscale)(ctx, dir, -1.0, g, p);
        for (int h = 0; h < hist; h++) {
            int s_ = (head - 1 - h + mem) % mem;
            alpha[s_] = rho[s_] * FN(dot)(ctx, S + (size_t)s_ * p, dir, p, vpart);
            FN(vcomb)(ctx, dir, dir, -alpha[s_], Y + (size_t)s_ * p, p);
        }
        /* H0 = gamma I, or gamma P^-1 with gamma = s'y / y'P^-1 y (gamma = 1 before
         * the first pair), or gamma times the class blocks' inverse (gamma <= 1) */
        if (blk_on) { /* with the newest pair's y for gamma (below) in the same sweep */
            if (hist > 0) memcpy(tn, Y + (size_t)((head - 1 + mem) % mem) * p, sizeof(double) * p);
            if ((err = FN(block_apply)(ctx, Hb, X->d + 1, K, dir, hist > 0 ? tn : NULL)) != IIS_OK)
                goto cleanup;
        } else if (pre) { /* tn is free until the line search */
            FN(precond_apply)(ctx, Pi, X->d + 1, K, dir, tn);
            memcpy(dir, tn, sizeof(double) * p);
        }
        if (hist > 0) {
            int last = (head - 1 + mem) % mem;
            const double *yl = Y + (size_t)last * p;
            double yy, gamma;
            if (blk_on || pre) { /* tn = M y (the blocks' sweep above left it there) */
                if (!blk_on) FN(precond_apply)(ctx, Pi, X->d + 1, K, yl, tn);
                yy = FN(dot)(ctx, tn, yl, p, vpart);
            } else {
                yy = FN(dot)(ctx, yl, yl, p, vpart);
            }
            gamma = 1.0 / (rho[last] * yy);
            /* the blocks carry the curvature's scale: their steps are only ever
             * shortened (where the pairs see more curvature than the blocks, e.g.
             * blocks from an iterate far from the optimum), never lengthened (gamma = 1
             * took 94 iterations on W1 in the prototype, the plain gamma 102) */
            if (blk_on && !(gamma < 1.0)) gamma = 1.0;
            FN(vscale)(ctx, dir, gamma, dir, p);
        }
        for (int h = hist - 1; h >= 0; h--) {
            int s_ = (head - 1 - h + mem) % mem;
            double beta = rho[s_] * FN(dot)(ctx, Y + (size_t)s_ * p, dir, p, vpart);
            FN(vcomb)(ctx, dir, dir, alpha[s_] - beta, S + (size_t)s_ * p, p);
        }
        gd = FN(dot)(ctx, g, dir, p, vpart);
        if (!(gd < 0.0)) { /* not a descent direction: restart from steepest descent */
            FN(vscale)(ctx, dir, -1.0, g, p);
            gd = FN(dot)(ctx, g, dir, p, vpart);
            hist = 0;
            scaled = 0;
        }
        gnorm = sqrt(FN(dot)(ctx, g, g, p, vpart));
        /* P^-1 g has the scale of a Newton step already (at most: the softmax
         * curvature is below 1), so it starts at a unit step like the pairs do */
        step = hist == 0 && !scaled ? (1.0 / gnorm < 1.0 ? 1.0 / gnorm : 1.0) : 1.0;
        for (ls = 0; ls < 40; ls++) {
            FN(vcomb)(ctx, tn, theta, step, dir, p);
            if ((err = FN(fgrad)(ctx, X, y, K, prm->l2, tn, gn, &fnew, &w)) != IIS_OK) goto cleanup;
            if (fnew <= f + 1e-4 * step * gd) {
                accepted = 1;
                break;
            }
            step *= 0.5;
            /* a line search can take up to 40 passes over the data: keep Ctrl-C prompt */
            if (iis_interrupted(ctx)) {
                err = IIS_EINTR;
                goto cleanup;
            }
        }
        if (!accepted && blk_on) {
            /* the blocks' step found no decrease (curvatures from an iterate far from
             * the optimum, e.g. a warm start whose probabilities are all near 0 or 1):
             * back to the Gram (or plain) steps, with a fresh history */
            blk_on = 0;
            hist = head = 0;
            continue;
        }
        if (!accepted) {
            if (!w.amx) { /* no decrease possible at this precision */
                stop = IIS_STOP_LINE_SEARCH;
                break;
            }
            /* none at the AMX passes' precision: go on in the next (precise, then
             * float32) from theta */
            if ((err = FN(leave_amx)(ctx, X, y, K, prm->l2, theta, g, &f, &w)) != IIS_OK)
                goto cleanup;
            continue;
        }
        /* curvature pair */
        {
            double sy;
            double *sv = S + (size_t)head * p, *yv = Y + (size_t)head * p;
            FN(vcomb)(ctx, sv, tn, -1.0, theta, p);
            FN(vcomb)(ctx, yv, gn, -1.0, g, p);
            sy = FN(dot)(ctx, sv, yv, p, vpart);
            if (sy > 1e-12 * FN(dot)(ctx, yv, yv, p, vpart)) {
                rho[head] = 1.0 / sy;
                head = (head + 1) % mem;
                if (hist < mem) hist++;
            }
        }
        {
            double rel = (f - fnew) / fmax(fmax(fabs(f), fabs(fnew)), 1.0), gnew = FN(amax)(ctx, gn, p);
            /* the relative-decrease stop counts iterations where neither f nor the
             * gradient made progress (the gradient still shrinking is progress) */
            if (rel > ftol || gnew < gbest) ftol_hits = 0;
            if (gnew < gbest) gbest = gnew;
            memcpy(theta, tn, sizeof(double) * p);
            memcpy(g, gn, sizeof(double) * p);
            f = fnew;
            if (rel <= ftol && w.amx == IIS_AMX_BF16) {
                /* the relative-decrease stop belongs to the precise or float32 passes */
                if ((err = FN(leave_amx)(ctx, X, y, K, prm->l2, theta, g, &f, &w)) != IIS_OK)
                    goto cleanup;
            } else if (rel <= ftol && ++ftol_hits >= IIS_FTOL_RUN) {
                it++;
                stop = IIS_STOP_REL_DECREASE; /* relative reduction of f below ftol (scipy's
                                                 factr rule), IIS_FTOL_RUN iterations in a row */
                break;
            }
        }
        if (iis_interrupted(ctx)) {
            err = IIS_EINTR;
            goto cleanup;
        }
    }
    gmax = FN(amax)(ctx, g, p);
    if (gmax <= prm->tol) stop = IIS_STOP_CONVERGED; /* (a stop for another reason may meet it) */
    {
        double gsum = f; /* NaN or Inf in f or any gradient entry makes the sum non-finite */
        for (size_t e = 0; e < p; e++) gsum += 0.0 * g[e];
        if (!isfinite(gsum)) stop = IIS_STOP_NONFINITE;
    }
    for (size_t e = 0; e < dk; e++) wout[e] = (REAL)theta[e];
    for (int q = 0; q < K; q++) bout[q] = (REAL)theta[dk + q];
    if (info) {
        info->n_iter = it;
        info->converged = stop == IIS_STOP_CONVERGED;
        info->stop = stop;
        info->loss = f;
        info->grad_max = gmax;
    }
cleanup:
    FN(work_free)(&w);
    free(theta);
    free(g);
    free(tn);
    free(gn);
    free(dir);
    free(S);
    free(Y);
    free(rho);
    free(alpha);
    free(vpart);
    free(Pi);
    free(G0);
    free(Hb);
    return err;
}

int FN(iis_logreg_predict)(const iis_ctx *ctx, const iis_design *X, int n_classes, const REAL *w,
                           const REAL *b, REAL *logits, int32_t *pred)
{
    const int K = n_classes;
    int err = IIS_OK;
    size_t dk;
    int64_t i, n;
    REAL *z = logits;
    REAL *weff = NULL, *cr = NULL;
    double *c = NULL, *theta = NULL;
    if (!X || K < 1 || X->n < 0 || X->d < 0) return IIS_EINVAL;
    if (!X->idx && (X->ldx < X->d || !iis_fits_int(X->ldx) || !iis_fits_int(X->n)))
        return IIS_EINVAL;
    if (!X->idx && X->d > 0 && !iis_blas_ok(ctx, IS_DOUBLE)) return IIS_ENOBLAS;
    n = X->n;
    if (n == 0) return IIS_OK;
    dk = (size_t)X->d * (size_t)K;
    theta = (double *)malloc(sizeof(double) * (dk + (size_t)K));
    c = (double *)malloc(sizeof(double) * (size_t)K);
    weff = (REAL *)malloc(sizeof(REAL) * (dk + 1));
    cr = (REAL *)malloc(sizeof(REAL) * (size_t)K);
    if (!z) z = (REAL *)malloc(sizeof(REAL) * (size_t)n * (size_t)K);
    if (!theta || !c || !weff || !cr || !z) {
        err = IIS_ENOMEM;
        goto cleanup;
    }
    for (size_t e = 0; e < dk; e++) theta[e] = w[e];
    for (int q = 0; q < K; q++) theta[dk + q] = b[q];
    FN(effective)(X, K, theta, weff, c);
    for (int q = 0; q < K; q++) cr[q] = (REAL)c[q];
    if ((err = FN(logits)(ctx, X, K, weff, cr, z)) != IIS_OK) goto cleanup;
    if (pred) {
        int nt = iis_nt_for(ctx, n * (int64_t)K);
#pragma omp parallel for num_threads(nt) schedule(static)
        for (i = 0; i < n; i++) {
            const REAL *zi = z + i * (int64_t)K;
            int best = 0;
            for (int q = 1; q < K; q++)
                if (zi[q] > zi[best]) best = q;
            pred[i] = best;
        }
    }
cleanup:
    if (z != logits) free(z);
    free(weff);
    free(cr);
    free(c);
    free(theta);
    return err;
}

int FN(iis_logreg_objective)(const iis_ctx *ctx, const iis_design *X, const int32_t *y,
                             int n_classes, double l2, const REAL *w, const REAL *b, int amx,
                             double *fval, double *grad)
{
    const int K = n_classes;
    size_t dk, p;
    int err = IIS_OK;
    double *theta = NULL;
    FN(work) wk;
    memset(&wk, 0, sizeof(wk));
    if (!w || !b || !fval || !grad || l2 < 0) return IIS_EINVAL;
    if ((err = FN(check_problem)(ctx, X, y, K)) != IIS_OK) return err;
    dk = (size_t)X->d * (size_t)K;
    p = dk + (size_t)K;
    if (!(theta = (double *)malloc(sizeof(double) * p))) return IIS_ENOMEM;
    for (size_t e = 0; e < dk; e++) theta[e] = w[e];
    for (int q = 0; q < K; q++) theta[dk + q] = b[q];
    if ((err = FN(work_alloc)(&wk, X, K, 1)) != IIS_OK) goto cleanup;
    if (amx) {
#if AMX_PASSES
        if ((err = FN(amx_setup)(ctx, X, K, &wk, 1)) != IIS_OK) goto cleanup;
#endif
        if (!wk.amx || (amx != IIS_AMX_BF16 && amx != IIS_AMX_PRECISE)) {
            err = IIS_EINVAL;
            goto cleanup;
        }
        wk.amx = amx;
    }
    err = FN(fgrad)(ctx, X, y, K, l2, theta, grad, fval, &wk);
cleanup:
    FN(work_free)(&wk);
    free(theta);
    return err;
}

/* The sparsity path: mask, fit (warm start along ascending s), evaluate. */
int FN(iis_path)(const iis_ctx *ctx, const REAL *a_tr, int64_t n_tr, const int32_t *y_tr,
                 const REAL *a_ev, int64_t n_ev, const int32_t *y_ev, int m, int n_classes,
                 const double *s, int n_s, const iis_path_params *prm, iis_path_result *res)
{
    const int K = n_classes;
    int err = IIS_OK, in_place;
    REAL *w = NULL, *b = NULL, *vtr = NULL, *vev = NULL;
    int32_t *itr = NULL, *iev = NULL, *pred = NULL;
    if (n_tr <= 0 || n_ev <= 0 || m < 1 || K < 1 || n_s < 1 || !prm || !res) return IIS_EINVAL;
    in_place = prm->overwrite && !prm->soft;
    for (int i = 1; i < n_s && in_place; i++) /* nested kept sets need ascending s */
        if (!(s[i] > s[i - 1])) return IIS_EINVAL;
    w = (REAL *)calloc((size_t)m * (size_t)K + 1, sizeof(REAL));
    b = (REAL *)calloc((size_t)K, sizeof(REAL));
    pred = (int32_t *)malloc(sizeof(int32_t) * (size_t)n_ev);
    if (!w || !b || !pred) {
        err = IIS_ENOMEM;
        goto cleanup;
    }
    for (int i = 0; i < n_s; i++) {
        int k = iis_keep_count(m, s[i], prm->published_keep);
        /* k-sparse rows (ELL) when at most a quarter of the concepts are kept; where the
         * AMX passes run (float32), dense down to a tenth: on W1 (benchmarks/) s = 0.9
         * (k = 20 of 200) took 34 dense iterations at 12-16 ms against 38 ELL ones at
         * 16-22 ms, while at k = 10 the ELL passes were the faster */
        int ell = (int64_t)k * 4 <= m;
#if AMX_PASSES
        if (ell && (int64_t)k * 10 >= m && FN(amx_wanted)(ctx, n_tr, m, K)) ell = 0;
#endif
        iis_design Xtr, Xev;
        iis_solver_info info;
        memset(&Xtr, 0, sizeof(Xtr));
        memset(&Xev, 0, sizeof(Xev));
        memset(&info, 0, sizeof(info));
        Xtr.n = n_tr;
        Xev.n = n_ev;
        Xtr.d = Xev.d = m;
        if (ell) {
            size_t kk = (size_t)(k > 0 ? k : 1);
            itr = (int32_t *)malloc(sizeof(int32_t) * (size_t)n_tr * kk);
            vtr = (REAL *)malloc(sizeof(REAL) * (size_t)n_tr * kk);
            iev = (int32_t *)malloc(sizeof(int32_t) * (size_t)n_ev * kk);
            vev = (REAL *)malloc(sizeof(REAL) * (size_t)n_ev * kk);
            if (!itr || !vtr || !iev || !vev) {
                err = IIS_ENOMEM;
                goto cleanup;
            }
            if ((err = FN(iis_topk)(ctx, a_tr, n_tr, m, m, k, prm->soft, itr, vtr)) != IIS_OK)
                goto cleanup;
            if ((err = FN(iis_topk)(ctx, a_ev, n_ev, m, m, k, prm->soft, iev, vev)) != IIS_OK)
                goto cleanup;
            Xtr.idx = itr;
            Xtr.val = vtr;
            Xtr.k = k;
            Xev.idx = iev;
            Xev.val = vev;
            Xev.k = k;
        } else {
            /* hard masks in place when allowed (row by row, each entry read before it
             * is written); otherwise masked copies */
            REAL *mtr = (REAL *)a_tr, *mev = (REAL *)a_ev;
            if (!in_place) {
                mtr = vtr = (REAL *)malloc(sizeof(REAL) * (size_t)n_tr * (size_t)m);
                mev = vev = (REAL *)malloc(sizeof(REAL) * (size_t)n_ev * (size_t)m);
                if (!vtr || !vev) {
                    err = IIS_ENOMEM;
                    goto cleanup;
                }
            }
            if ((err = FN(iis_mask_dense)(ctx, a_tr, n_tr, m, m, k, prm->soft, mtr)) != IIS_OK)
                goto cleanup;
            if ((err = FN(iis_mask_dense)(ctx, a_ev, n_ev, m, m, k, prm->soft, mev)) != IIS_OK)
                goto cleanup;
            Xtr.x = mtr;
            Xtr.ldx = m;
            Xev.x = mev;
            Xev.ldx = m;
        }
        if ((err = FN(iis_logreg_fit)(ctx, &Xtr, y_tr, K, &prm->solver, w, b, &info)) != IIS_OK)
            goto cleanup;
        if ((err = FN(iis_logreg_predict)(ctx, &Xev, K, w, b, NULL, pred)) != IIS_OK)
            goto cleanup;
        if (i == 0 && res->train_logits0 &&
            (err = FN(iis_logreg_predict)(ctx, &Xtr, K, w, b, (REAL *)res->train_logits0, NULL)) != IIS_OK)
            goto cleanup;
        res->accuracy[i] = iis_accuracy(pred, y_ev, n_ev);
        res->kept[i] = k;
        res->n_iter[i] = info.n_iter;
        res->converged[i] = info.converged;
        if (res->stop) res->stop[i] = info.stop;
        free(itr);
        free(vtr);
        free(iev);
        free(vev);
        itr = iev = NULL;
        vtr = vev = NULL;
        iis_report(ctx, i + 1, n_s);
        if (iis_interrupted(ctx)) {
            err = IIS_EINTR;
            goto cleanup;
        }
    }
cleanup:
    free(w);
    free(b);
    free(pred);
    free(itr);
    free(vtr);
    free(iev);
    free(vev);
    return err;
}
