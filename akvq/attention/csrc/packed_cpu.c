/* Decode attention over akvq's packed KV rows on the CPU: scores q.k and outputs sum_t p_t v_t, read straight
 * from the 1/2/3/4/8-bit codes. One pass over the bytes, no full-precision K/V: each row segment is unpacked
 * into a small stack buffer and reduced against every query head of its group at once.
 *
 * Layouts (see akvq/cache/store.py):
 *   token axis: rows in the store's order (token_rows in store.py; tok_row below); cls[r] is row r's class (0 low,
 *     1 text, 2 16-bit).
 *     Class c's rows are stored contiguously in its own table, in token order: codes [N_c, W * bits_c / 8],
 *     scale/zero [N_c, W / group] as IEEE half. W = H * D. Dequantized: x = s * (c - z), or s * c + z when
 *     float_zero (z then holds the group minimum). 16-bit rows are skipped here; the caller writes them.
 *   channel axis: codes [B, W, T * bits / 8] packed along tokens, scale/zero [B, W, T / group].
 * q is [B, H, G, D] (already in the stored space); scores and p are float32 [B, H, G, T] with given strides.
 * Build: see FLAGS in packed_cpu.py (reassociation, no -ffast-math; OpenMP optional). Builds (VARIANTS there):
 * avx512 (AVX-512 F/BW/VL + VNNI: vpdpbusd for the int8 key dots, 16-wide fp16 control), avx2, portable. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#define MAXSEG 512
#define TCH 64 /* tokens per work item of the batch-major kernels (see there) */
#ifndef AKVQ_QGATHER
#define AKVQ_QGATHER 1 /* scale/zero halves of up to 4 groups a row by qword gathers (halves16q) */
#endif
#ifndef AKVQ_SHAREIDX
#define AKVQ_SHAREIDX 1 /* the fused kernel builds one row index when K and V have the same classes */
#endif
#ifndef AKVQ_FCH
#define AKVQ_FCH 64 /* tokens per item of the fused kernel (akvq_token_decode); 128 and 256 were 2% and 4% slower at batch 79 */
#endif

static inline float half_to_float(uint16_t h) {
#ifdef __F16C__
    return _cvtsh_ss(h);
#endif
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: renormalize */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* n halfs -> floats (8 at a time with F16C) */
static inline void half_run(const uint16_t *src, int64_t n, float *dst) {
    int64_t i = 0;
#ifdef __F16C__
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
#endif
    for (; i < n; i++) dst[i] = half_to_float(src[i]);
}

/* codes of channels [first, first + n) of a packed row -> floats */
static inline void unpack_run(const uint8_t *row, int bits, int64_t first, int n, float *f) {
    const int aligned = (first * bits) % 8 == 0 && ((int64_t)n * bits) % 8 == 0;
    switch (aligned ? bits : 0) {
    case 8:
        for (int i = 0; i < n; i++) f[i] = (float)row[first + i];
        break;
    case 4: {
        const uint8_t *p = row + first / 2;
        for (int j = 0; j < n / 2; j++) { f[2 * j] = (float)(p[j] & 15); f[2 * j + 1] = (float)(p[j] >> 4); }
        break;
    }
    case 2: {
        const uint8_t *p = row + first / 4;
        for (int j = 0; j < n / 4; j++) {
            uint8_t v = p[j];
            f[4 * j] = (float)(v & 3); f[4 * j + 1] = (float)((v >> 2) & 3);
            f[4 * j + 2] = (float)((v >> 4) & 3); f[4 * j + 3] = (float)(v >> 6);
        }
        break;
    }
    case 1: {
        const uint8_t *p = row + first / 8;
        for (int i = 0; i < n; i++) f[i] = (float)((p[i >> 3] >> (i & 7)) & 1);
        break;
    }
    default: /* any width: a little-endian bit stream, code i at bit (first + i) * bits */
        for (int i = 0; i < n; i++) {
            int64_t bit = (first + i) * bits;
            uint32_t w = row[bit >> 3];
            if ((bit & 7) + bits > 8) w |= (uint32_t)row[(bit >> 3) + 1] << 8;
            f[i] = (float)((w >> (bit & 7)) & ((1u << bits) - 1));
        }
    }
}

/* Plane-major order: a segment's bytes are taken 8 at a time; chunk u holds channels [8*per*u, 8*per*(u+1)) at
 * per = 8/bits codes per byte and unpacks plane by plane: f[u*8*per + i*8 + j] = code of channel per*(8u+j) + i.
 * Each plane is then one shift and mask of 8 consecutive bytes (8 floats, one AVX2 register); q (scores) and the
 * accumulators (outputs) are permuted to this order once per call. Needs seg * bits to be a multiple of 64, and
 * G <= 8 (the register accumulators); otherwise the plain loops in channel order run. */
static inline int plane_major_ok(int bits, int seg, int G) {
    return (bits == 1 || bits == 2 || bits == 4 || bits == 8) && (seg * bits) % 64 == 0 && G <= 8;
}

static inline int pm_pos(int k, int bits) {
    const int per = 8 / bits, byte = k / per, i = k % per;
    return (byte / 8) * 8 * per + i * 8 + byte % 8;
}

/* the scalar unpack for builds without AVX2 (the AVX2 paths unpack in registers, in seg_dots_pm/seg_axpy_pm) */
static inline void unpack_pm(const uint8_t *restrict p, int bits, int seg, float *restrict f) {
    const int per = 8 / bits, m = (1 << bits) - 1, nu = seg * bits / 64;
    for (int u = 0; u < nu; u++)
        for (int i = 0; i < per; i++)
            for (int j = 0; j < 8; j++) f[u * 8 * per + i * 8 + j] = (float)((p[8 * u + j] >> (i * bits)) & m);
}

/* The packed rows' order: the store's `token_rows` (akvq/cache/store.py). Tokens before S (sealed, a multiple of
 * ROWBLK) lie in blocks of ROWBLK tokens, sequence by sequence: token t of sequence b in row
 * (t / K) * K * B + b * K + t % K; the rest token-major, row t * B + b. The caller passes S and its block, which
 * must be ROWBLK (a constant here: no division by a runtime width per token). Every site here that finds a token's
 * row asks tok_row (tok_step: the rows between a sequence's tokens t and t + 1 of one block, for the vector
 * gathers; row_first / row_next: (t, b) of rows walked in storage order; hp_row: a 16-bit row's place in hp).
 * ROWBLK is the work items' tokens (AKVQ_FCH, TCH): an item is one block's stretch of its sequence, or token-major
 * as a whole. */
#define ROWBLK 64
#if ROWBLK % 16
#error "the vector gathers take 16 tokens of one block"
#endif
typedef struct {
    int64_t B, S;
} order_t;
static inline int64_t tok_row(const order_t *o, int64_t t, int64_t b) {
    return t < o->S ? (t / ROWBLK) * ROWBLK * o->B + b * ROWBLK + t % ROWBLK : t * o->B + b;
}
static inline int64_t tok_step(const order_t *o, int64_t t) { return t < o->S ? 1 : o->B; }
static inline void row_first(const order_t *o, int64_t r, int64_t *t, int64_t *b) {
    if (r < o->S * o->B) {
        const int64_t blk = r / (ROWBLK * o->B), rem = r % (ROWBLK * o->B);
        *b = rem / ROWBLK;
        *t = blk * ROWBLK + rem % ROWBLK;
    } else {
        *t = r / o->B;
        *b = r % o->B;
    }
}
static inline void row_next(const order_t *o, int64_t *t, int64_t *b) {
    if (*t >= o->S) {
        if (++*b == o->B) { *b = 0; ++*t; }
    } else if ((*t + 1) % ROWBLK) {
        ++*t;
    } else if (++*b < o->B) {
        *t -= ROWBLK - 1;
    } else { /* the block's last row: the next block (or the token-major rows), sequence 0 */
        *b = 0;
        ++*t;
    }
}
/* the order of a store of B sequences with S sealed tokens in blocks of blk; 1 where the caller's block is not ours */
static inline int order_init(order_t *o, int64_t B, int64_t S, int64_t blk) {
    o->B = B;
    o->S = S;
    return blk != ROWBLK || S % ROWBLK || S < 0;
}

/* Index of each row inside its class table (the running count of its class): i for a class-0 row, -2 - i for a
 * class-1 row, -1 for a 16-bit row. The sign carries the class, so the vector paths read one int32 per row, not
 * the class byte too (row_index decodes it). Built on every call over every row (in ranges, one per thread, see
 * table_index): runs of TI_RUN rows of one packed class (most of them: pivots are ~1 row in 500) are filled as a
 * ramp, which the compiler vectorizes; the rest row by row. Why: the row-by-row loop over all rows (its counts a
 * dependency chain, and a 16-bit index per row for the fused kernel) took 1.7 ms per store and call at batch 79, 8K
 * (646K rows; 0.5 ms now); the fused call got 3-5% faster on one thread, 8% on two (results/efficiency/README.md,
 * eighth pass). */
#define TI_RUN 64
/* idx[r] for rows [r0, r1), n0 / n1 class-0 / class-1 rows before r0 */
static void ti_fill(const uint8_t *cls, int64_t r0, int64_t r1, int32_t n0, int32_t n1, int32_t *idx) {
    int32_t n[2] = {n0, n1}; /* counts in registers, branch-free: a count array indexed by the class made every row
                                wait for the previous row's store (~3 ns a row, 20% of the key kernel at batch 8) */
    int64_t r = r0;
    for (; r + TI_RUN <= r1; r += TI_RUN) {
        const uint8_t *c = cls + r, c0 = c[0];
        int diff = 0;
        for (int i = 0; i < TI_RUN; i++) diff |= c[i] ^ c0;
        if (!diff && c0 < 2) { /* one packed class: a ramp */
            const int32_t s = c0 ? -1 : 1, a = c0 ? -2 - n[1] : n[0];
            for (int i = 0; i < TI_RUN; i++) idx[r + i] = a + s * i;
            n[c0] += TI_RUN;
            continue;
        }
        for (int i = 0; i < TI_RUN; i++) {
            const int ci = c[i], is0 = ci == 0, is1 = ci == 1;
            idx[r + i] = is0 ? n[0] : is1 ? -2 - n[1] : -1;
            n[0] += is0;
            n[1] += is1;
        }
    }
    for (; r < r1; r++) {
        const int ci = cls[r], is0 = ci == 0, is1 = ci == 1;
        idx[r] = is0 ? n[0] : is1 ? -2 - n[1] : -1;
        n[0] += is0;
        n[1] += is1;
    }
}

/* On nt > 1 threads (and enough rows) the rows are split in nt ranges: each thread counts its range's class-0/1
 * rows, then fills its range from the counts of the ranges before it. The index is built before the fused kernel's
 * parallel part, so on one thread of two it was the serial start of every call (0.4-0.5 ms per store at batch 79). */
#ifndef AKVQ_TI_PAR
#define AKVQ_TI_PAR 1
#endif
static int32_t *table_index(const uint8_t *cls, int64_t n_rows, const order_t *ord, int32_t **hrow, int32_t **hcnt,
                            int nt) {
    const int64_t B = ord->B;
    int32_t *idx = (int32_t *)malloc(sizeof(int32_t) * (n_rows > 0 ? n_rows : 1));
    if (!AKVQ_TI_PAR || nt < 2 || n_rows < 65536) {
        ti_fill(cls, 0, n_rows, 0, 0, idx);
    } else {
        int32_t cnt[64][2];
        if (nt > 64) nt = 64;
#pragma omp parallel num_threads(nt)
        {
#ifdef _OPENMP
            const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
#else
            const int tid = 0, nth = 1;
#endif
            const int64_t r0 = n_rows * tid / nth, r1 = n_rows * (tid + 1) / nth;
            int32_t c0 = 0, c1 = 0;
            for (int64_t r = r0; r < r1; r++) { c0 += cls[r] == 0; c1 += cls[r] == 1; }
            cnt[tid][0] = c0;
            cnt[tid][1] = c1;
#pragma omp barrier
            int32_t n0 = 0, n1 = 0;
            for (int i = 0; i < tid; i++) { n0 += cnt[i][0]; n1 += cnt[i][1]; }
            ti_fill(cls, r0, r1, n0, n1, idx);
        }
    }
    if (!hrow) return idx;
    /* the fused kernel also wants the 16-bit rows' places in hp: hrow[t] = how many lie before token t's rows, or
     * in a sealed block before the block's (hp_row adds those of the token, or of the block, before the row), and
     * how many an item (AKVQ_FCH tokens, one sequence) has */
    const int64_t n_t = n_rows / B, nch = (n_t + AKVQ_FCH - 1) / AKVQ_FCH;
    int32_t *h = (int32_t *)malloc(sizeof(int32_t) * (n_t > 0 ? n_t : 1));
    int32_t *cnt = (int32_t *)calloc((size_t)(nch * B > 0 ? nch * B : 1), sizeof(int32_t));
    int32_t n2 = 0;
    for (int64_t t = 0; t < n_t; t++) {
        if (t < ord->S) { /* a sealed block, at its first token: its sequences' stretches of ROWBLK rows */
            if (t % ROWBLK) { h[t] = h[t - t % ROWBLK]; continue; }
            h[t] = n2;
            for (int64_t b = 0; b < B; b++) {
                const uint8_t *cr = cls + tok_row(ord, t, b);
                int32_t m = 0;
                for (int i = 0; i < ROWBLK; i++) m += cr[i] == 2;
                cnt[(t / AKVQ_FCH) * B + b] += m;
                n2 += m;
            }
            continue;
        }
        const uint8_t *cr = cls + tok_row(ord, t, 0);
        int32_t m = 0;
        for (int64_t b = 0; b < B; b++) m += cr[b] == 2;
        h[t] = n2;
        n2 += m;
        if (m)
            for (int64_t b = 0; b < B; b++) cnt[(t / AKVQ_FCH) * B + b] += cr[b] == 2;
    }
    *hrow = h;
    *hcnt = cnt;
    return idx;
}

/* the row in hp of the 16-bit row of token t, sequence b (hrow from table_index) */
static inline int64_t hp_row(const int32_t *hrow, const uint8_t *cls, const order_t *o, int64_t t, int64_t b) {
    int64_t i = hrow[t];
    if (t < o->S) /* the block's rows before this one */
        for (int64_t r = tok_row(o, t - t % ROWBLK, 0), r1 = tok_row(o, t, b); r < r1; r++) i += cls[r] == 2;
    else
        for (int64_t j = 0; j < b; j++) i += cls[tok_row(o, t, j)] == 2;
    return i;
}

/* the index inside its class table of a class-0 or class-1 row (see table_index) */
static inline int64_t row_index(int32_t v) { return v >= 0 ? v : -2 - (int64_t)v; }

typedef struct {
    const uint8_t *codes;
    const uint16_t *scale, *zero;
    int64_t bits;
} table_t;

static int gcd(int a, int b) { while (b) { int t = a % b; a = b; b = t; } return a; }

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* sum of the 8 lanes */
#ifdef __AVX2__
ALWAYS_INLINE float hsum8(__m256 v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_shuffle_ps(x, x, 1));
    return _mm_cvtss_f32(x);
}
#endif

/* dots[g] = q_g . codes for one segment (plane-major order, seg * bits a multiple of 64); G is a constant after
 * inlining, so the accumulators live in registers and the unpacked codes never go to memory. */
ALWAYS_INLINE void seg_dots_pm(const uint8_t *p, int bits, int seg, const float *q, int64_t ldq, int G, float *dots) {
#ifdef __AVX2__
    const int per = 8 / bits, nu = seg * bits / 64;
    const __m256i mask = _mm256_set1_epi32((1 << bits) - 1);
    __m256 acc[8];
    for (int g = 0; g < G; g++) acc[g] = _mm256_setzero_ps();
    for (int u = 0; u < nu; u++) {
        const __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + 8 * u)));
        for (int i = 0; i < per; i++) {
            const __m256 fv = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(x, _mm256_set1_epi32(i * bits)), mask));
            const int off = u * 8 * per + i * 8;
            for (int g = 0; g < G; g++) acc[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * ldq + off), fv, acc[g]);
        }
    }
    for (int g = 0; g < G; g++) dots[g] = hsum8(acc[g]);
#else
    float f[MAXSEG];
    unpack_pm(p, bits, seg, f);
    for (int g = 0; g < G; g++) {
        float a = 0;
        for (int k = 0; k < seg; k++) a += q[g * ldq + k] * f[k];
        dots[g] = a;
    }
#endif
}

/* acc_g += w_g * codes for one segment (plane-major order). */
ALWAYS_INLINE void seg_axpy_pm(const uint8_t *p, int bits, int seg, const float *w, float *acc, int64_t lda, int G) {
#ifdef __AVX2__
    const int per = 8 / bits, nu = seg * bits / 64;
    const __m256i mask = _mm256_set1_epi32((1 << bits) - 1);
    __m256 wv[8];
    for (int g = 0; g < G; g++) wv[g] = _mm256_set1_ps(w[g]);
    for (int u = 0; u < nu; u++) {
        const __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + 8 * u)));
        for (int i = 0; i < per; i++) {
            const __m256 fv = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(x, _mm256_set1_epi32(i * bits)), mask));
            const int off = u * 8 * per + i * 8;
            for (int g = 0; g < G; g++) {
                float *a = acc + g * lda + off;
                _mm256_storeu_ps(a, _mm256_fmadd_ps(wv[g], fv, _mm256_loadu_ps(a)));
            }
        }
    }
#else
    float f[MAXSEG];
    unpack_pm(p, bits, seg, f);
    for (int g = 0; g < G; g++)
        for (int k = 0; k < seg; k++) acc[g * lda + k] += w[g] * f[k];
#endif
}

/* Both token-axis kernels walk the rows in storage order (tok_row: sequential reads, which matter more than
 * anything in a VM where every TLB miss walks two page tables) and hand each row to a row function. The row
 * functions are instantiated for the common (bits, segment of 16/32/64/128, G) so that the unpack, the G dot products or
 * updates and the loops are straight-line code with the accumulators in registers; others use a generic one. */
typedef struct {
    int64_t B, H, G, D, group, float_zero;
    order_t ord; /* the rows' order (tok_row) */
    int seg, ns, W, ngr;
    const uint8_t *cls;
    int32_t *idx;
    table_t tab[2];
    int pm[2];
    int *gidx; /* [H * ns]: scale/zero index inside a row of segment s of head h */
    int32_t *hrow, *hcnt; /* the fused kernel's: 16-bit rows before each token's (hp_row); per item (else NULL) */
    int qgather; /* gather16v_into reads table 0's scale/zero halves with halves16q */
    int shared;  /* idx, hrow, hcnt are another tok_t's (tok_init's share): not freed here */
} tok_t;

typedef void (*score_row_fn)(const tok_t *k, int bits, const uint8_t *row, const uint16_t *sr, const uint16_t *zr,
                             const float *qb, const float *qs, float *ob, int64_t sg);
typedef void (*output_row_fn)(const tok_t *k, int bits, const uint8_t *row, const uint16_t *sr, const uint16_t *zr,
                              const float *pb, int64_t sg, float *ab, float *kz);

/* q . x for every head of one row; qb [H, G, D] in table order, qs [H, G, ns], ob[(h * G + g) * sg]. */
ALWAYS_INLINE void score_row_body(const tok_t *k, int bits, int seg, int G, const uint8_t *row, const uint16_t *sr,
                                  const uint16_t *zr, const float *qb, const float *qs, float *ob, int64_t sg) {
    const int H = (int)k->H, D = (int)k->D, ns = D / seg;
    for (int h = 0; h < H; h++) {
        float res[64], dots[64];
        for (int g = 0; g < G; g++) res[g] = 0;
        for (int s = 0; s < ns; s++) {
            const int ch = h * D + s * seg, gi = k->gidx[h * ns + s];
            const float sc = half_to_float(sr[gi]), zz = half_to_float(zr[gi]);
            const float *q = qb + (int64_t)h * G * D + s * seg;
            if (plane_major_ok(bits, seg, G)) {
                seg_dots_pm(row + ch * bits / 8, bits, seg, q, D, G, dots);
            } else {
                float f[MAXSEG];
                unpack_run(row, bits, ch, seg, f);
                for (int g = 0; g < G; g++) {
                    float a = 0;
                    for (int d = 0; d < seg; d++) a += q[g * D + d] * f[d];
                    dots[g] = a;
                }
            }
            for (int g = 0; g < G; g++) {
                const float q1 = qs[(h * G + g) * ns + s];
                res[g] += sc * dots[g] + (k->float_zero ? zz * q1 : -sc * zz * q1);
            }
        }
        for (int g = 0; g < G; g++) ob[(int64_t)(h * G + g) * sg] = res[g];
    }
}

