"""A checkout used where akvq is not installed, or installed without an extra.

The device machine is the case in point (scripts/gpu_needle.sh): its image brings its own torch, the calls carry a
few wheels, and akvq itself is only the checkout, so every script must find it by its own path. A user who installed
`.[harness]` without `.[slurm]` must still sweep locally, and hear in one line what SLURM needs."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import borrowing_venv

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "scripts").glob("*.py"))


def imports_akvq(node: ast.stmt) -> bool:
    if isinstance(node, ast.ImportFrom):
        return (node.module or "").split(".")[0] == "akvq"
    return isinstance(node, ast.Import) and any(a.name.split(".")[0] == "akvq" for a in node.names)


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_every_script_puts_the_checkout_on_the_path_before_importing_akvq(script: Path) -> None:
    body = ast.parse(script.read_text()).body
    first = next((i for i, node in enumerate(body) if imports_akvq(node)), None)
    if first is None:
        return  # imports akvq only inside functions, after its own setup, or not at all
    before = [ast.unparse(node) for node in body[:first]]
    assert any("sys.path" in line for line in before), (
        f"{script.name} imports akvq at line {body[first].lineno} without putting the checkout on sys.path first"
    )


def test_scripts_run_from_a_checkout_where_akvq_is_not_installed(tmp_path: Path) -> None:
    """A venv that borrows this environment's packages (torch, transformers) but not its editable install of akvq."""
    py, _ = borrowing_venv(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    bare = subprocess.run([py, "-c", "import akvq"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert bare.returncode != 0 and "No module named 'akvq'" in bare.stderr  # else this test proves nothing
    for script in ("make_synthbench.py", "vlm_report.py", "train_vlm.py"):  # what gpu_needle.sh runs
        p = subprocess.run(
            [py, str(REPO / "scripts" / script), "--help"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert p.returncode == 0 and "usage:" in p.stdout, f"{script}: {p.stderr[-2000:]}"


@pytest.fixture
def without_submitit(tmp_path: Path) -> dict[str, str]:
    """An environment where `hydra_plugins.hydra_submitit_launcher` fails to import as if it were not installed:
    a package of that name earlier on the path (hydra_plugins is a namespace package) that raises on import."""
    shadow = tmp_path / "shadow" / "hydra_plugins" / "hydra_submitit_launcher"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'hydra_plugins.hydra_submitit_launcher'\", "
        "name='hydra_plugins.hydra_submitit_launcher')\n"
    )
    return {**os.environ, "PYTHONPATH": str(tmp_path / "shadow")}


def run_py(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "run.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_local_sweep_needs_no_slurm_extra(tmp_path: Path, without_submitit: dict[str, str]) -> None:
    p = run_py(
        [
            "-m",
            "quant=fp16,kivi2",
            "model=tiny-llava",
            "preflight=dry_run",
            f"records={tmp_path / 'runs.jsonl'}",
            f"hydra.sweep.dir={tmp_path / 'multirun'}",
        ],
        without_submitit,
        tmp_path,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "dry run: 2 jobs would start" in p.stdout
    assert "Error importing 'hydra_plugins.akvq_launchers'" not in p.stderr  # (the shadow itself is reported)


def test_slurm_launcher_without_its_package_is_refused_in_one_line(
    tmp_path: Path, without_submitit: dict[str, str]
) -> None:
    p = run_py(
        ["-m", "quant=fp16,kivi2", "hydra/launcher=submitit_slurm", f"records={tmp_path / 'runs.jsonl'}"],
        without_submitit,
        tmp_path,
    )
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr[-3000:]
    assert lines[0].startswith("ConfigError: hydra/launcher=submitit_slurm:") and "[slurm]" in lines[0]
    assert not (tmp_path / "runs.jsonl").exists()
