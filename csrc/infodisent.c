/* infodisent.c -- InfoDisent (docs/method.md section 6): an orthogonal rotation of the final
 * spatial feature map, per-channel signed max pooling and a non-negative linear head.
 *
 * For image i with map F_i (hw x d) and the rotation U (d x d):
 *   z_i = F_i U,  v_ic = max(max_p z_ipc, 0) - max(-min_p z_ipc, 0)
 *   logits_i = W v_i + b (W >= 0, kept by projection after each step)
 *   L = mean_i CE(logits_i, y_i)
 * U from a skew-symmetric A = X - X^T:
 *   cayley: U = (I + A)^-1 (I - A) = 2 B - I, B = (I + A)^-1 (LAPACK dgesv)
 *           dL/dA = -2 B^T G B^T  for G = dL/dU
 *   exp:    U = expm(A) = T(A / 2^s)^(2^s), T the degree-IIS_EXPM_DEG Taylor polynomial
 *           (Horner), ||A / 2^s||_1 <= 1/2; backward through the squarings and Horner
 *   dL/dX = dA - dA^T
 * The max is exact in the forward pass; its (sub)gradient goes to the arg-max / arg-min
 * position (ties: lower position). dU column c = sum_i F_i[p_ic]^T dv_ic over the two
 * positions. Minibatches: a seeded permutation per epoch; Adam (torch semantics).
 *
 * Determinism: GEMMs run on fixed blocks of output rows (one BLAS call each), per-column
 * and per-row work is independent, sums over images run in image order; the bits do not
 * depend on the thread count.
 */
#include "internal.h"
#include <math.h>

#define IIS_EXPM_DEG 12

/* C (d x d) = op(A) op(B), square */
static void id_mm(const iis_ctx *ctx, char ta, char tb, int d, const double *a, const double *b,
                  double *c)
{
    iis_dgemm_rows(ctx, ta, tb, d, d, d, 1.0, a, d, b, d, 0.0, c, d);
}

/* A = X - X^T */
static void id_skew(const double *x, int d, double *a)
{
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++) a[(size_t)i * d + j] = x[(size_t)i * d + j] - x[(size_t)j * d + i];
}

/* rotation state: U and what its backward needs */
typedef struct {
    int d, param, s;
    double *u;  /* d x d */
    double *bm; /* cayley: B = (I + A)^-1; exp: C = A / 2^s */
    double *h;  /* exp: Horner terms H_1 .. H_deg, then the squarings U_0 .. U_{s-1} */
    int nh;     /* matrices in h */
} id_rot;

static void id_rot_free(id_rot *r)
{
    free(r->u);
    free(r->bm);
    free(r->h);
    memset(r, 0, sizeof(*r));
}