/* acc += p_t x_t for every head of one row; pb[(h * G + g) * sg], ab [H, G, D] in table order. */
ALWAYS_INLINE void output_row_body(const tok_t *k, int bits, int seg, int G, const uint8_t *row, const uint16_t *sr,
                                   const uint16_t *zr, const float *pb, int64_t sg, float *ab, float *kz) {
    const int H = (int)k->H, D = (int)k->D, ns = D / seg;
    for (int h = 0; h < H; h++) {
        float w[64], ws[64];
        int nz = 0;
        for (int g = 0; g < G; g++) { w[g] = pb[(int64_t)(h * G + g) * sg]; nz |= w[g] != 0.0f; }
        if (!nz) continue; /* masked (padding) positions */
        for (int s = 0; s < ns; s++) {
            const int ch = h * D + s * seg, gi = k->gidx[h * ns + s];
            const float sc = half_to_float(sr[gi]), zz = half_to_float(zr[gi]);
            for (int g = 0; g < G; g++) {
                ws[g] = w[g] * sc;
                kz[(h * G + g) * ns + s] += k->float_zero ? w[g] * zz : -ws[g] * zz;
            }
            float *a = ab + (int64_t)h * G * D + s * seg;
            if (plane_major_ok(bits, seg, G)) {
                seg_axpy_pm(row + ch * bits / 8, bits, seg, ws, a, D, G);
            } else {
                float f[MAXSEG];
                unpack_run(row, bits, ch, seg, f);
                for (int g = 0; g < G; g++)
                    for (int d = 0; d < seg; d++) a[g * D + d] += ws[g] * f[d];
            }
        }
    }
}

static void score_row_generic(const tok_t *k, int bits, const uint8_t *row, const uint16_t *sr, const uint16_t *zr,
                              const float *qb, const float *qs, float *ob, int64_t sg) {
    score_row_body(k, bits, k->seg, (int)k->G, row, sr, zr, qb, qs, ob, sg);
}

static void output_row_generic(const tok_t *k, int bits, const uint8_t *row, const uint16_t *sr, const uint16_t *zr,
                               const float *pb, int64_t sg, float *ab, float *kz) {
    output_row_body(k, bits, k->seg, (int)k->G, row, sr, zr, pb, sg, ab, kz);
}

#define ROW_FNS(BITS, SEG, G)                                                                                        \
    static void score_row_##BITS##_##SEG##_##G(const tok_t *k, int bits, const uint8_t *row, const uint16_t *sr,     \
                                               const uint16_t *zr, const float *qb, const float *qs, float *ob,      \
                                               int64_t sg) {                                                         \
        (void)bits;                                                                                                  \
        score_row_body(k, BITS, SEG, G, row, sr, zr, qb, qs, ob, sg);                                                \
    }                                                                                                                \
    static void output_row_##BITS##_##SEG##_##G(const tok_t *k, int bits, const uint8_t *row, const uint16_t *sr,    \
                                                const uint16_t *zr, const float *pb, int64_t sg, float *ab,          \
                                                float *kz) {                                                         \
        (void)bits;                                                                                                  \
        output_row_body(k, BITS, SEG, G, row, sr, zr, pb, sg, ab, kz);                                               \
    }
#define ROW_FNS_G(BITS, SEG) ROW_FNS(BITS, SEG, 1) ROW_FNS(BITS, SEG, 2) ROW_FNS(BITS, SEG, 3) ROW_FNS(BITS, SEG, 4) \
    ROW_FNS(BITS, SEG, 5) ROW_FNS(BITS, SEG, 6) ROW_FNS(BITS, SEG, 7) ROW_FNS(BITS, SEG, 8)
ROW_FNS_G(2, 16) ROW_FNS_G(2, 32) ROW_FNS_G(2, 64) ROW_FNS_G(2, 128)
ROW_FNS_G(4, 16) ROW_FNS_G(4, 32) ROW_FNS_G(4, 64) ROW_FNS_G(4, 128)

#define PICK_G(KIND, BITS, SEG, G)                                                                                    \
    switch (G) {                                                                                                     \
    case 1: return KIND##_row_##BITS##_##SEG##_1; case 2: return KIND##_row_##BITS##_##SEG##_2;                      \
    case 3: return KIND##_row_##BITS##_##SEG##_3; case 4: return KIND##_row_##BITS##_##SEG##_4;                      \
    case 5: return KIND##_row_##BITS##_##SEG##_5; case 6: return KIND##_row_##BITS##_##SEG##_6;                      \
    case 7: return KIND##_row_##BITS##_##SEG##_7; case 8: return KIND##_row_##BITS##_##SEG##_8;                      \
    }
#define PICK(KIND, bits, seg, G)                                                                                      \
    if (bits == 2 && seg == 16) { PICK_G(KIND, 2, 16, G) }                                                           \
    if (bits == 4 && seg == 16) { PICK_G(KIND, 4, 16, G) }                                                           \
    if (bits == 2 && seg == 32) { PICK_G(KIND, 2, 32, G) }                                                           \
    if (bits == 2 && seg == 64) { PICK_G(KIND, 2, 64, G) }                                                           \
    if (bits == 2 && seg == 128) { PICK_G(KIND, 2, 128, G) }                                                         \
    if (bits == 4 && seg == 32) { PICK_G(KIND, 4, 32, G) }                                                           \
    if (bits == 4 && seg == 64) { PICK_G(KIND, 4, 64, G) }                                                           \
    if (bits == 4 && seg == 128) { PICK_G(KIND, 4, 128, G) }

/* ---- int8 query path: q . k in integers --------------------------------------------------------------------------
 * q is quantized per (batch, query head, segment) to int8 with its own scale sq = max|q| / 127, so
 *   q . s(c - z) = s (sq sum_k c_k q8_k - z sq sum_k q8_k)     (integer zero points)
 *   q . (s c + z) = s sq sum_k c_k q8_k + z sq sum_k q8_k      (float zero points)
 * and sum_k c_k q8_k is exact in integers: AVX2 vpmaddubsw (u8 codes x s8 q -> s16 pairs), a few s16 adds
 * (<= 4 per segment: |sum| <= 4 * 2 * 15 * 127 < 2^15), vpmaddwd -> s32. Scales and zero points are applied
 * once per segment. Codes of a 16-byte chunk unpack to bytes plane by plane: byte position i * 16 + j holds the
 * code of channel per * j + i (per = 8 / bits codes per byte); q8 is stored in that order once per call. */
static inline int i8_ok(int bits, int seg, int64_t G, int ns) {
    return (bits == 2 || bits == 4) && (seg * bits) % 128 == 0 && seg <= 128 && G <= 8 && G * ns <= 64;
}

static inline int i8_pos(int k, int bits) {
    const int per = 8 / bits, cw = 16 * per;
    return (k / cw) * cw + (k % per) * 16 + (k % cw) / per;
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define AKVQ_VNNI 1
/* acc + the u8 x s8 dot products of a and b per dword (vpdpbusd), accumulated in acc's register. With the intrinsic,
 * GCC 12 kept v8_quad512's accumulators in other registers than the ones it accumulated in and copied them there
 * and back on every iteration (~20 vmovdqa per 12 vpdpbusd at G = 3, on the ports the shuffles and dot products
 * use). The same instruction, so the same sums. -DAKVQ_DPASM=0: the intrinsic (v8_quad512, i16_block_body). */
#ifndef AKVQ_DPASM
#define AKVQ_DPASM 1
#endif
ALWAYS_INLINE __m512i dpbusd_acc(__m512i acc, __m512i a, __m512i b) {
#if AKVQ_DPASM
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
    return acc;
#else
    return _mm512_dpbusd_epi32(acc, a, b);
#endif
}

/* AVX-512 VNNI: one vpdpbusd does 64 u8 x s8 products and their sums by four into int32, so a 2-bit segment of
 * 64 channels is one broadcast, one shift, one mask and one vpdpbusd per query head (AVX2: ten instructions).
 * The 64 bytes hold the four planes of a 16-byte chunk (2 bits) or the two planes of two chunks (4 bits), in the
 * order q8 is stored in, so q8 is read as it lies. */
ALWAYS_INLINE void i8_tok(const uint8_t *p, int bits, int nc, const int8_t *q, int64_t ldq, int G, __m256i *out) {
    const __m512i m = _mm512_set1_epi8((char)((1 << bits) - 1));
    __m512i acc[8];
    for (int g = 0; g < G; g++) acc[g] = _mm512_setzero_si512();
    if (bits == 2) {
        const __m512i sh = _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6);
        for (int c = 0; c < nc; c++) {
            const __m512i x = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(p + 16 * c)));
            const __m512i v = _mm512_and_si512(_mm512_srlv_epi32(x, sh), m);
            for (int g = 0; g < G; g++) acc[g] = _mm512_dpbusd_epi32(acc[g], v, _mm512_loadu_si512(q + g * ldq + 64 * c));
        }
    } else {
        const __m512i sh = _mm512_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4, 0, 0, 0, 0, 4, 4, 4, 4);
        int c = 0;
        for (; c + 2 <= nc; c += 2) {
            const __m512i x = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(p + 16 * c)))),
                _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(p + 16 * c + 16))), 1);
            const __m512i v = _mm512_and_si512(_mm512_srlv_epi32(x, sh), m);
            for (int g = 0; g < G; g++) acc[g] = _mm512_dpbusd_epi32(acc[g], v, _mm512_loadu_si512(q + g * ldq + 32 * c));
        }
        if (c < nc) { /* an odd last chunk: 256 bits */
            const __m256i x = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(p + 16 * c)));
            const __m256i v = _mm256_and_si256(_mm256_srlv_epi32(x, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)),
                                               _mm512_castsi512_si256(m));
            for (int g = 0; g < G; g++)
                acc[g] = _mm512_inserti64x4(acc[g],
                                            _mm256_dpbusd_epi32(_mm512_extracti64x4_epi64(acc[g], 0), v,
                                                                _mm256_loadu_si256((const __m256i *)(q + g * ldq + 32 * c))),
                                            0);
        }
    }
    for (int g = 0; g < G; g++)
        out[g * 8] = _mm256_add_epi32(_mm512_castsi512_si256(acc[g]), _mm512_extracti64x4_epi64(acc[g], 1));
}
#elif defined(__AVX2__)
/* out[g * 8] = the int32 lanes of sum_k c_k q8_k (madd-ed, not yet summed) for one token's segment */
ALWAYS_INLINE void i8_tok(const uint8_t *p, int bits, int nc, const int8_t *q, int64_t ldq, int G, __m256i *out) {
    const __m256i m = _mm256_set1_epi8((char)((1 << bits) - 1)), ones = _mm256_set1_epi16(1);
    const __m256i sh0 = _mm256_setr_epi32(0, 0, 0, 0, bits, bits, bits, bits);
    const __m256i sh1 = _mm256_setr_epi32(4, 4, 4, 4, 6, 6, 6, 6);
    __m256i acc[8];
    for (int g = 0; g < G; g++) acc[g] = _mm256_setzero_si256();
    for (int c = 0; c < nc; c++) {
        const __m256i x = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(p + 16 * c)));
        const __m256i v0 = _mm256_and_si256(_mm256_srlv_epi32(x, sh0), m);
        const int8_t *qc = q + c * 16 * (8 / bits);
        for (int g = 0; g < G; g++)
            acc[g] = _mm256_add_epi16(acc[g], _mm256_maddubs_epi16(v0, _mm256_loadu_si256((const __m256i *)(qc + g * ldq))));
        if (bits == 2) {
            const __m256i v1 = _mm256_and_si256(_mm256_srlv_epi32(x, sh1), m);
            for (int g = 0; g < G; g++)
                acc[g] = _mm256_add_epi16(acc[g], _mm256_maddubs_epi16(v1, _mm256_loadu_si256((const __m256i *)(qc + g * ldq + 32))));
        }
    }
    for (int g = 0; g < G; g++) out[g * 8] = _mm256_madd_epi16(acc[g], ones);
}

#endif

/* dots[g] = sum_k c_k q8[g * ldq + pos(k)] over one segment of nc 16-byte chunks */
ALWAYS_INLINE void i8_dots(const uint8_t *p, int bits, int nc, const int8_t *q, int64_t ldq, int G, int32_t *dots) {
#ifdef __AVX2__
    __m256i v[64];
    i8_tok(p, bits, nc, q, ldq, G, v);
    for (int g0 = 0; g0 < G; g0 += 4) { /* four horizontal sums at once */
        __m256i a[4];
        for (int i = 0; i < 4; i++) a[i] = g0 + i < G ? v[(g0 + i) * 8] : _mm256_setzero_si256();
        const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a[0], a[1]), _mm256_hadd_epi32(a[2], a[3]));
        int32_t r[4];
        _mm_storeu_si128((__m128i *)r, _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1)));
        for (int i = 0; i < 4 && g0 + i < G; i++) dots[g0 + i] = r[i];
    }
#else
    const int per = 8 / bits, m = (1 << bits) - 1;
    for (int g = 0; g < G; g++) {
        int32_t a = 0;
        for (int c = 0; c < nc; c++)
            for (int i = 0; i < per; i++)
                for (int j = 0; j < 16; j++)
                    a += ((p[16 * c + j] >> (i * bits)) & m) * q[g * ldq + c * 16 * per + i * 16 + j];
        dots[g] = a;
    }
#endif
}

typedef void (*score_i8_fn)(const tok_t *k, const uint8_t *row, const uint16_t *sr, const uint16_t *zr,
                            const int8_t *q8, const float *qsc, const float *qz, float *ob, int64_t sg);

/* one row, every head: q8 [H, G, D] in unpack order, qsc/qz [H, G, ns] (sq and sq * sum q8) */
ALWAYS_INLINE void score_row_i8_body(const tok_t *k, int bits, int seg, int G, const uint8_t *row, const uint16_t *sr,
                                     const uint16_t *zr, const int8_t *q8, const float *qsc, const float *qz, float *ob,
                                     int64_t sg) {
    const int H = (int)k->H, D = (int)k->D, ns = D / seg, nc = seg * bits / 128;
    for (int h = 0; h < H; h++) {
        int32_t dots[64];
        float res[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int s = 0; s < ns; s++) {
            const int gi = k->gidx[h * ns + s];
            const float sc = half_to_float(sr[gi]), zz = half_to_float(zr[gi]);
            i8_dots(row + (h * D + s * seg) * bits / 8, bits, nc, q8 + (int64_t)h * G * D + s * seg, D, G, dots);
            for (int g = 0; g < G; g++) {
                const int i = (h * G + g) * ns + s;
                res[g] += k->float_zero ? sc * qsc[i] * (float)dots[g] + zz * qz[i]
                                        : sc * (qsc[i] * (float)dots[g] - zz * qz[i]);
            }
        }
        for (int g = 0; g < G; g++) ob[(int64_t)(h * G + g) * sg] = res[g];
    }
}

#define I8_FN(BITS, SEG, G)                                                                                          \
    static void score_i8_row_##BITS##_##SEG##_##G(const tok_t *k, const uint8_t *row, const uint16_t *sr,            \
                                              const uint16_t *zr, const int8_t *q8, const float *qsc, const float *qz, \
                                              float *ob, int64_t sg) {                                               \
        score_row_i8_body(k, BITS, SEG, G, row, sr, zr, q8, qsc, qz, ob, sg);                                       \
    }
#define I8_FNS_G(BITS, SEG) I8_FN(BITS, SEG, 1) I8_FN(BITS, SEG, 2) I8_FN(BITS, SEG, 3) I8_FN(BITS, SEG, 4)            \
    I8_FN(BITS, SEG, 5) I8_FN(BITS, SEG, 6) I8_FN(BITS, SEG, 7) I8_FN(BITS, SEG, 8)
I8_FNS_G(2, 64) I8_FNS_G(2, 128) I8_FNS_G(4, 32) I8_FNS_G(4, 64) I8_FNS_G(4, 128)

static score_i8_fn pick_i8(int bits, int seg, int64_t G) {
    if (bits == 2 && seg == 64) { PICK_G(score_i8, 2, 64, G) }
    if (bits == 2 && seg == 128) { PICK_G(score_i8, 2, 128, G) }
    if (bits == 4 && seg == 32) { PICK_G(score_i8, 4, 32, G) }
    if (bits == 4 && seg == 64) { PICK_G(score_i8, 4, 64, G) }
    if (bits == 4 && seg == 128) { PICK_G(score_i8, 4, 128, G) }
    return NULL;
}

/* ---- batch-major kernels (AVX2): item = (b, a chunk of TCH tokens), tokens 8 at a time --------------------------
 * Scores: per head and segment, the 8 tokens' int32 dot vectors are reduced together (lane i = token i), scales
 * and zero points applied to 8 tokens in one vector, 8 scores stored at once. Outputs: per head, segment and
 * 32-channel chunk, the G x 4 accumulators stay in registers over the 8 tokens. A token's rows for all heads lie in
 * one row of its table, so they are read from memory once and from L1 after. Items run chunk-major (all sequences
 * of a chunk, then the next chunk): the chunk's rows are one contiguous stretch of the table (TCH * B rows, inside
 * L2), read in order, where batch-major order strides B rows per token (a TLB miss per token at large B).
 * Parallel over token chunks x batch. TCH (tokens per item) is defined at the top. */

typedef struct {
    int n, cl[8], bits[8];
    const uint8_t *row[8];
    const uint16_t *sr[8], *zr[8];
} blk_t;

/* the (up to) 8 rows of tokens t..t+n-1 of sequence b; cl 2 = a 16-bit row or past the end (contributes 0) */
static inline void blk_rows(const tok_t *k, int64_t b, int64_t t, int64_t t1, blk_t *r) {
    r->n = t1 - t < 8 ? (int)(t1 - t) : 8;
    for (int i = 0; i < 8; i++) {
        const int64_t rr = tok_row(&k->ord, t + i, b);
        const int c = i < r->n ? k->cls[rr] : 2;
        r->cl[i] = c < 2 ? c : 2;
        if (c < 2) {
            const table_t *T = &k->tab[c];
            const int64_t ii = row_index(k->idx[rr]);
            r->bits[i] = (int)T->bits;
            r->row[i] = T->codes + ii * (k->W * T->bits / 8);
            r->sr[i] = T->scale + ii * k->ngr;
            r->zr[i] = T->zero + ii * k->ngr;
        }
    }
}

/* Prefetch the code rows and scale/zero rows of tokens [t, t1) of sequence b (at most n). A sequence's consecutive
 * tokens lie B rows apart, a stride the hardware prefetchers do not follow at large B: without this the batch-major
 * kernels wait on a cache miss per token, and on one per score line they write (SmolLM2 shapes, 8K, batch 79, one
 * thread, avx512: key kernel 48.5 -> 42.3 ms, value kernel 64.6 -> 40.2 ms; nothing at batch 8). -DAKVQ_PF=0 turns it
 * off; `scripts/bench_kernel.py breakdown=B` times both builds. */
#ifndef AKVQ_PF
#define AKVQ_PF 16 /* tokens ahead */
#endif
/* The score lines (key side) and weight lines (value side) are prefetched where they are the batch's matrices
 * (strides osb / psb > 0: akvq_token_scores / _output); the fused kernel's are its per-thread chunk buffer (stride
 * 0), which stays in L1. -DAKVQ_PFCHUNK=1: prefetch those too (the eighth pass's build). */
