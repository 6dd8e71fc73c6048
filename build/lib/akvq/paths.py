"""Where akvq's YAML configs live: the checkout's `configs/` (source tree, editable install), else the copy an
installed wheel carries as `akvq/_configs` (quant configs and layer patterns only; see pyproject.toml)."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
REPO = PACKAGE.parent


def _config_dir() -> Path:
    src = REPO / "configs"
    return src if (src / "quant").is_dir() else PACKAGE / "_configs"


CONFIG_DIR = _config_dir()
