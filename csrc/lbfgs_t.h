/* lbfgs_t.h -- multinomial logistic regression: the L-BFGS driver (its vector algebra,
 * the line search, iis_logreg_fit), iis_logreg_predict and iis_logreg_objective;
 * instantiated for REAL by solver.c after the passes and the preconditioners.
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

#if !IS_DOUBLE
/* The float64 copy of a float32 design that a stalled fit may go on with, at most this
 * many bytes (an ImageNet-sized probe design would need tens of GB: it keeps the stall
 * and its warning instead) */
#ifndef IIS_POLISH_MAX_BYTES
#define IIS_POLISH_MAX_BYTES ((size_t)512 << 20)
#endif

/* A float32 fit whose passes can make no more progress above tol (the line search or
 * the relative decrease at float32's rounding floor) goes on from theta in float64
 * passes over a float64 copy of its design, with the same objective, stopping rule and
 * iteration budget (n_iter counts both parts), preconditioned as the float32 part was
 * (precondition: its level, 0 where the float32 Gram could not be used). *done is 0 when the copy is over the cap
 * (theta and info untouched). */
static int FN(polish_double)(const iis_ctx *ctx, const iis_design *X, const int32_t *y, int K,
                             const iis_solver_params *prm, int it, int precondition, double *theta,
                             iis_solver_info *out, int *done)
{
    const int64_t cnt = X->idx ? X->n * (int64_t)X->k : X->n * (int64_t)X->d;
    const size_t dk = (size_t)X->d * (size_t)K;
    iis_design Xd = *X;
    iis_solver_params p2 = *prm;
    double *x = NULL, *ms = NULL, *w = NULL, *b = NULL;
    int err = IIS_ENOMEM;
    *done = 0;
    if ((size_t)cnt > IIS_POLISH_MAX_BYTES / sizeof(double)) return IIS_OK;
    x = (double *)malloc(sizeof(double) * (size_t)(cnt > 0 ? cnt : 1));
    w = (double *)malloc(sizeof(double) * (dk > 0 ? dk : 1));
    b = (double *)malloc(sizeof(double) * (size_t)K);
    if (!x || !w || !b) goto done;
    if (X->idx) {
        const float *v = (const float *)X->val;
        for (int64_t e = 0; e < cnt; e++) x[e] = v[e];
        Xd.val = x;
    } else {
        const float *v = (const float *)X->x;
        for (int64_t i = 0; i < X->n; i++)
            for (int j = 0; j < X->d; j++) x[i * X->d + j] = v[i * X->ldx + j];
        Xd.x = x;
        Xd.ldx = X->d;
        if (X->mu || X->sigma) {
            if (!(ms = (double *)malloc(sizeof(double) * 2 * (size_t)X->d))) goto done;
            for (int j = 0; j < X->d; j++) {
                ms[j] = X->mu ? ((const float *)X->mu)[j] : 0.0;
                ms[X->d + j] = X->sigma ? ((const float *)X->sigma)[j] : 1.0;
            }
            Xd.mu = X->mu ? ms : NULL;
            Xd.sigma = X->sigma ? ms + X->d : NULL;
        }
    }
    for (size_t e = 0; e < dk; e++) w[e] = theta[e];
    for (int q = 0; q < K; q++) b[q] = theta[dk + q];
    p2.max_iter = prm->max_iter - it;
    p2.precondition = precondition;
    p2.start_logits = NULL;
    p2.trace_iter0 = prm->trace_iter0 + it; /* the events count on */
    if ((err = iis_logreg_fit_d(ctx, &Xd, y, K, &p2, w, b, out)) != IIS_OK) goto done;
    for (size_t e = 0; e < dk; e++) theta[e] = w[e];
    for (int q = 0; q < K; q++) theta[dk + q] = b[q];
    out->n_iter += it;
    *done = 1;
done:
    free(x);
    free(ms);
    free(w);
    free(b);
    return err;
}
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
    if ((err = FN(work_alloc)(ctx, &w, X, K)) != IIS_OK) goto cleanup;
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
        if (blk && it == IIS_BLOCK_AT) {
            int ok = 0;
            if (!(Hb = (float *)malloc(sizeof(float) * (size_t)K * IIS_PACKED(X->d + 1)))) {
                err = IIS_ENOMEM;
                goto cleanup;
            }
            if ((err = FN(block_build)(ctx, X, y, K, prm->l2, theta, &w, G0, Hb, &ok)) !=
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
            if ((err = iis_trace(prm, (iis_event){.kind = IIS_EVENT_ITER, .iter = it + 1, .loss = f,
                                                  .grad_max = gnew})) != IIS_OK)
                goto cleanup;
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
#if !IS_DOUBLE
    if ((stop == IIS_STOP_LINE_SEARCH || stop == IIS_STOP_REL_DECREASE) && it < prm->max_iter) {
        iis_solver_info pi;
        int done = 0;
        if ((err = FN(polish_double)(ctx, X, y, K, prm, it, pre ? prm->precondition : 0, theta, &pi, &done)) != IIS_OK) goto cleanup;
        if (done) {
            it = pi.n_iter;
            stop = pi.stop;
            f = pi.loss;
            gmax = pi.grad_max;
        }
    }
#endif
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
    int err = IIS_OK, nt;
    size_t dk;
    int64_t bi, n, nb;
    REAL *zbuf = NULL, *weff = NULL, *cr = NULL;
    double *c = NULL, *theta = NULL;
    iis_poll pl = {0, 0.0};
    if (!X || K < 1 || X->n < 0 || X->d < 0) return IIS_EINVAL;
    if (!X->idx && (X->ldx < X->d || !iis_fits_int(X->ldx) || !iis_fits_int(X->n)))
        return IIS_EINVAL;
    if (!X->idx && X->d > 0 && !iis_blas_ok(ctx, IS_DOUBLE)) return IIS_ENOBLAS;
    n = X->n;
    if (n == 0) return IIS_OK;
    dk = (size_t)X->d * (size_t)K;
    nb = (n + IIS_FUSED_BLOCK - 1) / IIS_FUSED_BLOCK;
    nt = iis_nt_for(ctx, n * (int64_t)K * (X->idx ? (X->k > 0 ? X->k : 1) : (X->d > 0 ? X->d : 1)));
    theta = (double *)malloc(sizeof(double) * (dk + (size_t)K));
    c = (double *)malloc(sizeof(double) * (size_t)K);
    weff = (REAL *)malloc(sizeof(REAL) * (dk + 1));
    cr = (REAL *)malloc(sizeof(REAL) * (size_t)K);
    /* without logits to return: one block of them per thread */
    if (!logits) zbuf = (REAL *)malloc(sizeof(REAL) * (size_t)nt * IIS_FUSED_BLOCK * (size_t)K);
    if (!theta || !c || !weff || !cr || (!logits && !zbuf)) {
        err = IIS_ENOMEM;
        goto cleanup;
    }
    for (size_t e = 0; e < dk; e++) theta[e] = w[e];
    for (int q = 0; q < K; q++) theta[dk + q] = b[q];
    FN(effective)(X, K, theta, weff, c);
    for (int q = 0; q < K; q++) cr[q] = (REAL)c[q];
    /* per block of rows: z_b = X_b weff + c, then the argmax of each row */
#pragma omp parallel for num_threads(nt) schedule(static)
    for (bi = 0; bi < nb; bi++) {
        const int64_t b0 = bi * IIS_FUSED_BLOCK;
        const int rows = (int)(n - b0 < IIS_FUSED_BLOCK ? n - b0 : IIS_FUSED_BLOCK);
        REAL *zb = logits ? logits + b0 * K : zbuf + (size_t)iis_thread_num() * IIS_FUSED_BLOCK * K;
        if (iis_team_interrupted(ctx, &pl)) continue;
        FN(block_logits)(ctx, X, K, weff, cr, b0, rows, zb);
        if (pred)
            for (int r = 0; r < rows; r++) {
                const REAL *zi = zb + (size_t)r * K;
                int best = 0;
                for (int q = 1; q < K; q++)
                    if (zi[q] > zi[best]) best = q;
                pred[b0 + r] = best;
            }
    }
    if (pl.stop) err = IIS_EINTR;
cleanup:
    free(zbuf);
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
    if ((err = FN(work_alloc)(ctx, &wk, X, K)) != IIS_OK) goto cleanup;
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
