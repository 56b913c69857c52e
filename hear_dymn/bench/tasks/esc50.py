"""ESC-50 (environmental sound classification) in its official layout.

Layout (as in the ``karolpiczak/ESC-50`` release)::

    <root>/meta/esc50.csv      header: filename,fold,target,category,esc10,src_file,take
    <root>/audio/<filename>    5 s clips, 44.1 kHz mono WAV

Protocol: 5-fold cross-validation over the official folds (``fold1`` .. ``fold5``); multiclass, main
metric accuracy. The class count and names are read from ``esc50.csv`` (labels ordered by ``target``).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from .base import (
    Clip, DatasetLayoutError, Task, TaskSpec, check_audio_files, multiclass_target, parse_int, read_csv_dicts,
    register_task, require_file,
)

logger = logging.getLogger(__name__)

__all__ = ["Esc50Task", "ESC50_LAYOUT"]

ESC50_LAYOUT = ("<root>/meta/esc50.csv with header 'filename,fold,target,category,esc10,src_file,take' and "
                "<root>/audio/<filename> (5 s, 44.1 kHz WAV), as in the official ESC-50 release")
_REQUIRED_COLUMNS = ("filename", "fold", "target", "category")


class Esc50Task(Task):
    """ESC-50 loader; validates ``meta/esc50.csv`` and the audio files at construction.

    Args:
        root: Dataset root containing ``meta/`` and ``audio/``.

    Raises:
        MissingDatasetFileError: ``meta/esc50.csv``, ``audio/`` or a listed audio file is missing.
        DatasetLayoutError: Bad header, non-integer fold/target, inconsistent target/category pairs,
            non-contiguous targets or duplicate file names.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        csv_path = self.root / "meta" / "esc50.csv"
        rows = read_csv_dicts(csv_path, ESC50_LAYOUT, _REQUIRED_COLUMNS)
        audio_dir = require_file(self.root / "audio", ESC50_LAYOUT, directory=True)
        if not rows:
            raise DatasetLayoutError(f"{csv_path}: no clips listed. Expected layout: {ESC50_LAYOUT}")

        categories: dict[int, str] = {}
        by_fold: dict[int, list[tuple[str, Path, int]]] = {}
        seen: set[str] = set()
        for line, row in rows:
            filename = row["filename"]
            if not filename or filename in seen:
                raise DatasetLayoutError(
                    f"{csv_path}, line {line}: empty or duplicate filename {filename!r}. "
                    f"Expected layout: {ESC50_LAYOUT}")
            seen.add(filename)
            fold = parse_int(row["fold"], csv_path, "fold", line, ESC50_LAYOUT)
            target = parse_int(row["target"], csv_path, "target", line, ESC50_LAYOUT)
            if fold < 1 or target < 0:
                raise DatasetLayoutError(
                    f"{csv_path}, line {line}: fold must be >= 1 and target >= 0, got fold={fold}, target={target}")
            category = row["category"]
            if categories.setdefault(target, category) != category:
                raise DatasetLayoutError(
                    f"{csv_path}, line {line}: target {target} has category {category!r} but earlier rows say "
                    f"{categories[target]!r}")
            by_fold.setdefault(fold, []).append((Path(filename).stem, audio_dir / filename, target))

        num_classes = len(categories)
        if sorted(categories) != list(range(num_classes)):
            raise DatasetLayoutError(
                f"{csv_path}: column 'target' must cover 0..K-1 without gaps, got {sorted(categories)}")
        check_audio_files((p for clips in by_fold.values() for _, p, _ in clips), ESC50_LAYOUT, str(csv_path))

        self._clips = {
            f"fold{fold}": [Clip(cid, path, multiclass_target(t)) for cid, path, t in sorted(clips)]
            for fold, clips in by_fold.items()
        }
        splits = tuple(f"fold{fold}" for fold in sorted(by_fold))
        self.spec = TaskSpec(
            name="esc50",
            version=1,
            multilabel=False,
            num_classes=num_classes,
            main_metric="accuracy",
            protocol="folds",
            splits=splits,
            clip_seconds=5.0,
            labels=tuple(categories[i] for i in range(num_classes)),
            description=(f"ESC-50 environmental sound classification: {num_classes} classes, "
                         f"{len(seen)} clips of 5 s; {len(splits)}-fold cross-validation over the official folds, "
                         "accuracy."),
        )
        logger.debug("loaded %r: %d clips in %d folds", self, len(seen), len(splits))

    def clips(self, split: str) -> list[Clip]:
        """Clips of one official fold (``"fold1"`` .. ``"fold5"``), sorted by ``clip_id``."""
        self.check_split(split)
        return list(self._clips[split])


register_task("esc50", Esc50Task, layout=ESC50_LAYOUT)
