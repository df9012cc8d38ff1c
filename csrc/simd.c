/* simd.c -- the built-in AVX-512 kernel of the float32 projection.
 *
 * out (rows x m) = F (rows x d, ld ldf) U^T for U (m x d): tall and narrow. On W1
 * (50,000 x 768 x 200) NumPy's OpenBLAS sgemm reached 0.69-0.80 of the square-matmul
 * peak. The kernel here reads F in place (no packed copy of the tall operand) and
 * packs only U, once per call, into panels of 32 concepts that stay in L2.
 * (In the solver's fused pass, Z_b = X_b W for a 512-row block, it measured no
 * faster than the BLAS over a whole fit, so the solver keeps the BLAS.)
 *
 * Micro-kernel: 14 rows x 32 concepts in 28 zmm accumulators; per k, two loads of
 * the panel, 14 broadcasts of F and 28 FMAs (about 170 GFLOP/s per core with its
 * operands in cache, the FMA peak of the machine it was tuned on). The input check
 * (max |F|, NaN/Inf) runs on each 14-row block just before the kernel reads it, and
 * the next block is prefetched into L2 while the current one runs, so F makes one
 * trip from memory.
 *
 * Every output is one FMA chain over k = 0..d-1 in order, started from 0 (blocks
 * of k only store and reload the float accumulator, which is exact): a row's result
 * does not depend on the tile, block or thread that computed it. The kernel is
 * compiled with a target attribute and chosen at run time (iis_simd_available), so
 * the module itself still runs on any x86-64 CPU.
 */
#define _GNU_SOURCE /* sysconf(_SC_LEVEL2_CACHE_SIZE) in glibc */
#include "internal.h"
#include <math.h>
#include <stdint.h>
#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(IIS_NO_SIMD)
#define IIS_HAVE_AVX512_BUILD 1
#include <immintrin.h>
#endif

#define NR 32  /* concepts per panel (two zmm) */
#define MR IIS_SIMD_MR /* rows per micro-block (internal.h: tiles are whole blocks) */
#define KC 1024 /* k per block: a 14-row slice of F (up to 56 KB) stays in L1/L2 */
/* The kernel runs when the packed concepts take at most 3/4 of the per-core L2
 * (sysconf; 1 MiB when unknown): above it the panels stream from L3 for every block
 * of 14 rows. Measured with a 2 MiB L2, interleaved with NumPy, ratio to NumPy for
 * kernel / BLAS: M = 200 at d = 768 (0.69 MB) 1.10-1.38 / 0.89-1.00; M = 200 at
 * d = 1,280 (1.1 MB) 1.27 / 0.97; M = 400 at d = 768 (1.3 MB) 1.12 / 1.04; M = 200
 * at d = 2,048 (1.8 MB) 0.93 / 0.92; M = 1,000 at d = 768 (3.1 MB) 0.94 / 1.09. */

size_t iis_simd_max_panel_bytes(void)
{
    static size_t cap = 0;
    size_t c = LOAD_ONCE(cap);
    if (!c) {
        long l2 = -1;
#if defined(_SC_LEVEL2_CACHE_SIZE)
        l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
        c = l2 >= (1L << 18) ? (size_t)l2 / 4 * 3 : ((size_t)1 << 20);
        STORE_ONCE(cap, c);
    }
    return c;
}

int iis_simd_available(void)
{
#ifdef IIS_HAVE_AVX512_BUILD
    static int have = -1;
    int h = LOAD_ONCE(have);
    if (h < 0) {
        __builtin_cpu_init();
        h = __builtin_cpu_supports("avx512f") ? 1 : 0;
        STORE_ONCE(have, h);
    }
    return h;
#else
    return 0;
#endif
}

int iis_simd_project_wanted(const iis_ctx *ctx, int m, int d)
{
    return d > 0 && m > 0 && iis_use_simd(ctx) &&
           iis_simd_panel_floats(m, d) * sizeof(float) <= iis_simd_max_panel_bytes();
}

