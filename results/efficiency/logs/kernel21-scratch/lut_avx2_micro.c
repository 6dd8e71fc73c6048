/* #14 on an AVX2-only CPU (no VNNI): the table-lookup key kernel (fast-scan / T-MAC) against the avx2 build's
 * key inner loop, i8v_block_body (kernel16: tokens in the lanes, vpmaddubsw + 16-bit sums). kernel20-scratch's
 * lut_micro.c measured the lookup against VNNI (AVX-512) and found it slower; without VNNI the dot products take
 * three instructions per 32 multiply-adds per head, so the lookup's balance differs. Same work per call in each
 * loop: key scores of 16 tokens x 64 channels (2-bit codes) for G = 3 query heads of one KV head, L1-resident
 * data, so only instructions count. Reported per 16 tokens.
 *  - maddubs: i8v_block_body's loop for one 64-channel chunk, twice (8 tokens a block); every loop here stops at
 *    its integer sums (the kernel's float scale and zero step after them is the same for all).
 *  - lut8: FAISS's form: a nibble = one channel pair's two codes, 32 tokens interleaved per byte position (low
 *    nibble token t, high nibble token t + 16), one 128-bit lane = one channel pair's 16-entry table; 8-bit tables
 *    (the partial sums requantized to uint8: a second approximation on top of the int8 query), 16-bit sums.
 *  - lut16: the same lookups with exact 16-bit tables (a low-byte and a high-byte table: twice the vpshufb).
 * Build: cc -O3 -mavx2 -mfma -mf16c lut_avx2_micro.c -o lut_avx2_micro; run: ./lut_avx2_micro (alternated, median
 * of 7). */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
enum { G = 3, NB = 64 };
static uint8_t R[64][48] __attribute__((aligned(64)));      /* maddubs: 16-byte code chunks of one token's row */
static int8_t Q[G][64] __attribute__((aligned(64)));
static uint8_t C[NB][16][32] __attribute__((aligned(64)));  /* lut: 32 tokens x 64 channels = 16 ymm per block */
static uint8_t T[G][16][32] __attribute__((aligned(64)));   /* lut8: per head, per ymm: 2 lanes = 2 channel pairs */
static uint8_t TH[G][16][32] __attribute__((aligned(64)));  /* lut16: the high bytes */

static __m256i maddubs(int N) { /* N calls of 16 tokens = 2N blocks of 8 */
  __m256i out = _mm256_setzero_si256();
  const __m256i m = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
  for (int it = 0; it < 2 * N; it++) {
    const uint8_t *row[8];
    for (int i = 0; i < 8; i++) row[i] = R[(it + i) & 63];
    __asm__ volatile("" ::: "memory");
    const int off = (it & 1) * 16;
    __m256i acc[G];
    for (int g = 0; g < G; g++) acc[g] = _mm256_setzero_si256();
    __m256i z[4];
    for (int u = 0; u < 4; u++)
      z[u] = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(row[u] + off))),
                                     _mm_loadu_si128((const __m128i *)(row[4 + u] + off)), 1);
    const __m256i a0 = _mm256_unpacklo_epi32(z[0], z[1]), a1 = _mm256_unpackhi_epi32(z[0], z[1]);
    const __m256i a2 = _mm256_unpacklo_epi32(z[2], z[3]), a3 = _mm256_unpackhi_epi32(z[2], z[3]);
    const __m256i y[4] = {_mm256_unpacklo_epi64(a0, a2), _mm256_unpackhi_epi64(a0, a2),
                          _mm256_unpacklo_epi64(a1, a3), _mm256_unpackhi_epi64(a1, a3)};
    for (int jj = 0; jj < 4; jj++)
      for (int pp = 0; pp < 4; pp++) {
        const __m256i cv = _mm256_and_si256(pp ? _mm256_srli_epi32(y[jj], 2 * pp) : y[jj], m);
        for (int g = 0; g < G; g++) {
          const int32_t *qd = (const int32_t *)Q[g];
          acc[g] = _mm256_add_epi16(acc[g], _mm256_maddubs_epi16(cv, _mm256_set1_epi32(qd[4 * pp + jj])));
        }
      }
    for (int g = 0; g < G; g++) out = _mm256_add_epi32(out, _mm256_madd_epi16(acc[g], ones));
  }
  return out;
}

/* The lookups over N / 2 blocks of 32 tokens; exact = 0: lut8 (FAISS's 8-bit tables, even/odd byte sums fixed up
 * per block), exact = 1: lut16 (a low- and a high-byte table, interleaved into words: twice the vpshufb). */