#ifndef AKVQ_PFCHUNK
#define AKVQ_PFCHUNK 0
#endif
static inline void blk_prefetch(const tok_t *k, int64_t b, int64_t t, int64_t t1, int n) {
    for (int i = 0; i < n && t + i < t1; i++) {
        const int64_t rr = tok_row(&k->ord, t + i, b);
        const int c = k->cls[rr];
        if (c >= 2) continue;
        const table_t *T = &k->tab[c];
        const int64_t ii = row_index(k->idx[rr]), nb = k->W * T->bits / 8;
        const uint8_t *row = T->codes + ii * nb;
        for (int64_t o = 0; o < nb; o += 64) __builtin_prefetch(row + o, 0, 3);
        __builtin_prefetch(row + nb - 1, 0, 3);
        __builtin_prefetch(T->scale + ii * k->ngr, 0, 3);
        __builtin_prefetch(T->zero + ii * k->ngr, 0, 3);
    }
}

#ifdef __AVX2__
/* lane i = sum of the 8 lanes of v[i] */
ALWAYS_INLINE __m256i reduce8_epi32(const __m256i *v) {
    const __m256i a = _mm256_hadd_epi32(v[0], v[1]), b = _mm256_hadd_epi32(v[2], v[3]);
    const __m256i c = _mm256_hadd_epi32(v[4], v[5]), d = _mm256_hadd_epi32(v[6], v[7]);
    const __m256i ab = _mm256_hadd_epi32(a, b), cd = _mm256_hadd_epi32(c, d);
    return _mm256_add_epi32(_mm256_permute2x128_si256(ab, cd, 0x20), _mm256_permute2x128_si256(ab, cd, 0x31));
}

/* int8 scores of tokens [t0, t1) of sequence b into out[b * osb + (h * G + g) * osg + t] */
ALWAYS_INLINE void i8_block_body(const tok_t *k, int G, int64_t b, int64_t t0, int64_t t1, const int8_t *q8, int64_t nq,
                                 const float *qsc, const float *qz, float *out, int64_t osb, int64_t osg) {
    const int H = (int)k->H, D = (int)k->D, seg = k->seg, ns = k->ns;
    __m256i buf[64];
    blk_t r;
    if (AKVQ_PF) blk_prefetch(k, b, t0, t1, AKVQ_PF);
    for (int64_t t = t0; t < t1; t += 8) {
        if (AKVQ_PF) {
            blk_prefetch(k, b, t + AKVQ_PF, t1, 8);
            if (t + AKVQ_PF < t1) /* the score lines AKVQ_PF tokens on: one store stream per query head and sequence */
                for (int e = 0; e < H * G && (osb || AKVQ_PFCHUNK); e++)
                    __builtin_prefetch(out + b * osb + e * osg + t + AKVQ_PF, 1, 3);
        }
        blk_rows(k, b, t, t1, &r);
        for (int h = 0; h < H; h++) {
            __m256 res[8];
            for (int g = 0; g < G; g++) res[g] = _mm256_setzero_ps();
            for (int s = 0; s < ns; s++) {
                const int gi = k->gidx[h * ns + s];
                float scv[8], zzv[8];
                for (int i = 0; i < 8; i++) {
                    const int c = r.cl[i];
                    if (c < 2) {
                        const int8_t *qq = q8 + c * nq + ((b * k->H + h) * G) * D + s * seg;
                        if (r.bits[i] == 2) /* constant widths: no division by a runtime width per token */
                            i8_tok(r.row[i] + (h * D + s * seg) / 4, 2, seg / 64, qq, D, G, buf + i);
                        else
                            i8_tok(r.row[i] + (h * D + s * seg) / 2, 4, seg / 32, qq, D, G, buf + i);
                        scv[i] = half_to_float(r.sr[i][gi]);
                        zzv[i] = half_to_float(r.zr[i][gi]);
                    } else {
                        for (int g = 0; g < G; g++) buf[g * 8 + i] = _mm256_setzero_si256();
                        scv[i] = zzv[i] = 0;
                    }
                }
                const __m256 sc = _mm256_loadu_ps(scv), zz = _mm256_loadu_ps(zzv);
                for (int g = 0; g < G; g++) {
                    const __m256 d = _mm256_cvtepi32_ps(reduce8_epi32(buf + g * 8));
                    const int64_t j = ((b * k->H + h) * G + g) * ns + s;
                    const __m256 qs = _mm256_set1_ps(qsc[j]), qzz = _mm256_set1_ps(qz[j]);
                    res[g] = k->float_zero ? _mm256_fmadd_ps(zz, qzz, _mm256_fmadd_ps(_mm256_mul_ps(sc, qs), d, res[g]))
                                           : _mm256_fmadd_ps(sc, _mm256_fmsub_ps(qs, d, _mm256_mul_ps(zz, qzz)), res[g]);
                }
            }
            for (int g = 0; g < G; g++) {
                float *o = out + b * osb + (int64_t)(h * G + g) * osg + t;
                if (r.n == 8) {
                    _mm256_storeu_ps(o, res[g]);
                } else {
                    float tmp[8];
                    _mm256_storeu_ps(tmp, res[g]);
                    for (int i = 0; i < r.n; i++) o[i] = tmp[i];
                }
            }
        }
    }
}

typedef void (*i8_block_fn)(const tok_t *, int64_t, int64_t, int64_t, const int8_t *, int64_t, const float *,
                            const float *, float *, int64_t, int64_t);
#define I8_BLOCK(G)                                                                                                  \
    static void i8_block_##G(const tok_t *k, int64_t b, int64_t t0, int64_t t1, const int8_t *q8, int64_t nq,       \
                             const float *qsc, const float *qz, float *out, int64_t osb, int64_t osg) {             \
        i8_block_body(k, G, b, t0, t1, q8, nq, qsc, qz, out, osb, osg);                                              \
    }
I8_BLOCK(1) I8_BLOCK(2) I8_BLOCK(3) I8_BLOCK(4) I8_BLOCK(5) I8_BLOCK(6) I8_BLOCK(7) I8_BLOCK(8)
static const i8_block_fn I8_BLOCKS[9] = {NULL, i8_block_1, i8_block_2, i8_block_3, i8_block_4, i8_block_5,
                                         i8_block_6, i8_block_7, i8_block_8};

#if defined(__AVX2__) && !defined(AKVQ_VNNI)
/* The key side's common case on AVX2 without VNNI (table 0 of 2 bits, segments of 64k channels): i16_block_body's
 * "tokens in the lanes" with 8 tokens a block. Lane i of y[j] holds token i's dword j of a 16-byte code chunk (4
 * loads + 4 inserts + 8 unpacks); each plane of each dword meets one broadcast int8 query dword in a vpmaddubsw
 * (u8 codes x s8 q -> two s16 per lane) accumulated in 16 bits (per 64 channels at most 16 * 2 * 3 * 127 < 2^15,
 * so up to 128 channels a segment), one vpmaddwd by ones per segment gives the 8 tokens' dots in int32 lanes: no
 * horizontal reduction (i8_block_body: a transpose-add tree per query head and 8 tokens). A block holding a text
 * row (table 1) takes i8_block_body. A block's row pointers and scale/zero halves are gathered one block ahead
 * (gather8; a sealed block of 8 class-0 rows from two indices). -DAKVQ_LANES8=0: i8_block_body only. */
#ifndef AKVQ_LANES8
#define AKVQ_LANES8 1
#endif
#define I8V_MAXGR 64
typedef struct {
    int n, any1;
    const uint8_t *row[8];
    uint16_t sh[I8V_MAXGR][8], zh[I8V_MAXGR][8];
} g8_t;

static inline void gather8(const tok_t *k, int64_t b, int64_t t, int64_t t1, const uint8_t *zrow, g8_t *r) {
    const int ngr = k->ngr;
    const int64_t nb = k->W / 4;
    r->n = t1 - t < 8 ? (int)(t1 - t) : 8;
    r->any1 = 0;
    if (r->n == 8 && t + 8 <= k->ord.S) { /* a sealed block: 8 consecutive rows of one sequence's block */
        const int64_t r0 = tok_row(&k->ord, t, b);
        const int32_t a = k->idx[r0];
        if (a >= 0 && k->idx[r0 + 7] == a + 7) { /* all of class 0 (another class's row would stop the count) */
            const uint8_t *c0 = k->tab[0].codes + (int64_t)a * nb;
            const uint16_t *sp = k->tab[0].scale + (int64_t)a * ngr, *zp = k->tab[0].zero + (int64_t)a * ngr;
            for (int i = 0; i < 8; i++) {
                r->row[i] = c0 + i * nb;
                for (int j = 0; j < ngr; j++) { r->sh[j][i] = sp[i * ngr + j]; r->zh[j][i] = zp[i * ngr + j]; }
            }
            return;
        }
    }
    for (int i = 0; i < 8; i++) {
        const int32_t v = i < r->n ? k->idx[tok_row(&k->ord, t + i, b)] : -1;
        r->any1 |= v < -1;
        if (v >= 0) {
            const uint16_t *sr = k->tab[0].scale + (int64_t)v * ngr, *zr = k->tab[0].zero + (int64_t)v * ngr;
            r->row[i] = k->tab[0].codes + (int64_t)v * nb;
            for (int j = 0; j < ngr; j++) { r->sh[j][i] = sr[j]; r->zh[j][i] = zr[j]; }
        } else { /* a 16-bit row, a text row or past the end: zero codes, zero scale */
            r->row[i] = zrow;
            for (int j = 0; j < ngr; j++) r->sh[j][i] = r->zh[j][i] = 0;
        }
    }
}

ALWAYS_INLINE void i8v_block_body(const tok_t *k, int G, int64_t b, int64_t t0, int64_t t1, const int8_t *q8,
                                  int64_t nq, const float *qsc, const float *qz, float *out, int64_t osb, int64_t osg,
                                  const uint8_t *zrow) {
    const int H = (int)k->H, D = (int)k->D, seg = k->seg, ns = k->ns, nc = seg / 64;
    const __m256i m = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
    g8_t buf[2];
    gather8(k, b, t0, t1, zrow, &buf[0]);
    int cur = 0;
    for (int64_t t = t0; t < t1; t += 8, cur ^= 1) {
        const g8_t *r = &buf[cur];
        const int n = r->n;
        if (t + 8 < t1) gather8(k, b, t + 8, t1, zrow, &buf[cur ^ 1]);
        if (r->any1) {
            i8_block_body(k, G, b, t, t + n, q8, nq, qsc, qz, out, osb, osg);
            continue;
        }
        for (int h = 0; h < H; h++) {
            __m256 res[8];
            for (int g = 0; g < G; g++) res[g] = _mm256_setzero_ps();
            for (int s = 0; s < ns; s++) {
                const int gi = k->gidx[h * ns + s];
                const __m256 sc = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)r->sh[gi]));
                const __m256 zz = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)r->zh[gi]));
                const int64_t off = (h * D + s * seg) / 4;
                __m256i acc[8];
                for (int g = 0; g < G; g++) acc[g] = _mm256_setzero_si256();
                for (int c = 0; c < nc; c++) { /* 16 bytes (64 codes) of each token's row */
                    /* z[u] holds the rows of tokens u and 4 + u in its two 128-bit lanes; the 4x4 dword transpose
                     * inside each lane then puts token i's dword j in lane i of y[j] */
                    __m256i z[4];
                    for (int u = 0; u < 4; u++)
                        z[u] = _mm256_inserti128_si256(
                            _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(r->row[u] + off + 16 * c))),
                            _mm_loadu_si128((const __m128i *)(r->row[4 + u] + off + 16 * c)), 1);
                    const __m256i a0 = _mm256_unpacklo_epi32(z[0], z[1]), a1 = _mm256_unpackhi_epi32(z[0], z[1]);
                    const __m256i a2 = _mm256_unpacklo_epi32(z[2], z[3]), a3 = _mm256_unpackhi_epi32(z[2], z[3]);
                    const __m256i y[4] = {_mm256_unpacklo_epi64(a0, a2), _mm256_unpackhi_epi64(a0, a2),
                                          _mm256_unpacklo_epi64(a1, a3), _mm256_unpackhi_epi64(a1, a3)};
                    for (int jj = 0; jj < 4; jj++)
                        for (int pp = 0; pp < 4; pp++) { /* plane pp of dword jj: q8's dword 4 * pp + jj (i8_pos) */
                            const __m256i cv = _mm256_and_si256(pp ? _mm256_srli_epi32(y[jj], 2 * pp) : y[jj], m);
                            for (int g = 0; g < G; g++) {
                                const int32_t *qd = (const int32_t *)(q8 + ((b * k->H + h) * G + g) * D + s * seg + 64 * c);
                                acc[g] = _mm256_add_epi16(acc[g], _mm256_maddubs_epi16(cv, _mm256_set1_epi32(qd[4 * pp + jj])));
                            }
                        }
                }
                for (int g = 0; g < G; g++) {
                    const __m256 d = _mm256_cvtepi32_ps(_mm256_madd_epi16(acc[g], ones));
                    const int64_t j = ((b * k->H + h) * G + g) * ns + s;
                    const __m256 qs = _mm256_set1_ps(qsc[j]), qzz = _mm256_set1_ps(qz[j]);
                    res[g] = k->float_zero ? _mm256_fmadd_ps(zz, qzz, _mm256_fmadd_ps(_mm256_mul_ps(sc, qs), d, res[g]))
                                           : _mm256_fmadd_ps(sc, _mm256_fmsub_ps(qs, d, _mm256_mul_ps(zz, qzz)), res[g]);
                }
            }
            for (int g = 0; g < G; g++) {
                float *o = out + b * osb + (int64_t)(h * G + g) * osg + t;
                if (n == 8) {
                    _mm256_storeu_ps(o, res[g]);
                } else {
                    float tmp[8];
                    _mm256_storeu_ps(tmp, res[g]);
                    for (int i = 0; i < n; i++) o[i] = tmp[i];
                }
            }
        }
    }
}

typedef void (*i8v_block_fn)(const tok_t *, int64_t, int64_t, int64_t, const int8_t *, int64_t, const float *,
                             const float *, float *, int64_t, int64_t, const uint8_t *);
#define I8V_BLOCK(G)                                                                                                 \
    static void i8v_block_##G(const tok_t *k, int64_t b, int64_t t0, int64_t t1, const int8_t *q8, int64_t nq,      \
                              const float *qsc, const float *qz, float *out, int64_t osb, int64_t osg,             \
                              const uint8_t *zrow) {                                                               \
        i8v_block_body(k, G, b, t0, t1, q8, nq, qsc, qz, out, osb, osg, zrow);                                       \
    }
I8V_BLOCK(1) I8V_BLOCK(2) I8V_BLOCK(3) I8V_BLOCK(4) I8V_BLOCK(5) I8V_BLOCK(6) I8V_BLOCK(7) I8V_BLOCK(8)
static const i8v_block_fn I8V_BLOCKS[9] = {NULL, i8v_block_1, i8v_block_2, i8v_block_3, i8v_block_4, i8v_block_5,
                                           i8v_block_6, i8v_block_7, i8v_block_8};
#endif

#ifdef AKVQ_VNNI
/* The key side's common case with VNNI (table 0 of 2 bits, segments of 64k channels): 16 tokens at a time with the
 * tokens in the lanes. Their 16-byte code chunks are transposed (4 loads + 12 inserts + 8 unpacks) so that lane i
 * of y[j] holds token i's dword j; each plane of each dword then meets one broadcast int8 query dword in a vpdpbusd,
 * and the 16 tokens' dots come out in one vector, ready for their scales and zero points: no horizontal reduction
 * (a transpose-add tree of 45 instructions per query head before, most of the kernel's vector work). A block holding
 * a text row (table 1) takes i8_block_body. A block's row pointers and scale/zero halves are gathered one block
 * ahead (gather16v: vector gathers, the class in the index's sign; gather16, scalar, where they do not fit). */
#define I16_MAXGR 64
typedef struct {
    int n, any1;
    const uint8_t *row[16];
    uint16_t sh[I16_MAXGR][16], zh[I16_MAXGR][16];
} g16_t;

static inline void gather16(const tok_t *k, int64_t b, int64_t t, int64_t t1, const uint8_t *zrow, g16_t *r) {
    const int ngr = k->ngr;
    const int64_t nb = k->W / 4;
    r->n = t1 - t < 16 ? (int)(t1 - t) : 16;
    r->any1 = 0;
    for (int i = 0; i < 16; i++) {
        const int64_t rr = tok_row(&k->ord, t + i, b);
        const int c = i < r->n ? k->cls[rr] : 2;
        r->any1 |= c == 1;
        if (c == 0) {
            const int64_t ii = row_index(k->idx[rr]);
            const uint16_t *sr = k->tab[0].scale + ii * ngr, *zr = k->tab[0].zero + ii * ngr;
            r->row[i] = k->tab[0].codes + ii * nb;
            for (int j = 0; j < ngr; j++) { r->sh[j][i] = sr[j]; r->zh[j][i] = zr[j]; }
        } else { /* a 16-bit row or past the end: zero codes, zero scale (the caller writes 16-bit rows) */
            r->row[i] = zrow;
            for (int j = 0; j < ngr; j++) r->sh[j][i] = r->zh[j][i] = 0;
        }
    }
}

/* gather16 in vector instructions: the 16 table indices in one vpgatherdd (their sign carries the class, see
 * table_index), the row pointers in 64-bit lanes, each scale/zero column in one gather. The per-token scalar
 * bookkeeping of gather16 (class byte, index, pointer, ngr halves stored one by one) was most of the key kernel's
 * time once the dots ran on VNNI. Needs n_rows * ngr * 2 < 2^31 (byte offsets in int32 lanes; the caller checks). */
#ifndef AKVQ_VGATHER
#define AKVQ_VGATHER 1 /* -DAKVQ_VGATHER=0: the scalar gather16 (scripts/bench_kernel.py breakdown=B times both) */
#endif
static inline __m512i idx16(const tok_t *k, int64_t b, int64_t t, int n) {
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i rows = _mm512_mullo_epi32(lane, _mm512_set1_epi32((int)tok_step(&k->ord, t)));
    return _mm512_mask_i32gather_epi32(_mm512_set1_epi32(-1), n > 0 ? (__mmask16)((1u << n) - 1) : 0, rows,
                                       k->idx + tok_row(&k->ord, t, b), 4);
}

/* halves tab[e] for the 16 byte offsets e (= 2 * element) of `e2`, 0 where m is off: each read as the aligned
 * dword holding it, so no read crosses the array's last aligned dword */
ALWAYS_INLINE __m256i half16(const uint16_t *tab, __m512i e2, __mmask16 m) {
    const uintptr_t a = (uintptr_t)tab;
    const int d = (int)(a & 3);
    const __m512i o = _mm512_add_epi32(e2, _mm512_set1_epi32(d));
    const __m512i w = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m,
                                                  _mm512_and_si512(o, _mm512_set1_epi32(~3)), (const void *)(a - d), 1);
    return _mm512_cvtepi32_epi16(_mm512_srlv_epi32(w, _mm512_slli_epi32(_mm512_and_si512(o, _mm512_set1_epi32(2)), 3)));
}

/* The 16 rows' scale (or zero) halves 0..ngr-1 (ngr <= 4, e0: each row's byte offset 2 ngr i) into out[j * ld + i],
 * 0 where m is off, with 2 qword gathers (8 rows each) and one word permute per two groups: half16 takes one dword
 * gather of 16 rows per group (ngr x 16 loads; 6 gathers per 16 tokens and store at SmolLM2's 3 groups, ~1/4 of the
 * key kernel's samples at batch 79). Each row is read as the 8 bytes that end where it ends (from byte 0 for the
 * first rows), shifted down to its first half: no read leaves [tab, tab + max(size, 8)), and with tab 8-byte aligned
 * (the caller checks) the first 8 bytes are one aligned qword, so a table shorter than 8 bytes is read inside its
 * page. The same halves as half16 (bit-identical outputs). -DAKVQ_QGATHER=0: half16 always. */
