"""HEAR event tasks: frame labels, the MLP probe on frames, heareval's post-processing grid and sed_eval scores.

The protocol follows hear-eval-kit 2021.1.3 (``heareval/embeddings/task_embeddings.py``,
``heareval/predictions/task_predictions.py``, ``heareval/score.py``):

* **Frame labels**: a label is active at timestamp ``t`` (ms) when one of its events has ``start <= t < end +
  0.0001`` (heareval's interval tree with the end nudged so that it is included), :func:`frame_labels`.
* **Probe**: hear-eval-kit's MLP (:mod:`hear_dymn.bench.probes.mlp`) on the frames of the training files, multilabel
  (sigmoid + BCE). Per-task settings are applied on top of the probe preset: ``check_val_every_n_epoch`` 10 for
  ``dcase2016_task2`` (heareval's ``TASK_SPECIFIC_PARAM_GRID``) and the metadata's
  ``evaluation_params.task_specific_param_grid`` (maestro: ``max_epochs`` 50, ``check_val_every_n_epoch`` 1),
  :func:`event_probe_config`.
* **Post-processing** (:func:`events_from_frames`): per file, a median filter of ``median_filter_ms`` over time
  (scipy's ``median_filter`` of width ``round(median_filter_ms / hop)`` frames), a threshold at 0.5, runs of active
  frames become events from the run's first to its last timestamp, and events shorter than ``min_duration`` ms are
  dropped. The grid is the metadata's ``evaluation_params.event_postprocessing_grid`` or heareval's default
  (median filter 250 ms, minimum duration 125 or 250 ms). At every validation check the best grid point on the
  validation files is found and its score is the validation score (early stopping and grid selection); the test
  files are post-processed with the point chosen at the selected checkpoint (ties: the larger parameters, as
  heareval's reverse sort). When the metadata sets ``use_scoring_for_early_stopping: false`` (maestro), the
  validation loss decides instead and the post-processing grid must have one point.
* **Scores**: the task's ``evaluation`` list, through sed_eval as ``heareval/score.py`` calls it
  (``event_onset_200ms_fms``: event-based, onset only, 200 ms collar; ``event_onset_50ms_fms``: 50 ms;
  ``event_onset_offset_50ms_20perc_fms``: onset and offset; ``segment_1s_er``: segment-based error rate, 1 s
  segments), every test file evaluated, the primary value of each score being the overall (micro) F-measure or
  error rate. The validation checks score onset F-measures with :func:`onset_f_measure`, our implementation
  (maximum label-and-collar matching per file, tested equal to sed_eval), since sed_eval takes seconds per call;
  other selection scores use sed_eval there too.

The predicted events of every test file are saved as JSON in the split-file format (``{file name: [{"label",
"start", "end"}, ...]}``, ms), :func:`write_events`; :func:`rescore` recomputes the scores from such a file.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_text
from .metrics import Metric
from .probes import MLPProbeConfig, ProbeData
from .probes.mlp import fit_mlp_scored

logger = logging.getLogger(__name__)

__all__ = [
    "EVENT_SCORES", "DEFAULT_POSTPROCESSING_GRID", "TASK_SPECIFIC_PARAM_GRID", "EventScore", "FrameSplit",
    "EventProbeResult", "frame_labels", "events_from_frames", "postprocessing_points", "onset_f_measure",
    "score_events", "fit_event_probe", "fit_event_rounds", "event_probe_config", "postprocessing_grid",
    "write_events", "read_events", "rescore",
]

Events = dict[str, list[dict[str, Any]]]  # file name -> [{"label", "start", "end"} in ms]
Point = tuple[tuple[str, float], ...]  # one post-processing grid point, keys sorted


@dataclass(frozen=True)
class EventScore:
    """One of heareval's sed_eval scores.

    Attributes:
        name: heareval's score name.
        kind: ``"event"`` (sed_eval ``EventBasedMetrics``) or ``"segment"`` (``SegmentBasedMetrics``).
        params: keyword arguments of the sed_eval metrics class.
        subscores: overall sed_eval values reported, the first being the score's value.
        maximize: higher is better (the error rate is minimised).
    """

    name: str
    kind: str
    params: Mapping[str, Any]
    subscores: tuple[str, ...]
    maximize: bool = True


EVENT_SCORES: dict[str, EventScore] = {s.name: s for s in (
    EventScore("event_onset_200ms_fms", "event", {"evaluate_onset": True, "evaluate_offset": False, "t_collar": 0.2},
               ("f_measure", "precision", "recall")),
    EventScore("event_onset_50ms_fms", "event", {"evaluate_onset": True, "evaluate_offset": False, "t_collar": 0.05},
               ("f_measure", "precision", "recall")),
    EventScore("event_onset_offset_50ms_20perc_fms", "event",
               {"evaluate_onset": True, "evaluate_offset": True, "t_collar": 0.05, "percentage_of_length": 0.2},
               ("f_measure", "precision", "recall")),
    EventScore("segment_1s_er", "segment", {"time_resolution": 1.0}, ("error_rate",), maximize=False),
)}
#: heareval's EVENT_POSTPROCESSING_GRID (used when the task metadata has none).
DEFAULT_POSTPROCESSING_GRID: dict[str, tuple[float, ...]] = {"median_filter_ms": (250,), "min_duration": (125, 250)}
#: heareval's TASK_SPECIFIC_PARAM_GRID, by task name.
TASK_SPECIFIC_PARAM_GRID: dict[str, dict[str, Any]] = {"dcase2016_task2": {"check_val_every_n_epoch": [10]}}
_THRESHOLD = 0.5
_END_NUDGE_MS = 0.0001  # heareval adds this to an event's end so that a timestamp on the end is inside


# ----------------------------------------------------------------------------------------------------------------
# frames <-> events


def frame_labels(events: Sequence[Mapping[str, Any]], timestamps_ms: np.ndarray, label_index: Mapping[str, int]
                 ) -> np.ndarray:
    """``(T, C)`` float32 0/1 labels of one file: label ``c`` is active at ``t`` when one of its events has
    ``start <= t < end + 0.0001`` (ms)."""
    t = np.asarray(timestamps_ms, dtype=np.float64)
    y = np.zeros((len(t), len(label_index)), dtype=np.float32)
    for event in events:
        active = (t >= float(event["start"])) & (t < float(event["end"]) + _END_NUDGE_MS)
        y[active, label_index[str(event["label"])]] = 1.0
    return y


def events_from_frames(probs: np.ndarray, timestamps_ms: np.ndarray, labels: Sequence[str], *,
                       median_filter_ms: float, min_duration: float, threshold: float = _THRESHOLD
                       ) -> list[dict[str, Any]]:
    """One file's events from frame probabilities ``(T, C)`` at ``timestamps_ms`` (sorted), as heareval makes them.

    Returns:
        ``[{"label", "start", "end"}, ...]`` in ms, sorted by start (stable: label order within one start).
    """
    from scipy.ndimage import median_filter

    p = np.asarray(probs, dtype=np.float32)
    t = np.asarray(timestamps_ms, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != t.shape[0]:
        raise ValueError(f"probs {p.shape} must be (T, C) with T = {t.shape[0]} timestamps")
    if median_filter_ms and len(t) > 1:
        width = int(round(median_filter_ms / float(np.mean(np.diff(t)))))
        if width:
            p = median_filter(p, size=(width, 1))
    active = p > threshold
    events = []
    for c in range(active.shape[1]):
        on = np.flatnonzero(active[:, c])
        if not len(on):
            continue
        breaks = np.flatnonzero(np.diff(on) != 1)
        firsts = np.concatenate([[on[0]], on[breaks + 1]])
        lasts = np.concatenate([on[breaks], [on[-1]]])
        for a, b in zip(firsts, lasts):
            start, end = float(t[a]), float(t[b])
            if end - start >= min_duration:
                events.append({"label": labels[c], "start": start, "end": end})
    events.sort(key=lambda e: e["start"])
    return events


def postprocessing_points(grid: Mapping[str, Sequence[float]]) -> list[Point]:
    """The grid points in scikit-learn's ``ParameterGrid`` order (keys sorted, the last varying fastest)."""
    unknown = sorted(set(grid) - {"median_filter_ms", "min_duration"})
    if unknown:
        raise ValueError(f"unknown post-processing parameter(s) {unknown}; known: median_filter_ms, min_duration")
    keys = sorted(grid)
    values = [list(grid[k]) for k in keys]
    if any(not v for v in values):
        raise ValueError(f"empty post-processing grid {dict(grid)}")
    return [tuple(zip(keys, combo)) for combo in itertools.product(*values)]


