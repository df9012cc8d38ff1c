/* amx.c -- bfloat16 AMX tiles for the float32 solver's fused pass.
 *
 * One L-BFGS pass over a dense design is two GEMMs per block of rows:
 * Z_b = X_b W (forward) and X_b^T G_b (backward), with G_b = softmax(Z_b) - onehot
 * in between. On CPUs with AMX-BF16 (Intel Sapphire Rapids and later) the tile
 * units multiply bfloat16 pairs into float32 at many times the AVX-512 FMA rate, so
 * the solver (amx_passes_t.h) runs its passes here until the bf16-pass gradient meets
 * the tolerance, then goes on with precise passes (below) that take the stopping
 * test: convergence is judged on a gradient of float32 accuracy.
 *
 * Precision: X_b is standardised (a design without mu centred on its column means,
 * amx_passes_t.h amx_center) and rounded to bf16 once per block (a fixed relative
 * perturbation of 2^-9 of the design, the same in every pass). W and G
 * are split into hi + lo bf16 parts (w = hi + lo to about 2^-17), carried as
 * 2 Kp columns, so the weights and residuals that change from pass to pass are
 * not rounded to bf16 and the optimisation does not stall at bf16 resolution (with
 * W_hi alone the s = 0 fit of W1 stopped at max |grad| 7e-5, loss 1e-4 above the
 * optimum; without G_lo the gradient floors near 1e-4). The products accumulate in
 * float32 tiles, the hi and lo products into the same tile (X W_hi + X W_lo, and
 * G_hi^T X + G_lo^T X): each operand tile loaded serves two products, 6 tile loads
 * per 8 multiplies instead of 8, and the backward's partial is half the size (on
 * W1's probe rows, one thread: forward 7.3 -> 6.1 ms, backward 10.0 -> 6.2 ms per
 * 25,000 rows, best of 16).
 *
 * The precise passes carry X_b as hi + lo bf16 parts too (xal, xvl: the remainders
 * x - bf16(x)) and add the products X_lo W_hi and G_hi^T X_lo: three products where
 * the bf16 pass takes two, every quantity to about 2^-17, the dropped lo x lo terms
 * at 2^-16 of a product. Their objective and gradient are within 5e-7 (relative to
 * the largest gradient entry) of float64 on the test designs, as the float32 BLAS
 * pass is (7e-7), the bf16 pass 2e-4 (tests/test_amx.py). On W1's probe a precise
 * pass takes 40 ms where a bf16 one takes 34 and a float32 BLAS pass 85-100.
 *
 * Blocks of RB = 128 rows: the block's bf16 copies, logits and residuals and the
 * chunk's partial product then fit a 2 MB L2 with W1's probe (d = 768, K = 100); with
 * 256 rows they did not, and its pass took 42-45 ms instead of 34-37 (64 and 96 rows
 * measured 37-38 and 33-37).
 *
 * Layouts (Dp = d rounded up to 32, Kp = K rounded up to 16, RB rows per block):
 *   xa  RB x Dp bf16, the block's standardised rows (A operand of the forward);
 *   xv  RB/2 x Dp x 2 bf16, rows interleaved in pairs (B operand of the backward);
 *   wv  Dp/2 x 2Kp x 2 bf16, [W_hi | W_lo] interleaved in pairs of k (B, forward);
 *   z   RB x Kp float, the forward product X_b (W_hi + W_lo);
 *   gt  2Kp x RB bf16, [G_hi | G_lo]^T (A operand of the backward);
 *   pt  Kp x Dp float, the backward product (G_hi + G_lo)^T X_b, accumulated over
 *       the blocks of a chunk.
 * Every tile is 16 rows x 64 bytes; the kernels keep four accumulator tiles (2 x 2;
 * 2 x 1 for an odd last tile of classes).
 * Results depend only on the block and chunk boundaries, never on the thread.
 */
#define _GNU_SOURCE /* syscall() in glibc */
#include "internal.h"
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(IIS_NO_SIMD) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define IIS_HAVE_AMX_BUILD 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif


#define RB IIS_AMX_RB

#ifdef IIS_HAVE_AMX_BUILD
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#define AMX_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,amx-tile,amx-bf16")))

/* CPU and OS support: AMX-TILE, AMX-BF16 and AVX512-BF16 in CPUID, the tile state
 * enabled in XCR0, and Linux's permission for this process to use it (asked once;
 * a kernel that refuses it leaves the float32 passes). */
