"""Model registry: ``@register_model`` builders, ``create_model`` and ``list_models`` (timm's pattern)."""
from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn


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
    from .weights import load_checkpoint_into, pretrained_cfg_for

    entry = model_entry(name)
    cfg = None
    if checkpoint_path is None and pretrained:
        cfg = pretrained_cfg_for(name, pretrained)
        kwargs.setdefault("temperature", cfg.dyconv_temperature) if entry.family == "dymn" else None
    model = entry.builder(num_classes=num_classes, **kwargs)
    model.weights_info = {"name": None, "path": None, "sha256": None}
    if checkpoint_path is not None:
        load_checkpoint_into(model, Path(checkpoint_path))
    elif cfg is not None:
        load_checkpoint_into(model, cfg.fetch(), cfg=cfg)
    return model
