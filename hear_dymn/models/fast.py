"""Inference fast path: ``fuse_for_inference(model)`` returns an eval-only copy of a DyMN or MN that computes the
same function with fewer passes over memory. float32 outputs differ from the eager model by rounding only
(~1e-6 relative on the reference fixtures; float64 copies agree to 1e-10 or better, see
``tests/test_fast_path.py``).

What changes, and why the numbers stay:

* **BatchNorm folded** into the preceding convolution. For a dynamic convolution the BN scale multiplies each of
  the K kernels (the attention-weighted mixture is linear in the kernels, so scaling every kernel scales the
  mixture) and the BN shift becomes a bias. This removes a full pass over every activation map.
* **DyReLU and coordinate attention in place**: ``max(a1*x + b1, a2*x + b2) * g_f * g_t`` without the
  ``(..., 2)``-shaped temporaries of the training code, the frequency gate (>= 0) folded into the DyReLU
  coefficients (``max(a1 g x + b1 g, a2 g x + b2 g)``): four passes over the map.
* **Small chunks on CPU**: about ``CPU_CHUNK_FRAMES`` mel frames per call (two 10 s clips). Each sample has its
  own mixed kernels (the K = 4 kernels are mixed once per sample and run as one grouped convolution with the batch
  folded into channels, as in the eager model), so a large batch buys DyMN no larger matrix products; a chunk's
  activations stay in cache and below the allocator's mmap threshold, where larger blocks are page-faulted in
  afresh on every call. Short inputs are still batched, so per-call overhead stays amortised.
* **Channels-last for MN** on CPU (oneDNN's channels-last depthwise convolutions are several times faster). DyMN
  stays NCHW: folding the batch into channels needs it, and one-sample channels-last chunks measured no faster.
  On other devices the whole batch runs in one call, NCHW.
* **Denormal-free gates**: sigmoid gates below ``GATE_FLOOR`` (2^-40) are set to 0. A saturated gate otherwise
  yields subnormal floats, which x86 CPUs process many times slower, and ``torch.set_flush_denormal`` reaches only
  the calling thread, not the worker threads. The change to an output is below 1e-12 of the activation it scales.

The eager modules from ``create_model`` are not modified: fine-tuning and checkpoint loading keep using them. The
fused copy keeps its tensors as buffers (the classifier head as frozen parameters), refuses ``train()`` and refuses
inputs that require gradients.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import NUM_FEATURE_MAPS, AudioMobileNet
from .blocks import (
    ConcurrentSqueezeExcite, ContextGenerator, ConvNormAct, DynamicConv, DynamicInvertedResidual, InvertedResidual,
)

GATE_FLOOR = 2.0 ** -40  # sigmoid gates below this become 0 (see the module docstring)
CPU_CHUNK_FRAMES = 2048  # mel frames per network call on CPU: two 10 s clips (see the module docstring)

_EVAL_ONLY = ("the fused model is inference-only: train or differentiate the eager model from create_model(), "
              "then fuse it again with fuse_for_inference()")


def _bn_scale_shift(norm: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """``y = scale * x + shift`` of an eval-mode BatchNorm, computed in float64 and cast back."""
    scale = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
    shift = norm.bias.double() - norm.running_mean.double() * scale
    return scale.to(norm.weight.dtype), shift.to(norm.weight.dtype)


def _activation_name(module: nn.Module) -> str | None:
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, nn.Hardswish):
        return "hardswish"
    if isinstance(module, nn.Identity):
        return None
    raise TypeError(f"cannot fuse activation {type(module).__name__}")


def _activate_(x: Tensor, activation: str | None) -> Tensor:
    if activation == "relu":
        return x.relu_()
    if activation == "hardswish":
        return F.hardswish(x, inplace=True)
    return x


def _gate(logits: Tensor) -> Tensor:
    """``sigmoid(logits)`` with values below ``GATE_FLOOR`` set to exactly 0, so products stay normal floats."""
    gate = torch.sigmoid(logits)
    return gate.masked_fill_(gate < GATE_FLOOR, 0.0)


def _like(gate: Tensor, x: Tensor) -> Tensor:
    """``gate`` laid out like ``x`` (channels innermost for channels-last maps), for vectorised broadcasting."""
    if x.is_contiguous(memory_format=torch.channels_last):
        return gate.contiguous(memory_format=torch.channels_last)
    return gate.contiguous()


class _EvalOnly(nn.Module):
    def train(self, mode: bool = True) -> "_EvalOnly":
        if mode:
            raise RuntimeError(_EVAL_ONLY)
        return super().train(False)


class FusedConvAct(_EvalOnly):
    """``ConvNormAct`` with the BatchNorm folded into the convolution (weight scale and bias)."""

    def __init__(self, block: ConvNormAct) -> None:
        super().__init__()
        conv, norm = block[0], block[1]
        scale, shift = _bn_scale_shift(norm)
        self.register_buffer("weight", conv.weight.detach() * scale[:, None, None, None], persistent=False)
        self.register_buffer("bias", shift, persistent=False)
        self.stride, self.padding, self.groups = conv.stride, conv.padding, conv.groups
        self.activation = _activation_name(block[2]) if len(block) > 2 else None

    def forward(self, x: Tensor) -> Tensor:
        return _activate_(F.conv2d(x, self.weight, self.bias, self.stride, self.padding, 1, self.groups),
                          self.activation)


class FusedDynamicConv(_EvalOnly):
    """``DynamicConv`` followed by BatchNorm, as one dynamic convolution with scaled kernels and a bias."""

    def __init__(self, conv: DynamicConv, norm: nn.BatchNorm2d) -> None:
        super().__init__()
        scale, shift = _bn_scale_shift(norm)
        kernels = conv.weight.detach().view(conv.num_kernels, conv.out_channels, -1) * scale[None, :, None]
        self.register_buffer("kernels", kernels.flatten(1), persistent=False)  # (K, out * in/groups * k * k)
        self.register_buffer("bias", shift, persistent=False)
        attention = conv.residuals[0]
        # softmax(logits / T): the temperature is folded into the attention projection.
        self.register_buffer("att_weight", attention.weight.detach() / conv.temperature, persistent=False)
        self.register_buffer("att_bias", attention.bias.detach() / conv.temperature, persistent=False)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.padding, self.groups = (conv.kernel_size, conv.stride, conv.padding,
                                                                    conv.groups)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """``x (batch, in, F, T)``, ``context (batch, H)`` -> ``(batch, out, F', T')``."""
        batch = x.shape[0]
        attention = torch.softmax(F.linear(context, self.att_weight, self.att_bias), dim=-1)
        weight = (attention @ self.kernels).view(batch * self.out_channels, self.in_channels // self.groups,
                                                 self.kernel_size, self.kernel_size)
        bias = self.bias if batch == 1 else self.bias.repeat(batch)
        # One grouped convolution with the batch folded into channels (a plain convolution for one sample).
        out = F.conv2d(x.reshape(1, -1, *x.shape[2:]), weight, bias, self.stride, self.padding, 1,
                       self.groups * batch)
        return out.view(batch, self.out_channels, *out.shape[2:])


class FusedContextGenerator(_EvalOnly):
    """``ContextGenerator`` on ``(batch, C, F + T)`` profiles with matrix products; returns sigmoid gates."""

    def __init__(self, gen: ContextGenerator) -> None:
        super().__init__()
        scale, shift = _bn_scale_shift(gen.joint_norm)
        self.register_buffer("joint_weight", gen.joint_conv.weight.detach().flatten(1) * scale[:, None],
                             persistent=False)
        self.register_buffer("joint_bias", shift[:, None], persistent=False)
        self.register_buffer("freq_weight", gen.conv_f.weight.detach().flatten(1), persistent=False)
        self.register_buffer("freq_bias", gen.conv_f.bias.detach()[:, None], persistent=False)
        self.register_buffer("time_weight", gen.conv_t.weight.detach().flatten(1), persistent=False)
        self.register_buffer("time_bias", gen.conv_t.bias.detach()[:, None], persistent=False)
        self.stride = 1 if isinstance(gen.pool_f, nn.Identity) else gen.pool_f.stride[0]

    def _pool(self, h: Tensor) -> Tensor:
        # AvgPool (3, 1) / (1, 3) with zero padding counted, as in the eager model.
        return h if self.stride == 1 else F.avg_pool1d(h, 3, self.stride, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Context ``(batch, H)`` and gates ``(batch, exp, F', 1)`` and ``(batch, exp, 1, T')`` laid out like ``x``."""
        n_freq, n_time = x.shape[2], x.shape[3]
        profiles = torch.cat([x.mean(dim=3), x.mean(dim=2)], dim=2)  # (B, C, F + T)
        joint = F.hardswish(torch.matmul(self.joint_weight, profiles).add_(self.joint_bias), inplace=True)
        context = joint.mean(dim=2)  # over the concatenated F + T positions, as upstream
        h_freq, h_time = torch.split(joint, [n_freq, n_time], dim=2)
        freq_gate = _gate(torch.matmul(self.freq_weight, self._pool(h_freq)).add_(self.freq_bias))
        time_gate = _gate(torch.matmul(self.time_weight, self._pool(h_time)).add_(self.time_bias))
        return context, freq_gate.unsqueeze(3), time_gate.unsqueeze(2)


