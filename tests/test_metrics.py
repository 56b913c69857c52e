"""Tests for hear_dymn.bench.metrics."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from hear_dymn.bench.metrics import METRICS, average_precision, get_metric


def test_registry_keys_and_direction():
    assert set(METRICS) >= {"accuracy", "map", "masked_map"}
    assert all(m.higher_is_better for m in METRICS.values())
    with pytest.raises(KeyError, match="unknown metric"):
        get_metric("nope")


def test_accuracy_argmax_and_one_hot():
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    targets = np.array([1, 0, 0, 0])
    assert METRICS["accuracy"].fn(targets, scores) == pytest.approx(0.75)
    assert METRICS["accuracy"](np.eye(2)[targets], scores) == pytest.approx(0.75)


@pytest.mark.parametrize("weighted", [False, True])
def test_average_precision_matches_sklearn_with_ties(weighted):
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(5, 60))
        y = (rng.random(n) < 0.3).astype(int)
        y[0] = 1
        s = np.round(rng.random(n), 1)  # many ties
        w = rng.integers(0, 3, n).astype(float) if weighted else None
        if w is not None:
            w[0] = 1.0
        expected = average_precision_score(y, s, sample_weight=w)
        assert average_precision(y, s, w) == pytest.approx(expected, abs=1e-12)


def test_map_skips_classes_without_positive():
    rng = np.random.default_rng(1)
    t = (rng.random((50, 4)) < 0.4).astype(int)
    t[:, 3] = 0
    s = rng.random((50, 4))
    expected = np.mean([average_precision_score(t[:, c], s[:, c]) for c in range(3)])
    assert METRICS["map"].fn(t, s) == pytest.approx(expected)
    assert math.isnan(METRICS["map"].fn(np.zeros((3, 2)), np.ones((3, 2))))


def _masked_case():
    # 5 clips, 3 classes.
    targets = np.array(
        [
            [1, 0, 1],
            [0, 1, 1],
            [1, 0, 0],
            [0, 0, 0],
            [1, 1, 0],
        ]
    )
    scores = np.array(
        [
            [0.9, 0.2, 0.5],
            [0.8, 0.4, 0.5],
            [0.7, 0.9, 0.5],
            [0.6, 0.3, 0.5],
            [0.1, 0.5, 0.5],
        ]
    )
    mask = np.array(
        [
            [1, 1, 1],
            [1, 1, 1],
            [1, 1, 0],
            [1, 1, 0],
            [0, 1, 0],
        ]
    )
    return targets, scores, mask


def test_masked_map_hand_computed():
    # Class 0: clip 4 is not annotated, so the ranking is 0.9(+) 0.8(-) 0.7(+) 0.6(-):
    #   AP = 1/2 * 1/1 + 1/2 * 2/3 = 5/6.
    # Class 1: all annotated; ranking 0.9(-) 0.5(+) 0.4(+) 0.3(-) 0.2(-):
    #   AP = 1/2 * 1/2 + 1/2 * 2/3 = 7/12.
    # Class 2: the annotated clips 0 and 1 are both positive (no annotated negative) -> skipped.
    # masked mAP = (5/6 + 7/12) / 2 = 17/24.
    targets, scores, mask = _masked_case()
    assert METRICS["masked_map"].fn(targets, scores, mask) == pytest.approx(17 / 24)
    # Equivalent to sklearn with the mask as sample weight.
    expected = np.mean([average_precision_score(targets[:, c], scores[:, c], sample_weight=mask[:, c]) for c in (0, 1)])
    assert METRICS["masked_map"].fn(targets, scores, mask) == pytest.approx(expected)


def test_masked_out_wrong_label_does_not_change_score():
    targets, scores, mask = _masked_case()
    before = METRICS["masked_map"].fn(targets, scores, mask)
    corrupted = targets.copy()
    corrupted[4, 0] = 0  # not annotated
    corrupted[3, 2] = 1  # not annotated
    corrupted[2, 2] = 1  # not annotated
    assert METRICS["masked_map"].fn(corrupted, scores, mask) == pytest.approx(before)
    # Without the mask those labels do count.
    assert METRICS["masked_map"].fn(corrupted, scores) != pytest.approx(before)


def test_masked_map_without_mask_equals_map_when_all_classes_have_negatives():
    rng = np.random.default_rng(2)
    t = (rng.random((40, 5)) < 0.3).astype(int)
    t[0] = 1
    t[1] = 0
    s = rng.random((40, 5))
    assert METRICS["masked_map"].fn(t, s) == pytest.approx(METRICS["map"].fn(t, s))


# ----------------------------------------------------------------------------------------------------------------
# HEAR's scene scores (hear-eval-kit score.py semantics)


def _hear_reference(targets: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """What hear-eval-kit's score.py computes, through scikit-learn and scipy as it does."""
    import warnings

    from scipy import stats
    from sklearn.metrics import roc_auc_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ap = average_precision_score(targets, scores, average="macro")
        try:
            auc_per_class = roc_auc_score(targets, scores, average=None)
            auc = roc_auc_score(targets, scores, average="macro")
        except ValueError:
            auc_per_class, auc = np.array([np.nan]), np.nan
        d_prime = float(np.mean(stats.norm().ppf(auc_per_class) * np.sqrt(2.0)))
    top1 = float(np.mean(scores.argmax(1) == targets.argmax(1)))
    return {"top1_acc": top1, "mAP": float(ap), "d_prime": d_prime, "aucroc": float(auc)}


