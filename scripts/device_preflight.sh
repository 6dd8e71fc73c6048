#!/usr/bin/env bash
# Before a lent GPU's minutes are spent: the device calls' scripts, run here on the CPU as the device machine would
# run them. Its image has its own Python and packages (KINDS.md of the device tool: Python 3.12, torch 2.11.0,
# triton 3.6.0, transformers 5.17.0; no gguf, hydra, omegaconf, wandb or datasets) and akvq is only the checkout,
# so a venv of those versions (built once, ~5 GB, a minute from PyPI) runs a copy of the tree as it travels
# (`scripts/gpu_stage.py out`: no results/; .gpu/ and .whl/ carried) with the carried wheels on PYTHONPATH.
#   usage: bash scripts/device_preflight.sh [WORK]      (WORK: /tmp/akvq-preflight; PY312: a python3.12)
# Runs, in order (~7 min on 2 cores):
#   1. scripts/gpu_needle.sh, dry (2 items a task, 3 training steps, 1K): the wheels, the GGUF from its parts, roots,
#      training, export, both files' lanes, the paired tables;
#   2. scripts/triton_compile.py: every Triton kernel compiled for sm_90 with the device's Triton;
#   3. scripts/gpu_table4.py --tiny: Table IV's code on the tiny config.
# Needs `python scripts/gpu_stage.py pack` first (.gpu/ and .whl/). Exits non-zero on the first step that fails.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/akvq-preflight}
if [ -z "${PY312:-}" ]; then  # the first python3.12 that runs (a pyenv shim on PATH may not)
  for c in python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12; do
    if "$c" -c '' 2>/dev/null; then PY312=$c; break; fi
  done
fi
[ -n "${PY312:-}" ] || { echo "device_preflight.sh: no python3.12 that runs (set PY312)" >&2; exit 2; }
ls .gpu/lm1/SHA256SUMS .whl/*.whl >/dev/null 2>&1 \
  || { echo "device_preflight.sh: no .gpu/ or .whl/: run python scripts/gpu_stage.py pack first" >&2; exit 2; }
# the device image's versions (KINDS.md, read 2026-11; pytest and hypothesis: gpu_kernels.py imports the tests)
DEVICE_PACKAGES="torch==2.11.0 torchvision==0.26.0 numpy==2.5.2 transformers==5.17.0 huggingface_hub==1.33.0
  tokenizers==0.23.2 safetensors==0.8.0 accelerate==1.15.0 sentencepiece==0.2.2 pillow matplotlib tqdm pyyaml scipy
  pandas peft packaging jinja2 requests rich psutil filelock fsspec pytest hypothesis"
ENV=$W/venv
if [ ! -x "$ENV/bin/python" ] || [ "$(cat "$ENV/.packages" 2>/dev/null)" != "$DEVICE_PACKAGES" ]; then
  echo "== a venv of the device's versions in $ENV (once)"
  rm -rf "$ENV" && "$PY312" -m venv "$ENV"
  # shellcheck disable=SC2086  # a list
  "$ENV/bin/python" -m pip install -q $DEVICE_PACKAGES 2>&1 | { grep -v 'is ignored: it is neither' || true; }
  echo "$DEVICE_PACKAGES" > "$ENV/.packages"
fi
PY=$ENV/bin/python
TREE=$W/tree  # the tree as a call sends it: tracked and untracked-not-ignored files, no results/; .gpu, .whl
rm -rf "$TREE" && mkdir -p "$TREE"
git ls-files -z --cached --others --exclude-standard | grep -zv '^results/' \
  | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$TREE"
cp -r .gpu .whl "$TREE"/
rm -rf /tmp/site "$W/home" "$W/needle" "$W/out" && mkdir -p "$W/home" "$W/out"
cd "$TREE"
run() { env -u PYTHONPATH -u TRITON_INTERPRET HOME="$W/home" PY="$PY" "$@"; }
t0=$SECONDS
echo "== 1. gpu_needle.sh, dry ($(du -sh "$TREE" | cut -f1): the tree, .gpu and .whl)"
run DEVICE=cpu SAMPLES=2 STEPS=3 CELLS=1K EVAL_CELLS=1K BATCH=2 MICRO=1 THREADS=1 OUT="$W/out" \
  bash scripts/gpu_needle.sh "$W/needle" > "$W/needle.log" 2>&1 || { tail -30 "$W/needle.log"; exit 1; }
grep -E '^(python|== done)' "$W/needle.log"
ls "$W/out"
echo "== 2. triton_compile.py (+$((SECONDS - t0)) s)"
run PYTHONPATH=/tmp/site "$PY" scripts/triton_compile.py > "$W/triton.log" 2>&1 || { tail -30 "$W/triton.log"; exit 1; }
tail -1 "$W/triton.log"
echo "== 3. gpu_table4.py --tiny (+$((SECONDS - t0)) s)"
run PYTHONPATH=/tmp/site "$PY" scripts/gpu_table4.py --tiny --out "$W/table4" > "$W/table4.log" 2>&1 \
  || { tail -30 "$W/table4.log"; exit 1; }
grep -c '^| [0-9]' "$W/table4/table4.md" | xargs echo "Table IV rows:"
echo "== device pre-flight passed (+$((SECONDS - t0)) s); logs in $W"
