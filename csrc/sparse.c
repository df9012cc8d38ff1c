/* sparse.c -- multinomial elastic-net heads: one point of the glmnet-style path.
 *
 * Objective (float64), W d x K (one row per concept), b K (unpenalised):
 *   F(W, b) = mean_i CE(x_i W + b, y_i) + lambda (alpha R(W) + (1 - alpha)/2 ||W||_F^2)
 *   R(W) = ||W||_1, or sum_j ||W_j||_2 (grouped: a concept leaves all classes at once).
 * Solver: FISTA (accelerated proximal gradient, backtracking on the CE's Lipschitz
 * constant, gradient-based adaptive restart) on the screened rows S (strong rule from the
 * previous lambda's gradient, plus the rows that are nonzero), then a KKT check over all
 * rows that re-adds violators. Logits are linear in (W, b), so the extrapolated point's
 * logits are combined from the iterates' and each iteration costs two GEMMs.
 * Stopping rule: max KKT violation <= tol over every weight and intercept, where for
 * g = dCE/dW + lambda (1 - alpha) W the violation is |g + lambda alpha sign(w)| at w != 0
 * and max(|g| - lambda alpha, 0) at w = 0 (grouped: the same with row 2-norms and w_j/||w_j||),
 * and |dCE/db| for the intercepts.
 * Same bits for any thread count: row blocks and reduction chunks depend on n only.
 */
#include "internal.h"
#include <float.h>
#include <math.h>

#define REAL double
#define FN(name) IIS_CAT(name, _d)
#define GEMM(ctx) (ctx)->blas->dgemm
#include "gemm_t.h"

#define SP_CHECK 5 /* iterations between KKT checks on S */
/* GEMMs below this many multiply-adds run on one thread: waking a team costs more,
 * and far more on a loaded machine (W1 quick, 3000 x 40 x 20: 8x slower on 2 threads) */
#define SP_PAR_GEMM ((int64_t)64 << 20)

typedef struct {
    const double *x; /* n x d, leading dimension ldx */
    int64_t n, ldx;
    int d, K;
    const int32_t *y;
} sp_data;

/* Z (n x K) <- Z + b per row */
static void sp_add_bias(int nt, double *Z, int64_t n, int K, const double *b)
{
    int64_t i;
#pragma omp parallel for num_threads(nt) schedule(static) if (n * K > IIS_PAR_MIN)
    for (i = 0; i < n; i++)
        for (int k = 0; k < K; k++) Z[i * K + k] += b[k];
}

/* mean_i CE(Z_i, y_i), and G = (softmax(Z) - e_y) / n (G may be Z) */
static double sp_softmax(int nt, const double *Z, int64_t n, int K, const int32_t *y, double *G)
{
    double part[IIS_NCHUNK], s = 0;
    int c;
#pragma omp parallel for num_threads(nt) schedule(static) if (n * K > IIS_PAR_MIN)
    for (c = 0; c < IIS_NCHUNK; c++) {
        int64_t lo = n * c / IIS_NCHUNK, hi = n * (c + 1) / IIS_NCHUNK;
        double acc = 0;
        for (int64_t i = lo; i < hi; i++) {
            const double *z = Z + i * K;
            double *g = G + i * K, m = z[0], se = 0, zy = z[y[i]], inv;
            for (int k = 1; k < K; k++) m = z[k] > m ? z[k] : m;
            for (int k = 0; k < K; k++) g[k] = iis_exp_neg(z[k] - m); /* vectorised */
            for (int k = 0; k < K; k++) se += g[k];
            inv = 1.0 / (se * (double)n);
            for (int k = 0; k < K; k++) g[k] *= inv;
            g[y[i]] -= 1.0 / (double)n;
            acc += m + log(se) - zy;
        }
        part[c] = acc;
    }
    for (c = 0; c < IIS_NCHUNK; c++) s += part[c];
    return s / (double)n;
}

/* gW (s x K) = X^T G, gb (K) = 1^T G over fixed row chunks added in chunk order;
 * X n x s with leading dimension ldx; scratch holds nch (s K + K) doubles */
