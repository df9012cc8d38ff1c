/* text_t.h -- Label-free CBM projection learning (cos^3 similarity, Adam), instantiated for
 * REAL = float / double by text.c.
 *
 * For one concept c (column c of P = F W^T and of the target T), with x = p - mean(p),
 * u = x^3 (elementwise), nu = ||u||, s = u / nu and tc = cub(t) (the same map on t):
 *   sim_c = <s, tc>
 *   d sim_c / d u = (tc - s sim_c) / nu,   d u / d x = 3 x^2,   d x / d p = I - 11^T / n
 * so with J = 1/C sum_c sim_c:
 *   G_ic = g_ic - mean_i(g_ic),  g_ic = 3 x_ic^2 (tc_ic - u_ic sim_c / nu_c) / (nu_c C)
 *   dJ/dW = G^T F                                           (one GEMM)
 * Column reductions use a fixed number of row chunks whose partial sums are added in
 * chunk order, so results do not depend on the thread count.
 */

typedef struct {
    REAL *p;      /* n x C: predictions F W^T, then the gradient wrt P */
    REAL *tc;     /* n x C: cub(t), column by column */
    double *part; /* nch x 2 x C chunk partials */
    double *mean; /* C */
    double *nu;   /* C: ||(p - mean)^3|| */
    int64_t n;
    int nch;
} FN(tx_work);

static void FN(tx_free)(FN(tx_work) * w)
{
    free(w->p);
    free(w->tc);
    free(w->part);
    free(w->mean);
    free(w->nu);
}

static int FN(tx_alloc)(FN(tx_work) * w, int64_t n, int c)
{
    size_t nc = (size_t)n * (size_t)c;
    memset(w, 0, sizeof(*w));
    w->n = n;
    w->nch = n < IIS_NCHUNK ? (int)n : IIS_NCHUNK;
    w->p = (REAL *)malloc(sizeof(REAL) * (nc + 1));
    w->tc = (REAL *)malloc(sizeof(REAL) * (nc + 1));
    w->part = (double *)malloc(sizeof(double) * (size_t)w->nch * 2 * (size_t)c);
    w->mean = (double *)malloc(sizeof(double) * (size_t)c);
    w->nu = (double *)malloc(sizeof(double) * (size_t)c);
    if (!w->p || !w->tc || !w->part || !w->mean || !w->nu) return IIS_ENOMEM;
    return IIS_OK;
}

/* out_j = sum over chunks (in chunk order) of part[ch][which][j] */
static void FN(tx_reduce)(const FN(tx_work) * w, int c, int which, double *out)
{
    for (int j = 0; j < c; j++) out[j] = 0.0;
    for (int ch = 0; ch < w->nch; ch++) {
        const double *q = w->part + ((size_t)ch * 2 + (size_t)which) * (size_t)c;
        for (int j = 0; j < c; j++) out[j] += q[j];
    }
}

/* mean_j = 1/n sum_i a_ij for a (n x C, ld lda) */
static void FN(tx_colmean)(FN(tx_work) * w, const REAL *a, int64_t lda, int c, int nt)
{
    int ch;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (ch = 0; ch < w->nch; ch++) {
        int64_t lo, hi;
        double *q = w->part + (size_t)ch * 2 * (size_t)c;
        iis_chunk(w->n, w->nch, ch, &lo, &hi);
        for (int j = 0; j < c; j++) q[j] = 0.0;
        for (int64_t i = lo; i < hi; i++) {
            const REAL *r = a + i * lda;
            for (int j = 0; j < c; j++) q[j] += (double)r[j];
        }
    }
    FN(tx_reduce)(w, c, 0, w->mean);
    for (int j = 0; j < c; j++) w->mean[j] /= (double)w->n;
}

/* tc = cub(t) per column: (t - mean)^3 / ||(t - mean)^3|| (0 for a constant column: its
 * rounded mean is off by an ulp, and normalising the cubed ulps gave a unit column of noise) */
