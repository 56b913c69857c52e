"""HEAR 2021 task folders as written by ``hear-preprocess``: scene tasks and event (timestamp) tasks.

Layout of one task folder::

    <root>/task_metadata.json      task_name, version, embedding_type, prediction_type, split_mode,
                                   sample_duration, evaluation, splits / nfolds, evaluation_params, ...
    <root>/labelvocabulary.csv     header: idx,label
    <root>/<split>.json            scene: {"<file name>": ["<label>", ...], ...}
                                   event: {"<file name>": [{"label": ..., "start": ms, "end": ms}, ...], ...}
    <root>/<sample_rate>/<split>/<file name>

Split modes (as hear-eval-kit reads them): ``trainvaltest`` has the splits ``train``, ``valid``, ``test``;
``new_split_kfold`` and ``presplit_kfold`` have folds, named by the metadata's ``splits`` list when present, else
``fold00`` .. ``fold{nfolds-1}``, else the ``foldNN.json`` files found. Any other mode is refused.

Audio is taken from the ``32000`` folder when present, else from the highest sample rate available
(:func:`~hear_dymn.bench.audio.read_audio` resamples; the public HEAR release has ``48000/`` only). The task is
registered as ``"hear"``; ``get_task("hear:<task_name>", root)`` also works and checks the name.

Scene tasks: the main metric is accuracy for ``top1_acc`` and mAP for ``mAP`` (the first entry of ``evaluation``);
other metrics fall back to accuracy for multiclass and mAP for multilabel tasks.

Event tasks (``embedding_type: "event"``, multilabel only, as every HEAR event task): clips are
:class:`EventClip` objects holding their events (times in ms, as in the split file) and a clip-level multi-hot
target of the labels that occur; ``spec.embedding_type`` is ``"event"`` and ``spec.main_metric`` the first entry of
``evaluation`` (one of :data:`~hear_dymn.bench.tasks.base.EVENT_METRICS`); :meth:`HearTask.reference_events` gives
a split's events keyed by file name, the format in which predictions are saved and scored
(:mod:`hear_dymn.bench.events`). ``TaskSpec.version`` is the first integer in the metadata's ``version`` string
(1 if there is none).
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import (
    EVENT_METRICS, Clip, DatasetLayoutError, MainMetric, SplitProtocol, Task, TaskSpec, UnsupportedTaskError,
    check_audio_files, multiclass_target, multihot, parse_int, read_csv_dicts, register_task, require_file,
)

logger = logging.getLogger(__name__)

__all__ = ["HearTask", "EventClip", "Event", "HEAR_LAYOUT", "PREFERRED_SAMPLE_RATE", "SPLIT_MODES"]

HEAR_LAYOUT = ("a hear-preprocess task folder: <root>/task_metadata.json, "
               "<root>/labelvocabulary.csv (header idx,label), "
               "<root>/<split>.json (file name -> list of labels; event tasks: list of "
               '{"label", "start", "end"} in ms) and <root>/<sample_rate>/<split>/<file name>')
PREFERRED_SAMPLE_RATE = 32000
SPLIT_MODES = ("trainvaltest", "new_split_kfold", "presplit_kfold")
_METRICS: dict[str, MainMetric] = {"top1_acc": "accuracy", "mAP": "map"}
_REQUIRED_KEYS = ("task_name", "embedding_type", "prediction_type", "split_mode")


@dataclass(frozen=True)
class Event:
    """One labelled interval of an event task, times in ms (as in hear-preprocess split files)."""

    label: str
    start: float
    end: float

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "start": self.start, "end": self.end}


@dataclass(frozen=True, eq=False)
class EventClip(Clip):
    """A clip of an event task.

    Attributes:
        file_name: The key of the clip in its split JSON (the file name, with extension); predictions are keyed
            by it.
        events: The clip's events, sorted by start, then label.
    """

    file_name: str = ""
    events: tuple[Event, ...] = ()


class HearTask(Task):
    """Loader for one hear-preprocess task folder (scene or event task).

    Args:
        root: The task folder (containing ``task_metadata.json``).

    Attributes:
        metadata: The parsed ``task_metadata.json``.
        task_name: The metadata's ``task_name``.
        embedding_type: ``"scene"`` or ``"event"`` (also ``spec.embedding_type``).
        evaluation: The metadata's ``evaluation`` list (HEAR score names; the first is the selection metric).
        audio_sample_rate: Sample rate of the audio folder used.

    Raises:
        MissingDatasetFileError: Metadata, vocabulary, a split JSON, the audio folder or an audio file is missing.
        DatasetLayoutError: Malformed metadata/vocabulary/split JSON, unknown labels, a multiclass clip without
            exactly one label, or a malformed event.
        UnsupportedTaskError: Unknown embedding type, prediction type or split mode, a multiclass event task, or
            an event task whose selection metric is not a HEAR event score.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        meta_path = self.root / "task_metadata.json"
        self.metadata = meta = self._read_metadata(meta_path)
        self.task_name = task_name = str(meta["task_name"])
        embedding_type = meta["embedding_type"]
        if embedding_type not in ("scene", "event"):
            raise UnsupportedTaskError(
                f"{meta_path}: HEAR task {task_name!r} has embedding_type {embedding_type!r}; expected 'scene' or "
                "'event'")
        self.embedding_type = embedding_type
        prediction_type = meta["prediction_type"]
        if prediction_type not in ("multiclass", "multilabel"):
            raise UnsupportedTaskError(
                f"{meta_path}: prediction_type must be 'multiclass' or 'multilabel', got {prediction_type!r}")
        if embedding_type == "event" and prediction_type != "multilabel":
            raise UnsupportedTaskError(
                f"{meta_path}: event task {task_name!r} has prediction_type {prediction_type!r}; event tasks are "
                "scored frame by frame with independent labels, so only 'multilabel' is supported")
        multilabel = prediction_type == "multilabel"
        evaluation = meta.get("evaluation")
        self.evaluation = [str(e) for e in evaluation] if isinstance(evaluation, list) else []

        labels = self._read_vocabulary(self.root / "labelvocabulary.csv")
        index = {label: i for i, label in enumerate(labels)}
        splits, protocol = self._splits(meta, meta_path)
        self.audio_sample_rate = self._pick_sample_rate()
        audio_root = self.root / str(self.audio_sample_rate)

        self._clips: dict[str, list[Clip]] = {}
        for split in splits:
            json_path = self.root / f"{split}.json"
            entries = self._read_split_json(json_path)
            if embedding_type == "event":
                clips = [self._event_clip(fname, value, json_path, index, len(labels), audio_root / split)
                         for fname, value in entries.items()]
            else:
                clips = [self._scene_clip(fname, value, json_path, index, len(labels), audio_root / split,
                                          multilabel) for fname, value in entries.items()]
            clips.sort(key=lambda c: c.clip_id)
            self._clips[split] = clips
        check_audio_files((c.path for cs in self._clips.values() for c in cs), HEAR_LAYOUT, "the split JSON files")

        if embedding_type == "event":
            metric = self._event_metric(meta_path)
        else:
            metric = self._main_metric(meta.get("evaluation"), multilabel, meta_path)
        duration = meta.get("sample_duration")
        version_match = re.search(r"\d+", str(meta.get("version", "")))
        counts = ", ".join(f"{s}: {len(c)}" for s, c in self._clips.items())
        self.spec = TaskSpec(
            name=f"hear:{task_name}",
            version=int(version_match.group()) if version_match else 1,
            multilabel=multilabel,
            num_classes=len(labels),
            main_metric=metric,  # type: ignore[arg-type]
            protocol=protocol,
            splits=splits,
            clip_seconds=float(duration) if duration is not None else None,
            labels=labels,
            description=(f"HEAR task {task_name} ({meta.get('version', 'unknown version')}): {prediction_type} "
                         f"{embedding_type} task, {len(labels)} classes, split_mode {meta['split_mode']} ({counts}), "
                         f"audio from the {self.audio_sample_rate} Hz folder, main metric {metric}."),
            embedding_type=embedding_type,
        )
        logger.debug("loaded %r: %s", self, counts)

    # ---------------------------------------------------------------------------------------------------------
    # metadata

    @staticmethod
    def _read_metadata(path: Path) -> dict[str, Any]:
        require_file(path, HEAR_LAYOUT)
        try:
            meta = json.loads(path.read_text(encoding="utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetLayoutError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(meta, dict):
            raise DatasetLayoutError(f"{path}: must be a JSON object")
        missing = [k for k in _REQUIRED_KEYS if k not in meta]
        if missing:
            raise DatasetLayoutError(f"{path}: missing key(s) {missing}. Expected layout: {HEAR_LAYOUT}")
        return meta

    @staticmethod
    def _read_vocabulary(path: Path) -> tuple[str, ...]:
        by_index: dict[int, str] = {}
        for line, row in read_csv_dicts(path, HEAR_LAYOUT, ("idx", "label")):
            idx = parse_int(row["idx"], path, "idx", line, HEAR_LAYOUT)
            if idx in by_index:
                raise DatasetLayoutError(f"{path}, line {line}: duplicate idx {idx}")
            by_index[idx] = row["label"]
        if not by_index or sorted(by_index) != list(range(len(by_index))):
            raise DatasetLayoutError(f"{path}: column 'idx' must cover 0..K-1 without gaps, got {sorted(by_index)}")
        if len(set(by_index.values())) != len(by_index):
            raise DatasetLayoutError(f"{path}: duplicate labels")
        return tuple(by_index[i] for i in range(len(by_index)))

    def _splits(self, meta: dict[str, Any], meta_path: Path) -> tuple[tuple[str, ...], SplitProtocol]:
        mode = str(meta["split_mode"])
        if mode not in SPLIT_MODES:
            raise UnsupportedTaskError(f"{meta_path}: unknown split_mode {mode!r}; expected one of {SPLIT_MODES}")
        if mode == "trainvaltest":
            return ("train", "valid", "test"), "train_valid_test"
        listed = meta.get("splits")
        if listed is not None:
            if not isinstance(listed, list) or not all(isinstance(s, str) and s for s in listed):
                raise DatasetLayoutError(f"{meta_path}: 'splits' must be a list of split names, got {listed!r}")
            folds = tuple(sorted(listed))  # hear-eval-kit sorts the folds before applying its fold rule
            nfolds = meta.get("nfolds")
            if nfolds is not None and nfolds != len(folds):
                raise DatasetLayoutError(f"{meta_path}: 'nfolds' is {nfolds} but 'splits' lists {len(folds)}")
        else:
            nfolds = meta.get("nfolds")
            if nfolds is None:
                nfolds = len(list(self.root.glob("fold[0-9][0-9].json")))
                logger.warning("%s: no 'splits' or 'nfolds' key; found %d foldNN.json files", meta_path, nfolds)
            if not isinstance(nfolds, int) or isinstance(nfolds, bool):
                raise DatasetLayoutError(f"{meta_path}: 'nfolds' must be an integer, got {nfolds!r}")
            folds = tuple(f"fold{i:02d}" for i in range(nfolds))
        if len(folds) < 2 or len(set(folds)) != len(folds):
            raise DatasetLayoutError(
                f"{meta_path}: split_mode {mode!r} needs at least 2 distinct folds, got {list(folds)}")
        return folds, "folds"

    def _pick_sample_rate(self) -> int:
        rates = sorted(int(p.name) for p in self.root.iterdir() if p.is_dir() and p.name.isdigit())
        if not rates:
            raise DatasetLayoutError(
                f"{self.root}: no <sample_rate>/ audio folder (e.g. 32000/, 48000/). Expected layout: {HEAR_LAYOUT}")
        return PREFERRED_SAMPLE_RATE if PREFERRED_SAMPLE_RATE in rates else rates[-1]

    @staticmethod
    def _read_split_json(path: Path) -> dict[str, list[Any]]:
        require_file(path, HEAR_LAYOUT)
        try:
            entries = json.loads(path.read_text(encoding="utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetLayoutError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(entries, dict) or not all(isinstance(v, list) for v in entries.values()):
            raise DatasetLayoutError(f"{path}: must be a JSON object mapping file name -> list")
        if not entries:
            raise DatasetLayoutError(f"{path}: no clips")
        return entries

    @staticmethod
    def _main_metric(evaluation: Any, multilabel: bool, meta_path: Path) -> MainMetric:
        fallback: MainMetric = "map" if multilabel else "accuracy"
        if not evaluation or not isinstance(evaluation, list):
            logger.warning("%s: no 'evaluation' list; using %s", meta_path, fallback)
            return fallback
        first = str(evaluation[0])
        if first in _METRICS:
            return _METRICS[first]
        logger.warning("%s: main metric %r is not supported; using %s", meta_path, first, fallback)
        return fallback

    def _event_metric(self, meta_path: Path) -> str:
        if not self.evaluation:
            raise DatasetLayoutError(f"{meta_path}: an event task needs an 'evaluation' list (e.g. "
                                     f"['event_onset_200ms_fms', 'segment_1s_er'])")
        unknown = [e for e in self.evaluation if e not in EVENT_METRICS]
        if unknown:
            raise UnsupportedTaskError(f"{meta_path}: event score(s) {unknown} are not supported; known: "
                                       f"{', '.join(EVENT_METRICS)}")
        return self.evaluation[0]

    # ---------------------------------------------------------------------------------------------------------
    # clips

    @staticmethod
    def _scene_clip(fname: str, names: list[Any], json_path: Path, index: dict[str, int], n_labels: int,
                    audio_dir: Path, multilabel: bool) -> Clip:
        names = [str(n) for n in names]
        unknown = [n for n in names if n not in index]
        if unknown:
            raise DatasetLayoutError(f"{json_path}: labels {unknown} of {fname!r} are not in labelvocabulary.csv")
        if multilabel:
            target = multihot((index[n] for n in names), n_labels)
        elif len(names) == 1:
            target = multiclass_target(index[names[0]])
        else:
            raise DatasetLayoutError(f"{json_path}: multiclass task but {fname!r} has {len(names)} labels {names}")
        return Clip(Path(fname).stem, audio_dir / fname, target)

    @staticmethod
    def _event_clip(fname: str, items: list[Any], json_path: Path, index: dict[str, int], n_labels: int,
                    audio_dir: Path) -> EventClip:
        events = []
        for k, item in enumerate(items):
            where = f"{json_path}: event {k} of {fname!r}"
            if not isinstance(item, dict) or not {"label", "start", "end"} <= set(item):
                raise DatasetLayoutError(f"{where} must be an object with 'label', 'start' and 'end' (ms), got "
                                         f"{item!r}. Expected layout: {HEAR_LAYOUT}")
            label = str(item["label"])
            if label not in index:
                raise DatasetLayoutError(f"{where}: label {label!r} is not in labelvocabulary.csv")
            try:
                start, end = float(item["start"]), float(item["end"])
            except (TypeError, ValueError):
                raise DatasetLayoutError(f"{where}: 'start' and 'end' must be numbers (ms), got "
                                         f"{item['start']!r}, {item['end']!r}") from None
            if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < start:
                raise DatasetLayoutError(f"{where}: needs 0 <= start <= end, got start {start}, end {end}")
            events.append(Event(label, start, end))
        events.sort(key=lambda e: (e.start, e.label, e.end))
        target = multihot(sorted({index[e.label] for e in events}), n_labels)
        return EventClip(Path(fname).stem, audio_dir / fname, target, file_name=fname, events=tuple(events))

    def clips(self, split: str) -> list[Clip]:
        """Clips of one split (``train``/``valid``/``test`` or the folds), sorted by ``clip_id``; for event tasks
        :class:`EventClip` objects."""
        self.check_split(split)
        return list(self._clips[split])

    def reference_events(self, split: str) -> dict[str, list[dict[str, Any]]]:
        """A split's events keyed by file name, ``{"label", "start", "end"}`` in ms (the split file's format).

        Raises:
            ValueError: Not an event task, or an unknown split.
        """
        if self.embedding_type != "event":
            raise ValueError(f"task {self.spec.name} is a scene task; it has no events")
        self.check_split(split)
        return {c.file_name: [e.as_dict() for e in c.events] for c in self._clips[split]}  # type: ignore[attr-defined]


register_task("hear", HearTask, layout=HEAR_LAYOUT)
