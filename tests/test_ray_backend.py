"""Ray backend: same cache files and numbers as the local backend, resume by shard, lost workers, missing Ray."""
from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hear_dymn.bench.embeddings import EmbeddingCache, LogMelBaseline
from hear_dymn.bench.ray_backend import RayConfig, RayUnavailableError, fill_cache, require_ray, runtime_env
from hear_dymn.bench.suite import build_embedder, run_suite, suite_config
from hear_dymn.bench.tasks import get_task
from hear_dymn.bench.tasks.synthetic import write_miniature

SHARD_SIZE = 4  # several shards per split
WORKERS = RayConfig(workers=2, cpus_per_worker=1)


@pytest.fixture(scope="session")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray backend tests need pip install 'hear_dymn[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, runtime_env=runtime_env(), log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("data")
    return {"esc50": get_task("esc50", write_miniature("esc50", root / "esc50", seed=0, corrupt=True)),
            "fsd50k": get_task("fsd50k", write_miniature("fsd50k", root / "fsd50k", seed=0))}


@pytest.fixture(scope="module")
def dymn04(dymn04_checkpoint):
    return build_embedder(str(dymn04_checkpoint), allow_random_init=False)


@pytest.fixture
def one_thread():
    """Workers run one torch thread each; the local reference must round the same way."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def work_items(embedder, tasks: dict) -> list:
    return [(embedder, task, split) for task in tasks.values() for split in task.spec.splits]


def test_ray_matches_local_and_recomputes_only_a_deleted_shard(ray_cluster, tasks, dymn04, tmp_path,
                                                              one_thread) -> None:
    local = EmbeddingCache(tmp_path / "local", shard_size=SHARD_SIZE)
    expected = {(t.spec.name, s): local.get(dymn04, t, s) for _, t, s in work_items(dymn04, tasks)}
    total = sum(len(local.shards(dymn04, t, s)) for _, t, s in work_items(dymn04, tasks))

    remote = EmbeddingCache(tmp_path / "ray", shard_size=SHARD_SIZE)
    stats = fill_cache(remote, work_items(dymn04, tasks), WORKERS, progress=False)
    assert len(stats.shard_seconds) == stats.total_shards == total > 2 * len(expected)
    assert stats.computed_clips == sum(len(e.clip_ids) + len(e.skipped) for e in expected.values())
    for (name, split), want in expected.items():
        got = remote.get(dymn04, tasks[name], split)
        assert got.computed_shards == 0  # everything came from the Ray workers
        assert got.clip_ids == want.clip_ids and got.skipped == want.skipped
        np.testing.assert_array_equal(got.x, want.x)  # bit for bit, same threads
    assert any(e.skipped for e in expected.values())  # the corrupt file travelled through a worker too
    # the same key, so the same folders: a local run would read these shards
    assert (remote.split_dir(dymn04, tasks["esc50"], "fold1").relative_to(remote.root)
            == local.split_dir(dymn04, tasks["esc50"], "fold1").relative_to(local.root))

    # a job with one shard file gone recomputes exactly that shard and leaves the others untouched
    shards = sorted(remote.root.rglob("shard-*.npz"))
    gone = shards[len(shards) // 2]
    before = {p: p.stat().st_mtime_ns for p in shards if p != gone}
    gone.unlink()
    again = fill_cache(remote, work_items(dymn04, tasks), WORKERS, progress=True)
    assert len(again.shard_seconds) == 1 and again.total_shards == total
    assert gone.exists() and {p: p.stat().st_mtime_ns for p in before} == before
    for (name, split), want in expected.items():
        np.testing.assert_array_equal(remote.get(dymn04, tasks[name], split).x, want.x)
    # nothing missing: no work, no workers
    idle = fill_cache(remote, work_items(dymn04, tasks), WORKERS, progress=False)
    assert idle.shard_seconds == [] and idle.provenance()["embedding shards"].endswith("(all read from the cache)")


def test_lost_worker_costs_only_its_shard(ray_cluster, tasks, tmp_path, one_thread) -> None:
    crash_marker = tmp_path / "crashed-once"

    class CrashOnce(LogMelBaseline):  # local class: shipped to workers by value
        def __call__(self, audio):
            if not crash_marker.exists():
                crash_marker.touch()
                os._exit(1)  # the worker process dies, as when its node goes away
            return super().__call__(audio)

    task = {"esc50": tasks["esc50"]}
    cache = EmbeddingCache(tmp_path / "ray", shard_size=SHARD_SIZE)
    stats = fill_cache(cache, work_items(CrashOnce(), task), WORKERS, progress=False)
    assert crash_marker.exists() and stats.retried_shards == 1
    assert len(stats.shard_seconds) == stats.total_shards  # every shard written exactly once
    assert "1 sent again after a lost worker" in stats.provenance()["embedding shards"]
    reference = EmbeddingCache(tmp_path / "local", shard_size=SHARD_SIZE)
    for split in tasks["esc50"].spec.splits:
        np.testing.assert_array_equal(cache.get(CrashOnce(), tasks["esc50"], split).x,
                                      reference.get(LogMelBaseline(), tasks["esc50"], split).x)


def leaderboard_numbers(path: Path) -> list[tuple[str, ...]]:
    """The leaderboard rows without the columns that differ between any two runs (dates, timings)."""
    with path.open(newline="") as handle:
        return [tuple(row[k] for k in ("model", "protocol", "task", "metric", "mean", "std", "n", "per_split"))
                for row in csv.DictReader(handle)]


def test_suite_on_ray_writes_the_local_reports(ray_cluster, tasks, tmp_path, one_thread) -> None:
    """The local run uses the workers' thread count: other counts may round the embeddings differently and
    the probes could then score a near-tie the other way."""
    def run(backend: str) -> dict:
        cfg = suite_config("quick", models=("logmel",), tasks=("esc50",), protocols=("linear",), seeds=(0,),
                           data={"esc50": str(tasks["esc50"].root)}, backend=backend, ray_workers=2,
                           out_dir=str(tmp_path / backend / "reports"),
                           cache_dir=str(tmp_path / backend / "cache"))
        return run_suite(cfg, progress=False)

    local, remote = run("local"), run("ray")
    measured = leaderboard_numbers(tmp_path / "local" / "reports" / "leaderboard.csv")
    assert any(row[0] == "logmel" for row in measured)
    assert leaderboard_numbers(tmp_path / "ray" / "reports" / "leaderboard.csv") == measured
    provenance = remote["provenance"]
    assert provenance["embedding backend"].startswith(f"ray {ray_cluster.__version__}")
    assert provenance["embedding workers"].startswith("2 Ray actors x (1 CPU, 0 GPU) on 1 node(s)")
    assert "seconds per shard min" in provenance["embedding shards"]
    throughput = provenance["embedding throughput"]
    assert throughput.startswith("end to end ") and "network only" in throughput and "2 in parallel" in throughput
    assert local["provenance"]["embedding backend"] == "local"


def test_missing_ray_is_one_clear_error(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # makes "import ray" fail as if it were not installed
    with pytest.raises(RayUnavailableError, match=r"pip install 'hear_dymn\[ray\]'"):
        require_ray()
    cfg = suite_config("quick", backend="ray", out_dir=str(tmp_path / "reports"), cache_dir=str(tmp_path / "c"))
    with pytest.raises(RayUnavailableError, match=r"pip install 'hear_dymn\[ray\]'"):
        run_suite(cfg, progress=False)
    assert not (tmp_path / "c").exists()  # it failed before doing any work

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))
    try:
        import run_suite as cli
    finally:
        sys.path.pop(0)
    capsys.readouterr()
    assert cli.main(["--backend", "ray", "--out-dir", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "pip install 'hear_dymn[ray]'" in err and "\n" not in err
    # the local backend never imports Ray
    assert suite_config("quick").backend == "local"


def test_files_missing_on_a_worker_are_not_cached(tasks, tmp_path) -> None:
    from dataclasses import replace

    from hear_dymn.bench.embeddings import Shard, shard_plan
    from hear_dymn.bench.ray_backend import _check_worker_saw_the_files

    clips = tuple(shard_plan(tasks["esc50"].clips("fold1"), SHARD_SIZE)[0])
    shard = Shard("esc50", "fold1", 0, tmp_path / "shard-00000.npz", clips)

    def skipped(clip, reason):
        return {"skipped_ids": np.array([clip.clip_id]), "skipped_reasons": np.array([reason])}

    # the driver sees a file the worker could not find: the nodes do not share the data
    with pytest.raises(RuntimeError, match="could not find .* which exists on the driver: every node needs"):
        _check_worker_saw_the_files(shard, skipped(clips[0], "no such file"))
    # a file missing everywhere, or one that does not decode, is an ordinary skipped clip
    gone = replace(clips[0], path=tmp_path / "gone.wav")
    _check_worker_saw_the_files(replace(shard, clips=(gone, *clips[1:])), skipped(gone, "no such file"))
    _check_worker_saw_the_files(shard, skipped(clips[1], "decoding failed (bad header)"))


def test_actor_threads_and_loader_workers_share_its_cpus() -> None:
    assert (RayConfig().actor_threads(), RayConfig().actor_loader_workers()) == (1, 0)  # CPU actors decode themselves
    cpu = RayConfig(cpus_per_worker=4, loader_workers=1)
    assert (cpu.actor_threads(), cpu.actor_loader_workers()) == (3, 1)
    gpu = RayConfig(cpus_per_worker=4, gpus_per_worker=1)  # GPU actors: decoding beside the GPU
    assert (gpu.actor_threads(), gpu.actor_loader_workers()) == (1, 3)
    with pytest.raises(ValueError, match="loader_workers must be >= 0"):
        RayConfig(loader_workers=-1)