static int amx_probe(void)
{
    unsigned a, b, c, d, xlo, xhi;
    if (__get_cpuid_max(0, NULL) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    if (!(d & (1u << 24)) || !(d & (1u << 22))) return 0; /* AMX-TILE, AMX-BF16 */
    if (!(b & (1u << 16)) || !(b & (1u << 30))) return 0; /* AVX512F, AVX512BW */
    __cpuid_count(7, 1, a, b, c, d);
    if (!(a & (1u << 5))) return 0; /* AVX512-BF16 */
    __cpuid(1, a, b, c, d);
    if (!(c & (1u << 27))) return 0; /* OSXSAVE */
    __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    if ((xlo & 0xE6u) != 0xE6u) return 0;              /* SSE, AVX, AVX-512 state */
    if ((xlo & (3u << 17)) != (3u << 17)) return 0;    /* XTILECFG, XTILEDATA */
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}
#endif

int iis_amx_available(void)
{
#ifdef IIS_HAVE_AMX_BUILD
    static int have = -1;
    int h = LOAD_ONCE(have);
    if (h < 0) {
        h = amx_probe();
        STORE_ONCE(have, h);
    }
    return h;
#else
    return 0;
#endif
}

const char *iis_solver_kernel(const iis_ctx *ctx)
{
    return iis_use_amx(ctx) ? "amx-bf16" : "blas";
}

int iis_amx_dpad(int d) { return (d + 31) / 32 * 32; }
int iis_amx_kpad(int K) { return (K + 15) / 16 * 16; }

/* round to nearest even, as the conversion instructions do (NaN is never passed) */
static inline uint16_t to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float from_bf16(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

void iis_amx_pack_w(const double *w, int d, int K, uint16_t *wv)
{
    const int Kp = iis_amx_kpad(K), K2 = 2 * Kp, Dp = iis_amx_dpad(d);
    memset(wv, 0, sizeof(uint16_t) * (size_t)Dp * (size_t)K2);
    for (int k = 0; k < d; k++) {
        uint16_t *row = wv + (size_t)(k / 2) * K2 * 2 + (k & 1);
        for (int q = 0; q < K; q++) {
            float v = (float)w[(size_t)k * K + q];
            uint16_t h = to_bf16(v);
            row[(size_t)q * 2] = h;
            row[(size_t)(Kp + q) * 2] = to_bf16(v - from_bf16(h));
        }
    }
}

#ifdef IIS_HAVE_AMX_BUILD
/* The tile configuration is read from memory by ldtilecfg; GCC 12 does not see
 * that read through the intrinsic and drops the stores that fill a local one, so
 * it is a constant object. */
static const struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_cfg = {1, 0, {0}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};

AMX_TARGET void iis_amx_begin(void) { _tile_loadconfig(&tile_cfg); }
AMX_TARGET void iis_amx_end(void) { _tile_release(); }

/* The 2 x 2 block of accumulator tiles 0-3 at c (row stride ld floats): tile 0 at c,
 * 1 at c + 16, 2 at c + 16 ld, 3 at c + 16 ld + 16 */
static inline AMX_TARGET void acc_zero(void)
{
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
}

static inline AMX_TARGET void acc_load(const float *c, int ld)
{
    _tile_loadd(0, c, ld * 4);
    _tile_loadd(1, c + 16, ld * 4);
    _tile_loadd(2, c + (size_t)16 * ld, ld * 4);
    _tile_loadd(3, c + (size_t)16 * ld + 16, ld * 4);
}

static inline AMX_TARGET void acc_store(float *c, int ld)
{
    _tile_stored(0, c, ld * 4);
    _tile_stored(1, c + 16, ld * 4);
    _tile_stored(2, c + (size_t)16 * ld, ld * 4);
    _tile_stored(3, c + (size_t)16 * ld + 16, ld * 4);
}

/* accumulators += [A0; A1] [B0 B1]: A tiles (16 rows x 32 bf16) at a0, a1 with row
 * stride lda bytes, B tiles (16 pairs x 16 columns) at b and b + 32 with stride ldb */
static inline AMX_TARGET void acc_madd(const uint16_t *a0, const uint16_t *a1, int lda,
                                       const uint16_t *b, int ldb)
{
    _tile_loadd(4, a0, lda);
    _tile_loadd(5, a1, lda);
    _tile_loadd(6, b, ldb);
    _tile_loadd(7, b + 32, ldb);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
}

/* the bf16 halves of a (32 values) back in float32: the low 16 lanes, the high 16 */
static inline AMX_TARGET __m512 bf16_low16(__m512i a)
{
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(a)), 16));
}

