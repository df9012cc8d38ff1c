/* end2end.c -- the End2End concept library (docs/method.md section 6), float64.
 *
 * Element j (row e_j of E, n_el x d) is assigned to one of M concepts by logits q_j:
 *   y_j = (LN(q_j) + g_j) / tau         LN over the M entries, no affine; g Gumbel noise
 *   soft_j = softmax(y_j), hard_j = onehot(argmax y_j)   (ties: lower index)
 *   A = hard in the forward pass, dL/dq through soft (straight-through)
 *   S = A^T E (M x d), p_m = S_m / ||S_m||   (p_m = 0, no gradient, for an empty concept)
 *   a = F P^T, x = LN(a) per row, h = x masked to its k largest |x| (the library's mask)
 *   L = mean_i CE(W h_i + b, y_i) + l2/2 ||W||^2
 * Backward (mask constant):
 *   dZ = (softmax(Z) - onehot(y)) / n,  dW = dZ^T h + l2 W,  db = colsum dZ,  dh = dZ W
 *   dx = dh masked,  da = LN'(dx),  dP = da^T F,  dS_m = (dP_m - p_m <p_m, dP_m>) / ||S_m||
 *   dA = E dS^T,  dy_j = soft_j (dA_j - <dA_j, soft_j>) / tau,  dq_j = LN'(dy_j)
 * with LN'(dx) = (dx - mean(dx) - xhat mean(dx xhat)) / sigma.
 *
 * Determinism: every GEMM is a set of BLAS calls on fixed blocks of output rows (each
 * call sums its whole inner dimension), row-wise work is per row, and the column sums
 * (db, the loss) are formed over fixed row chunks added in chunk order; the Gumbel noise
 * is a hash of (seed, step, entry). The bits do not depend on the thread count.
 */
#include "internal.h"
#include <math.h>

#define E2E_LN_EPS 1e-5

/* Gumbel noise g = -log(-log u) of step `step` for the n x m logits, u in (0, 1) from a
 * splitmix64 hash of (seed, step, entry index) */
