"""Embedding extraction on a Ray cluster, into the same cache as the local backend.

The driver (the process running the suite) walks the cache's shard plan of every (embedder, task, split), which
is fixed by the clip lists and the shard size, never by the number of workers, and skips the shards already on
disk. The missing shards go to a pool of Ray actors. Every actor receives each embedder once through the object
store, weights included, so no worker downloads or reads a checkpoint; it keeps the embedder for all later
shards. A finished shard comes back to the driver, which writes it atomically into the cache, exactly as
:meth:`EmbeddingCache.get` would have: later probes and reports cannot tell which backend filled the cache.

Fault tolerance: a worker or node lost mid-run costs only the shards it had not returned. They go back into the
queue (at most ``max_attempts`` times each) and a replacement actor is started. Shards already written stay
written, so an interrupted job resumes where it stopped on the next run. An error raised by the embedding code
itself (a bug, a bad model) is not retried: it stops the job with the worker's traceback.

Workers must be able to import ``hear_dymn`` and read the audio files at the paths the driver sees (a shared
file system on a multi-node cluster). When this module starts Ray itself, it ships the ``hear_dymn`` package
directory with the job (``runtime_env`` ``py_modules``); a caller that starts Ray before passes
:func:`runtime_env` to ``ray.init``. The cluster's Python environment needs the package's own dependencies
(torch, torchaudio, numpy, soundfile).

Audio: each actor decodes through the same pipeline as the local backend (``pipeline.py``); CPU actors decode
themselves (many actors already overlap decoding with other actors' network calls), GPU actors start loader worker
processes so that decoding overlaps the GPU (``RayConfig.loader_workers``).

Numerics: a worker computes a shard with the same code and the same batches as the local backend and with
``RayConfig.actor_threads()`` torch threads, so its embeddings equal those of a local run with that many threads bit
for bit. Different thread counts (or a GPU) round differently, at the 1e-7 relative level for a well-conditioned
network; random-init networks amplify such differences layer by layer.
"""
from __future__ import annotations

import copy
import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .embeddings import (Embedder, EmbeddingCache, ExtractionStats, HearEmbedder, Shard, ShardTiming,
                         compute_shard, embedder_key)
from .pipeline import LoaderOptions
from .tasks.base import Clip, Task

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'hear_dymn[ray]'"


class RayUnavailableError(ImportError):
    """The Ray backend was requested but Ray cannot be imported."""


def require_ray() -> Any:
    """The ``ray`` module, or :class:`RayUnavailableError` saying what to install."""
    try:
        import ray
    except ImportError as err:
        raise RayUnavailableError(f"the Ray backend (--backend ray) needs Ray, which is not installed here "
                                  f"({err}); install it with: {INSTALL_HINT}") from None
    return ray


def runtime_env() -> dict[str, Any]:
    """Job runtime environment that lets Ray workers import this checkout's ``hear_dymn``.

    Ray accepts local directories for ``py_modules`` only at the job level (``ray.init(runtime_env=...)``),
    not per actor, so whoever starts the driver's Ray connection has to pass this.
    """
    return {"py_modules": [str(Path(__file__).resolve().parents[1])]}


