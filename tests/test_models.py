"""Architectures: registry, parameter counts, forward API, feature_info, temperature, gradients."""
from __future__ import annotations

import pytest
import torch

from hear_dymn import create_model, list_models
from hear_dymn.models import PRETRAINED
from hear_dymn.models.blocks import DynamicConv, make_divisible

# Parameter counts of the reference implementation (EfficientAT README / constructed models, 527 classes).
REFERENCE_PARAMS = {
    "dymn04": 1_961_239, "dymn10": 10_548_479, "dymn20": 39_966_143,
    "mn04": 983_599, "mn05": 1_431_239, "mn10": 4_876_831, "mn20": 17_909_287, "mn30": 39_086_367,
    "mn40": 68_427_303,
}
EMBED_DIMS = {"dymn04": 384, "dymn10": 960, "dymn20": 1920}


def test_registry_lists_all_architectures() -> None:
    assert list_models() == ["dymn04", "dymn10", "dymn20", "mn04", "mn05", "mn10", "mn20", "mn30", "mn40"]
    assert list_models("dymn*") == ["dymn04", "dymn10", "dymn20"]


def test_unknown_model_suggests_names() -> None:
    with pytest.raises(KeyError, match="did you mean dymn10"):
        create_model("dymn1O")


@pytest.mark.parametrize("name", list(REFERENCE_PARAMS))
def test_parameter_count_and_reported_params(name: str) -> None:
    with torch.device("meta"):
        model = create_model(name)
    count = sum(p.numel() for p in model.parameters())
    assert count == REFERENCE_PARAMS[name]
    for cfg in PRETRAINED.values():
        if cfg.arch == name:  # authors report M params with 2-3 significant digits (dymn incl. buffers)
            assert abs(count / 1e6 - cfg.reported["params_m"]) / cfg.reported["params_m"] < 0.01


@pytest.mark.parametrize("name", list_models())
def test_forward_api_and_feature_info(name: str) -> None:
    model = create_model(name, num_classes=7).eval()
    x = torch.randn(2, 1, 128, 64)
    with torch.no_grad():
        maps = model.forward_intermediates(x)
        feats = model.forward_features(x)
        logits = model(x)
        pooled = model.forward_head(feats, pre_logits=True)
    assert len(maps) == len(model.feature_info) == 17
    for fmap, info in zip(maps, model.feature_info):
        assert fmap.shape[1] == info["num_chs"]
        assert fmap.shape[2] == 128 // info["reduction"]
    assert feats.shape == (2, model.num_features, 4, 2)
    torch.testing.assert_close(feats, maps[-1])
    assert logits.shape == (2, 7)
    assert pooled.shape == (2, model.num_features)
    if name in EMBED_DIMS:
        assert model.num_features == EMBED_DIMS[name]


def test_forward_intermediates_selects_and_stops_early() -> None:
    model = create_model("dymn04").eval()
    x = torch.randn(1, 1, 128, 40)
    with torch.no_grad():
        everything = model.forward_intermediates(x)
        picked = model.forward_intermediates(x, [5, -1, 11])
    torch.testing.assert_close(picked[0], everything[5])
    torch.testing.assert_close(picked[1], everything[16])
    torch.testing.assert_close(picked[2], everything[11])
    with pytest.raises(IndexError, match="0..16"):
        model.forward_intermediates(x, [17])


def test_batch_does_not_mix_samples() -> None:
    """Dynamic kernels are per sample: a batch gives the same logits as single samples."""
    model = create_model("dymn04").eval()
    x = torch.randn(3, 1, 128, 50)
    with torch.no_grad():
        batched = model(x)
        singles = torch.cat([model(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, singles, rtol=1e-4, atol=1e-5)


def test_temperature_default_and_setter() -> None:
    model = create_model("dymn04")
    assert model.dyconv_temperature == 1.0
    model.set_dyconv_temperature(30)
    assert all(m.temperature == 30 for m in model.modules() if isinstance(m, DynamicConv))
    assert "temperature" not in " ".join(model.state_dict())
    with pytest.raises(ValueError):
        model.set_dyconv_temperature(0)


@pytest.mark.parametrize("name", ["dymn04", "mn04"])
def test_backward_reaches_every_parameter(name: str) -> None:
    model = create_model(name, num_classes=3).train()
    model(torch.randn(2, 1, 128, 32)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_reset_classifier() -> None:
    model = create_model("dymn04")
    model.reset_classifier(10)
    assert model.num_classes == 10
    assert model(torch.randn(1, 1, 128, 32)).shape == (1, 10)


def test_make_divisible_matches_reference_rounding() -> None:
    assert [make_divisible(c * 0.4) for c in (16, 24, 40, 80, 112, 160, 960)] == [8, 16, 16, 32, 48, 64, 384]
    assert make_divisible(1280 * 0.4) == 512
