"""Agreement with EfficientAT (fschmid56/EfficientAT @ a425fdc) given the same weights.

Two kinds of reference data:
* ``{dymn04,mn04}_reference_3p7s.npz`` + ``*_random_weights.pt``: official-format checkpoints and the outputs the
  reference code computed from them (float32 and float64 runs) on a 3.7 s clip.
* ``ref_<arch>_2s.npz`` for every registered architecture: outputs of the reference code, float64, on a 2 s
  synthetic clip, with the weights ``random_state_dict(arch, seed=0)`` (regenerated here, not stored; they are built
  in float64 and do not depend on the CPU). ``scripts/make_reference_data.py`` writes these files from a checkout of
  the reference code.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import DATA, reference

from hear_dymn import MelFrontend, create_model, list_models
from hear_dymn.models.random_weights import random_state_dict

RTOL = 2e-3  # float32 vs float64 reference, relative to the largest magnitude of each array


def assert_close_rel(actual: np.ndarray, expected: np.ndarray, rtol: float, what: str) -> None:
    scale = max(np.abs(expected).max(), 1e-12)
    err = np.abs(actual - expected).max() / scale
    assert err <= rtol, f"{what}: max |diff| / max |ref| = {err:.3g} > {rtol}"


@pytest.mark.parametrize("arch", ["dymn04", "mn04"])
def test_fixture_checkpoint_float32_matches_reference(arch: str) -> None:
    ref = reference(f"{arch}_reference_3p7s.npz")
    model = create_model(arch, checkpoint_path=DATA / f"{arch}_random_weights.pt").eval()
    mel = MelFrontend()(torch.from_numpy(ref["wave"]))
    np.testing.assert_allclose(mel[:, 0].numpy(), ref["mel"], atol=2e-4, rtol=0)
    x = torch.from_numpy(ref["mel"]).unsqueeze(1)
    with torch.no_grad():
        maps = model.forward_intermediates(x)
        logits = model(x)
        embed = model.forward_head(model.forward_features(x), pre_logits=True)
    assert len(maps) == 17
    for i, fmap in enumerate(maps):
        assert_close_rel(fmap.mean((2, 3)).numpy(), ref[f"f64_pooled_{i:02d}"], RTOL, f"pooled map {i}")
    assert_close_rel(logits.numpy(), ref["f64_logits"], RTOL, "logits")
    assert_close_rel(embed.numpy(), ref["f64_embed"], RTOL, "embedding")
    # and the reference's own float32 run
    assert_close_rel(logits.numpy(), ref["logits"], RTOL, "logits vs float32 reference")


@pytest.mark.parametrize("arch", ["dymn04", "mn04"])
def test_fixture_checkpoint_float64_is_exact(arch: str) -> None:
    ref = reference(f"{arch}_reference_3p7s.npz")
    model = create_model(arch, checkpoint_path=DATA / f"{arch}_random_weights.pt").eval().double()
    x = torch.from_numpy(ref["mel"]).unsqueeze(1).double()
    with torch.no_grad():
        maps = model.forward_intermediates(x)
        logits = model(x)
    for i, fmap in enumerate(maps):
        assert_close_rel(fmap.mean((2, 3)).numpy(), ref[f"f64_pooled_{i:02d}"], 1e-10, f"pooled map {i}")
    assert_close_rel(logits.numpy(), ref["f64_logits"], 1e-10, "logits")


@pytest.mark.parametrize("arch", list_models())
def test_every_architecture_matches_reference(arch: str) -> None:
    ref = reference(f"ref_{arch}_2s.npz")
    assert ref["meta"]["model"] == arch
    model = create_model(arch).eval()
    model.load_state_dict(random_state_dict(arch, seed=0), strict=True)
    mel = MelFrontend()(torch.from_numpy(ref["wave"]))
    np.testing.assert_allclose(mel[:, 0].numpy(), ref["mel"], atol=2e-4, rtol=0)
    model = model.double()
    x = torch.from_numpy(ref["mel"]).unsqueeze(1).double()
    with torch.no_grad():
        maps = model.forward_intermediates(x)
        logits = model(x)
        embed = model.forward_head(maps[-1], pre_logits=True)
    for i, fmap in enumerate(maps):
        assert_close_rel(fmap.mean((2, 3)).numpy(), ref[f"f64_pooled_{i:02d}"], 1e-6, f"{arch} pooled map {i}")
    assert_close_rel(logits.numpy(), ref["f64_logits"], 1e-6, f"{arch} logits")
    assert_close_rel(embed.numpy(), ref["f64_embed"], 1e-6, f"{arch} embedding")


def test_reference_data_covers_every_architecture() -> None:
    assert sorted(p.name for p in DATA.glob("ref_*_2s.npz")) == sorted(f"ref_{a}_2s.npz" for a in list_models())


def _weights_digest(arch: str) -> str:
    state = random_state_dict(arch, seed=0)
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].numpy().tobytes())
    return digest.hexdigest()


def test_random_weights_do_not_depend_on_cpu_kernels() -> None:
    """The weights the reference outputs were computed from must be the same on another CPU: rebuild them with
    torch's scalar (non-SIMD) kernels, MKL in its conditional-reproducibility mode (other kernels and summation
    orders: a float32 calibration, as built before, gave other weights this way), oneDNN limited to SSE4.1 and one
    thread, and compare bit for bit."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41",
           "OMP_NUM_THREADS": "1", "HEAR_DYMN_THREADS": "1"}
    code = "import sys; sys.path.insert(0, sys.argv[1]); import test_reference as t; print(t._weights_digest('dymn04'))"
    other = subprocess.run([sys.executable, "-c", code, str(DATA.parent)], env=env, capture_output=True, text=True,
                           timeout=300, check=True).stdout.split()[-1]
    assert other == _weights_digest("dymn04")
