"""Building blocks of DyMN and of the static MobileNetV3 baseline (MN).

Module and parameter names follow EfficientAT (fschmid56/EfficientAT @ a425fdc, ``models/dymn/dy_block.py`` and
``models/mn/block_types.py``) so that the released checkpoints load with ``strict=True`` and no key remapping.
Paper: Schmid, Koutini, Widmer, "Dynamic Convolutional Neural Networks as Efficient Pre-trained Audio Models",
https://arxiv.org/abs/2310.15648.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.01

Activation = Literal["relu", "hardswish"]


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` without going more than 10 % below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """The BatchNorm every EfficientAT model uses (eps 1e-3, momentum 0.01)."""
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def activation_layer(name: Activation | None) -> nn.Module:
    if name is None:
        return nn.Identity()
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "hardswish":
        return nn.Hardswish(inplace=True)
    raise ValueError(f"unknown activation {name!r}; expected 'relu' or 'hardswish'")


@dataclass(frozen=True)
class BlockSpec:
    """One row of the MobileNetV3 block table, before width scaling."""

    in_channels: int
    kernel: int
    expanded: int
    out: int
    activation: Activation
    stride: int
    use_se: bool  # MN only: squeeze-and-excitation after the depthwise conv

    def scaled(self, width_mult: float) -> "BlockSpec":
        return BlockSpec(
            in_channels=make_divisible(self.in_channels * width_mult),
            kernel=self.kernel,
            expanded=make_divisible(self.expanded * width_mult),
            out=make_divisible(self.out * width_mult),
            activation=self.activation,
            stride=self.stride,
            use_se=self.use_se,
        )


# MobileNetV3-Large as used by EfficientAT (`_mobilenet_v3_conf` / `_dymn_conf`); stride-2 rows start stages C1..C4.
MOBILENET_V3_BLOCKS: tuple[BlockSpec, ...] = (
    BlockSpec(16, 3, 16, 16, "relu", 1, False),
    BlockSpec(16, 3, 64, 24, "relu", 2, False),  # C1
    BlockSpec(24, 3, 72, 24, "relu", 1, False),
    BlockSpec(24, 5, 72, 40, "relu", 2, True),  # C2
    BlockSpec(40, 5, 120, 40, "relu", 1, True),
    BlockSpec(40, 5, 120, 40, "relu", 1, True),
    BlockSpec(40, 3, 240, 80, "hardswish", 2, False),  # C3
    BlockSpec(80, 3, 200, 80, "hardswish", 1, False),
    BlockSpec(80, 3, 184, 80, "hardswish", 1, False),
    BlockSpec(80, 3, 184, 80, "hardswish", 1, False),
    BlockSpec(80, 3, 480, 112, "hardswish", 1, True),
    BlockSpec(112, 3, 672, 112, "hardswish", 1, True),
    BlockSpec(112, 5, 672, 160, "hardswish", 2, True),  # C4
    BlockSpec(160, 5, 960, 160, "hardswish", 1, True),
    BlockSpec(160, 5, 960, 160, "hardswish", 1, True),
)


class ConvNormAct(nn.Sequential):
    """Conv2d (no bias, 'same' padding) -> BatchNorm -> activation; keys ``0.*`` and ``1.*`` like torchvision's
    ``ConvNormActivation``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: Activation | None = "relu",
    ) -> None:
        conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=(kernel_size - 1) // 2, groups=groups,
            bias=False,
        )
        layers: list[nn.Module] = [conv, batch_norm(out_channels)]
        if activation is not None:
            layers.append(activation_layer(activation))
        super().__init__(*layers)
        self.out_channels = out_channels


# --------------------------------------------------------------------------------------------------------------
# DyMN