static inline __attribute__((always_inline)) __m256i lut(int N, int exact) {
  __m256i out = _mm256_setzero_si256();
  const __m256i lo4 = _mm256_set1_epi8(0x0f);
  for (int it = 0; it < N / 2; it++) {
    const uint8_t(*blk)[32] = C[it & (NB - 1)];
    __asm__ volatile("" ::: "memory");
    __m256i acc[G][4];
    for (int g = 0; g < G; g++) for (int a = 0; a < 4; a++) acc[g][a] = _mm256_setzero_si256();
    for (int k = 0; k < 16; k++) {
      const __m256i x = _mm256_load_si256((const __m256i *)blk[k]);
      const __m256i il = _mm256_and_si256(x, lo4), ih = _mm256_and_si256(_mm256_srli_epi16(x, 4), lo4);
      for (int g = 0; g < G; g++) {
        const __m256i tl = _mm256_load_si256((const __m256i *)T[g][k]);
        const __m256i r0 = _mm256_shuffle_epi8(tl, il), r1 = _mm256_shuffle_epi8(tl, ih);
        __m256i w[4];
        if (exact) { /* words of tokens 0-7 / 8-15 (per lane) from the byte pairs */
          const __m256i th = _mm256_load_si256((const __m256i *)TH[g][k]);
          const __m256i h0 = _mm256_shuffle_epi8(th, il), h1 = _mm256_shuffle_epi8(th, ih);
          w[0] = _mm256_unpacklo_epi8(r0, h0), w[1] = _mm256_unpackhi_epi8(r0, h0);
          w[2] = _mm256_unpacklo_epi8(r1, h1), w[3] = _mm256_unpackhi_epi8(r1, h1);
        } else { /* even bytes + 256 x odd bytes, and the odd bytes; fixed below */
          w[0] = r0, w[1] = _mm256_srli_epi16(r0, 8), w[2] = r1, w[3] = _mm256_srli_epi16(r1, 8);
        }
        for (int a = 0; a < 4; a++) acc[g][a] = _mm256_add_epi16(acc[g][a], w[a]);
      }
    }
    for (int g = 0; g < G; g++) {
      if (!exact) { /* FAISS's fix-up: the even bytes' sums */
        acc[g][0] = _mm256_sub_epi16(acc[g][0], _mm256_slli_epi16(acc[g][1], 8));
        acc[g][2] = _mm256_sub_epi16(acc[g][2], _mm256_slli_epi16(acc[g][3], 8));
      }
      for (int a = 0; a < 4; a++) /* the 2 lanes (channel pairs) summed */
        out = _mm256_add_epi16(out, _mm256_add_epi16(acc[g][a], _mm256_permute2x128_si256(acc[g][a], acc[g][a], 1)));
    }
  }
  return out;
}
static __attribute__((noinline)) __m256i lut8(int N) { return lut(N, 0); }
static __attribute__((noinline)) __m256i lut16(int N) { return lut(N, 1); }

static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }
int main(void) {
  srand(1);
  for (int i = 0; i < 64 * 48; i++) ((uint8_t *)R)[i] = rand();
  for (int i = 0; i < G * 64; i++) ((int8_t *)Q)[i] = rand();
  for (int i = 0; i < NB * 16 * 32; i++) ((uint8_t *)C)[i] = rand();
  for (int i = 0; i < G * 16 * 32; i++) { ((uint8_t *)T)[i] = rand() & 63; ((uint8_t *)TH)[i] = rand() & 3; }
  const int N = 1000000;
  double tm[7], t8[7], t16[7];
  int32_t sink = 0, o[8];
  for (int r = 0; r < 7; r++) {
    double t = now(); __m256i a = maddubs(N); tm[r] = (now() - t) / N * 1e9;
    t = now(); __m256i b = lut8(N); t8[r] = (now() - t) / N * 1e9;
    t = now(); __m256i c = lut16(N); t16[r] = (now() - t) / N * 1e9;
    _mm256_storeu_si256((__m256i *)o, _mm256_add_epi32(a, _mm256_add_epi32(b, c))); sink += o[0];
  }
  qsort(tm, 7, sizeof(double), cmp); qsort(t8, 7, sizeof(double), cmp); qsort(t16, 7, sizeof(double), cmp);
  printf("key scores, 16 tokens x 64 channels x G=%d heads, L1-resident, median of 7 alternated rounds:\n", G);
  printf("  maddubs (the avx2 build's i8v inner loop): %.2f ns (rounds %.2f-%.2f)\n", tm[3], tm[0], tm[6]);
  printf("  lut8  (fast-scan, 8-bit tables, int16 sums): %.2f ns (rounds %.2f-%.2f)  maddubs / lut8: %.2fx\n", t8[3], t8[0], t8[6], tm[3] / t8[3]);
  printf("  lut16 (exact 16-bit tables, 2x the lookups): %.2f ns (rounds %.2f-%.2f)  maddubs / lut16: %.2fx   (sink %d)\n", t16[3], t16[0], t16[6], tm[3] / t16[3], sink);
  return 0;
}
