#!/usr/bin/env bash
# Every synth-vlm table of results/vlm/README.md on one weights file, for shipping a new file (issue #12).
#
#   bash scripts/vlm_tables.sh RECORDS         # every table at 1K and the short cells; a GPU: minutes
#   bash scripts/vlm_tables.sh RECORDS2K 2K    # the method table at 2K, 100 per task (after the 1K run: its akvq
#                                              # rows read the layer pattern that run installs)
#   bash scripts/vlm_tables.sh RECORDS4K 4K    # the same at 4K (or 8K)
#   GRID=1 bash scripts/vlm_tables.sh RECORDS2K 2K   # the vision x text bits grid at that cell instead of the
#                                              # methods (its six configs; lane logs *_grid_lane_{a,b}.log)
#   bash scripts/vlm_tables.sh RECORDS4K 4K SceneTransition   # one task (or several, comma-separated) of that
#                                              # cell: a record per task, so a cell longer than one sitting is
#                                              # done a task at a time (the report adds a method's tasks up)
#   DTYPE=bfloat16 bash scripts/vlm_tables.sh RECORDS8K 8K   # the model in bf16 (on a CPU with AMX ~3x faster);
#                                              # its cells are tagged 8K/100/bf16, its table table_8k100_bf16.md
#   LANES=1 READ_PATH=cached bash scripts/vlm_tables.sh RECORDS8K 8K SceneTransition   # one 2-thread process
#                                              # of all ten methods off one prefill an item, decoding from cached
#                                              # dequantized K/V: the same texts as two lanes (20 of 20 at 8K), 47
#                                              # s an item at 8K against two lanes' 77 s (AVX2 EPYC, 2026-12-06)
#   bash scripts/vlm_tables.sh RECORDS candidate WEIGHTS   # another weights file (a --recipe run, a candidate):
#                                              # fp16, akvq and akvq_plus at 1K, 100 per task, paired item by item
#                                              # against the shipped file's records (before shipping it); then fp16
#                                              # on the validation root's needle and ObjectExistence (seed 4242)
#
# Each lane is one process whose five methods share each prompt's prefill (share_prefill: the same records as one
# by one, tests/test_milebench.py): at 8K the prefill is nearly all of an item's time, so a lane costs about what
# one method did alone (before it: 68-100 min a method a lane at 4K, 60-85 min at 8K in bf16 on an AMX Xeon, 40-65
# s an item at 8K in bf16 on a Zen 4; with it, three methods at 8K on the Zen 4: ~56 s an item, 2026-12-05).
#
# Runs on the committed file (configs/model/synth-vlm.yaml): ship first (copy the file into assets/synth-vlm/, its
# sha256 into the YAML), so every table, the profiler included, reads the same weights. RECORDS: the jsonl every
# run appends to (e.g. results/vlm/synthbench_<name>.jsonl). Two lanes of one thread each, as the README's tables
# were run; a killed run resumes: rerun the script (a recorded run is skipped by its config hash, a half-done one
# resumes from its partial samples; the profiler runs again; the lane logs append, so every sitting's log stays).
# Roots are the standard evaluation seed (2026) under ${SB_ROOTS:-/tmp}. The layer pattern (Table I) is profiled
# first, on the shipped weights, so the akvq rows use it.
set -euo pipefail
CAND=${3:+$(realpath -m -- "$3")}  # candidate's weights, from the caller's directory
cd "$(dirname "$0")/.."
R=${1:?records file}
CELL=${2:-1K}
PY=${PY:-.venv/bin/python}
ROOTS=${SB_ROOTS:-/tmp}
DTYPE=${DTYPE:-}
LANES=${LANES:-2}  # a long cell: 2 = two 1-thread processes (five methods or three grid configs a lane); 1 = one of all
READ_PATH=${READ_PATH:-}  # cached: run.py's read_path=cached (the same tokens, less time an item, more memory)
GRID=${GRID:-0}  # 1: a long cell runs the vision x text grid (GRID_A, GRID_B) instead of the method table
case $GRID in 0|1) ;; *) echo "vlm_tables.sh: GRID must be 0 or 1, got '$GRID'" >&2; exit 2 ;; esac
[[ $GRID = 0 || $CELL =~ ^(2K|4K|8K)$ ]] || {
  echo "vlm_tables.sh: GRID=1 needs a long cell (2K, 4K or 8K; 1K runs the grid with every table), got CELL '$CELL'" >&2
  exit 2; }
case $LANES in 1|2) ;; *) echo "vlm_tables.sh: LANES must be 1 or 2, got '$LANES'" >&2; exit 2 ;; esac
paths=$(sed -n 's/^READ_PATHS = (\(.*\))/\1/p' akvq/cache/cache.py | tr -d '" ')  # run.py's own list
[[ -z $READ_PATH || ",$paths," == *",$READ_PATH,"* ]] || {
  echo "vlm_tables.sh: READ_PATH must be unset or one of $paths, got '$READ_PATH'" >&2; exit 2; }
