/* sparse.c -- multinomial elastic-net heads: one point of the glmnet-style path.
 *
 * Objective (float64), W d x K (one row per concept), b K (unpenalised):
 *   F(W, b) = mean_i CE(x_i W + b, y_i) + lambda (alpha R(W) + (1 - alpha)/2 ||W||_F^2)
 *   R(W) = ||W||_1, or sum_j ||W_j||_2 (grouped: a concept leaves all classes at once).
 * Solver: proximal Newton (sp_newton) on the screened rows S (strong rule from the previous
 * lambda's gradient, plus the rows that are nonzero), then a KKT check over all rows that
 * re-adds violators. Its quadratic model uses the Gram of the gathered columns (one pass per
 * lambda) and a K x K class factor (one pass per step), so the inner coordinate descent
 * reads no data; a step costs about three passes over the n x s design.
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

#define SP_PASSES 500  /* coordinate-descent passes per Newton step at most */
#define SP_FORCING 0.1 /* the inner solve stops at moves <= SP_FORCING x the KKT violation */
#define SP_ARMIJO 1e-4 /* sufficient decrease of the line search */
#define SP_HALVINGS 40 /* step halvings at most */
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

/* workspace of one lambda: the rows S gathered, the iterate, its logits and the model */
typedef struct {
    int s;
    int32_t *S;
    double mu;   /* the model's scale: true over model curvature along the last step */
    double *buf; /* one block: W, gW, U, D, RT, R ((s + 1) K each), Sg ((s + 1)^2), C (K^2), cs (K) */
    double *XS, *X2, *W, *gW, *U, *D, *RT, *R, *Sg, *C, *cs; /* rows 0..s-1 weights, row s intercepts */
    double *Z, *Zd, *Zn, *G, *scr;
} sp_work;

static void sp_free(sp_work *k)
{
    free(k->S);
    free(k->XS);
    free(k->X2);
    free(k->buf);
    free(k->Z);
    free(k->Zd);
    free(k->Zn);
    free(k->G);
    free(k->scr);
}

/* gather X[:, S] into XS (n x s), W[S] into the first s rows of k->W and b into its last */
static void sp_gather(int nt, const sp_data *D, sp_work *k, const double *w, const double *b)
{
    int64_t i;
    int s = k->s, K = D->K;
#pragma omp parallel for num_threads(nt) schedule(static) if (D->n * s > IIS_PAR_MIN)
    for (i = 0; i < D->n; i++)
        for (int t = 0; t < s; t++) {
            k->XS[i * s + t] = D->x[i * D->ldx + k->S[t]];
            k->X2[i * s + t] = k->XS[i * s + t] * k->XS[i * s + t];
        }
    for (int t = 0; t < s; t++) memcpy(k->W + (size_t)t * K, w + (size_t)k->S[t] * K, sizeof(double) * K);
    memcpy(k->W + (size_t)s * K, b, sizeof(double) * K);
}

/* Sg = [XS 1]^T [XS 1] / n, (s + 1) x (s + 1): the Gram of the rows' design (RT: scratch) */
static int sp_gram(const iis_ctx *ctx, int nt, const sp_data *D, sp_work *k)
{
    int s = k->s, s1 = s + 1, st;
    double *sum = k->RT;
    if ((st = sp_xtg(ctx, nt, k->XS, D->n, s, s, k->XS, s, k->Sg, sum, k->scr, sp_nchunks(D->n, s, s))))
        return st;
    for (int j = s - 1; j >= 0; j--) { /* rows from stride s to stride s + 1, last first */
        memmove(k->Sg + (size_t)j * s1, k->Sg + (size_t)j * s, sizeof(double) * s);
        k->Sg[(size_t)j * s1 + s] = k->Sg[(size_t)s * s1 + j] = sum[j];
    }
    k->Sg[(size_t)s * s1 + s] = (double)D->n;
    for (size_t u = 0; u < (size_t)s1 * s1; u++) k->Sg[u] /= (double)D->n;
    return IIS_OK;
}

/* C = mean_i (diag(p_i) - p_i p_i^T) (K x K), the class factor of the Hessian model;
 * G holds (P - Y) / n on entry and P on return */