# ----------------------------------------------------------------------------------------------------------------
# scores


def _count_onset_matches(ref: np.ndarray, est: np.ndarray, collar: float) -> int:
    """Size of a maximum matching between sorted onsets ``ref`` and ``est`` (s) where a pair matches when
    ``|r - e| <= collar``. Every reference's window is a contiguous range of ``est`` whose ends move forward with
    the reference, so matching each reference, in order, to the earliest unmatched estimate in its window is
    maximal; the test is sed_eval's, evaluated in the same float arithmetic."""
    matches, j = 0, 0
    for r in ref:
        while j < len(est) and r - est[j] > collar:
            j += 1
        if j < len(est) and math.fabs(r - est[j]) <= collar:
            matches += 1
            j += 1
    return matches


def onset_f_measure(predicted: Events, reference: Events, collar: float) -> tuple[float, float, float]:
    """Overall onset-only event F-measure, precision and recall, as sed_eval's ``EventBasedMetrics`` (onset only,
    ``t_collar`` = ``collar`` seconds) evaluated file by file over the files of ``predicted``.

    Returns:
        ``(f_measure, precision, recall)``; ``nan`` where sed_eval gives ``nan`` (no estimated or no reference
        event at all).
    """
    n_sys = n_ref = n_tp = 0
    for name, est_events in predicted.items():
        ref_events = reference.get(name, [])
        n_sys += len(est_events)
        n_ref += len(ref_events)
        by_label: dict[str, tuple[list[float], list[float]]] = {}
        for e in ref_events:
            by_label.setdefault(str(e["label"]), ([], []))[0].append(e["start"] / 1000.0)
        for e in est_events:
            by_label.setdefault(str(e["label"]), ([], []))[1].append(e["start"] / 1000.0)
        for refs, ests in by_label.values():
            if refs and ests:
                n_tp += _count_onset_matches(np.sort(refs), np.sort(ests), collar)
    precision = n_tp / n_sys if n_sys else math.nan
    recall = n_tp / n_ref if n_ref else math.nan
    if precision == 0 and recall == 0:
        return 0.0, precision, recall
    return 2 * precision * recall / (precision + recall), precision, recall