static inline AMX_TARGET __m512 bf16_high16(__m512i a)
{
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(a, 1)), 16));
}

/* xa, xv = the block's standardised rows in bf16 (rows >= `rows` zero); with xal, xvl
 * also the remainders x - bf16(x) in bf16, same layouts (the precise passes) */
AMX_TARGET void iis_amx_convert(const float *x, int64_t ldx, int d, const float *mu,
                                const float *isg, int rows, uint16_t *xa, uint16_t *xv,
                                uint16_t *xal, uint16_t *xvl)
{
    const int Dp = iis_amx_dpad(d);
    __m512i ilo, ihi;
    {
        uint16_t a[32], b[32];
        for (int m = 0; m < 16; m++) {
            a[2 * m] = (uint16_t)m;
            a[2 * m + 1] = (uint16_t)(32 + m);
            b[2 * m] = (uint16_t)(16 + m);
            b[2 * m + 1] = (uint16_t)(48 + m);
        }
        ilo = _mm512_loadu_si512(a);
        ihi = _mm512_loadu_si512(b);
    }
    for (int p = 0; p < RB / 2; p++) {
        const int r0 = 2 * p, r1 = r0 + 1;
        const float *x0 = x + (int64_t)r0 * ldx, *x1 = x + (int64_t)r1 * ldx;
        for (int j = 0; j < Dp; j += 32) {
            __mmask16 m0 = iis_lanes16(d - j), m1 = iis_lanes16(d - j - 16);
            __m512 mu0 = _mm512_maskz_loadu_ps(m0, mu + j), mu1 = _mm512_maskz_loadu_ps(m1, mu + j + 16);
            __m512 s0 = _mm512_maskz_loadu_ps(m0, isg + j), s1 = _mm512_maskz_loadu_ps(m1, isg + j + 16);
            __m512 l0 = _mm512_setzero_ps(), h0 = l0, l1 = l0, h1 = l0;
            __m512i a, b;
            if (r0 < rows) {
                l0 = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m0, x0 + j), mu0), s0);
                h0 = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m1, x0 + j + 16), mu1), s1);
            }
            if (r1 < rows) {
                l1 = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m0, x1 + j), mu0), s0);
                h1 = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m1, x1 + j + 16), mu1), s1);
            }
            a = (__m512i)_mm512_cvtne2ps_pbh(h0, l0);
            b = (__m512i)_mm512_cvtne2ps_pbh(h1, l1);
            _mm512_storeu_si512(xa + (size_t)r0 * Dp + j, a);
            _mm512_storeu_si512(xa + (size_t)r1 * Dp + j, b);
            _mm512_storeu_si512(xv + ((size_t)p * Dp + j) * 2, _mm512_permutex2var_epi16(a, ilo, b));
            _mm512_storeu_si512(xv + ((size_t)p * Dp + j + 16) * 2,
                                _mm512_permutex2var_epi16(a, ihi, b));
            if (xal) { /* x - hi is exact in float32 */
                __m512i ra = (__m512i)_mm512_cvtne2ps_pbh(_mm512_sub_ps(h0, bf16_high16(a)),
                                                          _mm512_sub_ps(l0, bf16_low16(a)));
                __m512i rb = (__m512i)_mm512_cvtne2ps_pbh(_mm512_sub_ps(h1, bf16_high16(b)),
                                                          _mm512_sub_ps(l1, bf16_low16(b)));
                _mm512_storeu_si512(xal + (size_t)r0 * Dp + j, ra);
                _mm512_storeu_si512(xal + (size_t)r1 * Dp + j, rb);
                _mm512_storeu_si512(xvl + ((size_t)p * Dp + j) * 2, _mm512_permutex2var_epi16(ra, ilo, rb));
                _mm512_storeu_si512(xvl + ((size_t)p * Dp + j + 16) * 2,
                                    _mm512_permutex2var_epi16(ra, ihi, rb));
            }
        }
    }
}

/* accumulators += [A0; A1] [B0 B1] with the A tiles already in tiles 4 and 5, B0 and B1
 * (16 pairs x 16 columns each) at b0 and b1 with row stride ldb bytes */
