/* iis.h -- the whole C API of the iis core.
 *
 * Pure C11 + OpenMP; no Python. BLAS reaches the core as a table of function
 * pointers (filled by the binding, e.g. from scipy.linalg.cython_blas), so the
 * core never links a particular BLAS. Every function that can fail returns an
 * int status (IIS_OK on success). Matrices are row-major with an explicit
 * leading dimension (elements between consecutive rows).
 */
#ifndef IIS_H
#define IIS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum iis_status {
    IIS_OK = 0,
    IIS_ENOMEM = 1,     /* an allocation failed */
    IIS_EINTR = 2,      /* the interrupt hook (Ctrl-C) or a trace callback asked to stop */
    IIS_EINVAL = 3,     /* an argument is out of range (message in iis_strerror) */
    IIS_ENOBLAS = 4     /* the BLAS table is not filled */
};

/* Fortran BLAS gemm signatures (column-major), as exported by OpenBLAS and
 * scipy.linalg.cython_blas. */
typedef void (*iis_sgemm_fn)(const char *transa, const char *transb, const int *m, const int *n,
                             const int *k, const float *alpha, const float *a, const int *lda,
                             const float *b, const int *ldb, const float *beta, float *c,
                             const int *ldc);
typedef void (*iis_dgemm_fn)(const char *transa, const char *transb, const int *m, const int *n,
                             const int *k, const double *alpha, const double *a, const int *lda,
                             const double *b, const int *ldb, const double *beta, double *c,
                             const int *ldc);

/* Optional members, for the preconditioned solver (see iis_solver_params): syrk and
 * dtrsm (BLAS) and dpotrf (LAPACK), same Fortran conventions. */
typedef void (*iis_ssyrk_fn)(const char *uplo, const char *trans, const int *n, const int *k,
                             const float *alpha, const float *a, const int *lda,
                             const float *beta, float *c, const int *ldc);
typedef void (*iis_dsyrk_fn)(const char *uplo, const char *trans, const int *n, const int *k,
                             const double *alpha, const double *a, const int *lda,
                             const double *beta, double *c, const int *ldc);
typedef void (*iis_dtrsm_fn)(const char *side, const char *uplo, const char *transa,
                             const char *diag, const int *m, const int *n, const double *alpha,
                             const double *a, const int *lda, double *b, const int *ldb);
typedef void (*iis_dpotrf_fn)(const char *uplo, const int *n, double *a, const int *lda,
                              int *info);

/* LAPACK gesv (solve A X = B by LU), for InfoDisent's Cayley map */
typedef void (*iis_dgesv_fn)(const int *n, const int *nrhs, double *a, const int *lda, int *ipiv,
                             double *b, const int *ldb, int *info);
typedef void (*iis_sgesv_fn)(const int *n, const int *nrhs, float *a, const int *lda, int *ipiv,
                             float *b, const int *ldb, int *info);

typedef struct {
    iis_sgemm_fn sgemm;
    iis_dgemm_fn dgemm;
    /* may be NULL: the solver then runs without its preconditioner */
    iis_ssyrk_fn ssyrk;
    iis_dsyrk_fn dsyrk;
    iis_dtrsm_fn dtrsm;
    iis_dpotrf_fn dpotrf;
    /* may be NULL: InfoDisent's Cayley map then refuses to run (IIS_ENOBLAS) */
    iis_dgesv_fn dgesv;
    iis_sgesv_fn sgesv;
} iis_blas;

/* Execution context: everything that would otherwise be global state. */
typedef struct {
    const iis_blas *blas;
    int n_threads;                     /* OpenMP threads for elementwise/selection work (>= 1) */
    int (*interrupt)(void *);          /* called on the calling thread between tiles; !=0 stops */
    void *interrupt_ctx;
    void (*progress)(void *, int, int); /* progress(ctx, done, total); may be NULL */
    void *progress_ctx;
    int kernels; /* IIS_KERNELS_AUTO (0, the zero-initialised default) or IIS_KERNELS_BLAS */
} iis_ctx;

/* IIS_KERNELS_AUTO: the float32 solver's softmax rows run in AVX-512 where the CPU has
 * AVX-512F, its dense passes on AMX-BF16 tiles where the CPU has them and they pay;
 * IIS_KERNELS_BLAS: the portable softmax and the float32 BLAS passes. */
