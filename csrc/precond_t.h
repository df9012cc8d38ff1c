/* precond_t.h -- the Gram preconditioner of the L-BFGS solver (H0 = gamma P^-1, P the
 * damped Gram of the standardised design with its bias column; the ELL designs' Gram
 * too) and the start from target logits through P^-1. Instantiated for REAL by solver.c.
 */

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
