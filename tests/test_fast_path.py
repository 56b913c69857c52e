"""The inference fast path (``hear_dymn.models.fast``, ``EmbeddingConfig.fast``): same numbers as the eager modules
and EfficientAT's reference outputs, eval-only, and the option to turn it off. (The log-mel is the same on both paths;
``tests/test_frontend.py`` checks it against the textbook computation.)"""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA, reference

from hear_dymn import MelFrontend, create_model, get_scene_embeddings, get_timestamp_embeddings, load_model
from hear_dymn.models.fast import GATE_FLOOR, FusedMobileNet, fuse_for_inference
from hear_dymn.models.random_weights import synthetic_waveform

FIXTURE_ARCHS = ["dymn04", "mn04"]
TOL = 1e-4  # fast vs eager, relative to the largest magnitude of each array (measured: ~1e-6)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny inputs: one thread is as fast, and immune to a busy shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rel_err(actual: torch.Tensor, expected: torch.Tensor | np.ndarray) -> float:
    expected = torch.as_tensor(expected).double()
    return ((actual.double() - expected).abs().max() / expected.abs().max()).item()


def fixture_model(arch: str):
    return create_model(arch, checkpoint_path=DATA / f"{arch}_random_weights.pt").eval()


def sounds(n: int, seconds: float) -> torch.Tensor:
    return torch.stack([synthetic_waveform(i, seconds) for i in range(n)])


@pytest.mark.parametrize("arch", FIXTURE_ARCHS)
@pytest.mark.parametrize("cpu_chunk_frames", [2048, 100, None], ids=["chunks", "per-sample", "whole-batch"])
def test_fused_matches_eager_and_reference(arch: str, cpu_chunk_frames: int | None) -> None:
    """All 17 maps, logits and the pooled embedding, on the fixture clip (EfficientAT's outputs) and a batch."""
    ref = reference(f"{arch}_reference_3p7s.npz")
    model = fixture_model(arch)
    fused = fuse_for_inference(model, cpu_chunk_frames=cpu_chunk_frames)
    mel = torch.from_numpy(ref["mel"]).unsqueeze(1)
    batch = torch.cat([mel, MelFrontend()(sounds(2, 3.7)[:, :mel.shape[-1] * 320])])  # 3 clips
    with torch.no_grad():
        maps, fused_maps = model.forward_intermediates(batch), fused.forward_intermediates(batch)
        logits, fused_logits = model(batch), fused(batch)
        embed = fused.forward_head(fused.forward_features(batch), pre_logits=True)
    assert len(fused_maps) == 17
    for i, (a, b) in enumerate(zip(fused_maps, maps)):
        assert a.shape == b.shape
        assert rel_err(a, b) < TOL, f"map {i}"
        assert rel_err(a[:1].mean((2, 3)), ref[f"f64_pooled_{i:02d}"]) < 2e-3, f"map {i} vs EfficientAT"
    assert rel_err(fused_logits, logits) < TOL
    assert rel_err(fused_logits[:1], ref["f64_logits"]) < 2e-3
    assert rel_err(embed[:1], ref["f64_embed"]) < 2e-3
    assert fused.forward_intermediates(batch, [13, -1])[1].shape == maps[16].shape


@pytest.mark.parametrize("arch", FIXTURE_ARCHS)
def test_fusion_is_exact_in_float64(arch: str) -> None:
    """Folding BatchNorm and the in-place DyReLU change only rounding: float64 copies agree to ~1e-14."""
    model = fixture_model(arch).double()
    fused = fuse_for_inference(model)
    x = MelFrontend()(sounds(2, 0.5)).double()
    with torch.no_grad():
        for a, b in zip(fused.forward_intermediates(x), model.forward_intermediates(x)):
            assert a.dtype == torch.float64 and rel_err(a, b) < 1e-10


def test_temperature_and_eager_model_untouched() -> None:
    model = fixture_model("dymn04")
    model.set_dyconv_temperature(3.0)
    before = copy.deepcopy(model.state_dict())
    fused = fuse_for_inference(model)
    x = MelFrontend()(sounds(1, 1.0))
    with torch.no_grad():
        assert rel_err(fused(x), model(x)) < TOL
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert model.dyconv_temperature == 3.0 and model.training is False


def test_fused_model_is_eval_only() -> None:
    model = fixture_model("dymn04")
    fused = fuse_for_inference(model)
    assert isinstance(fused, FusedMobileNet) and not fused.training
    assert not any(p.requires_grad for p in fused.parameters())
    assert fused.feature_info == model.feature_info and fused.arch == "dymn04"
    with pytest.raises(RuntimeError, match="inference-only"):
        fused.train()
    with pytest.raises(RuntimeError, match="inference-only"):
        fused(torch.zeros(1, 1, 128, 50, requires_grad=True))
    with pytest.raises(RuntimeError, match="inference-only"):
        fused.reset_classifier(3)
    with pytest.raises(TypeError, match="eager DyMN or MN"):
        fuse_for_inference(fused)
    # the eager model still trains: gradients reach its parameters
    model.train()
    model(torch.randn(2, 1, 128, 50)).sum().backward()
    assert model.layers[3].depth_conv.weight.grad is not None


