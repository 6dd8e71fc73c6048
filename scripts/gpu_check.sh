#!/usr/bin/env bash
# The GPU checks of issue #14, as one prepared run on one GPU (an H200 here; about 5 minutes):
#   1. the Triton kernels against dequantize-then-attend over the test matrix, then one layer's decode at
#      LLaVA-7B's shape (scripts/gpu_kernels.py);
#   2. Table IV on the paper's architecture: LLaVA-1.5-7B's config with random fp16 weights, prompts of 640 and
#      8192 tokens, fp16 / kivi2 / akvq, largest batch under 32 and 80 GiB (scripts/gpu_table4.py).
# Results land in OUTDIR (default results/efficiency/gpu/latest; eight files) and are copied to $OUT when the device
# runner sets it (it brings back 8 files at most).
#   usage: bash scripts/gpu_check.sh [OUTDIR]      (PY=python3 chooses the interpreter; DEADLINE_S the Table IV
#          search's cut-off, default 300 s; TABLE_ARGS below)
# Where the GPU machine's transformers differs from the tested one (its image had 5.17), wheels of the tested
# versions can ride in .whl/ (git-ignored): installed to /tmp/site and used when they import. Fetched here by
# `python scripts/gpu_stage.py pack` (its WHEELS, 23 MB; it also cuts SmolLM2's GGUF into parts, which this script
# does not need: carry .whl alone).
# The device runner takes at most 64 MiB a call, tree and carry: `python scripts/gpu_stage.py out` leaves results/
# behind (the tree is then 19 MB; with only the candidates' 70 MB of weights out it is 45 MB, too much beside the
# wheels), `python scripts/gpu_stage.py back` after; see results/efficiency/gpu/README.md.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUTDIR=${1:-results/efficiency/gpu/latest}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && PYTHONPATH=/tmp/site $PY -c "import transformers, akvq.api; from transformers import LlavaForConditionalGeneration" \
    && export PYTHONPATH=/tmp/site && echo "using the carried wheels (/tmp/site)"
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import sys, torch, triton, transformers; print('python', sys.version.split()[0], '| torch', torch.__version__, '| triton', triton.__version__, '| transformers', transformers.__version__)"
} 2>&1 | tee "$OUTDIR/env.txt"
echo "== kernels"
timeout ${KERNELS_TIMEOUT:-150} $PY scripts/gpu_kernels.py --out "$OUTDIR" 2>&1 | tee "$OUTDIR/kernels.log"
echo "== Table IV"
# TABLE_ARGS: more gpu_table4.py arguments; by default the profile of akvq's step at 8K, batch 16 first (its host reads
# by site, then torch.profiler's table; ~20 s); TABLE_ARGS= (empty) skips it
timeout ${TABLE_TIMEOUT:-380} $PY scripts/gpu_table4.py --out "$OUTDIR" --deadline-s "${DEADLINE_S:-300}" \
  ${TABLE_ARGS---profile akvq:8192:16} 2>&1 | tee "$OUTDIR/table4.log"
if [ -n "${OUT:-}" ]; then find "$OUTDIR" -maxdepth 1 -type f -exec cp {} "$OUT/" \;; fi
