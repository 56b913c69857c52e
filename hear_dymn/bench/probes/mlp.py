"""The MLP probe: hear-eval-kit's downstream predictor on precomputed embeddings.

:func:`fit_mlp_probe` follows the downstream predictor of the HEAR 2021 evaluation kit,
hearbenchmark/hear-eval-kit @ 8559649 (v2021.1.3), ``heareval/predictions/task_predictions.py``:

* Grid ``PARAM_GRID`` (L59-96): ``hidden_layers`` [1, 2], ``hidden_dim`` [1024], ``dropout`` [0.1],
  ``lr`` [3.2e-3, 1e-3, 3.2e-4, 1e-4], ``patience`` [20], ``max_epochs`` [500], ``check_val_every_n_epoch`` [3],
  ``batch_size`` [1024], ``hidden_norm`` [BatchNorm1d], ``norm_after_activation`` [False],
  ``embedding_norm`` [Identity], ``initialization`` [xavier_uniform_, xavier_normal_], ``optim`` [Adam], i.e. 16
  configurations. ``task_predictions`` (L1294-1344) seeds with 42, shuffles the grid and trains the first
  ``grid_points`` of them; ``heareval/predictions/runner.py`` defaults ``--grid-points`` to 8. The configuration
  with the best validation score (``sort_grid_points``) is kept; for k-fold tasks it is chosen on the first split
  only and retrained with the same configuration on the other splits (L1344-1395).
* Network ``FullyConnectedPrediction`` (L142-194): per hidden layer ``Linear -> hidden_norm -> Dropout -> ReLU``
  (norm after the ReLU instead when ``norm_after_activation``); a final ``Linear`` projection. Weights are
  initialised with the grid's ``initialization`` and gain ``calculate_gain(previous activation)`` (``"linear"``,
  i.e. 1, for the first layer, ``"relu"`` after a hidden layer); biases keep PyTorch's default initialisation.
* Inputs are not normalised: ``AbstractPredictionModel`` builds ``embedding_norm`` but the call in ``forward`` is
  commented out (L214, L226) and the grid only holds Identity. ``MLPProbeConfig.standardize`` (default ``False``)
  optionally standardises with training-split statistics.
* Loss: ``CrossEntropyLoss`` for multiclass (one-hot targets arg-maxed, L128-139), ``BCEWithLogitsLoss`` (mean)
  for multilabel (L179). Here masked multilabel tasks average the BCE over annotated entries only.
* Optimiser ``Adam(lr)`` with default betas and no weight decay (``configure_optimizers``, L327); here the fused
  Adam kernel is used where the device supports it (same update rule).
* Validation on the task's first score computed on the activated predictions (softmax / sigmoid) every
  ``check_val_every_n_epoch`` epochs (Lightning validates after epochs 3, 6, ...). ``EarlyStopping`` (L999-1007,
  ``min_delta`` 0, mode max) stops after ``patience`` validation checks without strict improvement;
  ``ModelCheckpoint`` keeps the best-scoring checkpoint and the test predictions come from it.
* Upstream's training loader is meant to shuffle in-memory training data (L847), but the check compares a list of
  split names with ``"train"`` and so never shuffles; shuffling is ``MLPProbeConfig.shuffle`` here (default on).
* ``MLPProbeConfig.grid_draw="heareval"`` reproduces upstream's draw of grid points (its ``ParameterGrid`` order
  shuffled by Python's ``random`` seeded 42), so the same points are trained as by its predictor;
  :func:`fit_mlp_folds` reproduces its multi-split flow (grid search on the first split, the chosen point
  retrained on the others).

The implementation keeps all tensors in memory and slices mini-batches from a per-epoch permutation of the
training tensor (no Lightning, no ``DataLoader``, no per-sample collation); a trailing mini-batch of one sample is
skipped when the network has BatchNorm layers. Networks are held with a leading model axis: with
``MLPProbeConfig.stack_size`` above 1, grid points of one network shape (hidden layers, width) train side by side
as one stacked model (each layer one batched matrix product, BatchNorm one call, Adam one fused call per learning
rate; a grid point that stops early leaves the stack). On CPU this measured no faster than one grid point at a
time (the default), since the work is the same matrix products; it saves per-step overhead where that dominates.
Each grid point is initialised exactly as :func:`build_mlp` under
``torch.manual_seed`` of a seed derived from the probe seed and its index in the full grid, draws its dropout
masks from its own generator, and sees the mini-batch order of a generator seeded by the probe seed alone, so its
training does not depend on which other points share its stack (equal up to float rounding, which BatchNorm
statistics over more channels and Adam's sensitivity to near-zero gradients can grow to ~1e-3 in the scores;
tested). Results are reproducible given ``seed`` on the same device, thread count and precision. On CPU the time
per epoch is dominated by the matrix products of the 1024-wide layers, which both implementations must do: in
``reports/probe_speed.md`` the float32 products of hear-eval-kit's own trainings alone take 29-51 % of its wall
time on full-protocol runs and ESC-50/FSD50K-sized tasks, so no float32 implementation of the same work can be 10x
faster there; this one is 1.5-3.6x faster (2.6-5.8x with bfloat16 products).
``MLPProbeConfig.precision="bfloat16"`` runs the products in bfloat16 (faster where the CPU has AMX) and
``MLPProbeConfig.device`` moves the training to a GPU.
"""
from __future__ import annotations

