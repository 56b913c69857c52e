"""Leaderboard reports from aggregated benchmark results: Markdown, CSV, self-contained HTML and PNG plots.

A result row is a dict describing one (model, weights, protocol, task) aggregated over seeds or folds:

=================  =============================================================================================
key                meaning
=================  =============================================================================================
``model``          architecture name, e.g. ``"dymn10"`` (required)
``weights``        weights name, or ``"random init"`` for an untrained network
``weights_sha256`` digest of the weights file (``None`` for random init)
``protocol``       ``"linear"``, ``"mlp"`` or ``"finetune"`` (required)
``task``           task key, e.g. ``"esc50"`` (required); ``task_version`` its version
``metric``         key of ``hear_dymn.bench.metrics.METRICS`` (required)
``mean``, ``std``  score over seeds/folds as a fraction (rendered in %); ``n`` how many seeds/folds
``per_split``      per-fold or per-seed scores (list or dict, fractions)
``params_m``       parameters in millions; ``gmacs`` multiply-accumulates in G; ``seconds`` wall time
``source``         ``"measured"`` (default) or ``"reported"``; reported rows carry a ``citation``
=================  =============================================================================================

:func:`render_leaderboard` is a pure function returning the Markdown leaderboard (one line per model, weights,
protocol and source; one column per task and metric; reported rows get a footnote with their citation; random-init
weights are shown in bold). :func:`write_reports` writes ``leaderboard.md``, ``leaderboard.csv``,
``leaderboard.html`` (inline CSS, plots embedded as base64 PNG) and ``plots/*.png`` (score vs GMACs and vs
parameters, a bar chart with error bars, and fine-tuning curves, per task), each file written atomically (temporary
file in the same directory, then ``os.replace``). Plots use matplotlib's Agg canvas directly, without touching pyplot
state; point labels are placed so that they do not overlap, and log axes carry plain, non-colliding tick labels.
"""
from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import io
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import atomic_write_bytes
from .metrics import METRICS, score_text

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

RANDOM_INIT = "random init"

TASK_DISPLAY: dict[str, str] = {
    "esc50": "ESC-50",
    "esc-50": "ESC-50",
    "esc10": "ESC-10",
    "fsd50k": "FSD50K",
    "openmic": "OpenMIC",
    "openmic2018": "OpenMIC",
}
TASK_ORDER: tuple[str, ...] = ("esc50", "esc-50", "esc10", "fsd50k", "openmic", "openmic2018")

CSV_COLUMNS: tuple[str, ...] = (
    "model", "weights", "weights_sha256", "protocol", "task", "task_version", "metric", "mean", "std", "n",
    "per_split", "params_m", "gmacs", "seconds", "source", "citation",
)
_CSV_SKIP = ("curves",)  # per-epoch training histories: in the per-run JSON and the curve plots, not the table
_REQUIRED = ("model", "protocol", "task", "metric", "mean")
_MISSING = "–"


@dataclass(frozen=True)
class ReportConfig:
    """Report rendering settings.

    Attributes:
        decimals: decimals of scores in % in the tables.
        dpi: PNG resolution.
        figsize: plot size in inches.
        max_list_items: longer provenance lists (e.g. skipped files) are cut to this many entries.
        title: heading of the Markdown and HTML reports.
    """

    decimals: int = 1
    dpi: int = 110
    figsize: tuple[float, float] = (6.4, 4.4)
    max_list_items: int = 20
    title: str = "hear_dymn benchmark"


REPORT_PRESETS: dict[str, ReportConfig] = {
    "default": ReportConfig(),
    "print": ReportConfig(dpi=200, decimals=2),
}


# ----------------------------------------------------------------------------------------------------------------
# Row helpers


