/* CPU fast path of akvq.quant: the normalized Walsh-Hadamard transform and the asymmetric per-group quantizer,
 * bit-identical to the torch code in hadamard.py / uniform.py (same fp32 operations in the same order, IEEE
 * rounding, no fused multiply-add, no reassociation: build with -ffp-contract=off and without fast-math).
 *
 * Why: a decode step quantizes one token per store (B rows of a few hundred channels). In torch that is ~80
 * small operator calls per store, ~1 ms, 60 stores per step for SmolLM2; here it is one call of a few us.
 *
 * akvq_quantize returns 0 when every group's scale and zero round to fp16 within a quarter step (then codes,
 * scale and zero hold the result), 1 when some group needs fp32 metadata, 2 when an element is not finite: the
 * caller then takes the torch path, which handles both cases for the whole piece. */
#include <math.h>
#include <stdint.h>
#include <string.h>

/* fp32 -> fp16 bits, round to nearest even (F. Giesen's float_to_half_fast3_rtne; NaN -> 0x7e00). */
static uint16_t f2h(float f) {
    const uint32_t f32infty = 255u << 23, f16max = (127u + 16u) << 23;
    const uint32_t denorm_magic_u = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    uint32_t u;
    memcpy(&u, &f, 4);
    const uint32_t sign = u & 0x80000000u;
    u ^= sign;
    uint16_t o;
    if (u >= f16max) {
        o = (u > f32infty) ? 0x7e00 : 0x7c00;
    } else if (u < (113u << 23)) {
        float fu, dm;
        memcpy(&fu, &u, 4);
        memcpy(&dm, &denorm_magic_u, 4);
        fu += dm;
        uint32_t r;
        memcpy(&r, &fu, 4);
        o = (uint16_t)(r - denorm_magic_u);
    } else {
        const uint32_t mant_odd = (u >> 13) & 1u;
        u += ((uint32_t)(15 - 127) << 23) + 0xfffu;
        u += mant_odd;
        o = (uint16_t)(u >> 13);
    }
    return (uint16_t)(o | (sign >> 16));
}

static float h2f(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        float f = (float)mant * 5.9604644775390625e-8f; /* 2^-24: exact */
        memcpy(&u, &f, 4);
        u |= sign;
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (mant << 13);
    } else {
        u = sign | ((exp + 112u) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Elements per call below which OpenMP's fork costs more than it saves (a decode step's q at batch 8: 4,608). */
#define PAR_MIN_ELEMS 16384

static int n_threads(int64_t nthreads, int64_t elems) {
    return nthreads > 1 && elems >= PAR_MIN_ELEMS ? (int)nthreads : 1;
}

/* `rows` rows of d floats (d a power of two) from x into y (x == y: in place): the butterflies of hadamard.fwht,
 * then / sqrt_d. Rows are independent, so threads split them without changing a single operation; each copies
 * its own rows first (no separate clone pass over the whole tensor). */
int akvq_fwht(const float *x, float *out, int64_t rows, int64_t d, float sqrt_d, int64_t nthreads) {
    const int nt = n_threads(nthreads, rows * d);
    (void)nt;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t r = 0; r < rows; r++) {
        float *y = out + r * d;
        if (x != out) memcpy(y, x + r * d, sizeof(float) * (size_t)d);
        for (int64_t h = 1; h < d; h *= 2)
            for (int64_t j = 0; j < d; j += 2 * h)
                for (int64_t i = j; i < j + h; i++) {
                    const float a = y[i], b = y[i + h];
                    y[i] = a + b;
                    y[i + h] = a - b;
                }
        for (int64_t i = 0; i < d; i++) y[i] = y[i] / sqrt_d;
    }
    return 0;
}

/* x: [rows, n] fp32; groups of `group` along n; codes: [rows, (n * bits + 7) / 8] (first code in the lowest
 * bits); scale, zero: fp16 bits [rows, n / group]. `center`: clip around the group's midpoint, else r*min, r*max. */
/* uniform._params: fp32 scale and zero point of a group with finite range [mn, mx] at clip ratio `ratio`. */
static void params(float mn, float mx, float qmax, float ratio, int64_t float_zero, int64_t center, float *s_out,
                   float *z_out) {
    float a, c;
    if (center) {
        const float mid = mn / 2.0f + mx / 2.0f, half = (mx / 2.0f - mn / 2.0f) * ratio;
        a = mid - half;
        c = mid + half;
    } else {
        a = mn * ratio;
        c = mx * ratio;
    }
    float s = c / qmax - a / qmax, z;
    const int flat = s < 1.17549435e-38f; /* FLT_MIN */
    if (float_zero) {
        if (flat) s = 1.0f;
        z = flat ? mn : a;
    } else {
        const float v = flat ? mn : a;
        if (flat) s = fabsf(v) < 1e-6f ? 1e-6f : fabsf(v);
        z = -nearbyintf(v / s);
    }
    *s_out = s;
    *z_out = z;
}