const char *iis_cpu_simd(void)
{
    return iis_simd_available() ? "avx512f" : "none";
}

const char *iis_projection_kernel(const iis_ctx *ctx)
{
    return iis_use_simd(ctx) ? "avx512f" : "blas";
}

size_t iis_simd_panel_floats(int m, int d)
{
    return (size_t)((m + NR - 1) / NR) * NR * (size_t)d;
}

/* panel p starts at p * d * NR; pk[p][k][j] = U[p*NR + j][k], zero beyond m (the
 * zero lanes are never stored) */
void iis_simd_pack(const float *u, int m, int d, float *pk)
{
    int np = (m + NR - 1) / NR;
    for (int p = 0; p < np; p++) {
        float *panel = pk + (size_t)p * (size_t)d * NR;
        /* blocks of 16 k: the 16 x NR block of the panel stays in L1 while each
         * concept's row is read in order */
        for (int k0 = 0; k0 < d; k0 += 16) {
            int k1 = k0 + 16 < d ? k0 + 16 : d;
            for (int j = 0; j < NR; j++) {
                int c = p * NR + j;
                if (c < m) {
                    const float *src = u + (size_t)c * (size_t)d;
                    for (int k = k0; k < k1; k++) panel[(size_t)k * NR + j] = src[k];
                } else {
                    for (int k = k0; k < k1; k++) panel[(size_t)k * NR + j] = 0.0f;
                }
            }
        }
    }
}

#ifdef IIS_HAVE_AVX512_BUILD
#define TGT __attribute__((target("avx512f")))
#define INL static inline __attribute__((always_inline)) TGT

/* prefetch plan: lines [i0, i1) of the next block of rows (lpr lines per row), one
 * line per 8 k of the micro-kernel (a burst of them before each panel measured no
 * gain; spread out, 1.04-1.09x at 2 threads) */
typedef struct {
    const float *nx;
    int64_t ldx;
    int lpr, i0, i1;
} pfplan;

INL void pf_line(const pfplan *pf, int k)
{
    int i = pf->i0 + (k >> 3);
    if ((k & 7) == 0 && i < pf->i1)
        _mm_prefetch((const char *)(pf->nx + (i / pf->lpr) * pf->ldx + (i % pf->lpr) * 16), _MM_HINT_T1);
}

/* rows (<= MR, a constant after inlining) x up to 32 concepts over k in [0, kc) */
INL void kern2(const int rows, const float *x, int64_t ldx, int kc, const float *b, float *o,
               int64_t ldo, __mmask16 m0, __mmask16 m1, int first, const pfplan *pf)
{
    __m512 a0[MR], a1[MR];
#pragma GCC unroll 14
    for (int r = 0; r < rows; r++) {
        a0[r] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m0, o + r * ldo);
        a1[r] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m1, o + r * ldo + 16);
    }
    for (int k = 0; k < kc; k++) {
        __m512 b0 = _mm512_load_ps(b + (size_t)k * NR), b1 = _mm512_load_ps(b + (size_t)k * NR + 16);
        pf_line(pf, k);
#pragma GCC unroll 14
        for (int r = 0; r < rows; r++) {
            __m512 v = _mm512_set1_ps(x[r * ldx + k]);
            a0[r] = _mm512_fmadd_ps(v, b0, a0[r]);
            a1[r] = _mm512_fmadd_ps(v, b1, a1[r]);
        }
    }
#pragma GCC unroll 14
    for (int r = 0; r < rows; r++) {
        _mm512_mask_storeu_ps(o + r * ldo, m0, a0[r]);
        _mm512_mask_storeu_ps(o + r * ldo + 16, m1, a1[r]);
    }
}