static int sp_classes(const iis_ctx *ctx, int nt, const sp_data *D, sp_work *k)
{
    int64_t i, n = D->n;
    int K = D->K, st;
#pragma omp parallel for num_threads(nt) schedule(static) if (n * K > IIS_PAR_MIN)
    for (i = 0; i < n; i++) {
        for (int c = 0; c < K; c++) k->G[i * K + c] *= (double)n;
        k->G[i * K + D->y[i]] += 1.0;
    }
    if ((st = sp_xtg(ctx, nt, k->G, n, K, K, k->G, K, k->C, k->cs, k->scr, sp_nchunks(n, K, K))))
        return st;
    for (int c = 0; c < K * K; c++) k->C[c] = -k->C[c] / (double)n;
    for (int c = 0; c < K; c++) k->C[(size_t)c * K + c] += k->cs[c] / (double)n;
    return IIS_OK;
}

/* R_jk = sqrt(H_jk,jk / (Sg_jj C_kk)), H_jk,jk = mean_i x_ij^2 p_ik (1 - p_ik) the Hessian's
 * exact diagonal (1 for the intercepts, where the two agree); P in G, Zd scratch */
static int sp_diag_scale(const iis_ctx *ctx, int nt, const sp_data *D, sp_work *k)
{
    int64_t i, n = D->n;
    int K = D->K, s = k->s, s1 = s + 1, st;
#pragma omp parallel for num_threads(nt) schedule(static) if (n * K > IIS_PAR_MIN)
    for (i = 0; i < n; i++)
        for (int c = 0; c < K; c++) k->Zd[i * K + c] = k->G[i * K + c] * (1.0 - k->G[i * K + c]);
    if ((st = sp_xtg(ctx, nt, k->X2, n, s, s, k->Zd, K, k->R, k->R + (size_t)s * K, k->scr,
                     sp_nchunks(n, s, K))))
        return st;
    for (int j = 0; j < s; j++)
        for (int c = 0; c < K; c++) {
            double den = k->Sg[(size_t)j * s1 + j] * k->C[(size_t)c * K + c] * (double)n, *r = k->R + (size_t)j * K + c;
            *r = den > 0 && *r > 0 ? sqrt(*r / den) : 1.0;
        }
    for (int c = 0; c < K; c++) k->R[(size_t)s * K + c] = 1.0;
    return IIS_OK;
}

/* the model's gradient at coordinate (j, k): g_jk + mu R_jk (Sg (R o D) C)_jk, D = U - W,
 * RT = ((R o D) C)^T (o: elementwise) */
static double sp_model_grad(const sp_work *w, int j, int c, int K)
{
    int s1 = w->s + 1;
    const double *a = w->Sg + (size_t)j * s1, *r = w->RT + (size_t)c * s1;
    double q = 0;
    for (int t = 0; t < s1; t++) q += a[t] * r[t];
    return w->gW[(size_t)j * K + c] + w->mu * w->R[(size_t)j * K + c] * q;
}

/* U_jk <- u and RT[:, j] += R_jk (u - U_jk) C[:, k] */
static void sp_move(sp_work *w, int j, int c, int K, double u)
{
    int s1 = w->s + 1;
    double e = (u - w->U[(size_t)j * K + c]) * w->R[(size_t)j * K + c];
    w->U[(size_t)j * K + c] = u;
    for (int t = 0; t < K; t++) w->RT[(size_t)t * s1 + j] += e * w->C[(size_t)c * K + t];
}

/* coordinate (j, k) of the model m(D) = <g, D> + mu/2 <R o D, Sg (R o D) C> + pen(W + D): with
 * u0 = U_jk, q the model gradient and a = mu R_jk^2 Sg_jj C_kk, the exact minimiser is
 * u = soft(a u0 - q, lambda alpha) / (a + lambda (1 - alpha)) (no penalty on the
 * intercepts' row j = s); returns (a + l2) |u - u0| */
