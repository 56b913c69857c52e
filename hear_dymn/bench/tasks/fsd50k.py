"""FSD50K (multi-label sound event tagging) in its official Zenodo layout.

Layout::

    <root>/FSD50K.ground_truth/vocabulary.csv   no header; rows: index,label,mid
    <root>/FSD50K.ground_truth/dev.csv          header: fname,labels,mids,split   (split: train | val)
    <root>/FSD50K.ground_truth/eval.csv         header: fname,labels,mids
    <root>/FSD50K.dev_audio/<fname>.wav
    <root>/FSD50K.eval_audio/<fname>.wav

``labels`` is a comma-separated list of vocabulary labels (quoted in the CSV). Splits: ``train`` (dev rows
with ``split == train``), ``valid`` (dev rows with ``split == val``; the official validation set) and
``eval``. Multilabel; the class count is the vocabulary size (200 in the release); main metric mAP;
variable clip length (0.3-30 s).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from .base import (
    Clip, DatasetLayoutError, Task, TaskSpec, check_audio_files, multihot, parse_int, read_csv_dicts,
    read_csv_lists, register_task, require_file,
)

logger = logging.getLogger(__name__)

__all__ = ["Fsd50kTask", "FSD50K_LAYOUT"]

FSD50K_LAYOUT = ("<root>/FSD50K.ground_truth/{vocabulary.csv (no header: index,label,mid), "
                 "dev.csv (header fname,labels,mids,split with split train|val), eval.csv (header fname,labels,mids)}, "
                 "<root>/FSD50K.dev_audio/<fname>.wav and <root>/FSD50K.eval_audio/<fname>.wav, "
                 "as in the official Zenodo release")
_DEV_SPLITS = {"train": "train", "val": "valid"}


class Fsd50kTask(Task):
    """FSD50K loader; validates the ground-truth CSVs and the audio files at construction.

    Args:
        root: Dataset root containing ``FSD50K.ground_truth/``, ``FSD50K.dev_audio/`` and ``FSD50K.eval_audio/``.

    Raises:
        MissingDatasetFileError: A ground-truth CSV, an audio directory or a listed audio file is missing.
        DatasetLayoutError: Bad header or vocabulary row, unknown label, unknown ``split`` value, a clip
            without labels or a duplicate ``fname``.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        gt = self.root / "FSD50K.ground_truth"
        labels = self._read_vocabulary(gt / "vocabulary.csv")
        index = {label: i for i, label in enumerate(labels)}
        dev_rows = read_csv_dicts(gt / "dev.csv", FSD50K_LAYOUT, ("fname", "labels", "split"))
        eval_rows = read_csv_dicts(gt / "eval.csv", FSD50K_LAYOUT, ("fname", "labels"))
        dev_audio = require_file(self.root / "FSD50K.dev_audio", FSD50K_LAYOUT, directory=True)
        eval_audio = require_file(self.root / "FSD50K.eval_audio", FSD50K_LAYOUT, directory=True)

        self._clips: dict[str, list[Clip]] = {"train": [], "valid": [], "eval": []}
        sources = ((gt / "dev.csv", dev_rows, dev_audio), (gt / "eval.csv", eval_rows, eval_audio))
        for csv_path, rows, audio_dir in sources:
            seen: set[str] = set()
            for line, row in rows:
                fname = row["fname"]
                if not fname or fname in seen:
                    raise DatasetLayoutError(f"{csv_path}, line {line}: empty or duplicate fname {fname!r}")
                seen.add(fname)
                if "split" in row:
                    split = _DEV_SPLITS.get(row["split"])
                    if split is None:
                        raise DatasetLayoutError(
                            f"{csv_path}, line {line}: column 'split' must be 'train' or 'val', got {row['split']!r}")
                else:
                    split = "eval"
                names = [n.strip() for n in row["labels"].split(",") if n.strip()]
                if not names:
                    raise DatasetLayoutError(f"{csv_path}, line {line}: clip {fname!r} has no labels")
                unknown = [n for n in names if n not in index]
                if unknown:
                    raise DatasetLayoutError(
                        f"{csv_path}, line {line}: label(s) {unknown} of clip {fname!r} are not in "
                        f"{gt / 'vocabulary.csv'}")
                target = multihot((index[n] for n in names), len(labels))
                self._clips[split].append(Clip(fname, audio_dir / f"{fname}.wav", target))
        for split, clips in self._clips.items():
            clips.sort(key=lambda c: c.clip_id)
            if not clips:
                raise DatasetLayoutError(
                    f"FSD50K at {self.root}: split {split!r} is empty. Expected layout: {FSD50K_LAYOUT}")
        check_audio_files((c.path for cs in self._clips.values() for c in cs), FSD50K_LAYOUT, str(gt))

        counts = {s: len(c) for s, c in self._clips.items()}
        self.spec = TaskSpec(
            name="fsd50k",
            version=1,
            multilabel=True,
            num_classes=len(labels),
            main_metric="map",
            protocol="train_valid_test",
            splits=("train", "valid", "eval"),
            clip_seconds=None,
            labels=labels,
            description=(f"FSD50K multi-label tagging: {len(labels)} classes; official dev train/val split "
                         f"({counts['train']}/{counts['valid']} clips) and eval set ({counts['eval']} clips), mAP."),
        )
        logger.debug("loaded %r: %s", self, counts)

    @staticmethod
    def _read_vocabulary(path: Path) -> tuple[str, ...]:
        rows = read_csv_lists(path, FSD50K_LAYOUT)
        if not rows:
            raise DatasetLayoutError(f"{path}: empty vocabulary. Expected layout: {FSD50K_LAYOUT}")
        by_index: dict[int, str] = {}
        for line, fields in rows:
            if len(fields) < 2:
                raise DatasetLayoutError(
                    f"{path}, line {line}: expected 'index,label,mid', got {fields}. Expected layout: {FSD50K_LAYOUT}")
            if line == 1 and not fields[0].lstrip("-").isdigit():
                raise DatasetLayoutError(
                    f"{path}, line 1: looks like a header ({fields}); the official vocabulary.csv has no header. "
                    f"Expected layout: {FSD50K_LAYOUT}")
            idx = parse_int(fields[0], path, "index", line, FSD50K_LAYOUT)
            if idx in by_index or fields[1] in by_index.values():
                raise DatasetLayoutError(f"{path}, line {line}: duplicate index {idx} or label {fields[1]!r}")
            by_index[idx] = fields[1]
        if sorted(by_index) != list(range(len(by_index))):
            raise DatasetLayoutError(f"{path}: indices must cover 0..K-1 without gaps, got {sorted(by_index)}")
        return tuple(by_index[i] for i in range(len(by_index)))

    def clips(self, split: str) -> list[Clip]:
        """Clips of ``"train"``, ``"valid"`` or ``"eval"``, sorted by ``clip_id``."""
        self.check_split(split)
        return list(self._clips[split])


register_task("fsd50k", Fsd50kTask, layout=FSD50K_LAYOUT)