class DynamicConv(nn.Module):
    """Convolution whose kernel is a per-sample softmax mixture of ``num_kernels`` kernels (paper Eq. 5-6).

    ``weight`` keeps EfficientAT's layout ``(1, 1, K, out * in/groups * k * k)``: row ``i`` is kernel ``i`` flattened
    in C order. The attention temperature is a plain attribute (not in the state_dict); released AudioSet weights
    are used at temperature 1.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        context_dim: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        num_kernels: int = 4,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if in_channels % groups:
            raise ValueError(f"in_channels={in_channels} is not divisible by groups={groups}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = (kernel_size - 1) // 2
        self.groups = groups
        self.num_kernels = num_kernels
        self.temperature = float(temperature)
        self.residuals = nn.Sequential(nn.Linear(context_dim, num_kernels))
        kernels = torch.empty(num_kernels, out_channels, in_channels // groups, kernel_size, kernel_size)
        for kernel in kernels:
            nn.init.kaiming_normal_(kernel, mode="fan_out")
        self.weight = nn.Parameter(kernels.reshape(1, 1, num_kernels, -1))

    def attention(self, context: Tensor) -> Tensor:
        """Kernel attention ``(batch, K)`` from the context vector ``(batch, H, 1, 1)``."""
        logits = self.residuals(context.flatten(1))
        return torch.softmax(logits / self.temperature, dim=-1)

    def mixed_weight(self, context: Tensor) -> Tensor:
        """Per-sample kernels ``(batch * out, in/groups, k, k)``."""
        attention = self.attention(context)
        mixed = attention @ self.weight.view(self.num_kernels, -1)
        return mixed.view(-1, self.in_channels // self.groups, self.kernel_size, self.kernel_size)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        batch = x.shape[0]
        weight = self.mixed_weight(context)
        # Samples have different kernels: fold the batch into channels and run one grouped convolution.
        out = F.conv2d(
            x.reshape(1, -1, *x.shape[2:]), weight, stride=self.stride, padding=self.padding,
            groups=self.groups * batch,
        )
        return out.view(batch, self.out_channels, *out.shape[2:])


class DyReLU(nn.Module):
    """Dynamic ReLU, variant B (channel-wise, spatially shared): ``y = max_m(a_m(x) * x + b_m(x))`` with M = 2."""

    def __init__(self, channels: int, context_dim: int, num_pieces: int = 2) -> None:
        super().__init__()
        self.channels = channels
        self.num_pieces = num_pieces
        self.coef_net = nn.Sequential(nn.Linear(context_dim, 2 * num_pieces * channels))
        self.register_buffer("lambdas", torch.tensor([1.0] * num_pieces + [0.5] * num_pieces))
        self.register_buffer("init_v", torch.tensor([1.0] + [0.0] * (2 * num_pieces - 1)))

    def coefficients(self, context: Tensor) -> Tensor:
        """``(batch, channels, 1, 1, 2M)``: slopes a_1..a_M then offsets b_1..b_M per channel."""
        theta = 2 * torch.sigmoid(self.coef_net(context.flatten(1))) - 1
        return theta.view(-1, self.channels, 1, 1, 2 * self.num_pieces) * self.lambdas + self.init_v

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        coefs = self.coefficients(context)
        m = self.num_pieces
        pieces = x.unsqueeze(-1) * coefs[..., :m] + coefs[..., m:]
        if m == 2:
            return torch.maximum(pieces[..., 0], pieces[..., 1])
        return pieces.max(dim=-1).values


class CoordAttention(nn.Module):
    """Coordinate attention: rescale by sigmoid frequency and time profiles from the context generator."""

    def forward(self, x: Tensor, freq_gate: Tensor, time_gate: Tensor) -> Tensor:
        return x * freq_gate.sigmoid() * time_gate.sigmoid()


class ContextGenerator(nn.Module):
    """Per-block context (paper Sec. 2.1): frequency and time profiles of the block input, jointly transformed.

    Returns ``(h_c, g_f, g_t)``: the context vector ``(batch, H, 1, 1)`` that drives DyConv and DyReLU, and the
    coordinate-attention gates ``(batch, exp, F', 1)`` and ``(batch, exp, 1, T')``.
    """

    def __init__(self, context_dim: int, in_channels: int, expanded: int, stride: int) -> None:
        super().__init__()
        self.joint_conv = nn.Conv2d(in_channels, context_dim, 1, bias=False)
        self.joint_norm = batch_norm(context_dim)
        self.joint_act = nn.Hardswish(inplace=True)
        self.conv_f = nn.Conv2d(context_dim, expanded, 1)
        self.conv_t = nn.Conv2d(context_dim, expanded, 1)
        if stride > 1:
            # count_include_pad=True (the default) as upstream: zero padding is averaged in at the borders.
            self.pool_f: nn.Module = nn.AvgPool2d((3, 1), stride=(stride, 1), padding=(1, 0))
            self.pool_t: nn.Module = nn.AvgPool2d((1, 3), stride=(1, stride), padding=(0, 1))
        else:
            self.pool_f = nn.Identity()
            self.pool_t = nn.Identity()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n_freq, n_time = x.shape[2], x.shape[3]
        freq_profile = x.mean(dim=3, keepdim=True)  # (B, C, F, 1)
        time_profile = x.mean(dim=2, keepdim=True).transpose(2, 3)  # (B, C, T, 1)
        joint = torch.cat([freq_profile, time_profile], dim=2)
        joint = self.joint_act(self.joint_norm(self.joint_conv(joint)))
        h_f, h_t = torch.split(joint, [n_freq, n_time], dim=2)
        # The context vector averages the concatenated F + T positions (not the mean of the two means).
        context = joint.mean(dim=2, keepdim=True)
        freq_gate = self.conv_f(self.pool_f(h_f))
        time_gate = self.conv_t(self.pool_t(h_t.transpose(2, 3)))
        return context, freq_gate, time_gate


def context_dim_for(expanded: int, width_mult: float, ratio: int = 4, min_size: int = 32, max_size: int = 128) -> int:
    """Context size H of a DyMN block: ``expanded / ratio`` clipped to ``[min_size, max_size]`` scaled by width."""
    low = make_divisible(min_size * width_mult)
    high = make_divisible(max_size * width_mult)
    return int(min(max(make_divisible(expanded // ratio), low), high))


class DynamicInvertedResidual(nn.Module):
    """The DyMN block (EfficientAT ``DY_Block``): dynamic 1x1 expansion, dynamic depthwise conv, DyReLU,
    coordinate attention and dynamic 1x1 projection, all driven by one context vector per sample."""

    def __init__(self, spec: BlockSpec, width_mult: float, num_kernels: int = 4, temperature: float = 1.0) -> None:
        super().__init__()
        self.spec = spec
        self.use_residual = spec.stride == 1 and spec.in_channels == spec.out
        self.context_dim = context_dim_for(spec.expanded, width_mult)
        h = self.context_dim
        self.has_expansion = spec.expanded != spec.in_channels
        if self.has_expansion:
            self.exp_conv = DynamicConv(spec.in_channels, spec.expanded, h, 1, num_kernels=num_kernels,
                                        temperature=temperature)
            self.exp_norm = batch_norm(spec.expanded)
            self.exp_act = activation_layer(spec.activation)
        self.depth_conv = DynamicConv(spec.expanded, spec.expanded, h, spec.kernel, stride=spec.stride,
                                      groups=spec.expanded, num_kernels=num_kernels, temperature=temperature)
        self.depth_norm = batch_norm(spec.expanded)
        self.depth_act = DyReLU(spec.expanded, h)
        self.ca = CoordAttention()
        self.proj_conv = DynamicConv(spec.expanded, spec.out, h, 1, num_kernels=num_kernels, temperature=temperature)
        self.proj_norm = batch_norm(spec.out)
        self.context_gen = ContextGenerator(h, spec.in_channels, spec.expanded, spec.stride)

    def forward(self, x: Tensor) -> Tensor:
        context, freq_gate, time_gate = self.context_gen(x)
        out = x
        if self.has_expansion:
            out = self.exp_act(self.exp_norm(self.exp_conv(out, context)))
        out = self.depth_norm(self.depth_conv(out, context))
        out = self.depth_act(out, context)
        out = self.ca(out, freq_gate, time_gate)
        out = self.proj_norm(self.proj_conv(out, context))
        if self.use_residual:
            out = out + x
        return out


# --------------------------------------------------------------------------------------------------------------
# MN (static MobileNetV3)


class SqueezeExcite(nn.Module):
    """Channel squeeze-and-excitation with a sigmoid gate (EfficientAT ``SqueezeExcitation`` over channels)."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, squeeze)
        self.fc2 = nn.Linear(squeeze, channels)

    def forward(self, x: Tensor) -> Tensor:
        scale = x.mean(dim=(2, 3))
        scale = self.fc2(torch.relu(self.fc1(scale)))
        return x * torch.sigmoid(scale)[:, :, None, None]


