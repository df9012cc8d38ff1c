/* solver.c -- multinomial logistic regression (the IP and the probe) and the sparsity path. */
#include "internal.h"
#include <float.h>
#include <math.h>

#define REAL float
#define IS_DOUBLE 0
#define FTOL (4.0 * FLT_EPSILON)
#define VEXP iis_expf_neg
#define FN(name) IIS_CAT(name, _f)
#define AMX_PASSES 1
#define GEMM(ctx) (ctx)->blas->sgemm
#define SYRK(ctx) (ctx)->blas->ssyrk
#include "gemm_t.h"
#include "passes_t.h"
#include "amx_passes_t.h"
#include "precond_t.h"
#include "blocks_t.h"
#include "lbfgs_t.h"
#include "path_t.h"
#undef REAL
#undef IS_DOUBLE
#undef FTOL
#undef VEXP
#undef FN
#undef AMX_PASSES
#undef GEMM
#undef SYRK

#define REAL double
#define IS_DOUBLE 1
#define FTOL (64.0 * DBL_EPSILON)
#define VEXP iis_exp_neg
#define FN(name) IIS_CAT(name, _d)
#define AMX_PASSES 0
#define GEMM(ctx) (ctx)->blas->dgemm
#define SYRK(ctx) (ctx)->blas->dsyrk
#include "gemm_t.h"
#include "passes_t.h"
#include "amx_passes_t.h"
#include "precond_t.h"
#include "blocks_t.h"
#include "lbfgs_t.h"
#include "path_t.h"