def _sed_eval():
    try:
        import sed_eval
        from dcase_util.containers import MetaDataContainer
    except ImportError as err:
        raise ImportError("HEAR event scores need sed_eval (hear-eval-kit's scorer): pip install "
                          "'sed_eval==0.2.1' 'dcase_util==0.2.20' (the project's eval extra)") from err
    return sed_eval, MetaDataContainer


def _container(events: Events, container_cls):
    return container_cls([{"event_label": str(e["label"]), "event_onset": e["start"] / 1000.0,
                           "event_offset": e["end"] / 1000.0, "file": name}
                          for name, items in events.items() for e in items])


def sed_eval_score(name: str, predicted: Events, reference: Events, labels: Sequence[str]) -> dict[str, float]:
    """One of :data:`EVENT_SCORES` computed with sed_eval as ``heareval/score.py`` does: the overall values of its
    ``subscores``, every file of ``predicted`` evaluated against its reference events."""
    score = _event_score(name)
    sed_eval, container_cls = _sed_eval()
    cls = sed_eval.sound_event.EventBasedMetrics if score.kind == "event" else sed_eval.sound_event.SegmentBasedMetrics
    metrics = cls(event_label_list=list(labels), **score.params)
    ref_all, est_all = _container(reference, container_cls), _container(predicted, container_cls)
    for fname in predicted:
        metrics.evaluate(reference_event_list=ref_all.filter(filename=fname),
                         estimated_event_list=est_all.filter(filename=fname))
    overall: dict[str, float] = {}
    for group in metrics.results_overall_metrics().values():
        overall.update(group)
    return {sub: float(overall[sub]) for sub in score.subscores}