def _check_rows(rows: Sequence[Mapping[str, Any]]) -> None:
    for i, row in enumerate(rows):
        missing = [k for k in _REQUIRED if k not in row]
        if missing:
            raise ValueError(f"result row {i} lacks {missing}: {dict(row)}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def _is_reported(row: Mapping[str, Any]) -> bool:
    return str(row.get("source", "measured")).lower() == "reported"


def is_random_init(weights: Any) -> bool:
    """Whether a ``weights`` value means an untrained network."""
    return weights is None or str(weights).strip().lower() in (RANDOM_INIT, "random", "none", "")


def _task_label(task: str) -> str:
    return TASK_DISPLAY.get(task.lower(), task)


# HEAR event scores (hear_dymn.bench.events, through sed_eval): short name, higher is better
_EVENT_METRIC_DISPLAY: dict[str, tuple[str, bool]] = {
    "event_onset_200ms_fms": ("onset F1 200ms", True),
    "event_onset_50ms_fms": ("onset F1 50ms", True),
    "event_onset_offset_50ms_20perc_fms": ("onset+offset F1 50ms", True),
    "segment_1s_er": ("segment ER 1s", False),
}


def _metric_name(metric: str) -> str:
    if metric in _EVENT_METRIC_DISPLAY:
        return _EVENT_METRIC_DISPLAY[metric][0]
    m = METRICS.get(metric)
    return m.display if m is not None and m.display else metric


def _metric_label(metric: str) -> str:
    m = METRICS.get(metric)
    arrow = "↑" if m is None or m.higher_is_better else "↓"
    if metric in _EVENT_METRIC_DISPLAY:
        arrow = "↑" if _EVENT_METRIC_DISPLAY[metric][1] else "↓"
    return f"{_metric_name(metric)} {arrow}"


def _absent_text(value: Any) -> str:
    """A score that is not a finite number: ``nan`` / ``inf`` / ``-inf`` as such (an event task where no event was
    predicted has no onset F-measure), ``n/a`` when there is no value at all."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(float(value)):
        return str(float(value))
    return "n/a"


def _pct(value: Any, decimals: int) -> str:
    return f"{100.0 * float(value):.{decimals}f}" if _is_number(value) else _absent_text(value)


def _score_text(row: Mapping[str, Any], decimals: int) -> str:
    mean = row.get("mean")
    if not _is_number(mean):
        return _absent_text(mean)
    std = row.get("std")
    n = row.get("n")
    if _is_number(std) and (n is None or not _is_number(n) or int(n) > 1):
        return f"{_pct(mean, decimals)} ± {_pct(std, decimals)}"
    return _pct(mean, decimals)


def _num_text(value: Any, fmt: str) -> str:
    return format(float(value), fmt) if _is_number(value) else _MISSING


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def _row_key(row: Mapping[str, Any]) -> tuple[str, str, str, bool, str]:
    weights = RANDOM_INIT if is_random_init(row.get("weights")) else str(row.get("weights"))
    return (str(row["model"]), weights, str(row["protocol"]), _is_reported(row), str(row.get("citation") or ""))


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    for row in rows:
        col = (str(row["task"]), str(row["metric"]))
        if col not in seen:
            seen.append(col)

    def order(col: tuple[str, str]) -> tuple[int, int]:
        task = col[0].lower()
        known = TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER)
        return known, seen.index(col)

    return sorted(seen, key=order)


# ----------------------------------------------------------------------------------------------------------------
# Leaderboard table (shared by Markdown and HTML)


@dataclass(frozen=True)
class _Cell:
    text: str
    bold: bool = False
    footnote: int | None = None
    numeric: bool = False


@dataclass(frozen=True)
class _Table:
    header: list[str]
    numeric: list[bool]
    rows: list[list[_Cell]]
    footnotes: list[str] = field(default_factory=list)


def _leaderboard_table(rows: Sequence[Mapping[str, Any]], decimals: int) -> _Table:
    _check_rows(rows)
    columns = _columns(rows)
    groups: dict[tuple[str, str, str, bool, str], dict[tuple[str, str], Mapping[str, Any]]] = {}
    for row in rows:
        cells = groups.setdefault(_row_key(row), {})
        col = (str(row["task"]), str(row["metric"]))
        if col in cells:
            logger.warning("duplicate result for %s on %s/%s: keeping the last one", _row_key(row)[:3], *col)
        cells[col] = row

    footnotes: list[str] = []
    body: list[list[_Cell]] = []
    for (model, weights, protocol, reported, citation), cells in groups.items():
        first = next(iter(cells.values()))
        params = next((r.get("params_m") for r in cells.values() if _is_number(r.get("params_m"))), None)
        gmacs = next((r.get("gmacs") for r in cells.values() if _is_number(r.get("gmacs"))), None)
        footnote = None
        model_text = model
        if reported:
            note = citation or "reported value; source not given"
            if note not in footnotes:
                footnotes.append(note)
            footnote = footnotes.index(note) + 1
            model_text = f"{model} (reported)"
        line = [
            _Cell(model_text, footnote=footnote),
            _Cell(weights, bold=is_random_init(first.get("weights"))),
            _Cell(protocol),
            _Cell(_num_text(params, ".2f"), numeric=True),
            _Cell(_num_text(gmacs, ".3f"), numeric=True),
        ]
        for col in columns:
            line.append(_Cell(_score_text(cells[col], decimals) if col in cells else _MISSING, numeric=True))
        body.append(line)

    header = ["model", "weights", "protocol", "params (M)", "GMACs"]
    header += [f"{_task_label(task)} {_metric_label(metric)}" for task, metric in columns]
    numeric = [False, False, False, True, True] + [True] * len(columns)
    return _Table(header, numeric, body, footnotes)


def _md_escape(text: str) -> str:
    """Markdown-inert text: table pipes and the characters that would start emphasis, code, links or HTML
    (underscores stay: inside names such as ``dymn10_as`` they are literal in GitHub Markdown)."""
    return re.sub(r"([\\|*`<>\[\]])", r"\\\1", text)


def _md_cell(cell: _Cell) -> str:
    text = _md_escape(cell.text)
    if cell.bold:
        text = f"**{text}**"
    if cell.footnote is not None:
        text += f"[^{cell.footnote}]"
    return text


def _md_table(header: Sequence[str], numeric: Sequence[bool], rows: Sequence[Sequence[_Cell]]) -> list[str]:
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |"]
    lines.append("|" + "|".join("---:" if num else "---" for num in numeric) + "|")
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines


def render_leaderboard(rows: Sequence[Mapping[str, Any]], decimals: int = 1) -> str:
    """The Markdown leaderboard of ``rows``.

    One line per (model, weights, protocol, source, citation), in order of first appearance; one column per
    (task, metric), known tasks first (ESC-50, FSD50K, OpenMIC). Cells are ``mean ± std`` in % (``std`` is left
    out when ``n`` is 1 or ``std`` is missing), ``–`` where there is no result. Reported rows are labelled
    ``(reported)`` with a footnote giving the citation; random-init weights are in bold.

    Args:
        rows: result rows (see the module docstring).
        decimals: decimals of the percentages.

    Returns:
        The table followed by its footnotes, ending in a newline.
    """
    table = _leaderboard_table(rows, decimals)
    lines = _md_table(table.header, table.numeric, table.rows)
    if table.footnotes:
        lines.append("")
        lines += [f"[^{i}]: {note}" for i, note in enumerate(table.footnotes, start=1)]
    return "\n".join(lines) + "\n"


def _details_table(rows: Sequence[Mapping[str, Any]], decimals: int) -> tuple[list[str], list[bool], list[list[_Cell]]]:
    header = [
        "model", "weights", "weights sha256", "protocol", "task", "version", "metric", "mean", "std", "n",
        "per split", "seconds", "source",
    ]
    numeric = [False] * 7 + [True, True, True, False, True, False]
    body = []
    for row in rows:
        sha = row.get("weights_sha256")
        body.append(
            [
                _Cell(str(row["model"])),
                _Cell(_row_key(row)[1], bold=is_random_init(row.get("weights"))),
                _Cell(str(sha)[:12] if sha else _MISSING),
                _Cell(str(row["protocol"])),
                _Cell(_task_label(str(row["task"]))),
                _Cell(str(row.get("task_version") or _MISSING)),
                _Cell(str(row["metric"])),
                _Cell(_pct(row.get("mean"), decimals + 1), numeric=True),
                _Cell(_pct(row.get("std"), decimals + 1) if _is_number(row.get("std")) else _MISSING, numeric=True),
                _Cell(str(row.get("n")) if row.get("n") is not None else _MISSING, numeric=True),
                _Cell(_per_split_text(row.get("per_split"), decimals)),
                _Cell(_num_text(row.get("seconds"), ".1f"), numeric=True),
                _Cell(str(row.get("source", "measured"))),
            ]
        )
    return header, numeric, body


_HEAR_SCORES_NOTE = ("HEAR's scene scores as hear-eval-kit's score.py computes them (fractions; d_prime unbounded), "
                     "mean over seeds per fold or split, then over folds; nan and inf are what the score gives "
                     "(e.g. inf d_prime for a perfectly separated class, nan AUC for a class absent from a test "
                     "split).")


def _hear_scores_table(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[bool], list[list[_Cell]]] | None:
    """Rows that carry HEAR scores (``hear_scores``), one column per score; ``None`` when no row has any."""
    scored = [r for r in rows if isinstance(r.get("hear_scores"), Mapping) and r["hear_scores"]]
    if not scored:
        return None
    names = list(dict.fromkeys(n for r in scored for n in r["hear_scores"]))
    header = ["model", "weights", "protocol", "task", *names]
    numeric = [False] * 4 + [True] * len(names)
    body = [[_Cell(str(r["model"])), _Cell(_row_key(r)[1], bold=is_random_init(r.get("weights"))),
             _Cell(str(r["protocol"])), _Cell(_task_label(str(r["task"]))),
             *(_Cell(score_text(r["hear_scores"].get(n)), numeric=True) for n in names)] for r in scored]
    return header, numeric, body


def _per_split_text(per_split: Any, decimals: int) -> str:
    if isinstance(per_split, Mapping):
        return ", ".join(f"{k}: {_pct(v, decimals)}" for k, v in per_split.items()) or _MISSING
    if isinstance(per_split, (list, tuple)):
        return ", ".join(_pct(v, decimals) for v in per_split) or _MISSING
    return _MISSING


# ----------------------------------------------------------------------------------------------------------------
# Provenance


@dataclass(frozen=True)
class _Node:
    label: str
    text: str = ""
    children: tuple[_Node, ...] = ()


def _label(key: Any) -> str:
    text = str(key).replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def _scalar(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _provenance_nodes(value: Any, max_items: int) -> tuple[str, tuple[_Node, ...]]:
    """(inline text, child nodes) of one provenance value; nested keys are shown verbatim."""
    if isinstance(value, Mapping):
        return "", tuple(_node(k, v, max_items, top=False) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
        if not items:
            return "none", ()
        if all(not isinstance(v, (Mapping, list, tuple, set, frozenset)) for v in items):
            shown = ", ".join(_scalar(v) for v in items[:max_items])
            if len(items) > max_items:
                shown += f", … ({len(items) - max_items} more; {len(items)} in all)"
            return shown, ()
        children = []
        for i, item in enumerate(items[:max_items]):
            if isinstance(item, Mapping) and "name" in item:
                rest = {k: v for k, v in item.items() if k != "name"}
                if all(not isinstance(v, (Mapping, list, tuple, set, frozenset)) for v in rest.values()):
                    text = "; ".join(f"{k}: {_scalar(v)}" for k, v in rest.items())
                    children.append(_Node(str(item["name"]), text))
                    continue
                children.append(_node(item["name"], rest, max_items, top=False))
            else:
                children.append(_node(i, item, max_items, top=False))
        text = f"{len(items) - max_items} more not shown" if len(items) > max_items else ""
        return text, tuple(children)
    return _scalar(value), ()


def _node(key: Any, value: Any, max_items: int, top: bool = True) -> _Node:
    text, children = _provenance_nodes(value, max_items)
    return _Node(_label(key) if top else str(key), text, children)


def _provenance_tree(provenance: Mapping[str, Any], max_items: int) -> list[_Node]:
    nodes = [_node(k, v, max_items) for k, v in provenance.items()]
    if "date" not in provenance:
        now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
        nodes.insert(0, _Node("Generated", now))
    return nodes


def _md_nodes(nodes: Sequence[_Node], depth: int = 0) -> list[str]:
    lines = []
    for node in nodes:
        text = f" {node.text}" if node.text else ""
        lines.append(f"{'  ' * depth}- **{node.label}:**{text}")
        lines += _md_nodes(node.children, depth + 1)
    return lines


_MD_INLINE = re.compile(r"\*\*(?P<bold>.+?)\*\*|`(?P<code>[^`]+)`|\[(?P<link>[^\]]+)\]\((?P<url>[^)\s]+)\)")


def md_inline_html(text: str) -> str:
    """HTML of one line of inline Markdown as the provenance and footnotes use it: ``**bold**``, ```code``` and
    ``[text](url)`` (http(s) or relative URLs only); everything else is escaped, so no markup gets through."""
    out, pos = [], 0
    for m in _MD_INLINE.finditer(text):
        out.append(html.escape(text[pos:m.start()]))
        if m.group("bold") is not None:
            out.append(f"<strong>{md_inline_html(m.group('bold'))}</strong>")
        elif m.group("code") is not None:
            out.append(f"<code>{html.escape(m.group('code'))}</code>")
        elif re.match(r"(https?://|[./A-Za-z0-9_#-])", m.group("url")) and not re.match(r"[A-Za-z]+:(?!//)",
                                                                                         m.group("url")):
            out.append(f'<a href="{html.escape(m.group("url"))}">{html.escape(m.group("link"))}</a>')
        else:  # javascript: and other schemes stay text
            out.append(html.escape(m.group(0)))
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


def _html_nodes(nodes: Sequence[_Node]) -> str:
    items = []
    for node in nodes:
        text = f" {md_inline_html(node.text)}" if node.text else ""
        inner = _html_nodes(node.children) if node.children else ""
        items.append(f"<li><strong>{html.escape(node.label)}:</strong>{text}{inner}</li>")
    return "<ul>" + "".join(items) + "</ul>"


def _random_init_warning(rows: Sequence[Mapping[str, Any]]) -> str | None:
    models = sorted({str(r["model"]) for r in rows if is_random_init(r.get("weights"))})
    if not models:
        return None
    return (
        f"rows with random init weights ({', '.join(models)}) use randomly initialised networks; "
        "these are not pretrained results."
    )


# ----------------------------------------------------------------------------------------------------------------
# Plots


_PROTOCOL_COLORS = {"linear": "tab:blue", "mlp": "tab:orange", "finetune": "tab:green"}
_EXTRA_COLORS = ("tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan")
_RANDOM_INIT_HATCH = "xx"
_REPORTED_HATCH = "//"
_RANDOM_INIT_LEGEND = "hatched: random init,\nnot pretrained"
_REPORTED_LEGEND = "faded, hatched: reported,\nnot measured"
_GROUP_LINESTYLES = ("-", "--", ":", "-.")
_GROUP_MARKERS = ("o", "s", "^", "D", "v", "P")

# Point labels of the score-vs-cost scatters. Offsets are in points, boxes in display pixels.
_LABEL_FONTSIZE = 7
_LABEL_RADII_PT = (5.0, 9.0, 14.0, 20.0, 28.0, 38.0, 50.0, 64.0, 80.0, 100.0)
_LABEL_ANGLES_DEG = (30, 0, -30, 90, -90, 150, 180, -150, 60, -60, 120, -120)  # in order of preference
_LEADER_MIN_PT = 10.0  # a label placed farther than this from its point is joined to it by a leader line
_LABEL_PAD_PX = 3.0  # free margin kept around every label
_AMBIGUITY_COST = 40.0  # cost (in points of distance) of a label without leader nearer another point than its own
_MAX_INLINE_LABELS = 12  # beyond this many points, points are numbered and named in the legend
_MIN_AXES_FRACTION = 0.55  # the figure is widened when an outside legend leaves the axes less than this

_Box = tuple[float, float, float, float]  # (x0, y0, x1, y1)


def _protocol_color(protocol: str, protocols: Sequence[str]) -> str:
    if protocol in _PROTOCOL_COLORS:
        return _PROTOCOL_COLORS[protocol]
    others = [p for p in protocols if p not in _PROTOCOL_COLORS]
    return _EXTRA_COLORS[others.index(protocol) % len(_EXTRA_COLORS)]


def _legend_protocols(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Protocols of ``rows`` for a legend: linear, mlp, finetune first, then the others in order of appearance."""
    known = list(_PROTOCOL_COLORS)
    present = dict.fromkeys(str(r["protocol"]) for r in rows)
    return sorted(present, key=lambda p: known.index(p) if p in known else len(known))


def _distinct_colors(n: int) -> list[tuple[float, ...]]:
    """``n`` pairwise distinct colours: tab10, then tab20, then evenly spaced samples of a rainbow map."""
    from matplotlib import colormaps

    if n <= 10:
        return list(colormaps["tab10"].colors[:n])
    if n <= 20:
        return list(colormaps["tab20"].colors[:n])
    cmap = colormaps["turbo"]
    return [tuple(cmap(0.05 + 0.9 * i / (n - 1))) for i in range(n)]


def _new_figure(cfg: ReportConfig) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=cfg.figsize, dpi=cfg.dpi)
    FigureCanvasAgg(fig)
    return fig


