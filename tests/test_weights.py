"""Checkpoint registry, download/cache, strict and checked loading, clear errors."""
from __future__ import annotations

import urllib.parse
from pathlib import Path

import pytest
import torch

from hear_dymn import CheckpointError, create_model
from hear_dymn.models import PRETRAINED, list_pretrained
from hear_dymn.models.random_weights import save_random_checkpoint
from hear_dymn.models.registry import infer_architecture
from hear_dymn.models.weights import RELEASE_URL, read_state_dict, sha256_of


def test_registry_has_the_released_audioset_weights() -> None:
    for name in ["dymn04_as", "dymn10_as", "dymn20_as", "mn04_as", "mn05_as", "mn10_as", "mn20_as", "mn30_as",
                 "mn40_as", "mn40_as_ext"]:
        assert name in list_pretrained()
    assert PRETRAINED["dymn20_as"].file_name == "dymn20_as_mAP_493.pt"
    assert PRETRAINED["dymn10_as"].url == "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/dymn10_as.pt"
    assert PRETRAINED["dymn10_as"].reported == {"params_m": 10.57, "gmacs": 0.58, "audioset_map": 47.7}


@pytest.mark.parametrize("name", list(PRETRAINED))
def test_urls_are_well_formed_and_heads_exist(name: str) -> None:
    cfg = PRETRAINED[name]
    url = urllib.parse.urlparse(cfg.url)
    assert url.scheme == "https" and " " not in cfg.url and cfg.url.startswith(RELEASE_URL)
    assert cfg.file_name.endswith(".pt") and cfg.file_name == cfg.file_name.strip()
    with torch.device("meta"):
        keys = create_model(cfg.arch).state_dict()
    assert f"{cfg.classifier}.weight" in keys


def test_fixture_checkpoint_loads_strictly_with_identical_keys(dymn04_checkpoint) -> None:
    state = torch.load(dymn04_checkpoint, map_location="cpu", weights_only=True)
    model = create_model("dymn04")
    assert list(model.state_dict()) != [] and set(model.state_dict()) == set(state)
    assert len(state) == 578
    model.load_state_dict(state, strict=True)
    loaded = create_model("dymn04", checkpoint_path=dymn04_checkpoint)
    assert loaded.weights_info["sha256"] == sha256_of(dymn04_checkpoint)


def test_architecture_is_inferred_from_keys(dymn04_checkpoint, mn04_checkpoint, tmp_path) -> None:
    assert infer_architecture(read_state_dict(dymn04_checkpoint)) == "dymn04"
    assert infer_architecture(read_state_dict(mn04_checkpoint)) == "mn04"
    path = save_random_checkpoint("mn05", tmp_path / "mn05.pt")  # same stem width as mn04
    assert infer_architecture(read_state_dict(path)) == "mn05"


def test_wrong_architecture_names_the_mismatch(dymn04_checkpoint) -> None:
    with pytest.raises(CheckpointError, match=r"does not fit architecture 'dymn10'.*shape mismatches.*dymn04"):
        create_model("dymn10", checkpoint_path=dymn04_checkpoint)
    with pytest.raises(CheckpointError, match="missing keys: layers"):
        create_model("dymn04", checkpoint_path=dymn04_checkpoint.parent / "mn04_random_weights.pt")


def test_not_a_checkpoint(tmp_path) -> None:
    bad = tmp_path / "notes.pt"
    bad.write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        create_model("dymn04", checkpoint_path=bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        create_model("dymn04", checkpoint_path=tmp_path / "missing.pt")
    torch.save({"epoch": 3}, tmp_path / "dict.pt")
    with pytest.raises(CheckpointError, match="does not hold a state_dict"):
        create_model("dymn04", checkpoint_path=tmp_path / "dict.pt")


def test_partial_checkpoint_is_refused(dymn04_checkpoint, tmp_path) -> None:
    state = read_state_dict(dymn04_checkpoint)
    del state["layers.3.depth_conv.weight"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="1 missing keys: layers.3.depth_conv.weight"):
        create_model("dymn04", checkpoint_path=tmp_path / "partial.pt")


def test_other_class_count_drops_only_the_head(dymn04_checkpoint) -> None:
    model = create_model("dymn04", checkpoint_path=dymn04_checkpoint, num_classes=50)
    state = read_state_dict(dymn04_checkpoint)
    torch.testing.assert_close(model.state_dict()["classifier.2.weight"], state["classifier.2.weight"])
    assert model.num_classes == 50


def test_offline_and_not_cached_gives_one_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)

    def offline(url, dst, progress=True):
        import urllib.error
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(CheckpointError) as err:
        create_model("dymn10", pretrained="dymn10_as")
    message = str(err.value)
    assert "dymn10_as" in message and str(tmp_path / "hub") in message and "checkpoint_path" in message
    assert not list((tmp_path / "hub").rglob("*.part"))


def test_download_to_hub_cache_and_hash(tmp_path, monkeypatch, dymn04_checkpoint) -> None:
    """The real download path, fed from a local file:// URL: cache placement, reuse, sha256 recorded."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.setattr("hear_dymn.models.weights.RELEASE_URL", dymn04_checkpoint.parent.as_uri() + "/")
    cfg = PRETRAINED["dymn04_as"]
    monkeypatch.setitem(PRETRAINED, "dymn04_as", type(cfg)(**{**cfg.__dict__, "file_name": dymn04_checkpoint.name}))
    model = create_model("dymn04", pretrained=True)
    cached = tmp_path / "hub" / "hub" / "checkpoints" / dymn04_checkpoint.name
    assert cached.exists()
    assert model.weights_info == {"name": "dymn04_as", "path": str(cached), "sha256": sha256_of(dymn04_checkpoint)}
    # a pinned digest that does not match is refused
    monkeypatch.setitem(PRETRAINED, "dymn04_as", type(cfg)(**{**cfg.__dict__, "file_name": dymn04_checkpoint.name,
                                                                "sha256": "0" * 64}))
    with pytest.raises(CheckpointError, match="pinned to 0000"):
        create_model("dymn04", pretrained=True)


def test_weights_for_another_architecture_are_refused() -> None:
    with pytest.raises(ValueError, match="are for 'dymn10'"):
        create_model("dymn04", pretrained="dymn10_as")


def test_truncated_download_is_never_cached(tmp_path, monkeypatch, dymn04_checkpoint) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    data = dymn04_checkpoint.read_bytes()

    def half(url, dst, progress=True):  # the connection drops half-way without an error
        Path(dst).write_bytes(data[: len(data) // 2])

    monkeypatch.setattr(torch.hub, "download_url_to_file", half)
    with pytest.raises(CheckpointError, match=r"dymn04_as\.pt failed its check \(incomplete download\?\)"):
        create_model("dymn04", pretrained="dymn04_as")
    assert not [p for p in (tmp_path / "hub").rglob("*") if p.is_file()]  # neither the file nor a .part


def test_damaged_cached_weights_are_an_error_not_random_init(tmp_path, monkeypatch) -> None:
    from hear_dymn.bench.suite import build_embedder

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    cached = PRETRAINED["dymn04_as"].cache_path()
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"half a file")
    with pytest.raises(CheckpointError, match="cached copy of dymn04_as: delete it to download it again"):
        build_embedder("dymn04", allow_random_init=True)


def test_weights_module_does_not_depend_on_the_registry() -> None:
    """One-way dependency: the registry loads weights; the weights module knows no architectures."""
    import ast

    import hear_dymn.models.weights as weights

    tree = ast.parse(Path(weights.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not {m for m in imported if "registry" in m or m in ("dymn", "mn")}, imported