def _event_score(name: str) -> EventScore:
    try:
        return EVENT_SCORES[name]
    except KeyError:
        raise KeyError(f"unknown HEAR event score {name!r}; known: {', '.join(EVENT_SCORES)}") from None


def score_events(predicted: Events, reference: Events, labels: Sequence[str], names: Sequence[str]
                 ) -> dict[str, float]:
    """The scores ``names`` through sed_eval: ``{name: value, f"{name}_{subscore}": value, ...}``."""
    out: dict[str, float] = {}
    for name in names:
        values = sed_eval_score(name, predicted, reference, labels)
        out[name] = values[_event_score(name).subscores[0]]
        out.update({f"{name}_{sub}": v for sub, v in values.items()})
    return out


def _selection_value(name: str, predicted: Events, reference: Events, labels: Sequence[str]) -> float:
    """The value of score ``name`` for model selection (own onset F-measure where it applies, else sed_eval)."""
    score = _event_score(name)
    if score.kind == "event" and not score.params.get("evaluate_offset"):
        return onset_f_measure(predicted, reference, float(score.params["t_collar"]))[0]
    return sed_eval_score(name, predicted, reference, labels)[score.subscores[0]]


# ----------------------------------------------------------------------------------------------------------------
# frames of a split


@dataclass(frozen=True)
class FrameSplit:
    """The timestamp embeddings of one split, files concatenated.

    Attributes:
        x: ``(N, D)`` float32 frames of all files.
        timestamps: ``(N,)`` ms.
        offsets: ``(n_files + 1,)``: file ``i`` has frames ``offsets[i]:offsets[i + 1]``.
        file_names: split-file keys of the files, in order.
        y: ``(N, C)`` frame labels (:func:`frame_labels`).
        reference: the split's events keyed by file name (also the files without frames, e.g. unreadable ones).
    """

    x: np.ndarray
    timestamps: np.ndarray
    offsets: np.ndarray
    file_names: list[str]
    y: np.ndarray
    reference: Events

    @classmethod
    def build(cls, x: np.ndarray, timestamps: np.ndarray, offsets: np.ndarray, file_names: Sequence[str],
              reference: Events, labels: Sequence[str]) -> FrameSplit:
        index = {label: i for i, label in enumerate(labels)}
        offsets = np.asarray(offsets, dtype=np.int64)
        if len(offsets) != len(file_names) + 1 or offsets[-1] != len(x) or len(timestamps) != len(x):
            raise ValueError(f"{len(file_names)} files need {len(file_names) + 1} offsets ending at {len(x)} frames, "
                             f"got {len(offsets)} ending at {offsets[-1] if len(offsets) else None}")
        ys = [frame_labels(reference.get(name, []), timestamps[a:b], index)
              for name, a, b in zip(file_names, offsets[:-1], offsets[1:])]
        y = np.concatenate(ys) if ys else np.zeros((0, len(labels)), np.float32)
        return cls(np.asarray(x, dtype=np.float32), np.asarray(timestamps, dtype=np.float64), offsets,
                   list(file_names), y, dict(reference))

    def probe_data(self) -> ProbeData:
        return ProbeData(x=self.x, y=self.y)

    def predict_events(self, probs: np.ndarray, labels: Sequence[str], point: Point) -> Events:
        """Events of every file of the split from the frame probabilities ``probs`` ``(N, C)``."""
        params = dict(point)
        return {name: events_from_frames(probs[a:b], self.timestamps[a:b], labels, **params)
                for name, a, b in zip(self.file_names, self.offsets[:-1], self.offsets[1:])}


def concat_frames(parts: Sequence[FrameSplit]) -> FrameSplit:
    """Several splits as one (k-fold training folds)."""
    shifts = np.cumsum([0] + [len(p.x) for p in parts[:-1]])
    offsets = np.concatenate([[0]] + [p.offsets[1:] + s for p, s in zip(parts, shifts)])
    reference: Events = {}
    for p in parts:
        reference.update(p.reference)
    return FrameSplit(np.concatenate([p.x for p in parts]), np.concatenate([p.timestamps for p in parts]), offsets,
                      [n for p in parts for n in p.file_names], np.concatenate([p.y for p in parts]), reference)


# ----------------------------------------------------------------------------------------------------------------
# the probe