@pytest.mark.parametrize("multilabel", [False, True])
def test_hear_scene_scores_match_sklearn_on_random_predictions(multilabel):
    from hear_dymn.bench.metrics import hear_scene_scores

    rng = np.random.default_rng(3)
    for trial in range(10):
        n, c = 40, 5
        if multilabel:
            targets = (rng.random((n, c)) < 0.3).astype(np.float32)
            targets[:2] = 1  # every class has a positive and a negative
            targets[2:4] = 0
        else:
            targets = np.eye(c, dtype=np.float32)[np.r_[np.arange(c), rng.integers(0, c, n - c)]]
        logits = rng.normal(size=(n, c)) + 1.5 * targets
        scores = np.round(1 / (1 + np.exp(-logits)), 2)  # rounding makes ties
        ours = hear_scene_scores(targets, scores)
        ref = _hear_reference(targets, scores)
        for name in ref:
            assert ours[name] == pytest.approx(ref[name], rel=1e-12, abs=1e-12), (trial, name)


def test_hear_scene_scores_by_hand_and_non_finite_values():
    from hear_dymn.bench.metrics import hear_scene_scores, score_text

    # both classes ranked perfectly across clips (AUC 1 -> d' = +inf), yet the arg-max is class 0 for every clip
    targets = np.array([[1, 0], [0, 1], [1, 0], [0, 1]])
    scores = np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.7, 0.3]])
    got = hear_scene_scores(targets, scores)
    assert got["top1_acc"] == 0.5
    assert got["aucroc"] == 1.0 and got["d_prime"] == math.inf and got["mAP"] == 1.0
    # a class absent from the test split: its AP counts 0 (scikit-learn >= 1.1), AUC and d' are nan
    absent = hear_scene_scores(np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]]),
                               np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.5, 0.3, 0.2]]))
    assert absent["mAP"] == pytest.approx(2 / 3)
    assert math.isnan(absent["aucroc"]) and math.isnan(absent["d_prime"])
    # d' by hand: in each class 3 of the 4 (positive, negative) pairs are ordered right: AUC 0.75
    t = np.array([[1, 0], [0, 1], [1, 0], [0, 1]])
    s = np.array([[0.9, 0.1], [0.3, 0.7], [0.4, 0.6], [0.6, 0.4]])
    from scipy.stats import norm

    assert hear_scene_scores(t, s, ["d_prime"])["d_prime"] == pytest.approx(np.sqrt(2) * norm.ppf(0.75))
    assert hear_scene_scores(np.array([0, 1]), np.array([[0.6, 0.4], [0.3, 0.7]]), ["top1_acc", "pitch_acc"]) \
        == {"top1_acc": 1.0}  # class indices are accepted; unknown names are skipped
    assert [score_text(v) for v in (math.nan, math.inf, -math.inf, 0.123456, None)] == \
        ["nan", "inf", "-inf", "0.1235", "–"]
