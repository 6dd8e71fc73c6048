#!/bin/bash
# Issue #14, tenth pass: the timings, in one go, on a quiet machine (scratch).
#   bash results/efficiency/logs/kernel10-scratch/run_timings.sh
# The token-major store and kernel (rev 6959b7c: the order in one place, before the sealed blocks) in /tmp/old10;
# both interleaved in one process (ab.py), then the end-to-end runs at the working tree's revision. Training or
# evaluation processes still running are paused meanwhile (SIGSTOP) and always resumed (SIGCONT, trap on exit).
set -x
cd "$(dirname "$0")/../../../.."
L=results/efficiency/logs
resume() { pkill -CONT -f 'train_vlm.py'; pkill -CONT -f 'run.py model=synth-vlm'; }
trap resume EXIT
if pgrep -f 'train_vlm.py|run.py model=synth-vlm' > /dev/null; then
  pkill -STOP -f 'train_vlm.py'
  pkill -STOP -f 'run.py model=synth-vlm'
  echo "paused: $(pgrep -f 'train_vlm.py|run.py model=synth-vlm' | tr '\n' ' ')"
fi
mkdir -p /tmp/old10/csrc
git show 6959b7c:akvq/attention/csrc/packed_cpu.c > /tmp/old10/csrc/packed_cpu.c
git show 6959b7c:akvq/attention/packed_cpu.py > /tmp/old10/packed_cpu_old.py
for i in 1 2; do
  date -u +%FT%T
  .venv/bin/python $L/kernel10-scratch/ab.py old=/tmp/old10 rounds=15 batches=79,8 threads=1,2
done 2>&1 | tee $L/kernel10-ab.log
D="prompt_len=8192 reuse=true"
.venv/bin/python scripts/bench_decode.py $D runs=akvq:79,akvq_flush8:79,fp16:14 threads=1,2 rounds=7 2>&1 | tee $L/decode10-8192-largest.log
.venv/bin/python scripts/bench_decode.py $D runs=akvq:8,akvq_flush8:8,fp16:8 threads=1,2 rounds=7 2>&1 | tee $L/decode10-8192-b8.log
.venv/bin/python scripts/bench_decode.py $D runs=akvq:79,akvq_flush8:79,fp16:14 threads=1,2 rounds=7 2>&1 | tee $L/decode10-8192-largest-2.log
.venv/bin/python scripts/bench_decode.py $D runs=akvq:8,akvq_flush8:8,fp16:8 threads=1,2 rounds=7 2>&1 | tee $L/decode10-8192-b8-2.log
date -u +%FT%T