ALWAYS_INLINE void halves16q(const uint16_t *tab, int ngr, __m512i e0, __mmask16 m, uint16_t *out, int ld) {
    const __m512i end = _mm512_add_epi32(e0, _mm512_set1_epi32(2 * ngr));
    const __m512i off = _mm512_max_epi32(_mm512_sub_epi32(end, _mm512_set1_epi32(8)), _mm512_setzero_si512());
    const __m512i sw = _mm512_slli_epi32(_mm512_sub_epi32(e0, off), 3); /* bits to shift down */
    const __m256i olo = _mm512_castsi512_si256(off), ohi = _mm512_extracti64x4_epi64(off, 1);
    __m512i a = _mm512_mask_i32gather_epi64(_mm512_setzero_si512(), (__mmask8)m, olo, (const void *)tab, 1);
    __m512i c = _mm512_mask_i32gather_epi64(_mm512_setzero_si512(), (__mmask8)(m >> 8), ohi, (const void *)tab, 1);
    a = _mm512_srlv_epi64(a, _mm512_cvtepi32_epi64(_mm512_castsi512_si256(sw)));
    c = _mm512_srlv_epi64(c, _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(sw, 1)));
    /* output word o (group j + o / 16, row o % 16): word 4 (o % 8) + j + o / 16 of a (rows 0-7) or c (rows 8-15) */
    const __m512i p0 = _mm512_set_epi16(61, 57, 53, 49, 45, 41, 37, 33, 29, 25, 21, 17, 13, 9, 5, 1,
                                        60, 56, 52, 48, 44, 40, 36, 32, 28, 24, 20, 16, 12, 8, 4, 0);
    for (int j = 0; j < ngr; j += 2) {
        const __m512i w = _mm512_permutex2var_epi16(a, _mm512_add_epi16(p0, _mm512_set1_epi16((short)j)), c);
        _mm256_storeu_si256((__m256i *)(out + j * ld), _mm512_castsi512_si256(w));
        if (j + 1 < ngr) _mm256_storeu_si256((__m256i *)(out + (j + 1) * ld), _mm512_extracti64x4_epi64(w, 1));
    }
}

/* rows of tokens [t, t + 16) of sequence b: row pointers into row[0..16) (zrow where not class 0), scale and zero
 * halves into sh/zh[j * ld + i] (0 where not class 0); returns the class-0 lanes, sets *any1 if a class-1 row is
 * among them */
static inline __mmask16 gather16v_into(const tok_t *k, int64_t b, int64_t t, int64_t t1, const uint8_t *zrow,
                                       const uint8_t **row, uint16_t *sh, uint16_t *zh, int ld, int *any1) {
    const int ngr = k->ngr, n = t1 - t < 16 ? (int)(t1 - t) : 16; /* n <= 0: an empty block */
    const int64_t nb = k->W / 4;
    if (n == 16 && ngr <= 4 && t < k->ord.S) { /* a sealed block: 16 consecutive 2-bit rows, found from two indices */
        const int64_t r0 = tok_row(&k->ord, t, b);
        const int32_t a = k->idx[r0];
        if (a >= 0 && k->idx[r0 + 15] == a + 15) { /* all of class 0 (another class's row would stop the count) */
            const __m512i lane = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7), nbv = _mm512_set1_epi64(nb);
            const __m512i base = _mm512_set1_epi64((long long)(uintptr_t)(k->tab[0].codes + (int64_t)a * nb));
            _mm512_storeu_si512((void *)row, _mm512_add_epi64(base, _mm512_mullo_epi64(lane, nbv)));
            const __m512i lane8 = _mm512_add_epi64(lane, _mm512_set1_epi64(8));
            _mm512_storeu_si512((void *)(row + 8), _mm512_add_epi64(base, _mm512_mullo_epi64(lane8, nbv)));
            /* the 16 rows' 16 ngr halves in two masked loads, each group's column by one word permute */
            const int nh = 16 * ngr;
            const __mmask32 l0 = nh >= 32 ? 0xffffffffu : (__mmask32)((1u << nh) - 1);
            const __mmask32 l1 = nh <= 32 ? 0 : nh >= 64 ? 0xffffffffu : (__mmask32)((1u << (nh - 32)) - 1);
            const uint16_t *sp = k->tab[0].scale + (int64_t)a * ngr, *zp = k->tab[0].zero + (int64_t)a * ngr;
            const __m512i s0 = _mm512_maskz_loadu_epi16(l0, sp), s1 = _mm512_maskz_loadu_epi16(l1, sp + 32);
            const __m512i z0 = _mm512_maskz_loadu_epi16(l0, zp), z1 = _mm512_maskz_loadu_epi16(l1, zp + 32);
            const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
            const __m512i step = _mm512_mullo_epi32(iota, _mm512_set1_epi32(ngr));
            for (int j = 0; j < ngr; j++) { /* word i of the column: half i * ngr + j of the 16 rows */
                const __m512i ix =
                    _mm512_castsi256_si512(_mm512_cvtepi32_epi16(_mm512_add_epi32(step, _mm512_set1_epi32(j))));
                const __m512i sw = _mm512_permutex2var_epi16(s0, ix, s1), zw = _mm512_permutex2var_epi16(z0, ix, z1);
                _mm256_storeu_si256((__m256i *)(sh + j * ld), _mm512_castsi512_si256(sw));
                _mm256_storeu_si256((__m256i *)(zh + j * ld), _mm512_castsi512_si256(zw));
            }
            *any1 = 0;
            return (__mmask16)0xffff;
        }
    }
    const __m512i idx = idx16(k, b, t, n);
    const __mmask16 m0 = _mm512_cmpge_epi32_mask(idx, _mm512_setzero_si512());
    *any1 = _mm512_cmplt_epi32_mask(idx, _mm512_set1_epi32(-1)) != 0;
    const __m512i base = _mm512_set1_epi64((long long)(uintptr_t)k->tab[0].codes);
    const __m512i zr = _mm512_set1_epi64((long long)(uintptr_t)zrow), nbv = _mm512_set1_epi64(nb);
    const __m512i lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(idx));
    const __m512i hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(idx, 1));
    _mm512_storeu_si512((void *)row,
                        _mm512_mask_blend_epi64((__mmask8)m0, zr, _mm512_add_epi64(base, _mm512_mullo_epi64(lo, nbv))));
    _mm512_storeu_si512((void *)(row + 8), _mm512_mask_blend_epi64((__mmask8)(m0 >> 8), zr,
                                                                    _mm512_add_epi64(base, _mm512_mullo_epi64(hi, nbv))));
    const __m512i e0 = _mm512_mullo_epi32(idx, _mm512_set1_epi32(2 * ngr));
    if (k->qgather) {
        halves16q(k->tab[0].scale, ngr, e0, m0, sh, ld);
        halves16q(k->tab[0].zero, ngr, e0, m0, zh, ld);
        return m0;
    }
    for (int j = 0; j < ngr; j++) {
        const __m512i e = _mm512_add_epi32(e0, _mm512_set1_epi32(2 * j));
        _mm256_storeu_si256((__m256i *)(sh + j * ld), half16(k->tab[0].scale, e, m0));
        _mm256_storeu_si256((__m256i *)(zh + j * ld), half16(k->tab[0].zero, e, m0));
    }
    return m0;
}

static inline void gather16v(const tok_t *k, int64_t b, int64_t t, int64_t t1, const uint8_t *zrow, g16_t *r) {
    r->n = t1 - t < 16 ? (int)(t1 - t) : 16;
    gather16v_into(k, b, t, t1, zrow, r->row, &r->sh[0][0], &r->zh[0][0], 16, &r->any1);
}

/* blk_prefetch for the class-0 rows of a 16-token block, the indices read in gathers. Items run chunk-major, so
 * sequences b and b + 1 read neighbouring rows (48-byte code rows, 6-byte scale rows at SmolLM2's shapes) and mostly
 * the same cache lines: only every AKVQ_PFSPAN-th sequence prefetches, the lines of its own rows and of the next
 * AKVQ_PFSPAN - 1 sequences' (a prefetch per row was ~1/4 of the kernels' samples at batch 79). Interleaved A/B of
 * the kernels alone at batch 79, 8K (scratch script): span 1 (per row) / 2 / 4 / 8 / 16 / 32: key 16.2 / 15.0 / 14.5
 * / 12.5-12.9 / 13.5 / 14.4 ms, values 18.9-19.5 / 17.9 / 17.0 / 14.7-15.1 / 16.1 / 17.0 ms. */
#ifndef AKVQ_PFSPAN
#define AKVQ_PFSPAN 8
#endif
static inline void prefetch16v(const tok_t *k, int64_t b, int64_t t, int64_t t1) {
    if (t >= t1) return;
    if (t < k->ord.S) { /* a sealed block: the sequence's 16 rows are one stretch, from the first one's index */
        const int n = t1 - t < 16 ? (int)(t1 - t) : 16;
        const int64_t a = k->idx[tok_row(&k->ord, t, b)], nb = k->W / 4, ngr = k->ngr;
        if (a < 0) return;
        const uint8_t *c0 = k->tab[0].codes + a * nb, *c1 = c0 + n * nb;
        for (const uint8_t *pp = c0; pp < c1; pp += 64) __builtin_prefetch(pp, 0, 3);
        const uint16_t *s0 = k->tab[0].scale + a * ngr, *z0 = k->tab[0].zero + a * ngr;
        for (int64_t o = 0; o < n * ngr; o += 32) { __builtin_prefetch(s0 + o, 0, 3); __builtin_prefetch(z0 + o, 0, 3); }
        return;
    }
    if (b % AKVQ_PFSPAN) return;
    const int n = t1 - t < 16 ? (int)(t1 - t) : 16;
    const int64_t bl = b + AKVQ_PFSPAN - 1 < k->B ? b + AKVQ_PFSPAN - 1 : k->B - 1, nb = k->W / 4, ngr = k->ngr;
    int32_t lo[16], hi[16];
    _mm512_storeu_si512((void *)lo, idx16(k, b, t, n));
    _mm512_storeu_si512((void *)hi, idx16(k, bl, t, n));
    for (int i = 0; i < n; i++) {
        int64_t a = lo[i], z = hi[i];
        if (a < 0) a = z;
        if (z < 0) z = a;
        if (a < 0) continue; /* neither end is a 2-bit row */
        if (z < a || z - a > 2 * AKVQ_PFSPAN) z = a;
        const uint8_t *c0 = k->tab[0].codes + a * nb, *c1 = k->tab[0].codes + z * nb + nb - 1;
        for (const uint8_t *pp = c0; pp < c1; pp += 64) __builtin_prefetch(pp, 0, 3);
        __builtin_prefetch(c1, 0, 3);
        __builtin_prefetch(k->tab[0].scale + a * ngr, 0, 3);
        __builtin_prefetch(k->tab[0].scale + z * ngr + ngr - 1, 0, 3);
        __builtin_prefetch(k->tab[0].zero + a * ngr, 0, 3);
        __builtin_prefetch(k->tab[0].zero + z * ngr + ngr - 1, 0, 3);
    }
}

ALWAYS_INLINE void i16_block_body(const tok_t *k, int G, int64_t b, int64_t t0, int64_t t1, const int8_t *q8,
                                  int64_t nq, const float *qsc, const float *qz, float *out, int64_t osb, int64_t osg,
                                  const uint8_t *zrow, int vec) {
    const int H = (int)k->H, D = (int)k->D, seg = k->seg, ns = k->ns, nc = seg / 64;
    const __m512i m = _mm512_set1_epi8(3);
    g16_t buf[2];
    if (AKVQ_PF && vec) { prefetch16v(k, b, t0, t1); prefetch16v(k, b, t0 + 16, t1); }
    else if (AKVQ_PF) blk_prefetch(k, b, t0, t1, 32);
    if (vec) gather16v(k, b, t0, t1, zrow, &buf[0]);
    else gather16(k, b, t0, t1, zrow, &buf[0]);
    int cur = 0;
    for (int64_t t = t0; t < t1; t += 16, cur ^= 1) {
        const g16_t *r = &buf[cur];
        const int n = r->n;
        if (AKVQ_PF) {
            if (vec) prefetch16v(k, b, t + 32, t1);
            else blk_prefetch(k, b, t + 32, t1, 16);
            if (t + 16 < t1)
                for (int e = 0; e < H * G && (osb || AKVQ_PFCHUNK); e++)
                    __builtin_prefetch(out + b * osb + e * osg + t + 16, 1, 3);
            else if (vec && b + 1 < k->B) { /* the next item (sequence b + 1, same tokens): its first rows */
                prefetch16v(k, b + 1, t0, t1);
                for (int e = 0; e < H * G && (osb || AKVQ_PFCHUNK); e++)
                    __builtin_prefetch(out + (b + 1) * osb + e * osg + t0, 1, 3);
            }
        }
        if (t + 16 < t1) {
            if (vec) gather16v(k, b, t + 16, t1, zrow, &buf[cur ^ 1]);
            else gather16(k, b, t + 16, t1, zrow, &buf[cur ^ 1]);
        }
        if (r->any1) {
            i8_block_body(k, G, b, t, t + n, q8, nq, qsc, qz, out, osb, osg);
            continue;
        }
        for (int h = 0; h < H; h++) {
            __m512 res[8];
            for (int g = 0; g < G; g++) res[g] = _mm512_setzero_ps();
            for (int s = 0; s < ns; s++) {
                const int gi = k->gidx[h * ns + s];
                const __m512 sc = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)r->sh[gi]));
                const __m512 zz = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)r->zh[gi]));
                const int64_t off = (h * D + s * seg) / 4;
                __m512i acc[16];
                for (int g = 0; g < 2 * G; g++) acc[g] = _mm512_setzero_si512();
                for (int c = 0; c < nc; c++) { /* 16 bytes (64 codes) of each token's row */
                    /* z[u] holds the rows of tokens u, 4 + u, 8 + u, 12 + u in its four 128-bit lanes; the 4x4
                     * dword transpose inside each lane then puts token i's dword j in lane i of y[j] */
                    __m512i z[4];
                    for (int u = 0; u < 4; u++) {
                        __m512i x = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(r->row[u] + off + 16 * c)));
                        x = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i *)(r->row[4 + u] + off + 16 * c)), 1);
                        x = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i *)(r->row[8 + u] + off + 16 * c)), 2);
                        z[u] = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i *)(r->row[12 + u] + off + 16 * c)), 3);
                    }
                    const __m512i t0 = _mm512_unpacklo_epi32(z[0], z[1]), t1 = _mm512_unpackhi_epi32(z[0], z[1]);
                    const __m512i t2 = _mm512_unpacklo_epi32(z[2], z[3]), t3 = _mm512_unpackhi_epi32(z[2], z[3]);
                    const __m512i y[4] = {_mm512_unpacklo_epi64(t0, t2), _mm512_unpackhi_epi64(t0, t2),
                                          _mm512_unpacklo_epi64(t1, t3), _mm512_unpackhi_epi64(t1, t3)};
                    for (int jj = 0; jj < 4; jj++)
                        for (int pp = 0; pp < 4; pp++) { /* plane pp of dword jj: q8's dword 4 * pp + jj (i8_pos) */
                            const __m512i cv = _mm512_and_si512(pp ? _mm512_srli_epi32(y[jj], 2 * pp) : y[jj], m);
                            for (int g = 0; g < G; g++) { /* two chains per head: half the vpdpbusd latency chain */
                                const int32_t *qd = (const int32_t *)(q8 + ((b * k->H + h) * G + g) * D + s * seg + 64 * c);
                                acc[2 * g + (jj & 1)] =
                                    dpbusd_acc(acc[2 * g + (jj & 1)], cv, _mm512_set1_epi32(qd[4 * pp + jj]));
                            }
                        }
                }
                for (int g = 0; g < G; g++) {
                    const __m512 d = _mm512_cvtepi32_ps(_mm512_add_epi32(acc[2 * g], acc[2 * g + 1]));
                    const int64_t j = ((b * k->H + h) * G + g) * ns + s;
                    const __m512 qs = _mm512_set1_ps(qsc[j]), qzz = _mm512_set1_ps(qz[j]);
                    res[g] = k->float_zero ? _mm512_fmadd_ps(zz, qzz, _mm512_fmadd_ps(_mm512_mul_ps(sc, qs), d, res[g]))
                                           : _mm512_fmadd_ps(sc, _mm512_fmsub_ps(qs, d, _mm512_mul_ps(zz, qzz)), res[g]);
                }
            }
            for (int g = 0; g < G; g++)
                _mm512_mask_storeu_ps(out + b * osb + (int64_t)(h * G + g) * osg + t, (__mmask16)((1u << n) - 1), res[g]);
        }
    }
}

typedef void (*i16_block_fn)(const tok_t *, int64_t, int64_t, int64_t, const int8_t *, int64_t, const float *,
                             const float *, float *, int64_t, int64_t, const uint8_t *, int);
#define I16_BLOCK(G)                                                                                                 \
    static void i16_block_##G(const tok_t *k, int64_t b, int64_t t0, int64_t t1, const int8_t *q8, int64_t nq,      \
                              const float *qsc, const float *qz, float *out, int64_t osb, int64_t osg,             \
                              const uint8_t *zrow, int vec) {                                                      \
        i16_block_body(k, G, b, t0, t1, q8, nq, qsc, qz, out, osb, osg, zrow, vec);                                  \
    }
I16_BLOCK(1) I16_BLOCK(2) I16_BLOCK(3) I16_BLOCK(4) I16_BLOCK(5) I16_BLOCK(6) I16_BLOCK(7) I16_BLOCK(8)
static const i16_block_fn I16_BLOCKS[9] = {NULL, i16_block_1, i16_block_2, i16_block_3, i16_block_4, i16_block_5,
                                           i16_block_6, i16_block_7, i16_block_8};
#endif

/* a[g * D + 0..32) += sum over the block's table-0 tokens of w[g][i] * codes (one 32-channel chunk at byte `off`
 * of each row; bits in {2, 4, 8}, plane-major positions). GN <= 2 query heads per pass: 8 accumulators, the
 * weights, the codes and the mask stay within the 16 AVX2 registers (G = 3 spilled). */
ALWAYS_INLINE void chunk_pass(const blk_t *r, int GN, int bits, int64_t off, const float (*w)[8], float *a, int64_t D) {
    const int per = 8 / bits, nu = bits / 2; /* 32 channels = nu units of 8 bytes, per planes each */
    const __m256i mask = _mm256_set1_epi32((1 << bits) - 1);
    __m256 acc[2][4];
    for (int g = 0; g < GN; g++)
        for (int v = 0; v < 4; v++) acc[g][v] = _mm256_loadu_ps(a + g * D + 8 * v);
    for (int i = 0; i < r->n; i++) {
        if (r->cl[i] != 0) continue;
        const uint8_t *p = r->row[i] + off;
        __m256 wv[2];
        for (int g = 0; g < GN; g++) wv[g] = _mm256_broadcast_ss(&w[g][i]);
        for (int u = 0; u < nu; u++) {
            const __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + 8 * u)));
            for (int j = 0; j < per; j++) {
                const __m256 f = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(x, j * bits), mask));
                for (int g = 0; g < GN; g++) acc[g][u * per + j] = _mm256_fmadd_ps(wv[g], f, acc[g][u * per + j]);
            }
        }
    }
    for (int g = 0; g < GN; g++)
        for (int v = 0; v < 4; v++) _mm256_storeu_ps(a + g * D + 8 * v, acc[g][v]);
}

