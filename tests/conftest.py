"""Shared fixtures: tiny random models of the real architectures, built once per session."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from PIL import Image

torch.set_num_threads(2)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with a `slow` test first, each module's order kept: `scripts/test.sh` runs modules on two workers
    (pytest-xdist, `--dist loadfile`), and a long module started last would leave one core idle at the end."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


@functools.cache
def tiny(kind: str):
    from akvq.models import build_tiny

    return build_tiny(kind)


def load_script(name: str):
    """A module of scripts/ (not a package) loaded from its file."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def triton_interpreter_problem() -> str | None:
    """Why the Triton kernels cannot run in Triton's CPU interpreter here, or None. Triton before 3.7 (3.6 is torch
    2.11's, the device image's) turns 1-element arrays into loop bounds, which numpy 2.4 made an error: every kernel
    with a `range()` over a program's start fails there (checked: 3.6.0 with numpy 2.4.6 and 2.5.2 fails, with
    2.3.5 runs; 3.7.1 and 3.8.0 run with 2.4.6)."""
    import importlib.metadata as md

    from packaging.version import Version

    try:
        triton = Version(md.version("triton"))
    except md.PackageNotFoundError:
        return "triton is not installed"
    numpy = Version(md.version("numpy"))
    if triton < Version("3.7") and numpy >= Version("2.4"):
        return f"Triton {triton}'s interpreter fails under numpy {numpy}: numpy<2.4 or triton>=3.7 runs it"
    return None


_INTERPRETER_PROBLEM = triton_interpreter_problem()
needs_triton_interpreter = pytest.mark.skipif(
    _INTERPRETER_PROBLEM is not None, reason=str(_INTERPRETER_PROBLEM)
)
"""The Triton kernels run on the CPU in Triton's interpreter (TRITON_INTERPRET=1, in a subprocess)."""


def borrowing_venv(path: Path) -> tuple[str, str]:
    """A venv at `path` that borrows this environment's packages (torch etc., by a .pth line: no network), but not
    what this environment's own .pth files install, such as akvq's editable finder: (its python, its site-packages)."""
    import subprocess
    import sysconfig
    import venv

    venv.create(path, with_pip=False, symlinks=True)
    py = str(path / "bin" / "python")
    site = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return py, site


def image(w: int, h: int, seed: int = 0) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).byte().numpy())


def tiny_inputs(kind: str, batch: int = 2):
    """A batch with different prompt lengths (left padding); VLMs get one or two images per prompt."""
    from akvq.models.prompting import build_inputs

    loaded = tiny(kind)
    filler = "the quick brown fox jumps over the lazy dog " * 3
    if kind == "llama":
        prompts = [filler * 2, "short prompt " + filler][:batch]
        return loaded, build_inputs(loaded, prompts)
    prompts = [f"<image> {filler} <image> describe both", f"{filler} <image> what is it"][:batch]
    images = [[image(60, 40, 1), image(40, 70, 2)], [image(56, 56, 3)]][:batch]
    return loaded, build_inputs(loaded, prompts, images)


@pytest.fixture(scope="session")
def tiny_llama():
    return tiny("llama")


# ---------------------------------------------------------------- fakes of the runner's hooks (runner, pre-flight tests)


class FakeTask:
    primary_metric = "ppl"

    def __init__(self, needs_images: bool = False, details: Any = None) -> None:
        self.needs_images = needs_images
        self.details = details if details is not None else {"windows": [1.0, 2.0]}
        self.calls: list[Any] = []

    def run(self, loaded: Any, policy: Any, cfg: Any) -> SimpleNamespace:
        self.calls.append(policy)
        bits = float(getattr(policy, "bits", 16))
        return SimpleNamespace(
            metrics={"ppl": 10.0 + 1.0 / bits, "ppl_lo": 9.0},
            kv_bytes=int(1000 * bits),
            kv_effective_bits=bits,
            num_tokens=128,
            details=self.details,
        )


@pytest.fixture
def fakes() -> SimpleNamespace:
    """A runner Session with a fake model loader and `state.task` as every task; `state.loads` counts loads."""
    from akvq import runner

    state = SimpleNamespace(loads=0, task=FakeTask())

    def load_model(model_cfg: dict) -> SimpleNamespace:
        state.loads += 1
        return SimpleNamespace(model=None, tokenizer=None, processor=None, family=model_cfg.get("family"))

    state.session = runner.Session(
        load_model=load_model, validate_model=lambda model_cfg: None, get_task=lambda name, cfg: state.task
    )
    return state


def run_main(argv: list[str], monkeypatch: pytest.MonkeyPatch, session: Any = None) -> int:
    """The one in-process `python run.py ARGV` driver (so monkeypatched fakes apply); `session` replaces run.py's
    Session (the fake loader). Returns the exit status (0 when run.main returns)."""
    from hydra.core.global_hydra import GlobalHydra

    monkeypatch.setattr(sys, "argv", ["run.py", *argv])
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))
    import run

    if session is not None:
        monkeypatch.setattr(run, "SESSION", session)
    GlobalHydra.instance().clear()
    try:
        run.main()
    except SystemExit as e:
        return int(e.code or 0)
    finally:
        GlobalHydra.instance().clear()
    return 0


def run_py(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fakes: SimpleNamespace, *overrides: str) -> int:
    """`python run.py -m <overrides>` in this process with the fakes' Session; returns the exit status."""
    extra = tmp_path / "extra_configs" / "model"
    extra.mkdir(parents=True, exist_ok=True)
    (extra / "fake-lm.yaml").write_text("name: fake-lm\nsource: tiny\nfamily: llama\ntiny_kind: llama\n")
    (extra / "gone.yaml").write_text(
        f"name: gone\nsource: hub\npath: {tmp_path / 'nothing'}\nfamily: llama\n"
    )
    argv = [
        "-m",
        "task=ppl_quick",
        f"records={tmp_path / 'runs.jsonl'}",
        "wandb.mode=disabled",
        f"hydra.searchpath=[file://{extra.parent}]",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
        *overrides,
    ]
    return run_main(argv, monkeypatch, fakes.session)