@dataclass
class EventProbeResult:
    """Outcome of one event-probe fit.

    Attributes:
        metrics: the task's scores on the test files (:func:`score_events`) and ``valid_<selection metric>``.
        predicted: the test files' predicted events (split-file format).
        postprocessing: the chosen post-processing point, as a dict.
        selected: the MLP grid point, its best epoch and grid index (as :func:`fit_mlp_probe`).
        history: the MLP's validation history.
        seconds: wall time of the fit (selection and scoring included).
    """

    metrics: dict[str, float]
    predicted: Events
    postprocessing: dict[str, float]
    selected: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _best_point(split: FrameSplit, probs: np.ndarray, labels: Sequence[str], points: Sequence[Point],
                metric: str) -> tuple[float, Point]:
    """heareval's choice: each point's selection score (nan counts as 0), the best first; ties go to the larger
    point (its reverse sort of ``(score, point)``). An error rate is negated so that larger is better.

    Returns the chosen point's own score, ``nan`` included: heareval logs that value, and a ``nan`` there ends the
    run (Lightning's EarlyStopping, which the MLP probe follows)."""
    sign = 1.0 if _event_score(metric).maximize else -1.0
    scored = []
    for point in points:
        value = _selection_value(metric, split.predict_events(probs, labels, point), split.reference, labels)
        scored.append((0.0 if math.isnan(value) else sign * value, point, value))
    scored.sort(key=lambda item: item[:2], reverse=True)
    return scored[0][2], scored[0][1]


def fit_event_probe(train: FrameSplit, valid: FrameSplit, test: FrameSplit, *, labels: Sequence[str],
                    evaluation: Sequence[str], cfg: MLPProbeConfig, seed: int = 0,
                    grid: Mapping[str, Sequence[float]] | None = None, use_scoring: bool = True
                    ) -> EventProbeResult:
    """The HEAR event protocol on one (train, valid, test) round (see the module docstring).

    Args:
        train, valid, test: the splits' frames.
        labels: the task's labels in index order.
        evaluation: the task's score names; the first selects the checkpoint, the grid point and the
            post-processing.
        cfg: MLP probe settings (with the per-task settings applied, :func:`event_probe_config`).
        seed: probe seed.
        grid: post-processing grid (default :data:`DEFAULT_POSTPROCESSING_GRID`).
        use_scoring: select on the validation score (else on the validation loss, one post-processing point).
    """
    start = time.perf_counter()
    if not evaluation:
        raise ValueError("an event task needs at least one score in its evaluation list")
    metric = str(evaluation[0])
    score = _event_score(metric)
    points = postprocessing_points(grid or DEFAULT_POSTPROCESSING_GRID)
    if not use_scoring and len(points) != 1:
        raise ValueError(f"selecting on the validation loss needs a single post-processing point, got {len(points)}")
    chosen: dict[str, Any] = {}
    if use_scoring:
        def valid_score(_targets: np.ndarray, scores: np.ndarray, _mask: np.ndarray | None = None) -> float:
            return _best_point(valid, scores, labels, points, metric)[0]

        score_fn = Metric(metric, valid_score, higher_is_better=score.maximize)
    else:
        def valid_loss(targets: np.ndarray, scores: np.ndarray, _mask: np.ndarray | None = None) -> float:
            p = np.clip(np.asarray(scores, dtype=np.float64), 1e-7, 1 - 1e-7)
            t = np.asarray(targets, dtype=np.float64)
            return float(-(t * np.log(p) + (1 - t) * np.log1p(-p)).mean())

        score_fn = Metric("valid_loss", valid_loss, higher_is_better=False)
    result, (valid_probs, test_probs) = fit_mlp_scored(
        train.probe_data(), valid.probe_data(), predict=[valid.probe_data(), test.probe_data()], multilabel=True,
        score_fn=score_fn, cfg=cfg, seed=seed)
    if use_scoring:
        valid_value, point = _best_point(valid, valid_probs, labels, points, metric)
    else:
        valid_value, point = result.metrics[f"valid_{score_fn.name}"], points[0]
    chosen = dict(point)
    predicted = test.predict_events(test_probs, labels, point)
    metrics = score_events(predicted, test.reference, labels, evaluation)
    metrics[f"valid_{score_fn.name}"] = float(valid_value)
    seconds = time.perf_counter() - start
    logger.info("event probe: selected %s, post-processing %s, test %s=%.4f (%.1f s)", result.selected, chosen,
                metric, metrics[metric], seconds)
    return EventProbeResult(metrics, predicted, chosen, result.selected, result.history, seconds)