def _png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return buf.getvalue()


def _png_or_none(fig: Figure | None) -> bytes | None:
    return None if fig is None else _png_bytes(fig)


def _point_label(row: Mapping[str, Any], rows: Sequence[Mapping[str, Any]] = ()) -> str:
    """``model [protocol]``, with the weights where the model has results with other weights too."""
    weights = _row_key(row)[1]
    others = {_row_key(r)[1] for r in rows if r.get("model") == row.get("model")}
    shown = f", {weights}" if is_random_init(row.get("weights")) or len(others) > 1 else ""
    reported = " (reported)" if _is_reported(row) else ""
    return f"{row['model']} [{row['protocol']}{shown}]{reported}"


# ----------------------------------------------------------------------------------------------------------------
# Label placement and tick choice


def _overlap(a: _Box, b: _Box) -> float:
    """Area shared by two boxes (0 when they are disjoint or only touch)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _padded(box: _Box, pad: float) -> _Box:
    return (box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad)


def _area_outside(box: _Box, frame: _Box) -> float:
    return (box[2] - box[0]) * (box[3] - box[1]) - _overlap(box, frame)


def _nearest_on_box(x: float, y: float, box: _Box) -> tuple[float, float]:
    return min(max(x, box[0]), box[2]), min(max(y, box[1]), box[3])


def _box_distance(x: float, y: float, box: _Box) -> float:
    nx, ny = _nearest_on_box(x, y, box)
    return math.hypot(x - nx, y - ny)


def _segment_crosses(p: tuple[float, float], q: tuple[float, float], box: _Box) -> bool:
    """Whether the segment from ``p`` to ``q`` passes through ``box`` (checked at a few points along it)."""
    for k in range(1, 10):
        t = k / 10
        x, y = p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])
        if box[0] < x < box[2] and box[1] < y < box[3]:
            return True
    return False


@dataclass(frozen=True)
class _LabelSpot:
    """One candidate position of a point label."""

    offset_pt: tuple[float, float]  # text anchor relative to the point
    ha: str
    va: str
    box: _Box  # the text box in display pixels
    preference: float  # lower is better: distance from the point, then direction


def _label_spots(center: tuple[float, float], size: tuple[float, float], px_per_pt: float) -> list[_LabelSpot]:
    """Candidate spots around a point, nearest and most preferred first."""
    width, height = size
    spots = []
    for radius in _LABEL_RADII_PT:
        for rank, angle in enumerate(_LABEL_ANGLES_DEG):
            c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
            ha = "left" if c > 0.3 else "right" if c < -0.3 else "center"
            va = "bottom" if s > 0.3 else "top" if s < -0.3 else "center"
            ax_px = center[0] + radius * c * px_per_pt
            ay_px = center[1] + radius * s * px_per_pt
            x0 = {"left": ax_px, "right": ax_px - width, "center": ax_px - width / 2}[ha]
            y0 = {"bottom": ay_px, "top": ay_px - height, "center": ay_px - height / 2}[va]
            spots.append(_LabelSpot((radius * c, radius * s), ha, va, (x0, y0, x0 + width, y0 + height),
                                    radius + 0.5 * rank))
    return sorted(spots, key=lambda spot: spot.preference)


def _place_point_labels(
    ax: Axes, points: Sequence[tuple[float, float]], texts: Sequence[str], marker_radii_pt: Sequence[float],
    error_bars: Sequence[tuple[float, float] | None],
) -> tuple[list[Artist], bool]:
    """Label every point at the nearest spot that keeps clear of the other labels and of every marker.

    A deterministic greedy search: points are labelled from left to right; each label takes the first candidate
    spot (ordered by distance, then direction) that lies inside the axes and overlaps no placed label, marker or
    error bar, or else the spot with the least overlap; a label without a leader line also avoids spots nearer
    another point than its own. A label placed away from its point gets a thin leader line. The axes limits and
    position must be final (after the layout) when this is called.

    Args:
        ax: the axes, with its limits and position fixed.
        points: label anchors in data coordinates.
        texts: one label per point.
        marker_radii_pt: marker radius of each point, in points.
        error_bars: ``(low, high)`` of each point's error bar in data coordinates, or ``None``.

    Returns:
        The added artists (labels and leader lines) and whether every label is clear of the other labels and the
        markers and lies inside the axes.
    """
    from matplotlib.lines import Line2D
    from matplotlib.transforms import Affine2D, ScaledTranslation

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    px_per_pt = fig.dpi / 72.0
    frame = _padded(tuple(ax.get_window_extent(renderer).extents), -_LABEL_PAD_PX)
    centers = [tuple(float(v) for v in ax.transData.transform(p)) for p in points]
    markers = [(cx - r * px_per_pt, cy - r * px_per_pt, cx + r * px_per_pt, cy + r * px_per_pt)
               for (cx, cy), r in zip(centers, marker_radii_pt)]
    bars = []
    for (x, _), err in zip(points, error_bars):
        if err is not None:
            (bx, lo), (_, hi) = ax.transData.transform([(x, err[0]), (x, err[1])])
            bars.append((bx - 3 * px_per_pt, lo, bx + 3 * px_per_pt, hi))

    sizes = []
    for text in texts:
        probe = ax.text(0, 0, text, fontsize=_LABEL_FONTSIZE)
        extent = probe.get_window_extent(renderer)
        sizes.append((extent.width, extent.height))
        probe.remove()

    placed: list[_Box] = []
    artists: list[Artist] = []
    clear = True
    for i in sorted(range(len(points)), key=lambda k: (centers[k][0], -centers[k][1], k)):
        best: tuple[float, _LabelSpot] | None = None
        for spot in _label_spots(centers[i], sizes[i], px_per_pt):
            padded = _padded(spot.box, _LABEL_PAD_PX)
            leader = math.hypot(*spot.offset_pt) > _LEADER_MIN_PT
            end = _nearest_on_box(*centers[i], spot.box)
            own = _box_distance(*centers[i], spot.box)
            ambiguous = 0 if leader else sum(
                _box_distance(*c, spot.box) < own for j, c in enumerate(centers) if j != i)
            cost = (
                _AMBIGUITY_COST * ambiguous
                + 1e6 * _area_outside(spot.box, frame)
                + 1e4 * sum(_overlap(padded, b) for b in placed)
                + 1e4 * sum(_overlap(padded, m) for m in markers)
                + 1e2 * sum(_overlap(spot.box, b) for b in bars)
                + (1e3 * sum(_segment_crosses(centers[i], end, b)
                             for b in [*placed, *(m for j, m in enumerate(markers) if j != i)]) if leader else 0.0)
            )
            if best is None or cost + spot.preference < best[0]:
                best = (cost + spot.preference, spot)
            if cost == 0:
                break  # spots come in order of preference: the first free one wins
        assert best is not None
        spot = best[1]
        clear = clear and _area_outside(spot.box, frame) == 0 and not any(
            _overlap(spot.box, b) for b in [*placed, *markers])
        placed.append(spot.box)

        label = ax.annotate(texts[i], points[i], xytext=spot.offset_pt, textcoords="offset points", ha=spot.ha,
                            va=spot.va, fontsize=_LABEL_FONTSIZE, annotation_clip=False)
        label.set_in_layout(False)
        artists.append(label)
        if math.hypot(*spot.offset_pt) > _LEADER_MIN_PT:
            ex, ey = _nearest_on_box(*centers[i], spot.box)
            dx, dy = (ex - centers[i][0]) / px_per_pt, (ey - centers[i][1]) / px_per_pt
            start = marker_radii_pt[i] / max(math.hypot(dx, dy), 1e-9)
            to_display = Affine2D().scale(1 / 72) + fig.dpi_scale_trans + ScaledTranslation(*points[i], ax.transData)
            line = Line2D([dx * start, dx], [dy * start, dy], transform=to_display, color="0.45", linewidth=0.6,
                          zorder=1.5)
            line.set_in_layout(False)
            ax.add_artist(line)
            artists.append(line)
    return artists, clear


def _log_ticks(lo: float, hi: float, level: int) -> list[float]:
    """Round tick values in ``[lo, hi]`` for a log axis; higher levels are sparser.

    Level 0 takes 1, 2 and 5 times each power of ten, level 1 takes 1 and 3, level 2 the powers of ten, and
    level 2 + k every (k + 1)-th power of ten.
    """
    subs = {0: (1, 2, 5), 1: (1, 3)}.get(level, (1,))
    every = max(1, level - 1)
    ticks = []
    for exponent in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
        if exponent % every:
            continue
        for sub in subs:
            value = float(f"{sub * 10.0 ** exponent:.12g}")
            if lo * (1 - 1e-9) <= value <= hi * (1 + 1e-9):
                ticks.append(value)
    return ticks


def _tick_text(value: float, _pos: Any = None) -> str:
    return f"{value:g}"


def _ticklabels_collide(ax: Axes, pad_px: float = 2.0) -> bool:
    fig = ax.figure
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    boxes = sorted(tuple(t.get_window_extent(renderer).extents) for t in ax.xaxis.get_majorticklabels()
                   if t.get_visible() and t.get_text())
    return any(a[2] + pad_px > b[0] for a, b in zip(boxes, boxes[1:]))


def _fit_log_xticks(ax: Axes) -> None:
    """Label a log x axis with plain round numbers (``0.5``, ``1``, ``2``, ``10``), as many as fit without two
    labels touching; minor ticks stay unlabelled."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    lo, hi = sorted(ax.get_xlim())
    ax.xaxis.set_major_formatter(FuncFormatter(_tick_text))
    ax.xaxis.set_minor_locator(LogLocator(subs=tuple(range(2, 10))))
    ax.xaxis.set_minor_formatter(NullFormatter())
    level = 0
    while True:
        ticks = _log_ticks(lo, hi, level)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        if not _ticklabels_collide(ax) or len(_log_ticks(lo, hi, level + 1)) < 2:
            return
        level += 1