case $DTYPE in
  ''|float32) TAG= ;;
  bfloat16) TAG=bf16 ;;
  float16) TAG=fp16 ;;
  *) echo "vlm_tables.sh: DTYPE must be float32, bfloat16 or float16 (the model's compute dtype), got '$DTYPE'" >&2
     exit 2 ;;
esac
# The shipped file's records, which a candidate is paired with (update both when shipping a file): its 1K table
# (this script's RECORDS when it was shipped) and its fp16 reads on the validation root (seed 4242). Each may hold
# other files' records; the reports keep the shipped file's (its sha256 from the YAML) and the candidate's.
SHIPPED_RECORDS=results/vlm/synthbench_full1_shipped.jsonl
SHIPPED_VAL=results/vlm/synthbench_full1_val.jsonl
METHODS_A=(fp16 kivi2 skvq rtn2 smoothquant)  # most informative first: a long cell may be cut short
METHODS_B=(akvq akvq_plus akvq_rtn akvq_wht akvq_tsa)
# The vision x text grid (configs/quant/akvq_roles_v*_t*.yaml), a lane each: one 1-bit config a lane, since those
# answer with long non-answers (the slow cells)
GRID_A=(akvq_roles_v2_t2 akvq_roles_v1_t4 akvq_roles_v4_t4)
GRID_B=(akvq_roles_v4_t2 akvq_roles_v1_t2 akvq_roles_v2_t4)

TASKS=  # a long cell's tasks (third argument; all four when unset)
THREADS=1
run() {  # QUANT LIMIT ROOT [COMPARE]: with COMPARE (comma-separated), those methods share each prompt's prefill
  $PY run.py model=synth-vlm task=synthbench task.limit="$2" threads=$THREADS synthbench_root="$3" records="$R" \
    quant="$1" "compare=[${4:-}]" ${DTYPE:+model.dtype=$DTYPE} ${TASKS:+"task.datasets=[$TASKS]"} \
    ${READ_PATH:+read_path=$READ_PATH}
}
join() { local IFS=,; echo "$*"; }

case $CELL in
  1K) ;;
  2K|4K|8K)  # every method of the table at one longer cell, 100 per task (its own records: the main table's stay 1K's)
    root="$ROOTS/sb${CELL}100"
    TASKS=${3:-}
    known=$(sed -n 's/^datasets: *\[\(.*\)\].*/\1/p' configs/task/synthbench.yaml | tr -d ' ')  # the task's own list
    for t in ${TASKS//,/ }; do
      [[ ",$known," == *",$t,"* ]] || {
        echo "vlm_tables.sh: TASKS (the third argument) must be comma-separated SynthBench tasks ($known), got '$t'" >&2
        exit 2; }
    done
    [ -d "$root" ] || $PY scripts/make_synthbench.py "$root" --seed 2026 --samples 100 --cells "$CELL"
    if [ "$GRID" = 1 ]; then A=("${GRID_A[@]}") B=("${GRID_B[@]}") LOG=${R%.jsonl}_grid
    else A=("${METHODS_A[@]}") B=("${METHODS_B[@]}") LOG=${R%.jsonl}; fi
    if [ "$LANES" = 1 ]; then  # one 2-thread process: all its methods decode from one prefill per prompt
      THREADS=2
      all=("${A[@]}" "${B[@]}")
      run "${all[0]}" 100 "$root" "$(join "${all[@]:1}")" >> "${LOG}_lane_a.log" 2>&1
    else  # one process a lane: its methods decode from one prefill per prompt (share_prefill)
      run "${A[0]}" 100 "$root" "$(join "${A[@]:1}")" >> "${LOG}_lane_a.log" 2>&1 &
      run "${B[0]}" 100 "$root" "$(join "${B[@]:1}")" >> "${LOG}_lane_b.log" 2>&1 &
      wait
    fi
    $PY scripts/vlm_report.py "$R" --out results/vlm --cell "$CELL/100${TAG:+/$TAG}" \
      --table "table_${CELL,,}100${TAG:+_$TAG}.md" --figure none
    exit 0 ;;
  candidate)  # another weights file against the shipped one, on the shipped table's root and items
    W=$CAND
    [ -n "$W" ] && [ -f "$W" ] || { echo "vlm_tables.sh: candidate WEIGHTS (the third argument) must be a weights file, got '${3:-}'" >&2; exit 2; }
    [ -z "$TAG" ] || { echo "vlm_tables.sh: DTYPE must be unset or float32 for candidate (the shipped table's records are float32), got '$DTYPE'" >&2; exit 2; }
    SHA=$(sha256sum "$W" | cut -d' ' -f1)
    shipped=$(sed -n 's/^sha256: *\([0-9a-f]*\).*/\1/p' configs/model/synth-vlm.yaml)
    mkdir -p "$(dirname "$R")"
    root="$ROOTS/sb1K100"
    [ -d "$root" ] || $PY scripts/make_synthbench.py "$root" --seed 2026 --samples 100 --cells 1K
    # one process, the three methods off one prefill per prompt; akvq reads the shipped file's layer pattern
    $PY run.py model=synth-vlm task=synthbench task.limit=100 threads=2 synthbench_root="$root" records="$R" \
      quant=fp16 "compare=[akvq,akvq_plus]" model.weights="$W" model.sha256="$SHA" >> "${R%.jsonl}.log" 2>&1
    $PY scripts/vlm_report.py "$SHIPPED_RECORDS" "$R" --by-weights --seed 2026 \
      --weights "${shipped:0:8},${SHA:0:8}" --cell 1K/100 --out "$(dirname "$R")" --table "table_$(basename "${R%.jsonl}").md"
    # the validation root (seed 4242), where candidates are chosen: fp16 on the two contested tasks, one lane each,
    # paired with the shipped file's records there
    val="$ROOTS/sbval"
    [ -d "$val" ] || $PY scripts/make_synthbench.py "$val" --seed 4242 --samples 100 --cells 1K
    lanes=()
    for T in ImageNeedleInAHaystack ObjectExistence; do
      $PY run.py model=synth-vlm task=synthbench/$T task.limit=100 threads=1 synthbench_root="$val" records="$R" \
        quant=fp16 "compare=[]" model.weights="$W" model.sha256="$SHA" >> "${R%.jsonl}_val_$T.log" 2>&1 &
      lanes+=($!)
    done
    for pid in "${lanes[@]}"; do  # a failed lane stops the script (its log says why), not a table missing a task
      wait "$pid" || { echo "vlm_tables.sh: a validation lane failed (rc $?): see ${R%.jsonl}_val_*.log" >&2; exit 1; }
    done
    $PY scripts/vlm_report.py "$SHIPPED_VAL" "$R" --by-weights --seed 4242 \
      --weights "${shipped:0:8},${SHA:0:8}" --cell 1K/100 --out "$(dirname "$R")" \
      --table "table_$(basename "${R%.jsonl}")_val.md" --figure none
    exit 0 ;;
  *) echo "vlm_tables.sh: CELL (the second argument) must be 1K (every table), 2K, 4K, 8K (the method table at that length) or candidate WEIGHTS, got '$CELL'" >&2
     exit 2 ;;