enum iis_kernels { IIS_KERNELS_AUTO = 0, IIS_KERNELS_BLAS = 1 };

enum iis_norm { IIS_NORM_NONE = 0, IIS_NORM_LAYERNORM = 1, IIS_NORM_STANDARDIZE = 2 };

enum iis_precond { IIS_PRECOND_OFF = 0, IIS_PRECOND_BLOCKS = 1, IIS_PRECOND_GRAM = 2 };

/* What a solver's trace callback receives (iis_solver_params.trace). */
enum iis_event_kind {
    IIS_EVENT_ITER = 0,  /* an L-BFGS iteration ended */
    IIS_EVENT_START = 1, /* iis_path: a ratio's fit begins */
    IIS_EVENT_END = 2    /* iis_path: a ratio's fit and evaluation ended */
};

typedef struct {
    int kind;              /* enum iis_event_kind */
    int stage;             /* iis_solver_params.trace_stage (iis_path: the ratio's index) */
    int iter;              /* iterations taken (ITER, END) */
    double loss, grad_max; /* objective and max |grad| at the iterate (ITER, END) */
    int kept;              /* iis_path: the ratio's k (START, END) */
    int stop;              /* iis_path: enum iis_stop of the fit (END) */
    double accuracy;       /* iis_path: the ratio's eval accuracy (END) */
} iis_event;

/* Called on the calling thread, outside OpenMP regions, once per iteration: it must be
 * cheap and leave the solver's arrays alone; a nonzero return stops with IIS_EINTR. */
typedef int (*iis_trace_fn)(void *user, const iis_event *ev);

/* Solver parameters for multinomial logistic regression. */
typedef struct {
    double l2;      /* objective: mean CE + l2/2 ||W||^2 (bias unpenalised) */
    double tol;     /* stop when max |grad| <= tol */
    int max_iter;   /* L-BFGS iteration cap */
    int memory;     /* L-BFGS history length */
    int precondition; /* 0: none. Nonzero: on dense designs where it pays (precond_t.h),
                         the L-BFGS initial inverse Hessian is scaled P^-1 with
                         P = [X 1]^T [X 1] / n + l2 + damping, instead of a scaled
                         identity. 1 (IIS_PRECOND_BLOCKS) also: from iteration 3 on, the
                         block diagonal of the per-class Hessian blocks at that iterate
                         (dense and ELL designs; where their K (d+1)^2 doubles fit the
                         cap in blocks_t.h); 2 (IIS_PRECOND_GRAM): P only. Same
                         objective, same stopping rule, same optimum; fewer passes. */
    const void *start_logits; /* NULL, or n x K logits T of another predictor on the
                         same rows (REAL, row-major): a preconditioned fit (above) then
                         starts from the least-squares fit P^-1 [X' 1]^T T / n of T by
                         this design instead of w and b (iis.score starts the probe from
                         the first IP's train logits). Otherwise ignored. */
    iis_trace_fn trace; /* NULL, or the progress callback (iis_event); never changes results */
    void *trace_ctx;    /* its first argument */
    int trace_stage;    /* copied into the events */
    int trace_iter0;    /* added to the events' iteration counts (0) */
} iis_solver_params;

/* Why the solver stopped. Only IIS_STOP_CONVERGED means max |grad| <= tol. */
enum iis_stop {
    IIS_STOP_CONVERGED = 0,   /* max |grad| <= tol */
    IIS_STOP_MAX_ITER = 1,    /* max_iter iterations taken */
    IIS_STOP_LINE_SEARCH = 2, /* the line search found no decrease (at this precision) */
    IIS_STOP_REL_DECREASE = 3, /* the relative decrease of f stayed below the precision's
                                  floor (FTOL in solver.c) several iterations in a row */
    IIS_STOP_NONFINITE = 4    /* the objective or the gradient is not finite */
};

typedef struct {
    int n_iter;
    int converged;  /* 1 when max |grad| <= tol (stop == IIS_STOP_CONVERGED) */
    int stop;       /* enum iis_stop */
    double loss;    /* final objective */
    double grad_max;
} iis_solver_info;

