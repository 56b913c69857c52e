"""Embedding cache (resume, invalidation, skipped files) and the suite end to end on miniatures."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hear_dymn.bench.embeddings import EmbeddingCache, LogMelBaseline, shard_plan
from hear_dymn.bench.suite import build_embedder, run_suite, suite_config
from hear_dymn.bench.tasks import get_task
from hear_dymn.bench.tasks.synthetic import write_miniature


@pytest.fixture(scope="module")
def esc50_root(tmp_path_factory) -> Path:
    return write_miniature("esc50", tmp_path_factory.mktemp("data") / "esc50", seed=0, corrupt=True)


class CountingEmbedder(LogMelBaseline):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __call__(self, audio):
        self.calls += audio.shape[0]
        return super().__call__(audio)


def test_cache_resumes_and_recomputes_only_missing_shards(esc50_root, tmp_path) -> None:
    task = get_task("esc50", esc50_root)
    cache = EmbeddingCache(tmp_path, shard_size=4)
    first = CountingEmbedder()
    full = cache.get(first, task, "fold1")
    assert first.calls == len(full.clip_ids) and full.computed_shards == 3  # 10 clips, shards of 4
    # a rerun computes nothing
    again = CountingEmbedder()
    cached = cache.get(again, task, "fold1")
    assert again.calls == 0 and cached.cached_shards == 3
    np.testing.assert_array_equal(cached.x, full.x)
    # a run killed after the first shard: the other shards are missing and only they are recomputed
    shards = sorted(cache.split_dir(first, task, "fold1").glob("shard-*.npz"))
    for path in shards[1:]:
        path.unlink()
    resumed = CountingEmbedder()
    result = cache.get(resumed, task, "fold1")
    assert result.cached_shards == 1 and result.computed_shards == 2
    assert resumed.calls == len(full.clip_ids) - 4 + sum(1 for c in shard_plan(task.clips("fold1"), 4)[0]
                                                        if c.clip_id in full.skipped)
    np.testing.assert_array_equal(result.x, full.x)
    assert not list(cache.split_dir(first, task, "fold1").glob("*.tmp"))


def test_damaged_shard_is_recomputed(esc50_root, tmp_path) -> None:
    task = get_task("esc50", esc50_root)
    cache = EmbeddingCache(tmp_path, shard_size=4)
    embedder = CountingEmbedder()
    reference = cache.get(embedder, task, "fold2").x
    shards = sorted(cache.split_dir(embedder, task, "fold2").glob("shard-*.npz"))
    shards[0].write_bytes(b"truncated")
    shards[1].write_bytes(shards[1].read_bytes()[:200])  # a zip archive cut short
    np.testing.assert_array_equal(cache.get(CountingEmbedder(), task, "fold2").x, reference)


def test_corrupt_audio_is_skipped_and_named(esc50_root, tmp_path) -> None:
    task = get_task("esc50", esc50_root)
    marker = json.loads((esc50_root / ".miniature.json").read_text())
    cache = EmbeddingCache(tmp_path)
    skipped = {}
    for split in task.spec.splits:
        skipped.update(cache.get(LogMelBaseline(), task, split).skipped)
    assert len(skipped) == 1
    (clip_id, reason), = skipped.items()
    assert clip_id in json.dumps(marker) and "cannot read audio file" in reason


def test_unknown_model_spec_is_explained() -> None:
    with pytest.raises(ValueError, match="neither 'logmel', an architecture"):
        build_embedder("dymn99", allow_random_init=True)


def test_explicit_weights_never_fall_back_to_random(offline) -> None:
    with pytest.raises(Exception, match="Could not download"):
        build_embedder("dymn04_as", allow_random_init=True)
    embedder = build_embedder("dymn04", allow_random_init=True)
    assert embedder.weights_label == "random init"
    with pytest.raises(Exception, match="Could not download"):
        build_embedder("dymn04", allow_random_init=False)


def test_quick_suite_end_to_end(tmp_path, offline) -> None:
    cfg = suite_config("quick", models=("dymn04", "logmel"), tasks=("esc50", "openmic"), protocols=("linear",),
                       seeds=(0,), out_dir=str(tmp_path / "reports"), cache_dir=str(tmp_path / "cache"))
    result = run_suite(cfg, progress=False)
    out = tmp_path / "reports"
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.html"):
        assert (out / name).exists()
    text = (out / "leaderboard.md").read_text()
    assert "**random init**" in text and "reported" in text
    measured = [r for r in result["rows"] if r["source"] == "measured"]
    assert len(measured) == 4
    # the reported metric is recomputable from the saved predictions
    from hear_dymn.bench.metrics import METRICS

    row = next(r for r in measured if r["model"] == "dymn04" and r["task"] == "openmic")
    with np.load(out / "results" / "dymn04" / "linear" / "openmic" / "test_seed0.npz") as pred:
        value = METRICS["masked_map"](pred["targets"], pred["scores"], pred["mask"])
        assert set(pred.files) == {"clip_ids", "targets", "scores", "mask"}
    assert value == pytest.approx(row["mean"])
    saved = json.loads((out / "results" / "dymn04" / "linear" / "openmic.json").read_text())
    assert saved["mean"] == pytest.approx(row["mean"]) and saved["weights"] == "random init"


def test_finetune_protocol_in_the_suite(tmp_path, offline) -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread avoids oversubscription on busy CI machines
    try:
        cfg = suite_config("quick", models=("dymn04",), tasks=("openmic",), protocols=("finetune",), seeds=(0,),
                           finetune_epochs=1, out_dir=str(tmp_path / "reports"), cache_dir=str(tmp_path / "cache"))
        result = run_suite(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    (row,) = [r for r in result["rows"] if r["source"] == "measured"]
    assert (row["protocol"], row["task"], row["config"]["epochs"]) == ("finetune", "openmic", 1)
    assert row["config"]["recipe"] == "quick:openmic-dymn" and "a425fdc" in row["config"]["recipe_source"]
    assert list(row["curves"]) == ["test_seed0"] and "valid_masked_map" in row["curves"]["test_seed0"][0]
    out = tmp_path / "reports"
    assert (out / "plots" / "openmic-masked-map_finetune_curves.png").stat().st_size > 1000
    assert "fine-tuning" in result["provenance"] and "1 process" in result["provenance"]["fine-tuning"]
    from hear_dymn.bench.metrics import METRICS

    with np.load(out / "results" / "dymn04" / "finetune" / "openmic" / "test_seed0.npz") as pred:
        assert METRICS["masked_map"](pred["targets"], pred["scores"], pred["mask"]) == pytest.approx(row["mean"])
    assert "curves" not in (out / "leaderboard.csv").read_text().splitlines()[0]
    with pytest.raises(ValueError, match="unknown protocol"):
        run_suite(suite_config("quick", protocols=("finetuning",), out_dir=str(tmp_path / "x")), progress=False)


def test_torchrun_runs_only_the_finetune_protocol(tmp_path, monkeypatch) -> None:
    from hear_dymn.bench import suite
    from hear_dymn.bench.finetune import DistContext

    monkeypatch.setattr(suite, "init_distributed", lambda device: DistContext(rank=0, world_size=2))
    cfg = suite_config("quick", protocols=("linear", "finetune"), out_dir=str(tmp_path / "r"),
                       cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match=r"under torchrun \(2 processes\) only --protocols finetune.*linear"):
        run_suite(cfg, progress=False)


def test_mlp_probe_settings_reach_the_probe(tmp_path, monkeypatch) -> None:
    from hear_dymn.bench import suite

    cfg = suite_config("quick", models=("logmel",), tasks=("esc50",), protocols=("mlp",), seeds=(0,),
                       probe_precision="bfloat16", out_dir=str(tmp_path / "reports"), cache_dir=str(tmp_path / "c"))
    seen = []
    real = suite.fit_mlp_probe

    def spy(*args, cfg, **kwargs):
        seen.append(cfg)
        return real(*args, cfg=cfg, **kwargs)

    monkeypatch.setattr(suite, "fit_mlp_probe", spy)
    result = run_suite(cfg, progress=False)
    assert seen and {(c.precision, c.device, c.max_epochs) for c in seen} == {("bfloat16", "cpu", 30)}
    (row,) = [r for r in result["rows"] if r["source"] == "measured"]
    assert row["config"] == {"probe_preset": "quick", "precision": "bfloat16"}
    for bad, match in ((dict(probe_precision="float16"), "unknown precision 'float16'"),
                       (dict(mlp_preset="huge"), "unknown MLP probe preset 'huge'"),
                       (dict(device="gpu"), "unknown device 'gpu'"),
                       (dict(device="mps"), "unsupported device 'mps'")):
        with pytest.raises(ValueError, match=match):
            run_suite(suite_config("quick", protocols=("mlp",), out_dir=str(tmp_path / "x"), **bad), progress=False)


def test_missing_cuda_is_named_before_any_work(tmp_path, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = suite_config("quick", device="cuda", out_dir=str(tmp_path / "r"), cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="device 'cuda': no CUDA device is available here; use --device cpu"):
        run_suite(cfg, progress=False)
    assert not (tmp_path / "c").exists()


def test_a_shard_of_unreadable_clips_adds_no_rows(esc50_root, tmp_path) -> None:
    task = get_task("esc50", esc50_root)
    clips = task.clips("fold1")
    for clip in clips[:2]:  # the first shard of two: every clip unreadable
        broken = tmp_path / "broken" / f"{clip.clip_id}.wav"
        broken.parent.mkdir(exist_ok=True)
        broken.write_bytes(b"not audio")
        object.__setattr__(clip, "path", broken)
    task.clips = lambda split: clips  # the task now lists the broken copies
    cache = EmbeddingCache(tmp_path / "cache", shard_size=2)
    for attempt in range(2):  # computed, then read back from the cache
        emb = cache.get(LogMelBaseline(), task, "fold1")
        readable = [c.clip_id for c in clips[2:] if c.clip_id not in emb.skipped]
        assert emb.clip_ids == readable and emb.x.shape == (len(readable), 256)
        assert set(emb.skipped) >= {c.clip_id for c in clips[:2]}


def test_checkpoints_are_named_by_file_and_fine_tuned_by_path(tmp_path, offline) -> None:
    import torch

    from hear_dymn.models.random_weights import random_state_dict

    paths = []
    for seed, stem in ((1, "dymn04 run a"), (2, "dymn04-run-b")):
        paths.append(tmp_path / f"{stem}.pt")
        torch.save(random_state_dict("dymn04", seed=seed), paths[-1])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = suite_config("quick", models=tuple(map(str, paths)), tasks=("openmic",),
                           protocols=("linear", "finetune"), seeds=(0,), finetune_models=(str(paths[1]),),
                           finetune_epochs=1, out_dir=str(tmp_path / "r"), cache_dir=str(tmp_path / "c"))
        result = run_suite(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    measured = {(r["model"], r["protocol"]) for r in result["rows"] if r["source"] == "measured"}
    assert measured == {("dymn04 run a", "linear"), ("dymn04-run-b", "linear"), ("dymn04-run-b", "finetune")}
    assert (tmp_path / "r" / "results" / "dymn04 run a" / "linear" / "openmic.json").is_file()
    same = tmp_path / "other" / "dymn04 run a.pt"
    same.parent.mkdir()
    same.write_bytes(paths[0].read_bytes())
    clash = suite_config("quick", models=(str(paths[0]), str(same)), tasks=("openmic",), protocols=("linear",),
                         out_dir=str(tmp_path / "r2"), cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="would both be reported as 'dymn04 run a'; rename one checkpoint"):
        run_suite(clash, progress=False)


@pytest.mark.parametrize("overrides, match", [
    (dict(linear_preset="fastt"), "unknown linear probe preset 'fastt'; presets: "),
    (dict(data={"ESC50": "/data/esc50"}), r"--data given for ESC50, which is not among the tasks to run"),
    (dict(tasks=("esc50",), data={"fsd50k": "/data/fsd50k"}), "--data given for fsd50k"),
])
def test_bad_settings_are_named_before_any_work(tmp_path, overrides, match) -> None:
    cfg = suite_config("quick", models=("logmel",), protocols=("linear",), out_dir=str(tmp_path / "r"),
                       cache_dir=str(tmp_path / "c"), **overrides)
    with pytest.raises(ValueError, match=match):
        run_suite(cfg, progress=False)
    assert not (tmp_path / "c").exists()


def test_two_fold_hear_task_is_refused_for_probes(tmp_path) -> None:
    root = write_miniature("hear_kfold", tmp_path / "hear", seed=0)
    meta = json.loads((root / "task_metadata.json").read_text())
    meta["nfolds"] = 2
    meta["splits"] = meta["splits"][:2]
    (root / "task_metadata.json").write_text(json.dumps(meta))
    cfg = suite_config("quick", models=("logmel",), tasks=("hear",), protocols=("linear",), data={"hear": str(root)},
                       out_dir=str(tmp_path / "r"), cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="task hear has 2 folds; the probes need at least 3"):
        run_suite(cfg, progress=False)