static void FN(tx_target)(const iis_ctx *ctx, FN(tx_work) * w, const REAL *t, int64_t ldt, int c)
{
    int nt = iis_nt_for(ctx, w->n * (int64_t)c), ch;
    FN(tx_colmean)(w, t, ldt, c, nt);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (ch = 0; ch < w->nch; ch++) {
        int64_t lo, hi;
        double *q = w->part + (size_t)ch * 2 * (size_t)c, *q1 = q + c;
        iis_chunk(w->n, w->nch, ch, &lo, &hi);
        for (int j = 0; j < c; j++) q[j] = q1[j] = 0.0;
        for (int64_t i = lo; i < hi; i++) {
            const REAL *r = t + i * ldt;
            REAL *o = w->tc + i * (int64_t)c;
            for (int j = 0; j < c; j++) {
                double x = (double)r[j] - w->mean[j], u = x * x * x;
                o[j] = (REAL)u;
                q[j] += u * u;
                q1[j] += r[j] != t[j]; /* entries that differ from row 0 */
            }
        }
    }
    FN(tx_reduce)(w, c, 0, w->nu);
    FN(tx_reduce)(w, c, 1, w->mean); /* the mean is no longer needed: count of such entries */
    for (int j = 0; j < c; j++)
        w->nu[j] = w->nu[j] > 0.0 && w->mean[j] > 0.0 ? 1.0 / sqrt(w->nu[j]) : 0.0;
    {
        int64_t i;
#pragma omp parallel for num_threads(nt) schedule(static)
        for (i = 0; i < w->n; i++) {
            REAL *o = w->tc + i * (int64_t)c;
            for (int j = 0; j < c; j++) o[j] = (REAL)((double)o[j] * w->nu[j]);
        }
    }
}

/* sim_c and J for P = F W^T; with grad_w, also dJ/dW (C x d) (P is overwritten by G) */
static void FN(tx_eval)(const iis_ctx *ctx, FN(tx_work) * w, const REAL *f, int d, int64_t ldf,
                        const REAL *wt, int c, double *sim, double *obj, REAL *grad_w)
{
    int64_t n = w->n;
    int nt = iis_nt_for(ctx, n * (int64_t)c), ch;
    double *part = w->part, *mean = w->mean, *nu = w->nu;
    {
        /* column-major view: P^T (C x n) = W (C x d) F^T (d x n) */
        char ta = 'T', tb = 'N';
        int mm = c, nn = (int)n, kk = d, lda = d, ldb = (int)ldf, ldc = c;
        REAL one = 1, zero = 0;
        GEMM(ctx)(&ta, &tb, &mm, &nn, &kk, &one, wt, &lda, f, &ldb, &zero, w->p, &ldc);
    }
    FN(tx_colmean)(w, w->p, c, c, nt);
    /* partials of ||u||^2 and <u, tc> with u = (p - mean)^3 */
#pragma omp parallel for num_threads(nt) schedule(static)
    for (ch = 0; ch < w->nch; ch++) {
        int64_t lo, hi;
        double *q0 = part + (size_t)ch * 2 * (size_t)c, *q1 = q0 + c;
        iis_chunk(n, w->nch, ch, &lo, &hi);
        for (int j = 0; j < c; j++) q0[j] = q1[j] = 0.0;
        for (int64_t i = lo; i < hi; i++) {
            const REAL *r = w->p + i * (int64_t)c, *tr = w->tc + i * (int64_t)c;
            for (int j = 0; j < c; j++) {
                double x = (double)r[j] - mean[j], u = x * x * x;
                q0[j] += u * u;
                q1[j] += u * (double)tr[j];
            }
        }
    }
    FN(tx_reduce)(w, c, 0, nu);
    FN(tx_reduce)(w, c, 1, sim);
    {
        double tot = 0.0;
        for (int j = 0; j < c; j++) {
            nu[j] = sqrt(nu[j]);
            sim[j] = nu[j] > 0.0 ? sim[j] / nu[j] : 0.0;
            tot += sim[j];
        }
        *obj = tot / (double)c;
    }
    if (!grad_w) return;
    /* g = 3 x^2 (tc - u sim / nu) / (nu C), written over p; partial column sums of g */
#pragma omp parallel for num_threads(nt) schedule(static)
    for (ch = 0; ch < w->nch; ch++) {
        int64_t lo, hi;
        double *q = part + (size_t)ch * 2 * (size_t)c;
        iis_chunk(n, w->nch, ch, &lo, &hi);
        for (int j = 0; j < c; j++) q[j] = 0.0;
        for (int64_t i = lo; i < hi; i++) {
            REAL *r = w->p + i * (int64_t)c;
            const REAL *tr = w->tc + i * (int64_t)c;
            for (int j = 0; j < c; j++) {
                double g = 0.0;
                if (nu[j] > 0.0) {
                    double x = (double)r[j] - mean[j], u = x * x * x;
                    g = 3.0 * x * x * ((double)tr[j] - u * sim[j] / nu[j]) / (nu[j] * (double)c);
                }
                r[j] = (REAL)g;
                q[j] += g;
            }
        }
    }
    FN(tx_reduce)(w, c, 0, mean); /* mean now holds the column sums of g */
    for (int j = 0; j < c; j++) mean[j] /= (double)n;
    {
        int64_t i;
#pragma omp parallel for num_threads(nt) schedule(static)
        for (i = 0; i < n; i++) {
            REAL *r = w->p + i * (int64_t)c;
            for (int j = 0; j < c; j++) r[j] = (REAL)((double)r[j] - mean[j]);
        }
    }
    {
        /* column-major view: dW^T (d x C) = F^T (d x n) G (n x C) */
        char ta = 'N', tb = 'T';
        int mm = d, nn = c, kk = (int)n, lda = (int)ldf, ldb = c, ldc = d;
        REAL one = 1, zero = 0;
        GEMM(ctx)(&ta, &tb, &mm, &nn, &kk, &one, f, &lda, w->p, &ldb, &zero, grad_w, &ldc);
    }
}