esac

for spec in sb1K100:1K:100 sb1K:1K:20 sb2K:2K:20 sb4K20:4K:20 sb8K20:8K:20; do
  IFS=: read -r name cell n <<<"$spec"
  [ -d "$ROOTS/$name" ] || $PY scripts/make_synthbench.py "$ROOTS/$name" --seed 2026 --samples "$n" --cells "$cell"
done

# Table I first, on these weights: the akvq rows below read the layer pattern it installs.
$PY scripts/profile_layers.py --model synth-vlm --milebench-root "$ROOTS/sb1K" --dataset ImageNeedleInAHaystack \
  --samples 8 --length 1024 --sweep --write-pattern

lane_a() {  # the method table and ladder at 1K (100 per task), then 2K for fp16
  run "${METHODS_A[0]}" 100 "$ROOTS/sb1K100" "$(join "${METHODS_A[@]:1}")"
  run fp16 20 "$ROOTS/sb2K"
  run fp16 20 "$ROOTS/sb4K20"
  run "${GRID_A[0]}" 100 "$ROOTS/sb1K100" "$(join "${GRID_A[@]:1}")"  # the grid: 101 lane-minutes on a CPU
  $PY scripts/profile_layers.py --model synth-vlm --milebench-root "$ROOTS/sb1K" --dataset ObjectExistence \
    --samples 8 --length 1024 --sweep --out results/saliency/synth-vlm/ObjectExistence
}
lane_b() {
  run "${METHODS_B[0]}" 100 "$ROOTS/sb1K100" "$(join "${METHODS_B[@]:1}")"
  run akvq 20 "$ROOTS/sb2K"
  run fp16 20 "$ROOTS/sb1K"
  run "${GRID_B[0]}" 100 "$ROOTS/sb1K100" "$(join "${GRID_B[@]:1}")"
  run fp16 20 "$ROOTS/sb8K20"  # ~26 s an item at 7.8K tokens
}
lane_a >> "${R%.jsonl}_lane_a.log" 2>&1 &
lane_b >> "${R%.jsonl}_lane_b.log" 2>&1 &
wait

$PY scripts/vlm_report.py "$R" --out results/vlm --cell "1K/100${TAG:+/$TAG}"
echo "tables: $R; then results/vlm/README.md and tests/test_synth_tasks.py's thresholds"
