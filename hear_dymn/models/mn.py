"""MN: the static MobileNetV3 baselines of EfficientAT (mn04 ... mn40).

Paper: Schmid, Koutini, Widmer, "Efficient Large-Scale Audio Tagging via Transformer-to-CNN Knowledge
Distillation", ICASSP 2023. Keys follow EfficientAT ``models/mn/model.py`` @ a425fdc: ``features.0`` (stem),
``features.1-15`` (blocks), ``features.16`` (final 1x1 conv), ``classifier``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from .base import AudioMobileNet, init_weights, mlp_head
from .blocks import MOBILENET_V3_BLOCKS, ConvNormAct, InvertedResidual, make_divisible
from .registry import register_model


class MN(AudioMobileNet):
    """Static MobileNetV3 with channel SE. Input: log-mel ``(batch, 1, n_mels, frames)``."""

    def __init__(self, width_mult: float = 1.0, num_classes: int = 527, dropout: float = 0.2, arch: str = "mn") -> None:
        super().__init__()
        self.arch = arch
        self.width_mult = width_mult
        specs = [spec.scaled(width_mult) for spec in MOBILENET_V3_BLOCKS]
        stem_channels = specs[0].in_channels
        last_in = specs[-1].out
        self.features = nn.Sequential(
            ConvNormAct(1, stem_channels, 3, stride=2, activation="hardswish"),
            *(InvertedResidual(spec) for spec in specs),
            ConvNormAct(last_in, 6 * last_in, 1, activation="hardswish"),
        )
        self.classifier = mlp_head(6 * last_in, make_divisible(1280 * width_mult), num_classes, dropout)
        init_weights(self)
        self._build_feature_info(
            [f"features.{i}" for i in range(len(self.features))],
            [stem_channels] + [s.out for s in specs] + [6 * last_in],
            [2] + [s.stride for s in specs] + [1],
        )

    def stages(self) -> Sequence[nn.Module]:
        return self.features


def _register_mn(arch: str, width_mult: float) -> None:
    def build(**kwargs: Any) -> MN:
        return MN(width_mult=width_mult, arch=arch, **kwargs)

    build.__name__ = arch
    build.__doc__ = f"Static MobileNetV3 baseline, width multiplier {width_mult}."
    register_model(family="mn", width_mult=width_mult)(build)


for _arch, _width in (("mn04", 0.4), ("mn05", 0.5), ("mn10", 1.0), ("mn20", 2.0), ("mn30", 3.0), ("mn40", 4.0)):
    _register_mn(_arch, _width)