import functools
import itertools
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.adam import adam as adam_update

from ..metrics import Metric, get_metric
from .common import (
    ProbeData,
    ProbeResult,
    _carve_validation,
    _num_classes,
    _Standardizer,
    _to_maximise,
    activate_scores,
)

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# MLP probe (hear-eval-kit protocol)

_INITIALIZERS: dict[str, Callable[..., torch.Tensor]] = {
    "xavier_uniform": nn.init.xavier_uniform_,
    "xavier_normal": nn.init.xavier_normal_,
}
_GRID_KEYS = ("hidden_layers", "hidden_dim", "dropout", "lr", "initialization")
_PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class MLPProbeConfig:
    """MLP probe settings; tuple fields form the hyper-parameter grid.

    Attributes:
        hidden_layers: grid of hidden-layer counts.
        hidden_dim: grid of hidden widths.
        dropout: grid of dropout rates.
        lr: grid of Adam learning rates.
        initialization: grid of weight initialisations (``"xavier_uniform"``, ``"xavier_normal"``).
        hidden_norm: ``"batchnorm"``, ``"layernorm"`` or ``"none"``.
        norm_after_activation: put the norm after the ReLU instead of after the Linear.
        patience: validation checks without improvement before stopping.
        max_epochs: epoch limit.
        check_val_every_n_epoch: validate after every this many epochs.
        batch_size: training mini-batch size.
        grid_points: train this many grid points drawn from the grid; ``None`` = all, in grid order.
        grid_draw: how the ``grid_points`` are drawn: ``"seeded"`` (a permutation seeded by the probe seed) or
            ``"heareval"`` (hear-eval-kit's draw: its grid order, Python's ``random`` seeded 42, whatever the
            probe seed, so the same points as its predictor for the default grid).
        stack_size: grid points of one network shape trained side by side as one stacked model; ``None`` = all
            of them, 1 = one at a time (default: on CPU, stacking measured no faster, ``reports/probe_speed.md``).
            Results do not depend on it beyond float rounding.
        standardize: standardise inputs with training-split statistics (hear-eval-kit does not).
        shuffle: reshuffle the training clips every epoch.
        valid_fraction: hold-out share used when no validation split is given.
        eval_batch_size: batch size for validation/test forward passes.
        device: torch device for training.
        precision: ``"float32"`` (hear-eval-kit's) or ``"bfloat16"``: the matrix products of training and
            evaluation run in bfloat16 (inputs cast once, weights cast per step, products returned to float32);
            parameters, BatchNorm, loss and Adam stay in float32, as under autocast. Faster where the hardware
            has bfloat16 matrix units (measured on a CPU with AMX: ``reports/probe_speed.md``); on CPUs without
            them it can be slower. Scores differ from float32 by rounding.
    """

    hidden_layers: tuple[int, ...] = (1, 2)
    hidden_dim: tuple[int, ...] = (1024,)
    dropout: tuple[float, ...] = (0.1,)
    lr: tuple[float, ...] = (3.2e-3, 1e-3, 3.2e-4, 1e-4)
    initialization: tuple[str, ...] = ("xavier_uniform", "xavier_normal")
    hidden_norm: str = "batchnorm"
    norm_after_activation: bool = False
    patience: int = 20
    max_epochs: int = 500
    check_val_every_n_epoch: int = 3
    batch_size: int = 1024
    grid_points: int | None = 8
    grid_draw: Literal["seeded", "heareval"] = "seeded"
    stack_size: int | None = 1
    standardize: bool = False
    shuffle: bool = True
    valid_fraction: float = 0.2
    eval_batch_size: int = 8192
    device: str = "cpu"
    precision: Literal["float32", "bfloat16"] = "float32"

    def __post_init__(self) -> None:
        for name in ("grid_points", "stack_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None or a positive integer, got {value!r}")
        for name, low in (("patience", 0), ("max_epochs", 1), ("check_val_every_n_epoch", 1), ("batch_size", 1),
                          ("eval_batch_size", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.precision not in _PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; known: {sorted(_PRECISIONS)}")

    @property
    def compute_dtype(self) -> torch.dtype:
        """dtype of the matrix products."""
        return _PRECISIONS[self.precision]

    def grid(self) -> list[dict[str, Any]]:
        """Every grid point, in a fixed order."""
        values = [getattr(self, key) for key in _GRID_KEYS]
        return [dict(zip(_GRID_KEYS, combo)) for combo in itertools.product(*values)]

    def draw(self, seed: int) -> list[tuple[int, dict[str, Any]]]:
        """The grid points to train as ``(index in grid(), point)``: a sample of ``grid_points`` of them."""
        points = self.grid()
        if self.grid_points is None or self.grid_points >= len(points):
            return list(enumerate(points))
        if self.grid_draw == "seeded":
            order = [int(i) for i in np.random.default_rng(seed).permutation(len(points))]
        elif self.grid_draw == "heareval":
            # hear-eval-kit lists its grid with sklearn's ParameterGrid (keys sorted by name, the last key varying
            # fastest) and shuffles that list with Python's random seeded 42 (Lightning's seed_everything).
            keys = sorted(_GRID_KEYS)
            listing = sorted(range(len(points)), key=lambda i: [self._position(k, points[i][k]) for k in keys])
            random.Random(42).shuffle(listing)
            order = listing
        else:
            raise ValueError(f"unknown grid_draw {self.grid_draw!r} (seeded, heareval)")
        return [(i, points[i]) for i in order[: self.grid_points]]

    def _position(self, key: str, value: Any) -> int:
        return list(getattr(self, key)).index(value)

    def with_selected(self, selected: Mapping[str, Any]) -> MLPProbeConfig:
        """A copy whose grid is the single point ``selected`` (to retrain a chosen model on other folds)."""
        return replace(self, grid_points=None, **{key: (selected[key],) for key in _GRID_KEYS})


MLP_PRESETS: dict[str, MLPProbeConfig] = {
    # hear-eval-kit's default: 8 of the 16 grid points.
    "hear": MLPProbeConfig(),
    "hear_full": MLPProbeConfig(grid_points=None),
    "fast": MLPProbeConfig(
        hidden_layers=(1,), lr=(1e-3, 3.2e-4), initialization=("xavier_uniform",), max_epochs=100, patience=10,
        grid_points=None,
    ),
    "quick": MLPProbeConfig(
        hidden_layers=(1,), hidden_dim=(128,), lr=(3.2e-3,), initialization=("xavier_uniform",), max_epochs=30,
        patience=5, check_val_every_n_epoch=1, batch_size=256, grid_points=None,
    ),
}


def _norm_layer(kind: str, dim: int) -> nn.Module:
    if kind == "batchnorm":
        return nn.BatchNorm1d(dim)
    if kind == "layernorm":
        return nn.LayerNorm(dim)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown hidden_norm {kind!r} (batchnorm, layernorm, none)")


def build_mlp(n_in: int, n_out: int, point: Mapping[str, Any], cfg: MLPProbeConfig) -> nn.Sequential:
    """hear-eval-kit's ``FullyConnectedPrediction`` network for one grid point (logits out).

    Args:
        n_in: embedding size.
        n_out: number of classes.
        point: grid point with ``hidden_layers``, ``hidden_dim``, ``dropout``, ``initialization``.
        cfg: supplies ``hidden_norm`` and ``norm_after_activation``.
    """
    try:
        init = _INITIALIZERS[point["initialization"]]
    except KeyError:
        known = sorted(_INITIALIZERS)
        raise ValueError(f"unknown initialization {point['initialization']!r}; known: {known}") from None
    layers: list[nn.Module] = []
    width, previous = n_in, "linear"
    for _ in range(int(point["hidden_layers"])):
        linear = nn.Linear(width, int(point["hidden_dim"]))
        init(linear.weight, gain=nn.init.calculate_gain(previous))
        layers.append(linear)
        if not cfg.norm_after_activation:
            layers.append(_norm_layer(cfg.hidden_norm, int(point["hidden_dim"])))
        layers += [nn.Dropout(float(point["dropout"])), nn.ReLU()]
        if cfg.norm_after_activation:
            layers.append(_norm_layer(cfg.hidden_norm, int(point["hidden_dim"])))
        width, previous = int(point["hidden_dim"]), "relu"
    projection = nn.Linear(width, n_out)
    init(projection.weight, gain=nn.init.calculate_gain(previous))
    layers.append(projection)
    return nn.Sequential(*layers)


@dataclass
class _Tensors:
    x: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor | None
    data: ProbeData


def _tensors(data: ProbeData, scaler: _Standardizer, multilabel: bool, device: torch.device,
             dtype: torch.dtype) -> _Tensors:
    x = torch.from_numpy(scaler(data.x)).to(device=device, dtype=dtype)
    if multilabel:
        y = torch.from_numpy(np.asarray(data.y, dtype=np.float32)).to(device)
    else:
        y = torch.from_numpy(np.asarray(data.y, dtype=np.int64)).to(device)
    mask = None if data.mask is None else torch.from_numpy(np.asarray(data.mask, dtype=np.float32)).to(device)
    return _Tensors(x, y, mask, data)


def _config_seed(seed: int, index: int) -> int:
    return (int(seed) * 1_000_003 + 7919 * int(index)) % (2**63 - 1)


_BN_EPS, _BN_MOMENTUM, _LN_EPS = 1e-5, 0.1, 1e-5  # nn.BatchNorm1d / nn.LayerNorm defaults
_ADAM = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}  # torch.optim.Adam defaults


@dataclass
class _Params:
    """The parameters of G MLPs of one shape, stacked on a leading model axis.

    ``weights[l]`` is ``(G, fan_out, fan_in)`` (``nn.Linear.weight`` of each model) and ``biases[l]``
    ``(G, fan_out)`` for every Linear layer; per hidden layer ``norm_weights``/``norm_biases`` ``(G, width)``
    (empty without a norm) and, for BatchNorm, ``running_means``/``running_vars`` ``(G, width)``.
    """

    weights: list[torch.Tensor]
    biases: list[torch.Tensor]
    norm_weights: list[torch.Tensor]
    norm_biases: list[torch.Tensor]
    running_means: list[torch.Tensor]
    running_vars: list[torch.Tensor]

    def trainable(self) -> list[torch.Tensor]:
        return [*self.weights, *self.biases, *self.norm_weights, *self.norm_biases]

    def take(self, rows: Sequence[int], requires_grad: bool) -> _Params:
        """Detached copies of the models at ``rows``."""
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.weights[0].device)

        def pick(tensors: list[torch.Tensor], grad: bool) -> list[torch.Tensor]:
            return [t.detach().index_select(0, index).requires_grad_(grad) for t in tensors]

        return _Params(pick(self.weights, requires_grad), pick(self.biases, requires_grad),
                       pick(self.norm_weights, requires_grad), pick(self.norm_biases, requires_grad),
                       pick(self.running_means, False), pick(self.running_vars, False))


