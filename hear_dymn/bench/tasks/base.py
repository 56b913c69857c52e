"""Task abstractions for the benchmark: clips, task specs, the loader interface and the task registry.

A *task* is a dataset on disk in its official layout plus a fixed evaluation protocol. Loaders parse and
validate the metadata once, at construction, and raise :class:`DatasetLayoutError` naming the missing
file or bad column together with a description of the expected layout. ``Task.clips(split)`` returns
the clips of one split sorted by ``clip_id``.

Loaders are registered by name with :func:`register_task` and built with :func:`get_task`. A name of the
form ``"<prefix>:<rest>"`` that is not registered itself is resolved through the loader registered as
``<prefix>`` (e.g. ``"hear:esc50-v2.0.0"`` through ``"hear"``), and the loaded task's ``spec.name`` must
then equal the requested name.
"""
from __future__ import annotations

import csv
import difflib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "Clip", "TaskSpec", "Task", "DatasetLayoutError", "MissingDatasetFileError", "UnsupportedTaskError",
    "register_task", "get_task", "list_tasks", "TaskFactory",
]

MainMetric = Literal["accuracy", "map", "masked_map"]
# HEAR event (timestamp) task scores, computed with sed_eval as hear-eval-kit does (hear_dymn.bench.events)
EVENT_METRICS = ("event_onset_200ms_fms", "event_onset_50ms_fms", "event_onset_offset_50ms_20perc_fms",
                 "segment_1s_er")
EmbeddingType = Literal["scene", "event"]
SplitProtocol = Literal["folds", "train_valid_test"]


class DatasetLayoutError(ValueError):
    """The dataset on disk does not match the official layout (bad column, bad value, inconsistent files).

    The message names the offending file (and column or line where relevant) and describes the
    expected layout.
    """


class MissingDatasetFileError(DatasetLayoutError, FileNotFoundError):
    """A file or directory required by the official layout is missing.

    Also a :class:`FileNotFoundError`, so ``except FileNotFoundError`` catches it too.
    """


class UnsupportedTaskError(ValueError):
    """The dataset is valid but describes a task kind the harness does not support (e.g. HEAR event tasks)."""


@dataclass(frozen=True, eq=False)
class Clip:
    """One labelled audio clip.

    Equality is identity (the fields hold numpy arrays); compare ``clip_id`` and targets explicitly.

    Attributes:
        clip_id: Stable identifier, unique within a split (usually the file name without extension).
        path: Audio file.
        target: Multiclass tasks: 0-d ``int64`` array holding the class index. Multilabel tasks:
            ``float32`` vector of length ``num_classes`` with 1 for present classes. Read-only.
        mask: OpenMIC only: ``float32`` vector of length ``num_classes``; 1 where the label is annotated,
            0 where it is missing (unknown, not negative). ``None`` for fully labelled tasks. Read-only.
    """

    clip_id: str
    path: Path
    target: np.ndarray
    mask: np.ndarray | None = None


@dataclass(frozen=True)
class TaskSpec:
    """Static description of a task and its evaluation protocol.

    Attributes:
        name: Registry name (``"esc50"``, ``"fsd50k"``, ``"openmic"``, ``"hear:<task_name>"``).
        version: Version of the task definition; bump when splits or targets change.
        multilabel: Whether targets are multi-hot vectors (else a single class index).
        num_classes: Number of classes, read from the dataset's own metadata files.
        main_metric: ``"accuracy"``, ``"map"`` or ``"masked_map"``.
        protocol: ``"folds"`` (cross-validation over ``splits``) or ``"train_valid_test"``.
        splits: Split names in canonical order (folds, or train/valid/test-like names).
        clip_seconds: Nominal clip length in seconds; ``None`` when clips have variable length.
        labels: Class names in target-index order (``len(labels) == num_classes``).
        description: One-paragraph human-readable description, including how derived splits are made.
        notes: Statements a report must carry about how this dataset differs from the official one (e.g. which
            classes or folds an ESC-50 subset lacks, how its targets were renumbered); empty for the full dataset.
        embedding_type: ``"scene"`` (one label set per clip, scored on clip embeddings) or ``"event"`` (HEAR
            timestamp tasks: labelled time intervals per clip, scored on timestamp embeddings; ``main_metric`` is
            then one of :data:`EVENT_METRICS`).
    """

    name: str
    version: int
    multilabel: bool
    num_classes: int
    main_metric: MainMetric
    protocol: SplitProtocol
    splits: tuple[str, ...]
    clip_seconds: float | None
    labels: tuple[str, ...]
    description: str
    notes: tuple[str, ...] = ()
    embedding_type: EmbeddingType = "scene"

    def __post_init__(self) -> None:
        if self.embedding_type not in ("scene", "event"):
            raise ValueError(f"task {self.name}: unknown embedding_type {self.embedding_type!r}")
        if self.embedding_type == "event" and self.main_metric not in EVENT_METRICS:
            raise ValueError(f"task {self.name}: event task main_metric must be one of {EVENT_METRICS}, "
                             f"got {self.main_metric!r}")
        if self.embedding_type == "scene" and self.main_metric not in ("accuracy", "map", "masked_map"):
            raise ValueError(f"task {self.name}: unknown main_metric {self.main_metric!r}")
        if self.protocol not in ("folds", "train_valid_test"):
            raise ValueError(f"task {self.name}: unknown protocol {self.protocol!r}")
        if len(self.labels) != self.num_classes:
            raise ValueError(f"task {self.name}: {len(self.labels)} labels for num_classes={self.num_classes}")
        if len(set(self.splits)) != len(self.splits) or not self.splits:
            raise ValueError(f"task {self.name}: splits must be non-empty and unique, got {self.splits}")


