"""HEAR 2021 task folders as written by ``hear-preprocess`` (scene tasks only).

Layout of one task folder::

    <root>/task_metadata.json      task_name, version, embedding_type, prediction_type, split_mode,
                                   sample_duration, evaluation, nfolds, ...
    <root>/labelvocabulary.csv     header: idx,label
    <root>/<split>.json            {"<file name>": ["<label>", ...], ...}
    <root>/<sample_rate>/<split>/<file name>

Splits: ``train``, ``valid``, ``test`` when ``split_mode`` is ``"trainvaltest"``; ``fold00`` ..
``fold{nfolds-1}`` for the k-fold modes (``"folds"``, ``"presplit_kfold"``, ``"new_split_kfold"``, ...).
Audio is taken from the ``32000`` folder when present, else from the highest sample rate available
(:func:`~hear_dymn.bench.audio.read_audio` resamples). The task is registered as ``"hear"``;
``get_task("hear:<task_name>", root)`` also works and checks the name. The main metric is accuracy for
``top1_acc`` and mAP for ``mAP`` (the first entry of ``evaluation``); other metrics fall back to accuracy
for multiclass and mAP for multilabel tasks. ``TaskSpec.version`` is the first integer in the metadata's
``version`` string (1 if there is none).
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from .base import (
    Clip, DatasetLayoutError, MainMetric, SplitProtocol, Task, TaskSpec, UnsupportedTaskError, check_audio_files,
    multiclass_target, multihot, parse_int, read_csv_dicts, register_task, require_file,
)

logger = logging.getLogger(__name__)

__all__ = ["HearTask", "HEAR_LAYOUT", "PREFERRED_SAMPLE_RATE"]

HEAR_LAYOUT = ("a hear-preprocess task folder: <root>/task_metadata.json, "
               "<root>/labelvocabulary.csv (header idx,label), "
               "<root>/<split>.json (file name -> list of labels) and <root>/<sample_rate>/<split>/<file name>")
PREFERRED_SAMPLE_RATE = 32000
_METRICS: dict[str, MainMetric] = {"top1_acc": "accuracy", "mAP": "map"}
_REQUIRED_KEYS = ("task_name", "embedding_type", "prediction_type", "split_mode")


class HearTask(Task):
    """Loader for one hear-preprocess scene task folder.

    Args:
        root: The task folder (containing ``task_metadata.json``).

    Attributes:
        metadata: The parsed ``task_metadata.json``.
        audio_sample_rate: Sample rate of the audio folder used.

    Raises:
        MissingDatasetFileError: Metadata, vocabulary, a split JSON, the audio folder or an audio file is missing.
        DatasetLayoutError: Malformed metadata/vocabulary/split JSON, unknown labels, or a multiclass clip
            without exactly one label.
        UnsupportedTaskError: The task is an event (timestamp) task or has an unknown prediction type.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.metadata = meta = self._read_metadata(self.root / "task_metadata.json")
        meta_path = self.root / "task_metadata.json"
        task_name = str(meta["task_name"])
        if meta["embedding_type"] != "scene":
            raise UnsupportedTaskError(
                f"{meta_path}: HEAR task {task_name!r} has embedding_type {meta['embedding_type']!r}; "
                "only 'scene' tasks are supported (event/timestamp tasks are not)")
        prediction_type = meta["prediction_type"]
        if prediction_type not in ("multiclass", "multilabel"):
            raise UnsupportedTaskError(
                f"{meta_path}: prediction_type must be 'multiclass' or 'multilabel', got {prediction_type!r}")
        multilabel = prediction_type == "multilabel"

        labels = self._read_vocabulary(self.root / "labelvocabulary.csv")
        index = {label: i for i, label in enumerate(labels)}
        splits, protocol = self._splits(meta, meta_path)
        self.audio_sample_rate = self._pick_sample_rate()
        audio_root = self.root / str(self.audio_sample_rate)

        self._clips: dict[str, list[Clip]] = {}
        for split in splits:
            json_path = self.root / f"{split}.json"
            entries = self._read_split_json(json_path)
            clips = []
            for fname, names in entries.items():
                names = [str(n) for n in names]
                unknown = [n for n in names if n not in index]
                if unknown:
                    raise DatasetLayoutError(
                        f"{json_path}: labels {unknown} of {fname!r} are not in {self.root / 'labelvocabulary.csv'}")
                if multilabel:
                    target = multihot((index[n] for n in names), len(labels))
                elif len(names) == 1:
                    target = multiclass_target(index[names[0]])
                else:
                    raise DatasetLayoutError(
                        f"{json_path}: multiclass task but {fname!r} has {len(names)} labels {names}")
                clips.append(Clip(Path(fname).stem, audio_root / split / fname, target))
            clips.sort(key=lambda c: c.clip_id)
            self._clips[split] = clips
        check_audio_files((c.path for cs in self._clips.values() for c in cs), HEAR_LAYOUT, "the split JSON files")

        metric = self._main_metric(meta.get("evaluation"), multilabel, meta_path)
        duration = meta.get("sample_duration")
        version_match = re.search(r"\d+", str(meta.get("version", "")))
        counts = ", ".join(f"{s}: {len(c)}" for s, c in self._clips.items())
        self.spec = TaskSpec(
            name=f"hear:{task_name}",
            version=int(version_match.group()) if version_match else 1,
            multilabel=multilabel,
            num_classes=len(labels),
            main_metric=metric,
            protocol=protocol,
            splits=splits,
            clip_seconds=float(duration) if duration is not None else None,
            labels=labels,
            description=(f"HEAR task {task_name} ({meta.get('version', 'unknown version')}): {prediction_type} scene "
                         f"task, {len(labels)} classes, split_mode {meta['split_mode']} ({counts}), "
                         f"audio from the {self.audio_sample_rate} Hz folder, main metric {metric}."),
        )
        logger.debug("loaded %r: %s", self, counts)

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
        if mode == "trainvaltest":
            return ("train", "valid", "test"), "train_valid_test"
        if "fold" not in mode:
            raise UnsupportedTaskError(
                f"{meta_path}: unknown split_mode {mode!r} (expected 'trainvaltest' or a k-fold mode)")
        nfolds = meta.get("nfolds")
        if nfolds is None:
            nfolds = len(list(self.root.glob("fold[0-9][0-9].json")))
            logger.warning("%s: no 'nfolds' key; found %d foldNN.json files", meta_path, nfolds)
        if not isinstance(nfolds, int) or nfolds < 2:
            raise DatasetLayoutError(
                f"{meta_path}: 'nfolds' must be an integer >= 2 for split_mode {mode!r}, got {nfolds!r}")
        return tuple(f"fold{i:02d}" for i in range(nfolds)), "folds"

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
            raise DatasetLayoutError(f"{path}: must be a JSON object mapping file name -> list of labels")
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

    def clips(self, split: str) -> list[Clip]:
        """Clips of one split (``train``/``valid``/``test`` or ``foldNN``), sorted by ``clip_id``."""
        self.check_split(split)
        return list(self._clips[split])


register_task("hear", HearTask, layout=HEAR_LAYOUT)