def _fit_layout(fig: Figure, axes: Sequence[Axes], legend: Any, cfg: ReportConfig, log_x: bool = False) -> None:
    """Tight layout around an outside legend: the figure grows when the legend is taller than it, or when the
    legend leaves the axes (all together) too narrow; with ``log_x`` the first axes gets x ticks that fit."""
    renderer = fig.canvas.get_renderer()
    width, height = cfg.figsize
    legend_height = legend.get_window_extent(renderer).height / fig.dpi
    fig.set_size_inches(width, max(height, legend_height + 0.4))
    fig.tight_layout()
    span = max(ax.get_position().x1 for ax in axes) - min(ax.get_position().x0 for ax in axes)
    if span * width < _MIN_AXES_FRACTION * width:
        fig.set_size_inches(width + (_MIN_AXES_FRACTION - span) * width, fig.get_size_inches()[1])
        fig.tight_layout()
    if log_x:
        _fit_log_xticks(axes[0])
        fig.tight_layout()


# ----------------------------------------------------------------------------------------------------------------
# Figures


def _tradeoff_figure(
    rows: Sequence[Mapping[str, Any]], x_key: str, x_label: str, title: str, y_label: str, cfg: ReportConfig
) -> Figure | None:
    """Score against cost (``x_key``), one marker per row with its error bar, each labelled without overlaps.

    Up to ``_MAX_INLINE_LABELS`` points carry their names; with more, or when the names cannot be placed clear of
    each other, points carry numbers and the legend names them.
    """
    points = [r for r in rows if _is_number(r.get(x_key)) and float(r[x_key]) > 0 and _is_number(r.get("mean"))]
    if not points:
        return None
    from matplotlib.lines import Line2D

    protocols = list(dict.fromkeys(str(r["protocol"]) for r in rows))
    fig = _new_figure(cfg)
    ax = fig.add_subplot()
    xy: list[tuple[float, float]] = []
    radii: list[float] = []
    error_bars: list[tuple[float, float] | None] = []
    keys: list[Line2D] = []
    for row in points:
        x, y = float(row[x_key]), 100.0 * float(row["mean"])
        yerr = 100.0 * float(row["std"]) if _is_number(row.get("std")) else None
        reported = _is_reported(row)
        color = _protocol_color(str(row["protocol"]), protocols)
        style = {
            "marker": "*" if reported else "o", "markersize": 12 if reported else 7, "color": color,
            "markerfacecolor": "white" if is_random_init(row.get("weights")) else color,
        }
        ax.errorbar(x, y, yerr=yerr, fmt=style["marker"], markersize=style["markersize"], color=color,
                    markerfacecolor=style["markerfacecolor"], capsize=3, linestyle="none")
        xy.append((x, y))
        radii.append(style["markersize"] / 2 + 0.5)
        error_bars.append((y - yerr, y + yerr) if yerr else None)
        keys.append(Line2D([], [], linestyle="none", **style))
    xs = [x for x, _ in xy]
    log_x = max(xs) / min(xs) > 20
    if log_x:
        ax.set_xscale("log")
    ax.margins(x=0.08, y=0.1)
    ax.set_xlim(ax.get_xlim())
    ax.set_ylim(ax.get_ylim())

    handles = [Line2D([], [], color=_protocol_color(p, protocols), marker="o", linestyle="none", label=p)
               for p in _legend_protocols(points)]
    if not all(_is_reported(r) for r in points):
        handles.append(Line2D([], [], color="gray", marker="o", linestyle="none", label="measured"))
    if any(_is_reported(r) for r in points):
        handles.append(Line2D([], [], color="gray", marker="*", markersize=12, linestyle="none", label="reported"))
    if any(is_random_init(r.get("weights")) for r in points):
        handles.append(Line2D([], [], color="gray", marker="o", markerfacecolor="white", linestyle="none",
                              label="random init"))
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)

    names = [_point_label(row, rows) for row in points]
    numbered = len(points) > _MAX_INLINE_LABELS
    while True:
        shown = handles
        if numbered:
            for i, (key, name) in enumerate(zip(keys, names), start=1):
                key.set_label(f"{i}  {name}")
            shown = [*handles, *keys]
        legend = ax.legend(handles=shown, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                           borderaxespad=0.0)
        _fit_layout(fig, [ax], legend, cfg, log_x=log_x)
        texts = [str(i) for i in range(1, len(points) + 1)] if numbered else names
        artists, clear = _place_point_labels(ax, xy, texts, radii, error_bars)
        if clear or numbered:
            return fig
        for artist in artists:
            artist.remove()
        numbered = True


