"""akvq/paths.py: the one write-then-rename helper, for tables, records and figures: a killed writer leaves the old
file or the new one, never half of one."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from akvq.paths import atomic_open, save_figure, write_atomic  # noqa: E402


class Killed(Exception):
    pass


def test_write_atomic_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    f = tmp_path / "table.md"
    write_atomic(f, "old ü\n")
    write_atomic(f, "new ü\n")
    assert f.read_text(encoding="utf-8") == "new ü\n"
    with (
        pytest.raises(Killed),
        atomic_open(f, "w", encoding="utf-8") as fh,
    ):  # what write_atomic writes through
        fh.write("half")
        raise Killed  # a kill in the middle of the write
    assert f.read_text(encoding="utf-8") == "new ü\n"  # the previous file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["table.md"]  # no temp file left


def test_save_figure_writes_the_format_of_the_suffix_and_keeps_the_old_file_on_failure(
    tmp_path: Path,
) -> None:
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    png, pdf = tmp_path / "f.png", tmp_path / "f.pdf"
    save_figure(fig, png, dpi=50)
    save_figure(fig, pdf, metadata={"CreationDate": None})
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-"
    before = png.read_bytes()
    with pytest.raises(ValueError):
        save_figure(fig, tmp_path / "f.nope")  # matplotlib refuses the format: nothing written
    assert png.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["f.pdf", "f.png"]
    plt.close(fig)
