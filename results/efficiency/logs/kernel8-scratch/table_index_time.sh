#!/bin/bash
# usage: table_index_time.sh  (from the repository root) -- builds and runs table_index_time.c
set -e
d=$(mktemp -d)
cp akvq/attention/csrc/packed_cpu.c "$d/"
git show 9f966eb:akvq/attention/csrc/packed_cpu.c | python3 -c "
import sys; s = sys.stdin.read()
a, b = s.index('static int32_t *table_index'), s.index('/* the index inside its class table of a class-0')
print(s[a:b].replace('table_index', 'old_table_index'))" > "$d/old_table_index.h"
cp results/efficiency/logs/kernel8-scratch/table_index_time.c "$d/"
gcc -O3 -fassociative-math -fno-signed-zeros -fno-trapping-math -fno-math-errno -std=c11 -mavx2 -mfma -mf16c \
    -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -fopenmp -Wno-aggressive-loop-optimizations "$d/table_index_time.c" -o "$d/t" -lm
echo "fresh pages each call:"; "$d/t"
echo "pages kept (mallopt):"; "$d/t" keep
