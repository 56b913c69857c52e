"""Tests for hear_dymn.bench.probes (small synthetic embeddings; the whole file runs in a few seconds)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from sklearn.linear_model import LogisticRegression

from hear_dymn.bench.metrics import get_metric
from hear_dymn.bench.probes import linear  # the linear probe's internals (its coefficients)
from hear_dymn.bench.probes import mlp as probes  # the MLP probe's internals
from hear_dymn.bench.probes import (
    LINEAR_PRESETS,
    MLP_PRESETS,
    LinearProbeConfig,
    MLPProbeConfig,
    ProbeData,
    build_mlp,
    fit_linear_probe,
    fit_mlp_folds,
    fit_mlp_probe,
    fold_splits,
    holdout_split,
)

QUICK = MLP_PRESETS["quick"]


def _splits(data: ProbeData, n: int) -> tuple[ProbeData, ProbeData, ProbeData]:
    return data.subset(np.arange(n)), data.subset(np.arange(n, 2 * n)), data.subset(np.arange(2 * n, 3 * n))


def _multiclass(n: int, d: int = 16, k: int = 4, sep: float = 3.0, label_noise: float = 0.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * sep
    y = rng.integers(k, size=3 * n)
    x = centers[y] + rng.normal(size=(3 * n, d))
    noisy = rng.random(3 * n) < label_noise
    y = np.where(noisy, rng.integers(k, size=3 * n), y)
    return _splits(ProbeData(x.astype(np.float32), y), n)


def _multilabel(n: int, d: int = 16, c: int = 5, seed: int = 0, masked: bool = False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3 * n, d))
    w = rng.normal(size=(d, c))
    y = (x @ w > 0.5).astype(np.float32)
    mask = None
    if masked:
        mask = (rng.random(y.shape) < 0.5).astype(np.float32)
        # Labels outside the mask are garbage: a probe that used them would be misled.
        y = np.where(mask > 0, y, 1.0 - y).astype(np.float32)
    return _splits(ProbeData(x.astype(np.float32), y, mask), n)


# ------------------------------------------------------------------------------------------------ splitting


def test_fold_splits_follow_hear_eval_kit_rule():
    splits = fold_splits(["fold02", "fold00", "fold04", "fold01", "fold03"])
    assert splits[0] == (["fold02", "fold03", "fold04"], "fold01", "fold00")
    assert splits[1] == (["fold00", "fold03", "fold04"], "fold02", "fold01")
    assert splits[4] == (["fold01", "fold02", "fold03"], "fold00", "fold04")
    assert [s[2] for s in splits] == [f"fold0{i}" for i in range(5)]
    for train, valid, test in splits:
        assert valid not in train and test not in train and valid != test
        assert len(train) == 3
    with pytest.raises(ValueError):
        fold_splits(["a", "b"])
    with pytest.raises(ValueError):
        fold_splits(["a", "b", "b"])


def test_holdout_split_is_seeded_stratified_and_disjoint():
    y = np.repeat(np.arange(5), 20)
    keep, held = holdout_split(y, multilabel=False, fraction=0.2, seed=3)
    keep2, held2 = holdout_split(y, multilabel=False, fraction=0.2, seed=3)
    np.testing.assert_array_equal(held, held2)
    np.testing.assert_array_equal(keep, keep2)
    assert len(np.intersect1d(keep, held)) == 0 and len(keep) + len(held) == len(y)
    assert np.bincount(y[held]).tolist() == [4] * 5
    _, other = holdout_split(y, multilabel=False, fraction=0.2, seed=4)
    assert not np.array_equal(held, other)

    ym = (np.random.default_rng(0).random((50, 3)) < 0.3).astype(int)
    keep, held = holdout_split(ym, multilabel=True, seed=0)
    assert 5 <= len(held) <= 15 and len(keep) + len(held) == 50


# ------------------------------------------------------------------------------------------------ linear


def test_linear_multiclass_separable_and_without_valid():
    train, valid, test = _multiclass(150)
    fast = LINEAR_PRESETS["fast"]
    res = fit_linear_probe(train, valid, test, multilabel=False, metric="accuracy", cfg=fast, seed=0)
    assert res.metrics["accuracy"] > 0.95
    assert res.scores.shape == (150, 4)
    np.testing.assert_allclose(res.scores.sum(axis=1), 1.0, atol=1e-5)
    assert res.selected["C"] in fast.c_grid and len(res.history) == len(fast.c_grid)
    res2 = fit_linear_probe(train, None, test, multilabel=False, metric="accuracy", cfg=fast, seed=0)
    assert res2.metrics["accuracy"] > 0.95


def test_linear_multilabel_and_masked():
    fast = LINEAR_PRESETS["fast"]
    train, valid, test = _multilabel(200)
    res = fit_linear_probe(train, valid, test, multilabel=True, metric="map", cfg=fast, seed=0)
    assert res.metrics["map"] > 0.9 and res.scores.shape == (200, 5)
    train, valid, test = _multilabel(200, masked=True, seed=1)
    res = fit_linear_probe(train, valid, test, multilabel=True, metric="masked_map", cfg=fast, seed=0)
    assert res.metrics["masked_map"] > 0.9


def test_linear_constant_class_in_train():
    train, valid, test = _multilabel(100)
    y = train.y.copy()
    y[:, 2] = 0.0
    train = replace(train, y=y)
    res = fit_linear_probe(train, valid, test, multilabel=True, metric="map", cfg=LINEAR_PRESETS["fast"], seed=0)
    assert np.ptp(res.scores[:, 2]) == 0.0 and np.isfinite(res.metrics["map"])


def test_linear_random_labels_are_chance_level():
    train, valid, test = _multiclass(200)
    rng = np.random.default_rng(7)
    train, valid, test = (replace(s, y=rng.integers(4, size=len(s))) for s in (train, valid, test))
    res = fit_linear_probe(train, valid, test, multilabel=False, metric="accuracy", cfg=LINEAR_PRESETS["fast"], seed=0)
    assert res.metrics["accuracy"] < 0.4


def test_linear_selects_larger_c_on_easy_data():
    cfg = LinearProbeConfig()
    easy = fit_linear_probe(*_multiclass(300, d=8, k=3), multilabel=False, metric="accuracy", cfg=cfg, seed=0)
    hard_splits = _multiclass(120, d=200, k=3, sep=0.15, label_noise=0.3, seed=1)
    hard = fit_linear_probe(*hard_splits, multilabel=False, metric="accuracy", cfg=cfg, seed=0)
    assert easy.selected["C"] >= 1.0
    assert hard.selected["C"] <= 0.1
    assert cfg.with_selected(easy.selected).c_grid == (easy.selected["C"],)


# Scikit-learn as the reference: the joint torch fit in float64 against one LogisticRegression per class (multilabel)
# or one multinomial LogisticRegression, both converged to a gradient max-norm of 1e-8 (the default is 1e-4; much
# below 1e-8 both solvers stall on float64 round-off of the objective). Measured: coefficients and intercepts within
# 5.3e-7 of the largest weight, test scores within 1.3e-6.
TIGHT = dict(tol=1e-8, max_iter=10_000)
AGREE = 2e-6  # coefficients, relative to the largest weight


def _noisy_multilabel(n: int, d: int = 12, c: int = 5, seed: int = 0, masked: bool = False):
    """Labels from noisy linear scores (not separable: every C has a finite, well-conditioned optimum), feature
    scales and offsets that standardisation must undo, and class priors from 10 % to 50 %."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3 * n, d)) * rng.uniform(0.1, 10.0, size=d) + rng.normal(size=d) * 5
    scores = ((x - x.mean(axis=0)) / x.std(axis=0)) @ rng.normal(size=(d, c)) + rng.normal(size=(3 * n, c)) * 1.5
    thresholds = [np.quantile(scores[:, k], q) for k, q in enumerate(np.linspace(0.9, 0.5, c))]
    y = (scores > np.array(thresholds)).astype(np.float32)
    mask = (rng.random(y.shape) < 0.7).astype(np.float32) if masked else None
    return _splits(ProbeData(x.astype(np.float32), y, mask), n)


