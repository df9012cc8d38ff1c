/* passes_t.h -- the data passes of the logistic-regression solver, instantiated for REAL
 * by solver.c: the solver's work buffers, the row kernels (ELL logits and gradients,
 * softmax), the fused dense pass, the logits, the Gram's chunk sums, and fgrad (f and
 * its gradient at theta from one pass, on the AMX tiles where amx_passes_t.h set them up).
 */

/* rows per block of a pass: X_b (512 x d floats) stays in a 2 MB L2 for d up to ~1000,
 * Z_b (512 x K) in L1/L2; 256 to 2,048 measured within noise on W1 (the fused pass) */
#define IIS_FUSED_BLOCK 512

typedef struct {
    REAL *z;       /* per thread: one block of logits (IIS_FUSED_BLOCK x K), then
                      softmax - onehot; the passes never hold n x K */
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

static int FN(work_alloc)(const iis_ctx *ctx, FN(work) * w, const iis_design *X, int K)
{
    size_t dk = (size_t)X->d * (size_t)K;
    memset(w, 0, sizeof(*w));
    w->nch = X->n < IIS_NCHUNK ? (int)(X->n > 0 ? X->n : 1) : IIS_NCHUNK;
    w->z = (REAL *)malloc(sizeof(REAL) * (size_t)iis_nthreads(ctx) * IIS_FUSED_BLOCK * (size_t)K +
                          sizeof(REAL));
    w->weff = (REAL *)malloc(sizeof(REAL) * (dk + 1));
    w->gw = (REAL *)malloc(sizeof(REAL) * (dk + (size_t)K + 1));
    w->part = (double *)malloc(sizeof(double) * (size_t)w->nch * (size_t)(K + 1));
    if (!w->z || !w->weff || !w->gw || !w->part) return IIS_ENOMEM;
    if (!X->idx && X->d > 0) {
        w->natz = FN(atz_chunks)(X->n, X->d, K);
        w->gpart = (REAL *)malloc(sizeof(REAL) * ((size_t)w->natz * dk + 1));
        if (!w->gpart) return IIS_ENOMEM;
    }
    if (X->idx) {
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

/* the calling thread's block of logits (a team of at most iis_nthreads(ctx) threads) */
static REAL *FN(zblock)(const FN(work) * w, int K)
{
    return w->z + (size_t)iis_thread_num() * IIS_FUSED_BLOCK * (size_t)K;
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

/* ELL gradient: acc (d x K) += sum_i x_i g_i^T over rows [lo, hi) */
IIS_HOT static void FN(ell_grad_rows)(const int32_t *restrict idx, const REAL *restrict val, int k,
                                      const REAL *restrict g, int K, int64_t lo, int64_t hi,
                                      REAL *restrict acc)
{
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
                REAL *zb = FN(zblock)(w, K);
                REAL one = 1, zero = 0, beta = b0 == lo ? 0 : 1;
                /* column-major views: Z_b^T (K x rows) = weff^T X_b^T;
                 * part^T (K x d) (+)= G_b^T (K x rows) X_b (rows x d) */
                char nn = 'N', tt = 'T';
                int ik = K, id = d, ir = rows, il = (int)ldx;
                GEMM(ctx)(&nn, &nn, &ik, &ir, &id, &one, weff, &ik, x + b0 * ldx, &il, &zero, zb,
                          &ik);
                FN(softmax_rows)(ctx, zb, y + b0, K, cr, 0, rows, p);
                GEMM(ctx)(&nn, &tt, &ik, &id, &ir, &one, zb, &ik, x + b0 * ldx, &il, &beta, part,
                          &ik);
            }
        }
    }
    if (pl.stop) return IIS_EINTR;
    FN(sum_parts)(ctx, w->gpart, nch, dk, grad);
    return IIS_OK;
}

/* Z_b (rows x K) = X_b weff + c for the rows [b0, b0 + rows), rows <= IIS_FUSED_BLOCK
 * (one GEMM, or the ELL rows; the same bits wherever the block is computed) */
static void FN(block_logits)(const iis_ctx *ctx, const iis_design *X, int K, const REAL *weff,
                             const REAL *cr, int64_t b0, int rows, REAL *zb)
{
    if (X->idx) {
        const int64_t k = X->k;
        FN(ell_logits_rows)(X->idx + b0 * k, (const REAL *)X->val + b0 * k, X->k, weff, cr, K, 0,
                            rows, zb);
        return;
    }
    if (X->d > 0) { /* column-major view: Z_b^T (K x rows) = weff^T X_b^T */
        char nn = 'N';
        int ik = K, id = X->d, ir = rows, il = (int)X->ldx;
        REAL one = 1, zero = 0;
        GEMM(ctx)(&nn, &nn, &ik, &ir, &id, &one, weff, &ik, (const REAL *)X->x + b0 * X->ldx, &il,
                  &zero, zb, &ik);
    } else {
        memset(zb, 0, sizeof(REAL) * (size_t)rows * (size_t)K);
    }
    for (int r = 0; r < rows; r++)
        for (int q = 0; q < K; q++) zb[(size_t)r * K + q] += cr[q];
}

/* One pass over an ELL design (or one without columns), fused as the dense pass is:
 * per block of rows Z_b (logits), softmax and loss while Z_b is in cache, then
 * acc_c += X_b^T G_b (ELL). Rows are cut into *npart fixed chunks (w->nch_ell for
 * ELL, w->nch otherwise), each with its own partials added in chunk order: the result
 * does not depend on the thread count. On return grad[0, dk) = X^T G (0 without
 * columns) and w->part holds the chunks' softmax partials. */
static int FN(rows_pass)(const iis_ctx *ctx, const iis_design *X, const int32_t *y, int K,
                         const REAL *weff, const REAL *cr, FN(work) * w, double *grad, int *npart)
{
    const int64_t n = X->n;
    const int nch = X->idx ? w->nch_ell : w->nch;
    const size_t dk = (size_t)X->d * (size_t)K;
    int nt = iis_nt_for(ctx, n * (int64_t)K * (X->idx ? (X->k > 0 ? X->k : 1) : 1)), c;
    iis_poll pl = {0, 0.0};
#pragma omp parallel for num_threads(nt) schedule(static)
    for (c = 0; c < nch; c++) {
        int64_t lo, hi;
        REAL *zb = FN(zblock)(w, K), *acc = X->idx ? w->ellacc + (size_t)c * dk : NULL;
        double *p = w->part + (size_t)c * (K + 1);
        iis_chunk(n, nch, c, &lo, &hi);
        memset(p, 0, sizeof(double) * (size_t)(K + 1));
        if (acc) memset(acc, 0, sizeof(REAL) * dk);
        for (int64_t b0 = lo; b0 < hi && !iis_team_interrupted(ctx, &pl); b0 += IIS_FUSED_BLOCK) {
            int rows = (int)(hi - b0 < IIS_FUSED_BLOCK ? hi - b0 : IIS_FUSED_BLOCK);
            FN(block_logits)(ctx, X, K, weff, cr, b0, rows, zb);
            FN(softmax_rows)(ctx, zb, y + b0, K, NULL, 0, rows, p);
            if (acc)
                FN(ell_grad_rows)(X->idx + b0 * X->k, (const REAL *)X->val + b0 * X->k, X->k, zb, K, 0,
                                  rows, acc);
        }
    }
    if (pl.stop) return IIS_EINTR;
    if (X->idx)
        FN(sum_parts)(ctx, w->ellacc, nch, dk, grad);
    else
        memset(grad, 0, sizeof(double) * dk);
    *npart = nch;
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

#if AMX_PASSES
static int FN(amx_pass)(const iis_ctx *ctx, const iis_design *X, const int32_t *y, int K,
                        const double *theta, const REAL *bias, const REAL *T, FN(work) * w,
                        double *grad);
#endif

/* f and gradient at theta, from one pass over the rows in blocks */
static int FN(fgrad)(const iis_ctx *ctx, const iis_design *X, const int32_t *y, int K, double l2,
                     const double *theta, double *grad, double *fval, FN(work) * w)
{
    int64_t n = X->n;
    int c, d = X->d;
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
    } else if (FN(rows_pass)(ctx, X, y, K, w->weff, cr, w, grad, &npart) != IIS_OK) {
        return IIS_EINTR;
    }
    for (int q = 0; q < K; q++) grad[dk + q] = 0.0;
    for (c = 0; c < npart; c++) {
        const double *p = w->part + (size_t)c * (K + 1);
        loss += p[K];
        for (int q = 0; q < K; q++) grad[dk + q] += p[q];
    }
    /* the gradient wrt the effective weights, X^T G, is in grad already: from the
     * effective weights to W */
    if (!X->idx && d > 0) {
        if (w->amx && w->cx)
            for (int j = 0; j < d; j++)
                for (int q = 0; q < K; q++) grad[(size_t)j * K + q] += w->cx[j] * grad[dk + q];
        if ((sg || mu) && !w->amx)
            for (int j = 0; j < d; j++) {
                double inv = sg ? 1.0 / (double)sg[j] : 1.0, m0 = mu ? (double)mu[j] : 0.0;
                for (int q = 0; q < K; q++)
                    grad[(size_t)j * K + q] = (grad[(size_t)j * K + q] - m0 * grad[dk + q]) * inv;
            }
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