class FusedDynamicBlock(_EvalOnly):
    """``DynamicInvertedResidual`` with folded BatchNorms and in-place DyReLU and coordinate attention."""

    def __init__(self, block: DynamicInvertedResidual) -> None:
        super().__init__()
        if block.depth_act.num_pieces != 2:
            raise ValueError(f"the fused DyReLU has 2 pieces, got {block.depth_act.num_pieces}")
        self.use_residual = block.use_residual
        self.context_gen = FusedContextGenerator(block.context_gen)
        self.exp_conv = FusedDynamicConv(block.exp_conv, block.exp_norm) if block.has_expansion else None
        self.exp_activation = _activation_name(block.exp_act) if block.has_expansion else None
        self.depth_conv = FusedDynamicConv(block.depth_conv, block.depth_norm)
        self.proj_conv = FusedDynamicConv(block.proj_conv, block.proj_norm)
        relu = block.depth_act
        self.register_buffer("relu_weight", relu.coef_net[0].weight.detach(), persistent=False)
        self.register_buffer("relu_bias", relu.coef_net[0].bias.detach(), persistent=False)
        self.register_buffer("lambdas", relu.lambdas.detach(), persistent=False)
        self.register_buffer("init_v", relu.init_v.detach(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        context, freq_gate, time_gate = self.context_gen(x)
        out = x
        if self.exp_conv is not None:
            out = _activate_(self.exp_conv(out, context), self.exp_activation)
        out = self.depth_conv(out, context)
        theta = torch.sigmoid(F.linear(context, self.relu_weight, self.relu_bias)).mul_(2).sub_(1)
        coefs = theta.view(x.shape[0], -1, 4) * self.lambdas + self.init_v  # per channel: a1, a2, b1, b2
        # The frequency gate g >= 0 goes into the coefficients: max(a1 x + b1, a2 x + b2) * g
        # = max(a1 g x + b1 g, a2 g x + b2 g), on (B, C, F', 1) tensors instead of a pass over the map.
        a1, a2, b1, b2 = (_like(c[:, :, None, None] * freq_gate, out) for c in coefs.unbind(-1))
        first = torch.addcmul(b1, out, a1)
        out = torch.addcmul(b2, out, a2, out=out)
        out = torch.maximum(first, out, out=out)
        out.mul_(_like(time_gate, out))
        out = self.proj_conv(out, context)
        if self.use_residual:
            out += x
        return out


class FusedSqueezeExcite(_EvalOnly):
    def __init__(self, se: ConcurrentSqueezeExcite) -> None:
        super().__init__()
        layer = se.conc_se_layers[0]
        self.register_buffer("fc1_weight", layer.fc1.weight.detach(), persistent=False)
        self.register_buffer("fc1_bias", layer.fc1.bias.detach(), persistent=False)
        self.register_buffer("fc2_weight", layer.fc2.weight.detach(), persistent=False)
        self.register_buffer("fc2_bias", layer.fc2.bias.detach(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Scales ``x`` in place (``x`` is always a fresh map inside the block)."""
        hidden = torch.relu(F.linear(x.mean(dim=(2, 3)), self.fc1_weight, self.fc1_bias))
        scale = _gate(F.linear(hidden, self.fc2_weight, self.fc2_bias))
        return x.mul_(_like(scale[:, :, None, None], x))


class FusedInvertedResidual(_EvalOnly):
    def __init__(self, block: InvertedResidual) -> None:
        super().__init__()
        self.use_residual = block.use_residual
        self.block = nn.Sequential(*(
            FusedSqueezeExcite(layer) if isinstance(layer, ConcurrentSqueezeExcite) else FusedConvAct(layer)
            for layer in block.block
        ))

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)  # the first layer is a convolution: x itself is never modified
        if self.use_residual:
            out += x
        return out


def _fuse_stage(stage: nn.Module) -> nn.Module:
    if isinstance(stage, ConvNormAct):
        return FusedConvAct(stage)
    if isinstance(stage, DynamicInvertedResidual):
        return FusedDynamicBlock(stage)
    if isinstance(stage, InvertedResidual):
        return FusedInvertedResidual(stage)
    raise TypeError(f"cannot fuse {type(stage).__name__}")


class FusedMobileNet(AudioMobileNet):
    """Eval-only fused copy of a DyMN or MN with the eager model's forward API and ``feature_info``.

    Args:
        model: the eager model (not modified).
        cpu_chunk_frames: on CPU the batch runs in chunks of about this many mel frames (two 10 s clips per
            call by default); ``None`` runs the whole batch at once.
    """

    def __init__(self, model: AudioMobileNet, cpu_chunk_frames: int | None = CPU_CHUNK_FRAMES) -> None:
        super().__init__()
        if cpu_chunk_frames is not None and cpu_chunk_frames < 1:
            raise ValueError(f"cpu_chunk_frames must be positive or None, got {cpu_chunk_frames}")
        self.arch = model.arch
        self.feature_info = copy.deepcopy(model.feature_info)
        self.num_features = model.num_features
        self.weights_info = dict(getattr(model, "weights_info", {}))
        self.cpu_chunk_frames = cpu_chunk_frames
        self.blocks = nn.ModuleList(_fuse_stage(stage) for stage in model.stages())
        self.dynamic = any(isinstance(block, FusedDynamicBlock) for block in self.blocks)
        self.classifier = copy.deepcopy(model.classifier).requires_grad_(False)
        # Some buffers are detached views of the eager weights: own copies, so that later changes to the eager
        # model never half-reach this one.
        for module in self.modules():
            for name, buffer in module._buffers.items():
                if buffer is not None:
                    module._buffers[name] = buffer.clone()
        super().train(False)

    def stages(self) -> Sequence[nn.Module]:
        return self.blocks

    def train(self, mode: bool = True) -> "FusedMobileNet":
        if mode:
            raise RuntimeError(_EVAL_ONLY)
        return super().train(False)

    def reset_classifier(self, num_classes: int) -> None:
        raise RuntimeError(_EVAL_ONLY)

    def _chunks(self, x: Tensor) -> tuple[list[Tensor], bool]:
        """The batch split for the network calls, and whether to run them channels-last."""
        if self.cpu_chunk_frames is None or x.device.type != "cpu":
            return [x], False
        size = max(1, self.cpu_chunk_frames // max(1, x.shape[-1]))
        # Per-sample kernels fold the batch into channels, which needs NCHW; the static MN gains from
        # oneDNN's channels-last kernels.
        return list(x.split(size)), not self.dynamic

    def _maps(self, x: Tensor, wanted: Sequence[int]) -> dict[int, Tensor]:
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError(_EVAL_ONLY)
        chunks, channels_last = self._chunks(x)
        stop = max(wanted)
        found: dict[int, list[Tensor]] = {i: [] for i in wanted}
        for piece in chunks:
            for index, stage in enumerate(self.blocks[:stop + 1]):
                piece = stage(piece)
                if index == 0 and channels_last:
                    # The one-channel input gives the stem no layout hint: switch after it.
                    piece = piece.contiguous(memory_format=torch.channels_last)
                if index in found:
                    found[index].append(piece)
        return {i: maps[0] if len(maps) == 1 else torch.cat(maps) for i, maps in found.items()}

    def forward_features(self, x: Tensor) -> Tensor:
        last = NUM_FEATURE_MAPS - 1
        return self._maps(x, [last])[last]

    def forward_intermediates(self, x: Tensor, indices: Sequence[int] | None = None) -> list[Tensor]:
        """As :meth:`AudioMobileNet.forward_intermediates`; MN maps on CPU are channels-last tensors (same shapes
        and values)."""
        wanted = list(range(NUM_FEATURE_MAPS)) if indices is None else [self._check_index(i) for i in indices]
        if not wanted:
            return []
        maps = self._maps(x, sorted(set(wanted)))
        return [maps[i] for i in wanted]


@torch.no_grad()
def fuse_for_inference(model: AudioMobileNet, cpu_chunk_frames: int | None = CPU_CHUNK_FRAMES) -> FusedMobileNet:
    """An eval-only fused copy of ``model`` (DyMN or MN from ``create_model``) for fast inference.

    ``model`` is not modified; the copy has its device and dtype and shares no memory with it. Later changes to
    ``model`` (weights, DyConv temperature) do not reach the copy: fuse again (``HearModel`` does so itself after
    ``load_state_dict``; :meth:`hear_dymn.hear.HearModel.refresh_fused` after other changes).

    Args:
        model: eager DyMN or MN.
        cpu_chunk_frames: on CPU, mel frames per network call (the batch is split into chunks of about this
            size); ``None`` = the whole batch in one call.
    """
    if not isinstance(model, AudioMobileNet) or isinstance(model, FusedMobileNet):
        raise TypeError(f"fuse_for_inference expects an eager DyMN or MN from create_model(), got "
                        f"{type(model).__name__}")
    return FusedMobileNet(model, cpu_chunk_frames=cpu_chunk_frames)
