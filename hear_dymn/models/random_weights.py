"""Random weights in the official checkpoint format, for tests and offline demos.

The result is a plain state_dict with exactly the keys, shapes and dtypes of a released EfficientAT checkpoint,
drawn from a seeded generator, so the same (arch, seed) gives the same tensors on every machine. BatchNorm statistics
and affine parameters, linear layers and biases are perturbed so that every feature map depends on the input; the
BatchNorm running statistics are then calibrated on synthetic sounds. Every step runs in float64 (draws, log-mel,
calibration forward pass) and only the result is rounded to float32: a CPU's float32 kernels (SIMD width, thread
count) never enter the weights, whose float64 round-off is far below float32's resolution. These are **not**
pretrained weights.

CLI: ``python -m hear_dymn.models.random_weights dymn10 out.pt [--seed 0] [--num-classes 527]``
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from .registry import create_model


def random_state_dict(arch: str, seed: int = 0, num_classes: int = 527, calibrate: bool = True
                      ) -> dict[str, torch.Tensor]:
    """Seeded random state_dict for ``arch`` in EfficientAT's format (see the module docstring)."""
    with torch.device("meta"):
        template = create_model(arch, num_classes=num_classes).state_dict()
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, meta in template.items():
        shape = tuple(meta.shape)
        leaf = key.rsplit(".", 1)[-1]

        # float64 draws: torch's float32 normal sampler has a SIMD path whose rounding depends on the CPU
        def normal(std: float, mean: float = 0.0) -> torch.Tensor:
            return torch.randn(shape, generator=gen, dtype=torch.float64) * std + mean

        def uniform(low: float, high: float) -> torch.Tensor:
            return torch.rand(shape, generator=gen, dtype=torch.float64) * (high - low) + low

        if leaf == "num_batches_tracked":
            value = torch.tensor(1000, dtype=torch.int64)
        elif leaf == "lambdas":
            value = torch.tensor([1.0, 1.0, 0.5, 0.5], dtype=torch.float64)
        elif leaf == "init_v":
            value = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
        elif leaf == "running_mean":
            value = normal(0.1)
        elif leaf == "running_var":
            value = uniform(0.5, 1.5)
        elif leaf == "bias":
            value = normal(0.1)
        elif leaf == "weight" and len(shape) == 1 and ("proj_norm" in key or _is_mn_projection(template, key)):
            value = uniform(0.2, 0.6)  # damped residual branches keep deep activations O(1)
        elif leaf == "weight" and len(shape) == 1:  # BatchNorm scale
            value = uniform(0.5, 1.5)
        elif leaf == "weight" and len(shape) == 4 and shape[:2] == (1, 1):  # DynamicConv kernels (1, 1, K, n)
            value = normal(1.0)  # rescaled below once the fan is known
            value = value * _dynamic_conv_std(template, key)
        elif leaf == "weight":
            fan_in = math.prod(shape[1:])
            value = normal(1.0 / math.sqrt(fan_in))
        else:
            raise AssertionError(f"unhandled state_dict entry {key}")
        out[key] = value.to(meta.dtype)  # float32 rounding of a float64 value: the same on every machine
    if calibrate:
        _calibrate_batch_norm(arch, out, num_classes, seed)
    return out


def synthetic_waveform(seed: int, seconds: float = 2.0, sample_rate: int = 32000,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A deterministic test sound ``(samples,)``: a gated tone, a chirp and noise, varying with ``seed``.

    Computed in float64 and returned in ``dtype``.
    """
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sample_rate), dtype=torch.float64) / sample_rate
    f0 = 110.0 * (1 + seed % 7)
    tone = 0.3 * torch.sin(2 * math.pi * f0 * t) * ((t * (2 + seed % 3)) % 1 < 0.5)
    chirp = 0.2 * torch.sin(2 * math.pi * (200 + 1500 * (seed % 4) * t) * t)
    noise = (0.02 + 0.02 * (seed % 5)) * torch.randn(t.shape, generator=gen, dtype=torch.float64)
    return (tone + chirp + noise).to(dtype)


def calibration_mel(seed: int = 0, batch: int = 6) -> torch.Tensor:
    """Float64 log-mel batch ``(batch, 1, 128, frames)`` of synthetic sounds (the reference frontend's formula)."""
    from ..frontend import MelFrontend

    waves = torch.stack([synthetic_waveform(1000 + seed * batch + i, dtype=torch.float64) for i in range(batch)])
    return MelFrontend(dtype=torch.float64)(waves)


@torch.no_grad()
def _calibrate_batch_norm(arch: str, state: dict[str, torch.Tensor], num_classes: int, seed: int) -> None:
    model = create_model(arch, num_classes=num_classes).double()
    model.load_state_dict(state)
    model.eval()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: running stats = statistics of the calibration batch
        norm.train()
    model.forward_features(calibration_mel(seed))
    for key, value in model.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            state[key] = value.float()


def _is_mn_projection(template: dict[str, torch.Tensor], key: str) -> bool:
    """True for the BatchNorm of an MN block's last (projection) conv: ``features.i.block.<last>.1.weight``."""
    parts = key.split(".")
    if parts[0] != "features" or len(parts) != 6 or parts[2] != "block":
        return False
    prefix = ".".join(parts[:3])
    last = max(int(k.split(".")[3]) for k in template if k.startswith(prefix + "."))
    return int(parts[3]) == last


def _dynamic_conv_std(template: dict[str, torch.Tensor], key: str) -> float:
    """He-like scale for a dynamic conv from the fan-in its BatchNorm partner implies."""
    prefix = key.rsplit(".", 1)[0]  # layers.i.exp_conv | depth_conv | proj_conv
    block, name = prefix.rsplit(".", 1)
    norm = {"exp_conv": "exp_norm", "depth_conv": "depth_norm", "proj_conv": "proj_norm"}[name]
    out_channels = template[f"{block}.{norm}.weight"].shape[0]
    per_kernel = template[key].shape[-1]
    fan_in = per_kernel // out_channels
    return math.sqrt(2.0 / fan_in)


def save_random_checkpoint(arch: str, path: str | Path, seed: int = 0, num_classes: int = 527) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(random_state_dict(arch, seed=seed, num_classes=num_classes), path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("arch")
    parser.add_argument("path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-classes", type=int, default=527)
    args = parser.parse_args(argv)
    save_random_checkpoint(args.arch, args.path, seed=args.seed, num_classes=args.num_classes)
    print(f"wrote random (NOT pretrained) {args.arch} weights to {args.path}")


if __name__ == "__main__":
    main()
