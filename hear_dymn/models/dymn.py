"""DyMN: Dynamic MobileNet (DyMN-S/M/L = dymn04/dymn10/dymn20).

Paper: Schmid, Koutini, Widmer, "Dynamic Convolutional Neural Networks as Efficient Pre-trained Audio Models",
https://arxiv.org/abs/2310.15648. Numerics and state_dict keys follow EfficientAT ``models/dymn/model.py``
(fschmid56/EfficientAT @ a425fdc): ``layers.N`` before ``in_c``, ``out_c`` and ``classifier``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from .base import AudioMobileNet, init_weights, mlp_head
from .blocks import MOBILENET_V3_BLOCKS, ConvNormAct, DynamicConv, DynamicInvertedResidual, make_divisible
from .registry import register_model


class DyMN(AudioMobileNet):
    """Dynamic MobileNet. Input: log-mel ``(batch, 1, n_mels, frames)``.

    Args:
        width_mult: channel multiplier (0.4, 1.0, 2.0 for the released models).
        num_classes: outputs of the classifier head.
        num_kernels: K, kernels mixed by each dynamic convolution.
        temperature: softmax temperature of the kernel attention (1.0 for AudioSet weights).
        dropout: dropout before the last linear layer.
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        num_classes: int = 527,
        num_kernels: int = 4,
        temperature: float = 1.0,
        dropout: float = 0.2,
        arch: str = "dymn",
    ) -> None:
        super().__init__()
        self.arch = arch
        self.width_mult = width_mult
        specs = [spec.scaled(width_mult) for spec in MOBILENET_V3_BLOCKS]
        # Registration order matters only for state_dict order; upstream creates `layers` first.
        self.layers = nn.ModuleList(
            DynamicInvertedResidual(spec, width_mult, num_kernels=num_kernels, temperature=temperature)
            for spec in specs
        )
        stem_channels = specs[0].in_channels
        self.in_c = ConvNormAct(1, stem_channels, 3, stride=2, activation="hardswish")
        last_in = specs[-1].out
        self.out_c = ConvNormAct(last_in, 6 * last_in, 1, activation="hardswish")
        self.classifier = mlp_head(6 * last_in, make_divisible(1280 * width_mult), num_classes, dropout)
        init_weights(self)
        self._build_feature_info(
            ["in_c"] + [f"layers.{i}" for i in range(len(specs))] + ["out_c"],
            [stem_channels] + [s.out for s in specs] + [6 * last_in],
            [2] + [s.stride for s in specs] + [1],
        )

    def stages(self) -> Sequence[nn.Module]:
        return [self.in_c, *self.layers, self.out_c]

    def set_dyconv_temperature(self, temperature: float) -> None:
        """Set the kernel-attention temperature of every dynamic convolution."""
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        for module in self.modules():
            if isinstance(module, DynamicConv):
                module.temperature = float(temperature)

    @property
    def dyconv_temperature(self) -> float:
        temps = {m.temperature for m in self.modules() if isinstance(m, DynamicConv)}
        return temps.pop() if len(temps) == 1 else float("nan")


def _create_dymn(arch: str, width_mult: float, **kwargs: Any) -> DyMN:
    return DyMN(width_mult=width_mult, arch=arch, **kwargs)


@register_model(family="dymn", width_mult=0.4)
def dymn04(**kwargs: Any) -> DyMN:
    """DyMN-S."""
    return _create_dymn("dymn04", 0.4, **kwargs)


@register_model(family="dymn", width_mult=1.0)
def dymn10(**kwargs: Any) -> DyMN:
    """DyMN-M."""
    return _create_dymn("dymn10", 1.0, **kwargs)


@register_model(family="dymn", width_mult=2.0)
def dymn20(**kwargs: Any) -> DyMN:
    """DyMN-L."""
    return _create_dymn("dymn20", 2.0, **kwargs)