/* U from X; IIS_EINVAL if I + A is singular (cannot happen in exact arithmetic) */
static int id_rotation(const iis_ctx *ctx, const double *x, int d, int param, id_rot *r)
{
    size_t dd = (size_t)d * d;
    double *a = malloc(sizeof(double) * dd);
    int err = IIS_OK;
    id_rot_free(r);
    r->d = d;
    r->param = param;
    r->u = malloc(sizeof(double) * dd);
    r->bm = malloc(sizeof(double) * dd);
    if (!a || !r->u || !r->bm) {
        free(a);
        return IIS_ENOMEM;
    }
    id_skew(x, d, a);
    if (param == 0) {
        /* B = (I + A)^-1 by dgesv on the identity (column-major: solve (I + A)^T B^T = I) */
        int n = d, info = 0, *piv = malloc(sizeof(int) * (size_t)d);
        double *m = malloc(sizeof(double) * dd);
        if (!piv || !m) {
            free(piv);
            free(m);
            free(a);
            return IIS_ENOMEM;
        }
        for (size_t e = 0; e < dd; e++) m[e] = a[e];
        for (int i = 0; i < d; i++) m[(size_t)i * d + i] += 1.0;
        memset(r->bm, 0, sizeof(double) * dd);
        for (int i = 0; i < d; i++) r->bm[(size_t)i * d + i] = 1.0;
        /* row-major M is column-major M^T: solving M^T Y = I gives Y = M^-T, i.e. row-major M^-1 */
        ctx->blas->dgesv(&n, &n, m, &n, piv, r->bm, &n, &info);
        free(piv);
        free(m);
        if (info != 0) err = IIS_EINVAL;
        for (size_t e = 0; e < dd; e++) r->u[e] = 2.0 * r->bm[e];
        for (int i = 0; i < d; i++) r->u[(size_t)i * d + i] -= 1.0;
    } else {
        /* scaling: ||A / 2^s||_1 <= 1/2 */
        double nrm = 0.0, sc;
        int s = 0, deg = IIS_EXPM_DEG;
        for (int j = 0; j < d; j++) {
            double col = 0.0;
            for (int i = 0; i < d; i++) col += fabs(a[(size_t)i * d + j]);
            if (col > nrm) nrm = col;
        }
        while (nrm > 0.5 && s < 60) {
            nrm /= 2.0;
            s++;
        }
        sc = ldexp(1.0, -s);
        r->s = s;
        r->nh = deg + s;
        r->h = malloc(sizeof(double) * dd * (size_t)r->nh);
        if (!r->h) {
            free(a);
            return IIS_ENOMEM;
        }
        for (size_t e = 0; e < dd; e++) r->bm[e] = a[e] * sc;
        /* Horner: H_deg = I, H_j = I + C H_{j+1} / (j + 1); h[j - 1] = H_j for j = 1..deg */
        {
            double *hd = r->h + (size_t)(deg - 1) * dd;
            memset(hd, 0, sizeof(double) * dd);
            for (int i = 0; i < d; i++) hd[(size_t)i * d + i] = 1.0;
            for (int j = deg - 1; j >= 0; j--) {
                double *out = j >= 1 ? r->h + (size_t)(j - 1) * dd : r->u;
                iis_dgemm_rows(ctx, 'N', 'N', d, d, d, 1.0 / (j + 1), r->bm, d, r->h + (size_t)j * dd, d, 0.0,
                        out, d);
                for (int i = 0; i < d; i++) out[(size_t)i * d + i] += 1.0;
            }
        }
        /* squarings: U_0 = T(C), U_{i+1} = U_i^2; h[deg + i] = U_i */
        for (int i = 0; i < s; i++) {
            double *ui = r->h + (size_t)(deg + i) * dd;
            memcpy(ui, r->u, sizeof(double) * dd);
            id_mm(ctx, 'N', 'N', d, ui, ui, r->u);
        }
    }
    free(a);
    return err;
}

/* gx = dL/dX from g = dL/dU (g is overwritten) */
static int id_rotation_back(const iis_ctx *ctx, const id_rot *r, double *g, double *gx)
{
    int d = r->d;
    size_t dd = (size_t)d * d;
    double *t = malloc(sizeof(double) * dd), *t2 = malloc(sizeof(double) * dd);
    if (!t || !t2) {
        free(t);
        free(t2);
        return IIS_ENOMEM;
    }
    if (r->param == 0) {
        /* dA = -2 B^T G B^T */
        id_mm(ctx, 'T', 'N', d, r->bm, g, t);
        iis_dgemm_rows(ctx, 'N', 'T', d, d, d, -2.0, t, d, r->bm, d, 0.0, t2, d);
    } else {
        int deg = IIS_EXPM_DEG;
        /* through the squarings: G_i = G_{i+1} U_i^T + U_i^T G_{i+1} */
        for (int i = r->s - 1; i >= 0; i--) {
            const double *ui = r->h + (size_t)(deg + i) * dd;
            id_mm(ctx, 'N', 'T', d, g, ui, t);
            iis_dgemm_rows(ctx, 'T', 'N', d, d, d, 1.0, ui, d, g, d, 1.0, t, d);
            memcpy(g, t, sizeof(double) * dd);
        }
        /* through Horner: H_j = I + C H_{j+1} / (j + 1):
         * dC += G_j H_{j+1}^T / (j + 1),  G_{j+1} = C^T G_j / (j + 1) */
        memset(t2, 0, sizeof(double) * dd);
        for (int j = 0; j < deg; j++) {
            const double *hn = r->h + (size_t)j * dd; /* H_{j+1} */
            iis_dgemm_rows(ctx, 'N', 'T', d, d, d, 1.0 / (j + 1), g, d, hn, d, 1.0, t2, d);
            iis_dgemm_rows(ctx, 'T', 'N', d, d, d, 1.0 / (j + 1), r->bm, d, g, d, 0.0, t, d);
            memcpy(g, t, sizeof(double) * dd);
        }
        {
            double sc = ldexp(1.0, -r->s);
            for (size_t e = 0; e < dd; e++) t2[e] *= sc;
        }
    }
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++)
            gx[(size_t)i * d + j] = t2[(size_t)i * d + j] - t2[(size_t)j * d + i];
    free(t);
    free(t2);
    return IIS_OK;
}

