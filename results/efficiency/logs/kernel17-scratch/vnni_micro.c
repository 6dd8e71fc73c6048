/* The VNNI key block's inner loop (i16_block_body: 4x4 transposes, planes, 48 vpdpbusd at G = 3) on L1-resident rows. */
#include <immintrin.h>
#include <stdio.h>
#include <stdint.h>
#include <time.h>
static double now(){struct timespec t; clock_gettime(CLOCK_MONOTONIC,&t); return t.tv_sec+t.tv_nsec*1e-9;}
static uint8_t R[64][48] __attribute__((aligned(64))); static int8_t Q[3][64];
int main(void){
  int N=2000000; const int G=3; __m512i out=_mm512_setzero_si512(); const __m512i m=_mm512_set1_epi8(3);
  double t=now();
  for(int it=0;it<N;it++){
    const uint8_t *row[16]; for(int i=0;i<16;i++) row[i]=R[(it+i)&63];
    __asm__ volatile("" ::: "memory");
    int off=(it&1)*16;
    __m512i acc[6]; for(int g=0;g<2*G;g++) acc[g]=_mm512_setzero_si512();
    __m512i z[4];
    for (int u=0;u<4;u++){ __m512i x=_mm512_castsi128_si512(_mm_loadu_si128((const __m128i*)(row[u]+off)));
      x=_mm512_inserti32x4(x,_mm_loadu_si128((const __m128i*)(row[4+u]+off)),1);
      x=_mm512_inserti32x4(x,_mm_loadu_si128((const __m128i*)(row[8+u]+off)),2);
      z[u]=_mm512_inserti32x4(x,_mm_loadu_si128((const __m128i*)(row[12+u]+off)),3);}
    const __m512i t0=_mm512_unpacklo_epi32(z[0],z[1]),t1=_mm512_unpackhi_epi32(z[0],z[1]);
    const __m512i t2=_mm512_unpacklo_epi32(z[2],z[3]),t3=_mm512_unpackhi_epi32(z[2],z[3]);
    const __m512i y[4]={_mm512_unpacklo_epi64(t0,t2),_mm512_unpackhi_epi64(t0,t2),_mm512_unpacklo_epi64(t1,t3),_mm512_unpackhi_epi64(t1,t3)};
    for(int jj=0;jj<4;jj++) for(int pp=0;pp<4;pp++){ const __m512i cv=_mm512_and_si512(pp?_mm512_srli_epi32(y[jj],2*pp):y[jj],m);
      for(int g=0;g<G;g++){ const int32_t *qd=(const int32_t*)Q[g]; __asm__("vpdpbusd %2, %1, %0" : "+v"(acc[2*g+(jj&1)]) : "v"(cv), "v"(_mm512_set1_epi32(qd[4*pp+jj]))); } }
    for(int g=0;g<G;g++) out=_mm512_add_epi32(out,_mm512_add_epi32(acc[2*g],acc[2*g+1]));
  }
  printf("VNNI i16 inner (16 tokens, one head, G=3): %.2f ns\n",(now()-t)/N*1e9);
  int32_t o[16]; _mm512_storeu_si512(o,out); printf("%d\n",o[0]);
}
