/* gemm_t.h -- row-parallel GEMMs, instantiated for REAL by the kernels that need them.
 *
 * One thread pool: BLAS runs single-threaded (the Python layer limits it to one
 * thread) and OpenMP splits the rows into fixed blocks, one BLAS call per block.
 * Two pools (OpenBLAS workers spinning after a call while OpenMP threads start)
 * collapse on a 2-core machine. Blocks and chunks depend only on the problem
 * size, never on the thread count, so results are identical for any n_threads.
 */

#define IIS_GEMM_BLOCK 512

/* blocks per parallel round: the interrupt hook runs between rounds, on the
 * calling thread, so Ctrl-C waits for at most one round, not a whole pass */
#define IIS_GEMM_ROUND 16

/* C (n x K) = A (n x d, ld lda) B (d x K); all row-major. IIS_EINTR when interrupted.
 * (inline: not every includer calls it) */
static inline int FN(par_gemm_ab)(const iis_ctx *ctx, int nt, int64_t n, int d, int K, const REAL *A,
                           int64_t lda, const REAL *B, REAL *C)
{
    int64_t nb = (n + IIS_GEMM_BLOCK - 1) / IIS_GEMM_BLOCK, round = (int64_t)IIS_GEMM_ROUND * nt;
    if (n <= 0 || K <= 0) return IIS_OK;
    if (d <= 0) {
        memset(C, 0, sizeof(REAL) * (size_t)n * (size_t)K);
        return IIS_OK;
    }
    for (int64_t b0 = 0; b0 < nb; b0 += round) {
        int64_t b1 = b0 + round < nb ? b0 + round : nb, b;
#pragma omp parallel for num_threads(nt) schedule(static)
        for (b = b0; b < b1; b++) {
            int64_t r0 = b * IIS_GEMM_BLOCK;
            /* column-major view: C^T (K x rows) = B^T (K x d) A^T (d x rows) */
            char ta = 'N', tb = 'N';
            int mm = K, nn = (int)(n - r0 < IIS_GEMM_BLOCK ? n - r0 : IIS_GEMM_BLOCK), kk = d,
                la = K, lb = (int)lda, lc = K;
            REAL one = 1, zero = 0;
            GEMM(ctx)(&ta, &tb, &mm, &nn, &kk, &one, B, &la, A + r0 * lda, &lb, &zero, C + r0 * K,
                      &lc);
        }
        if (b1 < nb && iis_interrupted(ctx)) return IIS_EINTR;
    }
    return IIS_OK;
}

/* number of fixed row chunks for X^T G in a fused solver pass: grows with n (up
 * to 16), capped so the partial d x K products stay under ~64 MB */
static int FN(atz_chunks)(int64_t n, int d, int K)
{
    size_t dk = (size_t)d * (size_t)K + 1;
    int64_t c = n / 2048;
    size_t cap = ((size_t)64 << 20) / (sizeof(REAL) * dk);
    if (c > 16) c = 16;
    if ((size_t)c > cap) c = (int64_t)cap;
    return c < 1 ? 1 : (int)c;
}