def _standardised(train: ProbeData, *splits: ProbeData) -> list[np.ndarray]:
    """The probe's features: standardised with training statistics (float64), rounded to float32."""
    x = train.x.astype(np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    return [((s.x.astype(np.float64) - mean) / std).astype(np.float32).astype(np.float64) for s in (train, *splits)]


def _sklearn_per_class(x: np.ndarray, data: ProbeData, c: float, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """One binary LogisticRegression per class, on the clips annotated for it: ``(C, d)`` weights, ``(C,)``
    intercepts."""
    weights, bias = [], []
    for k in range(data.y.shape[1]):
        rows = np.arange(len(data)) if data.mask is None else np.flatnonzero(data.mask[:, k])
        clf = LogisticRegression(C=c, **kwargs).fit(x[rows], data.y[rows, k])
        weights.append(clf.coef_[0])
        bias.append(clf.intercept_[0])
    return np.array(weights), np.array(bias)


def _torch_path(x: np.ndarray, data: ProbeData, cs, *, multilabel: bool, **cfg):
    n_classes = data.y.shape[1] if multilabel else int(data.y.max()) + 1
    return linear._fit_linear_path(x, data, multilabel=multilabel, n_classes=n_classes, cs=cs,
                                   cfg=LinearProbeConfig(**cfg), device=torch.device("cpu"))


@pytest.mark.parametrize("masked", [False, True], ids=["full", "masked"])
def test_joint_fit_equals_sklearn_per_class(masked: bool):
    train, valid, test = _noisy_multilabel(200, seed=3, masked=masked)
    x_train, x_test = _standardised(train, test)
    cs = (0.01, 1.0, 100.0)
    weights, bias, _ = _torch_path(x_train, train, cs, multilabel=True, precision="float64", **TIGHT)
    average_precision = get_metric("masked_map" if masked else "map")
    for i, c in enumerate(cs):
        ref_w, ref_b = _sklearn_per_class(x_train, train, c, **TIGHT)
        scale = max(np.abs(ref_w).max(), 1.0)
        assert np.abs(weights[i] - ref_w).max() < AGREE * scale, c
        assert np.abs(bias[i] - ref_b).max() < AGREE * scale, c
        # the whole probe at this C: the same test scores and test AP as scikit-learn's model
        result = fit_linear_probe(train, valid, test, multilabel=True, metric="map",
                                  cfg=LinearProbeConfig(c_grid=(c,), precision="float64", **TIGHT))
        ref_scores = 1.0 / (1.0 + np.exp(-(x_test @ ref_w.T + ref_b)))
        np.testing.assert_allclose(result.scores, ref_scores, rtol=0, atol=5e-6)
        ours = average_precision(test.y, result.scores, test.mask)
        theirs = average_precision(test.y, ref_scores, test.mask)
        assert abs(ours - theirs) < 1e-9 and 0.6 < theirs < 1.0


def test_joint_multinomial_fit_equals_sklearn():
    train, valid, test = _multiclass(150, d=10, k=4, sep=0.8, label_noise=0.2, seed=5)
    x_train, x_test = _standardised(train, test)
    cs = (0.01, 1.0, 100.0)
    weights, bias, _ = _torch_path(x_train, train, cs, multilabel=False, precision="float64", **TIGHT)
    for i, c in enumerate(cs):
        clf = LogisticRegression(C=c, **TIGHT).fit(x_train, train.y)
        scale = max(np.abs(clf.coef_).max(), 1.0)
        assert np.abs(weights[i] - clf.coef_).max() < AGREE * scale, c
        assert np.abs(bias[i] - clf.intercept_).max() < AGREE * scale, c
        result = fit_linear_probe(train, valid, test, multilabel=False, metric="accuracy",
                                  cfg=LinearProbeConfig(c_grid=(c,), precision="float64", **TIGHT))
        ref = clf.predict_proba(x_test)
        np.testing.assert_allclose(result.scores, ref, rtol=0, atol=5e-6)
        assert result.metrics["accuracy"] == np.mean(ref.argmax(axis=1) == test.y)
        log_loss = linear._log_loss(test.y, result.scores, None, False)
        assert abs(log_loss - linear._log_loss(test.y, ref, None, False)) < 1e-6


def test_two_class_task_is_one_binary_model_as_in_sklearn():
    train, valid, test = _multiclass(100, d=6, k=2, sep=0.8, label_noise=0.2, seed=2)
    x_train, _ = _standardised(train, test)
    weights, bias, _ = _torch_path(x_train, train, (1.0,), multilabel=False, precision="float64", **TIGHT)
    clf = LogisticRegression(C=1.0, **TIGHT).fit(x_train, train.y)
    assert np.abs(weights[0, 1] - clf.coef_[0]).max() < AGREE and abs(bias[0, 1] - clf.intercept_[0]) < AGREE
    assert not weights[0, 0].any() and bias[0, 0] == 0.0


@pytest.mark.parametrize("multilabel", [True, False], ids=["multilabel", "multiclass"])
def test_warm_start_along_the_path_reaches_the_cold_optimum(multilabel: bool):
    if multilabel:
        train, _, _ = _noisy_multilabel(200, seed=4, masked=True)
    else:
        train, _, _ = _multiclass(150, d=10, k=4, sep=0.8, label_noise=0.2, seed=6)
    x_train, = _standardised(train)
    cs = (1e-3, 1e-2, 0.1, 1.0, 10.0)
    warm_w, warm_b, warm_iterations = _torch_path(x_train, train, cs, multilabel=multilabel, precision="float64",
                                                  **TIGHT)
    cold_iterations = 0
    for i, c in enumerate(cs):
        cold_w, cold_b, iterations = _torch_path(x_train, train, (c,), multilabel=multilabel, precision="float64",
                                                 **TIGHT)
        cold_iterations += iterations[0]
        scale = max(np.abs(cold_w).max(), 1.0)
        assert np.abs(warm_w[i] - cold_w[0]).max() < AGREE * scale
        assert np.abs(warm_b[i] - cold_b[0]).max() < AGREE * scale
    assert sum(warm_iterations) < cold_iterations  # the point of warm starts


def _correlated_multilabel(seed: int, n: int = 160, d: int = 80, c: int = 6):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) * (0.8 ** np.arange(d))[:, None]
    x = rng.normal(size=(3 * n, d)) @ mixing + rng.normal(size=(3 * n, d)) * 0.3
    xs = (x - x.mean(axis=0)) / x.std(axis=0)
    y = (xs @ rng.normal(size=(d, c)) * 0.5 + rng.normal(size=(3 * n, c)) > 1.0).astype(np.float32)
    return _splits(ProbeData(x.astype(np.float32), y), n)


SELECTION_SEED = 2


def test_c_selection_matches_a_per_class_sklearn_sweep():
    """Correlated features, few clips: validation mAP peaks at C=1, more than 0.01 above every other C of the grid.
    The default probe (float32 products, scikit-learn's default tolerance) picks the C that a sweep of converged
    per-class scikit-learn fits picks, and its validation curve is scikit-learn's."""
    train, valid, test = _correlated_multilabel(SELECTION_SEED)
    cfg = LinearProbeConfig()
    result = fit_linear_probe(train, valid, test, multilabel=True, metric="map", cfg=cfg)
    x_train, x_valid = _standardised(train, valid)
    average_precision = get_metric("map")
    sweep = []
    for c_value in cfg.c_grid:
        w, b = _sklearn_per_class(x_train, train, c_value, max_iter=cfg.max_iter)  # lbfgs, tol 1e-4
        sweep.append(average_precision(valid.y, 1.0 / (1.0 + np.exp(-(x_valid @ w.T + b))), None))
    best = int(np.argmax(sweep))
    assert cfg.c_grid[best] == 1.0 and sweep[best] - sorted(sweep)[-2] > 0.01  # the case is clear
    assert result.selected["C"] == 1.0
    np.testing.assert_allclose([h["valid_metric"] for h in result.history], sweep, rtol=0, atol=1e-3)


def test_linear_config_and_device_errors_are_named():
    with pytest.raises(ValueError, match="unknown solver 'newton'"):
        LinearProbeConfig(solver="newton")
    with pytest.raises(ValueError, match="unknown precision"):
        LinearProbeConfig(precision="float16")
    with pytest.raises(ValueError, match="tol must be positive"):
        LinearProbeConfig(tol=0.0)
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        linear.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            linear.resolve_device("cuda")


def test_suite_runs_the_linear_probe_on_its_device(monkeypatch):
    from types import SimpleNamespace

    from hear_dymn.bench import suite

    seen = []
    monkeypatch.setattr(suite, "fit_linear_probe", lambda *args, **kwargs: seen.append(kwargs))
    cfg = suite.suite_config("quick", device="cuda:3", linear_preset="fast")
    task = SimpleNamespace(spec=SimpleNamespace(multilabel=True, main_metric="map"))
    suite.run_probe("linear", cfg, task, *_multilabel(10), seed=0)
    assert seen[0]["device"] == "cuda:3" and seen[0]["cfg"] == LINEAR_PRESETS["fast"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_joint_fit_on_cuda_equals_cpu():
    train, valid, test = _noisy_multilabel(200, seed=3, masked=True)
    cfg = LinearProbeConfig(c_grid=(0.01, 1.0), precision="float64", **TIGHT)
    cpu = fit_linear_probe(train, valid, test, multilabel=True, metric="masked_map", cfg=cfg)
    gpu = fit_linear_probe(train, valid, test, multilabel=True, metric="masked_map", cfg=cfg, device="cuda")
    np.testing.assert_allclose(gpu.scores, cpu.scores, rtol=0, atol=1e-6)
    assert gpu.selected == cpu.selected


# ------------------------------------------------------------------------------------------------ MLP


def test_hear_preset_matches_hear_eval_kit_grid():
    cfg = MLP_PRESETS["hear"]
    assert len(cfg.grid()) == 16 and cfg.grid_points == 8
    assert set(cfg.lr) == {3.2e-3, 1e-3, 3.2e-4, 1e-4} and cfg.hidden_layers == (1, 2) and cfg.hidden_dim == (1024,)
    assert (cfg.patience, cfg.max_epochs, cfg.check_val_every_n_epoch, cfg.batch_size) == (20, 500, 3, 1024)
    drawn = cfg.draw(seed=0)
    assert len(drawn) == 8 and len({i for i, _ in drawn}) == 8
    assert drawn == cfg.draw(seed=0)
    assert len(MLP_PRESETS["hear_full"].draw(0)) == 16 and len(MLP_PRESETS["fast"].draw(0)) == 2


def test_build_mlp_structure():
    point = {"hidden_layers": 2, "hidden_dim": 32, "dropout": 0.1, "initialization": "xavier_normal"}
    net = build_mlp(10, 3, point, MLP_PRESETS["hear"])
    kinds = [type(m) for m in net]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.Dropout, nn.ReLU] * 2 + [nn.Linear]
    assert net(torch.zeros(4, 10)).shape == (4, 3)
    after = build_mlp(10, 3, point, replace(MLP_PRESETS["hear"], norm_after_activation=True))
    assert [type(m) for m in after][:4] == [nn.Linear, nn.Dropout, nn.ReLU, nn.BatchNorm1d]


def test_mlp_multiclass_separable_history_and_best_epoch():
    train, valid, test = _multiclass(150)
    res = fit_mlp_probe(train, valid, test, multilabel=False, metric="accuracy", cfg=QUICK, seed=0)
    assert res.metrics["accuracy"] > 0.95
    assert res.scores.shape == (150, 4)
    assert res.history and {"epoch", "train_loss", "valid_metric", "valid_loss", "config"} <= set(res.history[0])
    best = max(h["valid_metric"] for h in res.history)
    assert res.metrics["valid_accuracy"] == pytest.approx(best)
    first_best = next(h["epoch"] for h in res.history if h["valid_metric"] == best)
    assert res.selected["epoch"] == first_best
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]