static inline AMX_TARGET void b_madd(const uint16_t *b0, const uint16_t *b1, int ldb)
{
    _tile_loadd(6, b0, ldb);
    _tile_loadd(7, b1, ldb);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
}

/* z (RB x Kp) = X_b (W_hi + W_lo), + X_lo W_hi with xal (the precise passes): per pair
 * of row tiles and pair of class tiles, the A tiles loaded once for the hi and the lo
 * B tiles; an odd last class tile takes its hi and lo tiles as the pair */
AMX_TARGET void iis_amx_forward(const uint16_t *xa, const uint16_t *xal, const uint16_t *wv, int d,
                                int K, float *z)
{
    const int Dp = iis_amx_dpad(d), Kp = iis_amx_kpad(K), K2 = 2 * Kp, CT = Kp / 16;
    const int lda = Dp * 2, ldb = K2 * 4;
    for (int rt = 0; rt < RB / 16; rt += 2) {
        const uint16_t *a0 = xa + (size_t)rt * 16 * Dp, *a1 = a0 + (size_t)16 * Dp;
        const uint16_t *e0 = xal ? xal + (size_t)rt * 16 * Dp : NULL, *e1 = e0 ? e0 + (size_t)16 * Dp : NULL;
        int ct = 0;
        for (; ct + 1 < CT; ct += 2) {
            acc_zero();
            for (int kk = 0; kk < Dp / 32; kk++) {
                const uint16_t *b = wv + (size_t)kk * 16 * K2 * 2;
                _tile_loadd(4, a0 + kk * 32, lda);
                _tile_loadd(5, a1 + kk * 32, lda);
                b_madd(b + (size_t)ct * 32, b + (size_t)(ct + 1) * 32, ldb);           /* W_hi */
                b_madd(b + (size_t)(CT + ct) * 32, b + (size_t)(CT + ct + 1) * 32, ldb); /* W_lo */
                if (e0) {
                    _tile_loadd(4, e0 + kk * 32, lda);
                    _tile_loadd(5, e1 + kk * 32, lda);
                    b_madd(b + (size_t)ct * 32, b + (size_t)(ct + 1) * 32, ldb); /* X_lo W_hi */
                }
            }
            acc_store(z + (size_t)rt * 16 * Kp + (size_t)ct * 16, Kp);
        }
        if (ct < CT) {
            _tile_zero(0);
            _tile_zero(2);
            for (int kk = 0; kk < Dp / 32; kk++) {
                const uint16_t *b = wv + (size_t)kk * 16 * K2 * 2;
                _tile_loadd(4, a0 + kk * 32, lda);
                _tile_loadd(5, a1 + kk * 32, lda);
                _tile_loadd(6, b + (size_t)ct * 32, ldb);
                _tile_loadd(7, b + (size_t)(CT + ct) * 32, ldb);
                _tile_dpbf16ps(0, 4, 6);
                _tile_dpbf16ps(2, 5, 6);
                _tile_dpbf16ps(0, 4, 7);
                _tile_dpbf16ps(2, 5, 7);
                if (e0) { /* tile 6 still holds W_hi */
                    _tile_loadd(4, e0 + kk * 32, lda);
                    _tile_loadd(5, e1 + kk * 32, lda);
                    _tile_dpbf16ps(0, 4, 6);
                    _tile_dpbf16ps(2, 5, 6);
                }
            }
            _tile_stored(0, z + (size_t)rt * 16 * Kp + (size_t)ct * 16, Kp * 4);
            _tile_stored(2, z + (size_t)(rt + 1) * 16 * Kp + (size_t)ct * 16, Kp * 4);
        }
    }
}

/* 16 x 16 transpose of 32-bit lanes in registers */
static inline AMX_TARGET void transpose16(__m512i *r)
{
    __m512i t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 4; j++) {
            t[8 * i + j] = _mm512_shuffle_i32x4(r[8 * i + j], r[8 * i + j + 4], 0x88);
            t[8 * i + j + 4] = _mm512_shuffle_i32x4(r[8 * i + j], r[8 * i + j + 4], 0xdd);
        }
    for (int j = 0; j < 8; j++) {
        r[j] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0x88);
        r[j + 8] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0xdd);
    }
}

