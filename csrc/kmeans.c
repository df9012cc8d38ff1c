/* kmeans.c -- k-means++ and Lloyd for the Cluster concept library. */
#include "internal.h"
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define REAL float
#define IS_DOUBLE 0
#define FN(name) IIS_CAT(name, _f)
#define GEMM(ctx) (ctx)->blas->sgemm
#include "kmeans_t.h"
#undef REAL
#undef IS_DOUBLE
#undef FN
#undef GEMM

#define REAL double
#define IS_DOUBLE 1
#define FN(name) IIS_CAT(name, _d)
#define GEMM(ctx) (ctx)->blas->dgemm
#include "kmeans_t.h"