def test_mlp_early_stopping_counts_checks():
    train, valid, test = _multiclass(100)
    cfg = replace(QUICK, max_epochs=200, patience=3, check_val_every_n_epoch=2)
    res = fit_mlp_probe(train, valid, test, multilabel=False, metric="accuracy", cfg=cfg, seed=0)
    epochs = [h["epoch"] for h in res.history]
    assert all(e % 2 == 0 for e in epochs)
    assert epochs[-1] - res.selected["epoch"] == 2 * 3 and epochs[-1] < 200


def test_mlp_multilabel_and_masked():
    train, valid, test = _multilabel(200)
    res = fit_mlp_probe(train, valid, test, multilabel=True, metric="map", cfg=QUICK, seed=0)
    assert res.metrics["map"] > 0.9
    assert ((res.scores >= 0) & (res.scores <= 1)).all()
    train, valid, test = _multilabel(200, masked=True, seed=1)
    res = fit_mlp_probe(train, None, test, multilabel=True, metric="masked_map", cfg=QUICK, seed=0)
    assert res.metrics["masked_map"] > 0.9


def test_mlp_random_labels_are_chance_level():
    train, valid, test = _multiclass(200)
    rng = np.random.default_rng(11)
    train, valid, test = (replace(s, y=rng.integers(4, size=len(s))) for s in (train, valid, test))
    res = fit_mlp_probe(train, valid, test, multilabel=False, metric="accuracy", cfg=QUICK, seed=0)
    assert res.metrics["accuracy"] < 0.4