static double sp_cd_coord(sp_work *w, int j, int c, int K, double l1, double l2)
{
    int s = w->s, s1 = s + 1;
    double r = w->R[(size_t)j * K + c], a = w->Sg[(size_t)j * s1 + j] * w->C[(size_t)c * K + c] * r * r * w->mu, u0, v, u;
    if (j == s) l1 = l2 = 0;
    if (!(a + l2 > 0)) return 0;
    u0 = w->U[(size_t)j * K + c];
    v = a * u0 - sp_model_grad(w, j, c, K);
    u = (fabs(v) > l1 ? copysign(fabs(v) - l1, v) : 0.0) / (a + l2);
    if (u != u0) sp_move(w, j, c, K, u);
    return (a + l2) * fabs(u - u0);
}

/* row j of the grouped model, its block majorised by a I, a = mu max_k R_jk^2 Sg_jj ||C||_inf:
 * u = groupsoft(a u0 - q, lambda alpha) / (a + lambda (1 - alpha)); returns
 * (a + l2) max_k |u_k - u0_k|; v: 2 K scratch */
static double sp_cd_row(sp_work *w, int j, int K, double cinf, double l1, double l2, double *v)
{
    int s1 = w->s + 1;
    double a = w->Sg[(size_t)j * s1 + j] * cinf, nrm = 0, f, m = 0, *u0 = v + K, rm = 0;
    for (int c = 0; c < K; c++) rm = w->R[(size_t)j * K + c] > rm ? w->R[(size_t)j * K + c] : rm;
    a *= rm * rm * w->mu;
    if (!(a + l2 > 0)) return 0;
    for (int c = 0; c < K; c++) {
        u0[c] = w->U[(size_t)j * K + c];
        v[c] = a * u0[c] - sp_model_grad(w, j, c, K);
        nrm += v[c] * v[c];
    }
    nrm = sqrt(nrm);
    f = nrm > l1 ? (1.0 - l1 / nrm) / (a + l2) : 0.0;
    for (int c = 0; c < K; c++) {
        double e = f * v[c] - u0[c];
        if (e != 0) sp_move(w, j, c, K, f * v[c]);
        m = fabs(e) > m ? fabs(e) : m;
    }
    return (a + l2) * m;
}

/* one cyclic pass over the model's coordinates (active: only nonzero ones and the
 * intercepts); returns the largest scaled move */
static double sp_cd_pass(sp_work *w, int K, const iis_enet_params *p, double cinf, int active, double *v)
{
    int s = w->s;
    double l1 = p->lambda * p->alpha, l2 = p->lambda * (1.0 - p->alpha), m = 0, e;
    for (int j = 0; j < s; j++) {
        const double *uj = w->U + (size_t)j * K;
        if (p->grouped) {
            int nz = 0;
            for (int c = 0; c < K && !nz; c++) nz = uj[c] != 0;
            if (active && !nz) continue;
            e = sp_cd_row(w, j, K, cinf, l1, l2, v);
            m = e > m ? e : m;
            continue;
        }
        for (int c = 0; c < K; c++) {
            if (active && uj[c] == 0) continue;
            e = sp_cd_coord(w, j, c, K, l1, l2);
            m = e > m ? e : m;
        }
    }
    for (int c = 0; c < K; c++) {
        e = sp_cd_coord(w, s, c, K, l1, l2);
        m = e > m ? e : m;
    }
    return m;
}

/* U = W + D, D ~ argmin of the model (see sp_cd_coord): passes over the nonzero coordinates until
 * no move exceeds eps, then a full pass, until a full pass moves none by more than eps */
static void sp_cd(sp_work *w, int K, const iis_enet_params *p, double eps, double *v)
{
    double cinf = 0;
    int passes = 0;
    memcpy(w->U, w->W, sizeof(double) * (size_t)(w->s + 1) * K);
    memset(w->RT, 0, sizeof(double) * (size_t)(w->s + 1) * K);
    for (int c = 0; c < K; c++) { /* ||C||_inf bounds C's eigenvalues */
        double r = 0;
        for (int t = 0; t < K; t++) r += fabs(w->C[(size_t)c * K + t]);
        cinf = r > cinf ? r : cinf;
    }
    while (passes++ < SP_PASSES && sp_cd_pass(w, K, p, cinf, 0, v) > eps)
        while (passes++ < SP_PASSES && sp_cd_pass(w, K, p, cinf, 1, v) > eps) {
        }
}

