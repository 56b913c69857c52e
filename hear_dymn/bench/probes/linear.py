"""The linear probe: L2-regularised logistic regression on precomputed embeddings, with ``C`` chosen on validation.

:func:`fit_linear_probe`: features are standardised with statistics of the training portion only. The model is
scikit-learn's ``LogisticRegression(C=...)``: multinomial (softmax) for multiclass tasks, one binary model per
class for multilabel tasks, each trained on the annotated clips of its class only; weights are L2-penalised, the
intercept is not. A multilabel class whose annotated training labels are all equal gets a constant score
(logit +-30), one without annotated training clips a score of 0.5; a multiclass class absent from training gets a
logit of -1e4 (and a task with two training classes one binary model, as scikit-learn fits it). The inverse
regularisation ``C`` is chosen from ``cfg.c_grid`` by the validation metric, ties broken by the lower validation
log-loss; the fits along the grid are warm-started from smaller to larger ``C``. The final model is the one fitted
on the training split with the best ``C``; when the validation split was carved out of the training split, it is
refitted once on the whole training split (never on train + a given validation split).

The objective is scikit-learn's (its lbfgs scaling): for a binary class k with n_k annotated clips,
``f_k(w, b) = mean log-loss of x.w + b over the clips + |w|^2 / (2 C n_k)``; for the multinomial model on n clips,
``mean cross-entropy + |W|_F^2 / (2 C n)``. The binary objectives are separable, so their sum has the per-class
optima as its optimum: ``cfg.solver="torch"`` (default) fits all classes of a task as one problem with one
full-batch L-BFGS (``torch.optim.LBFGS``, strong-Wolfe line search) on the given ``device``. A fit has converged
under scikit-learn's criterion: the gradient of every class's objective (weights and intercept) has max-norm at
most ``cfg.tol`` (scipy's ``gtol``). The criterion is checked at every function evaluation and the first point
that meets it is the solution, so the joint fit is exactly as converged as scikit-learn's per-class fits.

Solver details:

* Preconditioning by a change of variables (the optimum does not change): with the covariance of the training
  features ``U diag(lam) U^T``, class k's weights are ``w_k = U (e_k * v_k)``, ``e_kj = (s_k lam_j + 1 / (C n_k))
  ** -0.5``, where ``s_k = p_k (1 - p_k)`` is the logistic curvature at the class prior ``p_k``. The Hessian of
  every class in ``v`` is then close to the identity at the start, so one L-BFGS memory (and its one scale) serves
  all classes. The intercepts act on centred features (``b = b' - mean . w``)
  and are scaled by ``s_k ** -0.5``. Cost: one ``d x d`` covariance and eigendecomposition per fitted training set.
  Multinomial weights and intercepts are kept centred over the classes (scikit-learn's optimum is centred, since a
  common shift only adds penalty): that direction is almost flat in the per-class scaled coordinates and would
  otherwise cost L-BFGS several times the iterations at large ``C``.
* The features are centred and rotated into that eigenbasis once (``xr = (x - mean) U``, in place), so that an
  evaluation is the two products of ``xr`` ``(n, d)`` with ``(d, K)`` matrices and element-wise work on the
  ``(n, K)`` logits, all in ``cfg.precision``; sums over clips, the gradients and the L-BFGS state are float64.
  Checking the tolerance needs the gradient in the original weights, ``U`` times the rotated one: a rotation keeps
  2-norms and ``|g|_2 / sqrt(d) <= |g|_inf <= |g|_2``, so that ``d x d`` product is computed only for classes
  between those bounds, once no class is certainly above ``tol``. With float32 (default) the gradient is exact to
  about 5e-8 (measured at 9,199 x 1,560 x 200), three orders below the default ``tol``; ``precision="float64"``
  is for tight tolerances. On CUDA the solver turns TF32 off while it runs
  (``torch.backends.cuda.matmul.allow_tf32``, restored afterwards): its 10-bit mantissa would swamp ``tol``.
* ``cfg.solver="sklearn"`` is the former implementation, one scikit-learn lbfgs fit per class and ``C`` on the CPU
  (``n_jobs`` parallel jobs over classes), kept as the reference the torch solver is tested against.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit, softmax
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from ..metrics import get_metric
from .common import ProbeData, ProbeResult, _carve_validation, _log_loss, _num_classes, _Standardizer, _to_maximise

logger = logging.getLogger(__name__)

_CONSTANT_LOGIT = 30.0  # logit of a class whose training labels are all equal
_ABSENT_LOGIT = -1.0e4  # multiclass logit of a class that never occurs in training
_PRODUCT_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_SOLVERS = ("torch", "sklearn")


@dataclass(frozen=True)
class LinearProbeConfig:
    """Logistic-regression probe settings.

    Attributes:
        c_grid: inverse L2 regularisation strengths to select from.
        max_iter: L-BFGS iteration limit per fit (per ``C``; with ``solver="sklearn"`` per class and ``C``).
        tol: convergence tolerance, scikit-learn's: max-norm of every class's objective gradient.
        standardize: standardise features with training-split statistics.
        valid_fraction: hold-out share used when no validation split is given.
        solver: ``"torch"`` (all classes jointly, on the probe's device) or ``"sklearn"`` (one scikit-learn fit per
            class, CPU; the reference).
        precision: dtype of the torch solver's matrix products, ``"float32"`` or ``"float64"`` (all other
            arithmetic is float64).
        history_size: L-BFGS memory (pairs of steps and gradient changes) of the torch solver.
        n_jobs: parallel jobs over classes of a multilabel task with ``solver="sklearn"`` (joblib); 1 = sequential.
    """

    c_grid: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
    max_iter: int = 1000
    tol: float = 1e-4
    standardize: bool = True
    valid_fraction: float = 0.2
    solver: Literal["torch", "sklearn"] = "torch"
    precision: Literal["float32", "float64"] = "float32"
    history_size: int = 20
    n_jobs: int = 1

    def __post_init__(self) -> None:
        if self.solver not in _SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; solvers: {', '.join(_SOLVERS)}")
        if self.precision not in _PRODUCT_DTYPES:
            raise ValueError(f"unknown precision {self.precision!r}; known: {', '.join(_PRODUCT_DTYPES)}")
        for name in ("max_iter", "history_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.tol > 0:
            raise ValueError(f"tol must be positive, got {self.tol!r}")

    def with_selected(self, selected: Mapping[str, Any]) -> LinearProbeConfig:
        """A copy whose grid holds only ``selected["C"]`` (to retrain a chosen model on other folds)."""
        return replace(self, c_grid=(float(selected["C"]),))


LINEAR_PRESETS: dict[str, LinearProbeConfig] = {
    "default": LinearProbeConfig(),
    "fast": LinearProbeConfig(c_grid=(1e-3, 1e-2, 1e-1, 1.0), max_iter=200),
}


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``, or a ``ValueError`` naming it when it is malformed or not available."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; devices: cpu, cuda, cuda:N") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {str(device)!r}: no CUDA device is available here; use device='cpu'")
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"device {str(device)!r}: this machine has {count} CUDA device(s)")
    elif resolved.type != "cpu":
        try:
            torch.empty(1, device=resolved)
        except (RuntimeError, AssertionError) as err:
            raise ValueError(f"device {str(device)!r} is not available here: {err}") from None
    return resolved


# ----------------------------------------------------------------------------------------------------------------
# Joint L-BFGS solver (torch)


@dataclass
class _Fit:
    """One solution of a :class:`_JointLogistic` in its own coordinates: ``z`` ``(d, K)`` are the weights in the
    covariance eigenbasis, ``offset`` ``(K,)`` the intercepts on centred features."""

    z: torch.Tensor
    offset: torch.Tensor
    iterations: int = 0
    evaluations: int = 0
    converged: bool = True
    grad_max: float = 0.0


class _Converged(Exception):
    """Raised inside the L-BFGS closure at the first point that meets the tolerance."""

    def __init__(self, z: torch.Tensor, offset: torch.Tensor, grad_max: float) -> None:
        super().__init__()
        self.z, self.offset, self.grad_max = z, offset, grad_max


class _JointLogistic:
    """The logistic regressions of one training set, all classes as one objective (see the module docstring).

    The features are held centred and rotated into the eigenbasis of their covariance, ``xr = (x - mean) U``: with
    ``w = U z`` and ``b = offset - mean . w`` the logits are ``xr z + offset`` and the penalty is ``|z|^2``, so an
    evaluation costs the two products with ``xr`` and nothing of size ``d x d``.

    Args:
        x: ``(n, d)`` features.
        targets: multinomial: ``(n,)`` class indices in ``0..K-1``, every class present; binary: ``(n, K)`` 0/1
            labels, each column with both labels among its annotated clips.
        weights: binary only: optional ``(n, K)`` 0/1 annotation mask (a class is trained on its annotated clips).
        multinomial: softmax over the K classes instead of K binary models.
        device: where the features and all tensors live.
        dtype: dtype of the matrix products.
    """

    def __init__(self, x: np.ndarray, targets: np.ndarray, weights: np.ndarray | None, *, multinomial: bool,
                 device: torch.device, dtype: torch.dtype) -> None:
        f64 = torch.float64
        self.multinomial, self.dtype = multinomial, dtype
        n = x.shape[0]
        if multinomial:
            self.labels = torch.as_tensor(np.asarray(targets, dtype=np.int64), device=device)
            k = int(self.labels.max()) + 1
            self.counts = torch.full((k,), float(n), dtype=f64, device=device)
            prior = torch.bincount(self.labels, minlength=k).to(f64) / n
        else:
            self.y = torch.as_tensor(np.asarray(targets), device=device).to(dtype)
            self.mask = None if weights is None else torch.as_tensor(np.asarray(weights), device=device).to(dtype)
            k = self.y.shape[1]
            if self.mask is None:
                self.counts = torch.full((k,), float(n), dtype=f64, device=device)
                prior = self.y.sum(dim=0, dtype=f64) / n
            else:
                self.counts = self.mask.sum(dim=0, dtype=f64)
                prior = (self.y * self.mask).sum(dim=0, dtype=f64) / self.counts
        self.prior = prior.clamp(1e-12, 1.0 - 1e-12)
        self.curvature = self.prior * (1.0 - self.prior)
        self.xr = torch.tensor(np.asarray(x), dtype=dtype, device=device)  # a copy: rotated in place below
        self.mean, self.eigvals, self.basis = self._rotate()
        self.mean_r = self.basis.t() @ self.mean  # the mean in the eigenbasis
        self.dim = int(self.xr.shape[1])

    def _rotate(self, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean ``(d,)``, eigenvalues ``(d,)`` (clipped at 0) and eigenvectors ``U`` ``(d, d)`` of the features'
        covariance (products in the product dtype, centred chunk by chunk; eigendecomposition in float64); then
        ``self.xr`` is replaced, chunk by chunk and in place, by the centred features in that basis."""
        n, d = self.xr.shape
        mean = self.xr.to(torch.float64).mean(dim=0)
        cov = torch.zeros(d, d, dtype=torch.float64, device=self.xr.device)
        for start in range(0, n, chunk):
            centred = self.xr[start : start + chunk] - mean.to(self.dtype)
            cov += (centred.t() @ centred).to(torch.float64)
        cov /= n
        eigvals, basis = torch.linalg.eigh((cov + cov.t()) / 2)
        basis_p = basis.to(self.dtype)
        for start in range(0, n, chunk):
            rows = self.xr[start : start + chunk]
            rows.copy_((rows - mean.to(self.dtype)) @ basis_p)
        return mean, eigvals.clamp_min(0.0), basis

    @property
    def num_classes(self) -> int:
        return int(self.counts.shape[0])

    @property
    def entropy(self) -> float:
        """The objective of the intercept-only model: the summed label entropies of the classes."""
        p = self.prior
        if self.multinomial:
            return float(-(p * p.log()).sum())
        return float(-(p * p.log() + (1.0 - p) * torch.log1p(-p)).sum())

    def start(self) -> _Fit:
        """The intercept-only optimum: zero weights, intercepts at the class priors' logits (centred log-priors for
        the multinomial model, whose intercepts are defined up to a common shift)."""
        z = torch.zeros(self.dim, self.num_classes, dtype=torch.float64, device=self.xr.device)
        if self.multinomial:
            log_prior = self.prior.log()
            return _Fit(z, log_prior - log_prior.mean())
        return _Fit(z, torch.logit(self.prior))

    def from_weights(self, weights: np.ndarray, bias: np.ndarray) -> _Fit:
        """A starting point from weights ``(K, d)`` and intercepts ``(K,)`` on the features as given."""
        w = torch.as_tensor(weights, dtype=torch.float64, device=self.xr.device).t()
        offset = torch.as_tensor(bias, dtype=torch.float64, device=self.xr.device) + self.mean @ w
        if self.multinomial:
            offset = offset - offset.mean()
        return _Fit(self.basis.t() @ w, offset)

    def weights(self, fit: _Fit) -> tuple[np.ndarray, np.ndarray]:
        """Weights ``(K, d)`` and intercepts ``(K,)`` on the features as given (multinomial intercepts centred)."""
        w = self.basis @ fit.z
        bias = fit.offset - self.mean @ w
        if self.multinomial:
            bias = bias - bias.mean()
        return w.t().cpu().numpy(), bias.cpu().numpy()

    def loss_and_grad(self, z: torch.Tensor, offset: torch.Tensor, c: float
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The summed objective and its gradients in ``z`` ``(d, K)`` and ``offset`` ``(K,)``; the latter is also
        the gradient in the intercepts."""
        f64 = torch.float64
        penalty = 1.0 / (c * self.counts)  # (K,)
        logits = (self.xr @ z.to(self.dtype)).add_(offset.to(self.dtype))
        n = logits.shape[0]
        if self.multinomial:
            log_probs = torch.log_softmax(logits, dim=1)
            rows = torch.arange(n, device=logits.device)
            loss = -log_probs[rows, self.labels].sum(dtype=f64) / n
            residual = log_probs.exp_()
            residual[rows, self.labels] -= 1.0
        else:
            per_clip = F.binary_cross_entropy_with_logits(logits, self.y, weight=self.mask, reduction="none")
            loss = (per_clip.sum(dim=0, dtype=f64) / self.counts).sum()
            residual = torch.sigmoid(logits).sub_(self.y)
            if self.mask is not None:
                residual *= self.mask
        # The 1 / n_k of the mean loss is applied to the (d, K) products, not to the (n, K) residual.
        grad_z = (self.xr.t() @ residual).to(f64) / self.counts + z * penalty
        grad_offset = residual.sum(dim=0, dtype=f64) / self.counts
        loss = loss + 0.5 * (penalty * (z * z).sum(dim=0)).sum()
        return loss, grad_z, grad_offset

    def gradient_max(self, grad_z: torch.Tensor, grad_offset: torch.Tensor, tol: float | None = None) -> float:
        """scikit-learn's convergence measure: the max-norm of the gradient in the original weights and intercepts,
        ``g_w = U (g_z + mean_r g_b)``. With ``tol``, only whether it is at most ``tol``: ``inf`` when it is not, else
        the value (or a bound below ``tol``). The rotation keeps 2-norms, and ``|g|_2 / sqrt(d) <= |g|_inf <=
        |g|_2``, so the ``d x d`` product is needed only for the classes between the two bounds, and only once no
        class is certainly above ``tol``."""
        a = grad_z + self.mean_r[:, None] * grad_offset[None, :]
        if tol is None:
            return float(torch.maximum((self.basis @ a).abs().amax(dim=0), grad_offset.abs()).max())
        norms = a.norm(dim=0)
        if bool((grad_offset.abs() > tol).any()) or bool((norms > tol * math.sqrt(self.dim)).any()):
            return math.inf
        unsure = torch.nonzero(norms > tol).flatten()
        bound = float(torch.maximum(norms, grad_offset.abs()).max())
        if unsure.numel() == 0:
            return bound
        exact = float((self.basis @ a[:, unsure]).abs().max())
        return math.inf if exact > tol else max(exact, float(grad_offset.abs().max()))

    def solve(self, c: float, start: _Fit, *, max_iter: int, tol: float, history_size: int) -> _Fit:
        """The optimum at inverse regularisation ``c``, by L-BFGS from ``start`` (see the module docstring)."""
        scale = torch.rsqrt(self.curvature[None, :] * self.eigvals[:, None] + 1.0 / (c * self.counts)[None, :])
        offset_scale = torch.rsqrt(self.curvature)
        v = (start.z / scale).contiguous()
        u = (start.offset / offset_scale).contiguous()
        evaluations = 0

        def closure() -> torch.Tensor:
            nonlocal evaluations
            evaluations += 1
            z, offset = self._point(scale * v, offset_scale * u)
            loss, grad_z, grad_offset = self.loss_and_grad(z, offset, c)
            grad_max = self.gradient_max(grad_z, grad_offset, tol)
            if grad_max <= tol:
                raise _Converged(z.clone(), offset.clone(), grad_max)
            # Chain rule through z = scale * v and offset = offset_scale * u (and the centring, its own adjoint).
            grad_z, grad_offset = self._point(grad_z, grad_offset)
            v.grad = scale * grad_z
            u.grad = offset_scale * grad_offset
            return loss

        # Stalling (no change in the loss or the step) stops L-BFGS as scipy's ftol does: relative to the size of
        # the objective, here the intercept-only loss (the classes' label entropies).
        optimizer = torch.optim.LBFGS(
            [v, u], lr=1.0, max_iter=max_iter, max_eval=max_iter * 5 // 4, tolerance_grad=0.0,
            tolerance_change=np.finfo(np.float64).eps * max(1.0, self.entropy), history_size=history_size,
            line_search_fn="strong_wolfe",
        )
        try:
            optimizer.step(closure)
        except _Converged as done:
            iterations = int(optimizer.state[v].get("n_iter", 0))
            return _Fit(done.z, done.offset, iterations, evaluations, True, done.grad_max)
        iterations = int(optimizer.state[v].get("n_iter", 0))
        z, offset = self._point((scale * v).detach(), (offset_scale * u).detach())
        _, grad_z, grad_offset = self.loss_and_grad(z, offset, c)
        return _Fit(z, offset, iterations, evaluations, False, self.gradient_max(grad_z, grad_offset))

    def _point(self, z: torch.Tensor, offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model at ``(z, offset)``: multinomial weights and intercepts centred over the classes. A common shift
        of all classes changes no probability and only the penalty acts on it, so that direction is nearly flat in
        the preconditioned coordinates (whose scales differ between classes); the optimum is centred, and so is
        every iterate."""
        if not self.multinomial:
            return z, offset
        return z - z.mean(dim=1, keepdim=True), offset - offset.mean()


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
    """CUDA float32 matrix products in full float32 while the solver runs, whatever the caller chose: TF32's 10-bit
    mantissa would put the gradient's error above ``tol``."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def _torch_linear_path(
    x: np.ndarray, data: ProbeData, *, multilabel: bool, n_classes: int, cs: Sequence[float],
    cfg: LinearProbeConfig, device: torch.device, init: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """All classes jointly along ``cs`` (ascending, warm-started); ``init`` = weights ``(C, d)`` and intercepts
    ``(C,)`` to start the first fit from (else the intercept-only optimum)."""
    d = x.shape[1]
    weights = np.zeros((len(cs), n_classes, d))
    bias = np.zeros((len(cs), n_classes))
    if multilabel:
        labels = np.asarray(data.y) != 0
        annotated = np.ones_like(labels) if data.mask is None else np.asarray(data.mask) != 0
        counts = annotated.sum(axis=0)
        positives = (labels & annotated).sum(axis=0)
        bias[:, (counts > 0) & (positives == counts)] = _CONSTANT_LOGIT
        bias[:, (counts > 0) & (positives == 0)] = -_CONSTANT_LOGIT
        fitted = np.flatnonzero((positives > 0) & (positives < counts))
        targets = labels[:, fitted]
        mask = None if data.mask is None else annotated[:, fitted]
        multinomial = False
    else:
        y = np.asarray(data.y, dtype=np.int64)
        bias[:] = _ABSENT_LOGIT
        present = np.unique(y)
        if present.size == 1:
            bias[:, present[0]] = 0.0
            return weights, bias, [0] * len(cs)
        mask = None
        if present.size == 2:  # one binary model for present[1], logit 0 for present[0], as scikit-learn does
            bias[:, present[0]] = 0.0
            fitted, targets, multinomial = present[1:], (y == present[1])[:, None], False
        else:
            fitted, targets, multinomial = present, np.searchsorted(present, y), True
    if fitted.size == 0:
        return weights, bias, [0] * len(cs)

    with _no_tf32():
        problem = _JointLogistic(x, targets, mask, multinomial=multinomial, device=device,
                                 dtype=_PRODUCT_DTYPES[cfg.precision])
    fit = problem.start() if init is None else problem.from_weights(init[0][fitted], init[1][fitted])
    iterations = []
    for i, c in enumerate(cs):
        start = time.perf_counter()
        with _no_tf32():
            fit = problem.solve(c, fit, max_iter=cfg.max_iter, tol=cfg.tol, history_size=cfg.history_size)
        w, b = problem.weights(fit)
        weights[i, fitted], bias[i, fitted] = w, b
        iterations.append(fit.iterations)
        logger.debug("linear probe C=%g: %d classes, %d L-BFGS iterations, %d evaluations, gradient max %.2e "
                     "(%.1f s)", c, fitted.size, fit.iterations, fit.evaluations, fit.grad_max,
                     time.perf_counter() - start)
        if not fit.converged:
            logger.warning("linear probe C=%g: L-BFGS stopped after %d iterations with gradient max %.2e > tol=%g",
                           c, fit.iterations, fit.grad_max, cfg.tol)
    return weights, bias, iterations


# ----------------------------------------------------------------------------------------------------------------
# Per-class scikit-learn solver (the reference)


def _fit_binary_path(
    x: np.ndarray, rows: np.ndarray | None, yk: np.ndarray, cs: Sequence[float], max_iter: int, tol: float
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Binary logistic regressions along ``cs`` (ascending, warm-started) on ``x[rows]``."""
    if rows is not None:
        x = x[rows]
    weights = np.zeros((len(cs), x.shape[1]))
    bias = np.zeros(len(cs))
    labels = np.asarray(yk) != 0
    if labels.size == 0:
        return weights, bias, [0] * len(cs)
    if labels.all() or not labels.any():
        bias[:] = _CONSTANT_LOGIT if labels[0] else -_CONSTANT_LOGIT
        return weights, bias, [0] * len(cs)
    clf = LogisticRegression(C=cs[0], max_iter=max_iter, tol=tol, warm_start=True)
    iterations = []
    for i, c in enumerate(cs):
        clf.set_params(C=c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(x, labels.astype(np.int64))
        iterations.append(int(np.max(clf.n_iter_)))
        weights[i] = clf.coef_[0]
        bias[i] = clf.intercept_[0]
    return weights, bias, iterations


def _fit_multiclass_path(
    x: np.ndarray, y: np.ndarray, n_classes: int, cs: Sequence[float], max_iter: int, tol: float
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    weights = np.zeros((len(cs), n_classes, x.shape[1]))
    bias = np.full((len(cs), n_classes), _ABSENT_LOGIT)
    present = np.unique(y)
    if present.size == 1:
        bias[:, present[0]] = 0.0
        return weights, bias, [0] * len(cs)
    clf = LogisticRegression(C=cs[0], max_iter=max_iter, tol=tol, warm_start=True)
    iterations = []
    for i, c in enumerate(cs):
        clf.set_params(C=c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(x, y)
        iterations.append(int(np.max(clf.n_iter_)))
        if clf.coef_.shape[0] == 1:  # two classes: sklearn fits one logit for classes_[1]
            bias[i, present[0]] = 0.0
            weights[i, present[1]] = clf.coef_[0]
            bias[i, present[1]] = clf.intercept_[0]
        else:
            weights[i, clf.classes_] = clf.coef_
            bias[i, clf.classes_] = clf.intercept_
    return weights, bias, iterations


def _sklearn_linear_path(
    x: np.ndarray, data: ProbeData, *, multilabel: bool, n_classes: int, cs: Sequence[float], cfg: LinearProbeConfig
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    if not multilabel:
        return _fit_multiclass_path(x, np.asarray(data.y, dtype=np.int64), n_classes, cs, cfg.max_iter, cfg.tol)
    jobs = []
    for k in range(n_classes):
        rows = None if data.mask is None else np.flatnonzero(data.mask[:, k] != 0)
        yk = data.y[:, k] if rows is None else data.y[rows, k]
        jobs.append((rows, yk))
    if cfg.n_jobs == 1:
        results = [_fit_binary_path(x, rows, yk, cs, cfg.max_iter, cfg.tol) for rows, yk in jobs]
    else:
        from joblib import Parallel, delayed

        results = Parallel(n_jobs=cfg.n_jobs)(
            delayed(_fit_binary_path)(x, rows, yk, cs, cfg.max_iter, cfg.tol) for rows, yk in jobs
        )
    weights = np.stack([r[0] for r in results], axis=1)
    bias = np.stack([r[1] for r in results], axis=1)
    iterations = [max(r[2][i] for r in results) for i in range(len(cs))]
    not_converged = sum(n >= cfg.max_iter for r in results for n in r[2])
    if not_converged:
        logger.warning("linear probe: %d lbfgs fits hit max_iter=%d", not_converged, cfg.max_iter)
    return weights, bias, iterations


# ----------------------------------------------------------------------------------------------------------------
# The probe


def _fit_linear_path(
    x: np.ndarray, data: ProbeData, *, multilabel: bool, n_classes: int, cs: Sequence[float], cfg: LinearProbeConfig,
    device: torch.device, init: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Weights ``(len(cs), C, d)``, biases ``(len(cs), C)`` of the logit layer and L-BFGS iterations for every
    ``C``."""
    if cfg.solver == "sklearn":
        return _sklearn_linear_path(x, data, multilabel=multilabel, n_classes=n_classes, cs=cs, cfg=cfg)
    return _torch_linear_path(x, data, multilabel=multilabel, n_classes=n_classes, cs=cs, cfg=cfg, device=device,
                              init=init)


def _linear_scores(x: np.ndarray, weights: np.ndarray, bias: np.ndarray, multilabel: bool) -> np.ndarray:
    logits = np.asarray(x, dtype=np.float64) @ weights.T + bias
    probs = expit(logits) if multilabel else softmax(logits, axis=1)
    return probs.astype(np.float32)


def fit_linear_probe(
    train: ProbeData,
    valid: ProbeData | None,
    test: ProbeData,
    *,
    multilabel: bool,
    metric: str,
    cfg: LinearProbeConfig | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> ProbeResult:
    """Logistic-regression probe with ``C`` selected on the validation split.

    Args:
        train: training split.
        valid: validation split, or ``None`` to hold out ``cfg.valid_fraction`` of ``train``.
        test: test split (scored once, with the selected model).
        multilabel: one-vs-rest binary models instead of a multinomial model.
        metric: key of ``hear_dymn.bench.metrics.METRICS`` used for selection and reported on test.
        cfg: probe settings (default: ``LINEAR_PRESETS["default"]``).
        seed: seed of the hold-out split.
        device: torch device of the fits (``solver="torch"``), e.g. ``"cpu"``, ``"cuda"``, ``"cuda:1"``; an
            unknown or unavailable device is a ``ValueError``.

    Returns:
        The :class:`ProbeResult`; ``selected`` is ``{"C": best_C}``; ``history`` has one entry per ``C`` with the
        validation metric and log-loss and the L-BFGS iterations of its fit.
    """
    start = time.perf_counter()
    cfg = cfg or LINEAR_PRESETS["default"]
    torch_device = resolve_device(device)
    score_fn = get_metric(metric)
    n_classes = _num_classes(multilabel, train, valid, test)
    fit_data, sel_data, carved = _carve_validation(
        train, valid, multilabel=multilabel, fraction=cfg.valid_fraction, seed=seed
    )
    cs = sorted({float(c) for c in cfg.c_grid})
    if not cs:
        raise ValueError("c_grid is empty")

    scaler = _Standardizer.fit(fit_data.x, cfg.standardize)
    weights, bias, iterations = _fit_linear_path(
        scaler(fit_data.x), fit_data, multilabel=multilabel, n_classes=n_classes, cs=cs, cfg=cfg,
        device=torch_device,
    )
    x_valid = scaler(sel_data.x)
    history: list[dict[str, Any]] = []
    for i, c in enumerate(cs):
        probs = _linear_scores(x_valid, weights[i], bias[i], multilabel)
        value = score_fn(sel_data.y, probs, sel_data.mask)
        loss = _log_loss(sel_data.y, probs, sel_data.mask, multilabel)
        history.append({"C": c, "valid_metric": float(value), "valid_loss": loss, "iterations": iterations[i]})
        logger.debug("linear probe C=%g: valid %s=%.4f loss=%.4f", c, metric, value, loss)
    best = max(
        range(len(cs)), key=lambda i: (_to_maximise(history[i]["valid_metric"], score_fn), -history[i]["valid_loss"])
    )
    best_c = cs[best]

    if carved:
        # Warm-started from the selected fit (expressed on the new scaling): the optimum does not depend on it.
        refit_scaler = _Standardizer.fit(train.x, cfg.standardize)
        init = _rescale(weights[best], bias[best], scaler, refit_scaler)
        w_final, b_final, _ = _fit_linear_path(
            refit_scaler(train.x), train, multilabel=multilabel, n_classes=n_classes, cs=[best_c], cfg=cfg,
            device=torch_device, init=init,
        )
        scaler, w_best, b_best = refit_scaler, w_final[0], b_final[0]
    else:
        w_best, b_best = weights[best], bias[best]
    scores = _linear_scores(scaler(test.x), w_best, b_best, multilabel)
    test_value = score_fn(test.y, scores, test.mask)
    seconds = time.perf_counter() - start
    logger.info(
        "linear probe: C=%g, valid %s=%.4f, test %s=%.4f (%.1f s)",
        best_c, metric, history[best]["valid_metric"], metric, test_value, seconds,
    )
    return ProbeResult(
        scores=scores,
        metrics={metric: float(test_value), f"valid_{metric}": float(history[best]["valid_metric"])},
        selected={"C": best_c},
        history=history,
        seconds=seconds,
    )


def _rescale(weights: np.ndarray, bias: np.ndarray, old: _Standardizer, new: _Standardizer
             ) -> tuple[np.ndarray, np.ndarray]:
    """The same logit layer, ``(C, d)`` weights and ``(C,)`` intercepts, on features standardised by ``new``
    instead of ``old``."""
    if old.mean is None or old.std is None or new.mean is None or new.std is None:
        return weights, bias
    raw_weights = weights / old.std  # on unscaled features
    raw_bias = bias - raw_weights @ old.mean
    return raw_weights * new.std, raw_bias + raw_weights @ new.mean
