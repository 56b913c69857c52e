"""Tests for hear_dymn.bench.report."""
from __future__ import annotations

import base64
import math
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


# ----------------------------------------------------------------------------------------------------------------
# Plots: the figures are checked before they become PNG bytes


def _renderer(fig):
    fig.draw_without_rendering()
    return fig.canvas.get_renderer()


def _boxes_overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _assert_disjoint(boxes) -> None:
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not _boxes_overlap(a, b), (a, b)


def _cluster_rows(n: int) -> list[dict]:
    """``n`` results of similar size and score, so that naive labels would pile up on each other."""
    protocols = ("linear", "mlp", "finetune")
    return [
        {
            "model": f"dymn{10 + i}", "weights": "random init" if i % 3 == 0 else f"dymn{10 + i}_as",
            "protocol": protocols[i % 3], "task": "esc50", "metric": "accuracy", "mean": 0.80 + 0.004 * (i % 5),
            "std": 0.01, "n": 5, "params_m": 1.9 + 0.05 * i, "gmacs": 0.10 + 0.002 * i,
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("n", [8, 20])
def test_tradeoff_point_labels_do_not_overlap(n):
    from hear_dymn.bench.report import _tradeoff_figure

    rows = _cluster_rows(n)
    fig = _tradeoff_figure(rows, "gmacs", "GMACs", "t", "acc", REPORT_PRESETS["default"])
    renderer = _renderer(fig)
    ax = fig.axes[0]
    labels = [t for t in ax.texts if t.get_text()]
    assert len(labels) == n
    boxes = [t.get_window_extent(renderer) for t in labels]
    _assert_disjoint(boxes)
    frame = ax.get_window_extent(renderer)
    for box in boxes:  # every label inside the axes, none hiding a marker
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
        for row in rows:
            cx, cy = ax.transData.transform((row["gmacs"], 100 * row["mean"]))
            assert not (box.x0 < cx < box.x1 and box.y0 < cy < box.y1)
    legend_texts = [t.get_text() for t in ax.get_legend().get_texts()]
    if n > 12:  # many points: numbered in the plot, named in the legend
        assert sorted(int(t.get_text()) for t in labels) == list(range(1, n + 1))
        assert any(text.startswith("1  dymn10 [linear") for text in legend_texts)
    else:
        assert {t.get_text().split(" [")[0] for t in labels} == {r["model"] for r in rows}


def test_tradeoff_point_labels_are_deterministic():
    from hear_dymn.bench.report import _tradeoff_figure

    def positions():
        fig = _tradeoff_figure(_cluster_rows(8), "gmacs", "GMACs", "t", "acc", REPORT_PRESETS["default"])
        return [(t.get_text(), t.xyann, t.get_ha(), t.get_va()) for t in fig.axes[0].texts]

    assert positions() == positions()


@pytest.mark.parametrize("span", [(1.9, 40.0), (0.02, 900.0), (0.4, 9.5)])
def test_log_axis_tick_labels_are_plain_and_do_not_collide(span):
    from hear_dymn.bench.report import _tradeoff_figure

    lo, hi = span
    rows = [{**r, "params_m": lo * (hi / lo) ** (i / 7)} for i, r in enumerate(_cluster_rows(8))]
    fig = _tradeoff_figure(rows, "params_m", "parameters (M)", "t", "acc", REPORT_PRESETS["default"])
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    renderer = _renderer(fig)
    ticks = [t for t in ax.xaxis.get_majorticklabels() if t.get_visible() and t.get_text()]
    assert len(ticks) >= 2
    assert all(re.fullmatch(r"[0-9.]+", t.get_text()) for t in ticks), [t.get_text() for t in ticks]
    _assert_disjoint([t.get_window_extent(renderer) for t in ticks])
    assert not [t for t in ax.xaxis.get_minorticklabels() if t.get_visible() and t.get_text()]


def test_bar_legend_explains_random_init_hatching():
    from hear_dymn.bench.report import _bar_figure

    def legend_texts(rows):
        fig = _bar_figure(rows, "t", "acc", REPORT_PRESETS["default"])
        legend = fig.axes[0].get_legend()
        return [t.get_text() for t in legend.get_texts()], legend

    texts, legend = legend_texts(_rows())
    entry = next(t for t in texts if "random init" in t)
    assert "not pretrained" in entry and "hatched" in entry
    patch = legend.legend_handles[texts.index(entry)]
    assert patch.get_hatch() == "xx"
    assert any("reported" in t for t in texts) and {"linear", "mlp", "finetune"} <= set(texts)

    pretrained = [r for r in _rows() if r["weights"] != "random init" and r.get("source") != "reported"]
    texts, _ = legend_texts(pretrained)
    assert not any("random init" in t for t in texts) and not any("reported" in t for t in texts)


def _curve_rows(models: tuple[str, ...]) -> list[dict]:
    return [
        {
            "model": model, "weights": f"{model}_as", "protocol": "finetune", "task": "esc50", "metric": "accuracy",
            "mean": 0.9, "std": 0.01, "n": 5,
            "curves": {
                f"fold{k}_seed0": [{"epoch": e, "train_loss": 1.0 / (e + k), "valid_accuracy": 0.5 + 0.1 * e}
                                   for e in range(3)]
                for k in range(1, 6)
            },
        }
        for model in models
    ]


def test_curves_give_each_fold_its_own_colour():
    from matplotlib.colors import to_hex

    from hear_dymn.bench.report import _curves_figure

    fig = _curves_figure(_curve_rows(("dymn10",)), "ESC-50", "accuracy", REPORT_PRESETS["default"])
    loss_ax = fig.axes[0]
    assert len(fig.axes) == 2 and len(loss_ax.lines) == 5
    assert len({to_hex(line.get_color()) for line in loss_ax.lines}) == 5
    legend = fig.axes[-1].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [f"fold{k}_seed0" for k in range(1, 6)]
    assert len({to_hex(h.get_color()) for h in legend.legend_handles}) == 5

    # Two models: a fold keeps its colour across models, and each model has its own line style.
    fig = _curves_figure(_curve_rows(("dymn10", "mn10")), "ESC-50", "accuracy", REPORT_PRESETS["default"])
    lines = fig.axes[0].lines
    assert len(lines) == 10
    colours = [to_hex(line.get_color()) for line in lines]
    assert len(set(colours)) == 5 and colours[:5] == colours[5:]
    assert {line.get_linestyle() for line in lines[:5]} != {line.get_linestyle() for line in lines[5:]}
    texts = [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]
    assert "fold3_seed0" in texts
    assert any(t.startswith("dymn10") for t in texts) and any(t.startswith("mn10") for t in texts)


def test_plot_bytes_are_png_of_the_figures():
    from hear_dymn.bench.report import _bar_plot, _curves_plot, _tradeoff_plot

    cfg = REPORT_PRESETS["default"]
    assert _tradeoff_plot(_cluster_rows(4), "gmacs", "GMACs", "t", "acc", cfg).startswith(PNG_MAGIC)
    assert _bar_plot(_rows(), "t", "acc", cfg).startswith(PNG_MAGIC)
    assert _curves_plot(_curve_rows(("dymn10",)), "ESC-50", "accuracy", cfg).startswith(PNG_MAGIC)
    assert _tradeoff_plot(_rows(), "no_such_key", "x", "t", "acc", cfg) is None
    assert _curves_plot(_rows(), "ESC-50", "accuracy", cfg) is None


def test_html_provenance_renders_inline_markdown_like_the_markdown_report(tmp_path):
    from hear_dymn.bench.report import md_inline_html

    provenance = {"weights": {"dymn04": "**random init** (seed 0) - official weights not available",
                              "tiny": "HEAR module `tiny_hear` version 0.1.0 <script>x</script>"}}
    write_reports(_rows()[:1], tmp_path, provenance)
    page = (tmp_path / "leaderboard.html").read_text()
    assert "<strong>random init</strong> (seed 0)" in page and "**random init**" not in page
    assert "<code>tiny_hear</code>" in page and "&lt;script&gt;x&lt;/script&gt;" in page and "<script>" not in page
    md = (tmp_path / "leaderboard.md").read_text()
    assert "**random init** (seed 0)" in md and "`tiny_hear`" in md
    assert md_inline_html("a [doc](https://x.org/?a=1&b=2) [bad](javascript:alert) **b `c`**") == (
        'a <a href="https://x.org/?a=1&amp;b=2">doc</a> [bad](javascript:alert) <strong>b <code>c</code></strong>')
    assert md_inline_html("2 * 3 * 4, a_b") == "2 * 3 * 4, a_b"


def test_hear_scores_table_shows_non_finite_values(tmp_path):
    scores = {"top1_acc": 0.8125, "mAP": 0.9, "d_prime": math.inf, "aucroc": math.nan}
    rows = [{**_rows()[0], "task": "hear:mini", "hear_scores": scores},
            {**_rows()[1], "hear_scores": {"mAP": 0.25}}]
    write_reports(rows, tmp_path, {"seeds": [0]})
    md = (tmp_path / "leaderboard.md").read_text()
    section = md.split("## HEAR scores")[1].split("## All results")[0]
    assert "| top1_acc | mAP | d_prime | aucroc |" in section
    assert "| dymn10 | dymn10_as | linear | hear:mini | 0.8125 | 0.9000 | inf | nan |" in section
    assert "| mn04 | **random init** | mlp | FSD50K | – | 0.2500 | – | – |" in section
    assert "<td class=\"num\">inf</td><td class=\"num\">nan</td>" in (tmp_path / "leaderboard.html").read_text()
    assert "NaN" in (tmp_path / "leaderboard.csv").read_text()  # the CSV keeps the value (JSON column)
    write_reports(_rows(), tmp_path, {"seeds": [0]})
    assert "HEAR scores" not in (tmp_path / "leaderboard.md").read_text()


def _hear_folder(tmp_path, **meta):
    import json

    from hear_dymn.bench.tasks import get_task
    from hear_dymn.bench.tasks.synthetic import write_miniature

    root = write_miniature("hear", tmp_path / "task", seed=0)
    path = root / "task_metadata.json"
    data = {k: v for k, v in json.loads(path.read_text()).items() if k != "mode"}
    path.write_text(json.dumps({**data, **meta}))
    return get_task("hear", root)


def test_reported_hear_rows_match_task_name_and_mode(tmp_path):
    from types import SimpleNamespace

    from hear_dymn.bench.suite import reported_hear_rows

    esc = _hear_folder(tmp_path / "a", task_name="esc50", mode="full")
    rows = reported_hear_rows({"hear:esc50": esc})
    by_model = {r["model"]: r for r in rows}
    assert len(rows) == 8 and all(r["source"] == "reported" and r["protocol"] == "mlp" for r in rows)
    assert by_model["CP-JKU PaSST base"]["mean"] == pytest.approx(0.9474999905)
    assert by_model["CREPE"]["mean"] == pytest.approx(0.3004999995)
    assert {r["task"] for r in rows} == {"hear:esc50"} and {r["metric"] for r in rows} == {"accuracy"}
    citation = rows[0]["citation"]
    assert "hearbenchmark/hearbenchmark.com" in citation and "validates on fold k+1" in citation
    table = render_leaderboard(rows)
    assert "CP-JKU PaSST base (reported)[^1]" in table and "compare these rows with the mlp rows" in table
    # two modes of one task: the mode decides; without a mode the folder is ambiguous and gets no rows
    pitch5 = _hear_folder(tmp_path / "b", task_name="nsynth_pitch", mode="5h")
    assert {r["model"]: r["mean"] for r in reported_hear_rows({"p": pitch5})}["CREPE"] == pytest.approx(0.8700000048)
    assert reported_hear_rows({"p": _hear_folder(tmp_path / "c", task_name="nsynth_pitch")}) == []
    assert reported_hear_rows({"hear:mini_scene": _hear_folder(tmp_path / "d", task_name="mini_scene")}) == []
    # ESC-50 in its official layout (no HEAR metadata) is the same dataset and folds
    official = SimpleNamespace(spec=SimpleNamespace(name="esc50", main_metric="accuracy"))
    assert len(reported_hear_rows({"esc50": official})) == 8
    subset = SimpleNamespace(spec=SimpleNamespace(name="esc50", main_metric="accuracy",
                                                  notes=("classes absent: dog",)))
    assert reported_hear_rows({"esc50": subset}) == []  # a subset of ESC-50 is not HEAR's ESC-50


def test_non_finite_scores_are_printed_as_such() -> None:
    from hear_dymn.bench.report import _score_text
    assert _score_text({"mean": float("nan"), "std": None, "n": 2}, 1) == "nan"
    assert _score_text({"mean": float("inf"), "n": 1}, 1) == "inf"
    assert _score_text({"mean": None}, 1) == "n/a"
    assert _score_text({"mean": 0.5, "std": 0.25, "n": 2}, 1) == "50.0 ± 25.0"
