"""Task metrics for the benchmark: ``METRICS`` maps a name to a :class:`Metric`.

Every metric has the signature ``fn(targets, scores, mask=None) -> float`` and returns a fraction (not %):

* ``accuracy``: ``targets`` are class indices of shape ``(n,)`` (a one-hot ``(n, C)`` matrix is also accepted),
  ``scores`` are ``(n, C)``; scikit-learn's ``accuracy_score`` of the arg-max. ``mask`` is ignored.
* ``map``: ``targets`` are 0/1 of shape ``(n, C)`` (class indices are one-hot encoded); average precision per
  class, macro-averaged over the classes with at least one positive. ``mask`` is ignored.
* ``masked_map``: OpenMIC-style partially annotated labels. For class ``c`` only clips with ``mask[:, c] != 0``
  take part (the semantics of scikit-learn's ``average_precision_score(t[:, c], s[:, c],
  sample_weight=mask[:, c])``, which drops zero-weight samples); the mean is taken over the classes with at least
  one annotated positive and one annotated negative. Without a mask every clip counts as annotated.

Average precision is computed by :func:`average_precision`, a vectorised re-implementation of scikit-learn's
step-wise definition ``AP = sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds (tied scores form one
threshold, sample weights scale the true/false positive counts). It returns the same values as
``sklearn.metrics.average_precision_score`` (checked in the tests) while avoiding its per-call validation cost,
which matters when a probe scores the validation set every few epochs for hundreds of classes.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import accuracy_score

logger = logging.getLogger(__name__)

MetricFn = Callable[..., float]


@dataclass(frozen=True)
class Metric:
    """A task metric.

    Attributes:
        name: key in :data:`METRICS`.
        fn: ``fn(targets, scores, mask=None) -> float``.
        higher_is_better: direction used for model selection and the leaderboard arrows.
        display: short column label, e.g. ``"acc"`` or ``"mAP"``.
    """

    name: str
    fn: MetricFn
    higher_is_better: bool = True
    display: str = ""

    def __call__(self, targets: np.ndarray, scores: np.ndarray, mask: np.ndarray | None = None) -> float:
        return self.fn(targets, scores, mask)


def average_precision(targets: np.ndarray, scores: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
    """Average precision of one binary problem, as ``sklearn.metrics.average_precision_score``.

    Args:
        targets: ``(n,)`` binary labels (non-zero is positive).
        scores: ``(n,)`` scores, higher means more likely positive.
        sample_weight: optional ``(n,)`` non-negative weights; zero-weight samples are ignored.

    Returns:
        The average precision, or ``nan`` if there is no (weighted) positive.
    """
    y = np.asarray(targets).reshape(-1) != 0
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"targets {y.shape} and scores {s.shape} differ in shape")
    if sample_weight is None:
        w = np.ones_like(s)
    else:
        w = np.asarray(sample_weight, dtype=np.float64).reshape(-1)
        if w.shape != s.shape:
            raise ValueError(f"sample_weight {w.shape} and scores {s.shape} differ in shape")
        keep = w != 0
        y, s, w = y[keep], s[keep], w[keep]
    if s.size == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, y, w = s[order], y[order], w[order]
    tps_all = np.cumsum(w * y)
    fps_all = np.cumsum(w * ~y)
    # The last index of each run of tied scores is one threshold.
    ends = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps, fps = tps_all[ends], fps_all[ends]
    if tps[-1] <= 0:
        return float("nan")
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def _as_one_hot(targets: np.ndarray, n_classes: int) -> np.ndarray:
    t = np.asarray(targets)
    if t.ndim == 2:
        return t
    if t.ndim != 1:
        raise ValueError(f"targets must be (n,) class indices or (n, C) labels, got shape {t.shape}")
    out = np.zeros((t.shape[0], n_classes), dtype=np.float32)
    out[np.arange(t.shape[0]), t.astype(np.int64)] = 1.0
    return out


def _check_2d_scores(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be (n, C), got shape {s.shape}")
    return s


def accuracy(targets: np.ndarray, scores: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Top-1 accuracy of the arg-max of ``scores``.

    Args:
        targets: ``(n,)`` class indices or ``(n, C)`` one-hot labels.
        scores: ``(n, C)`` class scores (logits or probabilities).
        mask: ignored.

    Returns:
        Fraction of clips whose arg-max score is the target class.
    """
    s = _check_2d_scores(scores)
    t = np.asarray(targets)
    if t.ndim == 2:
        t = t.argmax(axis=1)
    if t.shape[0] != s.shape[0]:
        raise ValueError(f"{t.shape[0]} targets but {s.shape[0]} score rows")
    return float(accuracy_score(t, s.argmax(axis=1)))


def mean_average_precision(targets: np.ndarray, scores: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Macro mean of per-class average precision over classes with at least one positive.

    Args:
        targets: ``(n, C)`` 0/1 labels, or ``(n,)`` class indices.
        scores: ``(n, C)`` scores.
        mask: ignored (see :func:`masked_mean_average_precision`).

    Returns:
        The mean AP, or ``nan`` if no class has a positive.
    """
    s = _check_2d_scores(scores)
    t = _as_one_hot(targets, s.shape[1])
    if t.shape != s.shape:
        raise ValueError(f"targets {t.shape} and scores {s.shape} differ in shape")
    aps = [average_precision(t[:, c], s[:, c]) for c in range(s.shape[1]) if np.any(t[:, c] != 0)]
    if not aps:
        logger.warning("mAP: no class has a positive target")
        return float("nan")
    return float(np.mean(aps))


def masked_mean_average_precision(targets: np.ndarray, scores: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean AP over partially annotated labels (OpenMIC).

    For class ``c`` only clips with ``mask[:, c] != 0`` count (mask values act as sample weights); the mean is taken
    over classes with at least one annotated positive and one annotated negative.

    Args:
        targets: ``(n, C)`` 0/1 labels; values where the mask is 0 are ignored.
        scores: ``(n, C)`` scores.
        mask: ``(n, C)`` annotation mask; ``None`` means every label is annotated.

    Returns:
        The mean AP, or ``nan`` if no class has both an annotated positive and negative.
    """
    s = _check_2d_scores(scores)
    t = _as_one_hot(targets, s.shape[1])
    if t.shape != s.shape:
        raise ValueError(f"targets {t.shape} and scores {s.shape} differ in shape")
    m = np.ones(s.shape, dtype=np.float64) if mask is None else np.asarray(mask, dtype=np.float64)
    if m.shape != s.shape:
        raise ValueError(f"mask {m.shape} and scores {s.shape} differ in shape")
    aps = []
    for c in range(s.shape[1]):
        annotated = m[:, c] != 0
        positive = t[:, c] != 0
        if np.any(annotated & positive) and np.any(annotated & ~positive):
            aps.append(average_precision(t[:, c], s[:, c], sample_weight=m[:, c]))
    if not aps:
        logger.warning("masked mAP: no class has both an annotated positive and an annotated negative")
        return float("nan")
    return float(np.mean(aps))


METRICS: dict[str, Metric] = {
    "accuracy": Metric("accuracy", accuracy, higher_is_better=True, display="acc"),
    "map": Metric("map", mean_average_precision, higher_is_better=True, display="mAP"),
    "masked_map": Metric("masked_map", masked_mean_average_precision, higher_is_better=True, display="mAP"),
}


def get_metric(name: str) -> Metric:
    """The :class:`Metric` called ``name``.

    Raises:
        KeyError: with the known names, if ``name`` is unknown.
    """
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {sorted(METRICS)}") from None