/* Design matrix of the solver: dense rows, or k (index, value) pairs per row
 * (ELL format) over D columns. Dense rows may carry an implicit column
 * standardisation x' = (x - mu) / sigma (mu, sigma of length D, or NULL). */
typedef struct {
    int64_t n;       /* rows */
    int d;           /* columns */
    const void *x;   /* dense: n x d with leading dimension ldx (NULL for ELL) */
    int64_t ldx;
    const int32_t *idx; /* ELL: n x k column indices (NULL for dense) */
    const void *val;    /* ELL: n x k values */
    int k;
    const void *mu, *sigma; /* dense only, may be NULL */
} iis_design;

const char *iis_strerror(int status);
int iis_blas_ok(const iis_ctx *ctx, int dtype_is_double);

/* ---- project.c ---------------------------------------------------------- */
/* a = F unit(P)^T, then the normalisation, written into out (n x m, ld m).
 * unit_p must already hold unit-norm rows (m x d, ld d). mean/std are used for
 * IIS_NORM_STANDARDIZE (length m). When absmax is not NULL it receives max |F|
 * over the rows read (NaN when F holds a NaN or an Inf): the caller's input check, done on
 * each tile while it is in cache instead of in a separate pass over F. */
int iis_project_f(const iis_ctx *ctx, const float *f, int64_t n, int d, int64_t ldf,
                  const float *unit_p, int m, int norm, const float *mean, const float *std,
                  float *out, double *absmax);
int iis_project_d(const iis_ctx *ctx, const double *f, int64_t n, int d, int64_t ldf,
                  const double *unit_p, int m, int norm, const double *mean, const double *std,
                  double *out, double *absmax);
/* per-column mean and (population) std of a (n x m); std 0 is reported as 1 */
int iis_colstats_f(const iis_ctx *ctx, const float *a, int64_t n, int m, int64_t lda,
                   float *mean, float *std);
int iis_colstats_d(const iis_ctx *ctx, const double *a, int64_t n, int m, int64_t lda,
                   double *mean, double *std);

/* ---- mask.c ------------------------------------------------------------- */
/* k(s): M - floor(M s) (published: one less, clipped at 0) */
int iis_keep_count(int m, double s, int published);
/* Per row, the k entries of largest |a| (ties: lower index first), written as
 * ascending column indices idx (n x k) and values val (n x k). soft != 0 applies
 * sign(a) max(|a| - tau, 0), tau the (k+1)-th largest |a| (0 when k = m). */
int iis_topk_f(const iis_ctx *ctx, const float *a, int64_t n, int m, int64_t lda, int k, int soft,
               int32_t *idx, float *val);
int iis_topk_d(const iis_ctx *ctx, const double *a, int64_t n, int m, int64_t lda, int k, int soft,
               int32_t *idx, double *val);
/* dense masked copy: out (n x m) = mask(a) */
int iis_mask_dense_f(const iis_ctx *ctx, const float *a, int64_t n, int m, int64_t lda, int k,
                     int soft, float *out);
int iis_mask_dense_d(const iis_ctx *ctx, const double *a, int64_t n, int m, int64_t lda, int k,
                     int soft, double *out);

/* ---- solver.c ----------------------------------------------------------- */
/* Multinomial logistic regression by L-BFGS. w (d x K, row-major: one row of
 * class weights per column of the design) and b (K) hold the warm start on
 * entry and the solution on exit. y in [0, K). */
int iis_logreg_fit_f(const iis_ctx *ctx, const iis_design *X, const int32_t *y, int n_classes,
                     const iis_solver_params *prm, float *w, float *b, iis_solver_info *info);
int iis_logreg_fit_d(const iis_ctx *ctx, const iis_design *X, const int32_t *y, int n_classes,
                     const iis_solver_params *prm, double *w, double *b, iis_solver_info *info);
/* logits (n x K, may be NULL) and argmax labels (ties: lower class) */
int iis_logreg_predict_f(const iis_ctx *ctx, const iis_design *X, int n_classes, const float *w,
                         const float *b, float *logits, int32_t *pred);
int iis_logreg_predict_d(const iis_ctx *ctx, const iis_design *X, int n_classes, const double *w,
                         const double *b, double *logits, int32_t *pred);

