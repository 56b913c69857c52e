#!/usr/bin/env python
"""Write ``tests/data/ref_<arch>_2s.npz``: outputs of the reference implementation (EfficientAT) for every
registered architecture, given the weights ``random_state_dict(arch, seed=0)``.

    git clone https://github.com/fschmid56/EfficientAT /tmp/EfficientAT && git -C /tmp/EfficientAT checkout a425fdc
    pip install torchvision==0.24.1   # the reference code imports it
    python scripts/make_reference_data.py --efficientat /tmp/EfficientAT [--archs dymn04 mn04] [--out tests/data]

Input: ``synthetic_waveform(0, seconds=2.0)`` (float32, stored as ``wave``), the reference log-mel in eval mode
(float32, stored as ``mel``), then the reference network in **float64** on that mel: ``f64_logits``, ``f64_embed``
and the 17 feature maps averaged over frequency and time (``f64_pooled_00`` ... ``f64_pooled_16``). The weights are
CPU-independent (see ``hear_dymn.models.random_weights``), so these files check our code on any machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hear_dymn.models import list_models  # noqa: E402
from hear_dymn.models.random_weights import random_state_dict, synthetic_waveform  # noqa: E402
from hear_dymn.models.registry import model_entry  # noqa: E402

REFERENCE = "fschmid56/EfficientAT@a425fdc"
SECONDS = 2.0


def reference_network(family: str, width_mult: float) -> torch.nn.Module:
    """The reference code's network; DyMN at dynamic-convolution temperature 1, as the released weights are used."""
    if family == "dymn":
        from models.dymn.dy_block import DynamicConv
        from models.dymn.model import get_model

        network = get_model(num_classes=527, width_mult=width_mult)
        for module in network.modules():
            if isinstance(module, DynamicConv):
                module.temperature = 1.0  # get_model without a pretrained name starts the training schedule at 30
        return network
    from models.mn.model import get_model

    return get_model(num_classes=527, width_mult=width_mult)


@torch.no_grad()
def reference_outputs(arch: str) -> dict[str, np.ndarray]:
    from models.preprocess import AugmentMelSTFT

    entry = model_entry(arch)
    wave = synthetic_waveform(0, seconds=SECONDS)[None]
    frontend = AugmentMelSTFT(n_mels=128, sr=32000, win_length=800, hopsize=320, n_fft=1024, freqm=0, timem=0,
                              fmin=0.0, fmax=15000.0).eval()
    mel = frontend(wave)
    network = reference_network(entry.family, entry.width_mult)
    network.load_state_dict(random_state_dict(arch, seed=0), strict=True)
    network = network.double().eval()
    x = mel.double().unsqueeze(1)
    if entry.family == "dymn":
        logits, fmaps = network(x, return_fmaps=True)
        _, embed = network(x)
    else:
        logits, fmaps = network._forward_impl(x, return_fmaps=True)
        _, embed = network(x)
    assert len(fmaps) == 17, f"{arch}: {len(fmaps)} feature maps"
    meta = {"model": arch, "width_mult": entry.width_mult,
            "weights": "hear_dymn.models.random_weights.random_state_dict(arch, seed=0)",
            "input": f"synthetic_waveform(0, seconds={SECONDS})", "reference": REFERENCE,
            "torch": torch.__version__, "dyconv_temperature": 1.0 if entry.family == "dymn" else None,
            "params": sum(p.numel() for p in network.parameters())}
    arrays = {"wave": wave.numpy(), "mel": mel.numpy(), "f64_logits": logits.reshape(1, -1).numpy(),
              "f64_embed": embed.reshape(1, -1).numpy(), "meta_json": np.array(json.dumps(meta))}
    for i, fmap in enumerate(fmaps):
        arrays[f"f64_pooled_{i:02d}"] = fmap.mean((2, 3)).numpy()
    return arrays


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--efficientat", type=Path, required=True, help="checkout of fschmid56/EfficientAT")
    parser.add_argument("--archs", nargs="+", default=list_models(), help="architectures (default: all)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests" / "data")
    args = parser.parse_args(argv)
    if not (args.efficientat / "models" / "dymn" / "model.py").is_file():
        parser.error(f"--efficientat {args.efficientat}: not a checkout of EfficientAT (no models/dymn/model.py)")
    out = args.out.resolve()
    sys.path.insert(0, str(args.efficientat.resolve()))
    os.chdir(args.efficientat)  # the reference code opens metadata/ relative to its checkout
    for arch in args.archs:
        path = out / f"ref_{arch}_2s.npz"
        np.savez_compressed(path, **reference_outputs(arch))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