def _tradeoff_plot(
    rows: Sequence[Mapping[str, Any]], x_key: str, x_label: str, title: str, y_label: str, cfg: ReportConfig
) -> bytes | None:
    return _png_or_none(_tradeoff_figure(rows, x_key, x_label, title, y_label, cfg))


def _bar_figure(rows: Sequence[Mapping[str, Any]], title: str, y_label: str, cfg: ReportConfig) -> Figure | None:
    """Mean ± std per row; colour gives the protocol, hatching marks random-init and reported rows (see legend)."""
    bars = [r for r in rows if _is_number(r.get("mean"))]
    if not bars:
        return None
    from matplotlib.patches import Patch

    protocols = list(dict.fromkeys(str(r["protocol"]) for r in rows))
    fig = _new_figure(cfg)
    ax = fig.add_subplot()
    for i, row in enumerate(bars):
        reported = _is_reported(row)
        ax.bar(
            i, 100.0 * float(row["mean"]),
            yerr=100.0 * float(row["std"]) if _is_number(row.get("std")) else None,
            color=_protocol_color(str(row["protocol"]), protocols), alpha=0.55 if reported else 0.9,
            hatch=_REPORTED_HATCH if reported else (_RANDOM_INIT_HATCH if is_random_init(row.get("weights")) else None),
            edgecolor="black", linewidth=0.5, capsize=3,
        )
    ax.set_xticks(range(len(bars)))
    ax.set_xticklabels([_point_label(r, rows) for r in bars], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(y_label)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)

    handles = [Patch(facecolor=_protocol_color(p, protocols), edgecolor="black", linewidth=0.5, label=p)
               for p in _legend_protocols(bars)]
    if any(is_random_init(r.get("weights")) and not _is_reported(r) for r in bars):
        handles.append(Patch(facecolor="white", edgecolor="black", linewidth=0.5, hatch=_RANDOM_INIT_HATCH,
                             label=_RANDOM_INIT_LEGEND))
    if any(_is_reported(r) for r in bars):
        handles.append(Patch(facecolor="0.6", alpha=0.55, edgecolor="black", linewidth=0.5, hatch=_REPORTED_HATCH,
                             label=_REPORTED_LEGEND))
    legend = ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                       handlelength=2.4, handleheight=1.6)
    _fit_layout(fig, [ax], legend, cfg)
    return fig