/* The sparsity path: for every ratio s[i] (ascending), mask train and eval
 * activations with k(s), fit the IP warm-started from the previous ratio, and
 * record the eval accuracy. */
typedef struct {
    int soft;
    int published_keep;
    iis_solver_params solver;
    int overwrite; /* nonzero: a_tr and a_ev may be overwritten. Hard masks are then
                      applied in place (along ascending s the kept sets are nested, so
                      masking the masked rows again gives the same result), which saves
                      a copy of each split's activations. Ignored for soft masks. */
} iis_path_params;

typedef struct {
    double *accuracy;   /* n_s */
    int *kept;          /* n_s */
    int *n_iter;        /* n_s */
    int *converged;     /* n_s */
    int *stop;          /* n_s, or NULL: enum iis_stop of each ratio's fit */
    void *train_logits0; /* NULL, or n_tr x K (REAL): filled with the train logits of
                            the IP at s[0] (iis.score starts the probe from them) */
} iis_path_result;

int iis_path_f(const iis_ctx *ctx, const float *a_tr, int64_t n_tr, const int32_t *y_tr,
               const float *a_ev, int64_t n_ev, const int32_t *y_ev, int m, int n_classes,
               const double *s, int n_s, const iis_path_params *prm, iis_path_result *res);
int iis_path_d(const iis_ctx *ctx, const double *a_tr, int64_t n_tr, const int32_t *y_tr,
               const double *a_ev, int64_t n_ev, const int32_t *y_ev, int m, int n_classes,
               const double *s, int n_s, const iis_path_params *prm, iis_path_result *res);

/* ---- kmeans.c ----------------------------------------------------------- */
/* k-means++ initialisation (seeded) and Lloyd iterations on x (n x d). */
int iis_kmeans_f(const iis_ctx *ctx, const float *x, int64_t n, int d, int k, uint64_t seed,
                 int max_iter, double tol, float *centers, int32_t *labels, double *inertia,
                 int *n_iter);
int iis_kmeans_d(const iis_ctx *ctx, const double *x, int64_t n, int d, int k, uint64_t seed,
                 int max_iter, double tol, double *centers, int32_t *labels, double *inertia,
                 int *n_iter);

/* ---- curve.c ------------------------------------------------------------ */
double iis_accuracy(const int32_t *pred, const int32_t *y, int64_t n);
/* trapezoid integral of arr over ascending s */
double iis_trapezoid(const double *s, const double *arr, int n);

/* ---- text.c ------------------------------------------------------------- */
/* Text concept library (Label-free CBM recipe, docs/method.md section 6).
 * For concept c, prediction column p = F w_c (n rows) and target column t:
 *   cub(v) = (v - mean(v))^3 / ||(v - mean(v))^3||     (elementwise cube, unit L2 norm)
 *   sim_c  = <cub(p), cub(t)>                         (LF-CBM cos_similarity_cubed_single)
 * and the objective J(W) = 1/C sum_c sim_c is MAXIMISED (the published
 * mean_cubic_loss had the sign reversed). A column with zero spread has sim 0
 * and zero gradient. W is C x d, row-major (one concept direction per row). */
typedef struct {
    int steps;       /* full-batch Adam steps at most (>= 0) */
    int eval_every;  /* held-out evaluation period in steps (>= 1) */
    int patience;    /* stop after this many evaluations without improvement (>= 1) */
    double lr, beta1, beta2, eps; /* Adam (torch defaults: 1e-3, 0.9, 0.999, 1e-8) */
    uint64_t seed;   /* init W_ij ~ U(-1/sqrt(d), 1/sqrt(d)) (torch nn.Linear), splitmix64 */
    int init_given;  /* nonzero: w already holds the initial W on entry */
} iis_text_params;

typedef struct {
    int n_steps;            /* Adam steps taken */
    int best_step;          /* steps taken when the returned W was evaluated */
    int n_evals;            /* entries written to val_history / val_steps */
    double best_val;        /* held-out J of the returned W */
    double *train_history;  /* capacity steps, or NULL: train J before step s (index s) */
    double *val_history;    /* capacity steps / eval_every + 2, or NULL: held-out J */
    int *val_steps;         /* same capacity, or NULL: steps taken at each evaluation */
    double *val_sim;        /* C, or NULL: per-concept held-out sim_c of the returned W */
} iis_text_result;

