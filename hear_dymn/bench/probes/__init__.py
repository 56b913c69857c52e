"""Probes on precomputed clip embeddings: a logistic-regression probe and hear-eval-kit's MLP predictor.

Both probes take :class:`ProbeData` splits (``float32`` embeddings ``x`` of shape ``(n, d)``, targets ``y`` that are
class indices ``(n,)`` for multiclass tasks or 0/1 ``(n, C)`` for multilabel tasks, an optional ``(n, C)``
annotation ``mask`` for partially labelled tasks such as OpenMIC) and return a :class:`ProbeResult` with the test
scores, the test and validation metric, the selected hyper-parameters, a training history and the wall time.
Hyper-parameters are always selected on the validation split with the task metric (``hear_dymn.bench.metrics``);
when no validation split is given, a seeded, stratified 20 % of the training split is held out
(:func:`holdout_split`).

* :mod:`.linear`: :func:`fit_linear_probe`, logistic regression (scikit-learn's objective) with all classes fitted
  jointly by L-BFGS in torch, on the CPU or a GPU.
* :mod:`.mlp`: :func:`fit_mlp_probe` and :func:`fit_mlp_folds`, hear-eval-kit's MLP predictor.
* :mod:`.common`: the split containers, the fold rule, the hold-out and feature standardisation.
"""
from .common import ProbeData, ProbeResult, activate_scores, fold_splits, holdout_split
from .linear import LINEAR_PRESETS, LinearProbeConfig, fit_linear_probe, resolve_device
from .mlp import MLP_PRESETS, MLPProbeConfig, build_mlp, fit_mlp_folds, fit_mlp_probe

__all__ = [
    "LINEAR_PRESETS",
    "MLP_PRESETS",
    "LinearProbeConfig",
    "MLPProbeConfig",
    "ProbeData",
    "ProbeResult",
    "activate_scores",
    "build_mlp",
    "fit_linear_probe",
    "fit_mlp_folds",
    "fit_mlp_probe",
    "fold_splits",
    "holdout_split",
    "resolve_device",
]