static int FN(tx_check)(const iis_ctx *ctx, int64_t n, int d, int64_t ldf, int64_t ldt, int c)
{
    if (n < 1 || d < 1 || c < 1 || ldf < d || ldt < c) return IIS_EINVAL;
    if (!iis_fits_int(n) || !iis_fits_int(ldf) || !iis_fits_int(ldt)) return IIS_EINVAL;
    if (!iis_blas_ok(ctx, IS_DOUBLE)) return IIS_ENOBLAS;
    return IIS_OK;
}

int FN(iis_text_objective)(const iis_ctx *ctx, const REAL *f, int64_t n, int d, int64_t ldf,
                           const REAL *t, int64_t ldt, const REAL *w, int c, double *sim,
                           double *obj, REAL *grad_w)
{
    FN(tx_work) wk;
    int err = FN(tx_check)(ctx, n, d, ldf, ldt, c);
    if (err != IIS_OK) return err;
    if (!sim || !obj) return IIS_EINVAL;
    err = FN(tx_alloc)(&wk, n, c);
    if (err == IIS_OK) {
        FN(tx_target)(ctx, &wk, t, ldt, c);
        FN(tx_eval)(ctx, &wk, f, d, ldf, w, c, sim, obj, grad_w);
    }
    FN(tx_free)(&wk);
    return err;
}