/* gt (2Kp x RB) = [G_hi | G_lo]^T for the rows x K residuals g; rows >= `rows` and
 * classes >= K are zero. A pair of rows (2p, 2p + 1) of one class is one 32-bit unit
 * of gt; 16 pairs x 16 classes are formed in registers and transposed there. */
AMX_TARGET void iis_amx_residuals(const float *g, int rows, int K, uint16_t *gt)
{
    const int Kp = iis_amx_kpad(K), half = RB / 2;
    uint32_t *gt32 = (uint32_t *)gt;
    for (int p0 = 0; p0 < half; p0 += 16)
        for (int q = 0; q < Kp; q += 16) {
            __m512i hv[16], lv[16];
            __mmask16 m = iis_lanes16(K - q);
            for (int t = 0; t < 16; t++) {
                const int r0 = 2 * (p0 + t), r1 = r0 + 1;
                __m512 g0 = r0 < rows ? _mm512_maskz_loadu_ps(m, g + (size_t)r0 * K + q) : _mm512_setzero_ps();
                __m512 g1 = r1 < rows ? _mm512_maskz_loadu_ps(m, g + (size_t)r1 * K + q) : _mm512_setzero_ps();
                __m512i h0 = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(g0));
                __m512i h1 = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(g1));
                __m512 l0 = _mm512_sub_ps(g0, _mm512_castsi512_ps(_mm512_slli_epi32(h0, 16)));
                __m512 l1 = _mm512_sub_ps(g1, _mm512_castsi512_ps(_mm512_slli_epi32(h1, 16)));
                __m512i e0 = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(l0));
                __m512i e1 = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(l1));
                hv[t] = _mm512_or_si512(h0, _mm512_slli_epi32(h1, 16));
                lv[t] = _mm512_or_si512(e0, _mm512_slli_epi32(e1, 16));
            }
            transpose16(hv);
            transpose16(lv);
            for (int t = 0; t < 16; t++) {
                _mm512_storeu_si512(gt32 + (size_t)(q + t) * half + p0, hv[t]);
                _mm512_storeu_si512(gt32 + (size_t)(Kp + q + t) * half + p0, lv[t]);
            }
        }
}

/* gt (Dp x RB bf16) = the block's rows as the A operand of the backward tiles, from
 * xv: unit (j, p) of gt (32 bits: rows 2p and 2p + 1 of column j) is unit (p, j) of
 * xv, so gt is xv's 32-bit transpose, done in 16 x 16 register blocks. With it,
 * iis_amx_gram_backward(gt, xv, d, ...) accumulates the block's Gram X_b^T X_b. */
AMX_TARGET void iis_amx_gram_operand(const uint16_t *xv, int d, uint16_t *gt)
{
    const int Dp = iis_amx_dpad(d), half = RB / 2;
    const uint32_t *xv32 = (const uint32_t *)xv;
    uint32_t *gt32 = (uint32_t *)gt;
    for (int p0 = 0; p0 < half; p0 += 16)
        for (int j0 = 0; j0 < Dp; j0 += 16) {
            __m512i r[16];
            for (int t = 0; t < 16; t++) r[t] = _mm512_loadu_si512(xv32 + (size_t)(p0 + t) * Dp + j0);
            transpose16(r);
            for (int t = 0; t < 16; t++) _mm512_storeu_si512(gt32 + (size_t)(j0 + t) * half + p0, r[t]);
        }
}

/* pt (Kp x Dp) = (G_hi + G_lo)^T X_b, + G_hi^T X_lo with xvl (the precise passes), or
 * += unless first: per pair of class tiles and pair of column tiles, the xv tiles
 * loaded once for the hi and the lo A tiles */