def test_mlp_is_deterministic_given_seed():
    train, valid, test = _multiclass(100, label_noise=0.2)
    cfg = replace(QUICK, lr=(3.2e-3, 1e-3), max_epochs=10)
    a = fit_mlp_probe(train, valid, test, multilabel=False, metric="accuracy", cfg=cfg, seed=5)
    b = fit_mlp_probe(train, valid, test, multilabel=False, metric="accuracy", cfg=cfg, seed=5)
    c = fit_mlp_probe(train, valid, test, multilabel=False, metric="accuracy", cfg=cfg, seed=6)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert a.selected == b.selected and a.history == b.history
    assert not np.array_equal(a.scores, c.scores)


def test_mlp_with_selected_retrains_one_point():
    train, valid, test = _multiclass(80)
    cfg = replace(QUICK, lr=(3.2e-3, 1e-3), max_epochs=5)
    res = fit_mlp_probe(train, valid, test, multilabel=False, metric="accuracy", cfg=cfg, seed=0)
    single = cfg.with_selected(res.selected)
    assert len(single.draw(0)) == 1 and single.lr == (res.selected["lr"],)
    again = fit_mlp_probe(train, valid, test, multilabel=False, metric="accuracy", cfg=single, seed=0)
    assert {h["config"] for h in again.history} == {0}