/* v (nb x d) and the arg-max / arg-min positions of z = F_i U for the images rows[0..nb) */
static int id_pool(const iis_ctx *ctx, const float *maps, int hw, int d, const int64_t *rows,
                   int64_t nb, const double *u, double *v, int32_t *pmax, int32_t *pmin)
{
    size_t blk = (size_t)hw * d;
    int64_t i;
    int nt = iis_nt_for(ctx, nb * (int64_t)hw * d), err = IIS_OK;
#pragma omp parallel num_threads(nt)
    {
        double *fz = malloc(sizeof(double) * 2 * blk);
#pragma omp for schedule(static)
        for (i = 0; i < nb; i++) {
            const float *f = maps + (size_t)rows[i] * blk;
            double *z;
            if (!fz) {
                err = IIS_ENOMEM;
                continue;
            }
            z = fz + blk;
            for (size_t e = 0; e < blk; e++) fz[e] = (double)f[e];
            {
                /* one BLAS call per image (this thread's): z = F_i U */
                char tn = 'N';
                int mm = d, nn = hw, kk = d;
                double one = 1.0, zero = 0.0;
                ctx->blas->dgemm(&tn, &tn, &mm, &nn, &kk, &one, u, &mm, fz, &kk, &zero, z, &mm);
            }
            for (int c = 0; c < d; c++) {
                double mx = z[c], mn = z[c];
                int am = 0, an = 0;
                for (int p = 1; p < hw; p++) {
                    double x = z[(size_t)p * d + c];
                    if (x > mx) {
                        mx = x;
                        am = p;
                    }
                    if (x < mn) {
                        mn = x;
                        an = p;
                    }
                }
                v[i * d + c] = (mx > 0.0 ? mx : 0.0) - (mn < 0.0 ? -mn : 0.0);
                pmax[i * d + c] = mx > 0.0 ? am : -1;
                pmin[i * d + c] = mn < 0.0 ? an : -1;
            }
        }
        free(fz);
    }
    return err;
}

int iis_infodisent_rotation(const iis_ctx *ctx, const double *x, int d, int param, double *u)
{
    id_rot r;
    int err;
    if (d < 1 || (param != 0 && param != 1)) return IIS_EINVAL;
    if (!iis_blas_ok(ctx, 1) || (param == 0 && !ctx->blas->dgesv)) return IIS_ENOBLAS;
    memset(&r, 0, sizeof(r));
    if ((err = id_rotation(ctx, x, d, param, &r)) == IIS_OK) memcpy(u, r.u, sizeof(double) * (size_t)d * d);
    id_rot_free(&r);
    return err;
}

int iis_infodisent_pool(const iis_ctx *ctx, const float *maps, int64_t n, int hw, int d,
                        const double *u, double *v, int32_t *pmax, int32_t *pmin)
{
    int64_t *rows;
    int err;
    if (n < 1 || hw < 1 || d < 1) return IIS_EINVAL;
    if (!iis_blas_ok(ctx, 1)) return IIS_ENOBLAS;
    if (!(rows = malloc(sizeof(int64_t) * (size_t)n))) return IIS_ENOMEM;
    for (int64_t i = 0; i < n; i++) rows[i] = i;
    err = id_pool(ctx, maps, hw, d, rows, n, u, v, pmax, pmin);
    free(rows);
    return err;
}

