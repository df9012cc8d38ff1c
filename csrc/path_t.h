/* path_t.h -- the sparsity path iis_path: for each ratio s (ascending), mask the
 * projections to their top-k, fit the IP (warm start from the previous ratio), evaluate;
 * the solver's trace callback hears each ratio's start and end (with its accuracy).
 * Instantiated for REAL by solver.c after lbfgs_t.h.
 */

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
        iis_solver_params sp = prm->solver;
        sp.trace_stage = i;
        if ((err = iis_trace(&sp, (iis_event){.kind = IIS_EVENT_START, .kept = k})) != IIS_OK) goto cleanup;
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
        if ((err = FN(iis_logreg_fit)(ctx, &Xtr, y_tr, K, &sp, w, b, &info)) != IIS_OK)
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
        if ((err = iis_trace(&sp, (iis_event){.kind = IIS_EVENT_END, .iter = info.n_iter, .loss = info.loss,
                                              .grad_max = info.grad_max, .kept = k, .stop = info.stop,
                                              .accuracy = res->accuracy[i]})) != IIS_OK)
            goto cleanup;
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