void iis_e2e_noise(const iis_ctx *ctx, uint64_t seed, int64_t step, int64_t n, int m, double *g)
{
    uint64_t s = seed ^ (0x9E3779B97F4A7C15ULL * (uint64_t)(step + 1)), key = iis_rng_next(&s);
    int64_t tot = n * (int64_t)m, i;
    int nt = iis_nt_for(ctx, tot);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (i = 0; i < tot; i++) {
        uint64_t st = key + (uint64_t)i * 0xD1B54A32D192ED03ULL;
        double u = ((double)(iis_rng_next(&st) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
        g[i] = -log(-log(u));
    }
}

/* in place: each row of x (rows x m) -> (x - mean) / sigma; rs[i] = 1 / sigma */
static void e2e_ln_rows(const iis_ctx *ctx, double *x, int64_t rows, int m, double *rs)
{
    int64_t i;
    int nt = iis_nt_for(ctx, rows * (int64_t)m);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (i = 0; i < rows; i++) {
        double *r = x + i * m, mu = 0.0, var = 0.0;
        for (int j = 0; j < m; j++) mu += r[j];
        mu /= m;
        for (int j = 0; j < m; j++) var += (r[j] - mu) * (r[j] - mu);
        rs[i] = 1.0 / sqrt(var / m + E2E_LN_EPS);
        for (int j = 0; j < m; j++) r[j] = (r[j] - mu) * rs[i];
    }
}

/* in place: dx (rows x m) -> LN'(dx) = (dx - mean(dx) - xhat mean(dx xhat)) rs, per row */
static void e2e_ln_back(const iis_ctx *ctx, double *dx, const double *xhat, int64_t rows, int m,
                        const double *rs)
{
    int64_t i;
    int nt = iis_nt_for(ctx, rows * (int64_t)m);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (i = 0; i < rows; i++) {
        double *r = dx + i * m, s1 = 0.0, s2 = 0.0;
        const double *xh = xhat + i * m;
        for (int j = 0; j < m; j++) {
            s1 += r[j];
            s2 += r[j] * xh[j];
        }
        s1 /= m;
        s2 /= m;
        for (int j = 0; j < m; j++) r[j] = (r[j] - s1 - xh[j] * s2) * rs[i];
    }
}

typedef struct {
    double *qhat;  /* ne x m: LN(q) */
    double *qrs;   /* ne: 1 / sigma of q rows */
    double *soft;  /* ne x m: softmax(y), then dL/dy, then dL/dq */
    int32_t *hard; /* ne */
    double *p;     /* m x d: unit concepts */
    double *r;     /* m: ||S_m|| */
    double *x;     /* n x m: LN(a) */
    double *ars;   /* n */
    double *h;     /* n x m: masked x, then dh */
    int32_t *idx;  /* n x k */
    double *val;   /* n x k */
    double *z;     /* n x K: logits, then dZ */
    double *dp;    /* m x d */
    double *da;    /* ne x m: dL/dA */
    double *part;  /* IIS_NCHUNK x (K + 1) */
} e2e_work;

static void e2e_free(e2e_work *w)
{
    free(w->qhat);
    free(w->qrs);
    free(w->soft);
    free(w->hard);
    free(w->p);
    free(w->r);
    free(w->x);
    free(w->ars);
    free(w->h);
    free(w->idx);
    free(w->val);
    free(w->z);
    free(w->dp);
    free(w->da);
    free(w->part);
}

static int e2e_alloc(e2e_work *w, int64_t ne, int d, int64_t n, int m, int K, int k)
{
    size_t em = (size_t)ne * m + 1, nm = (size_t)n * m + 1;
    memset(w, 0, sizeof(*w));
    w->qhat = malloc(sizeof(double) * em);
    w->qrs = malloc(sizeof(double) * ((size_t)ne + 1));
    w->soft = malloc(sizeof(double) * em);
    w->hard = malloc(sizeof(int32_t) * ((size_t)ne + 1));
    w->p = malloc(sizeof(double) * ((size_t)m * d + 1));
    w->r = malloc(sizeof(double) * ((size_t)m + 1));
    w->x = malloc(sizeof(double) * nm);
    w->ars = malloc(sizeof(double) * ((size_t)n + 1));
    w->h = malloc(sizeof(double) * nm);
    w->idx = malloc(sizeof(int32_t) * ((size_t)n * k + 1));
    w->val = malloc(sizeof(double) * ((size_t)n * k + 1));
    w->z = malloc(sizeof(double) * ((size_t)n * K + 1));
    w->dp = malloc(sizeof(double) * ((size_t)m * d + 1));
    w->da = malloc(sizeof(double) * em);
    w->part = malloc(sizeof(double) * IIS_NCHUNK * ((size_t)K + 1));
    if (!w->qhat || !w->qrs || !w->soft || !w->hard || !w->p || !w->r || !w->x || !w->ars ||
        !w->h || !w->idx || !w->val || !w->z || !w->dp || !w->da || !w->part)
        return IIS_ENOMEM;
    return IIS_OK;
}

/* soft = softmax((LN(q) + g) / tau) and hard = argmax per element (g may be NULL) */
static void e2e_assign(const iis_ctx *ctx, e2e_work *w, const double *q, const double *g,
                       int64_t ne, int m, double tau)
{
    int64_t j;
    int nt = iis_nt_for(ctx, ne * (int64_t)m);
    memcpy(w->qhat, q, sizeof(double) * (size_t)ne * m);
    e2e_ln_rows(ctx, w->qhat, ne, m, w->qrs);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (j = 0; j < ne; j++) {
        const double *qh = w->qhat + j * m, *gj = g ? g + j * m : NULL;
        double *s = w->soft + j * m, mx = -INFINITY, tot = 0.0;
        int arg = 0;
        for (int c = 0; c < m; c++) {
            s[c] = (qh[c] + (gj ? gj[c] : 0.0)) / tau;
            if (s[c] > mx) {
                mx = s[c];
                arg = c;
            }
        }
        for (int c = 0; c < m; c++) tot += (s[c] = exp(s[c] - mx));
        for (int c = 0; c < m; c++) s[c] /= tot;
        w->hard[j] = arg;
    }
}

/* p = unit(A^T E) with A = onehot(hard), or the given dense A (ne x m); r = norms */
static void e2e_concepts(const iis_ctx *ctx, e2e_work *w, const double *el, int64_t ne, int d,
                         int m, const double *a_given)
{
    int c;
    int nt = iis_nt_for(ctx, ne * (int64_t)d);
    if (a_given) {
        iis_dgemm_rows(ctx, 'T', 'N', m, d, (int)ne, 1.0, a_given, m, el, d, 0.0, w->p, d);
    } else {
        /* S_m: the elements assigned to m, summed in ascending element order */
#pragma omp parallel for num_threads(nt) schedule(static)
        for (c = 0; c < m; c++) {
            double *s = w->p + (size_t)c * d;
            memset(s, 0, sizeof(double) * (size_t)d);
            for (int64_t j = 0; j < ne; j++)
                if (w->hard[j] == c) {
                    const double *e = el + j * d;
                    for (int t = 0; t < d; t++) s[t] += e[t];
                }
        }
    }
    for (c = 0; c < m; c++) {
        double *s = w->p + (size_t)c * d, nrm = 0.0;
        for (int t = 0; t < d; t++) nrm += s[t] * s[t];
        w->r[c] = nrm = sqrt(nrm);
        for (int t = 0; t < d; t++) s[t] = nrm > 0.0 ? s[t] / nrm : 0.0;
    }
}

/* loss at the current concepts w->p; with grads, dW, db and dA (into w->da) */
static int e2e_head(const iis_ctx *ctx, e2e_work *w, const double *el, int64_t ne, int d,
                    const double *f, int64_t n, const int32_t *y, int K, int m, int k, double l2,
                    const double *wt, const double *b, double *loss, double *gw, double *gb)
{
    int64_t i;
    int nt = iis_nt_for(ctx, n * (int64_t)(m + K)), ch, st;
    double tot = 0.0;
    /* x = LN(F P^T), h = top-k of x */
    iis_dgemm_rows(ctx, 'N', 'T', n, m, d, 1.0, f, d, w->p, d, 0.0, w->x, m);
    e2e_ln_rows(ctx, w->x, n, m, w->ars);
    if ((st = iis_topk_d(ctx, w->x, n, m, m, k, 0, w->idx, w->val)) != IIS_OK) return st;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (i = 0; i < n; i++) {
        double *hr = w->h + i * m;
        memset(hr, 0, sizeof(double) * (size_t)m);
        for (int t = 0; t < k; t++) hr[w->idx[i * k + t]] = w->val[i * k + t];
    }
    /* Z = h W^T + b; per row CE and dZ = (softmax - onehot) / n; chunk partials of db, loss */
    iis_dgemm_rows(ctx, 'N', 'T', n, K, m, 1.0, w->h, m, wt, m, 0.0, w->z, K);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (ch = 0; ch < IIS_NCHUNK; ch++) {
        int64_t lo, hi;
        double *q = w->part + (size_t)ch * (K + 1);
        iis_chunk(n, IIS_NCHUNK, ch, &lo, &hi);
        for (int c = 0; c <= K; c++) q[c] = 0.0;
        for (int64_t r = lo; r < hi; r++) {
            double *zr = w->z + r * K, mx = -INFINITY, s = 0.0;
            for (int c = 0; c < K; c++) {
                zr[c] += b[c];
                if (zr[c] > mx) mx = zr[c];
            }
            for (int c = 0; c < K; c++) s += exp(zr[c] - mx);
            q[K] += mx + log(s) - zr[y[r]];
            for (int c = 0; c < K; c++) {
                zr[c] = (exp(zr[c] - mx) / s - (c == y[r])) / (double)n;
                q[c] += zr[c];
            }
        }
    }
    for (ch = 0; ch < IIS_NCHUNK; ch++) tot += w->part[(size_t)ch * (K + 1) + K];
    tot /= (double)n;
    for (int64_t e = 0; e < (int64_t)K * m; e++) tot += 0.5 * l2 * wt[e] * wt[e];
    *loss = tot;
    if (!gw) return IIS_OK;
    for (int c = 0; c < K; c++) {
        gb[c] = 0.0;
        for (ch = 0; ch < IIS_NCHUNK; ch++) gb[c] += w->part[(size_t)ch * (K + 1) + c];
    }
    /* dW = dZ^T h + l2 W, then dh = dZ W masked (over h), dx = LN'(dh) */
    memcpy(gw, wt, sizeof(double) * (size_t)K * m);
    iis_dgemm_rows(ctx, 'T', 'N', K, m, (int)n, 1.0, w->z, K, w->h, m, l2, gw, m);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (i = 0; i < n; i++) { /* the mask, as 1 / 0 in h */
        double *hr = w->h + i * m;
        memset(hr, 0, sizeof(double) * (size_t)m);
        for (int t = 0; t < k; t++) hr[w->idx[i * k + t]] = 1.0;
    }
    {
        double *dh = malloc(sizeof(double) * ((size_t)n * m + 1));
        if (!dh) return IIS_ENOMEM;
        iis_dgemm_rows(ctx, 'N', 'N', n, m, K, 1.0, w->z, K, wt, m, 0.0, dh, m);
#pragma omp parallel for num_threads(nt) schedule(static)
        for (i = 0; i < (int64_t)n * m; i++) w->h[i] *= dh[i];
        free(dh);
    }
    e2e_ln_back(ctx, w->h, w->x, n, m, w->ars);
    /* dP = da^T F; dS_m = (dP_m - p_m <p_m, dP_m>) / r_m; dA = E dS^T */
    iis_dgemm_rows(ctx, 'T', 'N', m, d, (int)n, 1.0, w->h, m, f, d, 0.0, w->dp, d);
    for (int c = 0; c < m; c++) {
        double *dp = w->dp + (size_t)c * d, dot = 0.0;
        const double *p = w->p + (size_t)c * d;
        for (int t = 0; t < d; t++) dot += p[t] * dp[t];
        for (int t = 0; t < d; t++) dp[t] = w->r[c] > 0.0 ? (dp[t] - p[t] * dot) / w->r[c] : 0.0;
    }
    iis_dgemm_rows(ctx, 'N', 'T', ne, m, d, 1.0, el, d, w->dp, d, 0.0, w->da, m);
    return IIS_OK;
}

/* dq from dA through the straight-through softmax and LN(q), into w->soft */
static void e2e_back_assign(const iis_ctx *ctx, e2e_work *w, int64_t ne, int m, double tau)
{
    int64_t j;
    int nt = iis_nt_for(ctx, ne * (int64_t)m);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (j = 0; j < ne; j++) {
        double *s = w->soft + j * m, dot = 0.0;
        const double *da = w->da + j * m;
        for (int c = 0; c < m; c++) dot += da[c] * s[c];
        for (int c = 0; c < m; c++) s[c] = s[c] * (da[c] - dot) / tau;
    }
    e2e_ln_back(ctx, w->soft, w->qhat, ne, m, w->qrs);
}

static int e2e_check(const iis_ctx *ctx, int64_t ne, int d, int64_t n, int K, int m, int k,
                     double tau)
{
    if (ne < 1 || d < 1 || n < 1 || K < 2 || m < 1 || k < 1 || k > m || !(tau > 0.0))
        return IIS_EINVAL;
    if (!iis_fits_int(ne) || !iis_fits_int(n) || !iis_fits_int(ne * (int64_t)m / 2))
        return IIS_EINVAL;
    if (!iis_blas_ok(ctx, 1)) return IIS_ENOBLAS;
    return IIS_OK;
}

int iis_e2e_objective(const iis_ctx *ctx, const double *el, int64_t ne, int d, const double *f,
                      int64_t n, const int32_t *y, int K, int m, const iis_e2e_params *prm,
                      const double *q, const double *wt, const double *b, const double *noise,
                      const double *a_given, double *loss, double *gq, double *gw, double *gb,
                      double *ga)
{
    e2e_work w;
    int err = e2e_check(ctx, ne, d, n, K, m, prm->k, prm->temperature);
    if (err != IIS_OK) return err;
    if ((err = e2e_alloc(&w, ne, d, n, m, K, prm->k)) == IIS_OK) {
        e2e_assign(ctx, &w, q, noise, ne, m, prm->temperature);
        e2e_concepts(ctx, &w, el, ne, d, m, a_given);
        err = e2e_head(ctx, &w, el, ne, d, f, n, y, K, m, prm->k, prm->l2, wt, b, loss, gw, gb);
        if (err == IIS_OK && gw) {
            if (ga) memcpy(ga, w.da, sizeof(double) * (size_t)ne * m);
            e2e_back_assign(ctx, &w, ne, m, prm->temperature);
            if (gq) memcpy(gq, w.soft, sizeof(double) * (size_t)ne * m);
        }
    }
    e2e_free(&w);
    return err;
}

/* one Adam update (torch semantics) of theta (len) by grad, at step t (1-based) */
static void e2e_adam(double *theta, const double *grad, double *m1, double *m2, size_t len,
                     const iis_e2e_params *prm, int64_t t)
{
    double c1 = 1.0 / (1.0 - pow(prm->beta1, (double)t)), c2 = 1.0 / (1.0 - pow(prm->beta2, (double)t));
    for (size_t e = 0; e < len; e++) {
        m1[e] = prm->beta1 * m1[e] + (1.0 - prm->beta1) * grad[e];
        m2[e] = prm->beta2 * m2[e] + (1.0 - prm->beta2) * grad[e] * grad[e];
        theta[e] -= prm->lr * (m1[e] * c1) / (sqrt(m2[e] * c2) + prm->eps);
    }
}

int iis_e2e_fit(const iis_ctx *ctx, const double *el, int64_t ne, int d, const double *f,
                int64_t n, const int32_t *y, int K, int m, const iis_e2e_params *prm, double *q,
                double *wt, double *b, double *adam, double *loss_history)
{
    e2e_work w;
    size_t em = (size_t)ne * m, km = (size_t)K * m;
    double *g = NULL, *gw = NULL, *gb = NULL, loss = 0.0;
    int err = e2e_check(ctx, ne, d, n, K, m, prm->k, prm->temperature);
    if (err != IIS_OK) return err;
    if (prm->steps < 0 || prm->step0 < 0 || !(prm->lr > 0.0) || !(prm->beta1 >= 0.0 && prm->beta1 < 1.0) ||
        !(prm->beta2 >= 0.0 && prm->beta2 < 1.0) || !(prm->eps >= 0.0) || !(prm->l2 >= 0.0))
        return IIS_EINVAL;
    g = malloc(sizeof(double) * (em + 1));
    gw = malloc(sizeof(double) * (km + 1));
    gb = malloc(sizeof(double) * ((size_t)K + 1));
    if (!g || !gw || !gb || (err = e2e_alloc(&w, ne, d, n, m, K, prm->k)) != IIS_OK) {
        if (g && gw && gb) e2e_free(&w);
        free(g);
        free(gw);
        free(gb);
        return IIS_ENOMEM;
    }
    for (int s = 0; s < prm->steps; s++) {
        int64_t t = (int64_t)prm->step0 + s;
        iis_e2e_noise(ctx, prm->seed, t, ne, m, g);
        e2e_assign(ctx, &w, q, g, ne, m, prm->temperature);
        e2e_concepts(ctx, &w, el, ne, d, m, NULL);
        err = e2e_head(ctx, &w, el, ne, d, f, n, y, K, m, prm->k, prm->l2, wt, b, &loss, gw, gb);
        if (err != IIS_OK) break;
        e2e_back_assign(ctx, &w, ne, m, prm->temperature);
        if (loss_history) loss_history[s] = loss;
        /* Adam state: first and second moments of q, W, b laid out in that order */
        e2e_adam(q, w.soft, adam, adam + em, em, prm, t + 1);
        e2e_adam(wt, gw, adam + 2 * em, adam + 2 * em + km, km, prm, t + 1);
        e2e_adam(b, gb, adam + 2 * em + 2 * km, adam + 2 * em + 2 * km + K, (size_t)K, prm, t + 1);
        iis_report(ctx, s + 1, prm->steps);
        if (iis_interrupted(ctx)) {
            err = IIS_EINTR;
            break;
        }
    }
    e2e_free(&w);
    free(g);
    free(gw);
    free(gb);
    return err;
}