def test_saturated_gates_give_no_subnormals() -> None:
    """Gates below GATE_FLOOR become 0: no subnormal floats (slow on x86) reach the following layers."""
    model = fixture_model("dymn04")
    with torch.no_grad():
        for block in model.layers:
            block.context_gen.conv_f.bias.sub_(88.0)  # sigmoid(-88) ~ 6e-39: subnormal gates and products
    fused = fuse_for_inference(model)
    x = MelFrontend()(sounds(1, 1.0))
    tiny = torch.finfo(torch.float32).tiny
    seen = {"eager": 0, "fast": 0}

    def count(name):
        def hook(module, inputs, output):
            seen[name] += int(((output != 0) & (output.abs() < tiny)).sum())
        return hook

    model.layers[5].proj_conv.register_forward_hook(lambda m, i, o: count("eager")(m, i, i[0]))
    fused.blocks[6].proj_conv.register_forward_hook(lambda m, i, o: count("fast")(m, i, i[0]))
    with torch.no_grad():
        eager_out, fast_out = model.forward_features(x), fused.forward_features(x)
    assert seen["eager"] > 0 and seen["fast"] == 0  # the input of the projection: x * gates
    assert rel_err(fast_out, eager_out) < TOL
    assert GATE_FLOOR < 1e-10


@pytest.mark.parametrize("arch", FIXTURE_ARCHS)
def test_hear_fast_is_default_and_can_be_turned_off(arch: str) -> None:
    path = str(DATA / f"{arch}_random_weights.pt")
    fast, eager = load_model(path), load_model(path, fast=False)
    assert fast.cfg.fast and isinstance(fast.fused, FusedMobileNet) and type(fast.frontend) is MelFrontend
    assert not eager.cfg.fast and eager.fused is None and type(eager.frontend) is MelFrontend
    assert fast.describe()["embedding"]["fast"] is True and eager.describe()["embedding"]["fast"] is False
    audio = sounds(2, 2.5)
    sizes = [fast.network.feature_info[i]["num_chs"] for i in fast.cfg.layers] + [128]
    for a, b in [(get_scene_embeddings(audio, fast), get_scene_embeddings(audio, eager)),
                 (get_timestamp_embeddings(audio, fast)[0], get_timestamp_embeddings(audio, eager)[0])]:
        offset = 0
        for size in sizes:  # each part relative to its own scale
            assert rel_err(a[..., offset:offset + size], b[..., offset:offset + size]) < TOL
            offset += size
    with pytest.raises(TypeError, match="fast must be true or false"):
        load_model(path, fast="no")


def test_scene_embedding_matches_reference_through_fast_path() -> None:
    """The fixture clip through the default (fast) HEAR module: pooled EfficientAT maps + mel band means."""
    ref = reference("dymn04_reference_3p7s.npz")
    model = load_model(str(DATA / "dymn04_random_weights.pt"))
    emb = get_scene_embeddings(torch.from_numpy(ref["wave"]), model)
    expected = np.concatenate([ref[f"f64_pooled_{i:02d}"] for i in (5, 11, 13, 15, 16)] + [ref["mel"].mean(-1)], 1)
    err = np.abs(emb.numpy() - expected) / np.abs(expected).max(axis=1, keepdims=True)
    assert err.max() < 2e-3


@pytest.mark.slow
def test_benchmark_quick_writes_reports(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "eval" / "benchmark.py"), "--quick", "--out-dir",
                           str(tmp_path)], capture_output=True, text=True, cwd=root, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (tmp_path / "performance.md").read_text()
    for heading in ("## Machine", "## Targets", "## Scene embeddings", "## Timestamp embeddings", "## Peak memory",
                    "## Fast vs eager: differences"):
        assert heading in report
    assert "random weights" in report and "not measured: no GPU" in report
    assert (tmp_path / "performance.csv").read_text().startswith("section,model,path,batch,metric,value,unit")
    assert (tmp_path / "performance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "[benchmark" in proc.stderr


def test_new_weights_reach_the_fast_path(dymn04_checkpoint, tmp_path) -> None:
    from hear_dymn.models.random_weights import random_state_dict

    old = load_model(str(dymn04_checkpoint))
    fused_storage = {b.untyped_storage().data_ptr() for b in old.fused.buffers()}
    eager_storage = {t.untyped_storage().data_ptr() for t in (*old.network.parameters(), *old.network.buffers())}
    assert not fused_storage & eager_storage  # the fused copy owns its memory
    new_weights = random_state_dict("dymn04", seed=7)
    torch.save(new_weights, tmp_path / "new.pt")
    expected = get_scene_embeddings(sounds(2, 1.0), load_model(str(tmp_path / "new.pt")))
    before = get_scene_embeddings(sounds(2, 1.0), old)
    assert rel_err(before, expected) > 1e-2
    old.network.load_state_dict(new_weights)  # straight into the network
    torch.testing.assert_close(get_scene_embeddings(sounds(2, 1.0), old), expected, rtol=1e-5, atol=1e-5)
    other = load_model(str(dymn04_checkpoint))
    other.load_state_dict(old.state_dict())  # through the HEAR model
    torch.testing.assert_close(get_scene_embeddings(sounds(2, 1.0), other), expected, rtol=1e-5, atol=1e-5)
    other.network.set_dyconv_temperature(2.0)
    other.refresh_fused()
    slow = load_model(str(tmp_path / "new.pt"), fast=False)
    slow.network.set_dyconv_temperature(2.0)
    torch.testing.assert_close(get_scene_embeddings(sounds(2, 1.0), other), get_scene_embeddings(sounds(2, 1.0), slow),
                               rtol=1e-4, atol=1e-4)