static int sp_xtg(const iis_ctx *ctx, int nt, const double *X, int64_t n, int s, int64_t ldx,
                  const double *G, int K, double *gW, double *gb, double *scratch, int nch)
{
    size_t blk = (size_t)s * K + K;
    int c;
#pragma omp parallel for num_threads(nt) schedule(static) if (n * (s + 1) * K > SP_PAR_GEMM)
    for (c = 0; c < nch; c++) {
        int64_t lo = n * c / nch, hi = n * (c + 1) / nch;
        double *out = scratch + (size_t)c * blk, *ob = out + (size_t)s * K;
        /* column-major: out^T (K x s) = G_c^T (K x rows) X_c (rows x s) */
        char ta = 'N', tb = 'T';
        int mm = K, nn = s, kk = (int)(hi - lo), la = K, lb = (int)ldx, lc = K;
        double one = 1, zero = 0;
        if (s > 0 && kk > 0)
            GEMM(ctx)(&ta, &tb, &mm, &nn, &kk, &one, G + lo * K, &la, X + lo * ldx, &lb, &zero, out,
                      &lc);
        else
            memset(out, 0, sizeof(double) * (size_t)s * K);
        for (int k = 0; k < K; k++) ob[k] = 0;
        for (int64_t i = lo; i < hi; i++)
            for (int k = 0; k < K; k++) ob[k] += G[i * K + k];
    }
    memset(gW, 0, sizeof(double) * (size_t)s * K);
    memset(gb, 0, sizeof(double) * (size_t)K);
    for (c = 0; c < nch; c++) {
        const double *out = scratch + (size_t)c * blk, *ob = out + (size_t)s * K;
        for (size_t t = 0; t < (size_t)s * K; t++) gW[t] += out[t];
        for (int k = 0; k < K; k++) gb[k] += ob[k];
    }
    return iis_interrupted(ctx) ? IIS_EINTR : IIS_OK;
}

/* Z = X W + b (X n x s, ld ldx; W s x K) */
static int sp_forward(const iis_ctx *ctx, int nt, const double *X, int64_t n, int s, int64_t ldx,
                      const double *W, const double *b, int K, double *Z)
{
    int st = par_gemm_ab_d(ctx, n * (s + 1) * K > SP_PAR_GEMM ? nt : 1, n, s, K, X, ldx, W, Z);
    if (st == IIS_OK) sp_add_bias(nt, Z, n, K, b);
    return st;
}

/* W = prox of h lambda (alpha R + (1 - alpha)/2 ||.||^2) at V (s x K) */
static void sp_prox(const double *V, int s, int K, double h, const iis_enet_params *p, double *W)
{
    double l1 = h * p->lambda * p->alpha, shrink = 1.0 / (1.0 + h * p->lambda * (1.0 - p->alpha));
    for (int j = 0; j < s; j++) {
        const double *v = V + (size_t)j * K;
        double *w = W + (size_t)j * K;
        if (p->grouped) {
            double nrm = 0, f;
            for (int k = 0; k < K; k++) nrm += v[k] * v[k];
            nrm = sqrt(nrm);
            f = nrm > l1 ? (1.0 - l1 / nrm) * shrink : 0.0;
            for (int k = 0; k < K; k++) w[k] = v[k] * f;
        } else {
            for (int k = 0; k < K; k++) {
                double a = fabs(v[k]) - l1;
                w[k] = a > 0 ? copysign(a * shrink, v[k]) : 0.0;
            }
        }
    }
}

/* KKT violation of row j (w, CE gradient g, both K long); see the stopping rule above */
static double sp_row_kkt(const double *w, const double *g, int K, const iis_enet_params *p)
{
    double l1 = p->lambda * p->alpha, l2 = p->lambda * (1.0 - p->alpha), v = 0, wn = 0, gn = 0;
    if (p->grouped) {
        for (int k = 0; k < K; k++) wn += w[k] * w[k];
        if (wn == 0) {
            for (int k = 0; k < K; k++) gn += g[k] * g[k];
            return sqrt(gn) > l1 ? sqrt(gn) - l1 : 0.0;
        }
        wn = sqrt(wn);
        for (int k = 0; k < K; k++) {
            double r = g[k] + l2 * w[k] + l1 * w[k] / wn;
            gn += r * r;
        }
        return sqrt(gn);
    }
    for (int k = 0; k < K; k++) {
        double r = w[k] != 0 ? fabs(g[k] + l2 * w[k] + copysign(l1, w[k])) : fabs(g[k]) - l1;
        v = r > v ? r : v;
    }
    return v;
}

/* row screening score: max_k |g_jk| (or ||g_j||_2 grouped) */
static double sp_row_score(const double *g, int K, int grouped)
{
    double v = 0;
    for (int k = 0; k < K; k++) v = grouped ? v + g[k] * g[k] : (fabs(g[k]) > v ? fabs(g[k]) : v);
    return grouped ? sqrt(v) : v;
}

