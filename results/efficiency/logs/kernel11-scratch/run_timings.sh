#!/bin/bash
# Issue #14, eleventh pass: the timings, in one go, in a quiet window (scratch; other processes are left alone).
#   bash results/efficiency/logs/kernel11-scratch/run_timings.sh
# The tenth pass's store and kernel (rev f9ca7e8: sealed blocks, codes in row order) in /tmp/old11; both interleaved
# in one process (ab.py), then the end-to-end runs at the working tree's revision.
set -x
cd "$(dirname "$0")/../../../.."
L=results/efficiency/logs
mkdir -p /tmp/old11/csrc
git show f9ca7e8:akvq/attention/csrc/packed_cpu.c > /tmp/old11/csrc/packed_cpu.c
git show f9ca7e8:akvq/attention/packed_cpu.py > /tmp/old11/packed_cpu_old.py
for i in 1 2; do
  date -u +%FT%T
  uptime
  .venv/bin/python $L/kernel11-scratch/ab.py old=/tmp/old11 rounds=15 batches=79,8 threads=1,2
done 2>&1 | tee $L/kernel11-ab.log
[ "${KERNEL_ONLY:-0}" = 1 ] && exit 0
D="prompt_len=8192 reuse=true"
.venv/bin/python scripts/bench_decode.py $D runs=akvq:79,akvq_flush8:79,fp16:14 threads=1,2 rounds=7 2>&1 | tee $L/decode11-8192-largest.log
.venv/bin/python scripts/bench_decode.py $D runs=akvq:8,akvq_flush8:8,fp16:8 threads=1,2 rounds=7 2>&1 | tee $L/decode11-8192-b8.log
.venv/bin/python scripts/bench_decode.py $D runs=akvq:79,akvq_flush8:79,fp16:14 threads=1,2 rounds=7 2>&1 | tee $L/decode11-8192-largest-2.log
.venv/bin/python scripts/bench_decode.py $D runs=akvq:8,akvq_flush8:8,fp16:8 threads=1,2 rounds=7 2>&1 | tee $L/decode11-8192-b8-2.log
date -u +%FT%T