/* outputs of tokens [t0, t1) of sequence b: table 0 rows in registers, table 1 rows through memory */
ALWAYS_INLINE void out_block_body(const tok_t *k, int G, int bits0, int64_t b, int64_t t0, int64_t t1,
                                  const float *p, int64_t psb, int64_t psg, float *acc, int64_t nacc, float *kz) {
    const int H = (int)k->H, D = (int)k->D, seg = k->seg, ns = k->ns;
    blk_t r;
    for (int64_t t = t0; t < t1; t += 8) {
        blk_rows(k, b, t, t1, &r);
        for (int h = 0; h < H; h++) {
            float pv[3][8];
            for (int g = 0; g < G; g++) {
                const float *pp = p + b * psb + (int64_t)(h * G + g) * psg + t;
                for (int i = 0; i < 8; i++) pv[g][i] = i < r.n ? pp[i] : 0.0f;
            }
            for (int s = 0; s < ns; s++) {
                const int gi = k->gidx[h * ns + s];
                float scv[8], zzv[8], w[3][8];
                for (int i = 0; i < 8; i++) {
                    scv[i] = r.cl[i] < 2 ? half_to_float(r.sr[i][gi]) : 0.0f;
                    zzv[i] = r.cl[i] < 2 ? half_to_float(r.zr[i][gi]) : 0.0f;
                }
                const __m256 sc = _mm256_loadu_ps(scv), zz = _mm256_loadu_ps(zzv);
                for (int g = 0; g < G; g++) {
                    const __m256 pg = _mm256_loadu_ps(pv[g]), wg = _mm256_mul_ps(pg, sc);
                    _mm256_storeu_ps(w[g], wg);
                    kz[((b * k->H + h) * G + g) * ns + s] += hsum8(k->float_zero ? _mm256_mul_ps(pg, zz)
                                                                                 : _mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(wg, zz)));
                }
                float *a0 = acc + ((b * k->H + h) * G) * D + s * seg, *a1 = a0 + nacc;
                for (int c0 = 0; c0 < seg; c0 += 32) {
                    const int ch = h * D + s * seg + c0;
                    for (int g0 = 0; g0 < G; g0 += 2) {
                        if (G - g0 >= 2) chunk_pass(&r, 2, bits0, (int64_t)ch * bits0 / 8, w + g0, a0 + g0 * D + c0, D);
                        else chunk_pass(&r, 1, bits0, (int64_t)ch * bits0 / 8, w + g0, a0 + g0 * D + c0, D);
                    }
                    for (int i = 0; i < r.n; i++) {
                        if (r.cl[i] != 1) continue;
                        float wi[3];
                        for (int g = 0; g < G; g++) wi[g] = w[g][i];
                        if (k->pm[1]) {
                            seg_axpy_pm(r.row[i] + ch * r.bits[i] / 8, r.bits[i], 32, wi, a1 + c0, D, G);
                        } else {
                            float f[32];
                            unpack_run(r.row[i], r.bits[i], ch, 32, f);
                            for (int g = 0; g < G; g++)
                                for (int d = 0; d < 32; d++) a1[g * D + c0 + d] += wi[g] * f[d];
                        }
                    }
                }
            }
        }
    }
}

typedef void (*out_block_fn)(const tok_t *, int64_t, int64_t, int64_t, const float *, int64_t, int64_t, float *,
                             int64_t, float *);
#define OUT_BLOCK(G, BITS)                                                                                           \
    static void out_block_##G##_##BITS(const tok_t *k, int64_t b, int64_t t0, int64_t t1, const float *p,           \
                                       int64_t psb, int64_t psg, float *acc, int64_t nacc, float *kz) {             \
        out_block_body(k, G, BITS, b, t0, t1, p, psb, psg, acc, nacc, kz);                                           \
    }
#define OUT_BLOCK_G(G) OUT_BLOCK(G, 2) OUT_BLOCK(G, 4) OUT_BLOCK(G, 8)
OUT_BLOCK_G(1) OUT_BLOCK_G(2) OUT_BLOCK_G(3)
static const out_block_fn OUT_BLOCKS[4][3] = {{NULL, NULL, NULL}, {out_block_1_2, out_block_1_4, out_block_1_8},
                                              {out_block_2_2, out_block_2_4, out_block_2_8},
                                              {out_block_3_2, out_block_3_4, out_block_3_8}};

/* ---- integer value path (AVX2, table 0 of 2 bits): sum_t w_t c_t with u8 weights and vpmaddubsw -----------------
 * Per (sequence, head, segment, query head) and block of VB tokens, the weights w_t = p_t s_t (>= 0) are quantized
 * to u8 with one scale per block, wb = max_t w_t / 255, and the zero-point term uses the same quantized weights
 * (-wb sum_t w8_t z_t, or wb sum_t w8_t z_t / s_t for float zero points), so the block's result is exactly attention
 * with each p_t perturbed by at most wb / (2 s_t): the error is sum_t dp_t v_t, over centred values. Codes of two tokens are interleaved byte by byte, (c_t, c_t+1) per
 * channel, so that vpmaddubsw(weights u8, codes s8) gives w_t c_t + w_t+1 c_t+1 in 16 bits; VB / 2 pairs add up to
 * at most 16 * 2 * 255 * 3 < 2^15 (no overflow), then widen to fp32 once per block, times wb. Per 16-byte chunk (64
 * channels): plane pair 0|1 (shifts 0 and 2 in the two 128-bit lanes) and 2|3 (4, 6); unpacklo/hi of the two tokens'
 * bytes give 16-bit lanes hh * 8 + j = channel 4 (j + 8 u) + 2 ph + hh, widened to fp32 at
 * (2 ph + u) * 16 + hh * 8 + j (v8_pos). Class-1 rows take the float path (exact weights), 16-bit rows the caller. */
#define VB 32

ALWAYS_INLINE void v8_chunk(int G, int NU, const uint8_t *const *rows, int npair, const uint16_t (*wq)[VB / 2],
                            const float *wb, float *a, int64_t D) {
    const __m256i m = _mm256_set1_epi8(3);
    for (int ph = 0; ph < 2; ph++) {
        const __m256i sh = ph ? _mm256_setr_epi32(4, 4, 4, 4, 6, 6, 6, 6) : _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2);
        for (int u0 = 0; u0 < 2; u0 += NU) {
            __m256i acc[8][2];
            for (int g = 0; g < G; g++)
                for (int u = 0; u < NU; u++) acc[g][u] = _mm256_setzero_si256();
            for (int i = 0; i < npair; i++) {
                const __m256i x0 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)rows[2 * i]));
                const __m256i x1 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)rows[2 * i + 1]));
                const __m256i c0 = _mm256_and_si256(_mm256_srlv_epi32(x0, sh), m);
                const __m256i c1 = _mm256_and_si256(_mm256_srlv_epi32(x1, sh), m);
                __m256i uu[2];
                if (NU == 2 || u0 == 0) uu[0] = _mm256_unpacklo_epi8(c0, c1);
                if (NU == 2 || u0 == 1) uu[NU == 2 ? 1 : 0] = _mm256_unpackhi_epi8(c0, c1);
                for (int g = 0; g < G; g++) {
                    const __m256i wv = _mm256_set1_epi16((short)wq[g][i]);
                    for (int u = 0; u < NU; u++) acc[g][u] = _mm256_add_epi16(acc[g][u], _mm256_maddubs_epi16(wv, uu[u]));
                }
            }
            for (int g = 0; g < G; g++) {
                const __m256 s = _mm256_set1_ps(wb[g]);
                for (int u = 0; u < NU; u++) {
                    float *f = a + g * D + (2 * ph + u0 + u) * 16;
                    const __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(acc[g][u])));
                    const __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(acc[g][u], 1)));
                    _mm256_storeu_ps(f, _mm256_fmadd_ps(lo, s, _mm256_loadu_ps(f)));
                    _mm256_storeu_ps(f + 8, _mm256_fmadd_ps(hi, s, _mm256_loadu_ps(f + 8)));
                }
            }
        }
    }
}

#ifdef AKVQ_VNNI
/* v8_chunk with VNNI: the four planes of a 16-byte chunk in one register (shifts 0, 2, 4, 6 per 128-bit lane), and
 * four tokens' codes interleaved per channel (two byte and two word unpacks), so one vpdpbusd adds four tokens' u8
 * weight x code products into int32 lanes (v8_chunk: one vpmaddubsw + add per pair of tokens and 16 channels). The
 * sums are the same integers, stored in the same (v8) order. acc[g][v] lane (128-bit lane L, dword m) holds chunk
 * byte 4v + m of plane L. */
ALWAYS_INLINE void v8_quad512(int G, const uint8_t *const *rows, int64_t off, int nquad, const uint8_t (*wq)[VB],
                              const float *wb, float *a, int64_t D) {
    const __m512i m = _mm512_set1_epi8(3), sh = _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6);
    __m512i acc[8][4];
    for (int g = 0; g < G; g++)
        for (int v = 0; v < 4; v++) acc[g][v] = _mm512_setzero_si512();
    for (int i = 0; i < nquad; i++) {
        __m512i c[4];
        for (int u = 0; u < 4; u++)
            c[u] = _mm512_and_si512(
                _mm512_srlv_epi32(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(rows[4 * i + u] + off))), sh), m);
        const __m512i lo01 = _mm512_unpacklo_epi8(c[0], c[1]), hi01 = _mm512_unpackhi_epi8(c[0], c[1]);
        const __m512i lo23 = _mm512_unpacklo_epi8(c[2], c[3]), hi23 = _mm512_unpackhi_epi8(c[2], c[3]);
        const __m512i x[4] = {_mm512_unpacklo_epi16(lo01, lo23), _mm512_unpackhi_epi16(lo01, lo23),
                              _mm512_unpacklo_epi16(hi01, hi23), _mm512_unpackhi_epi16(hi01, hi23)};
        for (int g = 0; g < G; g++) {
            int32_t w4;
            memcpy(&w4, wq[g] + 4 * i, 4);
            const __m512i w = _mm512_set1_epi32(w4);
            for (int v = 0; v < 4; v++) acc[g][v] = dpbusd_acc(acc[g][v], w, x[v]);
        }
    }
    /* v8 order: float F = 32 (L / 2) + 16 (v / 2) + 8 (L % 2) + 4 (v % 2) + m */
    const __m512i i0 = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    const __m512i i1 = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    for (int g = 0; g < G; g++) {
        const __m512 s = _mm512_set1_ps(wb[g]);
        for (int hv = 0; hv < 2; hv++) {
            const __m512 A = _mm512_cvtepi32_ps(acc[g][2 * hv]), B = _mm512_cvtepi32_ps(acc[g][2 * hv + 1]);
            float *p0 = a + g * D + 16 * hv, *p1 = a + g * D + 32 + 16 * hv;
            _mm512_storeu_ps(p0, _mm512_fmadd_ps(_mm512_permutex2var_ps(A, i0, B), s, _mm512_loadu_ps(p0)));
            _mm512_storeu_ps(p1, _mm512_fmadd_ps(_mm512_permutex2var_ps(A, i1, B), s, _mm512_loadu_ps(p1)));
        }
    }
}
#endif

ALWAYS_INLINE float hmax8(__m256 v) {
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    x = _mm_max_ss(x, _mm_shuffle_ps(x, x, 1));
    return _mm_cvtss_f32(x);
}

#define V8_MAXGR 64 /* scale/zero groups per row the integer value path takes */
#define V8_HS 16    /* (head, segment) pairs per row whose weights out_v8_body prepares up front (else per pair) */
#ifndef AKVQ_V8SEAL
#define AKVQ_V8SEAL 1 /* AVX2 without VNNI: a sealed block's rows found from two indices (out_v8_body) */
#endif
#ifndef AKVQ_V8HOIST
#define AKVQ_V8HOIST 1 /* -DAKVQ_V8HOIST=0: each pair's weights just before its dot products */
#endif

#ifdef AKVQ_VNNI
/* The block's weights w_t = p_t s_t of (head h, segment s), for each of the G query heads, quantized to u8 (wq, with
 * the scale wb; out_v8_body's comment): tokens [t, t + n) of sequence b, shg/zhg the block's scale/zero halves of
 * this segment's group, m0/m1 the class-0/class-1 lanes. Adds the zero-point terms to kz; with class-1 rows (any1)
 * also the exact weights w. Returns whether any weight is > 0. */
ALWAYS_INLINE int v8_weights(const tok_t *k, int G, int64_t b, int64_t t, int n, int h, int s, const float *p,
                             int64_t psb, int64_t psg, const uint16_t *shg, const uint16_t *zhg, const float *m0,
                             const float *m1, int any1, float *kz, float (*w)[VB], float *wb, uint8_t (*wq)[VB]) {
    const int ns = k->ns;
    __m512 sc[2], zq[2], zz[2];
    for (int v = 0; v < 2; v++) {
        sc[v] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(shg + 16 * v)));
        zz[v] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(zhg + 16 * v)));
        const __m512 z0 = _mm512_mul_ps(zz[v], _mm512_loadu_ps(m0 + 16 * v));
        zq[v] = k->float_zero ? _mm512_maskz_div_ps(_mm512_cmp_ps_mask(sc[v], _mm512_setzero_ps(), _CMP_GT_OQ), z0, sc[v])
                              : z0;
    }
    int live = 0;
    const __mmask16 ld0 = n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1);
    const __mmask16 ld1 = n >= 32 ? 0xffff : n <= 16 ? 0 : (__mmask16)((1u << (n - 16)) - 1);
    for (int g = 0; g < G; g++) {
        const int64_t j = ((b * k->H + h) * G + g) * ns + s;
        const float *pp = p + b * psb + (int64_t)(h * G + g) * psg + t;
        __m512 wv[2], mx = _mm512_setzero_ps(), k1 = _mm512_setzero_ps();
        for (int v = 0; v < 2; v++) {
            const __m512 pv = _mm512_maskz_loadu_ps(v ? ld1 : ld0, pp + 16 * v);
            const __m512 wu = _mm512_mul_ps(pv, sc[v]);
            wv[v] = _mm512_mul_ps(wu, _mm512_loadu_ps(m0 + 16 * v));
            mx = _mm512_max_ps(mx, wv[v]);
            if (any1) { /* class-1 rows: exact weights, + p z (float zero) or - w z */
                _mm512_storeu_ps(w[g] + 16 * v, wu);
                k1 = _mm512_fmadd_ps(_mm512_mul_ps(k->float_zero ? pv : wu, zz[v]),
                                     _mm512_loadu_ps(m1 + 16 * v), k1);
            }
        }
        const float wmax = _mm512_reduce_max_ps(mx);
        const __m512 inv = _mm512_set1_ps(wmax > 0 ? 255.0f / wmax : 0.0f);
        wb[g] = wmax / 255.0f;
        __m512 zs = _mm512_setzero_ps();
        for (int v = 0; v < 2; v++) {
            const __m512i qi = _mm512_cvtps_epi32(_mm512_mul_ps(wv[v], inv));
            zs = _mm512_fmadd_ps(_mm512_cvtepi32_ps(qi), zq[v], zs);
            _mm_store_si128((__m128i *)(wq[g] + 16 * v), _mm512_cvtusepi32_epi8(qi));
        }
        const float zsum = _mm512_reduce_add_ps(zs);
        const float z1 = any1 ? _mm512_reduce_add_ps(k1) : 0.0f;
        kz[j] += k->float_zero ? z1 + wb[g] * zsum : -(z1 + wb[g] * zsum);
        live |= wmax > 0;
    }
    return live;
}
#endif

/* outputs of tokens [t0, t1) of sequence b, VB tokens at a time: table 0 (2 bits) through v8_chunk into acc (v8
 * order), table 1 through the float path into acc + nacc; zero-point terms into kz. `zrow`: W / 4 zero bytes. The
 * block's scales and zero points are gathered once per block (all heads), the weights prepared 8 tokens a vector. */
ALWAYS_INLINE void out_v8_body(const tok_t *k, int G, int64_t b, int64_t t0, int64_t t1, const float *p, int64_t psb,
                               int64_t psg, float *acc, int64_t nacc, float *kz, const uint8_t *zrow, int vec) {
    const int H = (int)k->H, D = (int)k->D, seg = k->seg, ns = k->ns, nc = seg / 64, ngr = k->ngr;
    const int NU = G <= 4 ? 2 : 1, bits1 = (int)k->tab[1].bits;
    int cl[VB];
    const uint8_t *row[VB];
    uint16_t sh[V8_MAXGR][VB], zh[V8_MAXGR][VB];
    float m0[VB], m1[VB];
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    (void)vec;
#ifdef AKVQ_VNNI
    if (AKVQ_PF && vec) { prefetch16v(k, b, t0, t1); prefetch16v(k, b, t0 + 16, t1); }
    else
#endif
    if (AKVQ_PF) blk_prefetch(k, b, t0, t1, VB);
    for (int64_t t = t0; t < t1; t += VB) {
        const int n = t1 - t < VB ? (int)(t1 - t) : VB, npair = (n + 1) / 2;
        if (AKVQ_PF && t + VB < t1) {
#ifdef AKVQ_VNNI
            if (vec) { prefetch16v(k, b, t + VB, t1); prefetch16v(k, b, t + VB + 16, t1); }
            else
#endif
            blk_prefetch(k, b, t + VB, t1, VB);
            /* the next block's weights: one stream per query head and sequence */
            for (int e = 0; e < H * G && (psb || AKVQ_PFCHUNK); e++)
                for (int o = 0; o < VB; o += 16) __builtin_prefetch(p + b * psb + e * psg + t + VB + o, 0, 3);
        } else if (AKVQ_PF && vec && b + 1 < k->B) { /* the next item (sequence b + 1, same tokens): its first block */
#ifdef AKVQ_VNNI
            prefetch16v(k, b + 1, t0, t1);
            prefetch16v(k, b + 1, t0 + 16, t1);
#endif
            for (int e = 0; e < H * G && (psb || AKVQ_PFCHUNK); e++)
                for (int o = 0; o < VB; o += 16) __builtin_prefetch(p + (b + 1) * psb + e * psg + t0 + o, 0, 3);
        }
        int any1 = 0, scalar = 1;
#ifdef AKVQ_VNNI
        if (vec) { /* the rows in vector instructions (gather16v_into); a block with a class-1 row goes the scalar way */
            int a0, a1;
            const __mmask16 k0 = gather16v_into(k, b, t, t1, zrow, row, &sh[0][0], &zh[0][0], VB, &a0);
            const __mmask16 k1 = gather16v_into(k, b, t + 16, t1, zrow, row + 16, &sh[0][16], &zh[0][16], VB, &a1);
            if (!a0 && !a1) {
                scalar = 0;
                const __m512i two = _mm512_set1_epi32(2);
                _mm512_storeu_si512((void *)cl, _mm512_maskz_mov_epi32((__mmask16)~k0, two));
                _mm512_storeu_si512((void *)(cl + 16), _mm512_maskz_mov_epi32((__mmask16)~k1, two));
                _mm512_storeu_ps(m0, _mm512_maskz_mov_ps(k0, _mm512_set1_ps(1.0f)));
                _mm512_storeu_ps(m0 + 16, _mm512_maskz_mov_ps(k1, _mm512_set1_ps(1.0f)));
                _mm512_storeu_ps(m1, _mm512_setzero_ps());
                _mm512_storeu_ps(m1 + 16, _mm512_setzero_ps());
            }
        }
#endif
#ifndef AKVQ_VNNI
        if (AKVQ_V8SEAL && n == VB && t + VB <= k->ord.S) { /* a sealed block of 2-bit rows: from two indices */
            const int64_t r0 = tok_row(&k->ord, t, b), nb = k->W / 4;
            const int32_t a = k->idx[r0];
            if (a >= 0 && k->idx[r0 + VB - 1] == a + VB - 1) { /* out_v8_ok: table 0 holds 2 bits */
                scalar = 0;
                const uint8_t *c0 = k->tab[0].codes + (int64_t)a * nb;
                const uint16_t *sp = k->tab[0].scale + (int64_t)a * ngr, *zp = k->tab[0].zero + (int64_t)a * ngr;
                for (int i = 0; i < VB; i++) {
                    cl[i] = 0;
                    row[i] = c0 + i * nb;
                    m0[i] = 1.0f;
                    m1[i] = 0.0f;
                    for (int j = 0; j < ngr; j++) { sh[j][i] = sp[i * ngr + j]; zh[j][i] = zp[i * ngr + j]; }
                }
            }
        }
#endif
        for (int i = 0; scalar && i < VB; i++) {
            const int64_t rr = tok_row(&k->ord, t + i, b);
            const int c = i < n ? k->cls[rr] : 2;
            cl[i] = c < 2 ? c : 2;
            row[i] = zrow;
            m0[i] = c == 0 ? 1.0f : 0.0f;
            m1[i] = c == 1 ? 1.0f : 0.0f;
            if (c < 2) {
                const table_t *T = &k->tab[c];
                const int64_t ii = row_index(k->idx[rr]);
                const uint16_t *sr = T->scale + ii * ngr, *zr = T->zero + ii * ngr;
                for (int j = 0; j < ngr; j++) { sh[j][i] = sr[j]; zh[j][i] = zr[j]; }
                row[i] = T->codes + ii * (k->W * T->bits / 8);
                any1 |= c;
            } else {
                for (int j = 0; j < ngr; j++) sh[j][i] = zh[j][i] = 0;
            }
        }
#ifdef AKVQ_VNNI
        if (AKVQ_V8HOIST && !any1 && H * ns <= V8_HS) {
            /* no class-1 row: every (head, segment)'s weights first, then the dot products. The weights' horizontal
             * max and sum per query head are latency chains; back to back, the H x ns x G chains overlap, where each
             * head's dot products used to sit between them. Each row is class 0 or zrow (either path above), so
             * v8_quad512 reads row[i] + the chunk's offset for every i: no per-chunk pointer array. */
            float wb[V8_HS][8], wdummy[1][VB];
            uint8_t wq[V8_HS][8][VB] __attribute__((aligned(32)));
            int live[V8_HS];
            for (int h = 0; h < H; h++)
                for (int s = 0; s < ns; s++) {
                    const int gi = k->gidx[h * ns + s], hs = h * ns + s;
                    live[hs] = v8_weights(k, G, b, t, n, h, s, p, psb, psg, sh[gi], zh[gi], m0, m1, 0, kz, wdummy,
                                          wb[hs], wq[hs]);
                }
            const int nquad = (n + 3) / 4;
            for (int h = 0; h < H; h++)
                for (int s = 0; s < ns; s++) {
                    const int hs = h * ns + s, ch = h * D + s * seg;
                    float *a0 = acc + ((b * k->H + h) * G) * D + s * seg;
                    if (live[hs])
                        for (int c = 0; c < nc; c++)
                            v8_quad512(G, row, ch / 4 + 16 * c, nquad, (const uint8_t(*)[VB])wq[hs], wb[hs], a0 + 64 * c, D);
                }
            continue;
        }
#endif
        for (int h = 0; h < H; h++) {
            for (int s = 0; s < ns; s++) {
                const int gi = k->gidx[h * ns + s], ch = h * D + s * seg;
#ifdef AKVQ_VNNI
                /* the block's weights w_t = p_t s_t quantized to u8 per query head, 16 tokens a vector */
                float w[8][VB], wb[8];
                uint8_t wq[8][VB] __attribute__((aligned(32)));
                const int live = v8_weights(k, G, b, t, n, h, s, p, psb, psg, sh[gi], zh[gi], m0, m1, any1, kz, w, wb, wq);
                (void)perm;
#else
                __m256 sc[VB / 8], zq[VB / 8], zz[VB / 8];
                for (int v = 0; v < VB / 8; v++) {
                    sc[v] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sh[gi] + 8 * v)));
                    zz[v] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(zh[gi] + 8 * v)));
                    const __m256 z0 = _mm256_mul_ps(zz[v], _mm256_loadu_ps(m0 + 8 * v));
                    zq[v] = k->float_zero ? _mm256_and_ps(_mm256_div_ps(z0, sc[v]),
                                                          _mm256_cmp_ps(sc[v], _mm256_setzero_ps(), _CMP_GT_OQ))
                                          : z0;
                }
                float w[8][VB], wb[8];
                uint8_t wq[8][VB] __attribute__((aligned(32)));
                int live = 0;
                for (int g = 0; g < G; g++) {
                    const int64_t j = ((b * k->H + h) * G + g) * ns + s;
                    const float *pp = p + b * psb + (int64_t)(h * G + g) * psg + t;
                    float ptmp[VB];
                    if (n < VB) {
                        for (int i = 0; i < VB; i++) ptmp[i] = i < n ? pp[i] : 0.0f;
                        pp = ptmp;
                    }
                    __m256 wv[VB / 8], mx = _mm256_setzero_ps(), k1 = _mm256_setzero_ps();
                    for (int v = 0; v < VB / 8; v++) {
                        const __m256 pv = _mm256_loadu_ps(pp + 8 * v);
                        const __m256 wu = _mm256_mul_ps(pv, sc[v]);
                        _mm256_storeu_ps(w[g] + 8 * v, wu);
                        wv[v] = _mm256_mul_ps(wu, _mm256_loadu_ps(m0 + 8 * v));
                        mx = _mm256_max_ps(mx, wv[v]);
                        if (any1) /* class-1 rows: exact weights, + p z (float zero) or - w z */
                            k1 = _mm256_fmadd_ps(_mm256_mul_ps(k->float_zero ? pv : wu, zz[v]),
                                                 _mm256_loadu_ps(m1 + 8 * v), k1);
                    }
                    const float wmax = hmax8(mx);
                    const __m256 inv = _mm256_set1_ps(wmax > 0 ? 255.0f / wmax : 0.0f);
                    wb[g] = wmax / 255.0f;
                    __m256i qi[VB / 8];
                    __m256 zs = _mm256_setzero_ps();
                    for (int v = 0; v < VB / 8; v++) {
                        qi[v] = _mm256_cvtps_epi32(_mm256_mul_ps(wv[v], inv));
                        zs = _mm256_fmadd_ps(_mm256_cvtepi32_ps(qi[v]), zq[v], zs);
                    }
                    for (int v = 0; v < VB / 8; v += 4) {
                        const __m256i a = _mm256_packs_epi32(qi[v], qi[v + 1]), c = _mm256_packs_epi32(qi[v + 2], qi[v + 3]);
                        _mm256_store_si256((__m256i *)(wq[g] + 8 * v), _mm256_permutevar8x32_epi32(_mm256_packus_epi16(a, c), perm));
                    }
                    const float zsum = hsum8(zs);
                    const float z1 = any1 ? hsum8(k1) : 0.0f;
                    kz[j] += k->float_zero ? z1 + wb[g] * zsum : -(z1 + wb[g] * zsum);
                    live |= wmax > 0;
                }