/* the same for a last panel of at most 16 concepts (its first zmm only) */
INL void kern1(const int rows, const float *x, int64_t ldx, int kc, const float *b, float *o,
               int64_t ldo, __mmask16 m0, int first, const pfplan *pf)
{
    __m512 a0[MR];
#pragma GCC unroll 14
    for (int r = 0; r < rows; r++)
        a0[r] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m0, o + r * ldo);
    for (int k = 0; k < kc; k++) {
        __m512 b0 = _mm512_load_ps(b + (size_t)k * NR);
        pf_line(pf, k);
#pragma GCC unroll 14
        for (int r = 0; r < rows; r++)
            a0[r] = _mm512_fmadd_ps(_mm512_set1_ps(x[r * ldx + k]), b0, a0[r]);
    }
#pragma GCC unroll 14
    for (int r = 0; r < rows; r++) _mm512_mask_storeu_ps(o + r * ldo, m0, a0[r]);
}

/* all panels for one block of `rows` rows and k in [k0, k0 + kc); while they run, the
 * next block's rows (nx, nrows of them; NULL for none) are prefetched into L2, a
 * 1/np share of its lines during each panel */
INL void block(const int rows, const float *x, int64_t ldx, int d, int k0, int kc,
               const float *pk, int m, float *o, const float *nx, int nrows)
{
    int np = (m + NR - 1) / NR, lpr = (kc + 15) / 16, lines = nx ? nrows * lpr : 0;
    for (int p = 0; p < np; p++) {
        pfplan pf = {nx ? nx + k0 : NULL, ldx, lpr, lines * p / np, lines * (p + 1) / np};
        int w = m - p * NR < NR ? m - p * NR : NR;
        const float *b = pk + ((size_t)p * (size_t)d + (size_t)k0) * NR;
        float *op = o + p * NR;
        if (w > 16) {
            __mmask16 m1 = w == 32 ? (__mmask16)0xFFFF : (__mmask16)((1u << (w - 16)) - 1u);
            kern2(rows, x + k0, ldx, kc, b, op, m, (__mmask16)0xFFFF, m1, k0 == 0, &pf);
        } else {
            __mmask16 m0 = w == 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << w) - 1u);
            kern1(rows, x + k0, ldx, kc, b, op, m, m0, k0 == 0, &pf);
        }
    }
}

/* running max over |x| as integers (the bits of x with the sign cleared): for floats
 * that order is the order of |x|, and NaN/Inf, whose exponent bits are all set, sort
 * above every finite value (>= 0x7f800000), so one vpmaxud per 16 entries checks both */
INL void check(int rows, const float *x, int64_t ldx, int k0, int kc, __m512i *mx)
{
    const __m512i abs = _mm512_set1_epi32(0x7fffffff);
    for (int r = 0; r < rows; r++) {
        const float *p = x + r * ldx + k0;
        int j = 0;
        for (; j + 16 <= kc; j += 16)
            *mx = _mm512_max_epu32(*mx, _mm512_and_si512(_mm512_castps_si512(_mm512_loadu_ps(p + j)), abs));
        if (j < kc) {
            __m512 v = _mm512_maskz_loadu_ps((__mmask16)((1u << (kc - j)) - 1u), p + j);
            *mx = _mm512_max_epu32(*mx, _mm512_and_si512(_mm512_castps_si512(v), abs));
        }
    }
}

#define IIS_REM_CASE(R)                                                                    \
    case R:                                                                                \
        block(R, x + r0 * ldx, ldx, d, k0, kc, pk, m, out + r0 * (int64_t)m, NULL, 0);     \
        break;

