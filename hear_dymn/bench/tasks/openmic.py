"""OpenMIC-2018 (instrument recognition with missing labels) in its official layout.

Layout (as in the Zenodo ``openmic-2018-v1.0.0`` archive)::

    <root>/openmic-2018-aggregated-labels.csv   header: sample_key,instrument,relevance,num_responses
    <root>/class-map.json                       {"<instrument>": <index>, ...}   (20 instruments)
    <root>/partitions/split01_train.csv         one sample_key per line, no header
    <root>/partitions/split01_test.csv          one sample_key per line, no header
    <root>/audio/<sample_key[:3]>/<sample_key>.ogg   10 s clips

Targets: an instrument is positive when its aggregated ``relevance`` is > 0.5, negative otherwise. The
mask is 1 where the (clip, instrument) pair appears in the labels CSV and 0 where it does not: those
labels are *missing*, not negative, and are excluded from the masked mAP.

Splits: ``test`` is ``split01_test``. ``valid`` is a deterministic subset of ``split01_train``: the
``ceil(valid_fraction * n)`` keys with the smallest SHA-1 digest of the UTF-8 ``sample_key`` (so the
choice depends only on the key set, not on file order or a random seed); ``train`` is the rest.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path

import numpy as np

from .base import (
    Clip, DatasetLayoutError, Task, TaskSpec, check_audio_files, frozen_array, read_csv_dicts, read_csv_lists,
    register_task, require_file,
)

logger = logging.getLogger(__name__)

__all__ = ["OpenMicTask", "OPENMIC_LAYOUT", "openmic_valid_keys"]

OPENMIC_LAYOUT = ("<root>/openmic-2018-aggregated-labels.csv (header sample_key,instrument,relevance,num_responses), "
                  "<root>/class-map.json (instrument -> index), <root>/partitions/split01_train.csv and "
                  "split01_test.csv (one sample_key per line, no header) and "
                  "<root>/audio/<sample_key[:3]>/<sample_key>.ogg, as in the official OpenMIC-2018 release")
LABELS_CSV = "openmic-2018-aggregated-labels.csv"
POSITIVE_THRESHOLD = 0.5


def openmic_valid_keys(train_keys: list[str], valid_fraction: float) -> set[str]:
    """Deterministic validation subset of the official training keys.

    Args:
        train_keys: Keys of ``split01_train``.
        valid_fraction: Fraction in ``[0, 1)`` moved to validation.

    Returns:
        The ``ceil(valid_fraction * len(train_keys))`` keys with the smallest SHA-1 digest.
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    count = math.ceil(valid_fraction * len(train_keys))
    ranked = sorted(train_keys, key=lambda k: (hashlib.sha1(k.encode("utf-8")).hexdigest(), k))
    return set(ranked[:count])


