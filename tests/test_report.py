"""Tests for hear_dymn.bench.report."""
from __future__ import annotations

import base64
import csv
import re

import pytest

from hear_dymn.bench.report import REPORT_PRESETS, render_leaderboard, write_reports

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _rows() -> list[dict]:
    return [
        {
            "model": "dymn10", "weights": "dymn10_as", "weights_sha256": "ab" * 32, "protocol": "linear",
            "task": "esc50", "task_version": "2.0.0", "metric": "accuracy", "mean": 0.9132, "std": 0.0114, "n": 5,
            "per_split": {"fold00": 0.9, "fold01": 0.92}, "params_m": 1.97, "gmacs": 0.11, "seconds": 12.3,
            "source": "measured",
        },
        {
            "model": "mn04", "weights": "random init", "weights_sha256": None, "protocol": "mlp", "task": "fsd50k",
            "task_version": "1.0", "metric": "map", "mean": 0.1234, "std": 0.0056, "n": 3,
            "per_split": [0.12, 0.13, 0.12], "params_m": 0.43, "gmacs": 0.04, "seconds": 100.0,
            "source": "measured",
        },
        {
            "model": "dymn10", "weights": "dymn10_as", "protocol": "finetune", "task": "esc50", "metric": "accuracy",
            "mean": 0.965, "std": None, "n": 1, "params_m": 1.97, "gmacs": None, "source": "reported",
            "citation": "Schmid et al., 2024 (DyMN), Table 5",
        },
    ]


GOLDEN = """\
| model | weights | protocol | params (M) | GMACs | ESC-50 acc ↑ | FSD50K mAP ↑ |
|---|---|---|---:|---:|---:|---:|
| dymn10 | dymn10_as | linear | 1.97 | 0.110 | 91.3 ± 1.1 | – |
| mn04 | **random init** | mlp | 0.43 | 0.040 | – | 12.3 ± 0.6 |
| dymn10 (reported)[^1] | dymn10_as | finetune | 1.97 | – | 96.5 | – |

[^1]: Schmid et al., 2024 (DyMN), Table 5
"""


def test_render_leaderboard_golden():
    assert render_leaderboard(_rows()) == GOLDEN


def test_render_leaderboard_column_order_and_missing_keys():
    rows = [
        {"model": "a", "weights": "w", "protocol": "linear", "task": "openmic", "metric": "masked_map", "mean": 0.8},
        {"model": "a", "weights": "w", "protocol": "linear", "task": "esc50", "metric": "accuracy", "mean": 0.9},
    ]
    header = render_leaderboard(rows).splitlines()[0]
    assert header.index("ESC-50") < header.index("OpenMIC mAP ↑")
    with pytest.raises(ValueError, match="lacks"):
        render_leaderboard([{"model": "a"}])


def test_write_reports_creates_everything(tmp_path):
    provenance = {
        "date": "2025-01-02T03:04:05Z",
        "git_commit": "0123abcd",
        "versions": {"torch": "2.9.1", "hear_dymn": "0.1.0"},
        "device": "cpu",
        "weights": [{"name": "dymn10_as", "sha256": "ab" * 32}, {"name": "random init", "sha256": None}],
        "datasets": {"esc50": {"path": "data/ESC-50", "clips": 2000}},
        "skipped_files": [f"clip{i}.wav" for i in range(25)],
        "seeds": [0, 1, 2],
        "wall_time_s": 123.4,
    }
    written = write_reports(_rows(), tmp_path / "out", provenance)
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.html"):
        assert (tmp_path / "out" / name).is_file() and name in written
    pngs = [p for name, p in written.items() if name.endswith(".png")]
    assert {p.name for p in pngs} >= {
        "esc50-accuracy_vs_gmacs.png", "esc50-accuracy_vs_params.png", "esc50-accuracy_bars.png",
        "fsd50k-map_vs_gmacs.png", "fsd50k-map_vs_params.png", "fsd50k-map_bars.png",
    }
    for p in pngs:
        assert p.read_bytes().startswith(PNG_MAGIC) and p.stat().st_size > 1000
    assert not list((tmp_path / "out").rglob("*.tmp"))

    md = (tmp_path / "out" / "leaderboard.md").read_text()
    head = md.split("## Leaderboard")[0]
    assert "Warning" in head and "**random init**" in head and "not pretrained" in head
    for text in ("0123abcd", "2.9.1", "data/ESC-50", "2000", "ab" * 32, "123.4", "clip0.wav", "5 more"):
        assert text in head
    assert GOLDEN.strip() in md

    page = (tmp_path / "out" / "leaderboard.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert "0123abcd" in page and "data/ESC-50" in page and "not pretrained" in page
    assert "<strong>random init</strong>" in page
    assert "Schmid et al., 2024 (DyMN), Table 5" in page
    assert not re.search(r'(src|href)="(https?:)?//', page)
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(pngs)
    assert all(base64.b64decode(img).startswith(PNG_MAGIC) for img in images)

    with open(tmp_path / "out" / "leaderboard.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 3
    assert table[1]["weights"] == "random init" and table[2]["source"] == "reported"
    assert float(table[0]["mean"]) == pytest.approx(0.9132)


def test_write_reports_without_random_init_has_no_warning(tmp_path):
    rows = [r for r in _rows() if r["weights"] != "random init"]
    write_reports(rows, tmp_path, {"seeds": [0]}, cfg=REPORT_PRESETS["default"])
    md = (tmp_path / "leaderboard.md").read_text()
    assert "Warning" not in md and "random init" not in md
    assert "Generated" in md  # no date given: a generation time is added
    # Re-writing over existing files replaces them (atomic replace) and leaves no temporary files behind.
    changed = [{**r, "mean": 0.4321} if i == 0 else r for i, r in enumerate(rows)]
    write_reports(changed, tmp_path, {"seeds": [0]}, cfg=REPORT_PRESETS["default"])
    assert "43.21" in (tmp_path / "leaderboard.md").read_text()
    assert "0.4321" in (tmp_path / "leaderboard.csv").read_text()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp")]


def test_markdown_cells_are_inert():
    from hear_dymn.bench.report import _md_escape

    assert _md_escape("w|x*y* <b> [c](d) `e` f\\g dymn10_as") == "w\\|x\\*y\\* \\<b\\> \\[c\\](d) \\`e\\` f\\\\g dymn10_as"
