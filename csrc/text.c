/* text.c -- Text concept library: learn W_c by maximising the cos^3 similarity (LF-CBM). */
#include "internal.h"
#include <math.h>

#define REAL float
#define IS_DOUBLE 0
#define FN(name) IIS_CAT(name, _f)
#define GEMM(ctx) (ctx)->blas->sgemm
#include "text_t.h"
#undef REAL
#undef IS_DOUBLE
#undef FN
#undef GEMM

#define REAL double
#define IS_DOUBLE 1
#define FN(name) IIS_CAT(name, _d)
#define GEMM(ctx) (ctx)->blas->dgemm
#include "text_t.h"