/* D^T H D = mean_i sum_k p_ik e_ik^2 - (sum_k p_ik e_ik)^2, e = X D (P in G, X D in E) */
static double sp_curv_true(int nt, const double *P, const double *E, int64_t n, int K)
{
    double part[IIS_NCHUNK], s = 0;
    int c;
#pragma omp parallel for num_threads(nt) schedule(static) if (n * K > IIS_PAR_MIN)
    for (c = 0; c < IIS_NCHUNK; c++) {
        double acc = 0;
        for (int64_t i = n * c / IIS_NCHUNK; i < n * (c + 1) / IIS_NCHUNK; i++) {
            double m = 0, q = 0;
            for (int k = 0; k < K; k++) {
                double pe = P[i * K + k] * E[i * K + k];
                m += pe, q += pe * E[i * K + k];
            }
            acc += q - m * m;
        }
        part[c] = acc;
    }
    for (c = 0; c < IIS_NCHUNK; c++) s += part[c];
    return s / (double)n;
}

/* the model's curvature along D: <R D, Sg (R D) C> with RT = ((R D) C)^T, unscaled by mu */
static double sp_curv_model(const sp_work *w, int K)
{
    int s1 = w->s + 1;
    double m = 0;
    for (int j = 0; j < s1; j++)
        for (int c = 0; c < K; c++) {
            double q = 0, *r = w->RT + (size_t)c * s1;
            const double *a = w->Sg + (size_t)j * s1;
            for (int t = 0; t < s1; t++) q += a[t] * r[t];
            m += w->R[(size_t)j * K + c] * w->D[(size_t)j * K + c] * q;
        }
    return m;
}

/* pen(W + t D) - pen(W) over the first s rows (s x K), pen = lambda (alpha R + (1 - alpha)/2
 * ||.||^2), summed term by term (no cancellation of two large sums):
 * |w + t d| - |w|, and ||w + t d|| - ||w|| = (2 t <w, d> + t^2 ||d||^2) / (||w + t d|| + ||w||) */
static double sp_pen_step(const double *W, const double *D, double t, int s, int K, const iis_enet_params *p)
{
    double r = 0, q = 0;
    for (int j = 0; j < s; j++) {
        const double *w = W + (size_t)j * K, *d = D + (size_t)j * K;
        double wd = 0, dd = 0, ww = 0, l1 = 0, den;
        for (int c = 0; c < K; c++) {
            double u = w[c] + t * d[c];
            wd += w[c] * d[c], dd += d[c] * d[c], ww += w[c] * w[c];
            l1 += fabs(u) - fabs(w[c]);
        }
        q += 2 * t * wd + t * t * dd;
        den = sqrt(ww + 2 * t * wd + t * t * dd) + sqrt(ww);
        r += !p->grouped ? l1 : den > 0 ? (2 * t * wd + t * t * dd) / den : 0.0;
    }
    return p->lambda * (p->alpha * r + 0.5 * (1.0 - p->alpha) * q);
}

/* KKT violation on S at W (rows 0..s-1 weights, row s intercepts) with CE gradient gW */
static double sp_kkt_s(const sp_work *w, int K, const iis_enet_params *p)
{
    double v = 0;
    for (int j = 0; j < w->s; j++) {
        double r = sp_row_kkt(w->W + (size_t)j * K, w->gW + (size_t)j * K, K, p);
        v = r > v ? r : v;
    }
    for (int c = 0; c < K; c++) v = fabs(w->gW[(size_t)w->s * K + c]) > v ? fabs(w->gW[(size_t)w->s * K + c]) : v;
    return v;
}

/* softmax at Z into G and the CE gradient on S into gW; returns the mean CE in *loss */
static int sp_grad(const iis_ctx *ctx, int nt, const sp_data *D, sp_work *w, double *loss)
{
    int s = w->s, K = D->K;
    *loss = sp_softmax(nt, w->Z, D->n, K, D->y, w->G);
    return sp_xtg(ctx, nt, w->XS, D->n, s, s, w->G, K, w->gW, w->gW + (size_t)s * K, w->scr,
                  sp_nchunks(D->n, s, K));
}