/* loss and gradients (gx: d x d, gw: K x d, gb: K) on the images rows[0..nb) */
static int id_objective(const iis_ctx *ctx, const float *maps, int hw, int d, const int64_t *rows,
                        int64_t nb, const int32_t *y, int K, const id_rot *r, const double *w,
                        const double *b, double *loss, double *gx, double *gw, double *gb)
{
    size_t dd = (size_t)d * d, blk = (size_t)hw * d;
    double *v = malloc(sizeof(double) * ((size_t)nb * d + 1)), *z = malloc(sizeof(double) * ((size_t)nb * K + 1));
    double *dv = malloc(sizeof(double) * ((size_t)nb * d + 1)), *gut = malloc(sizeof(double) * dd);
    int32_t *pmax = malloc(sizeof(int32_t) * ((size_t)nb * d + 1)), *pmin = malloc(sizeof(int32_t) * ((size_t)nb * d + 1));
    int err = IIS_OK, c;
    int nt = iis_nt_for(ctx, nb * (int64_t)d * d);
    double tot = 0.0;
    if (!v || !z || !dv || !gut || !pmax || !pmin) {
        err = IIS_ENOMEM;
        goto done;
    }
    if ((err = id_pool(ctx, maps, hw, d, rows, nb, r->u, v, pmax, pmin)) != IIS_OK) goto done;
    iis_dgemm_rows(ctx, 'N', 'T', nb, K, d, 1.0, v, d, w, d, 0.0, z, K);
    for (int64_t i = 0; i < nb; i++) { /* CE and dZ = (softmax - onehot) / nb, image order */
        double *zr = z + i * K, mx = -INFINITY, s = 0.0;
        int32_t yi = y[rows[i]];
        for (int k = 0; k < K; k++) {
            zr[k] += b[k];
            if (zr[k] > mx) mx = zr[k];
        }
        for (int k = 0; k < K; k++) s += exp(zr[k] - mx);
        tot += mx + log(s) - zr[yi];
        for (int k = 0; k < K; k++) zr[k] = (exp(zr[k] - mx) / s - (k == yi)) / (double)nb;
    }
    *loss = tot / (double)nb;
    if (!gx) goto done;
    for (int k = 0; k < K; k++) {
        gb[k] = 0.0;
        for (int64_t i = 0; i < nb; i++) gb[k] += z[i * K + k];
    }
    iis_dgemm_rows(ctx, 'T', 'N', K, d, (int)nb, 1.0, z, K, v, d, 0.0, gw, d);
    iis_dgemm_rows(ctx, 'N', 'N', nb, d, K, 1.0, z, K, w, d, 0.0, dv, d);
    /* dU^T row c = sum_i dv_ic (F_i[pmax_ic] + F_i[pmin_ic]) over the positions that exist */
#pragma omp parallel for num_threads(nt) schedule(static)
    for (c = 0; c < d; c++) {
        double *g = gut + (size_t)c * d;
        memset(g, 0, sizeof(double) * (size_t)d);
        for (int64_t i = 0; i < nb; i++) {
            const float *f = maps + (size_t)rows[i] * blk;
            double dvi = dv[i * d + c];
            int32_t p1 = pmax[i * d + c], p2 = pmin[i * d + c];
            if (p1 >= 0)
                for (int t = 0; t < d; t++) g[t] += dvi * (double)f[(size_t)p1 * d + t];
            if (p2 >= 0)
                for (int t = 0; t < d; t++) g[t] += dvi * (double)f[(size_t)p2 * d + t];
        }
    }
    for (int i = 0; i < d; i++) /* dU^T -> G = dL/dU */
        for (int j = i + 1; j < d; j++) {
            double tmp = gut[(size_t)i * d + j];
            gut[(size_t)i * d + j] = gut[(size_t)j * d + i];
            gut[(size_t)j * d + i] = tmp;
        }
    err = id_rotation_back(ctx, r, gut, gx);
done:
    free(v);
    free(z);
    free(dv);
    free(gut);
    free(pmax);
    free(pmin);
    return err;
}

static int id_check(const iis_ctx *ctx, int64_t n, int hw, int d, int K, int param)
{
    if (n < 1 || hw < 1 || d < 1 || K < 2 || (param != 0 && param != 1)) return IIS_EINVAL;
    if (!iis_fits_int(n) || !iis_fits_int((int64_t)hw * d)) return IIS_EINVAL;
    if (!iis_blas_ok(ctx, 1)) return IIS_ENOBLAS;
    if (param == 0 && !ctx->blas->dgesv) return IIS_ENOBLAS;
    return IIS_OK;
}

int iis_infodisent_objective(const iis_ctx *ctx, const float *maps, int64_t n, int hw, int d,
                             const int32_t *y, int K, int param, const double *x, const double *w,
                             const double *b, double *loss, double *gx, double *gw, double *gb)
{
    id_rot r;
    int64_t *rows;
    int err = id_check(ctx, n, hw, d, K, param);
    if (err != IIS_OK) return err;
    memset(&r, 0, sizeof(r));
    if (!(rows = malloc(sizeof(int64_t) * (size_t)n))) return IIS_ENOMEM;
    for (int64_t i = 0; i < n; i++) rows[i] = i;
    if ((err = id_rotation(ctx, x, d, param, &r)) == IIS_OK)
        err = id_objective(ctx, maps, hw, d, rows, n, y, K, &r, w, b, loss, gx, gw, gb);
    id_rot_free(&r);
    free(rows);
    return err;
}

