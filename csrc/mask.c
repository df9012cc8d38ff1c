/* mask.c -- per-sample sparsity masks: keep the k(s) largest |a| (hard or soft). */
#include "internal.h"
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* k(s) = M - floor(M s); published code keeps one fewer (never below 0) */
int iis_keep_count(int m, double s, int published)
{
    /* floor of M*s with a guard against representation error (0.7*10 = 7.000000000000001) */
    double ms = (double)m * s;
    int64_t fl = (int64_t)floor(ms + 1e-9);
    int64_t k = (int64_t)m - fl - (published ? 1 : 0);
    if (k < 0) k = 0;
    if (k > m) k = m;
    return (int)k;
}

#define REAL float
#define UINT uint32_t
#define FABS fabsf
#define INF_BITS 0x7f800000u
#define NAN_BITS 0x7fc00000u
#define FN(name) IIS_CAT(name, _f)
#include "mask_t.h"
#undef REAL
#undef UINT
#undef FABS
#undef INF_BITS
#undef NAN_BITS
#undef FN

#define REAL double
#define UINT uint64_t
#define FABS fabs
#define INF_BITS 0x7ff0000000000000ull
#define NAN_BITS 0x7ff8000000000000ull
#define FN(name) IIS_CAT(name, _d)
#include "mask_t.h"
