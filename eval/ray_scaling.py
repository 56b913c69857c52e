#!/usr/bin/env python
"""Measure how embedding extraction scales with Ray workers (the README's scaling table).

    python eval/ray_scaling.py                                  # local Ray cluster, 1 and 2 CPU workers
    python eval/ray_scaling.py --workers 1 2 4 8 --ray-address auto --gpus-per-worker 1

The workload is a miniature ESC-50 (5 s clips written on the fly, ``--clips-per-class`` x 5 classes) embedded with
one model in shards of ``--shard-size`` clips. Each worker count fills a fresh cache, so every shard is computed.
Columns: ``job clips/s`` is clips over the whole job's wall time, worker start and model loading included;
``clips/s per worker`` is clips over the summed per-shard compute time, i.e. one worker's steady rate. The
first rows are the local backend in this process (one thread, and torch's default) for reference.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from hear_dymn.bench.audio import read_audio  # noqa: E402
from hear_dymn.bench.embeddings import EmbeddingCache  # noqa: E402
from hear_dymn.bench.ray_backend import RayConfig, fill_cache, require_ray, runtime_env  # noqa: E402
from hear_dymn.bench.suite import build_embedder  # noqa: E402
from hear_dymn.bench.tasks import get_task  # noqa: E402
from hear_dymn.bench.tasks.synthetic import write_miniature  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dymn10", help="as run_suite.py --models (default: dymn10)")
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2], help="worker counts to measure")
    parser.add_argument("--clips-per-class", type=int, default=60, help="workload: 5 classes x this many 5 s clips")
    parser.add_argument("--shard-size", type=int, default=8)
    parser.add_argument("--ray-address", default=None, help="cluster to join; default: start one here")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--no-local", action="store_true", help="skip the local-backend reference row")
    parser.add_argument("--work-dir", default=None, help="where data and caches go (default: a temporary folder)")
    return parser.parse_args(argv)


def _fresh(folder: Path) -> Path:
    """An empty cache folder: every measurement computes all its shards (a reused --work-dir would time nothing)."""
    shutil.rmtree(folder, ignore_errors=True)
    return folder


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    ray = require_ray()
    load_before = os.getloadavg()[0]  # other processes on the machine skew the numbers
    with tempfile.TemporaryDirectory(prefix="ray-scaling-") as tmp:
        work_dir = Path(args.work_dir or tmp)
        task = get_task("esc50", write_miniature("esc50", work_dir / "esc50", seed=0,
                                                 clips_per_class=args.clips_per_class))
        embedder = build_embedder(args.model, allow_random_init=True)
        work = [(embedder, task, split) for split in task.spec.splits]
        clips = sum(len(task.clips(split)) for split in task.spec.splits)
        decode_rate = _decode_rate(task, embedder.sample_rate)
        rows = []
        default_threads = torch.get_num_threads()
        for threads in [] if args.no_local else sorted({1, default_threads}):
            torch.set_num_threads(threads)
            cache = EmbeddingCache(_fresh(work_dir / f"cache-local{threads}"), shard_size=args.shard_size)
            start = time.perf_counter()
            splits = [cache.get(embedder, task, split) for split in task.spec.splits]
            seconds = time.perf_counter() - start
            compute = sum(sum(s.shard_seconds) for s in splits)
            shards = sum(s.computed_shards for s in splits)
            rows.append((f"local, {threads} thread(s)", shards, seconds, clips / seconds, clips / compute))
        torch.set_num_threads(default_threads)
        init_args = {"address": args.ray_address, "runtime_env": runtime_env()}
        if args.ray_address is None:
            init_args["include_dashboard"] = False
        ray.init(log_to_driver=False, **init_args)
        try:
            cluster = ray.cluster_resources()
            for workers in args.workers:
                cache = EmbeddingCache(_fresh(work_dir / f"cache-ray{workers}"), shard_size=args.shard_size)
                cfg = RayConfig(workers=workers, gpus_per_worker=args.gpus_per_worker,
                                cpus_per_worker=args.cpus_per_worker)
                start = time.perf_counter()
                stats = fill_cache(cache, work, cfg, progress=False)
                seconds = time.perf_counter() - start
                rows.append((f"ray, {workers} x {args.cpus_per_worker:g} CPU, {args.gpus_per_worker:g} GPU",
                             len(stats.shard_seconds), seconds, clips / seconds,
                             stats.computed_clips / sum(stats.shard_seconds)))
        finally:
            ray.shutdown()

    base = next((r[3] for r in rows if r[0].startswith("ray")), None)
    print(f"{args.model} ({embedder.weights_label}), {clips} clips of 5 s, shards of {args.shard_size}; "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), Ray {ray.__version__} cluster "
          f"{dict((k, cluster[k]) for k in ('CPU', 'GPU') if k in cluster)}, torch {torch.__version__}, "
          f"load average before the run {load_before:.1f}")
    print(f"audio decoding + resampling alone, one thread: {decode_rate:.1f} clips/s (a worker's ceiling when its "
          f"network runs on a GPU and it has one CPU)")
    print()
    print(f"| backend | shards | wall s | job clips/s | clips/s per worker | job speed-up vs {args.workers[0]} "
          f"Ray worker(s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, shards, seconds, job_rate, worker_rate in rows:
        speedup = f"{job_rate / base:.2f}x" if base and name.startswith("ray") else "-"
        print(f"| {name} | {shards} | {seconds:.1f} | {job_rate:.1f} | {worker_rate:.1f} | {speedup} |")
    return 0


def _decode_rate(task, sample_rate: int) -> float:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a worker with one CPU
    try:
        paths = [c.path for split in task.spec.splits for c in task.clips(split)]
        start = time.perf_counter()
        for path in paths:
            read_audio(path, sample_rate)
        return len(paths) / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    raise SystemExit(main())
