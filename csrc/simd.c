/* simd.c -- the AVX-512 softmax rows of the float32 solver.
 *
 * Compiled with a target attribute and chosen at run time (iis_simd_available, through
 * iis_use_simd in internal.h), so the module itself still runs on any x86-64 CPU.
 */
#include "internal.h"
#include <math.h>
#include <stdint.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(IIS_NO_SIMD)
#define IIS_HAVE_AVX512_BUILD 1
#include <immintrin.h>
#endif

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

const char *iis_cpu_simd(void)
{
    return iis_simd_available() ? "avx512f" : "none";
}

#ifdef IIS_HAVE_AVX512_BUILD
#define TGT __attribute__((target("avx512f")))
#define INL static inline __attribute__((always_inline)) TGT
#endif

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