/* sim (C) and, when grad_w is not NULL, dJ/dW (C x d, ld d) at W for
 * features f (n x d, ld ldf) and targets t (n x C, ld ldt); J is returned in *obj. */
int iis_text_objective_f(const iis_ctx *ctx, const float *f, int64_t n, int d, int64_t ldf,
                         const float *t, int64_t ldt, const float *w, int c, double *sim,
                         double *obj, float *grad_w);
int iis_text_objective_d(const iis_ctx *ctx, const double *f, int64_t n, int d, int64_t ldf,
                         const double *t, int64_t ldt, const double *w, int c, double *sim,
                         double *obj, double *grad_w);
/* Adam on -J over (f_tr, t_tr) with early stopping on the held-out (f_va, t_va):
 * evaluated before the first step, every eval_every steps and after the last;
 * w (C x d) receives the best evaluated W. */
int iis_text_fit_f(const iis_ctx *ctx, const float *f_tr, int64_t n_tr, int d, int64_t ldf_tr,
                   const float *t_tr, int64_t ldt_tr, const float *f_va, int64_t n_va,
                   int64_t ldf_va, const float *t_va, int64_t ldt_va, int c,
                   const iis_text_params *prm, float *w, iis_text_result *res);
int iis_text_fit_d(const iis_ctx *ctx, const double *f_tr, int64_t n_tr, int d, int64_t ldf_tr,
                   const double *t_tr, int64_t ldt_tr, const double *f_va, int64_t n_va,
                   int64_t ldf_va, const double *t_va, int64_t ldt_va, int c,
                   const iis_text_params *prm, double *w, iis_text_result *res);

/* ---- end2end.c ---------------------------------------------------------- */
/* The End2End concept library (docs/method.md section 6; the math at the top of end2end.c):
 * logits q (n_el x M) assign elements el (n_el x d) to M concepts by a straight-through
 * hard Gumbel-softmax; a linear head (w: K x M, b: K) reads the layer-normalised, top-k
 * masked activations F unit(P)^T of the features f (n x d); loss = mean CE + l2/2 ||W||^2.
 * float64, row-major, contiguous. */
typedef struct {
    int k;              /* activations kept per sample (1..M) */
    double temperature; /* Gumbel-softmax temperature (> 0) */
    double l2;          /* L2 penalty on W (>= 0) */
    int steps;          /* iis_e2e_fit: full-batch Adam steps to take */
    int64_t step0;      /* steps taken before this call: the noise and Adam step counter */
    double lr, beta1, beta2, eps; /* Adam (torch semantics) */
    uint64_t seed;      /* Gumbel noise seed */
} iis_e2e_params;

/* Gumbel noise of step `step` (n x m), from a hash of (seed, step, entry) */
void iis_e2e_noise(const iis_ctx *ctx, uint64_t seed, int64_t step, int64_t n, int m, double *g);
/* loss and, when gw != NULL, gradients gq (n_el x M), gw, gb, and ga = dL/dA (each may be NULL
 * except gw, gb) at (q, w, b) with Gumbel noise `noise` (n_el x M, or NULL for none). With
 * a_given (n_el x M), the concepts are unit(a_given^T el) instead of the hard assignment
 * (for checking gradients). */
int iis_e2e_objective(const iis_ctx *ctx, const double *el, int64_t n_el, int d, const double *f,
                      int64_t n, const int32_t *y, int K, int m, const iis_e2e_params *prm,
                      const double *q, const double *w, const double *b, const double *noise,
                      const double *a_given, double *loss, double *gq, double *gw, double *gb,
                      double *ga);
/* prm->steps Adam steps on (q, w, b) in place, noise of steps step0, step0 + 1, ...;
 * adam (2 (n_el M + K M + K)) holds the moments of q, w, b (zeros before the first call);
 * loss_history (steps, may be NULL) the loss of each step. */
int iis_e2e_fit(const iis_ctx *ctx, const double *el, int64_t n_el, int d, const double *f,
                int64_t n, const int32_t *y, int K, int m, const iis_e2e_params *prm, double *q,
                double *w, double *b, double *adam, double *loss_history);

