"""What both probes share: the split containers, hear-eval-kit's fold rule, the seeded hold-out, feature
standardisation and the selection helpers."""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..metrics import Metric

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# Data containers


@dataclass(frozen=True)
class ProbeData:
    """One split of precomputed embeddings.

    Attributes:
        x: ``(n, d)`` float32 embeddings.
        y: ``(n,)`` integer class indices (multiclass) or ``(n, C)`` 0/1 labels (multilabel).
        mask: optional ``(n, C)`` annotation mask (1 = label known); only for multilabel tasks.
        clip_ids: optional clip identifiers, aligned with ``x``.
    """

    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray | None = None
    clip_ids: list[str] | None = None

    def __post_init__(self) -> None:
        if self.x.ndim != 2:
            raise ValueError(f"x must be (n, d), got shape {self.x.shape}")
        if self.y.shape[0] != self.x.shape[0]:
            raise ValueError(f"{self.x.shape[0]} embeddings but {self.y.shape[0]} targets")
        if self.mask is not None and self.mask.shape != self.y.shape:
            raise ValueError(f"mask {self.mask.shape} must have the shape of y {self.y.shape}")
        if self.clip_ids is not None and len(self.clip_ids) != self.x.shape[0]:
            raise ValueError(f"{self.x.shape[0]} embeddings but {len(self.clip_ids)} clip ids")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, index: np.ndarray) -> ProbeData:
        """The clips at ``index`` (an integer array)."""
        return ProbeData(
            x=self.x[index],
            y=self.y[index],
            mask=None if self.mask is None else self.mask[index],
            clip_ids=None if self.clip_ids is None else [self.clip_ids[i] for i in index],
        )


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of one probe fit.

    Attributes:
        scores: ``(n_test, C)`` test scores (softmax probabilities for multiclass, sigmoid for multilabel).
        metrics: ``{metric: test value, "valid_" + metric: validation value of the selected model}``.
        selected: the chosen hyper-parameters (``{"C": ...}`` for the linear probe; the grid point, the best
            epoch and the grid index for the MLP).
        history: linear: one entry per ``C`` (``C``, ``valid_metric``, ``valid_loss``); MLP: one entry per
            validation check of every configuration (``config``, ``epoch``, ``train_loss``, ``valid_loss``,
            ``valid_metric``).
        seconds: wall time of the whole fit, selection included.
    """

    scores: np.ndarray
    metrics: dict[str, float]
    selected: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


# ----------------------------------------------------------------------------------------------------------------
# Helpers


def fold_splits(folds: Sequence[str]) -> list[tuple[list[str], str, str]]:
    """hear-eval-kit's k-fold rule (``data_splits_from_folds``): folds are sorted; for test fold k the validation
    fold is k+1 (wrapping around) and the remaining folds are for training.

    Args:
        folds: fold names, e.g. ``["fold00", ..., "fold04"]``; at least 3, all distinct.

    Returns:
        One ``(train_folds, valid_fold, test_fold)`` per fold, in sorted order of the test fold.
    """
    ordered = sorted(folds)
    if len(set(ordered)) != len(ordered):
        raise ValueError(f"fold names are not unique: {list(folds)}")
    if len(ordered) < 3:
        raise ValueError(f"need at least 3 folds (train, valid, test), got {len(ordered)}")
    splits = []
    for k, test_fold in enumerate(ordered):
        valid_fold = ordered[(k + 1) % len(ordered)]
        train_folds = [f for f in ordered if f not in (test_fold, valid_fold)]
        splits.append((train_folds, valid_fold, test_fold))
    return splits


def holdout_split(
    y: np.ndarray, *, multilabel: bool, fraction: float = 0.2, seed: int = 0, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded, stratified hold-out of about ``fraction`` of the clips.

    Multiclass clips are stratified by class; multilabel clips by their rarest (annotated) positive label, clips
    without positive labels forming one more stratum. Each stratum of at least two clips gives
    ``round(fraction * size)`` clips (at least one, never all) to the hold-out.

    Args:
        y: targets, ``(n,)`` or ``(n, C)``.
        multilabel: whether ``y`` is a label matrix.
        fraction: share of each stratum to hold out.
        seed: seed of the permutation.
        mask: optional annotation mask of a multilabel ``y``.

    Returns:
        Sorted ``(keep_index, holdout_index)``.
    """
    n = int(y.shape[0])
    if n < 2:
        raise ValueError("need at least two clips to hold out a validation split")
    rng = np.random.default_rng(seed)
    if multilabel:
        positive = np.asarray(y) != 0
        if mask is not None:
            positive &= np.asarray(mask) != 0
        freq = positive.sum(axis=0)
        rarity = np.where(positive, freq[None, :], np.iinfo(np.int64).max)
        strata = np.where(positive.any(axis=1), rarity.argmin(axis=1), -1)
    else:
        strata = np.asarray(y).astype(np.int64)
    held = []
    for stratum in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == stratum))
        if members.size < 2:
            continue
        take = min(max(int(round(fraction * members.size)), 1), members.size - 1)
        held.append(members[:take])
    holdout = np.sort(np.concatenate(held)) if held else np.empty(0, dtype=np.int64)
    if holdout.size == 0:
        holdout = np.array([int(rng.integers(n))])
    keep = np.setdiff1d(np.arange(n), holdout)
    return keep, holdout


