/* internal.h -- helpers shared by the kernels (not part of the public C API). */
#ifndef IIS_INTERNAL_H
#define IIS_INTERNAL_H

#include "iis.h"
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* ---- Introspection and test hooks (the binding's config() and the tests; not the C API) */
/* The SIMD level the built-in kernels can use on this CPU: "avx512f" or "none". */
const char *iis_cpu_simd(void);
/* The kernel of the float32 solver's passes over dense designs under ctx:
 * "amx-bf16" (bfloat16 AMX tiles, then precise split-bf16 ones to the stopping test; CPUs
 * with AMX-BF16 under IIS_KERNELS_AUTO) or "blas" (float32 BLAS passes only). */
const char *iis_solver_kernel(const iis_ctx *ctx);
/* 1 when this CPU and OS let the process use AMX-BF16 tiles (Linux x86-64 builds). */
int iis_amx_available(void);

/* The objective f at (w (d x K), b (K)) and its gradient grad = [dW (d x K) | db (K)]
 * (length d K + K), from one pass over X, the pass the solver runs: the float32 or
 * float64 one, or with amx = 1 the bfloat16 AMX pass (amx.c) that iis_logreg_fit_f
 * starts dense designs with, amx = 2 the precise AMX pass (the design as bf16 hi + lo
 * parts) that takes its stopping test. IIS_EINVAL for other amx != 0, or where these
 * passes do not apply (float64, ELL designs, IIS_KERNELS_BLAS, or no AMX-BF16:
 * iis_amx_available). */
int iis_logreg_objective_f(const iis_ctx *ctx, const iis_design *X, const int32_t *y, int n_classes,
                           double l2, const float *w, const float *b, int amx, double *fval,
                           double *grad);
int iis_logreg_objective_d(const iis_ctx *ctx, const iis_design *X, const int32_t *y, int n_classes,
                           double l2, const double *w, const double *b, int amx, double *fval,
                           double *grad);
/* The preconditioner of the solver (iis_solver_params.precondition) for a dense
 * design: P ((d+1) x (d+1), symmetric) = [X' 1]^T [X' 1] / n + l2 on the weight
 * diagonal + 0.01 * mean(diag of the Gram of X') on the whole diagonal, X' the
 * design after its implicit standardisation. Needs syrk in the BLAS table. */
/* amx != 0: the Gram from bfloat16 AMX products of the rounded design, as the float32
 * solver builds it where its AMX passes run (IIS_EINVAL where they cannot: float64,
 * IIS_KERNELS_BLAS, no AMX-BF16); amx = 0: in REAL with syrk. */
int iis_logreg_precond_f(const iis_ctx *ctx, const iis_design *X, double l2, int amx, double *P);
int iis_logreg_precond_d(const iis_ctx *ctx, const iis_design *X, double l2, int amx, double *P);

/* the calling thread's number in its OpenMP team (0 outside one, or without OpenMP) */
static inline int iis_thread_num(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* p rounded up to a 64-byte boundary (buffers allocated 64 bytes larger) */
static inline unsigned char *iis_align64(void *p)
{
    return (unsigned char *)(((uintptr_t)p + 63) & ~(uintptr_t)63);
}

/* bit mask of the first `have` of 16 vector lanes (have <= 0: none, >= 16: all) */
static inline uint16_t iis_lanes16(int have)
{
    return have <= 0 ? 0 : have >= 16 ? (uint16_t)0xFFFF : (uint16_t)((1u << have) - 1u);
}

#define IIS_CAT_(a, b) a##b
#define IIS_CAT(a, b) IIS_CAT_(a, b)

/* Fixed number of row chunks for reductions: results do not depend on the
 * thread count because partial sums are always formed per chunk and added in
 * chunk order. */
#define IIS_NCHUNK 64

/* Parallel regions below this much work (elements touched) run on one thread:
 * a barrier costs more than the work, and far more on a loaded machine. */
#define IIS_PAR_MIN (1 << 20)

static inline int iis_nthreads(const iis_ctx *ctx)
{
    return (ctx && ctx->n_threads > 0) ? ctx->n_threads : 1;
}

/* nonzero when the interrupt hook asks to stop (call outside OpenMP regions) */
static inline int iis_interrupted(const iis_ctx *ctx)
{
    return (ctx && ctx->interrupt) ? ctx->interrupt(ctx->interrupt_ctx) : 0;
}

/* ev to prm's trace callback, if any, with the stage and iteration offset filled in;
 * IIS_EINTR when the callback asks to stop (call outside OpenMP regions) */
static inline int iis_trace(const iis_solver_params *prm, iis_event ev)
{
    if (!prm->trace) return IIS_OK;
    ev.stage = prm->trace_stage;
    ev.iter += prm->trace_iter0;
    return prm->trace(prm->trace_ctx, &ev) ? IIS_EINTR : IIS_OK;
}

/* Inside an OpenMP region, for loops whose iterations run long (a whole chunk of a
 * solver pass or of the preconditioner's Gram): the team's thread 0, which is the calling thread and so may take
 * the GIL, asks the hook at most every IIS_POLL_S seconds (taking the GIL per block
 * would stall behind other Python threads); every thread reads the shared flag and
 * stops early. Zero-initialise the iis_poll before the region. */
#define IIS_POLL_S 0.05
typedef struct {
    int stop;    /* shared */
    double next; /* thread 0 only: when to ask the hook again */
} iis_poll;

static inline int iis_team_interrupted(const iis_ctx *ctx, iis_poll *pl)
{
    int f;
#ifdef _OPENMP
    if (omp_get_thread_num() == 0) {
        double now = omp_get_wtime();
        if (now >= pl->next) {
            pl->next = now + IIS_POLL_S;
            if (iis_interrupted(ctx)) {
#pragma omp atomic write
                pl->stop = 1;
            }
        }
    }
#pragma omp atomic read
    f = pl->stop;
#else
    if (!pl->stop && iis_interrupted(ctx)) pl->stop = 1;
    f = pl->stop;
#endif
    return f;
}

/* facts computed once (CPU features, cache sizes): threads may race to compute them,
 * but every one computes the same value and the load/store of it is atomic (relaxed) */
#if defined(__GNUC__)
#define LOAD_ONCE(v) __atomic_load_n(&(v), __ATOMIC_RELAXED)
#define STORE_ONCE(v, x) __atomic_store_n(&(v), (x), __ATOMIC_RELAXED)
#else
#define LOAD_ONCE(v) (v)
#define STORE_ONCE(v, x) ((v) = (x))
#endif

/* simd.c: softmax_rows of the float32 solver (passes_t.h) in AVX-512; z2 != NULL: the
 * logits are read from z2, row stride ld2 */
int iis_simd_available(void);
void iis_simd_softmax_rows(float *z, const int32_t *y, int K, const float *cr, int64_t lo,
                           int64_t hi, double *p, const float *z2, int ld2);

/* ---- Hardware-specific kernels: the dispatch points --------------------------------
 * Every kernel written for one instruction set is reached through exactly one of the two
 * functions below, which read the context's kernel choice (kernels="auto" | "blas", passed
 * with each call; no global setting) and what the CPU offers (detected once):
 *
 *   iis_use_simd(ctx)  AVX-512F, simd.c, file-guarded (target attributes, IIS_HAVE_AVX512_BUILD):
 *                      the float32 solver's softmax rows (passes_t.h; amx_passes_t.h calls
 *                      it directly: AMX implies AVX-512).
 *   iis_use_amx(ctx)   AMX-BF16 tiles, amx.c, Linux x86-64 builds: the float32 solver's dense
 *                      passes, its preconditioner Gram and its start from logits (amx_passes_t.h;
 *                      amx_pays/amx_wanted add the size thresholds).
 *
 * kernels="blas" (IIS_KERNELS=blas) turns every one of them off. Everything else is the BLAS
 * table (GEMMs) or portable C (which IIS_HOT builds per instruction set with GCC's
 * target_clones, picked by the loader; that is not a kernel choice and is not switched):
 * the projection always runs the BLAS sgemm, the masks' top-k the portable loop.
 * Off x86-64 (e.g. aarch64) both functions return 0 and simd.c / amx.c compile to stubs. */
static inline int iis_use_simd(const iis_ctx *ctx)
{
    return ctx && ctx->kernels == IIS_KERNELS_AUTO && iis_simd_available();
}

static inline int iis_use_amx(const iis_ctx *ctx)
{
    return ctx && ctx->kernels == IIS_KERNELS_AUTO && iis_amx_available();
}

/* amx.c: bfloat16 AMX tiles for the float32 solver's fused pass (see there).
 * IIS_AMX_RB rows per block; d is padded to iis_amx_dpad(d), K to iis_amx_kpad(K). */
#define IIS_AMX_RB 128
int iis_amx_dpad(int d);
int iis_amx_kpad(int K);
void iis_amx_pack_w(const double *w, int d, int K, uint16_t *wv);
void iis_amx_begin(void);
void iis_amx_end(void);
void iis_amx_convert(const float *x, int64_t ldx, int d, const float *mu, const float *isg,
                     int rows, uint16_t *xa, uint16_t *xv, uint16_t *xal, uint16_t *xvl);
void iis_amx_forward(const uint16_t *xa, const uint16_t *xal, const uint16_t *wv, int d, int K,
                     float *z);
void iis_amx_residuals(const float *g, int rows, int K, uint16_t *gt);
void iis_amx_gram_operand(const uint16_t *xv, int d, uint16_t *gt);
void iis_amx_gram_backward(const uint16_t *gt, const uint16_t *xv, int d, float *pt, int first);
void iis_amx_backward_hilo(const uint16_t *gt, const uint16_t *xv, const uint16_t *xvl, int d,
                           int K, float *pt, int first);

static inline void iis_report(const iis_ctx *ctx, int done, int total)
{
    if (ctx && ctx->progress) ctx->progress(ctx->progress_ctx, done, total);
}

/* rows [lo, hi) of chunk c when n rows are cut into nch chunks */
static inline void iis_chunk(int64_t n, int nch, int c, int64_t *lo, int64_t *hi)
{
    *lo = (n * c) / nch;
    *hi = (n * (c + 1)) / nch;
}

/* IIS_HOT: the row kernels that dominate a solver pass are built three times
 * (AVX-512, AVX2+FMA, baseline x86-64) and picked at load time by the CPU, as
 * NumPy dispatches its loops; the wheel stays portable. Elsewhere a no-op. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(IIS_NO_DISPATCH) && !defined(__SANITIZE_ADDRESS__)
#define IIS_HOT                                                                           \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"),             \
                   optimize("no-loop-unroll-and-jam")))
#else
#define IIS_HOT
#endif

/* helpers of IIS_HOT kernels: inlined so that they run on the clone's vector width */
#if defined(__GNUC__)
#define IIS_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define IIS_ALWAYS_INLINE inline
#endif

/* exp(x) for x <= 0 in float, written so that loops over it vectorise (libm's
 * expf is a call per element). Cephes' polynomial on r = x - n ln2, scaled by
 * 2^n built in the exponent bits; maximum relative error 8.4e-8 on [-87, 0]
 * (tested against exp in double). Below -87 it returns exp(-87) ~ 1.6e-38,
 * which cannot change a softmax whose largest term is 1. */
static inline float iis_expf_neg(float x)
{
    float t, n, r, p, sc;
    uint32_t bits;
    x = x < -87.0f ? -87.0f : x;
    t = x * 1.44269504088896341f + 12582912.0f; /* round(x log2 e) by the 1.5 * 2^23 shift */
    n = t - 12582912.0f;
    r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    p = 1.9875691500E-4f;
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * r * r + r + 1.0f;
    memcpy(&bits, &t, sizeof(bits));
    bits = (bits - 0x4B400000u + 127u) << 23; /* unsigned: defined for any input */
    memcpy(&sc, &bits, sizeof(sc));
    return p * sc;
}

/* exp(x) for x <= 0 in double, vectorisable like iis_expf_neg: r = x - n ln2
 * (two-part ln2), exp(r) by its Taylor polynomial to degree 12 (|r| <= ln2/2, so
 * the truncation is below 1e-16), times 2^n built in the exponent bits. Maximum
 * relative error 3.6e-16 on [-708, 0] (tested against expl). Below -708 it
 * returns exp(-708) ~ 3e-308. */
static inline double iis_exp_neg(double x)
{
    double t, n, r, p, sc;
    uint64_t bits;
    x = x < -708.0 ? -708.0 : x;
    t = x * 1.4426950408889634 + 6755399441055744.0; /* round(x log2 e) by the 1.5 * 2^52 shift */
    n = t - 6755399441055744.0;
    r = x - n * 6.93147180369123816490e-01;
    r = r - n * 1.90821492927058770002e-10;
    p = 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    memcpy(&bits, &t, sizeof(bits));
    bits = (bits - 0x4338000000000000ull + 1023ull) << 52; /* unsigned: defined for any input */
    memcpy(&sc, &bits, sizeof(sc));
    return p * sc;
}

static inline int iis_fits_int(int64_t v) { return v >= 0 && v <= 2147483647; }

/* threads for a region touching `work` elements */
static inline int iis_nt_for(const iis_ctx *ctx, int64_t work)
{
    return work < IIS_PAR_MIN ? 1 : iis_nthreads(ctx);
}

/* Row-major C (rows x cols, ldc) = alpha op(A) op(B) + beta C in float64, op(A) rows x
 * inner: OpenMP over fixed blocks of 64 rows of C, one BLAS call per block (column-major:
 * C^T = op(B)^T op(A)^T). The blocks depend only on the size, so the bits do not depend
 * on the thread count. Used by the learned libraries' training (end2end.c, infodisent.c). */
static inline void iis_dgemm_rows(const iis_ctx *ctx, char ta, char tb, int64_t rows, int cols,
                                  int inner, double alpha, const double *a, int lda,
                                  const double *b, int ldb, double beta, double *c, int ldc)
{
    const int64_t bs = 64, nb = (rows + bs - 1) / bs;
    int64_t blk;
    int nt = iis_nt_for(ctx, rows * (int64_t)cols * (int64_t)inner / 64);
    if (rows <= 0 || cols <= 0) return;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (blk = 0; blk < nb; blk++) {
        int64_t r0 = blk * bs;
        int mm = cols, nn = (int)(rows - r0 < bs ? rows - r0 : bs), kk = inner;
        const double *ab = ta == 'N' ? a + r0 * lda : a + r0;
        ctx->blas->dgemm(&tb, &ta, &mm, &nn, &kk, &alpha, b, &ldb, ab, &lda, &beta, c + r0 * ldc,
                         &ldc);
    }
}

#endif
