#!/usr/bin/env bash
# Every synth-vlm table of results/vlm/README.md on one weights file, for shipping a new file (issue #12).
#
#   bash scripts/vlm_tables.sh RECORDS     # ~4-5 h on 2 CPU threads; a GPU: minutes
#
# Runs on the committed file (configs/model/synth-vlm.yaml): ship first (copy the file into assets/synth-vlm/, its
# sha256 into the YAML), so every table, the profiler included, reads the same weights. RECORDS: the jsonl every
# run appends to (e.g. results/vlm/synthbench_<name>.jsonl). Two lanes of one thread each, as the README's tables
# were run; a lane that is killed is rerun as is (each run.py call appends its own records, so a finished call is
# simply repeated or skipped by hand). Roots are the standard evaluation seed (2026) under ${SB_ROOTS:-/tmp}. The
# layer pattern (Table I) is written last, so the method tables use the pattern already installed; rerun the akvq
# rows if it moved.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:?records file}
PY=${PY:-.venv/bin/python}
ROOTS=${SB_ROOTS:-/tmp}

for spec in sb1K100:1K:100 sb1K:1K:20 sb2K:2K:20 sb8K:8K:5; do
  IFS=: read -r name cell n <<<"$spec"
  [ -d "$ROOTS/$name" ] || $PY scripts/make_synthbench.py "$ROOTS/$name" --seed 2026 --samples "$n" --cells "$cell"
done

run() {  # QUANT LIMIT ROOT
  $PY run.py model=synth-vlm task=synthbench task.limit="$2" threads=1 synthbench_root="$3" records="$R" \
    quant="$1" 'compare=[]'
}

lane_a() {  # the method table and ladder at 1K (100 per task), then 2K for fp16
  for q in fp16 rtn2 kivi2 skvq smoothquant; do run $q 100 "$ROOTS/sb1K100"; done
  run fp16 20 "$ROOTS/sb2K"
  for q in akvq_roles_v2_t2 akvq_roles_v4_t2 akvq_roles_v2_t4; do run $q 20 "$ROOTS/sb1K"; done
}
lane_b() {
  for q in akvq akvq_rtn akvq_wht akvq_tsa akvq_plus; do run $q 100 "$ROOTS/sb1K100"; done
  run akvq 20 "$ROOTS/sb2K"
  run fp16 20 "$ROOTS/sb1K"
  for q in akvq_roles_v4_t4 akvq_roles_v1_t4 akvq_roles_v1_t2; do run $q 20 "$ROOTS/sb1K"; done
  run fp16 5 "$ROOTS/sb8K"
}
lane_a > "${R%.jsonl}_lane_a.log" 2>&1 &
lane_b > "${R%.jsonl}_lane_b.log" 2>&1 &
wait

$PY scripts/profile_layers.py --model synth-vlm --milebench-root "$ROOTS/sb1K" --dataset ImageNeedleInAHaystack \
  --samples 8 --length 1024 --sweep --write-pattern
$PY scripts/profile_layers.py --model synth-vlm --milebench-root "$ROOTS/sb1K" --dataset ObjectExistence \
  --samples 8 --length 1024 --sweep --out results/saliency/synth-vlm/ObjectExistence
$PY scripts/vlm_report.py "$R" --out results/vlm --cell 1K/100
echo "tables: $R; then results/vlm/README.md and tests/test_synth_tasks.py's thresholds"