static float fake_code(float x, float s, float z, float qmax, int64_t float_zero) {
    float q = float_zero ? nearbyintf((x - z) / s) : nearbyintf(x / s) + z;
    if (q != q) q = 0.0f;
    return q < 0.0f ? 0.0f : (q > qmax ? qmax : q);
}

/* The clip search's squared error of one group at (s, z): each term as fake_code and uniform._fake compute it
 * (fp32, IEEE), the sum in double. */
static double search_err(const float *xg, int64_t group, float s, float z, float qmax, int64_t float_zero) {
    double e = 0.0;
    for (int64_t i = 0; i < group; i++) {
        const float q = fake_code(xg[i], s, z, qmax, float_zero);
        const float d = (float_zero ? s * q + z : s * (q - z)) - xg[i];
        e += (double)(d * d);
    }
    return e;
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(AKVQ_SEARCH_SCALAR)
#include <immintrin.h>
/* search_err 8 elements at a time (AVX2, chosen at run time; the library is built for the baseline x86-64): the
 * same fp32 operations per element (division, round to nearest even, the clamp by compares, no FMA), so the same
 * terms; only the double sum's order differs, by ~1e-15 relative, far inside the near-tie band (tol below) that
 * goes to torch. The search was ~90 % of a long prefill's quantizing (12 ratios x every element, scalar).
 * -DAKVQ_SEARCH_SCALAR: the scalar search only (tests compare the two). */
__attribute__((target("avx2"))) static double search_err_avx2(const float *xg, int64_t group, float s, float z,
                                                              float qmax, int64_t float_zero) {
    const __m256 vs = _mm256_set1_ps(s), vz = _mm256_set1_ps(z), vq = _mm256_set1_ps(qmax), v0 = _mm256_setzero_ps();
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
    int64_t i = 0;
    for (; i + 8 <= group; i += 8) {
        const __m256 x = _mm256_loadu_ps(xg + i);
        __m256 q = float_zero ? _mm256_round_ps(_mm256_div_ps(_mm256_sub_ps(x, vz), vs),
                                                _MM_FROUND_CUR_DIRECTION | _MM_FROUND_NO_EXC)
                              : _mm256_add_ps(_mm256_round_ps(_mm256_div_ps(x, vs),
                                                              _MM_FROUND_CUR_DIRECTION | _MM_FROUND_NO_EXC), vz);
        q = _mm256_and_ps(q, _mm256_cmp_ps(q, q, _CMP_ORD_Q));                  /* NaN -> 0 */
        q = _mm256_blendv_ps(q, v0, _mm256_cmp_ps(q, v0, _CMP_LT_OQ));            /* q < 0: 0 */
        q = _mm256_blendv_ps(q, vq, _mm256_cmp_ps(q, vq, _CMP_GT_OQ));            /* q > qmax: qmax */
        const __m256 y = float_zero ? _mm256_add_ps(_mm256_mul_ps(vs, q), vz) : _mm256_mul_ps(vs, _mm256_sub_ps(q, vz));
        const __m256 d = _mm256_sub_ps(y, x), dd = _mm256_mul_ps(d, d);
        a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm256_castps256_ps128(dd)));
        a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm256_extractf128_ps(dd, 1)));
    }
    double t[4];
    _mm256_storeu_pd(t, _mm256_add_pd(a0, a1));
    double e = (t[0] + t[1]) + (t[2] + t[3]);
    if (i < group) e += search_err(xg + i, group - i, s, z, qmax, float_zero);
    return e;
}
static int have_avx2(void) { return __builtin_cpu_supports("avx2") ? 1 : 0; }
#else
static double search_err_avx2(const float *xg, int64_t group, float s, float z, float qmax, int64_t float_zero) {
    return search_err(xg, group, s, z, qmax, float_zero);
}
static int have_avx2(void) { return 0; }
#endif

/* `grid` (ngrid > 0): uniform.quantize's clip search, the ratio with the least squared error per group. torch
 * sums the errors in fp32 in its own order, here they are summed in double: when another ratio's error is within
 * twice fp32's worst-case summation error of the best one, torch's order could decide, and the call returns 4 (the
 * caller takes torch). */
