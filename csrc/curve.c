/* curve.c -- accuracy, trapezoid IIS, status messages. */
#include "internal.h"

const char *iis_strerror(int status)
{
    switch (status) {
    case IIS_OK: return "ok";
    case IIS_ENOMEM: return "out of memory";
    case IIS_EINTR: return "interrupted";
    case IIS_EINVAL: return "invalid argument";
    case IIS_ENOBLAS: return "BLAS function table is not set";
    default: return "unknown error";
    }
}

int iis_blas_ok(const iis_ctx *ctx, int dtype_is_double)
{
    if (!ctx || !ctx->blas) return 0;
    return dtype_is_double ? ctx->blas->dgemm != NULL : ctx->blas->sgemm != NULL;
}

/* acc = mean(pred == y); 0 for n = 0 */
double iis_accuracy(const int32_t *pred, const int32_t *y, int64_t n)
{
    int64_t hit = 0;
    if (n <= 0) return 0.0;
    for (int64_t i = 0; i < n; i++) hit += pred[i] == y[i];
    return (double)hit / (double)n;
}

/* IIS = sum_i (arr_i + arr_{i+1}) / 2 * (s_{i+1} - s_i) */
double iis_trapezoid(const double *s, const double *arr, int n)
{
    double total = 0.0;
    for (int i = 0; i + 1 < n; i++) total += 0.5 * (arr[i] + arr[i + 1]) * (s[i + 1] - s[i]);
    return total;
}
