"""Model registry: ``@register_model`` builders, ``create_model``, ``list_models`` (timm's pattern) and
``infer_architecture``. Depends on ``models.weights`` (files and state_dicts), which does not import this module."""
from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .weights import CheckpointError, load_checkpoint_into, pretrained_cfg_for, shape_signature


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str  # "dymn" | "mn"
    width_mult: float
    builder: Callable[..., nn.Module]


_MODELS: dict[str, ModelEntry] = {}


def register_model(family: str, width_mult: float) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = builder.__name__
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = ModelEntry(name, family, width_mult, builder)
        return builder

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered architecture names matching a glob ``pattern``, DyMN first."""
    names = [n for n in _MODELS if fnmatch.fnmatch(n, pattern)]
    return sorted(names, key=lambda n: (_MODELS[n].family != "dymn", n))


def model_entry(name: str) -> ModelEntry:
    try:
        return _MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_MODELS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown model {name!r}{hint} Known models: {', '.join(list_models())}") from None


def create_model(
    name: str,
    pretrained: bool | str = False,
    checkpoint_path: str | Path | None = None,
    num_classes: int = 527,
    **kwargs: Any,
) -> nn.Module:
    """Build an architecture, optionally with weights.

    Args:
        name: architecture, e.g. ``"dymn10"`` (see ``list_models()``).
        pretrained: ``False`` (random init), ``True`` (the architecture's default AudioSet weights, e.g.
            ``dymn10_as``) or a weights name from ``list_pretrained()``.
        checkpoint_path: a local checkpoint in EfficientAT's format; takes precedence over ``pretrained``.
        num_classes: classifier outputs; a different count than the weights' drops their last linear layer.
        **kwargs: passed to the builder (e.g. ``temperature``, ``dropout``).
    Returns:
        The model in train mode (call ``.eval()`` for inference). Loaded weights are described by
        ``model.weights_info`` (name, file, sha256).
    """
    entry = model_entry(name)
    cfg = None
    if checkpoint_path is None and pretrained:
        cfg = pretrained_cfg_for(name, pretrained)
        kwargs.setdefault("temperature", cfg.dyconv_temperature) if entry.family == "dymn" else None
    model = entry.builder(num_classes=num_classes, **kwargs)
    model.weights_info = {"name": None, "path": None, "sha256": None}
    if checkpoint_path is not None:
        load_checkpoint_into(model, Path(checkpoint_path), identify=infer_architecture)
    elif cfg is not None:
        load_checkpoint_into(model, cfg.fetch(), cfg=cfg, identify=infer_architecture)
    return model


def infer_architecture(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Name of the registered architecture whose keys and shapes (head excluded) match ``state_dict``."""
    body = {k: v for k, v in state_dict.items() if not k.startswith("classifier.5.")}
    family = "dymn" if any(k.startswith("layers.") for k in body) else "mn" if any(
        k.startswith("features.") for k in body) else None
    if family is None:
        raise CheckpointError("state_dict has neither 'layers.*' (DyMN) nor 'features.*' (MN) keys; "
                              f"first keys: {', '.join(list(state_dict)[:5])}")
    best, best_diff = None, None
    for arch in list_models(f"{family}*"):
        with torch.device("meta"):
            candidate = create_model(arch)
        signature = {k: s for k, s in shape_signature(candidate).items() if not k.startswith("classifier.5.")}
        diff = sum(1 for k, s in signature.items() if k not in body or tuple(body[k].shape) != s)
        diff += sum(1 for k in body if k not in signature)
        if diff == 0:
            return arch
        if best_diff is None or diff < best_diff:
            best, best_diff = arch, diff
    raise CheckpointError(f"state_dict matches no registered {family} architecture; closest is {best!r} "
                          f"with {best_diff} differing entries")