TGT static double tile_avx512(const float *x, int64_t rows, int d, int64_t ldx, const float *pk,
                              int m, float *out, int want_check)
{
    __m512i mx = _mm512_setzero_si512();
    for (int k0 = 0; k0 < d; k0 += KC) {
        int kc = d - k0 < KC ? d - k0 : KC;
        int64_t r0 = 0;
        for (; r0 + MR <= rows; r0 += MR) {
            if (want_check) check(MR, x + r0 * ldx, ldx, k0, kc, &mx);
            int64_t nr = rows - r0 - MR < MR ? rows - r0 - MR : MR; /* rows of the next block */
            block(MR, x + r0 * ldx, ldx, d, k0, kc, pk, m, out + r0 * (int64_t)m,
                  nr > 0 ? x + (r0 + MR) * ldx : NULL, (int)nr);
        }
        if (r0 < rows) {
            int rem = (int)(rows - r0);
            if (want_check) check(rem, x + r0 * ldx, ldx, k0, kc, &mx);
            switch (rem) {
                IIS_REM_CASE(1) IIS_REM_CASE(2) IIS_REM_CASE(3) IIS_REM_CASE(4) IIS_REM_CASE(5)
                IIS_REM_CASE(6) IIS_REM_CASE(7) IIS_REM_CASE(8) IIS_REM_CASE(9) IIS_REM_CASE(10)
                IIS_REM_CASE(11) IIS_REM_CASE(12) IIS_REM_CASE(13)
                default: break;
            }
        }
    }
    if (!want_check) return 0.0;
    {
        uint32_t bits = (uint32_t)_mm512_reduce_max_epu32(mx);
        float v;
        if (bits >= 0x7f800000u) return (double)NAN; /* NaN or +-Inf somewhere */
        memcpy(&v, &bits, sizeof(v));
        return (double)v;
    }
}
#endif

double iis_simd_project_tile(const float *x, int64_t rows, int d, int64_t ldx, const float *pk,
                             int m, float *out, int want_check)
{
#ifdef IIS_HAVE_AVX512_BUILD
    return tile_avx512(x, rows, d, ldx, pk, m, out, want_check);
#else
    (void)x, (void)rows, (void)d, (void)ldx, (void)pk, (void)m, (void)out, (void)want_check;
    return (double)NAN; /* never called: iis_simd_available() is 0 */
#endif
}

/* ---- softmax rows of the float32 solver -------------------------------------------
 * The per-row work between a pass's two GEMMs (passes_t.h, softmax_rows): the
 * portable loop's arithmetic (iis_expf_neg's polynomial, here with fused multiply-adds:
 * a shorter dependency chain, half a rounding less per step; results differ from the
 * portable loop in the last bits, as the kernels' GEMMs do), in three sweeps over the
 * row instead of six: bias and max; exp and a 16-lane sum; scale, the column sums of G
 * in double and the one-hot. The row sum is added in double across lanes. With z2, row i's logits
 * are read from z2[(i - lo) ld2 + q] (an AMX forward product) and written to z. */
#ifdef IIS_HAVE_AVX512_BUILD
INL __m512 exp_neg16(__m512 x)
{
    const __m512 shift = _mm512_set1_ps(12582912.0f);
    __m512 t, n, r, p;
    __m512i bits;
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    t = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), shift);
    n = _mm512_sub_ps(t, shift);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    p = _mm512_set1_ps(1.9875691500E-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
    p = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_sub_epi32(_mm512_castps_si512(t),
                                                                _mm512_set1_epi32(0x4B400000)),
                                               _mm512_set1_epi32(127)),
                             23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}

/* log(x) for 8 doubles x >= 1 (the softmax row sums): x = 2^e m with m in
 * [sqrt(1/2), sqrt(2)), log m = 2 atanh(s) = 2 s (1 + s^2/3 + ... + s^20/21) with
 * s = (m - 1)/(m + 1), |s| < 0.172 (the next term is below 2^-56 of the sum), and
 * e ln 2 in two parts: within a few ulp of libm's log, one call for 8 rows */