/* Proximal Newton on the rows S from W (logits in Z) until the KKT violation on S is
 * <= tol or *it reaches max_iter. Model of the CE at W: its gradient g and the Hessian
 * approximation mu diag(R) (Sg (x) C) diag(R): the design's Gram times the class factor
 * (exact where p_i does not depend on x_i), scaled to the Hessian's exact diagonal at the
 * first step (R) and by mu, the true over the model curvature along the previous step.
 * D minimises model + penalty by coordinate descent (no data pass); step t = 1, 1/2, ...
 * until F(W + t D) <= F(W) + sigma t (<g, D> + pen(W + D) - pen(W)).
 * On return Z, G, gW hold the logits, residuals and gradient of the final W, *loss its CE. */
static int sp_newton(const iis_ctx *ctx, const sp_data *D, sp_work *w, const iis_enet_params *p,
                     int *it, double *loss, double *viol, double *v)
{
    int nt = iis_nthreads(ctx), s = w->s, K = D->K, st, it0 = *it;
    size_t sk = (size_t)s * K, nk = (size_t)D->n * K;
    if ((st = sp_grad(ctx, nt, D, w, loss))) return st;
    w->mu = 1;
    for (;;) {
        double f0, delta = 0, t = 1, *tmp, mu = w->mu, hq, mq;
        int64_t i;
        *viol = sp_kkt_s(w, K, p);
        if (*viol <= p->tol || *it >= p->max_iter) return IIS_OK;
        if ((st = sp_classes(ctx, nt, D, w)) || (*it == it0 && (st = sp_diag_scale(ctx, nt, D, w)))) return st;
        sp_cd(w, K, p, SP_FORCING * *viol, v);
        for (size_t u = 0; u < sk + K; u++) w->D[u] = w->U[u] - w->W[u];
        /* predicted decrease delta = <g, D> + pen(W + D) - pen(W) (< 0 unless D = 0) */
        for (size_t u = 0; u < sk + K; u++) delta += w->gW[u] * w->D[u];
        delta += sp_pen_step(w->W, w->D, 1.0, s, K, p);
        f0 = *loss;
        if ((st = sp_forward(ctx, nt, w->XS, D->n, s, s, w->D, w->D + sk, K, w->Zd))) return st;
        hq = sp_curv_true(nt, w->G, w->Zd, D->n, K), mq = sp_curv_model(w, K);
        mu = hq > 0 && mq > 0 ? hq / mq : mu;
        for (int h = 0;; h++) {
            double fn;
            if (h == SP_HALVINGS || !(delta < 0)) { /* no decrease left in float64: keep W */
                sp_softmax(nt, w->Z, D->n, K, D->y, w->G);
                return IIS_OK;
            }
#pragma omp parallel for num_threads(nt) schedule(static) if (nk > IIS_PAR_MIN)
            for (i = 0; i < (int64_t)nk; i++) w->Zn[i] = w->Z[i] + t * w->Zd[i];
            fn = sp_softmax(nt, w->Zn, D->n, K, D->y, w->G);
            if (fn - f0 + sp_pen_step(w->W, w->D, t, s, K, p) <= SP_ARMIJO * t * delta + 1e-13 * f0) break;
            t *= 0.5;
        }
        if (t == 1) /* U exactly: its zeros are exact */
            memcpy(w->W, w->U, sizeof(double) * (sk + K));
        else
            for (size_t u = 0; u < sk + K; u++) w->W[u] += t * w->D[u];
        tmp = w->Z, w->Z = w->Zn, w->Zn = tmp;
        ++*it;
        w->mu = mu;
        if ((st = sp_grad(ctx, nt, D, w, loss))) return st;
        if (iis_interrupted(ctx)) return IIS_EINTR;
    }
}