/* ---- infodisent.c -------------------------------------------------------- */
/* InfoDisent (docs/method.md section 6; the math at the top of infodisent.c): spatial maps
 * (n x hw x d, float32, contiguous), U (d x d) orthogonal from X by A = X - X^T
 * (parametrization 0: Cayley (I + A)^-1 (I - A), needs dgesv; 1: expm(A)), per-channel
 * signed max pooling, head W (K x d) >= 0 and b (K); mean cross-entropy. float64 state. */
typedef struct {
    int parametrization; /* 0 cayley, 1 exp */
    int steps;           /* Adam steps of this call */
    int64_t step0;       /* steps taken before: batch order and Adam step counter */
    int batch;           /* images per step */
    double lr, beta1, beta2, eps;
    uint64_t seed;       /* the per-epoch permutation of the images */
} iis_infodisent_params;

int iis_infodisent_rotation(const iis_ctx *ctx, const double *x, int d, int param, double *u);
/* v (n x d): pooled signed maxima of z = F_i U; pmax / pmin: their positions (-1: none) */
int iis_infodisent_pool(const iis_ctx *ctx, const float *maps, int64_t n, int hw, int d,
                        const double *u, double *v, int32_t *pmax, int32_t *pmin);
/* loss and, when gx != NULL, gradients gx (d x d), gw (K x d), gb (K) over all n images */
int iis_infodisent_objective(const iis_ctx *ctx, const float *maps, int64_t n, int hw, int d,
                             const int32_t *y, int K, int param, const double *x, const double *w,
                             const double *b, double *loss, double *gx, double *gw, double *gb);
/* prm->steps minibatch Adam steps on (x, w, b) in place (w projected on w >= 0); adam
 * (2 (d d + K d + K)) holds the moments; loss_history (steps, may be NULL) */
int iis_infodisent_fit(const iis_ctx *ctx, const float *maps, int64_t n, int hw, int d,
                       const int32_t *y, int K, const iis_infodisent_params *prm, double *x,
                       double *w, double *b, double *adam, double *loss_history);
/* ---- sparse.c: multinomial elastic net ---------------------- */
/* F(W, b) = mean CE(X W + b, y) + lambda (alpha R(W) + (1 - alpha)/2 ||W||_F^2),
 * R = ||W||_1, or sum_j ||W_j||_2 over the rows (concepts) when grouped; b unpenalised. */
typedef struct {
    double lambda, alpha; /* lambda >= 0, 0 < alpha <= 1 */
    double lambda_prev;   /* the path's previous lambda (strong rule); lambda for the first */
    int grouped;
    double tol;           /* stop when the max KKT violation (sparse.c) is <= tol (> 0) */
    int max_iter;         /* proximal Newton steps at most */
} iis_enet_params;

typedef struct {
    int n_iter, converged;
    double kkt;        /* max KKT violation over all weights and intercepts */
    double loss;       /* mean CE at the solution */
    int n_screened;    /* rows kept by the strong rule */
    int n_added;       /* rows the KKT check added back */
} iis_enet_info;

/* mean CE at (w (d x K), b) and its gradient (gw d x K, gb K) over x (n x d, ld ldx) */
int iis_enet_objective_d(const iis_ctx *ctx, const double *x, int64_t n, int d, int64_t ldx,
                         const int32_t *y, int K, const double *w, const double *b, double *loss,
                         double *gw, double *gb);
/* One point of the path: w, b hold the warm start on entry and the solution on exit;
 * grad (d x K) holds the CE gradient at the entry point (the strong rule reads it) and
 * receives the CE gradient at the solution, grad_b (K) the intercepts' part. */
int iis_enet_fit_d(const iis_ctx *ctx, const double *x, int64_t n, int d, int64_t ldx,
                   const int32_t *y, int K, const iis_enet_params *p, double *w, double *b,
                   double *grad, double *grad_b, iis_enet_info *info);

/* ---- rng (splitmix64), deterministic and state-passing ------------------ */
static inline uint64_t iis_rng_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
static inline double iis_rng_uniform(uint64_t *state)
{
    return (double)(iis_rng_next(state) >> 11) * (1.0 / 9007199254740992.0);
}

#ifdef __cplusplus
}
#endif
#endif /* IIS_H */