INL __m512d log8(__m512d x)
{
    const __m512d one = _mm512_set1_pd(1.0);
    __m512d e = _mm512_getexp_pd(x), m = _mm512_getmant_pd(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero);
    __mmask8 big = _mm512_cmp_pd_mask(m, _mm512_set1_pd(1.4142135623730951), _CMP_GT_OQ);
    __m512d s, s2, q;
    m = _mm512_mask_mul_pd(m, big, m, _mm512_set1_pd(0.5));
    e = _mm512_mask_add_pd(e, big, e, one);
    s = _mm512_div_pd(_mm512_sub_pd(m, one), _mm512_add_pd(m, one));
    s2 = _mm512_mul_pd(s, s);
    q = _mm512_set1_pd(1.0 / 21.0);
    for (int k = 19; k >= 3; k -= 2) q = _mm512_fmadd_pd(q, s2, _mm512_set1_pd(1.0 / k));
    q = _mm512_fmadd_pd(q, s2, one);
    q = _mm512_mul_pd(_mm512_add_pd(s, s), q);
    q = _mm512_fmadd_pd(e, _mm512_set1_pd(1.9082149292705877e-10), q);
    return _mm512_fmadd_pd(e, _mm512_set1_pd(6.9314718036912382e-01), q);
}

/* the column sums of G gather in float over groups of SOFTMAX_GROUP rows (each term
 * in [-1, 1], so a group's sum is off by at most SOFTMAX_GROUP^2 2^-24 ~ 1.5e-5 before
 * it is added to p in double), in acc when K fits, else straight into p */
#define SOFTMAX_GROUP 16
#define SOFTMAX_ACC 1024
TGT static void softmax_avx512(float *z, const int32_t *y, int K, const float *cr, int64_t lo,
                               int64_t hi, double *p, const float *z2, int ld2)
{
    const int nv = (K + 15) / 16, grouped = K <= SOFTMAX_ACC;
    float acc[SOFTMAX_ACC];
    double lsr[8], lmx[8], lzy[8]; /* row sums, maxima and true-class logits of up to 8
                                      rows, whose losses are added 8 at a time (log8) */
    int nl = 0;
    if (grouped) memset(acc, 0, sizeof(float) * (size_t)nv * 16);
    for (int64_t i = lo; i < hi; i++) {
        float *zi = z + i * (int64_t)K;
        __m512 vmx = _mm512_set1_ps(-INFINITY), vs = _mm512_setzero_ps();
        float mx, zy, inv;
        double sr;
        for (int v = 0; v < nv; v++) {
            __mmask16 m = iis_lanes16(K - 16 * v);
            __m512 x;
            if (z2) {
                x = _mm512_maskz_loadu_ps(m, z2 + (i - lo) * (int64_t)ld2 + 16 * v);
            } else {
                x = _mm512_maskz_loadu_ps(m, zi + 16 * v);
            }
            if (cr) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, cr + 16 * v));
            if (cr || z2) _mm512_mask_storeu_ps(zi + 16 * v, m, x);
            vmx = _mm512_mask_max_ps(vmx, m, vmx, x);
        }
        mx = _mm512_reduce_max_ps(vmx);
        zy = zi[y[i]];
        for (int v = 0; v < nv; v++) {
            __mmask16 m = iis_lanes16(K - 16 * v);
            __m512 e = exp_neg16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, zi + 16 * v), _mm512_set1_ps(mx)));
            _mm512_mask_storeu_ps(zi + 16 * v, m, e);
            vs = _mm512_mask_add_ps(vs, m, vs, e);
        }
        sr = _mm512_reduce_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(vs))) +
             _mm512_reduce_add_pd(_mm512_cvtps_pd(
                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(vs), 1))));
        lsr[nl] = sr;
        lmx[nl] = (double)mx;
        lzy[nl] = (double)zy;
        if (++nl == 8 || i + 1 == hi) { /* the loss of these rows, in row order */
            double lg[8];
            for (int j = nl; j < 8; j++) lsr[j] = 1.0;
            _mm512_storeu_pd(lg, log8(_mm512_loadu_pd(lsr)));
            for (int j = 0; j < nl; j++) p[K] += lmx[j] + lg[j] - lzy[j];
            nl = 0;
        }
        inv = (float)(1.0 / sr);
        for (int v = 0; v < nv; v++) {
            __mmask16 m = iis_lanes16(K - 16 * v);
            __mmask8 m0 = (__mmask8)(m & 0xFF), m1 = (__mmask8)(m >> 8);
            __m512 g = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, zi + 16 * v), _mm512_set1_ps(inv));
            _mm512_mask_storeu_ps(zi + 16 * v, m, g);
            if (grouped) {
                _mm512_storeu_ps(acc + 16 * v, _mm512_add_ps(_mm512_loadu_ps(acc + 16 * v), g));
            } else {
                double *pv = p + 16 * v;
                _mm512_mask_storeu_pd(pv, m0, _mm512_add_pd(_mm512_maskz_loadu_pd(m0, pv),
                                                            _mm512_cvtps_pd(_mm512_castps512_ps256(g))));
                _mm512_mask_storeu_pd(pv + 8, m1,
                                      _mm512_add_pd(_mm512_maskz_loadu_pd(m1, pv + 8),
                                                    _mm512_cvtps_pd(_mm256_castpd_ps(
                                                        _mm512_extractf64x4_pd(_mm512_castps_pd(g), 1)))));
            }
        }
        zi[y[i]] -= 1.0f;
        p[y[i]] -= 1.0;
        if (grouped && ((i - lo + 1) % SOFTMAX_GROUP == 0 || i + 1 == hi)) {
            for (int q = 0; q < K; q++) p[q] += (double)acc[q];
            memset(acc, 0, sizeof(float) * (size_t)nv * 16);
        }
    }
}
#endif