/* Adam ascent on J over the train part, early stopping on the held-out part */
int FN(iis_text_fit)(const iis_ctx *ctx, const REAL *f_tr, int64_t n_tr, int d, int64_t ldf_tr,
                     const REAL *t_tr, int64_t ldt_tr, const REAL *f_va, int64_t n_va,
                     int64_t ldf_va, const REAL *t_va, int64_t ldt_va, int c,
                     const iis_text_params *prm, REAL *w, iis_text_result *res)
{
    FN(tx_work) tr, va;
    size_t cd = (size_t)c * (size_t)d;
    double *theta = NULL, *m1 = NULL, *m2 = NULL, *sim = NULL, *simbest = NULL;
    REAL *gw = NULL, *wbest = NULL;
    double b1t = 1.0, b2t = 1.0, best = -INFINITY, obj = 0.0;
    int err, s = 0, bad = 0, nev = 0, cap_ev;
    memset(&tr, 0, sizeof(tr));
    memset(&va, 0, sizeof(va));
    if (!prm || !res || !w) return IIS_EINVAL;
    if ((err = FN(tx_check)(ctx, n_tr, d, ldf_tr, ldt_tr, c)) != IIS_OK) return err;
    if ((err = FN(tx_check)(ctx, n_va, d, ldf_va, ldt_va, c)) != IIS_OK) return err;
    if (prm->steps < 0 || prm->eval_every < 1 || prm->patience < 1 || !(prm->lr > 0.0) ||
        !(prm->beta1 >= 0.0 && prm->beta1 < 1.0) || !(prm->beta2 >= 0.0 && prm->beta2 < 1.0) ||
        !(prm->eps >= 0.0))
        return IIS_EINVAL;
    cap_ev = prm->steps / prm->eval_every + 2;
    if ((err = FN(tx_alloc)(&tr, n_tr, c)) != IIS_OK) goto cleanup;
    if ((err = FN(tx_alloc)(&va, n_va, c)) != IIS_OK) goto cleanup;
    theta = (double *)malloc(sizeof(double) * cd);
    m1 = (double *)calloc(cd, sizeof(double));
    m2 = (double *)calloc(cd, sizeof(double));
    sim = (double *)malloc(sizeof(double) * (size_t)c);
    simbest = (double *)malloc(sizeof(double) * (size_t)c);
    gw = (REAL *)malloc(sizeof(REAL) * cd);
    wbest = (REAL *)malloc(sizeof(REAL) * cd);
    if (!theta || !m1 || !m2 || !sim || !simbest || !gw || !wbest) {
        err = IIS_ENOMEM;
        goto cleanup;
    }
    /* W_ij ~ U(-1/sqrt(d), 1/sqrt(d)) as torch's nn.Linear, or the caller's W */
    if (prm->init_given) {
        for (size_t e = 0; e < cd; e++) theta[e] = (double)w[e];
    } else {
        uint64_t rng = prm->seed;
        double bound = 1.0 / sqrt((double)d);
        for (size_t e = 0; e < cd; e++) {
            theta[e] = (2.0 * iis_rng_uniform(&rng) - 1.0) * bound;
            w[e] = (REAL)theta[e];
        }
    }
    FN(tx_target)(ctx, &tr, t_tr, ldt_tr, c);
    FN(tx_target)(ctx, &va, t_va, ldt_va, c);
    for (;;) {
        /* held-out evaluation before the first step, every eval_every steps, after the last */
        if (s == 0 || s % prm->eval_every == 0 || s == prm->steps) {
            FN(tx_eval)(ctx, &va, f_va, d, ldf_va, w, c, sim, &obj, NULL);
            if (nev < cap_ev) {
                if (res->val_history) res->val_history[nev] = obj;
                if (res->val_steps) res->val_steps[nev] = s;
            }
            nev++;
            if (obj > best || s == 0) {
                best = obj;
                res->best_step = s;
                memcpy(wbest, w, sizeof(REAL) * cd);
                memcpy(simbest, sim, sizeof(double) * (size_t)c);
                bad = 0;
            } else if (++bad >= prm->patience) {
                break;
            }
        }
        if (s >= prm->steps) break;
        /* one full-batch step: gradient of -J, Adam (torch semantics) */
        FN(tx_eval)(ctx, &tr, f_tr, d, ldf_tr, w, c, sim, &obj, gw);
        if (res->train_history) res->train_history[s] = obj;
        b1t *= prm->beta1;
        b2t *= prm->beta2;
        {
            double lr = prm->lr, b1 = prm->beta1, b2 = prm->beta2, eps = prm->eps;
            double c1 = 1.0 / (1.0 - b1t), c2 = 1.0 / (1.0 - b2t);
            for (size_t e = 0; e < cd; e++) {
                double g = -(double)gw[e];
                m1[e] = b1 * m1[e] + (1.0 - b1) * g;
                m2[e] = b2 * m2[e] + (1.0 - b2) * g * g;
                theta[e] -= lr * (m1[e] * c1) / (sqrt(m2[e] * c2) + eps);
                w[e] = (REAL)theta[e];
            }
        }
        s++;
        iis_report(ctx, s, prm->steps);
        if (iis_interrupted(ctx)) {
            err = IIS_EINTR;
            goto cleanup;
        }
    }
    memcpy(w, wbest, sizeof(REAL) * cd);
    res->n_steps = s;
    res->n_evals = nev < cap_ev ? nev : cap_ev;
    res->best_val = best;
    if (res->val_sim) memcpy(res->val_sim, simbest, sizeof(double) * (size_t)c);
cleanup:
    FN(tx_free)(&tr);
    FN(tx_free)(&va);
    free(theta);
    free(m1);
    free(m2);
    free(sim);
    free(simbest);
    free(gw);
    free(wbest);
    return err;
}