def _num_classes(multilabel: bool, *splits: ProbeData | None) -> int:
    present = [s for s in splits if s is not None]
    if multilabel:
        widths = {s.y.shape[1] if s.y.ndim == 2 else -1 for s in present}
        if len(widths) != 1 or -1 in widths:
            raise ValueError(f"multilabel targets must be (n, C) with the same C in every split, got {widths}")
        return widths.pop()
    for s in present:
        if s.y.ndim != 1:
            raise ValueError(f"multiclass targets must be (n,) class indices, got shape {s.y.shape}")
        if s.mask is not None:
            raise ValueError("an annotation mask is only supported for multilabel tasks")
    return int(max(int(s.y.max()) for s in present if len(s))) + 1


@dataclass(frozen=True)
class _Standardizer:
    mean: np.ndarray | None
    std: np.ndarray | None

    @classmethod
    def fit(cls, x: np.ndarray, enabled: bool) -> _Standardizer:
        if not enabled:
            return cls(None, None)
        x64 = np.asarray(x, dtype=np.float64)
        mean = x64.mean(axis=0)
        std = x64.std(axis=0)
        std[std < 1e-12] = 1.0
        return cls(mean, std)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.mean is None or self.std is None:
            return np.ascontiguousarray(x, dtype=np.float32)
        return ((np.asarray(x, dtype=np.float64) - self.mean) / self.std).astype(np.float32)


def _to_maximise(value: float, metric: Metric) -> float:
    if value is None or math.isnan(value):
        return -math.inf
    return value if metric.higher_is_better else -value


def _log_loss(y: np.ndarray, probs: np.ndarray, mask: np.ndarray | None, multilabel: bool) -> float:
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1.0 - 1e-7)
    if not multilabel:
        return float(-np.mean(np.log(p[np.arange(len(y)), np.asarray(y, dtype=np.int64)])))
    t = np.asarray(y, dtype=np.float64)
    loss = -(t * np.log(p) + (1.0 - t) * np.log1p(-p))
    if mask is None:
        return float(loss.mean())
    m = np.asarray(mask, dtype=np.float64)
    return float((loss * m).sum() / max(m.sum(), 1.0))


def _carve_validation(
    train: ProbeData, valid: ProbeData | None, *, multilabel: bool, fraction: float, seed: int
) -> tuple[ProbeData, ProbeData, bool]:
    if valid is not None:
        return train, valid, False
    keep, holdout = holdout_split(train.y, multilabel=multilabel, fraction=fraction, seed=seed, mask=train.mask)
    logger.info("no validation split: holding out %d of %d training clips", holdout.size, len(train))
    return train.subset(keep), train.subset(holdout), True



def activate_scores(logits: torch.Tensor, multilabel: bool) -> np.ndarray:
    """Softmax (multiclass) or sigmoid (multilabel) scores as float32 numpy."""
    probs = torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=-1)
    return probs.float().cpu().numpy()

