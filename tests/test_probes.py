"""Tests for hear_dymn.bench.probes (small synthetic embeddings; the whole file runs in a few seconds)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

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
