/* AMX key-side microbenchmark (issue #14, fifteenth pass): 16 tokens' codes unpacked by vector stores, then a
 * tile load of them `dist` iterations later, tdpbusd against the query tile, tilestored; ns per 16 tokens and head. */
#include <immintrin.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
typedef struct { uint8_t palette_id, start_row, r[14]; uint16_t colsb[16]; uint8_t rows[16]; } cfg_t;
static double now(){struct timespec t; clock_gettime(CLOCK_MONOTONIC,&t); return t.tv_sec+t.tv_nsec*1e-9;}
static uint8_t A[16][1024] __attribute__((aligned(64))); static int8_t B[16*12]; static int32_t C[16][64] __attribute__((aligned(64)));
int main(void){
  syscall(SYS_arch_prctl, 0x1023, 18);
  cfg_t c; memset(&c,0,sizeof c); c.palette_id=1;
  for(int t=0;t<8;t++){c.rows[t]=16;c.colsb[t]=(t==2||t==0||t==3)?12:64;}
  _tile_loadconfig(&c);
  int N=1000000; double t; __m512i acc=_mm512_setzero_si512(), x=_mm512_set1_epi32(3);
  for (int dist=0; dist<=8; dist+= (dist<2?1:2)) {
    _tile_loadd(2,B,12);
    t=now(); for(int i=0;i<N;i++){
      for(int k=0;k<16;k++){ __m512i v=_mm512_broadcast_i32x4(_mm_load_si128((void*)(A[(i+5)&15]+16*k))); _mm512_store_si512(A[i&15]+64*k, _mm512_and_si512(_mm512_srlv_epi32(v,x),x));}
      int tc = (i&1)?0:3;
      if (tc==0){ _tile_zero(0); _tile_loadd(1,A[(i-dist)&15],64); _tile_dpbusd(0,1,2); _tile_stored(0,C[i&15],12);} 
      else { _tile_zero(3); _tile_loadd(4,A[(i-dist)&15],64); _tile_dpbusd(3,4,2); _tile_stored(3,C[i&15],12);} 
      acc=_mm512_add_epi32(acc,_mm512_load_si512(C[(i-dist)&15]));}
    printf("dist %d: 16 vec stores + tile chain: %.2f ns\n",dist,(now()-t)/N*1e9);
  }
  _tile_release();
  int32_t o[16]; _mm512_storeu_si512(o,acc); printf("%d\n",o[0]);
}