#endif
                float *a0 = acc + ((b * k->H + h) * G) * D + s * seg;
                if (live)
                    for (int c = 0; c < nc; c++) {
                        const uint8_t *rp[VB];
#ifdef AKVQ_VNNI
                        const int nquad = (n + 3) / 4;
                        for (int i = 0; i < 4 * nquad; i++) rp[i] = cl[i] == 0 ? row[i] + ch / 4 + 16 * c : zrow;
                        v8_quad512(G, rp, 0, nquad, (const uint8_t(*)[VB])wq, wb, a0 + 64 * c, D);
                        (void)NU;
                        (void)npair;
#else
                        for (int i = 0; i < 2 * npair; i++) rp[i] = cl[i] == 0 ? row[i] + ch / 4 + 16 * c : zrow;
                        v8_chunk(G, NU, rp, npair, (const uint16_t(*)[VB / 2])wq, wb, a0 + 64 * c, D);
#endif
                    }
                if (!any1) continue;
                float *a1 = acc + nacc + ((b * k->H + h) * G) * D + s * seg;
                for (int i = 0; i < n; i++) {
                    if (cl[i] != 1) continue;
                    float wi[8];
                    for (int g = 0; g < G; g++) wi[g] = w[g][i];
                    if (k->pm[1]) {
                        seg_axpy_pm(row[i] + ch * bits1 / 8, bits1, seg, wi, a1, D, G);
                    } else {
                        float f[MAXSEG];
                        unpack_run(row[i], bits1, ch, seg, f);
                        for (int g = 0; g < G; g++)
                            for (int d = 0; d < seg; d++) a1[g * D + d] += wi[g] * f[d];
                    }
                }
            }
        }
    }
}

typedef void (*out_v8_fn)(const tok_t *, int64_t, int64_t, int64_t, const float *, int64_t, int64_t, float *, int64_t,
                          float *, const uint8_t *, int);
#define OUT_V8(G)                                                                                                    \
    static void out_v8_##G(const tok_t *k, int64_t b, int64_t t0, int64_t t1, const float *p, int64_t psb,           \
                           int64_t psg, float *acc, int64_t nacc, float *kz, const uint8_t *zrow, int vec) {         \
        out_v8_body(k, G, b, t0, t1, p, psb, psg, acc, nacc, kz, zrow, vec);                                         \
    }
OUT_V8(1) OUT_V8(2) OUT_V8(3) OUT_V8(4) OUT_V8(5) OUT_V8(6) OUT_V8(7) OUT_V8(8)
static const out_v8_fn OUT_V8S[9] = {NULL, out_v8_1, out_v8_2, out_v8_3, out_v8_4, out_v8_5, out_v8_6, out_v8_7,
                                     out_v8_8};
#endif

/* whether the batch-major output kernel reads these tables: table 0 in {2, 4, 8} bits, table 1 in {2, 4, 8} bits
 * or not plane-major, 32-channel chunks, G <= 3 */
static inline int out_block_ok(const tok_t *k) {
#ifdef __AVX2__
    const int b0 = (int)k->tab[0].bits, b1 = (int)k->tab[1].bits;
    return k->G <= 3 && k->seg % 32 == 0 && (b0 == 2 || b0 == 4 || b0 == 8) && k->pm[0]
           && (b1 == 2 || b1 == 4 || b1 == 8 || !k->pm[1]);
#else
    (void)k;
    return 0;
#endif
}

/* whether the integer value path reads these tables: table 0 of 2 bits in segments of 64k channels, G <= 8,
 * table 1 as out_block_ok allows */
static inline int out_v8_ok(const tok_t *k) {
#ifdef __AVX2__
    const int b1 = (int)k->tab[1].bits;
    return k->G <= 8 && k->seg % 64 == 0 && k->tab[0].bits == 2 && k->ngr <= 64 && (b1 == 2 || b1 == 4 || b1 == 8 || !k->pm[1]);
#else
    (void)k;
    return 0;
#endif
}

/* the v8 position of channel m (of a segment) */
static inline int v8_pos(int m) {
    const int c = m / 64, r = m % 64, j = r % 4, kk = r / 4;
    return c * 64 + ((j >> 1) * 2 + (kk >= 8)) * 16 + (j & 1) * 8 + kk % 8;
}

/* where channel m of a segment sits in table c's value accumulator: the integer path's order (table 0 with v8), the
 * plane-major unpack order, or channel order */
static inline int acc_pos(const tok_t *k, int c, int v8, int m) {
    return c == 0 && v8 ? v8_pos(m) : k->pm[c] ? pm_pos(m, (int)k->tab[c].bits) : m;
}

static score_row_fn pick_score(int bits, int seg, int64_t G) {
    PICK(score, bits, seg, G)
    return score_row_generic;
}

static output_row_fn pick_output(int bits, int seg, int64_t G) {
    PICK(output, bits, seg, G)
    return output_row_generic;
}

static int tok_init(tok_t *k, int64_t n_rows, int64_t B, int64_t H, int64_t G, int64_t D, int64_t group,
                    const uint8_t *cls, int64_t sealed, int64_t blk, const uint8_t *c0, const uint16_t *s0,
                    const uint16_t *z0, int64_t bits0,
                    const uint8_t *c1, const uint16_t *s1, const uint16_t *z1, int64_t bits1, int64_t float_zero,
                    int want_hp, const tok_t *share, int nt) {
    k->B = B; k->H = H; k->G = G; k->D = D; k->group = group; k->float_zero = float_zero;
    k->seg = gcd((int)group, (int)D); k->ns = (int)(D / k->seg); k->W = (int)(H * D); k->ngr = (int)(H * D / group);
    k->cls = cls;
    if (order_init(&k->ord, B, sealed, blk) || sealed * B > n_rows) return 1;
    k->tab[0] = (table_t){c0, s0, z0, bits0};
    k->tab[1] = (table_t){c1, s1, z1, bits1};
    k->pm[0] = plane_major_ok((int)bits0, k->seg, (int)G);
    k->pm[1] = plane_major_ok((int)bits1, k->seg, (int)G);
    if (k->seg > MAXSEG || G > 64) return 1;
    k->gidx = (int *)malloc(sizeof(int) * H * k->ns);
    for (int h = 0; h < H; h++)
        for (int s = 0; s < k->ns; s++) k->gidx[h * k->ns + s] = (int)((h * D + s * k->seg) / group);
    k->hrow = k->hcnt = NULL;
    k->shared = share != NULL;
    if (share) { /* the same classes: the same index (the caller checks that share has hrow if want_hp) */
        k->idx = share->idx;
        if (want_hp) { k->hrow = share->hrow; k->hcnt = share->hcnt; }
    } else {
        k->idx = table_index(cls, n_rows, &k->ord, want_hp ? &k->hrow : NULL, want_hp ? &k->hcnt : NULL, nt);
    }
    k->qgather = AKVQ_QGATHER && k->ngr <= 4 && !((uintptr_t)s0 & 7) && !((uintptr_t)z0 & 7);
    return 0;
}

static void tok_free(tok_t *k) {
    if (!k->shared) {
        free(k->idx);
        free(k->hrow);
        free(k->hcnt);
    }
    free(k->gidx);
}

/* [r0, r1) of n rows for thread `tid` of `nt` */
static void row_range(int64_t n, int nt, int tid, int64_t *r0, int64_t *r1) {
    *r0 = n * tid / nt;
    *r1 = n * (tid + 1) / nt;
}

static int n_threads(int64_t nthreads) {
#ifdef _OPENMP
    return nthreads > 0 ? (int)nthreads : 1;
#else
    (void)nthreads;
    return 1;
#endif
}

static int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* int8 q per (b, h, g, segment), in each table's unpack order (q8 [2, B*H*G*D]), its scales qsc and the scaled
 * sums qz (the zero-point term), for the tables with an integer path (f8[c] non-NULL) */
static void quant_q8(const tok_t *k, const float *q, score_i8_fn const *f8, int8_t **q8o, float **qsco, float **qzo) {
    const int64_t B = k->B, H = k->H, G = k->G, D = k->D, nq = B * H * G * D;
    const int seg = k->seg, ns = k->ns;
    int8_t *q8 = (int8_t *)malloc(2 * nq);
    float *qsc = (float *)malloc(sizeof(float) * 2 * B * H * G * ns), *qz = qsc + B * H * G * ns;
    for (int64_t i = 0; i < B * H * G; i++)
        for (int s = 0; s < ns; s++) {
            const float *x = q + i * D + s * seg;
            float amax = 0;
            for (int j = 0; j < seg; j++) amax = fmaxf(amax, fabsf(x[j]));
            const float sq = amax / 127.0f, inv = amax > 0 ? 127.0f / amax : 0.0f;
            int32_t sum = 0;
            for (int j = 0; j < seg; j++) {
                const int v = (int)lrintf(x[j] * inv);
                const int8_t v8 = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
                sum += v8;
                for (int c = 0; c < 2; c++)
                    if (f8[c]) q8[c * nq + i * D + s * seg + i8_pos(j, (int)k->tab[c].bits)] = v8;
            }
            qsc[i * ns + s] = sq;
            qz[i * ns + s] = sq * (float)sum;
        }
    *q8o = q8;
    *qsco = qsc;
    *qzo = qz;
}

/* scores: out[b * osb + t * ost + (h * G + g) * osg] for the packed rows (t < n_q); 16-bit rows are left as they
 * are. The caller picks the layout: token-major (osg = 1) keeps every write sequential. */
int akvq_token_scores(int64_t n_rows, int64_t B, int64_t H, int64_t G, int64_t D, int64_t group,
                      const uint8_t *cls, int64_t sealed, int64_t blk, const uint8_t *c0, const uint16_t *s0,
                      const uint16_t *z0, int64_t bits0,
                      const uint8_t *c1, const uint16_t *s1, const uint16_t *z1, int64_t bits1, int64_t float_zero,
                      const float *q, float *out, int64_t osb, int64_t ost, int64_t osg, int64_t int8,
                      int64_t nthreads) {
    tok_t k;
    if (tok_init(&k, n_rows, B, H, G, D, group, cls, sealed, blk, c0, s0, z0, bits0, c1, s1, z1, bits1, float_zero, 0,
                 NULL,
                 n_threads(nthreads)))
        return 1;
    const int seg = k.seg, ns = k.ns, nt = n_threads(nthreads);
    const int64_t nq = B * H * G * D, W = H * D;
    score_i8_fn f8[2] = {NULL, NULL};
    for (int c = 0; c < 2; c++)
        if (int8 && i8_ok((int)k.tab[c].bits, seg, G, ns)) f8[c] = pick_i8((int)k.tab[c].bits, seg, G);
    int8_t *q8 = NULL;
    float *qsc = NULL, *qz = NULL;
    if (f8[0] || f8[1]) quant_q8(&k, q, f8, &q8, &qsc, &qz);
#ifdef __AVX2__
    if (f8[0] && f8[1] && ost == 1) { /* batch-major: items (b, chunk of TCH tokens) */
        const int64_t n_t = n_rows / B, nch = (n_t + TCH - 1) / TCH;
        const i8_block_fn blk = I8_BLOCKS[G];
#ifdef AKVQ_VNNI
        const i16_block_fn blk16 =
            bits0 == 2 && seg % 64 == 0 && k.ngr <= I16_MAXGR ? I16_BLOCKS[G] : NULL;
        uint8_t *zrow = blk16 ? (uint8_t *)calloc((size_t)W + 64, 1) : NULL;
        /* gather16v's byte offsets of scale/zero halves fit int32 lanes */
        const int vec = AKVQ_VGATHER && n_rows * (k.ngr > 1 ? k.ngr : 1) * 2 + 64 < INT32_MAX;
#else
        const i8v_block_fn blk8 =
            AKVQ_LANES8 && bits0 == 2 && seg % 64 == 0 && k.ngr <= I8V_MAXGR ? I8V_BLOCKS[G] : NULL;
        uint8_t *zrow = blk8 ? (uint8_t *)calloc((size_t)W + 64, 1) : NULL;
#endif
#pragma omp parallel for collapse(2) schedule(static) num_threads(nt)
        for (int64_t ci = 0; ci < nch; ci++)
            for (int64_t b = 0; b < B; b++) {
                const int64_t t0 = ci * TCH, t1 = t0 + TCH < n_t ? t0 + TCH : n_t;
#ifdef AKVQ_VNNI
                if (blk16) {
                    blk16(&k, b, t0, t1, q8, nq, qsc, qz, out, osb, osg, zrow, vec);
                    continue;
                }
#else
                if (blk8) {
                    blk8(&k, b, t0, t1, q8, nq, qsc, qz, out, osb, osg, zrow);
                    continue;
                }
#endif
                blk(&k, b, t0, t1, q8, nq, qsc, qz, out, osb, osg);
            }
        free(zrow);
        free(q8);
        free(qsc);
        tok_free(&k);
        return 0;
    }
#endif
    /* the per-row path: q per table in the order its codes unpack to, and q summed per segment for the zero-point
     * term (the batch-major blocks above need neither) */
    float *qp = (float *)malloc(sizeof(float) * 2 * nq), *qsum = (float *)malloc(sizeof(float) * B * H * G * ns);
    for (int c = 0; c < 2; c++)
        for (int64_t i = 0; i < B * H * G; i++)
            for (int s = 0; s < ns; s++)
                for (int j = 0; j < seg; j++)
                    qp[c * nq + i * D + s * seg + (k.pm[c] ? pm_pos(j, (int)k.tab[c].bits) : j)] = q[i * D + s * seg + j];
    for (int64_t i = 0; i < B * H * G; i++)
        for (int s = 0; s < ns; s++) {
            float a = 0;
            for (int d = 0; d < seg; d++) a += q[i * D + s * seg + d];
            qsum[i * ns + s] = a;
        }
    const score_row_fn fn[2] = {pick_score((int)bits0, seg, G), pick_score((int)bits1, seg, G)};
#pragma omp parallel num_threads(nt)
    {
        int64_t r0, r1;
        row_range(n_rows, nt, thread_id(), &r0, &r1);
        int64_t t, b;
        row_first(&k.ord, r0, &t, &b);
        for (int64_t r = r0; r < r1; r++) {
            const int c = cls[r];
            if (c < 2) {
                const table_t *T = &k.tab[c];
                const int64_t i = row_index(k.idx[r]);
                if (f8[c])
                    f8[c](&k, T->codes + i * (W * T->bits / 8), T->scale + i * k.ngr, T->zero + i * k.ngr,
                          q8 + c * nq + b * H * G * D, qsc + b * H * G * ns, qz + b * H * G * ns, out + b * osb + t * ost,
                          osg);
                else
                    fn[c](&k, (int)T->bits, T->codes + i * (W * T->bits / 8), T->scale + i * k.ngr, T->zero + i * k.ngr,
                          qp + c * nq + b * H * G * D, qsum + b * H * G * ns, out + b * osb + t * ost, osg);
            }
            row_next(&k.ord, &t, &b);
        }
    }
    free(qp);
    free(qsum);
    free(q8);
    free(qsc);
    tok_free(&k);
    return 0;
}