AMX_TARGET void iis_amx_backward_hilo(const uint16_t *gt, const uint16_t *xv, const uint16_t *xvl,
                                      int d, int K, float *pt, int first)
{
    const int Dp = iis_amx_dpad(d), Kp = iis_amx_kpad(K), QT = Kp / 16;
    const int lda = RB * 2, ldb = Dp * 4, ldc = Dp * 4;
    for (int qt = 0; qt < QT; qt += 2) {
        const int two = qt + 1 < QT;
        const uint16_t *h0 = gt + (size_t)qt * 16 * RB, *h1 = h0 + (size_t)16 * RB;
        const uint16_t *l0 = h0 + (size_t)Kp * RB, *l1 = l0 + (size_t)16 * RB;
        for (int jt = 0; jt < Dp / 16; jt += 2) {
            float *c = pt + (size_t)qt * 16 * Dp + (size_t)jt * 16;
            if (first) {
                acc_zero();
            } else if (two) {
                acc_load(c, Dp);
            } else {
                _tile_loadd(0, c, ldc);
                _tile_loadd(1, c + 16, ldc);
            }
            for (int pp = 0; pp < RB / 32; pp++) {
                const uint16_t *b = xv + ((size_t)pp * 16 * Dp + (size_t)jt * 16) * 2;
                _tile_loadd(6, b, ldb);
                _tile_loadd(7, b + 32, ldb);
                _tile_loadd(4, h0 + pp * 32, lda);
                _tile_loadd(5, l0 + pp * 32, lda);
                _tile_dpbf16ps(0, 4, 6);
                _tile_dpbf16ps(1, 4, 7);
                _tile_dpbf16ps(0, 5, 6);
                _tile_dpbf16ps(1, 5, 7);
                if (two) {
                    _tile_loadd(4, h1 + pp * 32, lda);
                    _tile_loadd(5, l1 + pp * 32, lda);
                    _tile_dpbf16ps(2, 4, 6);
                    _tile_dpbf16ps(3, 4, 7);
                    _tile_dpbf16ps(2, 5, 6);
                    _tile_dpbf16ps(3, 5, 7);
                }
                if (xvl) {
                    const uint16_t *bl = xvl + ((size_t)pp * 16 * Dp + (size_t)jt * 16) * 2;
                    _tile_loadd(6, bl, ldb);
                    _tile_loadd(7, bl + 32, ldb);
                    _tile_loadd(4, h0 + pp * 32, lda);
                    _tile_dpbf16ps(0, 4, 6);
                    _tile_dpbf16ps(1, 4, 7);
                    if (two) {
                        _tile_loadd(5, h1 + pp * 32, lda);
                        _tile_dpbf16ps(2, 5, 6);
                        _tile_dpbf16ps(3, 5, 7);
                    }
                }
            }
            if (two) {
                acc_store(c, Dp);
            } else {
                _tile_stored(0, c, ldc);
                _tile_stored(1, c + 16, ldc);
            }
        }
    }
}

/* pt (Dp x Dp) = X_b^T X_b, or += unless first: the Gram's products (gt from
 * iis_amx_gram_operand). Only the pairs of tiles on and above the diagonal: the Gram's
 * users read its upper triangle (row j, columns r >= j), so half the products are
 * never taken (W1's probe: 89 -> 47-74 ms for its Gram) */
AMX_TARGET void iis_amx_gram_backward(const uint16_t *gt, const uint16_t *xv, int d, float *pt,
                                      int first)
{
    const int Dp = iis_amx_dpad(d);
    for (int qt = 0; qt < Dp / 16; qt += 2)
        for (int jt = qt; jt < Dp / 16; jt += 2) {
            float *c = pt + (size_t)qt * 16 * Dp + (size_t)jt * 16;
            if (first) acc_zero();
            else acc_load(c, Dp);
            for (int pp = 0; pp < RB / 32; pp++)
                acc_madd(gt + (size_t)qt * 16 * RB + (size_t)pp * 32,
                         gt + (size_t)(qt + 1) * 16 * RB + (size_t)pp * 32, RB * 2,
                         xv + ((size_t)pp * 16 * Dp + (size_t)jt * 16) * 2, Dp * 4);
            acc_store(c, Dp);
        }
}
#else
/* never called: iis_amx_available() is 0 in this build */
void iis_amx_begin(void) {}
void iis_amx_end(void) {}
void iis_amx_convert(const float *x, int64_t ldx, int d, const float *mu, const float *isg,
                     int rows, uint16_t *xa, uint16_t *xv, uint16_t *xal, uint16_t *xvl)
{
}
void iis_amx_forward(const uint16_t *xa, const uint16_t *xal, const uint16_t *wv, int d, int K,
                     float *z)
{
}
void iis_amx_residuals(const float *g, int rows, int K, uint16_t *gt) {}
void iis_amx_gram_backward(const uint16_t *gt, const uint16_t *xv, int d, float *pt, int first)
{
}
void iis_amx_backward_hilo(const uint16_t *gt, const uint16_t *xv, const uint16_t *xvl, int d,
                           int K, float *pt, int first)
{
}
void iis_amx_gram_operand(const uint16_t *xv, int d, uint16_t *gt) {}
#endif