def test_probe_data_validation():
    with pytest.raises(ValueError):
        ProbeData(np.zeros((3, 2), np.float32), np.zeros(4))
    with pytest.raises(ValueError):
        ProbeData(np.zeros((3, 2), np.float32), np.zeros((3, 2)), mask=np.zeros((3, 3)))
    train, valid, test = _multiclass(20)
    with pytest.raises(KeyError):
        fit_linear_probe(train, valid, test, multilabel=False, metric="nope", cfg=LINEAR_PRESETS["fast"])
    with pytest.raises(ValueError):
        fit_mlp_probe(train, valid, test, multilabel=True, metric="map", cfg=MLPProbeConfig())


# ------------------------------------------------------------------------------------------------ MLP: stacked grid


def test_heareval_grid_draw_matches_its_predictor():
    # The 8 grid points hear-eval-kit 2021.1.3's predictor trains, in its order (from its log on a real run).
    expected = [(1, "xavier_normal", 1e-4), (2, "xavier_uniform", 1e-3), (1, "xavier_normal", 1e-3),
                (1, "xavier_normal", 3.2e-4), (2, "xavier_normal", 3.2e-4), (2, "xavier_uniform", 3.2e-4),
                (2, "xavier_normal", 3.2e-3), (2, "xavier_uniform", 3.2e-3)]
    cfg = replace(MLP_PRESETS["hear"], grid_draw="heareval")
    for seed in (0, 7):
        drawn = [(p["hidden_layers"], p["initialization"], p["lr"]) for _, p in cfg.draw(seed)]
        assert drawn == expected
    assert cfg.draw(0) != MLP_PRESETS["hear"].draw(0)
    with pytest.raises(ValueError, match="grid_draw"):
        replace(cfg, grid_draw="nope").draw(0)


