/* #14's "lever left": a fast-scan / T-MAC table-lookup key kernel, against the VNNI inner loop it would replace.
 * Same work per call as vnni_micro.c (kernel17-scratch): key scores of 16 tokens x 64 channels for G = 3 query heads
 * of one KV head, on L1-resident data, so only instructions count. The LUT variant uses the layout the lookup
 * needs (32 tokens interleaved per byte position: low nibble token t, high nibble token t + 16; a nibble = two
 * 2-bit codes of one channel pair) and FAISS's 8-bit tables with 16-bit accumulation (the cheapest form; its
 * tables are requantized to uint8, a second approximation on top of the int8 query). Reported per 16 tokens.
 * Build: cc -O3 -march=native lut_micro.c -o lut_micro; run: ./lut_micro (both loops, alternated, median of 7). */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
enum { G = 3, NB = 64 };
static uint8_t R[64][48] __attribute__((aligned(64)));       /* VNNI: 16-byte code chunks of one token's row */
static int8_t Q[G][64] __attribute__((aligned(64)));
static uint8_t C[NB][8][64] __attribute__((aligned(64)));    /* LUT: 32 tokens x 64 channels = 8 zmm per block */
static uint8_t T[G][8][64] __attribute__((aligned(64)));     /* LUT: per head, per zmm: 4 lanes = 4 channel pairs */

static __m512i vnni(int N) {  /* vnni_micro.c's loop, unchanged */
  __m512i out = _mm512_setzero_si512();
  const __m512i m = _mm512_set1_epi8(3);
  for (int it = 0; it < N; it++) {
    const uint8_t *row[16];
    for (int i = 0; i < 16; i++) row[i] = R[(it + i) & 63];
    __asm__ volatile("" ::: "memory");
    int off = (it & 1) * 16;
    __m512i acc[6];
    for (int g = 0; g < 2 * G; g++) acc[g] = _mm512_setzero_si512();
    __m512i z[4];
    for (int u = 0; u < 4; u++) {
      __m512i x = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(row[u] + off)));
      x = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i *)(row[4 + u] + off)), 1);
      x = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i *)(row[8 + u] + off)), 2);
      z[u] = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i *)(row[12 + u] + off)), 3);
    }
    const __m512i t0 = _mm512_unpacklo_epi32(z[0], z[1]), t1 = _mm512_unpackhi_epi32(z[0], z[1]);
    const __m512i t2 = _mm512_unpacklo_epi32(z[2], z[3]), t3 = _mm512_unpackhi_epi32(z[2], z[3]);
    const __m512i y[4] = {_mm512_unpacklo_epi64(t0, t2), _mm512_unpackhi_epi64(t0, t2),
                          _mm512_unpacklo_epi64(t1, t3), _mm512_unpackhi_epi64(t1, t3)};
    for (int jj = 0; jj < 4; jj++)
      for (int pp = 0; pp < 4; pp++) {
        const __m512i cv = _mm512_and_si512(pp ? _mm512_srli_epi32(y[jj], 2 * pp) : y[jj], m);
        for (int g = 0; g < G; g++) {
          const int32_t *qd = (const int32_t *)Q[g];
          __asm__("vpdpbusd %2, %1, %0" : "+v"(acc[2 * g + (jj & 1)]) : "v"(cv), "v"(_mm512_set1_epi32(qd[4 * pp + jj])));
        }
      }
    for (int g = 0; g < G; g++) out = _mm512_add_epi32(out, _mm512_add_epi32(acc[2 * g], acc[2 * g + 1]));
  }
  return out;
}