@dataclass(frozen=True)
class RayConfig:
    """Where and how wide the Ray job runs.

    Attributes:
        address: Cluster to join (``auto``, ``HOST:6379``, ``ray://HOST:10001``); ``None`` starts a local
            cluster on this machine, or joins the one named by ``RAY_ADDRESS``.
        workers: Actors to start; ``None``: as many as the cluster has room for (``GPUs / gpus_per_worker``
            when GPUs are requested, else ``CPUs / cpus_per_worker``), never more than there are shards to compute.
        gpus_per_worker: GPUs per actor (fractions share a GPU); 0 computes on CPU.
        cpus_per_worker: CPUs per actor: its torch threads plus its audio loader workers.
        batch_size: clips per network call inside a shard (as ``EmbeddingCache.batch_size``).
        loader_workers: audio decoding processes per actor (``pipeline.py``), taken from its CPUs; ``None``: none
            on CPU actors (the actors themselves decode side by side), ``cpus_per_worker - 1`` (at least 1) on GPU
            actors, so that decoding overlaps the GPU.
        max_attempts: times a shard is sent to a worker before a job whose workers keep dying gives up.
        start_timeout_s: how long to wait for a worker to start when none is running.
    """

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    batch_size: int = 8
    loader_workers: int | None = None
    max_attempts: int = 3
    start_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.gpus_per_worker < 0 or self.cpus_per_worker <= 0:
            raise ValueError("need gpus_per_worker >= 0 and cpus_per_worker > 0")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.loader_workers is not None and self.loader_workers < 0:
            raise ValueError(f"loader_workers must be >= 0, got {self.loader_workers}")

    def actor_loader_workers(self) -> int:
        """Decoding processes per actor (see ``loader_workers``)."""
        if self.loader_workers is not None:
            return self.loader_workers
        return max(1, int(self.cpus_per_worker) - 1) if self.gpus_per_worker > 0 else 0

    def actor_threads(self) -> int:
        """Torch threads per actor: its CPUs less its loader workers, at least one."""
        return max(1, int(self.cpus_per_worker) - self.actor_loader_workers())