@pytest.mark.parametrize("hidden_norm, after", [("batchnorm", False), ("batchnorm", True), ("layernorm", False),
                                                ("none", False)])
def test_stacked_forward_matches_build_mlp(hidden_norm: str, after: bool):
    cfg = replace(QUICK, hidden_norm=hidden_norm, norm_after_activation=after)
    members = [(3, {"hidden_layers": 2, "hidden_dim": 16, "dropout": 0.0, "initialization": "xavier_normal"}),
               (5, {"hidden_layers": 2, "hidden_dim": 16, "dropout": 0.0, "initialization": "xavier_uniform"})]
    params = probes._init_params(members, 10, 4, cfg, seed=2, device=torch.device("cpu"))
    x = torch.randn(12, 10)
    nets = []
    for index, point in members:
        torch.manual_seed(probes._config_seed(2, index))
        nets.append(build_mlp(10, 4, point, cfg))
    # Training mode (batch statistics, running-statistics update), then eval mode, model by model.
    stacked = probes._forward(params, x, cfg, None, train=True)
    for g, net in enumerate(nets):
        torch.testing.assert_close(stacked[g].t(), net.train()(x), rtol=1e-5, atol=1e-5)
    stacked = probes._eval_logits(params, x, cfg)
    for g, net in enumerate(nets):
        torch.testing.assert_close(stacked[g].t(), net.eval()(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind, hidden_norm, tol", [("multiclass", "batchnorm", 1e-4),
                                                     ("masked multilabel", "batchnorm", 5e-3),
                                                     ("masked multilabel", "none", 1e-6)])