static __m512i lut(int N) {  /* N calls of 16 tokens = N / 2 blocks of 32 */
  __m512i out = _mm512_setzero_si512();
  const __m512i lo4 = _mm512_set1_epi8(0x0f);
  for (int it = 0; it < N / 2; it++) {
    const uint8_t(*blk)[64] = C[it & (NB - 1)];
    __asm__ volatile("" ::: "memory");
    __m512i acc[G][4];
    for (int g = 0; g < G; g++) for (int a = 0; a < 4; a++) acc[g][a] = _mm512_setzero_si512();
    for (int k = 0; k < 8; k++) {
      const __m512i x = _mm512_load_si512(blk[k]);
      const __m512i il = _mm512_and_si512(x, lo4), ih = _mm512_and_si512(_mm512_srli_epi16(x, 4), lo4);
      for (int g = 0; g < G; g++) {
        const __m512i tb = _mm512_load_si512(T[g][k]);
        const __m512i r0 = _mm512_shuffle_epi8(tb, il), r1 = _mm512_shuffle_epi8(tb, ih);
        acc[g][0] = _mm512_add_epi16(acc[g][0], r0);  /* even bytes + 256 x odd bytes; fixed below */
        acc[g][1] = _mm512_add_epi16(acc[g][1], _mm512_srli_epi16(r0, 8));
        acc[g][2] = _mm512_add_epi16(acc[g][2], r1);
        acc[g][3] = _mm512_add_epi16(acc[g][3], _mm512_srli_epi16(r1, 8));
      }
    }
    for (int g = 0; g < G; g++) {  /* FAISS's fix-up, then the 4 lanes (channel pairs) summed: 32 token sums */
      __m512i e0 = _mm512_sub_epi16(acc[g][0], _mm512_slli_epi16(acc[g][1], 8));
      __m512i e1 = _mm512_sub_epi16(acc[g][2], _mm512_slli_epi16(acc[g][3], 8));
      __m512i s0 = _mm512_add_epi16(e0, _mm512_shuffle_i64x2(e0, e0, 0x4e));
      __m512i s1 = _mm512_add_epi16(e1, _mm512_shuffle_i64x2(e1, e1, 0x4e));
      s0 = _mm512_add_epi16(s0, _mm512_shuffle_i64x2(s0, s0, 0xb1));
      s1 = _mm512_add_epi16(s1, _mm512_shuffle_i64x2(s1, s1, 0xb1));
      out = _mm512_add_epi16(out, _mm512_add_epi16(s0, _mm512_add_epi16(s1, _mm512_add_epi16(acc[g][1], acc[g][3]))));
    }
  }
  return out;
}

static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }
int main(void) {
  srand(1);
  for (int i = 0; i < 64 * 48; i++) ((uint8_t *)R)[i] = rand();
  for (int i = 0; i < G * 64; i++) ((int8_t *)Q)[i] = rand();
  for (int i = 0; i < NB * 8 * 64; i++) ((uint8_t *)C)[i] = rand();
  for (int i = 0; i < G * 8 * 64; i++) ((uint8_t *)T)[i] = rand() & 63;
  const int N = 2000000;
  double tv[7], tl[7];
  int32_t sink = 0, o[16];
  for (int r = 0; r < 7; r++) {
    double t = now(); __m512i a = vnni(N); tv[r] = (now() - t) / N * 1e9;
    t = now(); __m512i b = lut(N); tl[r] = (now() - t) / N * 1e9;
    _mm512_storeu_si512(o, _mm512_add_epi32(a, b)); sink += o[0];
  }
  qsort(tv, 7, sizeof(double), cmp); qsort(tl, 7, sizeof(double), cmp);
  printf("key scores, 16 tokens x 64 channels x G=%d heads, L1-resident, median of 7 alternated rounds:\n", G);
  printf("  VNNI (the kernel's i16 inner loop): %.2f ns (rounds %.2f-%.2f)\n", tv[3], tv[0], tv[6]);
  printf("  LUT (fast-scan, 8-bit tables, int16 sums): %.2f ns (rounds %.2f-%.2f)\n", tl[3], tl[0], tl[6]);
  printf("  VNNI / LUT: %.2fx   (sink %d)\n", tv[3] / tl[3], sink);
  return 0;
}
