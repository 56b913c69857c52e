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

HEAR's scene scores (``top1_acc``, ``mAP``, ``d_prime``, ``aucroc``) as hear-eval-kit's ``score.py`` computes them
are in :data:`HEAR_SCENE_SCORES` (see the comment above them for how they differ from ``accuracy`` and ``map``).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
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


# ----------------------------------------------------------------------------------------------------------------
# HEAR's scene scores, as hear-eval-kit 2021.1.3's score.py defines them (on the activated predictions: softmax
# probabilities for multiclass, sigmoid for multilabel; targets one-hot / multi-hot).
#
# * ``top1_acc``: arg-max of the predictions equals the arg-max of the one-hot target (first index on ties).
# * ``mAP``: macro mean over *all* classes of scikit-learn's average precision; a class without a positive counts
#   0 (scikit-learn >= 1.1; with scikit-learn 0.24 such a class made the whole mean nan).
# * ``aucroc``: macro mean over all classes of the ROC AUC; nan when any class has only positives or only
#   negatives (score.py catches scikit-learn's error and returns nan).
# * ``d_prime``: per class sqrt(2) * Phi^-1(AUC), then the mean; nan as for ``aucroc``, and +inf when a class
#   is separated perfectly (AUC 1), as score.py computes it. Non-finite values are results, not errors.


def _hear_inputs(targets: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(_check_2d_scores(scores), dtype=np.float64)
    t = np.asarray(_as_one_hot(targets, s.shape[1]), dtype=np.float64)
    if t.shape != s.shape:
        raise ValueError(f"targets {t.shape} and scores {s.shape} differ in shape")
    if s.shape[0] == 0:
        raise ValueError("no clips to score")
    return t, s


def hear_top1_acc(targets: np.ndarray, scores: np.ndarray) -> float:
    t, s = _hear_inputs(targets, scores)
    return float(np.mean(s.argmax(axis=1) == t.argmax(axis=1)))


def hear_map(targets: np.ndarray, scores: np.ndarray) -> float:
    t, s = _hear_inputs(targets, scores)
    aps = [average_precision(t[:, c], s[:, c]) if np.any(t[:, c] != 0) else 0.0 for c in range(s.shape[1])]
    return float(np.mean(aps))


def roc_auc(targets: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of one binary problem (tied scores count one half: the trapezoidal rule), nan without both a
    positive and a negative. Same values as ``sklearn.metrics.roc_auc_score``."""
    from scipy.stats import rankdata

    y = np.asarray(targets).reshape(-1) != 0
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)  # average ranks of ties
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _class_aucs(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    t, s = _hear_inputs(targets, scores)
    return np.array([roc_auc(t[:, c], s[:, c]) for c in range(s.shape[1])])


def hear_aucroc(targets: np.ndarray, scores: np.ndarray) -> float:
    return float(np.mean(_class_aucs(targets, scores)))


def hear_d_prime(targets: np.ndarray, scores: np.ndarray) -> float:
    from scipy.special import ndtri

    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.mean(ndtri(_class_aucs(targets, scores)) * np.sqrt(2.0)))


HEAR_SCENE_SCORES: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "top1_acc": hear_top1_acc, "mAP": hear_map, "d_prime": hear_d_prime, "aucroc": hear_aucroc,
}


def hear_scene_scores(targets: np.ndarray, scores: np.ndarray, names: Sequence[str] | None = None
                      ) -> dict[str, float]:
    """HEAR's scene scores ``names`` (default: all four; others are skipped) of one test split."""
    chosen = [n for n in (names or HEAR_SCENE_SCORES) if n in HEAR_SCENE_SCORES]
    return {n: HEAR_SCENE_SCORES[n](targets, scores) for n in chosen}


def score_text(value: float | None, decimals: int = 4) -> str:
    """A score for a table; non-finite values read as ``nan``, ``inf`` or ``-inf``, a missing one as ``–``."""
    if value is None:
        return "–"
    v = float(value)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{decimals}f}"