static int sp_nchunks(int64_t n, int s, int K)
{
    return atz_chunks_d(n, s > 0 ? s : 1, K);
}

int iis_enet_objective_d(const iis_ctx *ctx, const double *x, int64_t n, int d, int64_t ldx,
                         const int32_t *y, int K, const double *w, const double *b, double *loss,
                         double *gw, double *gb)
{
    int nt = iis_nthreads(ctx), nch = sp_nchunks(n, d, K), st;
    double *Z = NULL, *scr = NULL;
    if (!ctx || !ctx->blas || !ctx->blas->dgemm) return IIS_ENOBLAS;
    if (n < 1 || d < 0 || K < 1) return IIS_EINVAL;
    Z = malloc(sizeof(double) * (size_t)n * K);
    scr = malloc(sizeof(double) * (size_t)nch * ((size_t)d * K + K));
    st = (!Z || !scr) ? IIS_ENOMEM : sp_forward(ctx, nt, x, n, d, ldx, w, b, K, Z);
    if (st == IIS_OK) {
        *loss = sp_softmax(nt, Z, n, K, y, Z);
        st = sp_xtg(ctx, nt, x, n, d, ldx, Z, K, gw, gb, scr, nch);
    }
    free(Z);
    free(scr);
    return st;
}

/* workspace of one lambda: S rows gathered, iterates and their logits */
typedef struct {
    int s;
    int32_t *S;
    double *buf; /* one block: W, Wp, Wy, Wn, gW (s x K each), b, bp, by, bn, gb (K each) */
    double *XS, *W, *Wp, *Wy, *Wn, *gW, *b, *bp, *by, *bn, *gb;
    double *Z, *Zp, *Zn, *G, *scr;
} sp_work;

static void sp_free(sp_work *k)
{
    free(k->S);
    free(k->XS);
    free(k->buf);
    free(k->Z);
    free(k->Zp);
    free(k->Zn);
    free(k->G);
    free(k->scr);
}

/* gather X[:, S] into XS (n x s) and W[S] into k->W */
static void sp_gather(int nt, const sp_data *D, sp_work *k, const double *w)
{
    int64_t i;
    int s = k->s, K = D->K;
#pragma omp parallel for num_threads(nt) schedule(static) if (D->n * s > IIS_PAR_MIN)
    for (i = 0; i < D->n; i++)
        for (int t = 0; t < s; t++) k->XS[i * s + t] = D->x[i * D->ldx + k->S[t]];
    for (int t = 0; t < s; t++) memcpy(k->W + (size_t)t * K, w + (size_t)k->S[t] * K, sizeof(double) * K);
}

/* FISTA on the rows S from the current W, b (whose logits are in Z), until the KKT
 * violation on S is <= tol or *it reaches max_iter; on return G holds (softmax(Z) - e_y)/n
 * at the final iterate, gW, gb its gradient, and *loss its mean CE */