#ifdef IIS_HAVE_AVX512_BUILD
/* mask_t.h's kth_largest for float bit patterns (below 2^31) in AVX-512: the same
 * bisection, the same result; a counting sweep of W1's 200 concepts is 13 compares
 * into mask registers and their popcounts, where the portable loop (SSE2, no unsigned
 * compare) took about 50 vector instructions (with topk_row_avx512, a dense mask of
 * W1's train activations 20-22 -> 13-17 ms, a k-sparse one 24-27 -> 12-18 ms) */
TGT static inline uint32_t kth_avx512(const float *r, int m, int k, uint32_t *mag)
{
    const int nv = m / 16;
    const __mmask16 tail = iis_lanes16(m - 16 * nv);
    const __m512i absm = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
    const __m512i qnan = _mm512_set1_epi32(0x7fc00000);
    __m512i vmax = _mm512_setzero_si512();
    uint32_t lo = 0, hi;
    /* |a| as patterns, every NaN mapped to 0x7fc00000 (mask_t.h's mag_bits) */
    for (int v = 0; v < nv; v++) {
        __m512i x = _mm512_and_si512(_mm512_loadu_si512(r + 16 * v), absm);
        x = _mm512_mask_mov_epi32(x, _mm512_cmpgt_epu32_mask(x, inf), qnan);
        _mm512_storeu_si512(mag + 16 * v, x);
        vmax = _mm512_max_epu32(vmax, x);
    }
    if (tail) {
        __m512i x = _mm512_and_si512(_mm512_maskz_loadu_epi32(tail, r + 16 * nv), absm);
        x = _mm512_mask_mov_epi32(x, _mm512_cmpgt_epu32_mask(x, inf), qnan);
        _mm512_mask_storeu_epi32(mag + 16 * nv, tail, x);
        vmax = _mm512_max_epu32(vmax, x);
    }
    hi = _mm512_reduce_max_epu32(vmax);
    if (k <= 1) return hi;
    hi += 1;
    while (hi - lo > 1) {
        const uint32_t mid = lo + (hi - lo) / 2;
        const __m512i vm = _mm512_set1_epi32((int)mid);
        int c = 0;
        for (int v = 0; v < nv; v++)
            c += _mm_popcnt_u32(_mm512_cmpge_epu32_mask(_mm512_loadu_si512(mag + 16 * v), vm));
        if (tail)
            c += _mm_popcnt_u32(_mm512_mask_cmpge_epu32_mask(tail, _mm512_maskz_loadu_epi32(tail, mag + 16 * nv), vm));
        if (c == k) { /* exactly k at or above mid: the k-th largest is their minimum */
            __m512i vt = _mm512_set1_epi32((int)hi);
            for (int v = 0; v < nv; v++) {
                __m512i x = _mm512_loadu_si512(mag + 16 * v);
                vt = _mm512_mask_min_epu32(vt, _mm512_cmpge_epu32_mask(x, vm), vt, x);
            }
            if (tail) {
                __m512i x = _mm512_maskz_loadu_epi32(tail, mag + 16 * nv);
                vt = _mm512_mask_min_epu32(vt, _mm512_mask_cmpge_epu32_mask(tail, x, vm), vt, x);
            }
            return _mm512_reduce_min_epu32(vt);
        }
        if (c > k) lo = mid;
        else hi = mid;
    }
    return lo;
}

