"""Where akvq's YAML configs live: the checkout's `configs/` (source tree, editable install), else the copy an
installed wheel carries as `akvq/_configs` (quant configs and layer patterns only; see pyproject.toml)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

PACKAGE = Path(__file__).resolve().parent
REPO = PACKAGE.parent


def _config_dir() -> Path:
    src = REPO / "configs"
    return src if (src / "quant").is_dir() else PACKAGE / "_configs"


CONFIG_DIR = _config_dir()


# ------------------------------------------------------------------ write, then rename: the one atomic-write helper


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "w", fsync: bool = False, **kw: Any
) -> Iterator[IO[Any]]:
    """A file handle on a temp file `.<name>.*.tmp` beside `path`, renamed over `path` when the block ends
    without error (removed otherwise): a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kw) as fh:
            yield fh
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """`Path.write_text` (UTF-8) that a killed run cannot leave half written: a table or a record is old or new."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def save_figure(fig: Any, path: str | os.PathLike[str], **kw: Any) -> None:
    """`fig.savefig(path, **kw)` through `atomic_open` (the format from the suffix): a killed run leaves the old
    figure, not half of a new one."""
    path = Path(path)
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format=path.suffix.lstrip(".").lower(), **kw)


@contextlib.contextmanager
def publish_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """A temp directory beside `target` to fill; renamed to `target` when the block ends without error. Safe for
    parallel writers: the first rename wins and a later writer's copy (as good) is dropped."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        yield tmp
        with contextlib.suppress(OSError):  # another process finished first
            os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