class ShardWorker:
    """Ray actor body: embeds whole shards with embedders it deserialises once, on first use.

    Args:
        embedders: embedder key -> one-element list holding the embedder's ``ObjectRef`` (the list keeps Ray
            from resolving every embedder when the actor starts).
        device: ``cpu`` or ``cuda``.
        threads: torch threads.
        batch_size: clips per network call.
        loader_workers: audio decoding processes beside the actor (0: it decodes itself).
    """

    def __init__(self, embedders: dict[str, list[Any]], device: str, threads: int, batch_size: int,
                 loader_workers: int = 0) -> None:
        torch.set_num_threads(threads)
        self._refs = embedders
        self._loaded: dict[str, Embedder] = {}
        self.device = device
        self.batch_size = batch_size
        self.loader = LoaderOptions(workers=loader_workers)

    def ready(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def embed(self, key: str, clips: Sequence[Clip]) -> tuple[dict[str, Any], float, float]:
        """(the shard's arrays, seconds spent computing them, not counting a first load of the model, and the part
        of those spent in the network)."""
        embedder = self._loaded.get(key)
        if embedder is None:
            import ray

            embedder = ray.get(self._refs[key][0])
            if isinstance(embedder, HearEmbedder):
                embedder.model.to(self.device)
            self._loaded[key] = embedder
        start = time.perf_counter()
        timing = ShardTiming()
        arrays = compute_shard(embedder, clips, self.batch_size, self.loader, timing)
        return arrays, time.perf_counter() - start, timing.network_seconds


def _portable(embedder: Embedder) -> Embedder:
    """The embedder as it travels to workers: on the CPU, whatever device the driver uses."""
    if isinstance(embedder, HearEmbedder) and embedder.model.device.type != "cpu":
        moved = copy.copy(embedder)
        moved.model = copy.deepcopy(embedder.model).to("cpu")
        return moved
    return embedder


def _start_failure(err: BaseException) -> RuntimeError:
    return RuntimeError("a Ray worker failed to start; can the cluster import hear_dymn and torch? (a driver that "
                        "starts Ray itself must pass runtime_env=hear_dymn.bench.ray_backend.runtime_env())\n"
                        f"{err}")


def _check_worker_saw_the_files(shard: Shard, arrays: dict[str, Any]) -> None:
    """A clip the worker found missing but this process can see means the worker's node does not have the data at
    the same path: stop, rather than cache a shard of skipped clips that later runs would trust."""
    by_id = {c.clip_id: c for c in shard.clips}
    for clip_id, reason in zip(arrays["skipped_ids"], arrays["skipped_reasons"]):
        clip = by_id.get(str(clip_id))
        if clip is not None and "no such file" in str(reason) and Path(clip.path).exists():
            raise RuntimeError(f"a Ray worker could not find {clip.path}, which exists on the driver: every node "
                               "needs the datasets at the same path (a shared file system); nothing was cached for "
                               f"shard {shard.path}")


def _lost_worker_errors(ray: Any) -> tuple[type[BaseException], ...]:
    """Failures of the worker process or its node (not of the embedding code), after which a shard is resent."""
    ex = ray.exceptions
    return (ex.RayActorError, ex.WorkerCrashedError, ex.NodeDiedError, ex.ObjectLostError, ex.OutOfMemoryError)


def _default_workers(ray: Any, cfg: RayConfig) -> int:
    resources = ray.cluster_resources()
    if cfg.gpus_per_worker > 0:
        gpus = resources.get("GPU", 0)
        if gpus < cfg.gpus_per_worker:
            raise RuntimeError(f"--ray-gpus-per-worker {cfg.gpus_per_worker} but the Ray cluster has {gpus:g} GPUs")
        return max(1, int(gpus // cfg.gpus_per_worker))
    return max(1, int(resources.get("CPU", 1) // cfg.cpus_per_worker))


def fill_cache(cache: EmbeddingCache, work: Sequence[tuple[Embedder, Task, str]], cfg: RayConfig | None = None,
               progress: bool = True) -> ExtractionStats:
    """Compute every missing shard of ``work`` on Ray workers and write it into ``cache``.

    Args:
        cache: the cache to fill; its ``shard_size`` fixes the plan.
        work: (embedder, task, split) triples.
        cfg: cluster and worker settings (default: a local cluster, one CPU worker per core).
        progress: show a progress bar over all shards of ``work`` (done / total, clips/s).

    Returns:
        What was done, for the report; a job with nothing missing starts no cluster.

    Raises:
        RayUnavailableError: Ray is not installed.
        RuntimeError: no worker could be started, a worker failed to start, or a shard lost its worker
            ``max_attempts`` times.
    """
    cfg = cfg or RayConfig()
    ray = require_ray()
    stats = ExtractionStats(backend=f"ray {ray.__version__}", workers="none started (nothing to compute)")
    keys: dict[str, Embedder] = {}
    queue: deque[tuple[str, Shard, int]] = deque()
    for embedder, task, split in work:  # in the given order: each worker meets the models one after another
        location = str(cache.split_dir(embedder, task, split))
        if location in stats.planned:
            continue
        key = embedder_key(embedder)
        keys.setdefault(key, embedder)
        cache.write_meta(embedder)
        stats.planned[location] = len(cache.shards(embedder, task, split))
        queue.extend((key, shard, 0) for shard in cache.missing_shards(embedder, task, split))
    if not queue:
        return stats

    started_here = not ray.is_initialized()
    if started_here:
        init_args: dict[str, Any] = {"address": cfg.address, "runtime_env": runtime_env()}
        if cfg.address is None:
            init_args["include_dashboard"] = False
        ray.init(**init_args)
    where = (cfg.address or os.environ.get("RAY_ADDRESS") or "local cluster") if started_here else "existing connection"
    actors: list[Any] = []
    try:
        workers = min(cfg.workers or _default_workers(ray, cfg), len(queue))
        stats.backend = f"ray {ray.__version__} ({where})"
        nodes = _run_pool(ray, cache, cfg, keys, queue, workers, stats, actors, progress)
        stats.streams = workers
        stats.workers = (f"{workers} Ray actors x ({cfg.cpus_per_worker:g} CPU, {cfg.gpus_per_worker:g} GPU) on "
                         f"{len(nodes)} node(s), {cfg.actor_threads()} torch thread(s) and "
                         f"{cfg.actor_loader_workers()} audio loader worker(s) each")
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_here:
            ray.shutdown()
    return stats


def _run_pool(ray: Any, cache: EmbeddingCache, cfg: RayConfig, keys: dict[str, Embedder],
              queue: deque[tuple[str, Shard, int]], workers: int, stats: ExtractionStats, actors: list[Any],
              progress: bool) -> set[str]:
    """Feed ``queue`` to ``workers`` actors until every shard is written; returns the ids of the nodes used.

    ``actors`` collects the actors started, for the caller to stop.
    """
    lost_errors = _lost_worker_errors(ray)
    refs = {key: [ray.put(_portable(embedder))] for key, embedder in keys.items()}
    device = "cuda" if cfg.gpus_per_worker > 0 else "cpu"
    worker_class = ray.remote(ShardWorker).options(num_cpus=cfg.cpus_per_worker, num_gpus=cfg.gpus_per_worker,
                                                   max_restarts=0)
    starting: dict[Any, Any] = {}  # ready() ref -> actor
    running: dict[Any, tuple[Any, str, Shard, int]] = {}  # embed() ref -> (actor, key, shard, attempt)
    idle: list[Any] = []
    nodes: set[str] = set()

    def start_worker() -> None:
        actor = worker_class.remote(refs, device, cfg.actor_threads(), cfg.batch_size, cfg.actor_loader_workers())
        actors.append(actor)
        starting[actor.ready.remote()] = actor

    for _ in range(workers):
        start_worker()
    startup_losses = 0
    bar = _progress_bar(progress, stats, len(queue), workers)
    job_start = time.perf_counter()
    try:
        while queue or running:
            while idle and queue:
                actor = idle.pop()
                key, shard, attempt = queue.popleft()
                running[actor.embed.remote(key, list(shard.clips))] = (actor, key, shard, attempt)
            timeout = None if running else cfg.start_timeout_s
            done, _ = ray.wait([*running, *starting], num_returns=1, timeout=timeout)
            if not done:
                raise RuntimeError(f"no Ray worker started within {cfg.start_timeout_s:.0f} s (each needs "
                                   f"{cfg.cpus_per_worker:g} CPU, {cfg.gpus_per_worker:g} GPU; cluster has "
                                   f"{ray.available_resources()} free)")
            ref = done[0]
            if ref in starting:
                actor = starting.pop(ref)
                try:
                    nodes.add(ray.get(ref))
                except lost_errors as err:
                    if getattr(err, "actor_init_failed", False):  # its own start-up raised: not a lost worker
                        raise _start_failure(err) from err
                    # its process or node went away while starting: start another
                    startup_losses += 1
                    if startup_losses > cfg.max_attempts * workers:
                        raise RuntimeError(f"{startup_losses} Ray workers were lost while starting; giving up "
                                           f"(last: {type(err).__name__})") from err
                    logger.warning("a Ray worker was lost while starting (%s); starting another", type(err).__name__)
                    actors.remove(actor)
                    start_worker()
                    continue
                except ray.exceptions.RayError as err:
                    raise _start_failure(err) from err
                idle.append(actor)
                continue
            actor, key, shard, attempt = running.pop(ref)
            try:
                arrays, seconds, network_seconds = ray.get(ref)
            except lost_errors as err:
                if attempt + 1 >= cfg.max_attempts:
                    raise RuntimeError(f"shard {shard.path} lost its worker {cfg.max_attempts} times; giving up "
                                       f"(shards written so far are kept)") from err
                logger.warning("worker lost while computing %s (%s); sending the shard again",
                               shard.path, type(err).__name__)
                stats.retried_shards += 1
                queue.appendleft((key, shard, attempt + 1))
                actors.remove(actor)
                ray.kill(actor)
                start_worker()
                continue
            _check_worker_saw_the_files(shard, arrays)
            cache.write_shard(shard, arrays)
            stats.shard_seconds.append(seconds)
            stats.network_seconds += network_seconds
            stats.computed_clips += len(shard.clips)
            idle.append(actor)
            if bar is not None:
                elapsed = time.perf_counter() - job_start
                bar.set_postfix_str(f"{stats.computed_clips / elapsed:.1f} clips/s", refresh=False)
                bar.update(1)
    finally:
        stats.seconds = time.perf_counter() - job_start
        if bar is not None:
            bar.close()
    return nodes


def _progress_bar(enabled: bool, stats: ExtractionStats, missing: int, workers: int) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=stats.total_shards, initial=stats.total_shards - missing, unit="shard",
                desc=f"embed on Ray ({workers} workers)")