def _init_params(members: Sequence[tuple[int, Mapping[str, Any]]], n_in: int, n_out: int, cfg: MLPProbeConfig,
                 seed: int, device: torch.device) -> _Params:
    """Each model initialised exactly as :func:`build_mlp` does under ``torch.manual_seed`` of its own seed."""
    per_model: list[list[nn.Linear]] = []
    for index, point in members:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_config_seed(seed, index))
            net = build_mlp(n_in, n_out, point, cfg)
        per_model.append([m for m in net if isinstance(m, nn.Linear)])
    depth = len(per_model[0]) - 1
    width = per_model[0][0].out_features if depth else 0
    g = len(members)
    normed = depth * (cfg.hidden_norm != "none")
    batchnorm = depth * (cfg.hidden_norm == "batchnorm")

    def stacked(tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([t.detach() for t in tensors]).to(device).requires_grad_()

    return _Params(
        weights=[stacked([m[layer].weight for m in per_model]) for layer in range(depth + 1)],
        biases=[stacked([m[layer].bias for m in per_model]) for layer in range(depth + 1)],
        norm_weights=[torch.ones(g, width, device=device, requires_grad=True) for _ in range(normed)],
        norm_biases=[torch.zeros(g, width, device=device, requires_grad=True) for _ in range(normed)],
        running_means=[torch.zeros(g, width, device=device) for _ in range(batchnorm)],
        running_vars=[torch.ones(g, width, device=device) for _ in range(batchnorm)],
    )


def _norm(z: torch.Tensor, params: _Params, layer: int, cfg: MLPProbeConfig, train: bool) -> torch.Tensor:
    """Per-model norm of ``z`` ``(G, width, batch)``: nn.BatchNorm1d (batch statistics and a running-statistics
    update in training, running statistics otherwise), nn.LayerNorm, or nothing."""
    if cfg.hidden_norm == "none":
        return z
    g, width, batch = z.shape
    weight, bias = params.norm_weights[layer], params.norm_biases[layer]
    if cfg.hidden_norm == "layernorm":
        z = F.layer_norm(z.transpose(1, 2), (width,), eps=_LN_EPS).transpose(1, 2)
        return z * weight[:, :, None] + bias[:, :, None]
    # Feature-major layout: the G * width channels of (1, G * width, batch) are normalised over the batch each.
    out = F.batch_norm(z.reshape(1, g * width, batch), params.running_means[layer].view(-1),
                       params.running_vars[layer].view(-1), weight.view(-1), bias.view(-1), training=train,
                       momentum=_BN_MOMENTUM, eps=_BN_EPS)
    return out.view(g, width, batch)


def _forward(params: _Params, x: torch.Tensor, cfg: MLPProbeConfig, masks: Sequence[torch.Tensor] | None,
             train: bool) -> torch.Tensor:
    """Logits ``(G, C, batch)`` of G stacked MLPs on the shared input ``x`` ``(batch, d)``.

    Activations are kept feature-major, ``(G, width, batch)``, so BatchNorm over all models is one call. Every
    layer is one batched matrix product whose per-model shapes do not depend on G, so a model computes the same
    numbers whichever models share its stack. ``masks`` are the scaled dropout masks
    ``(G, width, batch)`` of the hidden layers (training only). The layer order is :func:`build_mlp`'s:
    Linear -> norm -> dropout -> ReLU (norm last with ``norm_after_activation``).
    """
    g = params.weights[0].shape[0]
    h = x.t().expand(g, -1, -1)
    for layer in range(len(params.weights) - 1):
        h = _linear(params, layer, h, x.dtype)
        if not cfg.norm_after_activation:
            h = _norm(h, params, layer, cfg, train)
        if masks is not None:
            h = h * masks[layer]
        h = torch.relu(h)
        if cfg.norm_after_activation:
            h = _norm(h, params, layer, cfg, train)
    return _linear(params, len(params.weights) - 1, h, x.dtype)


def _linear(params: _Params, layer: int, h: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Stacked Linear layer ``layer`` on ``h`` ``(G, fan_in, batch)``; the product runs in ``dtype`` (the input's
    dtype, see ``MLPProbeConfig.precision``) and the result is float32."""
    weight, bias = params.weights[layer], params.biases[layer][:, :, None]
    if dtype == torch.float32:
        return torch.baddbmm(bias, weight, h)
    return torch.baddbmm(bias.to(dtype), weight.to(dtype), h.to(dtype)).float()


@torch.no_grad()
def _eval_logits(params: _Params, x: torch.Tensor, cfg: MLPProbeConfig) -> torch.Tensor:
    """Logits ``(G, C, n)`` in eval mode (running BatchNorm statistics, no dropout)."""
    chunks = [_forward(params, x[i : i + cfg.eval_batch_size], cfg, None, train=False)
              for i in range(0, x.shape[0], cfg.eval_batch_size)]
    return torch.cat(chunks, dim=2)


def _stack_loss(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, multilabel: bool) -> torch.Tensor:
    """Per-model loss ``(G,)`` of logits ``(G, C, batch)``: hear-eval-kit's mean cross-entropy, or mean BCE (over
    the annotated entries only when masked)."""
    g = logits.shape[0]
    if not multilabel:
        return F.cross_entropy(logits, y.expand(g, -1), reduction="none").mean(dim=1)
    per_entry = F.binary_cross_entropy_with_logits(logits, y.t().expand(g, -1, -1), reduction="none")
    if mask is not None:
        per_entry = per_entry * mask.t()
    # Classes first, then clips: the same summation order for a model whatever the number of stacked models.
    total = per_entry.sum(dim=1).sum(dim=1)
    return total / (mask.sum().clamp_min(1.0) if mask is not None else per_entry[0].numel())


class _StackAdam:
    """torch's Adam (default betas, no weight decay), one update rule per model of a stack: the models of one
    learning rate are updated by one fused call on views of the stacked tensors (same update as ``torch.optim.Adam``
    on each model alone; the fused CPU/GPU kernel where available)."""

    def __init__(self, params: _Params, lrs: Sequence[float]) -> None:
        self.params, self.lrs = params, [float(lr) for lr in lrs]
        tensors = params.trainable()
        self.exp_avgs = [torch.zeros_like(t) for t in tensors]
        self.exp_avg_sqs = [torch.zeros_like(t) for t in tensors]
        # One step counter per model and tensor, as the fused kernel expects (float32 scalars on the device).
        self.steps = [[torch.zeros((), dtype=torch.float32, device=t.device) for t in tensors] for _ in self.lrs]
        self.fused = _fused_adam_supported(tensors[0].device)

    def take(self, params: _Params, rows: Sequence[int]) -> None:
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.exp_avgs[0].device)
        self.params = params
        self.exp_avgs = [t.index_select(0, index) for t in self.exp_avgs]
        self.exp_avg_sqs = [t.index_select(0, index) for t in self.exp_avg_sqs]
        self.steps = [self.steps[r] for r in rows]
        self.lrs = [self.lrs[r] for r in rows]

    @torch.no_grad()
    def step(self) -> None:
        tensors = self.params.trainable()
        grads = [t.grad for t in tensors]
        by_lr: dict[float, list[int]] = {}
        for row, lr in enumerate(self.lrs):
            by_lr.setdefault(lr, []).append(row)
        for lr, rows in by_lr.items():
            adam_update(
                [t.detach()[r] for r in rows for t in tensors],
                [g[r] for r in rows for g in grads],
                [m[r] for r in rows for m in self.exp_avgs],
                [v[r] for r in rows for v in self.exp_avg_sqs],
                [],
                [s for r in rows for s in self.steps[r]],
                foreach=False, fused=self.fused or None, amsgrad=False, lr=lr, maximize=False, **_ADAM,
            )
        for t in tensors:
            t.grad = None


@functools.lru_cache(maxsize=None)
def _fused_adam_supported(device: torch.device) -> bool:
    """Whether this torch build has the fused Adam kernel for ``device`` (CPU since torch 2.4, CUDA)."""
    probe = torch.zeros(1, device=device)
    try:
        adam_update([probe.clone()], [probe.clone()], [probe.clone()], [probe.clone()], [],
                    [torch.zeros((), device=device)], fused=True, amsgrad=False, lr=1e-3, maximize=False, **_ADAM)
    except (RuntimeError, NotImplementedError):
        logger.info("no fused Adam kernel for %s; using the single-tensor Adam (same update)", device)
        return False
    return True


@dataclass
class _Run:
    score: float
    value: float
    epoch: int
    state: _Params | None
    history: list[dict[str, Any]]
    seconds: float
    epochs_run: int = 0


def _stacks(points: Sequence[tuple[int, dict[str, Any]]], size: int | None) -> list[list[tuple[int, dict[str, Any]]]]:
    """Grid points grouped by network shape (hidden layers, width), in draw order, at most ``size`` per group."""
    groups: dict[tuple[int, int], list[tuple[int, dict[str, Any]]]] = {}
    for index, point in points:
        shape = (int(point["hidden_layers"]), int(point["hidden_dim"]) if int(point["hidden_layers"]) else 0)
        groups.setdefault(shape, []).append((index, point))
    limit = size or len(points)
    return [group[i : i + limit] for group in groups.values() for i in range(0, len(group), limit)]


def _train_stack(
    members: Sequence[tuple[int, dict[str, Any]]],
    train: _Tensors,
    valid: _Tensors,
    *,
    n_classes: int,
    multilabel: bool,
    score_fn: Metric,
    cfg: MLPProbeConfig,
    seed: int,
) -> dict[int, _Run]:
    """Train the grid points ``members`` (one network shape) side by side, each with its own early stopping.

    Every model sees the same mini-batches (order seeded by ``seed`` only) and draws its dropout masks from its
    own generator, so its training does not depend on which other grid points share the stack.
    """
    start = time.perf_counter()
    device = train.x.device
    params = _init_params(members, train.x.shape[1], n_classes, cfg, seed, device)
    optimizer = _StackAdam(params, [p["lr"] for _, p in members])
    dropout_gens = [torch.Generator(device=device).manual_seed(_config_seed(seed, i) ^ 0x5EED) for i, _ in members]
    dropouts = [float(p["dropout"]) for _, p in members]
    order_gen = torch.Generator().manual_seed(_config_seed(seed, -1))
    active = list(range(len(members)))  # positions in `members` of the models still training
    runs = {i: _Run(-math.inf, math.nan, 0, None, [], 0.0) for i, _ in members}
    stale = [0] * len(members)
    has_batchnorm = cfg.hidden_norm == "batchnorm" and len(params.weights) > 1
    width = params.weights[0].shape[1] if len(params.weights) > 1 else 0
    n = train.x.shape[0]
    batch = max(1, min(cfg.batch_size, n))
    check_every = max(1, cfg.check_val_every_n_epoch)

    for epoch in range(1, cfg.max_epochs + 1):
        if cfg.shuffle:
            perm = torch.randperm(n, generator=order_gen).to(device)
            xs, ys = train.x[perm], train.y[perm]
            ms = None if train.mask is None else train.mask[perm]
        else:
            xs, ys, ms = train.x, train.y, train.mask
        loss_sum = torch.zeros(len(active), device=device)
        seen = 0
        for i in range(0, n, batch):
            xb = xs[i : i + batch]
            b = xb.shape[0]
            if has_batchnorm and b < 2:
                continue
            masks = None
            if width:
                masks = [_dropout_masks([dropouts[a] for a in active], [dropout_gens[a] for a in active], b, width,
                                        device) for _ in range(len(params.weights) - 1)]
            per_model = _stack_loss(_forward(params, xb, cfg, masks, train=True), ys[i : i + batch],
                                    None if ms is None else ms[i : i + batch], multilabel)
            per_model.sum().backward()  # models share no parameters: each gets the gradient of its own loss
            optimizer.step()
            loss_sum += per_model.detach() * b
            seen += b

        finishing = epoch == cfg.max_epochs
        due = epoch % check_every == 0
        if not due and not (finishing and any(runs[members[a][0]].state is None for a in active)):
            continue
        logits = _eval_logits(params, valid.x, cfg)
        stopped = []
        for row, a in enumerate(active):
            index = members[a][0]
            run = runs[index]
            run.epochs_run = epoch
            if not due and run.state is not None:
                continue  # the final-epoch check is only for models that were never validated
            valid_loss = float(_stack_loss(logits[row : row + 1], valid.y, valid.mask, multilabel)[0])
            value = float(score_fn(valid.data.y, activate_scores(logits[row].t(), multilabel), valid.data.mask))
            run.history.append({"config": index, "epoch": epoch, "train_loss": float(loss_sum[row]) / max(seen, 1),
                                "valid_loss": valid_loss, "valid_metric": value})
            score = _to_maximise(value, score_fn)
            improved = score > run.score
            if improved or run.state is None:
                run.score, run.value, run.epoch = score, value, epoch
                run.state = params.take([row], requires_grad=False)
            if not math.isfinite(value):
                # As Lightning's EarlyStopping (check_finite=True), which hear-eval-kit uses: a non-finite
                # validation score (an event task with no event predicted) ends this model's training.
                stopped.append(row)
            elif improved:
                stale[a] = 0
            else:  # as Lightning's EarlyStopping: only a check without improvement can stop
                stale[a] += 1
                if stale[a] >= cfg.patience:
                    stopped.append(row)
        if stopped:
            keep = [row for row in range(len(active)) if row not in stopped]
            active = [active[row] for row in keep]
            if not active:
                break
            params = params.take(keep, requires_grad=True)
            optimizer.take(params, keep)
    for a in active:
        runs[members[a][0]].epochs_run = cfg.max_epochs
    seconds = time.perf_counter() - start
    for run in runs.values():
        run.seconds = seconds
    return runs


def _dropout_masks(ps: Sequence[float], gens: Sequence[torch.Generator], batch: int, width: int,
                   device: torch.device) -> torch.Tensor:
    """Scaled dropout masks ``(G, width, batch)`` (kept with probability ``1 - p``, scaled by ``1 / (1 - p)`` as in
    ``F.dropout``), each model's from its own generator. ``uniform_() < 1 - p`` is a Bernoulli draw at half the
    cost of ``bernoulli_`` on CPU."""
    out = torch.empty(len(ps), width, batch, device=device)
    for g, (p, gen) in enumerate(zip(ps, gens)):
        if p <= 0.0:
            out[g].fill_(1.0)
        elif p >= 1.0:
            out[g].zero_()
        else:
            out[g].uniform_(generator=gen).lt_(1.0 - p).div_(1.0 - p)
    return out


def fit_mlp_probe(
    train: ProbeData,
    valid: ProbeData | None,
    test: ProbeData,
    *,
    multilabel: bool,
    metric: str,
    cfg: MLPProbeConfig | None = None,
    seed: int = 0,
) -> ProbeResult:
    """hear-eval-kit's MLP predictor: grid search with early stopping on the validation metric.

    Args:
        train: training split.
        valid: validation split (early stopping and grid selection), or ``None`` to hold out
            ``cfg.valid_fraction`` of ``train`` (no refit afterwards: the held-out clips are needed for stopping).
        test: test split, scored with the best checkpoint of the best grid point.
        multilabel: sigmoid + BCE instead of softmax + cross-entropy; a ``mask`` restricts the BCE to annotated
            labels.
        metric: key of ``hear_dymn.bench.metrics.METRICS``.
        cfg: probe settings (default: ``MLP_PRESETS["hear"]``).
        seed: seeds the grid draw, the hold-out split, initialisation, dropout and mini-batch order.

    Returns:
        The :class:`ProbeResult`; ``selected`` holds the grid point, its best epoch, its index in ``cfg.grid()``
        and ``epochs_run`` (epochs it trained before stopping).
    """
    start = time.perf_counter()
    cfg = cfg or MLP_PRESETS["hear"]
    score_fn = get_metric(metric)
    n_classes = _num_classes(multilabel, train, valid, test)
    fit_data, sel_data, _ = _carve_validation(
        train, valid, multilabel=multilabel, fraction=cfg.valid_fraction, seed=seed
    )
    search = _grid_search(fit_data, sel_data, multilabel=multilabel, n_classes=n_classes, score_fn=score_fn,
                          cfg=cfg, seed=seed)
    scores = search.predict(test)
    test_value = score_fn(test.y, scores, test.mask)
    seconds = time.perf_counter() - start
    logger.info("mlp probe: selected %s, test %s=%.4f (%.1f s)", search.selected, metric, test_value, seconds)
    return ProbeResult(
        scores=scores,
        metrics={metric: float(test_value), f"valid_{metric}": float(search.best.value)},
        selected=search.selected,
        history=search.history,
        seconds=seconds,
    )


@dataclass
class _GridSearch:
    """The grid points trained on one (train, valid) pair and the one chosen by its best validation score."""

    best: _Run
    selected: dict[str, Any]  # the grid point, its best epoch, its index in ``cfg.grid()``, epochs it trained
    history: list[dict[str, Any]]
    scaler: _Standardizer
    cfg: MLPProbeConfig
    multilabel: bool

    def predict(self, data: ProbeData) -> np.ndarray:
        """The chosen model's activated scores on ``data``."""
        x = torch.from_numpy(self.scaler(data.x)).to(device=torch.device(self.cfg.device),
                                                     dtype=self.cfg.compute_dtype)
        return activate_scores(_eval_logits(self.best.state, x, self.cfg)[0].t(), self.multilabel)


def _grid_search(train: ProbeData, valid: ProbeData, *, multilabel: bool, n_classes: int, score_fn: Metric,
                 cfg: MLPProbeConfig, seed: int) -> _GridSearch:
    """Train ``cfg.draw(seed)``'s grid points with early stopping on ``score_fn`` over ``valid``; the best wins."""
    device = torch.device(cfg.device)
    scaler = _Standardizer.fit(train.x, cfg.standardize)
    train_t = _tensors(train, scaler, multilabel, device, cfg.compute_dtype)
    valid_t = _tensors(valid, scaler, multilabel, device, cfg.compute_dtype)
    points = cfg.draw(seed)
    runs: dict[int, _Run] = {}
    for members in _stacks(points, cfg.stack_size):
        runs.update(_train_stack(members, train_t, valid_t, n_classes=n_classes, multilabel=multilabel,
                                 score_fn=score_fn, cfg=cfg, seed=seed))
    history: list[dict[str, Any]] = []
    best_run: _Run | None = None
    best_index, best_point = -1, {}
    for rank, (index, point) in enumerate(points, start=1):
        run = runs[index]
        history.extend(run.history)
        logger.info("mlp probe grid point %d/%d %s: valid %s=%.4f at epoch %d of %d",
                    rank, len(points), point, score_fn.name, run.value, run.epoch, run.epochs_run)
        if best_run is None or run.score > best_run.score:
            best_run, best_index, best_point = run, index, point
    if best_run is None or best_run.state is None:
        raise RuntimeError("the MLP probe produced no validated model")
    selected = {**best_point, "epoch": best_run.epoch, "grid_index": best_index, "epochs_run": best_run.epochs_run}
    return _GridSearch(best_run, selected, history, scaler, cfg, multilabel)


def fit_mlp_folds(
    rounds: Sequence[tuple[ProbeData, ProbeData | None, ProbeData]],
    *,
    multilabel: bool,
    metric: str,
    cfg: MLPProbeConfig | None = None,
    seed: int = 0,
) -> list[ProbeResult]:
    """hear-eval-kit's multi-split flow: the grid search runs on the first round only, and the selected grid point
    is retrained (same early stopping) on every other round (``task_predictions``, L1344-1395).

    Args:
        rounds: ``(train, valid, test)`` per split, e.g. from :func:`fold_splits`, first split first.
        multilabel, metric, cfg, seed: as for :func:`fit_mlp_probe`.

    Returns:
        One :class:`ProbeResult` per round; ``selected`` holds the grid point chosen on the first round.
    """
    if not rounds:
        raise ValueError("no rounds to fit")
    cfg = cfg or MLP_PRESETS["hear"]
    first = fit_mlp_probe(*rounds[0], multilabel=multilabel, metric=metric, cfg=cfg, seed=seed)
    chosen = {key: first.selected[key] for key in _GRID_KEYS}
    single = cfg.with_selected(chosen)
    results = [first]
    for train, valid, test in rounds[1:]:
        result = fit_mlp_probe(train, valid, test, multilabel=multilabel, metric=metric, cfg=single, seed=seed)
        # Keep the grid index of the full grid so results of different rounds name the same configuration.
        results.append(replace(result, selected={**result.selected, "grid_index": first.selected["grid_index"]}))
    return results


def fit_mlp_scored(
    train: ProbeData,
    valid: ProbeData,
    *,
    predict: Sequence[ProbeData],
    multilabel: bool,
    score_fn: Metric,
    cfg: MLPProbeConfig | None = None,
    seed: int = 0,
) -> tuple[ProbeResult, list[np.ndarray]]:
    """:func:`fit_mlp_probe` with a caller's validation score, returning the selected model's scores on ``predict``.

    For protocols whose validation score is not a function of clip targets and scores alone (HEAR event tasks:
    frames are post-processed into events per file and scored with sed_eval, ``hear_dymn.bench.events``): ``score_fn``
    is called as ``score_fn(valid.y, activated valid scores, valid.mask)`` at every validation check, and its
    ``higher_is_better`` decides early stopping and the grid point. Training, the grid draw and seeding are those of
    :func:`fit_mlp_probe`.

    Returns:
        ``(result, outputs)``: ``result.metrics`` holds ``valid_<score_fn.name>`` of the selected model and
        ``result.scores`` its scores on ``predict[0]`` (empty without ``predict``); ``outputs[i]`` are its activated
        scores on ``predict[i]``.
    """
    start = time.perf_counter()
    cfg = cfg or MLP_PRESETS["hear"]
    n_classes = _num_classes(multilabel, train, valid, *predict)
    search = _grid_search(train, valid, multilabel=multilabel, n_classes=n_classes, score_fn=score_fn, cfg=cfg,
                          seed=seed)
    outputs = [search.predict(data) for data in predict]
    result = ProbeResult(scores=outputs[0] if outputs else np.zeros((0, n_classes), np.float32),
                         metrics={f"valid_{score_fn.name}": float(search.best.value)}, selected=search.selected,
                         history=search.history, seconds=time.perf_counter() - start)
    return result, outputs