def _bar_plot(rows: Sequence[Mapping[str, Any]], title: str, y_label: str, cfg: ReportConfig) -> bytes | None:
    return _png_or_none(_bar_figure(rows, title, y_label, cfg))


def _curves_figure(rows: Sequence[Mapping[str, Any]], title: str, metric: str, cfg: ReportConfig) -> Figure | None:
    """Fine-tuning curves: training loss and (where the task has a validation split) the validation metric per
    epoch, one line per model and run (fold/seed).

    Each run name (``fold1_seed0``, ...) has its own colour; with several models (or weights, or protocols), each
    has its own line style and marker, and the legend lists the runs by colour and the models by style.
    """
    runs = [(r, str(name), history) for r in rows if isinstance(r.get("curves"), Mapping)
            for name, history in r["curves"].items() if history]
    if not runs:
        return None
    from matplotlib.lines import Line2D

    valid_key = f"valid_{metric}"
    has_valid = any(valid_key in h for _, _, history in runs for h in history)
    fig = _new_figure(cfg)
    axes = fig.subplots(1, 2 if has_valid else 1, squeeze=False)[0]
    groups = list(dict.fromkeys(_row_key(row)[:3] for row, _, _ in runs))
    group_names = {_row_key(row)[:3]: _point_label(row, rows) for row, _, _ in runs}
    run_names = list(dict.fromkeys(name for _, name, _ in runs))
    colors = _distinct_colors(len(run_names))
    for row, name, history in runs:
        g = groups.index(_row_key(row)[:3])
        style = {
            "color": colors[run_names.index(name)], "linestyle": _GROUP_LINESTYLES[g % len(_GROUP_LINESTYLES)],
            "marker": _GROUP_MARKERS[g % len(_GROUP_MARKERS)], "alpha": 0.85, "markersize": 5,
        }
        label = name if len(groups) == 1 else f"{group_names[groups[g]]} {name}"
        epochs = [int(h["epoch"]) + 1 for h in history]
        axes[0].plot(epochs, [h["train_loss"] for h in history], label=label, **style)
        if has_valid and any(valid_key in h for h in history):
            axes[1].plot([e for e, h in zip(epochs, history) if valid_key in h],
                         [100.0 * h[valid_key] for h in history if valid_key in h], label=label, **style)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("training loss")
    axes[0].set_title(f"{title}: training loss", fontsize=9)
    if has_valid:
        axes[1].set_xlabel("epoch")
        axes[1].set_ylabel(f"validation {_metric_name(metric)} (%)")
        axes[1].set_title(f"{title}: validation {_metric_name(metric)}", fontsize=9)
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)

    if len(groups) == 1:
        handles = [Line2D([], [], color=c, marker=_GROUP_MARKERS[0], markersize=5, label=n)
                   for n, c in zip(run_names, colors)]
        legend_title = group_names[groups[0]]
    else:
        handles = [Line2D([], [], color=c, label=n) for n, c in zip(run_names, colors)]
        handles += [Line2D([], [], color="black", linestyle=_GROUP_LINESTYLES[g % len(_GROUP_LINESTYLES)],
                           marker=_GROUP_MARKERS[g % len(_GROUP_MARKERS)], markersize=5, label=group_names[key])
                    for g, key in enumerate(groups)]
        legend_title = None
    legend = axes[-1].legend(handles=handles, fontsize=6, title=legend_title, title_fontsize=6, loc="upper left",
                             bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    _fit_layout(fig, list(axes), legend, cfg)
    return fig


def _curves_plot(rows: Sequence[Mapping[str, Any]], title: str, metric: str, cfg: ReportConfig) -> bytes | None:
    return _png_or_none(_curves_figure(rows, title, metric, cfg))


def _plots(rows: Sequence[Mapping[str, Any]], cfg: ReportConfig) -> list[tuple[str, str, bytes]]:
    """``(file name, caption, png)`` for every task and metric."""
    out = []
    for task, metric in _columns(rows):
        sub = [r for r in rows if str(r["task"]) == task and str(r["metric"]) == metric]
        name = _task_label(task)
        y_label = f"{name} {_metric_name(metric)} (%)"
        stem = _slug(f"{task}_{metric}")
        specs = [
            (f"{stem}_vs_gmacs.png", f"{name}: score vs GMACs",
             lambda s=sub: _tradeoff_plot(s, "gmacs", "GMACs", f"{name}: score vs compute", y_label, cfg)),
            (f"{stem}_vs_params.png", f"{name}: score vs parameters",
             lambda s=sub: _tradeoff_plot(s, "params_m", "parameters (M)", f"{name}: score vs size", y_label, cfg)),
            (f"{stem}_bars.png", f"{name}: mean ± std",
             lambda s=sub: _bar_plot(s, f"{name}: mean ± std over seeds/folds", y_label, cfg)),
            (f"{stem}_finetune_curves.png", f"{name}: fine-tuning curves",
             lambda s=sub: _curves_plot(s, name, metric, cfg)),
        ]
        for file_name, caption, make in specs:
            png = make()
            if png is not None:
                out.append((file_name, caption, png))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Writers


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    extra = sorted({k for r in rows for k in r} - set(CSV_COLUMNS) - set(_CSV_SKIP))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS, *extra])
    for row in rows:
        values = []
        for key in (*CSV_COLUMNS, *extra):
            value = row.get(key)
            if key == "weights" and is_random_init(value):
                value = RANDOM_INIT
            if value is None:
                values.append("")
            elif isinstance(value, (Mapping, list, tuple)):
                values.append(json.dumps(value, default=str))
            else:
                values.append(value)
        writer.writerow(values)
    return buf.getvalue()