/* outputs: acc[b, h, g, :] += sum over packed rows of p[b, h, g, t] * x_t (16-bit rows skipped); p at
 * p[b * psb + t * pst + (h * G + g) * psg], token-major (psg = 1) for sequential reads. Each table
 * accumulates in its own unpack order (per-thread partials), permuted back to channel order at the end; the
 * zero-point terms are one scalar per segment. */
int akvq_token_output(int64_t n_rows, int64_t B, int64_t H, int64_t G, int64_t D, int64_t group,
                      const uint8_t *cls, int64_t sealed, int64_t blk, const uint8_t *c0, const uint16_t *s0,
                      const uint16_t *z0, int64_t bits0,
                      const uint8_t *c1, const uint16_t *s1, const uint16_t *z1, int64_t bits1, int64_t float_zero,
                      const float *p, int64_t psb, int64_t pst, int64_t psg, float *acc, int64_t int8v,
                      int64_t nthreads) {
    tok_t k;
    if (tok_init(&k, n_rows, B, H, G, D, group, cls, sealed, blk, c0, s0, z0, bits0, c1, s1, z1, bits1, float_zero, 0,
                 NULL,
                 n_threads(nthreads)))
        return 1;
    const int seg = k.seg, ns = k.ns, nt = n_threads(nthreads);
    const int64_t nacc = B * H * G * D, nk = B * H * G * ns, W = H * D;
    float *part = (float *)calloc((size_t)nt * (2 * nacc + nk), sizeof(float));
    const output_row_fn fn[2] = {pick_output((int)bits0, seg, G), pick_output((int)bits1, seg, G)};
    const int v8 = int8v && out_v8_ok(&k) && pst == 1, blocked = v8 || (out_block_ok(&k) && pst == 1);
#ifdef __AVX2__
    if (blocked) { /* batch-major: items (b, chunk of TCH tokens), per-thread partials */
        const int64_t n_t = n_rows / B, nch = (n_t + TCH - 1) / TCH;
        const out_block_fn blk = v8 ? NULL : OUT_BLOCKS[G][bits0 == 2 ? 0 : bits0 == 4 ? 1 : 2];
        const out_v8_fn vblk = v8 ? OUT_V8S[G] : NULL;
        uint8_t *zrow = (uint8_t *)calloc((size_t)W + 64, 1);
#ifdef AKVQ_VNNI
        const int vec = AKVQ_VGATHER && n_rows * (k.ngr > 1 ? k.ngr : 1) * 2 + 64 < INT32_MAX; /* see akvq_token_scores */
#else
        const int vec = 0;
#endif
#pragma omp parallel num_threads(nt)
        {
            float *acc2 = part + (int64_t)thread_id() * (2 * nacc + nk);
#pragma omp for collapse(2) schedule(static)
            for (int64_t ci = 0; ci < nch; ci++)
                for (int64_t b = 0; b < B; b++) {
                    const int64_t t0 = ci * TCH, t1 = t0 + TCH < n_t ? t0 + TCH : n_t;
                    if (v8) vblk(&k, b, t0, t1, p, psb, psg, acc2, nacc, acc2 + 2 * nacc, zrow, vec);
                    else blk(&k, b, t0, t1, p, psb, psg, acc2, nacc, acc2 + 2 * nacc);
                }
        }
        free(zrow);
    }
#endif
    if (!blocked) {
#pragma omp parallel num_threads(nt)
    {
        const int tid = thread_id();
        float *acc2 = part + (int64_t)tid * (2 * nacc + nk), *kz = acc2 + 2 * nacc;
        int64_t r0, r1;
        row_range(n_rows, nt, tid, &r0, &r1);
        int64_t t, b;
        row_first(&k.ord, r0, &t, &b);
        for (int64_t r = r0; r < r1; r++) {
            const int c = cls[r];
            if (c < 2) {
                const table_t *T = &k.tab[c];
                const int64_t i = row_index(k.idx[r]);
                fn[c](&k, (int)T->bits, T->codes + i * (W * T->bits / 8), T->scale + i * k.ngr, T->zero + i * k.ngr,
                      p + b * psb + t * pst, psg, acc2 + c * nacc + b * H * G * D, kz + b * H * G * ns);
            }
            row_next(&k.ord, &t, &b);
        }
    }
    }
    for (int j = 0; j < nt; j++) {
        const float *acc2 = part + (int64_t)j * (2 * nacc + nk), *kz = acc2 + 2 * nacc;
        for (int c = 0; c < 2; c++)
            for (int64_t e = 0; e < nacc; e += seg)
                for (int m = 0; m < seg; m++)
                    acc[e + m] += acc2[c * nacc + e + acc_pos(&k, c, v8, m)];
        for (int64_t e = 0; e < nk; e++)
            for (int m = 0; m < seg; m++) acc[e * seg + m] += kz[e];
    }
    free(part);
    tok_free(&k);
    return 0;
}

/* channel axis scores: out[b, h, g, t] for t < n_q. Codes [B, W, n_q * bits / 8], scale/zero [B, W, n_q / group]. */
int akvq_channel_scores(int64_t n_q, int64_t B, int64_t H, int64_t G, int64_t D, int64_t group,
                        const uint8_t *codes, const uint16_t *scale, const uint16_t *zero, int64_t bits,
                        int64_t row_bytes, int64_t row_groups, int64_t float_zero, const float *q, float *out,
                        int64_t ldo, int64_t nthreads) {
    if (group > 4096 || G > 64) return 1;
    const int64_t W = H * D, ngroups = n_q / group;
#pragma omp parallel for collapse(2) schedule(static) num_threads(nthreads)
    for (int64_t b = 0; b < B; b++) {
        for (int64_t n = 0; n < ngroups; n++) {
            float f[4096];
            for (int64_t h = 0; h < H; h++) {
                const float *qb = q + (b * H + h) * G * D;
                float *ob = out + (b * H + h) * G * ldo + n * group;
                for (int g = 0; g < G; g++)
                    for (int64_t j = 0; j < group; j++) ob[g * ldo + j] = 0;
                for (int64_t d = 0; d < D; d++) {
                    const int64_t ch = (b * W + h * D + d);
                    const float s = half_to_float(scale[ch * row_groups + n]), z = half_to_float(zero[ch * row_groups + n]);
                    unpack_run(codes + ch * row_bytes, (int)bits, n * group, (int)group, f);
                    for (int g = 0; g < G; g++) {
                        const float qs = qb[g * D + d] * s, k = float_zero ? qb[g * D + d] * z : -qs * z;
                        float *o = ob + g * ldo;
                        for (int64_t j = 0; j < group; j++) o[j] += qs * f[j] + k;
                    }
                }
            }
        }
    }
    return 0;
}

/* ---- 16-bit rows [B, H, T, D] (IEEE half, strides sb/sh/st, unit stride along D): the recent window, and the
 * whole cache of the fp16 control. With F16C + FMA (D a multiple of 8, G <= 8) each row is converted in registers
 * (vcvtph2ps) and reduced against the G query heads at once; outputs keep their accumulators in registers over a
 * tile of tokens, a chunk of channels at a time. Parallel over batch x KV heads. */
#define HALF_TILE 64

#if defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
/* o[g * ldo] = the sum of the 8 lanes of acc[g], four query heads reduced together */
ALWAYS_INLINE void store_sums8(const __m256 *acc, int G, float *o, int64_t ldo) {
    for (int g0 = 0; g0 < G; g0 += 4) {
        __m256 a[4];
        for (int i = 0; i < 4; i++) a[i] = g0 + i < G ? acc[g0 + i] : _mm256_setzero_ps();
        const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
        float r[4];
        _mm_storeu_ps(r, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
        for (int i = 0; i < 4 && g0 + i < G; i++) o[(g0 + i) * ldo] = r[i];
    }
}

/* scores of T 16-bit rows against G query heads, W channels per conversion and FMA (8: AVX2, 16: AVX-512); SUMS
 * reduces the G accumulators and stores them */
#define HALF_SCORES_BH(NAME, VT, W, HT, HLOAD, CVTPH, LOADPS, ZERO, FMADD, SUMS)                                      \
    ALWAYS_INLINE void NAME(int G, int64_t D, int64_t T, const uint16_t *x, int64_t st, const float *qb, float *ob,  \
                            int64_t ldo) {                                                                           \
        for (int64_t t = 0; t < T; t++) {                                                                            \
            const uint16_t *row = x + t * st;                                                                        \
            VT acc[8];                                                                                               \
            for (int g = 0; g < G; g++) acc[g] = ZERO();                                                             \
            for (int64_t d = 0; d < D; d += W) {                                                                     \
                const VT f = CVTPH(HLOAD((const HT *)(row + d)));                                                    \
                for (int g = 0; g < G; g++) acc[g] = FMADD(LOADPS(qb + g * D + d), f, acc[g]);                       \
            }                                                                                                        \
            SUMS(acc, G, ob + t, ldo);                                                                               \
        }                                                                                                            \
    }
HALF_SCORES_BH(half_scores_bh, __m256, 8, __m128i, _mm_loadu_si128, _mm256_cvtph_ps, _mm256_loadu_ps, _mm256_setzero_ps,
               _mm256_fmadd_ps, store_sums8)

/* CW channels (a multiple of the vector width W) at a time: G * CW / W accumulators in registers over HALF_TILE
 * tokens; one body for the 8-wide (AVX2) and 16-wide (AVX-512) forms */
#define HALF_OUTPUT_BH(NAME, VT, W, HT, HLOAD, CVTPH, LOADPS, SET1, FMADD, STOREPS)                                   \
    ALWAYS_INLINE void NAME(int G, int CW, int64_t D, int64_t T, const uint16_t *x, int64_t st, const float *pb,     \
                            int64_t ldp, float *ab) {                                                                \
        for (int64_t t0 = 0; t0 < T; t0 += HALF_TILE) {                                                              \
            const int64_t t1 = t0 + HALF_TILE < T ? t0 + HALF_TILE : T;                                              \
            for (int64_t c0 = 0; c0 < D; c0 += CW) {                                                                 \
                VT acc[8][4];                                                                                        \
                for (int g = 0; g < G; g++)                                                                          \
                    for (int v = 0; v < CW / W; v++) acc[g][v] = LOADPS(ab + g * D + c0 + W * v);                    \
                for (int64_t t = t0; t < t1; t++) {                                                                  \
                    const uint16_t *row = x + t * st + c0;                                                           \
                    VT w[8];                                                                                         \
                    for (int g = 0; g < G; g++) w[g] = SET1(pb[g * ldp + t]);                                        \
                    for (int v = 0; v < CW / W; v++) {                                                               \
                        const VT f = CVTPH(HLOAD((const HT *)(row + W * v)));                                        \
                        for (int g = 0; g < G; g++) acc[g][v] = FMADD(w[g], f, acc[g][v]);                           \
                    }                                                                                                \
                }                                                                                                    \
                for (int g = 0; g < G; g++)                                                                          \
                    for (int v = 0; v < CW / W; v++) STOREPS(ab + g * D + c0 + W * v, acc[g][v]);                    \
            }                                                                                                        \
        }                                                                                                            \
    }
HALF_OUTPUT_BH(half_output_bh, __m256, 8, __m128i, _mm_loadu_si128, _mm256_cvtph_ps, _mm256_loadu_ps, _mm256_set1_ps,
               _mm256_fmadd_ps, _mm256_storeu_ps)

#ifdef __AVX512F__
/* AVX-512: 16 channels per conversion and FMA, so the fp16 control gets the same width as akvq's VNNI path
 * (D a multiple of 16; the AVX2 forms above take the rest). */
ALWAYS_INLINE void store_sums16(const __m512 *acc, int G, float *o, int64_t ldo) {
    __m256 half[8];
    for (int g = 0; g < G; g++)
        half[g] = _mm256_add_ps(_mm512_castps512_ps256(acc[g]), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[g]), 1)));
    store_sums8(half, G, o, ldo);
}
HALF_SCORES_BH(half_scores_bh512, __m512, 16, __m256i, _mm256_loadu_si256, _mm512_cvtph_ps, _mm512_loadu_ps,
               _mm512_setzero_ps, _mm512_fmadd_ps, store_sums16)
HALF_OUTPUT_BH(half_output_bh512, __m512, 16, __m256i, _mm256_loadu_si256, _mm512_cvtph_ps, _mm512_loadu_ps,
               _mm512_set1_ps, _mm512_fmadd_ps, _mm512_storeu_ps)
#define HALF_BODY_S(G, D, T, x, st, qb, ob, ldo)                                                                     \
    if ((D) % 16 == 0) half_scores_bh512(G, D, T, x, st, qb, ob, ldo);                                               \
    else half_scores_bh(G, D, T, x, st, qb, ob, ldo);
#define HALF_BODY_O(G, CW, D, T, x, st, pb, ldp, ab)                                                                 \
    if ((D) % (2 * (CW)) == 0) half_output_bh512(G, 2 * (CW), D, T, x, st, pb, ldp, ab);                             \
    else if ((D) % 16 == 0) half_output_bh512(G, 16, D, T, x, st, pb, ldp, ab);                                      \
    else half_output_bh(G, 8, D, T, x, st, pb, ldp, ab);
#else
#define HALF_BODY_S(G, D, T, x, st, qb, ob, ldo) half_scores_bh(G, D, T, x, st, qb, ob, ldo);
#define HALF_BODY_O(G, CW, D, T, x, st, pb, ldp, ab)                                                                 \
    if ((D) % (CW) == 0) half_output_bh(G, CW, D, T, x, st, pb, ldp, ab);                                            \
    else half_output_bh(G, 8, D, T, x, st, pb, ldp, ab);
#endif

#define HALF_FNS(G, CW)                                                                                              \
    static void half_scores_##G(int64_t D, int64_t T, const uint16_t *x, int64_t st, const float *qb, float *ob,     \
                                int64_t ldo) { HALF_BODY_S(G, D, T, x, st, qb, ob, ldo) }                            \
    static void half_output_##G(int64_t D, int64_t T, const uint16_t *x, int64_t st, const float *pb, int64_t ldp,   \
                                float *ab) {                                                                         \
        HALF_BODY_O(G, CW, D, T, x, st, pb, ldp, ab)                                                                 \
    }
HALF_FNS(1, 32) HALF_FNS(2, 32) HALF_FNS(3, 32) HALF_FNS(4, 16) HALF_FNS(5, 16) HALF_FNS(6, 16) HALF_FNS(7, 8)
HALF_FNS(8, 8)
typedef void (*half_scores_fn)(int64_t, int64_t, const uint16_t *, int64_t, const float *, float *, int64_t);
typedef void (*half_output_fn)(int64_t, int64_t, const uint16_t *, int64_t, const float *, int64_t, float *);
static const half_scores_fn HALF_SCORES[9] = {NULL, half_scores_1, half_scores_2, half_scores_3, half_scores_4,
                                              half_scores_5, half_scores_6, half_scores_7, half_scores_8};
static const half_output_fn HALF_OUTPUT[9] = {NULL, half_output_1, half_output_2, half_output_3, half_output_4,
                                              half_output_5, half_output_6, half_output_7, half_output_8};
#define HALF_FAST(D, G) ((D) % 8 == 0 && (G) <= 8)
#else
#define HALF_FAST(D, G) 0
#endif

/* scores into out[b, h, g, t0 + t] */
int akvq_half_scores(int64_t B, int64_t H, int64_t G, int64_t D, int64_t T, const uint16_t *x, int64_t sb,
                     int64_t sh, int64_t st, const float *q, float *out, int64_t ldo, int64_t t0, int64_t nthreads) {
    if (D > MAXSEG || G > 64) return 1;
#pragma omp parallel for collapse(2) schedule(static) num_threads(n_threads(nthreads))
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) {
            const float *qb = q + (b * H + h) * G * D;
            float *ob = out + (b * H + h) * G * ldo + t0;
            const uint16_t *xb = x + b * sb + h * sh;
#if defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
            if (HALF_FAST(D, G)) {
                HALF_SCORES[G](D, T, xb, st, qb, ob, ldo);
                continue;
            }
#endif
            float f[MAXSEG];
            for (int64_t t = 0; t < T; t++) {
                half_run(xb + t * st, D, f);
                for (int g = 0; g < G; g++) {
                    float dot = 0;
                    for (int64_t d = 0; d < D; d++) dot += qb[g * D + d] * f[d];
                    ob[g * ldo + t] = dot;
                }
            }
        }
    return 0;
}

/* acc[b, h, g, :] += sum_t p[b, h, g, t0 + t] * x[b, h, t, :] */
int akvq_half_output(int64_t B, int64_t H, int64_t G, int64_t D, int64_t T, const uint16_t *x, int64_t sb,
                     int64_t sh, int64_t st, const float *p, int64_t ldp, int64_t t0, float *acc, int64_t nthreads) {
    if (D > MAXSEG || G > 64) return 1;
#pragma omp parallel for collapse(2) schedule(static) num_threads(n_threads(nthreads))
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) {
            const float *pb = p + (b * H + h) * G * ldp + t0;
            float *ab = acc + (b * H + h) * G * D;
            const uint16_t *xb = x + b * sb + h * sh;
#if defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
            if (HALF_FAST(D, G)) {
                HALF_OUTPUT[G](D, T, xb, st, pb, ldp, ab);
                continue;
            }
#endif
            float f[MAXSEG];
            for (int64_t t = 0; t < T; t++) {
                half_run(xb + t * st, D, f);
                for (int g = 0; g < G; g++) {
                    const float w = pb[g * ldp + t];
                    for (int64_t d = 0; d < D; d++) ab[g * D + d] += w * f[d];
                }
            }
        }
    return 0;
}

/* ---- the 16-bit rows of the token axis (class 2, `hp` [N, H * D] IEEE half, in row order), exactly, in the
 * original space: scores out[b * osb + t * ost + (h * G + g) * osg] = q[b, h, g] . x (q NULL: none), and outputs
 * acc[b, h, g, :] += p[b * psb + t * pst + (h * G + g) * psg] x (p NULL: none). The rows are found by scanning cls
 * 32 bytes at a time; one pass, no index tensors. */
int akvq_token_hp(int64_t n_rows, int64_t B, int64_t H, int64_t G, int64_t D, const uint8_t *cls, int64_t sealed,
                  int64_t blk, const uint16_t *hp,
                  const float *q, float *out, int64_t osb, int64_t ost, int64_t osg, const float *p, int64_t psb,
                  int64_t pst, int64_t psg, float *acc) {
    order_t ord;
    if (D > MAXSEG || order_init(&ord, B, sealed, blk)) return 1;
    int64_t n = 0, r = 0;
    float x[MAXSEG];
    for (;;) {
#ifdef __AVX2__
        const __m256i two = _mm256_set1_epi8(2);
        while (r + 32 <= n_rows && !_mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_loadu_si256((const __m256i *)(cls + r)), two)))
            r += 32;
#endif
        while (r < n_rows && cls[r] != 2) r++;
        if (r >= n_rows) break;
        int64_t t, b;
        row_first(&ord, r, &t, &b);
        const uint16_t *row = hp + n * H * D;
        for (int64_t h = 0; h < H; h++) {
            half_run(row + h * D, D, x);
            for (int64_t g = 0; g < G; g++) {
                const int64_t i = (b * H + h) * G + g, e = (h * G + g);
                if (q) {
                    float s = 0;
                    for (int64_t d = 0; d < D; d++) s += q[i * D + d] * x[d];
                    out[b * osb + t * ost + e * osg] = s;
                }
                if (p) {
                    const float w = p[b * psb + t * pst + e * psg];
                    for (int64_t d = 0; d < D; d++) acc[i * D + d] += w * x[d];
                }
            }
        }
        n++;
        r++;
    }
    return 0;
}