def test_stacked_grid_equals_one_point_at_a_time(kind: str, hidden_norm: str, tol: float):
    cfg = replace(QUICK, hidden_layers=(1, 2), hidden_dim=(32,), lr=(3.2e-3, 1e-3), max_epochs=8, patience=2,
                  check_val_every_n_epoch=2, batch_size=64, initialization=("xavier_uniform", "xavier_normal"),
                  hidden_norm=hidden_norm)
    if kind == "multiclass":
        splits, kwargs = _multiclass(150, label_noise=0.2), {"multilabel": False, "metric": "accuracy"}
    else:
        splits, kwargs = _multilabel(150, masked=True), {"multilabel": True, "metric": "masked_map"}
    stacked = fit_mlp_probe(*splits, cfg=replace(cfg, stack_size=None), seed=4, **kwargs)
    single = fit_mlp_probe(*splits, cfg=replace(cfg, stack_size=1), seed=4, **kwargs)
    paired = fit_mlp_probe(*splits, cfg=replace(cfg, stack_size=2), seed=4, **kwargs)
    assert len({h["config"] for h in stacked.history}) == 8
    # Without a norm a model computes the same numbers in any stack. BatchNorm's statistics over G * width channels
    # round slightly differently from those over width channels, and Adam turns last-bit differences in near-zero
    # gradients into lr-sized steps (the masked loss has many), hence the looser tolerance there. Cross-talk
    # between stacked models (a shared statistic, a mixed-up gradient or optimizer state) would give differences
    # of the order of the scores themselves.
    for other in (single, paired):
        assert other.selected == stacked.selected
        np.testing.assert_allclose(other.scores, stacked.scores, rtol=tol, atol=tol)
        checks = [(h["config"], h["epoch"]) for h in stacked.history]
        assert [(h["config"], h["epoch"]) for h in other.history] == checks
        for a, b in zip(other.history, stacked.history):
            assert a["valid_loss"] == pytest.approx(b["valid_loss"], rel=tol, abs=tol)
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=tol, abs=tol)


def test_fit_mlp_folds_selects_on_the_first_round_only():
    train, valid, test = _multiclass(60, label_noise=0.1)
    a, b, c = train, valid, test
    rounds = [(ProbeData(np.concatenate([a.x, b.x]), np.concatenate([a.y, b.y])), c, a),
              (ProbeData(np.concatenate([b.x, c.x]), np.concatenate([b.y, c.y])), a, b),
              (ProbeData(np.concatenate([c.x, a.x]), np.concatenate([c.y, a.y])), b, c)]
    cfg = replace(QUICK, lr=(3.2e-3, 1e-4), max_epochs=6)
    results = fit_mlp_folds(rounds, multilabel=False, metric="accuracy", cfg=cfg, seed=1)
    assert len(results) == 3
    assert len({h["config"] for h in results[0].history}) == 2
    for r in results[1:]:
        assert len({h["config"] for h in r.history}) == 1
        assert {k: r.selected[k] for k in ("lr", "hidden_layers", "grid_index")} == \
            {k: results[0].selected[k] for k in ("lr", "hidden_layers", "grid_index")}
    first = fit_mlp_probe(*rounds[0], multilabel=False, metric="accuracy", cfg=cfg, seed=1)
    np.testing.assert_array_equal(first.scores, results[0].scores)
    with pytest.raises(ValueError, match="no rounds"):
        fit_mlp_folds([], multilabel=False, metric="accuracy", cfg=cfg)