class ConcurrentSqueezeExcite(nn.Module):
    """Holder that keeps upstream's key path ``block.N.conc_se_layers.0.*``; EfficientAT's released MN models use
    a single channel SE, so the max-aggregation over concurrent SE layers is the identity."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.conc_se_layers = nn.ModuleList([SqueezeExcite(channels, make_divisible(channels // reduction))])

    def forward(self, x: Tensor) -> Tensor:
        return self.conc_se_layers[0](x)


class InvertedResidual(nn.Module):
    """Static MobileNetV3 block: 1x1 expansion, depthwise conv, optional SE, 1x1 projection (``block.N``)."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        self.spec = spec
        self.use_residual = spec.stride == 1 and spec.in_channels == spec.out
        layers: list[nn.Module] = []
        if spec.expanded != spec.in_channels:
            layers.append(ConvNormAct(spec.in_channels, spec.expanded, 1, activation=spec.activation))
        layers.append(ConvNormAct(spec.expanded, spec.expanded, spec.kernel, stride=spec.stride, groups=spec.expanded,
                                  activation=spec.activation))
        if spec.use_se:
            layers.append(ConcurrentSqueezeExcite(spec.expanded))
        layers.append(ConvNormAct(spec.expanded, spec.out, 1, activation=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        if self.use_residual:
            out = out + x
        return out
