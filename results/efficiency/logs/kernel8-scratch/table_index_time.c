/* Scratch timing of the kernel's table_index, the previous (9f966eb) against the current source, on class maps
 * like SmolLM2's at batch 79, 8K (646K rows): cfg 0 = 2-bit rows with ~1 pivot in 546 rows, cfg 1 = a third text
 * rows mixed in row by row, cfg 2 = stretches of text rows. Checks that both give the same indices.
 * Build and run: see table_index_time.sh (issue #14, eighth pass); with an argument, freed pages are kept. */
#include "packed_cpu.c"
#include "old_table_index.h"
#include <malloc.h>
#include <stdio.h>
#include <sys/resource.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static long faults(void) { struct rusage u; getrusage(RUSAGE_SELF, &u); return u.ru_minflt; }
int main(int argc, char **argv) {
    if (argc > 1) { /* "keep": the pages stay with the process, as in the Python process (no faults per call) */
        mallopt(M_MMAP_THRESHOLD, 1 << 30);
        mallopt(M_TRIM_THRESHOLD, 1 << 30);
    }
    for (int cfg = 0; cfg < 3; cfg++) {
        const int64_t B = 79, T = 8064, n = B * T;
        uint8_t *cls = malloc(n);
        srand(cfg);
        for (int64_t i = 0; i < n; i++) {
            const int x = rand();
            cls[i] = cfg == 0 ? (x % 546 == 0 ? 2 : 0) : cfg == 1 ? (x % 3 == 0 ? 1 : x % 546 == 0 ? 2 : 0)
                                                     : (i / (64 * 5) % 2 ? 1 : (x % 546 == 0 ? 2 : 0));
        }
        double bo = 1e9, bn = 1e9;
        long fo = 0, fn = 0;
        int bad = 0;
        for (int rep = 0; rep < 9; rep++) {
            int32_t *h, *c, *h2, *c2;
            long f0 = faults();
            double t0 = now();
            int32_t *idx = old_table_index(cls, n, B, &h, &c);
            double t1 = now();
            long f1 = faults();
            int32_t *idx2 = table_index(cls, n, B, &h2, &c2);
            double t2 = now();
            long f2 = faults();
            if (t1 - t0 < bo) { bo = t1 - t0; fo = f1 - f0; }
            if (t2 - t1 < bn) { bn = t2 - t1; fn = f2 - f1; }
            if (rep == 0) {
                for (int64_t r = 0; r < n; r++) {
                    bad += idx[r] != idx2[r];
                    if (cls[r] == 2) bad += h[r] != hp_row(h2, cls, B, r / B, r % B);
                }
                for (int64_t i = 0; i < (T + 63) / 64 * B; i++) bad += c[i] != c2[i];
            }
            free(idx); free(h); free(c); free(idx2); free(h2); free(c2);
        }
        printf("cfg %d: old %.2f ms (%ld page faults), new %.2f ms (%ld page faults); best of 9, mismatches %d\n", cfg,
               1e3 * bo, fo, 1e3 * bn, fn, bad);
        free(cls);
    }
    return 0;
}
