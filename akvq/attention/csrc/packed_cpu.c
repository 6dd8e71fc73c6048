/* Decode attention over akvq's packed KV rows on the CPU: scores q.k and outputs sum_t p_t v_t, read straight
 * from the 1/2/3/4/8-bit codes. One pass over the bytes, no full-precision K/V: each row segment is unpacked
 * into a small stack buffer and reduced against every query head of its group at once.
 *
 * Layouts (see akvq/cache/store.py):
 *   token axis: rows r = t * B + b in token order; cls[r] is the row's class (0 low, 1 text, 2 16-bit).
 *     Class c's rows are stored contiguously in its own table, in token order: codes [N_c, W * bits_c / 8],
 *     scale/zero [N_c, W / group] as IEEE half. W = H * D. Dequantized: x = s * (c - z), or s * c + z when
 *     float_zero (z then holds the group minimum). 16-bit rows are skipped here; the caller writes them.
 *   channel axis: codes [B, W, T * bits / 8] packed along tokens, scale/zero [B, W, T / group].
 * q is [B, H, G, D] (already in the stored space); scores and p are float32 [B, H, G, T] with given strides.
 * Build: see FLAGS in packed_cpu.py (reassociation, no -ffast-math; OpenMP optional). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#define MAXSEG 512

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

/* Index of each row inside its class table (the running count of its class); -1 for 16-bit rows. */
static int32_t *table_index(const uint8_t *cls, int64_t n_rows) {
    int32_t *idx = (int32_t *)malloc(sizeof(int32_t) * (n_rows > 0 ? n_rows : 1));
    int32_t cnt[3] = {0, 0, 0};
    for (int64_t r = 0; r < n_rows; r++) {
        int c = cls[r];
        idx[r] = c < 2 ? cnt[c] : -1;
        cnt[c < 3 ? c : 2]++;
    }
    return idx;
}

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

/* Both token-axis kernels walk the rows in storage order (t * B + b: sequential reads, which matter more than
 * anything in a VM where every TLB miss walks two page tables) and hand each row to a row function. The row
 * functions are instantiated for the common (bits, segment of 16/32/64/128, G) so that the unpack, the G dot products or
 * updates and the loops are straight-line code with the accumulators in registers; others use a generic one. */