def test_bfloat16_products_round_like_bfloat16_and_stay_close():
    cfg = replace(QUICK, hidden_layers=(2,), hidden_dim=(64,))
    members = [(0, {"hidden_layers": 2, "hidden_dim": 64, "dropout": 0.0, "initialization": "xavier_normal"})]
    params = probes._init_params(members, 32, 5, cfg, seed=0, device=torch.device("cpu"))
    x = torch.randn(40, 32)
    full = probes._eval_logits(params, x, cfg)
    half = probes._eval_logits(params, x.to(torch.bfloat16), replace(cfg, precision="bfloat16"))
    assert half.dtype == torch.float32
    diff = (half - full).abs().max() / full.abs().max()
    # bfloat16 keeps 8 significant bits: products differ from float32 by ~1e-3 relative, not ~1e-7 nor ~1.
    assert 1e-5 < diff < 3e-2


def test_bfloat16_probe_scores_like_float32():
    train, valid, test = _multiclass(150)
    bf16 = replace(QUICK, precision="bfloat16")
    res = fit_mlp_probe(train, valid, test, multilabel=False, metric="accuracy", cfg=bf16, seed=0)
    assert res.metrics["accuracy"] > 0.95
    train, valid, test = _multilabel(200, masked=True, seed=1)
    full = fit_mlp_probe(train, valid, test, multilabel=True, metric="masked_map", cfg=QUICK, seed=0)
    half = fit_mlp_probe(train, valid, test, multilabel=True, metric="masked_map", cfg=bf16, seed=0)
    assert half.metrics["masked_map"] == pytest.approx(full.metrics["masked_map"], abs=0.02)
    assert not np.array_equal(half.scores, full.scores)


def test_unknown_precision_is_named():
    with pytest.raises(ValueError, match="float16.*known: \\['bfloat16', 'float32'\\]"):
        MLPProbeConfig(precision="float16")


def test_patience_zero_stops_at_the_first_check_without_improvement():
    train, valid, test = _multiclass(100)
    cfg = replace(QUICK, max_epochs=60, patience=0)
    res = fit_mlp_probe(train, valid, test, multilabel=False, metric="accuracy", cfg=cfg, seed=0)
    values = [h["valid_metric"] for h in res.history]
    # every check but the last improved on the best so far; the last one did not, and stopped the training
    assert all(b > max(values[:i + 1]) for i, b in enumerate(values[1:-1])) and len(values) >= 2
    assert values[-1] <= max(values[:-1]) and res.history[-1]["epoch"] < 60


@pytest.mark.parametrize("field, value", [("grid_points", 0), ("stack_size", 0), ("patience", -1),
                                          ("max_epochs", 0), ("batch_size", 0), ("check_val_every_n_epoch", 0)])
def test_mlp_config_rejects_values_that_train_nothing(field, value):
    with pytest.raises(ValueError, match=f"{field} must be"):
        MLPProbeConfig(**{field: value})


def test_mlp_stops_a_model_at_a_non_finite_validation_score():
    # Lightning's EarlyStopping (check_finite=True), as hear-eval-kit trains: a nan check ends training at once,
    # and the model saved at the first check stays the selection.
    from hear_dymn.bench.metrics import Metric
    train, valid, test = _multiclass(60)
    calls = []

    def nan_from_third_check(targets, scores, mask=None):
        calls.append(1)
        return 0.5 if len(calls) < 3 else float("nan")

    cfg = replace(QUICK, max_epochs=50, patience=100, check_val_every_n_epoch=1, grid_points=1)
    result, _ = probes.fit_mlp_scored(train, valid, predict=[test], multilabel=False,
                                      score_fn=Metric("always_half", nan_from_third_check), cfg=cfg, seed=0)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.selected["epoch"] == 1
