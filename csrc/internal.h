/* internal.h -- helpers shared by the kernels (not part of the public C API). */
#ifndef IIS_INTERNAL_H
#define IIS_INTERNAL_H

#include "iis.h"
#include <stdlib.h>
#include <string.h>

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

static inline int iis_fits_int(int64_t v) { return v >= 0 && v <= 2147483647; }

/* threads for a region touching `work` elements */
static inline int iis_nt_for(const iis_ctx *ctx, int64_t work)
{
    return work < IIS_PAR_MIN ? 1 : iis_nthreads(ctx);
}

#endif
