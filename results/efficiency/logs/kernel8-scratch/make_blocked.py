"""Scratch builds of the fused kernel on sequence-blocked rows (issue #14, eighth pass; not part of the package).

Rows of tokens [64c, 64c + 64) of every sequence stay one stretch of 64 * B rows, as in the token-major layout, but
in sequence order inside it: row(t, b) = (t // 64) * B * 64 + b * 64 + t % 64. Same items, same arithmetic, so the
outputs are bit-identical to the package's kernel on the same rows permuted (`blocked_ab.py` checks this).
  packed_cpu_addr.c: only the addressing changes (row numbers, the index gather's stride, prefetches of the item's
                     own contiguous rows instead of 8 neighbouring sequences').
  packed_cpu_blk.c:  as _addr, and 16 contiguous 2-bit rows are found from two indices: row pointers as a ramp,
                     scale/zero halves by two loads and a vpermt2w per group column instead of vector gathers.

    python make_blocked.py SRC OUT_DIR     # SRC: akvq/attention/csrc/packed_cpu.c at the commit under test
"""

import sys
from pathlib import Path


def sub(s: str, old: str, new: str) -> str:
    assert old in s, old[:80]
    return s.replace(old, new)


src, out = Path(sys.argv[1]), Path(sys.argv[2])
s = src.read_text()
s = sub(
    s,
    "#define MAXSEG 512",
    "#define MAXSEG 512\n#define ROWOF(B_, t_, b_) (((t_) / 64) * (B_) * 64 + (b_) * 64 + (t_) % 64)",
)
s = sub(s, "const int64_t rr = (t + i) * k->B + b;", "const int64_t rr = ROWOF(k->B, t + i, b);")
s = sub(s, "const int64_t r = t * B + b;", "const int64_t r = ROWOF(B, t, b);")
s = sub(
    s,
    """    const __m512i rows = _mm512_mullo_epi32(lane, _mm512_set1_epi32((int)k->B));
    return _mm512_mask_i32gather_epi32(_mm512_set1_epi32(-1), n > 0 ? (__mmask16)((1u << n) - 1) : 0, rows,
                                       k->idx + t * k->B + b, 4);""",
    """    return _mm512_mask_i32gather_epi32(_mm512_set1_epi32(-1), n > 0 ? (__mmask16)((1u << n) - 1) : 0, lane,
                                       k->idx + ROWOF(k->B, t, b), 4);""",
)
a, b = s.index("static inline void prefetch16v("), s.index("ALWAYS_INLINE void i16_block_body")
s = (
    s[:a]
    + """static inline void prefetch16v(const tok_t *k, int64_t b, int64_t t, int64_t t1) {
    if (t >= t1) return;
    const int n = t1 - t < 16 ? (int)(t1 - t) : 16;
    const int64_t nb = k->W / 4, ngr = k->ngr;
    int64_t a = k->idx[ROWOF(k->B, t, b)];
    if (a < 0) return;
    const uint8_t *c0 = k->tab[0].codes + a * nb, *c1 = c0 + n * nb;
    for (const uint8_t *pp = c0; pp < c1; pp += 64) __builtin_prefetch(pp, 0, 3);
    const uint16_t *s0 = k->tab[0].scale + a * ngr, *z0 = k->tab[0].zero + a * ngr;
    for (int64_t o = 0; o < n * ngr; o += 32) { __builtin_prefetch(s0 + o, 0, 3); __builtin_prefetch(z0 + o, 0, 3); }
}

"""
    + s[b:]
)
# 16-bit rows: a per-row count in storage order (scratch; the package keeps per-token counts)
s = sub(
    s,
    """    int64_t i = hrow[t];
    for (int64_t j = 0; j < b; j++) i += cls[t * B + j] == 2;
    return i;""",
    """    (void)cls;
    return hrow[ROWOF(B, t, b)];""",
)
s = sub(
    s,
    "int32_t *h = (int32_t *)malloc(sizeof(int32_t) * (n_t > 0 ? n_t : 1));",
    "int32_t *h = (int32_t *)malloc(sizeof(int32_t) * (n_rows > 0 ? n_rows : 1));",
)
s = sub(
    s,
    """        h[t] = n2;
        n2 += m;
        if (m)
            for (int64_t b = 0; b < B; b++) cnt[(t / AKVQ_FCH) * B + b] += cr[b] == 2;
    }""",
    """        (void)m;
        for (int64_t b = 0; b < B; b++) cnt[(t / AKVQ_FCH) * B + b] += cls[ROWOF(B, t, b)] == 2;
    }
    for (int64_t r = 0; r < n_rows; r++) { h[r] = n2; n2 += cls[r] == 2; }""",
)
(out / "packed_cpu_addr.c").write_text(s)
s = sub(
    s,
    """    const int ngr = k->ngr, n = t1 - t < 16 ? (int)(t1 - t) : 16; /* n <= 0: an empty block */
    const int64_t nb = k->W / 4;
""",
    """    const int ngr = k->ngr, n = t1 - t < 16 ? (int)(t1 - t) : 16; /* n <= 0: an empty block */
    const int64_t nb = k->W / 4;
    if (n == 16 && ngr <= 4) { /* 16 contiguous 2-bit rows, found from two indices */
        const int64_t r0 = ROWOF(k->B, t, b);
        const int32_t a = k->idx[r0];
        if (a >= 0 && k->idx[r0 + 15] == a + 15) {
            const __m512i lane64 = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
            const __m512i base = _mm512_set1_epi64((long long)(uintptr_t)(k->tab[0].codes + (int64_t)a * nb));
            const __m512i nbv = _mm512_set1_epi64(nb);
            _mm512_storeu_si512((void *)row, _mm512_add_epi64(base, _mm512_mullo_epi64(lane64, nbv)));
            _mm512_storeu_si512((void *)(row + 8),
                                _mm512_add_epi64(base, _mm512_mullo_epi64(_mm512_add_epi64(lane64, _mm512_set1_epi64(8)), nbv)));
            const int nh = 16 * ngr;
            const __mmask32 l0 = nh >= 32 ? 0xffffffffu : (__mmask32)((1u << nh) - 1);
            const __mmask32 l1 = nh <= 32 ? 0 : nh >= 64 ? 0xffffffffu : (__mmask32)((1u << (nh - 32)) - 1);
            const uint16_t *sp = k->tab[0].scale + (int64_t)a * ngr, *zp = k->tab[0].zero + (int64_t)a * ngr;
            const __m512i s0 = _mm512_maskz_loadu_epi16(l0, sp), s1 = _mm512_maskz_loadu_epi16(l1, sp + 32);
            const __m512i z0 = _mm512_maskz_loadu_epi16(l0, zp), z1 = _mm512_maskz_loadu_epi16(l1, zp + 32);
            const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
            const __m512i step = _mm512_mullo_epi32(iota, _mm512_set1_epi32(ngr));
            for (int j = 0; j < ngr; j++) {
                const __m512i ix = _mm512_castsi256_si512(_mm512_cvtepi32_epi16(_mm512_add_epi32(step, _mm512_set1_epi32(j))));
                _mm256_storeu_si256((__m256i *)(sh + j * ld), _mm512_castsi512_si256(_mm512_permutex2var_epi16(s0, ix, s1)));
                _mm256_storeu_si256((__m256i *)(zh + j * ld), _mm512_castsi512_si256(_mm512_permutex2var_epi16(z0, ix, z1)));
            }
            *any1 = 0;
            return (__mmask16)0xffff;
        }
    }
""",
)
(out / "packed_cpu_blk.c").write_text(s)
