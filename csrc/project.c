/* project.c -- concept projection a = norm(F unit(P)^T) and column statistics. */
#include "internal.h"
#include <math.h>

#define REAL float
#define IS_DOUBLE 0
#define FN(name) IIS_CAT(name, _f)
#define GEMM(ctx) (ctx)->blas->sgemm
#include "project_t.h"
#undef REAL
#undef IS_DOUBLE
#undef FN
#undef GEMM

#define REAL double
#define IS_DOUBLE 1
#define FN(name) IIS_CAT(name, _d)
#define GEMM(ctx) (ctx)->blas->dgemm
#include "project_t.h"