/* Adam update (torch semantics) at step t (1-based) */
static void id_adam(double *theta, const double *grad, double *m1, double *m2, size_t len,
                    const iis_infodisent_params *prm, int64_t t)
{
    double c1 = 1.0 / (1.0 - pow(prm->beta1, (double)t)), c2 = 1.0 / (1.0 - pow(prm->beta2, (double)t));
    for (size_t e = 0; e < len; e++) {
        m1[e] = prm->beta1 * m1[e] + (1.0 - prm->beta1) * grad[e];
        m2[e] = prm->beta2 * m2[e] + (1.0 - prm->beta2) * grad[e] * grad[e];
        theta[e] -= prm->lr * (m1[e] * c1) / (sqrt(m2[e] * c2) + prm->eps);
    }
}

/* the images of step t: batch t mod nbat of the seeded permutation of epoch t / nbat */
static int64_t id_batch(uint64_t seed, int64_t t, int64_t n, int batch, int64_t *perm, int64_t *rows)
{
    int64_t nbat = (n + batch - 1) / batch, ep = t / nbat, j = t % nbat, lo = j * batch,
            hi = lo + batch < n ? lo + batch : n;
    uint64_t st = seed ^ (0xD1B54A32D192ED03ULL * (uint64_t)(ep + 1));
    for (int64_t i = 0; i < n; i++) perm[i] = i;
    for (int64_t i = n - 1; i > 0; i--) { /* Fisher-Yates */
        int64_t k = (int64_t)(iis_rng_next(&st) % (uint64_t)(i + 1)), tmp = perm[i];
        perm[i] = perm[k];
        perm[k] = tmp;
    }
    for (int64_t i = lo; i < hi; i++) rows[i - lo] = perm[i];
    return hi - lo;
}

int iis_infodisent_fit(const iis_ctx *ctx, const float *maps, int64_t n, int hw, int d,
                       const int32_t *y, int K, const iis_infodisent_params *prm, double *x,
                       double *w, double *b, double *adam, double *loss_history)
{
    size_t dd = (size_t)d * d, kd = (size_t)K * d;
    double *gx = NULL, *gw = NULL, *gb = NULL;
    int64_t *perm = NULL, *rows = NULL;
    id_rot r;
    int err = id_check(ctx, n, hw, d, K, prm->parametrization);
    if (err != IIS_OK) return err;
    if (prm->steps < 0 || prm->step0 < 0 || prm->batch < 1 || !(prm->lr > 0.0) ||
        !(prm->beta1 >= 0.0 && prm->beta1 < 1.0) || !(prm->beta2 >= 0.0 && prm->beta2 < 1.0) ||
        !(prm->eps >= 0.0))
        return IIS_EINVAL;
    memset(&r, 0, sizeof(r));
    gx = malloc(sizeof(double) * dd);
    gw = malloc(sizeof(double) * kd);
    gb = malloc(sizeof(double) * (size_t)K);
    perm = malloc(sizeof(int64_t) * (size_t)n);
    rows = malloc(sizeof(int64_t) * (size_t)n);
    if (!gx || !gw || !gb || !perm || !rows) {
        err = IIS_ENOMEM;
        goto done;
    }
    for (int s = 0; s < prm->steps; s++) {
        int64_t t = prm->step0 + s, nb = id_batch(prm->seed, t, n, prm->batch, perm, rows);
        double loss = 0.0;
        if ((err = id_rotation(ctx, x, d, prm->parametrization, &r)) != IIS_OK) break;
        err = id_objective(ctx, maps, hw, d, rows, nb, y, K, &r, w, b, &loss, gx, gw, gb);
        if (err != IIS_OK) break;
        if (loss_history) loss_history[s] = loss;
        id_adam(x, gx, adam, adam + dd, dd, prm, t + 1);
        id_adam(w, gw, adam + 2 * dd, adam + 2 * dd + kd, kd, prm, t + 1);
        id_adam(b, gb, adam + 2 * dd + 2 * kd, adam + 2 * dd + 2 * kd + K, (size_t)K, prm, t + 1);
        for (size_t e = 0; e < kd; e++) /* the head stays non-negative */
            if (w[e] < 0.0) w[e] = 0.0;
        iis_report(ctx, s + 1, prm->steps);
        if (iis_interrupted(ctx)) {
            err = IIS_EINTR;
            break;
        }
    }
done:
    id_rot_free(&r);
    free(gx);
    free(gw);
    free(gb);
    free(perm);
    free(rows);
    return err;
}