static int sp_fista(const iis_ctx *ctx, const sp_data *D, sp_work *k, const iis_enet_params *p,
                    double *L, int *it, double *loss, double *viol)
{
    int nt = iis_nthreads(ctx), s = k->s, K = D->K, nch = sp_nchunks(D->n, s, K), st, since = 0;
    size_t sk = (size_t)s * K, nk = (size_t)D->n * K;
    double t = 1, fx;
    memcpy(k->Wp, k->W, sizeof(double) * sk);
    memcpy(k->bp, k->b, sizeof(double) * K);
    memcpy(k->Zp, k->Z, sizeof(double) * nk);
    fx = sp_softmax(nt, k->Z, D->n, K, D->y, k->G);
    if ((st = sp_xtg(ctx, nt, k->XS, D->n, s, s, k->G, K, k->gW, k->gb, k->scr, nch))) return st;
    for (;;) {
        double tn, beta, fy, q, dd, r;
        size_t u;
        int64_t i;
        /* KKT on S at the current iterate (gW, gb, G hold its gradient when since == 0) */
        if (since == 0) {
            *viol = 0;
            for (int j = 0; j < s; j++) {
                double v = sp_row_kkt(k->W + (size_t)j * K, k->gW + (size_t)j * K, K, p);
                *viol = v > *viol ? v : *viol;
            }
            for (int c = 0; c < K; c++) *viol = fabs(k->gb[c]) > *viol ? fabs(k->gb[c]) : *viol;
            *loss = fx;
            if (*viol <= p->tol || *it >= p->max_iter) return IIS_OK;
        }
        /* extrapolated point y = x + beta (x - x_prev), its logits likewise */
        tn = 0.5 * (1.0 + sqrt(1.0 + 4.0 * t * t));
        beta = (t - 1.0) / tn;
        for (u = 0; u < sk; u++) k->Wy[u] = k->W[u] + beta * (k->W[u] - k->Wp[u]);
        for (int c = 0; c < K; c++) k->by[c] = k->b[c] + beta * (k->b[c] - k->bp[c]);
#pragma omp parallel for num_threads(nt) schedule(static) if (nk > IIS_PAR_MIN)
        for (i = 0; i < (int64_t)nk; i++) k->G[i] = k->Z[i] + beta * (k->Z[i] - k->Zp[i]);
        fy = sp_softmax(nt, k->G, D->n, K, D->y, k->G);
        if ((st = sp_xtg(ctx, nt, k->XS, D->n, s, s, k->G, K, k->gW, k->gb, k->scr, nch))) return st;
        /* backtracking: F_CE(x+) <= F_CE(y) + <g, x+ - y> + L/2 ||x+ - y||^2 */
        for (;;) {
            double h = 1.0 / *L, *V = k->Wn, fn;
            for (u = 0; u < sk; u++) V[u] = k->Wy[u] - h * k->gW[u];
            sp_prox(V, s, K, h, p, k->Wn);
            for (int c = 0; c < K; c++) k->bn[c] = k->by[c] - h * k->gb[c];
            if ((st = sp_forward(ctx, nt, k->XS, D->n, s, s, k->Wn, k->bn, K, k->Zn))) return st;
            fn = sp_softmax(nt, k->Zn, D->n, K, D->y, k->G); /* G: scratch here */
            q = fy, dd = 0;
            for (u = 0; u < sk; u++) {
                double e = k->Wn[u] - k->Wy[u];
                q += k->gW[u] * e;
                dd += e * e;
            }
            for (int c = 0; c < K; c++) {
                double e = k->bn[c] - k->by[c];
                q += k->gb[c] * e;
                dd += e * e;
            }
            if (fn <= q + 0.5 * *L * dd + 1e-13 * fabs(fy) || dd == 0) {
                fx = fn;
                break;
            }
            *L *= 2.0;
        }
        /* restart the momentum when the step turns against it: <y - x+, x+ - x> > 0 */
        r = 0;
        for (u = 0; u < sk; u++) r += (k->Wy[u] - k->Wn[u]) * (k->Wn[u] - k->W[u]);
        for (int c = 0; c < K; c++) r += (k->by[c] - k->bn[c]) * (k->bn[c] - k->b[c]);
        t = r > 0 ? 1.0 : tn;
        {   /* x_prev <- x <- x+ (buffer rotation) */
            double *tw = k->Wp, *tb = k->bp, *tz = k->Zp;
            k->Wp = k->W, k->W = k->Wn, k->Wn = tw;
            k->bp = k->b, k->b = k->bn, k->bn = tb;
            k->Zp = k->Z, k->Z = k->Zn, k->Zn = tz;
        }
        ++*it;
        if (++since >= SP_CHECK || r > 0 || *it >= p->max_iter) {
            since = 0;
            sp_softmax(nt, k->Z, D->n, K, D->y, k->G);
            if ((st = sp_xtg(ctx, nt, k->XS, D->n, s, s, k->G, K, k->gW, k->gb, k->scr, nch)))
                return st;
        }
        if (iis_interrupted(ctx)) return IIS_EINTR;
    }
}

/* allocate the S-sized buffers of k for s rows (n rows of logits already allocated) */
static int sp_alloc_s(const sp_data *D, sp_work *k, int s)
{
    size_t sk = (size_t)(s > 0 ? s : 1) * D->K, K = (size_t)D->K;
    int nch = sp_nchunks(D->n, s, D->K);
    free(k->XS);
    free(k->buf);
    free(k->scr);
    k->XS = malloc(sizeof(double) * (size_t)D->n * (size_t)(s > 0 ? s : 1));
    k->buf = malloc(sizeof(double) * (5 * sk + 5 * K));
    k->scr = malloc(sizeof(double) * (size_t)nch * (sk + K));
    if (!k->XS || !k->buf || !k->scr) return IIS_ENOMEM;
    k->W = k->buf, k->Wp = k->W + sk, k->Wy = k->Wp + sk, k->Wn = k->Wy + sk, k->gW = k->Wn + sk;
    k->b = k->gW + sk, k->bp = k->b + K, k->by = k->bp + K, k->bn = k->by + K, k->gb = k->bn + K;
    k->s = s;
    return IIS_OK;
}