class OpenMicTask(Task):
    """OpenMIC-2018 loader; validates labels, class map, partitions and audio files at construction.

    Args:
        root: Dataset root (the extracted ``openmic-2018`` directory).
        valid_fraction: Fraction of ``split01_train`` held out as ``valid`` (see module docstring).

    Raises:
        MissingDatasetFileError: A metadata file, ``audio/`` or a listed audio file is missing.
        DatasetLayoutError: Bad header or class map, unknown instrument, relevance outside [0, 1],
            duplicate (sample_key, instrument) rows, or keys in both partitions. (Partition keys with no
            labels row at all are kept with an all-zero mask and a warning.)
    """

    def __init__(self, root: str | os.PathLike[str], valid_fraction: float = 0.1) -> None:
        self.root = Path(root)
        self.valid_fraction = valid_fraction
        instruments = self._read_class_map(self.root / "class-map.json")
        num_classes = len(instruments)
        col = {name: i for i, name in enumerate(instruments)}

        labels_path = self.root / LABELS_CSV
        rows = read_csv_dicts(labels_path, OPENMIC_LAYOUT, ("sample_key", "instrument", "relevance"))
        targets: dict[str, np.ndarray] = {}
        masks: dict[str, np.ndarray] = {}
        for line, row in rows:
            key, instrument = row["sample_key"], row["instrument"]
            if instrument not in col:
                raise DatasetLayoutError(
                    f"{labels_path}, line {line}: instrument {instrument!r} is not in {self.root / 'class-map.json'}")
            try:
                relevance = float(row["relevance"])
            except ValueError:
                raise DatasetLayoutError(
                    f"{labels_path}, line {line}: column 'relevance' must be a number, "
                    f"got {row['relevance']!r}") from None
            if not 0.0 <= relevance <= 1.0:
                raise DatasetLayoutError(
                    f"{labels_path}, line {line}: column 'relevance' must be in [0, 1], got {relevance}")
            if key not in targets:
                targets[key] = np.zeros(num_classes, dtype=np.float32)
                masks[key] = np.zeros(num_classes, dtype=np.float32)
            j = col[instrument]
            if masks[key][j]:
                raise DatasetLayoutError(f"{labels_path}, line {line}: duplicate row for ({key!r}, {instrument!r})")
            masks[key][j] = 1.0
            targets[key][j] = 1.0 if relevance > POSITIVE_THRESHOLD else 0.0

        train_keys = self._read_partition(self.root / "partitions" / "split01_train.csv")
        test_keys = self._read_partition(self.root / "partitions" / "split01_test.csv")
        overlap = sorted(set(train_keys) & set(test_keys))
        if overlap:
            raise DatasetLayoutError(
                f"{self.root / 'partitions'}: {len(overlap)} sample_key(s) in both split01_train.csv and "
                f"split01_test.csv, e.g. {overlap[:3]}")
        unlabelled = [k for k in train_keys + test_keys if k not in targets]
        if unlabelled:
            logger.warning("%s: %d partition sample_key(s) have no labels row (all labels masked), e.g. %s",
                           labels_path, len(unlabelled), unlabelled[:3])
            for k in unlabelled:
                targets[k] = np.zeros(num_classes, dtype=np.float32)
                masks[k] = np.zeros(num_classes, dtype=np.float32)
        audio_dir = require_file(self.root / "audio", OPENMIC_LAYOUT, directory=True)

        valid = openmic_valid_keys(train_keys, valid_fraction)
        split_keys = {
            "train": [k for k in train_keys if k not in valid],
            "valid": [k for k in train_keys if k in valid],
            "test": test_keys,
        }
        self._clips = {
            split: [Clip(k, audio_dir / k[:3] / f"{k}.ogg", frozen_array(targets[k]), frozen_array(masks[k]))
                    for k in sorted(keys)]
            for split, keys in split_keys.items()
        }
        check_audio_files((c.path for cs in self._clips.values() for c in cs), OPENMIC_LAYOUT, "partitions/")
        counts = {s: len(c) for s, c in self._clips.items()}
        annotated = float(np.mean([masks[k].mean() for k in train_keys + test_keys]))
        self.spec = TaskSpec(
            name="openmic",
            version=1,
            multilabel=True,
            num_classes=num_classes,
            main_metric="masked_map",
            protocol="train_valid_test",
            splits=("train", "valid", "test"),
            clip_seconds=10.0,
            labels=instruments,
            description=(f"OpenMIC-2018 instrument recognition: {num_classes} instruments, partial labels "
                         f"({annotated:.0%} of clip-instrument pairs annotated; missing ones are masked out). "
                         f"split01_test as test ({counts['test']} clips); valid = {counts['valid']} of "
                         f"{len(train_keys)} split01_train clips picked by smallest SHA-1 of sample_key "
                         f"(fraction {valid_fraction}); relevance > 0.5 is positive; masked mAP."),
        )
        logger.debug("loaded %r: %s", self, counts)

    @staticmethod
    def _read_class_map(path: Path) -> tuple[str, ...]:
        require_file(path, OPENMIC_LAYOUT)
        try:
            mapping = json.loads(path.read_text(encoding="utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetLayoutError(f"{path}: not valid JSON ({exc}). Expected layout: {OPENMIC_LAYOUT}") from exc
        if (not isinstance(mapping, dict) or not mapping
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in mapping.values())
                or sorted(mapping.values()) != list(range(len(mapping)))):
            raise DatasetLayoutError(
                f"{path}: must be a JSON object mapping each instrument to a distinct index 0..K-1. "
                f"Expected layout: {OPENMIC_LAYOUT}")
        return tuple(sorted(mapping, key=mapping.__getitem__))

    @staticmethod
    def _read_partition(path: Path) -> list[str]:
        keys = [fields[0] for _, fields in read_csv_lists(path, OPENMIC_LAYOUT)]
        if not keys:
            raise DatasetLayoutError(f"{path}: no sample keys. Expected layout: {OPENMIC_LAYOUT}")
        if keys[0] == "sample_key":
            raise DatasetLayoutError(f"{path}: has a header row; official partition files have none")
        if len(set(keys)) != len(keys):
            raise DatasetLayoutError(f"{path}: duplicate sample keys")
        return keys

    def clips(self, split: str) -> list[Clip]:
        """Clips of ``"train"``, ``"valid"`` or ``"test"``, sorted by ``clip_id``; each has a ``mask``."""
        self.check_split(split)
        return list(self._clips[split])


register_task("openmic", OpenMicTask, layout=OPENMIC_LAYOUT)
