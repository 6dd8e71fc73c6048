/* value side per 32-token block and head (G = 3): VNNI (v8_quad512's inner loop) vs AMX (B rows built from the same
 * unpacks, stored, tile-multiplied one block later) */
#include <immintrin.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
typedef struct { uint8_t palette_id, start_row, r[14]; uint16_t colsb[16]; uint8_t rows[16]; } cfg_t;
static double now(){struct timespec t; clock_gettime(CLOCK_MONOTONIC,&t); return t.tv_sec+t.tv_nsec*1e-9;}
static uint8_t R[256][48] __attribute__((aligned(64))); static uint8_t WQ[3][32] __attribute__((aligned(64)));
static uint8_t BB[4][4][8*64] __attribute__((aligned(64))); static int32_t CC[4][4][3*16] __attribute__((aligned(64)));
#define G 3
int main(void){
  syscall(SYS_arch_prctl, 0x1023, 18);
  const __m512i m = _mm512_set1_epi8(3), sh = _mm512_setr_epi32(0,0,0,0,2,2,2,2,4,4,4,4,6,6,6,6);
  int N=1000000; double t; __m512i out=_mm512_setzero_si512();
  t=now();
  for(int it=0;it<N;it++){
    const uint8_t *rows[32]; for(int i=0;i<32;i++) rows[i]=R[(it*7+i)&255];
    __asm__ volatile("" ::: "memory");
    const int64_t off=(it&1)*16;
    __m512i acc[G][4]; for(int g=0;g<G;g++) for(int v=0;v<4;v++) acc[g][v]=_mm512_setzero_si512();
    for(int i=0;i<8;i++){
      __m512i c[4]; for(int u=0;u<4;u++) c[u]=_mm512_and_si512(_mm512_srlv_epi32(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i*)(rows[4*i+u]+off))),sh),m);
      const __m512i lo01=_mm512_unpacklo_epi8(c[0],c[1]),hi01=_mm512_unpackhi_epi8(c[0],c[1]);
      const __m512i lo23=_mm512_unpacklo_epi8(c[2],c[3]),hi23=_mm512_unpackhi_epi8(c[2],c[3]);
      const __m512i x[4]={_mm512_unpacklo_epi16(lo01,lo23),_mm512_unpackhi_epi16(lo01,lo23),_mm512_unpacklo_epi16(hi01,hi23),_mm512_unpackhi_epi16(hi01,hi23)};
      for(int g=0;g<G;g++){ int32_t w4; memcpy(&w4,WQ[g]+4*i,4); const __m512i w=_mm512_set1_epi32(w4);
        for(int v=0;v<4;v++) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc[g][v]) : "v"(w), "v"(x[v])); }
    }
    for(int g=0;g<G;g++) for(int v=0;v<4;v++) out=_mm512_add_epi32(out,acc[g][v]);
  }
  printf("VNNI values (32 tokens, one head, G=3): %.2f ns\n",(now()-t)/N*1e9);
  cfg_t c; memset(&c,0,sizeof c); c.palette_id=1;
  c.rows[0]=G; c.colsb[0]=32;              /* A = weights [G, 32 tokens] */
  c.rows[1]=8; c.colsb[1]=64; c.rows[2]=8; c.colsb[2]=64; /* B = codes [8 quads, 16 channels x 4 tokens] */
  for(int tt=3;tt<7;tt++){c.rows[tt]=G;c.colsb[tt]=64;}  /* C_v [G, 16 channels] */
  _tile_loadconfig(&c);
  t=now();
  for(int it=0;it<N;it++){
    const uint8_t *rows[32]; for(int i=0;i<32;i++) rows[i]=R[(it*7+i)&255];
    __asm__ volatile("" ::: "memory");
    const int64_t off=(it&1)*16; uint8_t (*bb)[8*64]=BB[it&3];
    for(int i=0;i<8;i++){
      __m512i c4[4]; for(int u=0;u<4;u++) c4[u]=_mm512_and_si512(_mm512_srlv_epi32(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i*)(rows[4*i+u]+off))),sh),m);
      const __m512i lo01=_mm512_unpacklo_epi8(c4[0],c4[1]),hi01=_mm512_unpackhi_epi8(c4[0],c4[1]);
      const __m512i lo23=_mm512_unpacklo_epi8(c4[2],c4[3]),hi23=_mm512_unpackhi_epi8(c4[2],c4[3]);
      _mm512_store_si512(bb[0]+64*i,_mm512_unpacklo_epi16(lo01,lo23)); _mm512_store_si512(bb[1]+64*i,_mm512_unpackhi_epi16(lo01,lo23));
      _mm512_store_si512(bb[2]+64*i,_mm512_unpacklo_epi16(hi01,hi23)); _mm512_store_si512(bb[3]+64*i,_mm512_unpackhi_epi16(hi01,hi23));
    }
    /* the previous block's tiles (one block apart from its stores) */
    uint8_t (*pb)[8*64]=BB[(it-1)&3]; int32_t (*cc)[3*16]=CC[(it-1)&3];
    _tile_loadd(0,WQ,32);
    _tile_zero(3); _tile_zero(4); _tile_zero(5); _tile_zero(6);
    _tile_loadd(1,pb[0],64); _tile_dpbusd(3,0,1); _tile_loadd(2,pb[1],64); _tile_dpbusd(4,0,2);
    _tile_loadd(1,pb[2],64); _tile_dpbusd(5,0,1); _tile_loadd(2,pb[3],64); _tile_dpbusd(6,0,2);
    _tile_stored(3,cc[0],64); _tile_stored(4,cc[1],64); _tile_stored(5,cc[2],64); _tile_stored(6,cc[3],64);
    int32_t (*c2)[3*16]=CC[(it-2)&3];
    for(int g=0;g<G;g++) for(int v=0;v<4;v++) out=_mm512_add_epi32(out,_mm512_load_si512(c2[v]+16*g));
  }
  printf("AMX values (32 tokens, one head, G=3): %.2f ns\n",(now()-t)/N*1e9);
  _tile_release();
  int32_t o[16]; _mm512_storeu_si512(o,out); printf("%d\n",o[0]);
}