/* the hard top-k row when no entry ties the k-th largest |a| (else 0: the portable
 * loop breaks the tie): keep = |a| >= tau, as a masked copy (dense) or compressed to
 * the kept columns in order (idx, val) */
TGT static int topk_row_avx512(const float *r, int m, int k, uint32_t *mag, int32_t *idx,
                               float *val, float *dense)
{
    const int nv = (m + 15) / 16;
    const uint32_t tau = kth_avx512(r, m, k, mag);
    const __m512i vt = _mm512_set1_epi32((int)tau);
    int above = 0, ties = 0, c = 0;
    __m512i col = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int v = 0; v < nv; v++) {
        const __mmask16 t = iis_lanes16(m - 16 * v);
        const __m512i x = _mm512_maskz_loadu_epi32(t, mag + 16 * v);
        above += _mm_popcnt_u32(_mm512_mask_cmpgt_epu32_mask(t, x, vt));
        ties += _mm_popcnt_u32(_mm512_mask_cmpeq_epu32_mask(t, x, vt));
    }
    if (ties != k - above) return 0;
    for (int v = 0; v < nv; v++) {
        const __mmask16 t = iis_lanes16(m - 16 * v);
        const __mmask16 keep = _mm512_mask_cmpge_epu32_mask(t, _mm512_maskz_loadu_epi32(t, mag + 16 * v), vt);
        if (dense) {
            _mm512_mask_storeu_ps(dense + 16 * v, t, _mm512_maskz_loadu_ps(keep, r + 16 * v));
        } else {
            _mm512_mask_compressstoreu_epi32(idx + c, keep, col);
            _mm512_mask_compressstoreu_ps(val + c, keep, _mm512_maskz_loadu_ps(keep, r + 16 * v));
            c += _mm_popcnt_u32(keep);
            col = _mm512_add_epi32(col, _mm512_set1_epi32(16));
        }
    }
    return 1;
}
#endif

int iis_simd_topk_row(const float *r, int m, int k, uint32_t *mag, int32_t *idx, float *val,
                      float *dense)
{
#ifdef IIS_HAVE_AVX512_BUILD
    return topk_row_avx512(r, m, k, mag, idx, val, dense);
#else
    (void)r, (void)m, (void)k, (void)mag, (void)idx, (void)val, (void)dense; /* never called */
    return 0;
#endif
}

void iis_simd_softmax_rows(float *z, const int32_t *y, int K, const float *cr, int64_t lo,
                           int64_t hi, double *p, const float *z2, int ld2)
{
#ifdef IIS_HAVE_AVX512_BUILD
    softmax_avx512(z, y, K, cr, lo, hi, p, z2, ld2);
#else
    (void)z, (void)y, (void)K, (void)cr, (void)lo, (void)hi, (void)p; /* never called */
    (void)z2, (void)ld2;
#endif
}