int iis_enet_fit_d(const iis_ctx *ctx, const double *x, int64_t n, int d, int64_t ldx,
                   const int32_t *y, int K, const iis_enet_params *p, double *w, double *b,
                   double *grad, double *grad_b, iis_enet_info *info)
{
    sp_data D = {x, n, ldx, d, K, y};
    sp_work k;
    int nt = iis_nthreads(ctx), st = IIS_OK, it = 0, nch;
    double thr, loss = 0, viol = 0, L = p->lipschitz, *scr = NULL;
    char *in = NULL;
    memset(&k, 0, sizeof(k));
    memset(info, 0, sizeof(*info));
    if (!ctx || !ctx->blas || !ctx->blas->dgemm) return IIS_ENOBLAS;
    if (n < 1 || d < 0 || K < 1 || !(p->lambda >= 0) || !(p->alpha > 0 && p->alpha <= 1) ||
        !(p->tol > 0) || p->max_iter < 0 || !(p->lipschitz > 0))
        return IIS_EINVAL;
    nch = sp_nchunks(n, d, K);
    in = calloc((size_t)d + 1, 1);
    k.S = malloc(sizeof(int32_t) * ((size_t)d + 1));
    k.Z = malloc(sizeof(double) * (size_t)n * K);
    k.Zp = malloc(sizeof(double) * (size_t)n * K);
    k.Zn = malloc(sizeof(double) * (size_t)n * K);
    k.G = malloc(sizeof(double) * (size_t)n * K);
    scr = malloc(sizeof(double) * (size_t)nch * ((size_t)d * K + K));
    if (!in || !k.S || !k.Z || !k.Zp || !k.Zn || !k.G || !scr) {
        st = IIS_ENOMEM;
        goto cleanup;
    }
    /* strong rule: keep row j if it is nonzero or its previous gradient reaches
     * alpha (2 lambda - lambda_prev) */
    thr = p->alpha * (2.0 * p->lambda - p->lambda_prev);
    for (int j = 0; j < d; j++) {
        int nz = 0;
        for (int c = 0; c < K; c++) nz |= w[(size_t)j * K + c] != 0;
        in[j] = nz || sp_row_score(grad + (size_t)j * K, K, p->grouped) >= thr;
    }
    for (int j = 0; j < d; j++) info->n_screened += in[j];
    for (;;) {
        int s = 0, added = 0;
        for (int j = 0; j < d; j++)
            if (in[j]) k.S[s++] = j;
        if ((st = sp_alloc_s(&D, &k, s))) goto cleanup;
        sp_gather(nt, &D, &k, w);
        memcpy(k.b, b, sizeof(double) * K);
        if ((st = sp_forward(ctx, nt, k.XS, n, s, s, k.W, k.b, K, k.Z))) goto cleanup;
        if ((st = sp_fista(ctx, &D, &k, p, &L, &it, &loss, &viol))) goto cleanup;
        /* write back, then the full gradient at the solution (G holds its residuals) */
        for (int j = 0; j < d; j++)
            if (!in[j]) memset(w + (size_t)j * K, 0, sizeof(double) * K);
        for (int t = 0; t < s; t++) memcpy(w + (size_t)k.S[t] * K, k.W + (size_t)t * K, sizeof(double) * K);
        memcpy(b, k.b, sizeof(double) * K);
        if ((st = sp_xtg(ctx, nt, x, n, d, ldx, k.G, K, grad, grad_b, scr, nch))) goto cleanup;
        for (int j = 0; j < d; j++) {
            double v = sp_row_kkt(w + (size_t)j * K, grad + (size_t)j * K, K, p);
            if (!in[j] && v > p->tol) in[j] = 1, added++;
            viol = v > viol ? v : viol;
        }
        info->n_added += added;
        if (!added || it >= p->max_iter) break;
    }
    info->n_iter = it;
    info->kkt = viol;
    info->converged = viol <= p->tol;
    info->loss = loss;
    info->lipschitz = L;
cleanup:
    sp_free(&k);
    free(scr);
    free(in);
    return st;
}