typedef struct {
    int64_t B, H, G, D, group, float_zero;
    int seg, ns, W, ngr;
    const uint8_t *cls;
    int32_t *idx;
    table_t tab[2];
    int pm[2];
    int *gidx; /* [H * ns]: scale/zero index inside a row of segment s of head h */
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

static score_row_fn pick_score(int bits, int seg, int64_t G) {
    PICK(score, bits, seg, G)
    return score_row_generic;
}

static output_row_fn pick_output(int bits, int seg, int64_t G) {
    PICK(output, bits, seg, G)
    return output_row_generic;
}

static int tok_init(tok_t *k, int64_t n_rows, int64_t B, int64_t H, int64_t G, int64_t D, int64_t group,
                    const uint8_t *cls, const uint8_t *c0, const uint16_t *s0, const uint16_t *z0, int64_t bits0,
                    const uint8_t *c1, const uint16_t *s1, const uint16_t *z1, int64_t bits1, int64_t float_zero) {
    k->B = B; k->H = H; k->G = G; k->D = D; k->group = group; k->float_zero = float_zero;
    k->seg = gcd((int)group, (int)D); k->ns = (int)(D / k->seg); k->W = (int)(H * D); k->ngr = (int)(H * D / group);
    k->cls = cls;
    k->tab[0] = (table_t){c0, s0, z0, bits0};
    k->tab[1] = (table_t){c1, s1, z1, bits1};
    k->pm[0] = plane_major_ok((int)bits0, k->seg, (int)G);
    k->pm[1] = plane_major_ok((int)bits1, k->seg, (int)G);
    if (k->seg > MAXSEG || G > 64) return 1;
    k->gidx = (int *)malloc(sizeof(int) * H * k->ns);
    for (int h = 0; h < H; h++)
        for (int s = 0; s < k->ns; s++) k->gidx[h * k->ns + s] = (int)((h * D + s * k->seg) / group);
    k->idx = table_index(cls, n_rows);
    return 0;
}

static void tok_free(tok_t *k) {
    free(k->idx);
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

/* scores: out[b * osb + t * ost + (h * G + g) * osg] for the packed rows (t < n_q); 16-bit rows are left as they
 * are. The caller picks the layout: token-major (osg = 1) keeps every write sequential. */
int akvq_token_scores(int64_t n_rows, int64_t B, int64_t H, int64_t G, int64_t D, int64_t group,
                      const uint8_t *cls, const uint8_t *c0, const uint16_t *s0, const uint16_t *z0, int64_t bits0,
                      const uint8_t *c1, const uint16_t *s1, const uint16_t *z1, int64_t bits1, int64_t float_zero,
                      const float *q, float *out, int64_t osb, int64_t ost, int64_t osg, int64_t nthreads) {
    tok_t k;
    if (tok_init(&k, n_rows, B, H, G, D, group, cls, c0, s0, z0, bits0, c1, s1, z1, bits1, float_zero)) return 1;
    const int seg = k.seg, ns = k.ns, nt = n_threads(nthreads);
    const int64_t nq = B * H * G * D, W = H * D;
    /* q per table in the order its codes unpack to, and q summed per segment for the zero-point term */
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
        int64_t t = r0 / B, b = r0 % B;
        for (int64_t r = r0; r < r1; r++) {
            const int c = cls[r];
            if (c < 2) {
                const table_t *T = &k.tab[c];
                const int64_t i = k.idx[r];
                fn[c](&k, (int)T->bits, T->codes + i * (W * T->bits / 8), T->scale + i * k.ngr, T->zero + i * k.ngr,
                      qp + c * nq + b * H * G * D, qsum + b * H * G * ns, out + b * osb + t * ost, osg);
            }
            if (++b == B) { b = 0; t++; }
        }
    }
    free(qp);
    free(qsum);
    tok_free(&k);
    return 0;
}

/* outputs: acc[b, h, g, :] += sum over packed rows of p[b, h, g, t] * x_t (16-bit rows skipped); p at
 * p[b * psb + t * pst + (h * G + g) * psg], token-major (psg = 1) for sequential reads. Each table
 * accumulates in its own unpack order (per-thread partials), permuted back to channel order at the end; the
 * zero-point terms are one scalar per segment. */
int akvq_token_output(int64_t n_rows, int64_t B, int64_t H, int64_t G, int64_t D, int64_t group,
                      const uint8_t *cls, const uint8_t *c0, const uint16_t *s0, const uint16_t *z0, int64_t bits0,
                      const uint8_t *c1, const uint16_t *s1, const uint16_t *z1, int64_t bits1, int64_t float_zero,
                      const float *p, int64_t psb, int64_t pst, int64_t psg, float *acc, int64_t nthreads) {
    tok_t k;
    if (tok_init(&k, n_rows, B, H, G, D, group, cls, c0, s0, z0, bits0, c1, s1, z1, bits1, float_zero)) return 1;
    const int seg = k.seg, ns = k.ns, nt = n_threads(nthreads);
    const int64_t nacc = B * H * G * D, nk = B * H * G * ns, W = H * D;
    float *part = (float *)calloc((size_t)nt * (2 * nacc + nk), sizeof(float));
    const output_row_fn fn[2] = {pick_output((int)bits0, seg, G), pick_output((int)bits1, seg, G)};
#pragma omp parallel num_threads(nt)
    {
        const int tid = thread_id();
        float *acc2 = part + (int64_t)tid * (2 * nacc + nk), *kz = acc2 + 2 * nacc;
        int64_t r0, r1;
        row_range(n_rows, nt, tid, &r0, &r1);
        int64_t t = r0 / B, b = r0 % B;
        for (int64_t r = r0; r < r1; r++) {
            const int c = cls[r];
            if (c < 2) {
                const table_t *T = &k.tab[c];
                const int64_t i = k.idx[r];
                fn[c](&k, (int)T->bits, T->codes + i * (W * T->bits / 8), T->scale + i * k.ngr, T->zero + i * k.ngr,
                      p + b * psb + t * pst, psg, acc2 + c * nacc + b * H * G * D, kz + b * H * G * ns);
            }
            if (++b == B) { b = 0; t++; }
        }
    }
    for (int j = 0; j < nt; j++) {
        const float *acc2 = part + (int64_t)j * (2 * nacc + nk), *kz = acc2 + 2 * nacc;
        for (int c = 0; c < 2; c++)
            for (int64_t e = 0; e < nacc; e += seg)
                for (int m = 0; m < seg; m++)
                    acc[e + m] += acc2[c * nacc + e + (k.pm[c] ? pm_pos(m, (int)k.tab[c].bits) : m)];
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

/* 16-bit rows [B, H, T, D] (IEEE half, strides sb/sh/st, unit stride along D): scores into out[b, h, g, t0 + t]. */
int akvq_half_scores(int64_t B, int64_t H, int64_t G, int64_t D, int64_t T, const uint16_t *x, int64_t sb,
                     int64_t sh, int64_t st, const float *q, float *out, int64_t ldo, int64_t t0, int64_t nthreads) {
    if (D > MAXSEG || G > 64) return 1;
#pragma omp parallel for collapse(2) schedule(static) num_threads(nthreads)
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) {
            float f[MAXSEG];
            const float *qb = q + (b * H + h) * G * D;
            float *ob = out + (b * H + h) * G * ldo + t0;
            for (int64_t t = 0; t < T; t++) {
                const uint16_t *row = x + b * sb + h * sh + t * st;
                half_run(row, D, f);
                for (int g = 0; g < G; g++) {
                    float dot = 0;
                    for (int64_t d = 0; d < D; d++) dot += qb[g * D + d] * f[d];
                    ob[g * ldo + t] = dot;
                }
            }
        }
    return 0;
}

/* acc[b, h, g, :] += sum_t p[b, h, g, t0 + t] * x[b, h, t, :] over 16-bit rows laid out as above. */
int akvq_half_output(int64_t B, int64_t H, int64_t G, int64_t D, int64_t T, const uint16_t *x, int64_t sb,
                     int64_t sh, int64_t st, const float *p, int64_t ldp, int64_t t0, float *acc, int64_t nthreads) {
    if (D > MAXSEG || G > 64) return 1;
#pragma omp parallel for collapse(2) schedule(static) num_threads(nthreads)
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) {
            float f[MAXSEG];
            const float *pb = p + (b * H + h) * G * ldp + t0;
            float *ab = acc + (b * H + h) * G * D;
            for (int64_t t = 0; t < T; t++) {
                const uint16_t *row = x + b * sb + h * sh + t * st;
                half_run(row, D, f);
                for (int g = 0; g < G; g++) {
                    const float w = pb[g * ldp + t];
                    if (w == 0.0f) continue;
                    for (int64_t d = 0; d < D; d++) ab[g * D + d] += w * f[d];
                }
            }
        }
    return 0;
}
