#!/bin/bash
# Issue #14, ninth pass: the timings, in one go, with no training/eval process running (scratch).
#   bash results/efficiency/logs/kernel9-scratch/run_timings.sh
# (Run for the ninth pass at a03a9ff with also nosm3:-DAKVQ_SM3=0, a flag since removed with the three-pass softmax.)
# The previous kernel source (the eighth pass's, rev 31dcfb6) in /tmp/old9; builds interleaved in one process.
set -x
cd "$(dirname "$0")/../../../.."
L=results/efficiency/logs
mkdir -p /tmp/old9
git show 31dcfb6:akvq/attention/csrc/packed_cpu.c > /tmp/old9/packed_cpu.c
V="nohoist:-DAKVQ_V8HOIST=0,noqgather:-DAKVQ_QGATHER=0,noshare:-DAKVQ_SHAREIDX=0,notipar:-DAKVQ_TI_PAR=0,pfchunk:-DAKVQ_PFCHUNK=1,nodpasm:-DAKVQ_DPASM=0"
for i in 1 2; do
  date -u +%FT%T
  .venv/bin/python $L/kernel9-scratch/ab.py old=/tmp/old9/packed_cpu.c rounds=15 batches=79,8 threads=1,2 variants=$V
done 2>&1 | tee $L/kernel9-ab.log
D="prompt_len=8192 reuse=true"
.venv/bin/python scripts/bench_decode.py $D runs=akvq:79,akvq_flush8:79,fp16:14 threads=1,2 rounds=7 2>&1 | tee $L/decode9-8192-largest.log
.venv/bin/python scripts/bench_decode.py $D runs=akvq:8,akvq_flush8:8,fp16:8 threads=1,2 rounds=7 2>&1 | tee $L/decode9-8192-b8.log
.venv/bin/python scripts/bench_decode.py $D runs=akvq:79,akvq_flush8:79,fp16:14 threads=1,2 rounds=7 2>&1 | tee $L/decode9-8192-largest-2.log
.venv/bin/python scripts/bench_decode.py $D runs=akvq:8,akvq_flush8:8,fp16:8 threads=1,2 rounds=7 2>&1 | tee $L/decode9-8192-b8-2.log
date -u +%FT%T