def fit_event_rounds(rounds: Sequence[tuple[FrameSplit, FrameSplit, FrameSplit]], **kwargs: Any
                     ) -> list[EventProbeResult]:
    """heareval's multi-split flow: the MLP grid search on the first round, the chosen grid point retrained on the
    others (each round chooses its own checkpoint and post-processing on its validation split)."""
    if not rounds:
        raise ValueError("no rounds to fit")
    cfg: MLPProbeConfig = kwargs.pop("cfg")
    first = fit_event_probe(*rounds[0], cfg=cfg, **kwargs)
    single = cfg.with_selected(first.selected)
    results = [first]
    for train, valid, test in rounds[1:]:
        result = fit_event_probe(train, valid, test, cfg=single, **kwargs)
        result.selected = {**result.selected, "grid_index": first.selected["grid_index"]}
        results.append(result)
    return results


# ----------------------------------------------------------------------------------------------------------------
# per-task settings


_SCALAR_SETTINGS = ("max_epochs", "check_val_every_n_epoch", "patience", "batch_size")
_GRID_SETTINGS = ("hidden_layers", "hidden_dim", "dropout", "lr")


def event_probe_config(cfg: MLPProbeConfig, task_name: str, metadata: Mapping[str, Any]) -> MLPProbeConfig:
    """``cfg`` with heareval's per-task settings: :data:`TASK_SPECIFIC_PARAM_GRID` for ``task_name``, then the
    metadata's ``evaluation_params.task_specific_param_grid``.

    Raises:
        ValueError: a setting the probe does not have, or several values for a setting that is not a grid axis.
    """
    settings = dict(TASK_SPECIFIC_PARAM_GRID.get(task_name, {}))
    settings.update((metadata.get("evaluation_params") or {}).get("task_specific_param_grid") or {})
    changes: dict[str, Any] = {}
    for key, values in settings.items():
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if key in _GRID_SETTINGS:
            changes[key] = tuple(values)
        elif key in _SCALAR_SETTINGS:
            if len(values) != 1:
                raise ValueError(f"task {task_name}: task_specific_param_grid {key!r} must have one value, got "
                                 f"{values}")
            changes[key] = int(values[0])
        else:
            raise ValueError(f"task {task_name}: task_specific_param_grid key {key!r} is not a probe setting; known: "
                             f"{', '.join(_SCALAR_SETTINGS + _GRID_SETTINGS)}")
    if changes:
        logger.info("task %s: probe settings %s", task_name, changes)
    return replace(cfg, **changes)


def postprocessing_grid(metadata: Mapping[str, Any]) -> dict[str, tuple[float, ...]]:
    """The metadata's ``evaluation_params.event_postprocessing_grid``, else :data:`DEFAULT_POSTPROCESSING_GRID`."""
    grid = (metadata.get("evaluation_params") or {}).get("event_postprocessing_grid")
    if not grid:
        return dict(DEFAULT_POSTPROCESSING_GRID)
    return {str(k): tuple(float(v) for v in vs) for k, vs in grid.items()}


# ----------------------------------------------------------------------------------------------------------------
# saved predictions


def write_events(path: Path, predicted: Events) -> None:
    """Predicted events as JSON in the split-file format (atomic)."""
    atomic_write_text(Path(path), json.dumps(predicted, indent=1, sort_keys=True))


def read_events(path: Path) -> Events:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ValueError(f"{path}: must map file name -> list of {{label, start, end}} events")
    return data


def rescore(path: Path, task: Any, split: str) -> dict[str, float]:
    """The task's scores of the predicted events saved at ``path`` against the task's ``split`` (a
    :class:`~hear_dymn.bench.tasks.hear_task.HearTask` event task)."""
    return score_events(read_events(path), task.reference_events(split), task.spec.labels, task.evaluation)