class Task(ABC):
    """A dataset loader bound to a root directory.

    Subclasses parse and validate all metadata in ``__init__`` and set ``spec`` and ``root``.

    Attributes:
        spec: The task description.
        root: Dataset root directory.
    """

    spec: TaskSpec
    root: Path

    @abstractmethod
    def clips(self, split: str) -> list[Clip]:
        """Clips of one split, sorted by ``clip_id``.

        Args:
            split: One of ``spec.splits``.

        Raises:
            ValueError: ``split`` is not one of ``spec.splits``.
        """

    def check_split(self, split: str) -> None:
        """Raise a ``ValueError`` naming the valid splits when ``split`` is not one of ``spec.splits``."""
        if split not in self.spec.splits:
            raise ValueError(f"task {self.spec.name} has no split {split!r}; splits are {list(self.spec.splits)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.spec.name!r}, root={str(self.root)!r})"


TaskFactory = Callable[[Path], Task]

_REGISTRY: dict[str, TaskFactory] = {}
_LAYOUTS: dict[str, str] = {}


def register_task(name: str, loader_factory: TaskFactory, layout: str | None = None) -> None:
    """Register a loader factory under ``name``.

    Args:
        name: Registry name; a name ``p`` also serves ``"p:<anything>"`` lookups in :func:`get_task`.
        loader_factory: Callable taking the dataset root and returning a :class:`Task`.
        layout: The official layout in words; :func:`get_task` adds it to layout errors that do not quote it.

    Raises:
        ValueError: ``name`` is empty or already registered.
    """
    if not name:
        raise ValueError("task name must be non-empty")
    if name in _REGISTRY:
        raise ValueError(f"task {name!r} is already registered (by {_REGISTRY[name]!r})")
    _REGISTRY[name] = loader_factory
    if layout:
        _LAYOUTS[name] = layout


def list_tasks() -> list[str]:
    """Registered task names, sorted."""
    return sorted(_REGISTRY)


def _load(name: str, root: Path) -> Task:
    try:
        return _REGISTRY[name](root)
    except DatasetLayoutError as err:
        layout = _LAYOUTS.get(name)
        if layout is None or "Expected layout" in str(err):
            raise
        raise type(err)(f"{str(err).rstrip('.')}. Expected layout: {layout}") from err


def get_task(name: str, root: str | os.PathLike[str]) -> Task:
    """Build the task ``name`` reading the dataset at ``root``.

    Args:
        name: A registered name, or ``"<prefix>:<rest>"`` where ``<prefix>`` is registered.
        root: Dataset root directory in the task's official layout.

    Returns:
        The constructed (validated) task.

    Raises:
        KeyError: Unknown name (the message suggests close matches).
        DatasetLayoutError: The dataset at ``root`` does not match the layout, or (prefixed names) the
            loaded task has a different name.
    """
    root = Path(root)
    if name in _REGISTRY:
        return _load(name, root)
    prefix, sep, _ = name.partition(":")
    if sep and prefix in _REGISTRY:
        task = _load(prefix, root)
        if task.spec.name != name:
            raise DatasetLayoutError(f"requested task {name!r} but the dataset at {root} is {task.spec.name!r}")
        return task
    check_task_name(name)
    raise AssertionError("unreachable")  # check_task_name raised


def check_task_name(name: str) -> None:
    """Raise ``KeyError`` (suggesting close matches) unless :func:`get_task` knows ``name``."""
    if name in _REGISTRY or (":" in name and name.partition(":")[0] in _REGISTRY):
        return
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise KeyError(f"unknown task {name!r}{hint} (registered: {', '.join(list_tasks()) or 'none'})")


# ---------------------------------------------------------------------------------------------------------
# Helpers shared by the loaders.


def require_file(path: Path, layout: str, *, directory: bool = False) -> Path:
    """Return ``path`` if it exists (as a file, or as a directory when ``directory``), else raise.

    Args:
        path: Required path.
        layout: Description of the official layout, appended to the error message.
        directory: Require a directory instead of a file.

    Raises:
        MissingDatasetFileError: The path is missing or has the wrong type.
    """
    ok = path.is_dir() if directory else path.is_file()
    if not ok:
        kind = "directory" if directory else "file"
        raise MissingDatasetFileError(f"missing {kind} {path}. Expected layout: {layout}")
    return path


def read_csv_dicts(path: Path, layout: str, columns: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """Read a CSV file with a header row, checking that it has the required columns.

    Args:
        path: CSV file.
        layout: Layout description for error messages.
        columns: Required columns (order-free subset check).

    Returns:
        ``(line_number, row)`` pairs (1-based line numbers as in a text editor); blank lines are skipped.

    Raises:
        MissingDatasetFileError: ``path`` does not exist.
        DatasetLayoutError: The header lacks required columns or the file is not valid UTF-8 CSV.
    """
    require_file(path, layout)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:  # a BOM (spreadsheet export) is not data
            reader = csv.DictReader(fh)
            found = reader.fieldnames or []
            missing = [c for c in columns if c not in found]
            if missing:
                raise DatasetLayoutError(
                    f"{path}: missing column(s) {missing} in header {found}. Expected layout: {layout}")
            rows: list[tuple[int, dict[str, str]]] = []
            for row in reader:
                if any(isinstance(v, str) and v.strip() for v in row.values()):
                    rows.append((reader.line_num, {k: (v or "").strip() for k, v in row.items() if k is not None}))
            return rows
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetLayoutError(f"{path}: not a readable UTF-8 CSV file ({exc}). Expected layout: {layout}") from exc


def read_csv_lists(path: Path, layout: str) -> list[tuple[int, list[str]]]:
    """Read a header-less CSV file.

    Args:
        path: CSV file.
        layout: Layout description for error messages.

    Returns:
        ``(line_number, fields)`` pairs with stripped fields; blank lines are skipped.

    Raises:
        MissingDatasetFileError: ``path`` does not exist.
        DatasetLayoutError: The file is not valid UTF-8 CSV.
    """
    require_file(path, layout)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:  # a BOM (spreadsheet export) is not data
            reader = csv.reader(fh)
            return [(reader.line_num, [f.strip() for f in row]) for row in reader if any(f.strip() for f in row)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetLayoutError(f"{path}: not a readable UTF-8 CSV file ({exc}). Expected layout: {layout}") from exc


def check_audio_files(paths: Iterable[Path], layout: str, what: str) -> None:
    """Raise when any of ``paths`` is missing, naming the count and the first few.

    Args:
        paths: Audio files listed by the metadata.
        layout: Layout description for the error message.
        what: Which metadata listed them (e.g. ``"meta/esc50.csv"``).

    Raises:
        MissingDatasetFileError: At least one file is missing.
    """
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise MissingDatasetFileError(
            f"{len(missing)} audio file(s) listed in {what} are missing: {shown}{more}. Expected layout: {layout}")


def multiclass_target(index: int) -> np.ndarray:
    """Read-only 0-d ``int64`` target holding ``index``."""
    target = np.array(index, dtype=np.int64)
    target.setflags(write=False)
    return target


def multihot(indices: Iterable[int], num_classes: int) -> np.ndarray:
    """Read-only ``float32`` multi-hot vector of length ``num_classes`` with ones at ``indices``."""
    vec = np.zeros(num_classes, dtype=np.float32)
    vec[list(indices)] = 1.0
    vec.setflags(write=False)
    return vec


def frozen_array(values: np.ndarray) -> np.ndarray:
    """Read-only ``float32`` copy of ``values``."""
    out = np.array(values, dtype=np.float32)
    out.setflags(write=False)
    return out


def parse_int(value: str, path: Path, column: str, line: int, layout: str) -> int:
    """Parse an integer CSV field, raising a :class:`DatasetLayoutError` naming file, column and line."""
    try:
        return int(value.strip())
    except ValueError:
        raise DatasetLayoutError(
            f"{path}, line {line}: column {column!r} must be an integer, got {value!r}. "
            f"Expected layout: {layout}") from None
