"""ESC-50 (environmental sound classification) in its official layout, any subset of it, and ESC-10.

Layout (as in the ``karolpiczak/ESC-50`` release)::

    <root>/meta/esc50.csv      header: filename,fold,target,category,esc10,src_file,take
    <root>/audio/<filename>    5 s clips, 44.1 kHz mono WAV

Protocol: cross-validation over the official folds (``fold1`` .. ``fold5``); multiclass, main metric accuracy.

Subsets: ``esc50.csv`` may list any subset of the official rows (some classes, some folds). The classes present
are numbered 0..K-1 in the order of their official ``target`` (``Esc50Task.official_targets[i]`` is the official
target of class index ``i``; ``spec.labels`` holds their categories), and the folds present are the splits:
cross-validation runs over them (at least 2 are required; the probes need 3). Whatever differs from the full
dataset (classes absent, targets remapped, folds absent) is stated in ``spec.notes`` and in ``spec.description``.

ESC-10 (task ``esc10``): the rows whose ``esc10`` column is ``True``, read from the same files: 10 classes
(dog, rooster, rain, sea_waves, crackling_fire, crying_baby, sneezing, clock_tick, helicopter, chainsaw;
official targets 0, 1, 10, 11, 12, 20, 21, 38, 40, 41, numbered 0..9), the same 5 folds, accuracy. Only the
selected rows' audio files need to exist.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from .base import (
    Clip, DatasetLayoutError, Task, TaskSpec, check_audio_files, multiclass_target, parse_int, read_csv_dicts,
    register_task, require_file,
)

logger = logging.getLogger(__name__)

__all__ = ["Esc50Task", "Esc10Task", "ESC50_LAYOUT", "ESC50_CATEGORIES", "ESC10_TARGETS"]

ESC50_LAYOUT = ("<root>/meta/esc50.csv with header 'filename,fold,target,category,esc10,src_file,take' and "
                "<root>/audio/<filename> (5 s, 44.1 kHz WAV), as in the official ESC-50 release")
_REQUIRED_COLUMNS = ("filename", "fold", "target", "category")
_OFFICIAL_FOLDS = (1, 2, 3, 4, 5)

#: The official categories, indexed by official ``target``.
ESC50_CATEGORIES: tuple[str, ...] = (
    "dog", "rooster", "pig", "cow", "frog", "cat", "hen", "insects", "sheep", "crow",
    "rain", "sea_waves", "crackling_fire", "crickets", "chirping_birds", "water_drops", "wind", "pouring_water",
    "toilet_flush", "thunderstorm",
    "crying_baby", "sneezing", "clapping", "breathing", "coughing", "footsteps", "laughing", "brushing_teeth",
    "snoring", "drinking_sipping",
    "door_wood_knock", "mouse_click", "keyboard_typing", "door_wood_creaks", "can_opening", "washing_machine",
    "vacuum_cleaner", "clock_alarm", "clock_tick", "glass_breaking",
    "helicopter", "chainsaw", "siren", "car_horn", "engine", "train", "church_bells", "airplane", "fireworks",
    "hand_saw",
)
#: Official targets of the ESC-10 classes (rows with ``esc10 == True``).
ESC10_TARGETS: tuple[int, ...] = (0, 1, 10, 11, 12, 20, 21, 38, 40, 41)
_BOOLEANS = {"true": True, "false": False, "1": True, "0": False}


def _ranges(values: Sequence[int]) -> str:
    """``[2, 3, 4, 7]`` -> ``"2-4, 7"``."""
    parts: list[str] = []
    ordered = sorted(values)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ", ".join(parts)


class Esc50Task(Task):
    """ESC-50 loader (the whole CSV, or the ESC-10 rows); validates ``meta/esc50.csv`` and the audio files.

    Args:
        root: Dataset root containing ``meta/`` and ``audio/``.
        esc10: Keep only the rows with ``esc10 == True`` (task ``esc10``).

    Attributes:
        official_targets: The official ``target`` of each class index (``(0, 1, ..., 49)`` for the full dataset).

    Raises:
        MissingDatasetFileError: ``meta/esc50.csv``, ``audio/`` or a listed (selected) audio file is missing.
        DatasetLayoutError: Bad header, non-integer fold/target, bad ``esc10`` value, inconsistent
            target/category pairs, duplicate file names, no rows selected, or fewer than 2 folds.
    """

    def __init__(self, root: str | os.PathLike[str], esc10: bool = False) -> None:
        self.root = Path(root)
        name = "esc10" if esc10 else "esc50"
        csv_path = self.root / "meta" / "esc50.csv"
        columns = (*_REQUIRED_COLUMNS, "esc10") if esc10 else _REQUIRED_COLUMNS
        rows = read_csv_dicts(csv_path, ESC50_LAYOUT, columns)
        audio_dir = require_file(self.root / "audio", ESC50_LAYOUT, directory=True)
        if not rows:
            raise DatasetLayoutError(f"{csv_path}: no clips listed. Expected layout: {ESC50_LAYOUT}")

        categories: dict[int, str] = {}  # official target -> category, over all rows (consistency check)
        selected: list[tuple[int, str, int]] = []  # (fold, filename, official target)
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
            if esc10:
                flag = _BOOLEANS.get(row["esc10"].lower())
                if flag is None:
                    raise DatasetLayoutError(
                        f"{csv_path}, line {line}: column 'esc10' must be True or False, got {row['esc10']!r}. "
                        f"Expected layout: {ESC50_LAYOUT}")
                if not flag:
                    continue
            selected.append((fold, filename, target))
        if not selected:
            raise DatasetLayoutError(f"{csv_path}: no row has esc10 == True, so the esc10 task has no clips")

        targets = sorted({t for _, _, t in selected})
        folds = sorted({f for f, _, _ in selected})
        what = "esc10 rows of " if esc10 else ""
        if len(folds) < 2:
            raise DatasetLayoutError(
                f"{csv_path}: the {what}CSV lists fold {folds[0]} only (missing folds: "
                f"{_ranges(sorted(set(_OFFICIAL_FOLDS) - set(folds)))}); cross-validation needs at least 2 folds")
        index = {t: i for i, t in enumerate(targets)}
        check_audio_files((audio_dir / name for _, name, _ in selected), ESC50_LAYOUT, str(csv_path))

        by_fold: dict[int, list[tuple[str, Path, int]]] = {}
        for fold, filename, target in selected:
            by_fold.setdefault(fold, []).append((Path(filename).stem, audio_dir / filename, index[target]))
        self._clips = {
            f"fold{fold}": [Clip(cid, path, multiclass_target(i)) for cid, path, i in sorted(clips)]
            for fold, clips in by_fold.items()
        }
        self.official_targets = tuple(targets)
        labels = tuple(categories[t] for t in targets)
        notes = self._notes(targets, categories, folds, esc10)
        for note in notes:
            logger.info("%s at %s: %s", name, self.root, note)
        splits = tuple(f"fold{fold}" for fold in folds)
        title = "ESC-10" if esc10 else "ESC-50"
        self.spec = TaskSpec(
            name=name,
            version=1,
            multilabel=False,
            num_classes=len(targets),
            main_metric="accuracy",
            protocol="folds",
            splits=splits,
            clip_seconds=5.0,
            labels=labels,
            description=" ".join((
                f"{title} environmental sound classification: {len(targets)} classes, {len(selected)} clips of "
                f"5 s; {len(splits)}-fold cross-validation over the official folds, accuracy.", *notes)),
            notes=notes,
        )
        logger.debug("loaded %r: %d clips in %d folds", self, len(selected), len(splits))

    @staticmethod
    def _notes(targets: list[int], categories: dict[int, str], folds: list[int], esc10: bool) -> tuple[str, ...]:
        """What a reader of a result must know about how this dataset differs from the full official one."""
        official = all(t < len(ESC50_CATEGORIES) and ESC50_CATEGORIES[t] == categories[t] for t in categories)
        notes: list[str] = []
        remapped = targets != list(range(len(targets)))
        mapping = f"class indices 0..{len(targets) - 1} are official targets {_ranges(targets)} in that order"
        if esc10 and official and targets == list(ESC10_TARGETS):
            notes.append(f"ESC-10: the 10 classes marked in the official esc10 column; {mapping}; the other "
                         f"{len(ESC50_CATEGORIES) - 10} ESC-50 classes are absent.")
        elif official and len(targets) < len(ESC50_CATEGORIES):
            absent = [t for t in range(len(ESC50_CATEGORIES)) if t not in set(targets)]
            shown = ", ".join(f"{ESC50_CATEGORIES[t]} ({t})" for t in absent)
            notes.append(f"{'ESC-10 rows of a ' if esc10 else ''}subset of ESC-50: {len(targets)} of the "
                         f"{len(ESC50_CATEGORIES)} official classes present; {mapping}; absent: {shown}.")
        elif remapped or esc10:
            absent = [t for t in range(max(targets) + 1) if t not in set(targets)]
            gaps = f"; targets absent: {_ranges(absent)}" if absent else ""
            notes.append(f"{'esc10 rows only: ' if esc10 else ''}{len(targets)} classes; {mapping}{gaps}.")
        missing = sorted(set(_OFFICIAL_FOLDS) - set(folds))
        if missing:
            notes.append(f"folds present: {_ranges(folds)} (absent: {_ranges(missing)}); cross-validation runs over "
                         "the folds present.")
        return tuple(notes)

    def clips(self, split: str) -> list[Clip]:
        """Clips of one fold present (``"fold1"`` .. ``"fold5"``), sorted by ``clip_id``."""
        self.check_split(split)
        return list(self._clips[split])


class Esc10Task(Esc50Task):
    """ESC-10: the ``esc10 == True`` rows of an ESC-50 root (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        super().__init__(root, esc10=True)


register_task("esc50", Esc50Task, layout=ESC50_LAYOUT)
register_task("esc10", Esc10Task, layout=ESC50_LAYOUT)