/* ---- fused decode: scores, softmax and outputs in one pass over the chunks (online softmax) ---------------------
 * Why: the two-kernel form writes the scores [B, H, G, T] to memory, softmaxes them in torch, and reads them back:
 * at batch 79 and 8K that is a 23 MB tensor and three more passes per layer and step, about a quarter of the
 * attention time once the kernels read 2-bit codes. Here each item (chunk of TCH tokens, sequence b) scores its
 * tokens into a buffer that stays in L1, adds the mask, and updates a running max and sum per query head
 * (rescaling that head's accumulators when the max grows), then accumulates its values with the unnormalized
 * weights. Each thread keeps the state of its contiguous range of items; a final pass per (b, h) merges the
 * threads' states, adds the 16-bit tail, and normalizes. Outputs: oq [B, H, G, D], the packed rows' share in the
 * V store's stored space (the caller applies the inverse transform), and ox, the 16-bit rows' and the tail's share
 * in the original space; oq + ox (after the transform) is the attention output. q8 scores as the integer key path,
 * so the scores equal akvq_token_scores'; the 16-bit rows (class 2; hpk/hpv [N, H * D] half, in row order) and the
 * tail are exact. Returns 2 where the batch-major paths do not apply (the caller then takes the two-kernel form). */
#if defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
/* e^(n ln2 + r) = 2^n e^r: x - n ln2 in two parts (Cephes' expf), then e^r by a degree-5 polynomial; VT is the
 * vector type, P the intrinsics' prefix. Leaves e^r in y. */
#define EXP_REDUCED(VT, P, x, n, y)                                                                                  \
    VT r = P##_fnmadd_ps(n, P##_set1_ps(0.693359375f), x);                                                          \
    r = P##_fnmadd_ps(n, P##_set1_ps(-2.12194440e-4f), r);                                                          \
    VT y = P##_set1_ps(1.9875691500e-4f);                                                                           \
    y = P##_fmadd_ps(y, r, P##_set1_ps(1.3981999507e-3f));                                                          \
    y = P##_fmadd_ps(y, r, P##_set1_ps(8.3334519073e-3f));                                                          \
    y = P##_fmadd_ps(y, r, P##_set1_ps(4.1665795894e-2f));                                                          \
    y = P##_fmadd_ps(y, r, P##_set1_ps(1.6666665459e-1f));                                                          \
    y = P##_fmadd_ps(y, r, P##_set1_ps(5.0000001201e-1f));                                                          \
    y = P##_fmadd_ps(y, P##_mul_ps(r, r), P##_add_ps(r, P##_set1_ps(1.0f)));

/* e^x, 8 lanes: Cephes' range reduction and degree-5 polynomial (~1 ulp); lanes below -87 give 0 (masked scores) */
ALWAYS_INLINE __m256 exp256(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.0f);
    const __m256 dead = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_max_ps(x, lo);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    EXP_REDUCED(__m256, _mm256, x, n, y)
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(dead, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
}

#ifdef __AVX512F__
/* e^x, 16 lanes: the same reduction and polynomial, 2^n by vscalefps (lanes far below -87 underflow to 0) */
ALWAYS_INLINE __m512 exp512(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    EXP_REDUCED(__m512, _mm512, x, n, y)
    return _mm512_scalef_ps(y, n);
}
#endif

static inline float fmax2(float a, float b) { return a > b ? a : b; }

/* x[i] = e^(x[i] - m) for i < n; returns the sum */
static inline float exp_sub_sum(float *x, int n, float m) {
    int i = 0;
    float s = 0;
#ifdef __AVX512F__
    const __m512 mv = _mm512_set1_ps(m);
    __m512 acc = _mm512_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + i), mv));
        _mm512_storeu_ps(x + i, e);
        acc = _mm512_add_ps(acc, e);
    }
    s = _mm512_reduce_add_ps(acc);
#endif
    const __m256 mv8 = _mm256_set1_ps(m);
    __m256 acc8 = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv8));
        _mm256_storeu_ps(x + i, e);
        acc8 = _mm256_add_ps(acc8, e);
    }
    s += hsum8(acc8);
    for (; i < n; i++) {
        x[i] = x[i] - m < -87.0f ? 0.0f : expf(x[i] - m);
        s += x[i];
    }
    return s;
}

static inline float max_run(const float *x, int n) {
    int i = 0;
    float m = -INFINITY;
#ifdef __AVX512F__
    if (n >= 16) {
        __m512 mv = _mm512_loadu_ps(x);
        for (i = 16; i + 16 <= n; i += 16) mv = _mm512_max_ps(mv, _mm512_loadu_ps(x + i));
        m = _mm512_reduce_max_ps(mv);
    }
#endif
    if (i + 8 <= n) {
        __m256 mv = _mm256_loadu_ps(x + i);
        for (i += 8; i + 8 <= n; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(x + i));
        float tmp[8];
        _mm256_storeu_ps(tmp, mv);
        for (int j = 0; j < 8; j++) m = fmax2(m, tmp[j]);
    }
    for (; i < n; i++) m = fmax2(m, x[i]);
    return m;
}

/* the additive mask at (sequence b, position t): a bool mask (0 = masked) or a float one; 0 without a mask */
static inline float mask_at(const uint8_t *mask_b, const float *mask_f, int64_t msb, int64_t b, int64_t t) {
    return mask_b ? (mask_b[b * msb + t] ? 0.0f : -INFINITY) : mask_f ? mask_f[b * msb + t] : 0.0f;
}

static inline float dot_half(const float *q, const uint16_t *x, int64_t D) {
    float f[MAXSEG], s = 0;
    half_run(x, D, f);
    for (int64_t d = 0; d < D; d++) s += q[d] * f[d];
    return s;
}

#endif

int akvq_token_decode(int64_t n_rows, int64_t B, int64_t H, int64_t G, int64_t D,
                      int64_t group_k, const uint8_t *cls_k, int64_t sealed_k, int64_t blk_k, const uint8_t *kc0,
                      const uint16_t *ks0, const uint16_t *kz0, int64_t kbits0, const uint8_t *kc1, const uint16_t *ks1,
                      const uint16_t *kz1,
                      int64_t kbits1, int64_t fz_k, const uint16_t *hpk,
                      int64_t group_v, const uint8_t *cls_v, int64_t sealed_v, int64_t blk_v, const uint8_t *vc0,
                      const uint16_t *vs0, const uint16_t *vz0, int64_t vbits0, const uint8_t *vc1, const uint16_t *vs1,
                      const uint16_t *vz1,
                      int64_t vbits1, int64_t fz_v, const uint16_t *hpv,
                      const float *qt, const float *q, int64_t T, const uint16_t *tk, int64_t tkb, int64_t tkh,
                      int64_t tkt, const uint16_t *tv, int64_t tvb, int64_t tvh, int64_t tvt, const uint8_t *mask_b,
                      const float *mask_f, int64_t msb, float *oq, float *ox, int64_t nthreads) {
#if !(defined(__AVX2__) && defined(__F16C__) && defined(__FMA__))
    (void)n_rows; (void)B; (void)H; (void)G; (void)D; (void)group_k; (void)cls_k; (void)sealed_k; (void)blk_k;
    (void)sealed_v; (void)blk_v; (void)kc0; (void)ks0; (void)kz0;
    (void)kbits0; (void)kc1; (void)ks1; (void)kz1; (void)kbits1; (void)fz_k; (void)hpk; (void)group_v; (void)cls_v;
    (void)vc0; (void)vs0; (void)vz0; (void)vbits0; (void)vc1; (void)vs1; (void)vz1; (void)vbits1; (void)fz_v;
    (void)hpv; (void)qt; (void)q; (void)T; (void)tk; (void)tkb; (void)tkh; (void)tkt; (void)tv; (void)tvb; (void)tvh;
    (void)tvt; (void)mask_b; (void)mask_f; (void)msb; (void)oq; (void)ox; (void)nthreads;
    return 2;
#else
    if (D > MAXSEG || G > 8 || B <= 0 || n_rows % B) return 2;
    const int packed = n_rows > 0; /* none: the 16-bit tail alone (the fp16 control) */
    tok_t kk, kv;
    memset(&kk, 0, sizeof kk);
    memset(&kv, 0, sizeof kv);
    kv.ns = 1;
    kv.seg = (int)D;
    score_i8_fn f8[2] = {NULL, NULL};
    int v8 = 0;
    if (packed) {
        if (tok_init(&kk, n_rows, B, H, G, D, group_k, cls_k, sealed_k, blk_k, kc0, ks0, kz0, kbits0, kc1, ks1, kz1,
                     kbits1, fz_k, hpk != NULL,
                     NULL, n_threads(nthreads)))
            return 2;
        /* K and V usually flush the same positions with the same classes (cache/layer.py): then one row index, which
         * is built before the parallel part (0.4-0.5 ms per store at batch 79, 8K, on one thread; table_index) */
        const int same = AKVQ_SHAREIDX && (hpv == NULL || hpk != NULL) && sealed_v == sealed_k
                         && (cls_v == cls_k || !memcmp(cls_v, cls_k, (size_t)n_rows));
        if (tok_init(&kv, n_rows, B, H, G, D, group_v, cls_v, sealed_v, blk_v, vc0, vs0, vz0, vbits0, vc1, vs1, vz1,
                     vbits1, fz_v, hpv != NULL,
                     same ? &kk : NULL, n_threads(nthreads))) {
            tok_free(&kk);
            return 2;
        }
        for (int c = 0; c < 2; c++)
            if (i8_ok((int)kk.tab[c].bits, kk.seg, G, kk.ns)) f8[c] = pick_i8((int)kk.tab[c].bits, kk.seg, G);
        v8 = out_v8_ok(&kv);
        if (!f8[0] || !f8[1] || !(v8 || out_block_ok(&kv))) {
            tok_free(&kk);
            tok_free(&kv);
            return 2;
        }
    }
    const int nt = n_threads(nthreads) < 64 ? n_threads(nthreads) : 64, ns = kv.ns, seg = kv.seg;
    const int64_t nq = B * H * G * D, nacc = nq, nk = B * H * G * ns, ne = B * H * G, W = H * D;
    const int64_t n_t = n_rows / B, nch = (n_t + AKVQ_FCH - 1) / AKVQ_FCH, nitems = nch * B;
    int8_t *q8 = NULL;
    float *qsc = NULL, *qz = NULL;
    if (packed) quant_q8(&kk, qt, f8, &q8, &qsc, &qz);
    const i8_block_fn kblk = I8_BLOCKS[G];
#ifdef AKVQ_VNNI
    const i16_block_fn kblk16 = packed && kbits0 == 2 && kk.seg % 64 == 0 && kk.ngr <= I16_MAXGR ? I16_BLOCKS[G] : NULL;
    const int kvec = AKVQ_VGATHER && n_rows * (kk.ngr > 1 ? kk.ngr : 1) * 2 + 64 < INT32_MAX;
    const int vvec = AKVQ_VGATHER && n_rows * (kv.ngr > 1 ? kv.ngr : 1) * 2 + 64 < INT32_MAX;
#else
    const int vvec = 0;
    /* AVX2 without VNNI: the key side's 8-token lanes (i8v_block_body) where its layout allows */
    const i8v_block_fn kblk8 =
        AKVQ_LANES8 && packed && kbits0 == 2 && kk.seg % 64 == 0 && kk.ngr <= I8V_MAXGR ? I8V_BLOCKS[G] : NULL;
#endif
    const out_block_fn vblk = v8 || !packed || G > 3 ? NULL : OUT_BLOCKS[G][vbits0 == 2 ? 0 : vbits0 == 4 ? 1 : 2];
    const out_v8_fn vblk8 = v8 ? OUT_V8S[G] : NULL;
    uint8_t *zrow = (uint8_t *)calloc((size_t)W + 64, 1);
    const int32_t *hik = kk.hrow, *nhk = kk.hcnt, *hiv = kv.hrow, *nhv = kv.hcnt;
    /* per thread: value accumulators (2 tables + zero-point terms, as akvq_token_output), the 16-bit rows' share,
     * running max and sum per (b, h, g), and the chunk's scores */
    const int64_t o_kz = 2 * nacc, o_hp = o_kz + nk, o_mx = o_hp + nacc, o_sm = o_mx + ne, o_sc = o_sm + ne;
    const int64_t per = o_sc + H * G * AKVQ_FCH;
    float *state = (float *)malloc(sizeof(float) * per * nt);
#pragma omp parallel num_threads(nt)
    {
        const int tid = thread_id();
        float *acc2 = state + per * tid, *kzs = acc2 + o_kz, *ahp = acc2 + o_hp, *mx = acc2 + o_mx, *sm = acc2 + o_sm;
        float *sc = acc2 + o_sc;
        memset(acc2, 0, sizeof(float) * o_mx);
        for (int64_t e = 0; e < ne; e++) { mx[e] = -INFINITY; sm[e] = 0; }
        int64_t i0, i1;
        row_range(nitems, nt, tid, &i0, &i1);
        for (int64_t it = i0; it < i1; it++) {
            const int64_t ci = it / B, b = it % B, t0 = ci * AKVQ_FCH, t1 = t0 + AKVQ_FCH < n_t ? t0 + AKVQ_FCH : n_t;
            const int n = (int)(t1 - t0);
            float *p = sc - t0; /* p[e * AKVQ_FCH + t] for t in [t0, t1) */
#ifdef AKVQ_VNNI
            if (kblk16) kblk16(&kk, b, t0, t1, q8, nq, qsc, qz, p, 0, AKVQ_FCH, zrow, kvec);
            else
#else
            if (kblk8) kblk8(&kk, b, t0, t1, q8, nq, qsc, qz, p, 0, AKVQ_FCH, zrow);
            else
#endif
                kblk(&kk, b, t0, t1, q8, nq, qsc, qz, p, 0, AKVQ_FCH);
            if (hik && nhk[it])
                for (int64_t t = t0; t < t1; t++) {
                    const int64_t r = tok_row(&kk.ord, t, b);
                    if (cls_k[r] != 2) continue;
                    const uint16_t *row = hpk + hp_row(hik, cls_k, &kk.ord, t, b) * W;
                    float xk[MAXSEG];
                    for (int64_t h = 0; h < H; h++) {
                        half_run(row + h * D, D, xk);
                        for (int64_t g = 0; g < G; g++) {
                            const float *qg = q + ((b * H + h) * G + g) * D;
                            float dot = 0;
                            for (int64_t d = 0; d < D; d++) dot += qg[d] * xk[d];
                            p[(h * G + g) * AKVQ_FCH + t] = dot;
                        }
                    }
                }
            if (mask_b || mask_f)
                for (int64_t t = t0; t < t1; t++) {
                    const float a = mask_at(mask_b, mask_f, msb, b, t);
                    if (a != 0.0f)
                        for (int64_t e = 0; e < H * G; e++) p[e * AKVQ_FCH + t] += a;
                }
            for (int64_t e = 0; e < H * G; e++) {
                float *x = sc + e * AKVQ_FCH;
                const int64_t j = b * H * G + e;
                const float mo = mx[j], mn = fmax2(mo, max_run(x, n));
                if (mn == -INFINITY) {
                    memset(x, 0, sizeof(float) * n);
                    continue;
                }
                if (mn > mo) { /* the max grew: rescale what this (b, h, g) has accumulated */
                    const float f = mo == -INFINITY ? 0.0f : expf(mo - mn);
                    sm[j] *= f;
                    for (int64_t d = 0; d < D; d++) {
                        acc2[j * D + d] *= f;
                        acc2[nacc + j * D + d] *= f;
                        ahp[j * D + d] *= f;
                    }
                    for (int s = 0; s < ns; s++) kzs[j * ns + s] *= f;
                    mx[j] = mn;
                }
                sm[j] += exp_sub_sum(x, n, mn);
            }
            if (v8) vblk8(&kv, b, t0, t1, p, 0, AKVQ_FCH, acc2, nacc, kzs, zrow, vvec);
            else vblk(&kv, b, t0, t1, p, 0, AKVQ_FCH, acc2, nacc, kzs);
            if (hiv && nhv[it])
                for (int64_t t = t0; t < t1; t++) {
                    const int64_t r = tok_row(&kv.ord, t, b);
                    if (cls_v[r] != 2) continue;
                    float xv[MAXSEG];
                    const uint16_t *row = hpv + hp_row(hiv, cls_v, &kv.ord, t, b) * W;
                    for (int64_t h = 0; h < H; h++) {
                        half_run(row + h * D, D, xv);
                        for (int64_t g = 0; g < G; g++) {
                            const float w = p[(h * G + g) * AKVQ_FCH + t];
                            float *a = ahp + ((b * H + h) * G + g) * D;
                            for (int64_t d = 0; d < D; d++) a[d] += w * xv[d];
                        }
                    }
                }
        }
#pragma omp barrier
        /* merge per (b, h): the threads' states and the tail, normalized */
        float *ts = (float *)malloc(sizeof(float) * (G * (T > 0 ? T : 1) + G * D));
        float *ta = ts + G * (T > 0 ? T : 1);
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < B * H; bh++) {
            const int64_t b = bh / H, h = bh % H;
            float m[8], f[64][8], l[8];
            for (int g = 0; g < G; g++) {
                m[g] = -INFINITY;
                for (int th = 0; th < nt; th++) m[g] = fmax2(m[g], state[per * th + o_mx + bh * G + g]);
            }
            if (T > 0) { /* the tail's scores */
                const float *qb = q + bh * G * D;
                const uint16_t *xb = tk + b * tkb + h * tkh;
                if (HALF_FAST(D, G)) HALF_SCORES[G](D, T, xb, tkt, qb, ts, T);
                else
                    for (int64_t t = 0; t < T; t++)
                        for (int g = 0; g < G; g++) ts[g * T + t] = dot_half(qb + g * D, xb + t * tkt, D);
                if (mask_b || mask_f)
                    for (int64_t t = 0; t < T; t++) {
                        const float a = mask_at(mask_b, mask_f, msb, b, n_t + t);
                        for (int g = 0; g < G; g++) ts[g * T + t] += a;
                    }
                for (int g = 0; g < G; g++) m[g] = fmax2(m[g], max_run(ts + g * T, (int)T));
            }
            for (int g = 0; g < G; g++) {
                l[g] = 0;
                for (int th = 0; th < nt; th++) {
                    const float *mt = state + per * th + o_mx, *st = state + per * th + o_sm;
                    f[th][g] = mt[bh * G + g] == -INFINITY ? 0.0f : expf(mt[bh * G + g] - m[g]);
                    l[g] += f[th][g] * st[bh * G + g];
                }
                if (T > 0 && m[g] != -INFINITY) l[g] += exp_sub_sum(ts + g * T, (int)T, m[g]);
                else if (T > 0) memset(ts + g * T, 0, sizeof(float) * T);
            }
            memset(ta, 0, sizeof(float) * G * D);
            if (T > 0) {
                const uint16_t *xb = tv + b * tvb + h * tvh;
                if (HALF_FAST(D, G)) HALF_OUTPUT[G](D, T, xb, tvt, ts, T, ta);
                else
                    for (int64_t t = 0; t < T; t++) {
                        float xv[MAXSEG];
                        half_run(xb + t * tvt, D, xv);
                        for (int g = 0; g < G; g++)
                            for (int64_t d = 0; d < D; d++) ta[g * D + d] += ts[g * T + t] * xv[d];
                    }
            }
            for (int g = 0; g < G; g++) {
                const int64_t e = bh * G + g;
                const float inv = l[g] > 0 ? 1.0f / l[g] : 0.0f;
                float *o = oq + e * D, *x = ox + e * D;
                for (int64_t d = 0; d < D; d++) { o[d] = 0; x[d] = ta[g * D + d]; }
                for (int th = 0; th < nt; th++) {
                    const float *a2 = state + per * th, *kz = a2 + o_kz, *hp = a2 + o_hp;
                    const float w = f[th][g];
                    if (w == 0.0f) continue;
                    for (int64_t s0 = 0; s0 < D; s0 += seg)
                        for (int mm = 0; mm < seg; mm++) {
                            float v = kz[e * ns + s0 / seg];
                            for (int c = 0; c < 2; c++)
                                v += a2[c * nacc + e * D + s0 + acc_pos(&kv, c, v8, mm)];
                            o[s0 + mm] += w * v;
                        }
                    for (int64_t d = 0; d < D; d++) x[d] += w * hp[e * D + d];
                }
                for (int64_t d = 0; d < D; d++) { o[d] *= inv; x[d] *= inv; }
            }
        }
        free(ts);
    }
    free(state);
    free(zrow);
    free(q8);
    free(qsc);
    if (packed) {
        tok_free(&kk);
        tok_free(&kv);
    }
    return 0;
#endif
}
