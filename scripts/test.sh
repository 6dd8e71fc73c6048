#!/usr/bin/env bash
# Sets up .venv (idempotent) and runs the lint and the test suite. CI calls this through .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check akvq hydra_plugins tests scripts run.py
# --durations: every run names its slowest tests, so the suite's budget (well under 15 minutes) is watched.
# -n 2 --dist loadfile: whole modules on two workers (the suite is mostly one-core work: imports, subprocesses,
# Hydra composition; on a 2-core AVX2 CPU 8.3 min so against 9.1 min serial); `-n 0` after the command runs it serially.
exec .venv/bin/python -m pytest -q --durations=25 -n 2 --dist loadfile "$@"
