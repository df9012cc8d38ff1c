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
    REAL *gw;      /* scratch of K + 1 entries */
    REAL *gpart;   /* dense: natz x d x K partial products of X^T G */
    int natz;
    double *part;  /* chunk partials: nch x (K + 1) (colsum of G, loss) */
    double *ellacc; /* ELL: nch_ell x d x K */
    int nch, nch_ell;
} FN(work);

static void FN(work_free)(FN(work) * w)
{
    free(w->z);
    free(w->weff);
    free(w->gw);
    free(w->gpart);
    free(w->part);
    free(w->ellacc);
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
        size_t cap = (size_t)(64u << 20) / (sizeof(double) * (dk + 1));
        int nch = (int)(cap < 1 ? 1 : (cap > 32 ? 32 : cap));
        if (X->n < nch) nch = (int)(X->n > 0 ? X->n : 1);
        w->nch_ell = nch;
        w->ellacc = (double *)malloc(sizeof(double) * (size_t)nch * (dk + 1));
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

/* z (n x K) = X weff + c */
static int FN(logits)(const iis_ctx *ctx, const iis_design *X, int K, const REAL *weff,
                      const double *c, REAL *z, int add_bias)
{
    int64_t i, n = X->n;
    int nt = iis_nt_for(ctx, n * (int64_t)K * (X->idx ? (X->k > 0 ? X->k : 1) : 1));
    if (X->idx) {
        const REAL *val = (const REAL *)X->val;
        int k = X->k;
#pragma omp parallel for num_threads(nt) schedule(static)
        for (i = 0; i < n; i++) {
            REAL *zi = z + i * (int64_t)K;
            const int32_t *ix = X->idx + i * (int64_t)k;
            const REAL *vx = val + i * (int64_t)k;
            for (int q = 0; q < K; q++) zi[q] = (REAL)c[q];
            for (int j = 0; j < k; j++) {
                const REAL *wr = weff + (size_t)ix[j] * K;
                REAL v = vx[j];
                for (int q = 0; q < K; q++) zi[q] += v * wr[q];
            }
        }
        return IIS_OK;
    }
    if (FN(par_gemm_ab)(ctx, iis_nt_for(ctx, n * (int64_t)K * X->d / 32), n, X->d, K,
                        (const REAL *)X->x, X->ldx, weff, z) != IIS_OK)
        return IIS_EINTR;
    if (!add_bias) return IIS_OK; /* the caller adds c in its own pass over z */
#pragma omp parallel for num_threads(nt) schedule(static)
    for (i = 0; i < n; i++) {
        REAL *zi = z + i * (int64_t)K;
        for (int q = 0; q < K; q++) zi[q] += (REAL)c[q];
    }
    return IIS_OK;
}

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

    FN(effective)(X, K, theta, w->weff, cvec);
    if (FN(logits)(ctx, X, K, w->weff, cvec, w->z, 0) != IIS_OK) return IIS_EINTR;
    /* per row: z_i += c (dense); loss_i = lse(z_i) - z_iy; z_i <- softmax(z_i) - e_y;
     * one exp per entry; partial sums per fixed chunk */
    {
        const int add_c = X->idx == NULL;
        REAL *cr = w->gw; /* c in REAL, borrowed scratch (gw is rewritten below) */
        for (int q = 0; q < K; q++) cr[q] = (REAL)cvec[q];
#pragma omp parallel for num_threads(nt) schedule(static)
        for (c = 0; c < w->nch; c++) {
            int64_t lo, hi;
            double *p = w->part + (size_t)c * (K + 1);
            iis_chunk(n, w->nch, c, &lo, &hi);
            memset(p, 0, sizeof(double) * (size_t)(K + 1));
            for (int64_t i = lo; i < hi; i++) {
                REAL *zi = w->z + i * (int64_t)K;
                REAL mx, zy;
                double sr = 0.0;
                if (add_c)
                    for (int q = 0; q < K; q++) zi[q] += cr[q];
                mx = zi[0];
                zy = zi[y[i]];
                for (int q = 1; q < K; q++) mx = zi[q] > mx ? zi[q] : mx;
                for (int q = 0; q < K; q++) {
                    REAL e = EXP(zi[q] - mx);
                    zi[q] = e;
                    sr += e;
                }
                p[K] += (double)mx + log(sr) - (double)zy;
                REAL inv = (REAL)(1.0 / sr);
                for (int q = 0; q < K; q++) {
                    zi[q] *= inv;
                    p[q] += zi[q];
                }
                zi[y[i]] -= 1;
                p[y[i]] -= 1.0;
            }
        }
    }
    for (int q = 0; q < K; q++) grad[dk + q] = 0.0;
    for (c = 0; c < w->nch; c++) {
        const double *p = w->part + (size_t)c * (K + 1);
        loss += p[K];
        for (int q = 0; q < K; q++) grad[dk + q] += p[q];
    }
    /* gradient wrt the effective weights: X^T G */
    if (X->idx) {
        const REAL *val = (const REAL *)X->val;
        int k = X->k, nch = w->nch_ell;
#pragma omp parallel for num_threads(nt) schedule(static)
        for (c = 0; c < nch; c++) {
            int64_t lo, hi;
            double *acc = w->ellacc + (size_t)c * dk;
            iis_chunk(n, nch, c, &lo, &hi);
            memset(acc, 0, sizeof(double) * dk);
            for (int64_t i = lo; i < hi; i++) {
                const REAL *gi = w->z + i * (int64_t)K;
                const int32_t *ix = X->idx + i * (int64_t)k;
                const REAL *vx = val + i * (int64_t)k;
                for (int j = 0; j < k; j++) {
                    double *ar = acc + (size_t)ix[j] * K;
                    double v = vx[j];
                    for (int q = 0; q < K; q++) ar[q] += v * gi[q];
                }
            }
        }
        for (size_t e = 0; e < dk; e++) {
            double t = 0.0;
            for (c = 0; c < nch; c++) t += w->ellacc[(size_t)c * dk + e];
            grad[e] = t;
        }
    } else if (d > 0 && n > 0) {
        if (FN(par_gemm_atz)(ctx, iis_nt_for(ctx, n * (int64_t)K * d / 32), n, d, K,
                             (const REAL *)X->x, X->ldx, w->z, w->gpart, w->natz, grad) != IIS_OK)
            return IIS_EINTR;
        if (sg || mu)
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

static double FN(dot)(const double *a, const double *b, size_t p)
{
    double s = 0.0;
    for (size_t i = 0; i < p; i++) s += a[i] * b[i];
    return s;
}

static double FN(amax)(const double *a, size_t p)
{
    double m = 0.0;
    for (size_t i = 0; i < p; i++) m = fabs(a[i]) > m ? fabs(a[i]) : m;
    return m;
}

int FN(iis_logreg_fit)(const iis_ctx *ctx, const iis_design *X, const int32_t *y, int n_classes,
                       const iis_solver_params *prm, REAL *wout, REAL *bout,
                       iis_solver_info *info)
{
    const int K = n_classes, mem = prm->memory > 0 ? prm->memory : 10;
    const double ftol = FTOL;
    size_t dk, p;
    int err = IIS_OK, it = 0, hist = 0, head = 0, converged = 0;
    double f = 0.0, fnew = 0.0, gmax = 0.0;
    double *theta = NULL, *g = NULL, *tn = NULL, *gn = NULL, *dir = NULL, *S = NULL, *Y = NULL;
    double *rho = NULL, *alpha = NULL;
    FN(work) w;
    memset(&w, 0, sizeof(w));
    if (!X || !y || K < 1 || X->n <= 0 || X->d < 0 || !prm || prm->l2 < 0 || prm->max_iter < 0)
        return IIS_EINVAL;
    if (!X->idx && (X->ldx < X->d || !iis_fits_int(X->ldx) || !iis_fits_int(X->n)))
        return IIS_EINVAL;
    if (!X->idx && X->d > 0 && !iis_blas_ok(ctx, IS_DOUBLE)) return IIS_ENOBLAS;
    for (int64_t i = 0; i < X->n; i++)
        if (y[i] < 0 || y[i] >= K) return IIS_EINVAL;
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
    if (!theta || !g || !tn || !gn || !dir || !S || !Y || !rho || !alpha) {
        err = IIS_ENOMEM;
        goto cleanup;
    }
    if ((err = FN(work_alloc)(&w, X, K, 1)) != IIS_OK) goto cleanup;
    for (size_t e = 0; e < dk; e++) theta[e] = wout[e];
    for (int q = 0; q < K; q++) theta[dk + q] = bout[q];

    if ((err = FN(fgrad)(ctx, X, y, K, prm->l2, theta, g, &f, &w)) != IIS_OK) goto cleanup;
    for (it = 0; it < prm->max_iter; it++) {
        double gd, step, gnorm;
        int ls, accepted = 0;
        gmax = FN(amax)(g, p);
        if (gmax <= prm->tol) {
            converged = 1;
            break;
        }
        /* two-loop recursion: dir = -H g */
        for (size_t e = 0; e < p; e++) dir[e] = -g[e];
        for (int h = 0; h < hist; h++) {
            int s_ = (head - 1 - h + mem) % mem;
            alpha[s_] = rho[s_] * FN(dot)(S + (size_t)s_ * p, dir, p);
            for (size_t e = 0; e < p; e++) dir[e] -= alpha[s_] * Y[(size_t)s_ * p + e];
        }
        if (hist > 0) {
            int last = (head - 1 + mem) % mem;
            double yy = FN(dot)(Y + (size_t)last * p, Y + (size_t)last * p, p);
            double gamma = 1.0 / (rho[last] * yy);
            for (size_t e = 0; e < p; e++) dir[e] *= gamma;
        }
        for (int h = hist - 1; h >= 0; h--) {
            int s_ = (head - 1 - h + mem) % mem;
            double beta = rho[s_] * FN(dot)(Y + (size_t)s_ * p, dir, p);
            for (size_t e = 0; e < p; e++) dir[e] += (alpha[s_] - beta) * S[(size_t)s_ * p + e];
        }
        gd = FN(dot)(g, dir, p);
        if (!(gd < 0.0)) { /* not a descent direction: restart from steepest descent */
            for (size_t e = 0; e < p; e++) dir[e] = -g[e];
            gd = FN(dot)(g, dir, p);
            hist = 0;
        }
        gnorm = sqrt(FN(dot)(g, g, p));
        step = hist == 0 ? (1.0 / gnorm < 1.0 ? 1.0 / gnorm : 1.0) : 1.0;
        for (ls = 0; ls < 40; ls++) {
            for (size_t e = 0; e < p; e++) tn[e] = theta[e] + step * dir[e];
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
        if (!accepted) break; /* no decrease possible at this precision */
        /* curvature pair */
        {
            double sy;
            double *sv = S + (size_t)head * p, *yv = Y + (size_t)head * p;
            for (size_t e = 0; e < p; e++) {
                sv[e] = tn[e] - theta[e];
                yv[e] = gn[e] - g[e];
            }
            sy = FN(dot)(sv, yv, p);
            if (sy > 1e-12 * FN(dot)(yv, yv, p)) {
                rho[head] = 1.0 / sy;
                head = (head + 1) % mem;
                if (hist < mem) hist++;
            }
        }
        {
            double rel = (f - fnew) / fmax(fmax(fabs(f), fabs(fnew)), 1.0);
            memcpy(theta, tn, sizeof(double) * p);
            memcpy(g, gn, sizeof(double) * p);
            f = fnew;
            if (rel <= ftol) {
                it++;
                gmax = FN(amax)(g, p);
                converged = 1; /* relative reduction of f below ftol (scipy's factr rule) */
                break;
            }
        }
        if (iis_interrupted(ctx)) {
            err = IIS_EINTR;
            goto cleanup;
        }
    }
    gmax = FN(amax)(g, p);
    if (gmax <= prm->tol) converged = 1;
    for (size_t e = 0; e < dk; e++) wout[e] = (REAL)theta[e];
    for (int q = 0; q < K; q++) bout[q] = (REAL)theta[dk + q];
    if (info) {
        info->n_iter = it;
        info->converged = converged;
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
    REAL *weff = NULL;
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
    if (!z) z = (REAL *)malloc(sizeof(REAL) * (size_t)n * (size_t)K);
    if (!theta || !c || !weff || !z) {
        err = IIS_ENOMEM;
        goto cleanup;
    }
    for (size_t e = 0; e < dk; e++) theta[e] = w[e];
    for (int q = 0; q < K; q++) theta[dk + q] = b[q];
    FN(effective)(X, K, theta, weff, c);
    if ((err = FN(logits)(ctx, X, K, weff, c, z, 1)) != IIS_OK) goto cleanup;
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
    free(c);
    free(theta);
    return err;
}

/* The sparsity path: mask, fit (warm start along ascending s), evaluate. */
int FN(iis_path)(const iis_ctx *ctx, const REAL *a_tr, int64_t n_tr, const int32_t *y_tr,
                 const REAL *a_ev, int64_t n_ev, const int32_t *y_ev, int m, int n_classes,
                 const double *s, int n_s, const iis_path_params *prm, iis_path_result *res)
{
    const int K = n_classes;
    int err = IIS_OK;
    REAL *w = NULL, *b = NULL, *vtr = NULL, *vev = NULL;
    int32_t *itr = NULL, *iev = NULL, *pred = NULL;
    if (n_tr <= 0 || n_ev <= 0 || m < 1 || K < 1 || n_s < 1 || !prm || !res) return IIS_EINVAL;
    w = (REAL *)calloc((size_t)m * (size_t)K + 1, sizeof(REAL));
    b = (REAL *)calloc((size_t)K, sizeof(REAL));
    pred = (int32_t *)malloc(sizeof(int32_t) * (size_t)n_ev);
    if (!w || !b || !pred) {
        err = IIS_ENOMEM;
        goto cleanup;
    }
    for (int i = 0; i < n_s; i++) {
        int k = iis_keep_count(m, s[i], prm->published_keep);
        /* k-sparse rows (ELL) when at most a quarter of the concepts are kept */
        int ell = (int64_t)k * 4 <= m;
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
            vtr = (REAL *)malloc(sizeof(REAL) * (size_t)n_tr * (size_t)m);
            vev = (REAL *)malloc(sizeof(REAL) * (size_t)n_ev * (size_t)m);
            if (!vtr || !vev) {
                err = IIS_ENOMEM;
                goto cleanup;
            }
            if ((err = FN(iis_mask_dense)(ctx, a_tr, n_tr, m, m, k, prm->soft, vtr)) != IIS_OK)
                goto cleanup;
            if ((err = FN(iis_mask_dense)(ctx, a_ev, n_ev, m, m, k, prm->soft, vev)) != IIS_OK)
                goto cleanup;
            Xtr.x = vtr;
            Xtr.ldx = m;
            Xev.x = vev;
            Xev.ldx = m;
        }
        if ((err = FN(iis_logreg_fit)(ctx, &Xtr, y_tr, K, &prm->solver, w, b, &info)) != IIS_OK)
            goto cleanup;
        if ((err = FN(iis_logreg_predict)(ctx, &Xev, K, w, b, NULL, pred)) != IIS_OK)
            goto cleanup;
        res->accuracy[i] = iis_accuracy(pred, y_ev, n_ev);
        res->kept[i] = k;
        res->n_iter[i] = info.n_iter;
        res->converged[i] = info.converged;
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