/* allocate the S-sized buffers of k for s rows (n rows of logits already allocated) */
static int sp_alloc_s(const sp_data *D, sp_work *k, int s)
{
    size_t K = (size_t)D->K, s1k = (size_t)(s + 1) * K, s1 = (size_t)s + 1, nch;
    size_t need = (size_t)sp_nchunks(D->n, s, D->K) * (s * K + K), g;
    nch = (size_t)sp_nchunks(D->n, s, s);
    g = nch * ((size_t)s * s + s);
    need = g > need ? g : need;
    g = (size_t)sp_nchunks(D->n, D->K, D->K) * (K * K + K);
    need = g > need ? g : need;
    free(k->XS);
    free(k->X2);
    free(k->buf);
    free(k->scr);
    k->XS = malloc(sizeof(double) * (size_t)D->n * (size_t)(s > 0 ? s : 1));
    k->X2 = malloc(sizeof(double) * (size_t)D->n * (size_t)(s > 0 ? s : 1));
    k->buf = malloc(sizeof(double) * (6 * s1k + s1 * s1 + K * K + K));
    k->scr = malloc(sizeof(double) * (need > 0 ? need : 1));
    if (!k->XS || !k->X2 || !k->buf || !k->scr) return IIS_ENOMEM;
    k->W = k->buf, k->gW = k->W + s1k, k->U = k->gW + s1k, k->D = k->U + s1k, k->RT = k->D + s1k, k->R = k->RT + s1k;
    k->Sg = k->R + s1k, k->C = k->Sg + s1 * s1, k->cs = k->C + K * K;
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
    double thr, loss = 0, viol = 0, *scr = NULL, *v = NULL;
    char *in = NULL;
    memset(&k, 0, sizeof(k));
    memset(info, 0, sizeof(*info));
    if (!ctx || !ctx->blas || !ctx->blas->dgemm) return IIS_ENOBLAS;
    if (n < 1 || d < 0 || K < 1 || !(p->lambda >= 0) || !(p->alpha > 0 && p->alpha <= 1) ||
        !(p->tol > 0) || p->max_iter < 0)
        return IIS_EINVAL;
    nch = sp_nchunks(n, d, K);
    in = calloc((size_t)d + 1, 1);
    v = malloc(sizeof(double) * 2 * (size_t)K);
    k.S = malloc(sizeof(int32_t) * ((size_t)d + 1));
    k.Z = malloc(sizeof(double) * (size_t)n * K);
    k.Zd = malloc(sizeof(double) * (size_t)n * K);
    k.Zn = malloc(sizeof(double) * (size_t)n * K);
    k.G = malloc(sizeof(double) * (size_t)n * K);
    scr = malloc(sizeof(double) * (size_t)nch * ((size_t)d * K + K));
    if (!in || !v || !k.S || !k.Z || !k.Zd || !k.Zn || !k.G || !scr) {
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
        sp_gather(nt, &D, &k, w, b);
        if ((st = sp_gram(ctx, nt, &D, &k))) goto cleanup;
        if ((st = sp_forward(ctx, nt, k.XS, n, s, s, k.W, k.W + (size_t)s * K, K, k.Z))) goto cleanup;
        if ((st = sp_newton(ctx, &D, &k, p, &it, &loss, &viol, v))) goto cleanup;
        /* write back, then the full gradient at the solution (G holds its residuals) */
        for (int j = 0; j < d; j++)
            if (!in[j]) memset(w + (size_t)j * K, 0, sizeof(double) * K);
        for (int t = 0; t < s; t++) memcpy(w + (size_t)k.S[t] * K, k.W + (size_t)t * K, sizeof(double) * K);
        memcpy(b, k.W + (size_t)s * K, sizeof(double) * K);
        if ((st = sp_xtg(ctx, nt, x, n, d, ldx, k.G, K, grad, grad_b, scr, nch))) goto cleanup;
        for (int j = 0; j < d; j++) {
            double r = sp_row_kkt(w + (size_t)j * K, grad + (size_t)j * K, K, p);
            if (!in[j] && r > p->tol) in[j] = 1, added++;
            viol = r > viol ? r : viol;
        }
        info->n_added += added;
        if (!added || it >= p->max_iter) break;
    }
    info->n_iter = it;
    info->kkt = viol;
    info->converged = viol <= p->tol;
    info->loss = loss;
cleanup:
    sp_free(&k);
    free(scr);
    free(in);
    free(v);
    return st;
}