/* One row of akvq_quantize; 0 or the reason the caller must take torch's path. */
static int quantize_row(const float *xr, int64_t n, int64_t group, int64_t bits, float ratio, const float *grid,
                        int64_t ngrid, int64_t float_zero, int64_t center, int vec, uint8_t *cr, uint16_t *scale,
                        uint16_t *zero) {
    const float qmax = (float)((1 << bits) - 1);
    const int64_t ng = n / group, row_bytes = (n * bits + 7) / 8, per = 8 / bits;
    memset(cr, 0, (size_t)row_bytes);
    for (int64_t g = 0; g < ng; g++) {
        const float *xg = xr + g * group;
        float mn = INFINITY, mx = -INFINITY;
        for (int64_t i = 0; i < group; i++) {
            const float v = xg[i];
            if (!isfinite(v)) return 2;
            mn = v < mn ? v : mn;
            mx = v > mx ? v : mx;
        }
        float s, z;
        if (ngrid > 0) {
            double err[64];
            int64_t best = 0;
            for (int64_t k = 0; k < ngrid; k++) {
                float sk, zk;
                params(mn, mx, qmax, grid[k], float_zero, center, &sk, &zk);
                err[k] = vec ? search_err_avx2(xg, group, sk, zk, qmax, float_zero)
                             : search_err(xg, group, sk, zk, qmax, float_zero);
                if (err[k] < err[best]) best = k;
            }
            const double tol = 1.5e-7 * (double)group; /* > 2 n u: two fp32 sums of n terms keep their order */
            for (int64_t k = 0; k < ngrid; k++)
                if (k != best && err[k] - err[best] <= tol * err[best] && !(err[k] == 0.0 && err[best] == 0.0))
                    return 4;
            params(mn, mx, qmax, grid[best], float_zero, center, &s, &z);
        } else {
            params(mn, mx, qmax, ratio, float_zero, center, &s, &z);
        }
        /* uniform.meta_dtype: fp16 scale/zero must move the grid by at most a quarter step */
        const uint16_t sh = f2h(s), zh = f2h(z);
        const float s16 = h2f(sh), z16 = h2f(zh);
        const float ds = fabsf(s16 - s), dz = fabsf(z16 - z);
        const float moved = float_zero ? dz + qmax * ds : (qmax + fabsf(z)) * ds + s16 * dz;
        const float step = (mx - mn) / qmax;
        if (!(isfinite(s16) && isfinite(z16) && moved <= step / 4.0f)) return 1;
        scale[g] = sh;
        zero[g] = zh;
        for (int64_t i = 0; i < group; i++) {
            const float q = fake_code(xg[i], s16, z16, qmax, float_zero);
            const int64_t k = g * group + i;
            cr[k / per] |= (uint8_t)((uint8_t)q << ((k % per) * bits));
        }
    }
    return 0;
}

/* Rows in parallel (each row's result is the same operations as alone); any row's nonzero code makes the call
 * return nonzero (the largest such code), and the caller then quantizes the whole piece in torch. With `row_rc`
 * (one byte per row), a clip-search near-tie (4) does not: that row's code goes to row_rc[r] and the call returns
 * 4 only when no row had another reason, so the caller settles just those rows in torch (at a long prefill nearly
 * every piece holds one such group, and the whole piece in torch was ~4x the rest of the quantizing). */
int akvq_quantize(const float *x, int64_t rows, int64_t n, int64_t group, int64_t bits, float ratio,
                  const float *grid, int64_t ngrid, int64_t float_zero, int64_t center, uint8_t *codes,
                  uint16_t *scale, uint16_t *zero, int8_t *row_rc, int64_t nthreads) {
    if ((bits != 1 && bits != 2 && bits != 4 && bits != 8) || ngrid > 64) return 3;
    const int64_t ng = n / group, row_bytes = (n * bits + 7) / 8;
    const int nt = n_threads(nthreads, rows * n);
    const int vec = ngrid > 0 && have_avx2(); /* once per call, before the threads: the search's AVX2 sums */
    int rc = 0, tie = 0;
    (void)nt;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1) reduction(max : rc) reduction(| : tie)
    for (int64_t r = 0; r < rows; r++) {
        if (rc > 0) continue; /* the private copy starts at INT_MIN, the identity of max */
        const int e = quantize_row(x + r * n, n, group, bits, ratio, grid, ngrid, float_zero, center, vec,
                                   codes + r * row_bytes, scale + r * ng, zero + r * ng);
        if (row_rc) row_rc[r] = (int8_t)e;
        if (e == 4 && row_rc) tie = 1;
        else rc = e > rc ? e : rc;
    }
    return rc > 0 ? rc : tie ? 4 : 0;
}