def _markdown_report(
    rows: Sequence[Mapping[str, Any]], provenance: Mapping[str, Any], plots: Sequence[tuple[str, str, bytes]],
    cfg: ReportConfig,
) -> str:
    lines = [f"# {cfg.title}", ""]
    warning = _random_init_warning(rows)
    if warning:
        lines += [f"> **Warning:** {warning.replace(RANDOM_INIT, f'**{RANDOM_INIT}**', 1)}", ""]
    lines += ["## Provenance", "", *_md_nodes(_provenance_tree(provenance, cfg.max_list_items)), ""]
    lines += ["## Leaderboard", "", render_leaderboard(rows, cfg.decimals).rstrip("\n"), ""]
    hear = _hear_scores_table(rows)
    if hear is not None:
        lines += ["## HEAR scores", "", _HEAR_SCORES_NOTE, "", *_md_table(*hear), ""]
    header, numeric, body = _details_table(rows, cfg.decimals)
    lines += ["## All results", "", *_md_table(header, numeric, body), ""]
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{caption}](plots/{name})" for name, caption, _ in plots]
        lines.append("")
    return "\n".join(lines)


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 72em;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
th { background: #f3f3f3; } td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafafa; }
.warning { background: #fff4e5; border-left: 4px solid #e69500; padding: 0.6em 1em; margin: 1em 0; }
.footnotes { font-size: 0.85em; color: #444; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
"""


def _html_table(header: Sequence[str], numeric: Sequence[bool], rows: Sequence[Sequence[_Cell]]) -> str:
    def th(text: str, num: bool) -> str:
        return f'<th class="num">{html.escape(text)}</th>' if num else f"<th>{html.escape(text)}</th>"

    def td(cell: _Cell) -> str:
        text = html.escape(cell.text)
        if cell.bold:
            text = f"<strong>{text}</strong>"
        if cell.footnote is not None:
            text += f'<sup><a href="#fn-{cell.footnote}">{cell.footnote}</a></sup>'
        return f'<td class="num">{text}</td>' if cell.numeric else f"<td>{text}</td>"

    head = "<tr>" + "".join(th(h, n) for h, n in zip(header, numeric)) + "</tr>"
    body = "".join("<tr>" + "".join(td(c) for c in row) + "</tr>" for row in rows)
    return f"<table><thead>{head}</thead><tbody>{body}</tbody></table>"


def _html_report(
    rows: Sequence[Mapping[str, Any]], provenance: Mapping[str, Any], plots: Sequence[tuple[str, str, bytes]],
    cfg: ReportConfig,
) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(cfg.title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(cfg.title)}</h1>",
    ]
    warning = _random_init_warning(rows)
    if warning:
        text = html.escape(warning).replace(RANDOM_INIT, f"<strong>{RANDOM_INIT}</strong>", 1)
        parts.append(f'<p class="warning"><strong>Warning:</strong> {text}</p>')
    parts += ["<h2>Provenance</h2>", _html_nodes(_provenance_tree(provenance, cfg.max_list_items))]
    table = _leaderboard_table(rows, cfg.decimals)
    parts += ["<h2>Leaderboard</h2>", _html_table(table.header, table.numeric, table.rows)]
    if table.footnotes:
        notes = "".join(f'<li id="fn-{i}">{md_inline_html(n)}</li>' for i, n in enumerate(table.footnotes, start=1))
        parts.append(f'<ol class="footnotes">{notes}</ol>')
    hear = _hear_scores_table(rows)
    if hear is not None:
        parts += ["<h2>HEAR scores</h2>", f"<p>{html.escape(_HEAR_SCORES_NOTE)}</p>", _html_table(*hear)]
    parts += ["<h2>All results</h2>", _html_table(*_details_table(rows, cfg.decimals))]
    if plots:
        parts.append("<h2>Plots</h2>")
        for name, caption, png in plots:
            data = base64.b64encode(png).decode("ascii")
            parts.append(
                f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(caption)} ({html.escape(name)})</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_reports(
    rows: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike[str],
    provenance: Mapping[str, Any],
    cfg: ReportConfig | None = None,
) -> dict[str, Path]:
    """Write the leaderboard as Markdown, CSV, self-contained HTML and PNG plots.

    The Markdown and HTML reports start with a provenance list rendering every key of ``provenance`` (e.g. date,
    git commit, versions, device, weights and their sha256, dataset paths and clip counts, skipped files, seeds,
    wall time; nested dicts and lists become nested lists, long lists are cut to ``cfg.max_list_items``), preceded
    by a warning when any row uses random-init weights.

    Args:
        rows: result rows (see the module docstring).
        out_dir: output directory (created if needed); plots go to ``out_dir/plots``.
        provenance: run metadata to show at the top of the reports.
        cfg: rendering settings (default: ``REPORT_PRESETS["default"]``).

    Returns:
        Written files by relative name (``"leaderboard.md"``, ..., ``"plots/esc50-accuracy_bars.png"``).
    """
    cfg = cfg or REPORT_PRESETS["default"]
    _check_rows(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    plots = _plots(rows, cfg)
    for name, _, png in plots:
        rel = f"plots/{name}"
        atomic_write_bytes(out / rel, png)
        written[rel] = out / rel

    documents = {
        "leaderboard.md": _markdown_report(rows, provenance, plots, cfg),
        "leaderboard.csv": _csv_text(rows),
        "leaderboard.html": _html_report(rows, provenance, plots, cfg),
    }
    for name, text in documents.items():
        atomic_write_bytes(out / name, text.encode("utf-8"))
        written[name] = out / name
    logger.info("wrote %d report files to %s", len(written), out)
    return written
