"""Embeddings per (model, task, split), computed through the public HEAR functions and cached on disk.

Cache layout (like hear-eval-kit's embedding folders, made resumable)::

    <cache>/embeddings/<embedder key>/meta.json                 what the key stands for (model, weights, options)
    <cache>/embeddings/<embedder key>/<task>/v<version>/<split>/shard-00000.npz ...

The embedder key hashes everything that changes the numbers: architecture, weights sha256 (or the random-init
seed), embedding options and frontend. A split is cut into shards of ``shard_size`` clips in clip-id order (a
stable plan that depends on the clip list only); each shard is written atomically once computed, so a killed run
loses at most the shards in flight and a rerun recomputes nothing it already has. Each shard stores the clip ids
it covers, so a changed clip list invalidates exactly the shards that differ. Unreadable audio files are skipped
and recorded in the shard (``skipped_ids`` / ``skipped_reasons``).

Two backends fill the cache: the local one, shard by shard in :meth:`EmbeddingCache.get`, and the Ray backend
(``ray_backend.py``), which asks :meth:`EmbeddingCache.missing_shards` what is left, computes those shards with
:func:`compute_shard` on its workers and stores them with :meth:`EmbeddingCache.write_shard`. Either way the
files are the same, so readers cannot tell which backend wrote them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import statistics
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..frontend import MelFrontend
from ..hear import HearModel, get_scene_embeddings
from .atomic import atomic_savez, atomic_write_text
from .pipeline import LoaderOptions, clip_loader
from .tasks.base import Clip, Task

logger = logging.getLogger(__name__)


class Embedder(Protocol):
    """Anything that turns float32 audio ``(n, samples)`` at ``sample_rate`` into ``(n, D)`` embeddings."""

    name: str
    sample_rate: int

    def describe(self) -> dict[str, Any]: ...

    def __call__(self, audio: torch.Tensor) -> torch.Tensor: ...


class HearEmbedder:
    """A :class:`HearModel` used through the public ``get_scene_embeddings``."""

    def __init__(self, name: str, model: HearModel, weights_label: str, spec: str | None = None) -> None:
        self.name = name
        self.spec = name if spec is None else spec  # what the user asked for: a name or a checkpoint path
        self.model = model
        self.sample_rate = model.sample_rate
        self.weights_label = weights_label  # weights name, checkpoint file, or "random init (seed 0)"

    def describe(self) -> dict[str, Any]:
        return {"kind": "hear", "label": self.weights_label, **self.model.describe()}

    def __call__(self, audio: torch.Tensor) -> torch.Tensor:
        return get_scene_embeddings(audio.to(self.model.device), self.model).cpu()


class LogMelBaseline:
    """Baseline without a network: mean and standard deviation over time of each normalised log-mel band."""

    def __init__(self) -> None:
        self.name = "logmel"
        self.frontend = MelFrontend()
        self.sample_rate = self.frontend.cfg.sample_rate
        self.weights_label = "no network"

    def describe(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"kind": "logmel-mean-std", "mel": asdict(self.frontend.cfg), "embedding_size": 2 * self.frontend.cfg.n_mels}

    @torch.no_grad()
    def __call__(self, audio: torch.Tensor) -> torch.Tensor:
        minimum = self.frontend.cfg.min_samples
        if audio.shape[1] < minimum:
            audio = torch.nn.functional.pad(audio, (0, minimum - audio.shape[1]))
        mel = self.frontend(audio)[:, 0]
        return torch.cat([mel.mean(-1), mel.std(-1, unbiased=False)], dim=1)


def embedder_key(embedder: Embedder) -> str:
    blob = json.dumps(embedder.describe(), sort_keys=True, default=str)
    return f"{embedder.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


@dataclass
class SplitEmbeddings:
    """Embeddings of one split, in clip-id order, without the skipped clips."""

    clip_ids: list[str]
    x: np.ndarray
    targets: np.ndarray
    mask: np.ndarray | None
    skipped: dict[str, str] = field(default_factory=dict)  # clip_id -> reason
    computed_shards: int = 0
    cached_shards: int = 0
    seconds: float = 0.0
    computed_clips: int = 0
    shard_seconds: list[float] = field(default_factory=list)  # one per computed shard
    location: str = ""  # the split's cache folder
    network_seconds: float = 0.0  # of the computing time, the part spent in the network
    loader_workers: int = 0


def shard_plan(clips: Sequence[Clip], shard_size: int) -> list[list[Clip]]:
    """Consecutive groups of ``shard_size`` clips in clip-id order: depends on the clip list only."""
    ordered = sorted(clips, key=lambda c: c.clip_id)
    return [ordered[i:i + shard_size] for i in range(0, len(ordered), shard_size)]


@dataclass(frozen=True)
class Shard:
    """One entry of a split's shard plan: the clips it covers and the file that holds their embeddings."""

    task: str
    split: str
    index: int
    path: Path
    clips: tuple[Clip, ...]


@dataclass
class ShardTiming:
    """Where a computed shard's time went: wall time end to end, and the part spent in the network."""

    seconds: float = 0.0
    network_seconds: float = 0.0


def embedder_device(embedder: Embedder) -> str:
    """The device the embedder computes on (sets the loader's defaults)."""
    model = getattr(embedder, "model", None)
    return str(getattr(model, "device", "cpu"))


def embed_shards(embedder: Embedder, groups: Sequence[Sequence[Clip]], batch_size: int = 8,
                 loader: LoaderOptions | None = None) -> Iterator[tuple[dict[str, np.ndarray], ShardTiming]]:
    """Embed several shards' clips as one stream, so that decoding (in loader workers) overlaps the network also
    across shard boundaries; yields each shard's arrays (as :func:`compute_shard`) and timing as it completes.

    Within a shard, equal-length neighbours are batched together (at most ``batch_size``; batches never cross
    shards), exactly as one shard at a time would be: the numbers do not depend on the stream or the workers.
    """
    clips = [c for group in groups for c in group]
    owner = [k for k, group in enumerate(groups) for _ in group]
    opts = (loader or LoaderOptions()).resolve(embedder_device(embedder))
    results = [_ShardArrays() for _ in groups]
    left = [len(group) for group in groups]
    done = 0
    last = time.perf_counter()
    stream = clip_loader(clips, embedder.sample_rate, batch_size, workers=opts.workers, prefetch=opts.prefetch,
                         pin_memory=bool(opts.pin_memory), groups=owner, device=embedder_device(embedder))
    for batch in stream:
        k = owner[(batch.indices or [i for i, _ in batch.skipped])[0]]
        shard = results[k]
        for i, reason in batch.skipped:
            shard.skipped_ids.append(clips[i].clip_id)
            shard.reasons.append(reason)
        if batch.audio is not None:
            started = time.perf_counter()
            emb = embedder(batch.audio).numpy().astype(np.float32)
            shard.timing.network_seconds += time.perf_counter() - started
            shard.ids.extend(clips[i].clip_id for i in batch.indices)
            shard.vectors.extend(emb)
        left[k] -= len(batch.indices) + len(batch.skipped)
        while done < len(groups) and left[done] == 0:  # shards complete in order: the stream is ordered
            now = time.perf_counter()
            results[done].timing.seconds = now - last
            last = now
            yield results[done].arrays(), results[done].timing
            results[done] = _ShardArrays()  # release the finished shard
            done += 1
    while done < len(groups):  # empty shards (no clips) complete at once
        yield results[done].arrays(), results[done].timing
        done += 1


@dataclass
class _ShardArrays:
    ids: list[str] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    skipped_ids: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    timing: ShardTiming = field(default_factory=ShardTiming)

    def arrays(self) -> dict[str, np.ndarray]:
        dim = self.vectors[0].shape[0] if self.vectors else 0
        return {
            "clip_ids": np.array(self.ids, dtype=str),
            "x": np.stack(self.vectors) if self.vectors else np.zeros((0, dim), np.float32),
            "skipped_ids": np.array(self.skipped_ids, dtype=str),
            "skipped_reasons": np.array(self.reasons, dtype=str),
        }


def compute_shard(embedder: Embedder, clips: Sequence[Clip], batch_size: int = 8, loader: LoaderOptions | None = None,
                  timing: ShardTiming | None = None) -> dict[str, np.ndarray]:
    """Embed ``clips`` in order (equal-length neighbours batched together); unreadable files are skipped.

    Decoding runs in the loader's workers (:mod:`.pipeline`). ``timing``, when given, receives the wall and
    network seconds.

    Returns:
        The shard's arrays: ``clip_ids``, ``x`` ``(n, D)`` float32, ``skipped_ids``, ``skipped_reasons``.
    """
    arrays, spent = next(embed_shards(embedder, [clips], batch_size, loader))
    if timing is not None:
        timing.seconds, timing.network_seconds = spent.seconds, spent.network_seconds
    return arrays


@dataclass
class ExtractionStats:
    """What the embedding step of a run did, for the report's provenance (either backend)."""

    backend: str = "local"
    workers: str = field(default_factory=lambda: f"1 process, {torch.get_num_threads()} torch thread(s)")
    planned: dict[str, int] = field(default_factory=dict)  # split cache folder -> shards in its plan
    computed_clips: int = 0
    shard_seconds: list[float] = field(default_factory=list)  # one per computed shard
    seconds: float = 0.0  # wall time spent computing
    retried_shards: int = 0  # shards sent again after their worker was lost
    network_seconds: float = 0.0  # summed over workers: time inside the network calls
    streams: int = 1  # network calls running side by side (Ray actors)
    loader_workers: int = 0  # the most audio loader workers a computed split used

    @property
    def total_shards(self) -> int:
        return sum(self.planned.values())

    def record(self, emb: SplitEmbeddings) -> None:
        """Add one split as returned by :meth:`EmbeddingCache.get` (whatever it computed counts as local work)."""
        self.planned[emb.location] = emb.computed_shards + emb.cached_shards
        self.computed_clips += emb.computed_clips
        self.shard_seconds.extend(emb.shard_seconds)
        self.seconds += sum(emb.shard_seconds)
        self.network_seconds += emb.network_seconds
        if emb.computed_shards:
            # the most loader workers any computed split used (timestamp embeddings read their audio in-process)
            self.loader_workers = max(self.loader_workers, emb.loader_workers)
            self.workers = (f"1 process, {torch.get_num_threads()} torch thread(s), {self.loader_workers} audio "
                            "loader worker(s)")

    def throughput(self) -> str:
        """End-to-end and network-only clips/s of what was computed: which of the two limits the extraction."""
        if not self.computed_clips or self.seconds <= 0:
            return "nothing computed"
        end_to_end = self.computed_clips / self.seconds
        line = f"end to end {end_to_end:.1f} clips/s"
        if self.network_seconds > 0:
            network = self.streams * self.computed_clips / self.network_seconds
            streams = f", {self.streams} in parallel" if self.streams > 1 else ""
            line += (f", network only {network:.1f} clips/s{streams} (the network's share of the time: "
                     f"{min(1.0, end_to_end / network):.0%})")
        return line

    def provenance(self) -> dict[str, str]:
        computed = len(self.shard_seconds)
        line = f"{computed} of {self.total_shards} computed"
        if computed:
            rate = self.computed_clips / self.seconds if self.seconds > 0 else float("nan")
            line += (f" ({self.computed_clips} clips in {self.seconds:.1f} s, {rate:.1f} clips/s); seconds per "
                     f"shard min {min(self.shard_seconds):.2f} / median {statistics.median(self.shard_seconds):.2f}"
                     f" / max {max(self.shard_seconds):.2f}")
        else:
            line += " (all read from the cache)"
        if self.retried_shards:
            line += f"; {self.retried_shards} sent again after a lost worker"
        return {"embedding backend": self.backend, "embedding workers": self.workers, "embedding shards": line,
                "embedding throughput": self.throughput()}


def read_shard(path: Path, clips: Sequence[Clip], needed: Sequence[str]) -> dict[str, Any] | None:
    """A cache shard's arrays if the file exists, is readable, holds ``needed`` and covers exactly ``clips`` (its
    computed plus its skipped ids); ``None`` otherwise, so the shard is computed again (a damaged file is never
    trusted)."""
    if not path.exists():
        return None
    try:
        with np.load(path) as data:
            shard = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        logger.warning("ignoring unreadable cache shard %s: %s", path, err)
        return None
    if not set(needed) <= set(shard):
        return None
    covered = [str(i) for i in [*shard["clip_ids"], *shard["skipped_ids"]]]
    if sorted(covered) != sorted(c.clip_id for c in clips):
        return None
    return shard


class EmbeddingCache:
    """Resumable on-disk cache of split embeddings (see the module docstring)."""

    def __init__(self, root: Path, shard_size: int = 64, batch_size: int = 8, loader: LoaderOptions | None = None
                 ) -> None:
        self.root = Path(root) / "embeddings"
        self.shard_size = shard_size
        self.batch_size = batch_size
        self.loader = loader or LoaderOptions()  # audio decoding workers (pipeline.py); results do not depend on it

    def split_dir(self, embedder: Embedder, task: Task, split: str) -> Path:
        safe_task = task.spec.name.replace(":", "_").replace("/", "_")
        return self.root / embedder_key(embedder) / safe_task / f"v{task.spec.version}" / split

    def shard_path(self, embedder: Embedder, task: Task, split: str, index: int) -> Path:
        return self.split_dir(embedder, task, split) / f"shard-{index:05d}.npz"

    def write_meta(self, embedder: Embedder) -> None:
        meta = self.root / embedder_key(embedder) / "meta.json"
        if not meta.exists():
            atomic_write_text(meta, json.dumps(embedder.describe(), indent=2, sort_keys=True, default=str))

    def shards(self, embedder: Embedder, task: Task, split: str) -> list[Shard]:
        """The split's shard plan (fixed by its clip list and ``shard_size``) with each shard's file."""
        return [Shard(task.spec.name, split, index, self.shard_path(embedder, task, split, index), tuple(group))
                for index, group in enumerate(shard_plan(task.clips(split), self.shard_size))]

    def missing_shards(self, embedder: Embedder, task: Task, split: str) -> list[Shard]:
        """The shards of the plan that have no valid file yet (missing, damaged, or for another clip list)."""
        return [s for s in self.shards(embedder, task, split) if self.load_shard(s.path, s.clips) is None]

    def write_shard(self, shard: Shard, arrays: dict[str, np.ndarray]) -> None:
        """Store a computed shard atomically, after checking that it covers exactly the shard's clips."""
        covered = sorted(str(i) for i in [*arrays["clip_ids"], *arrays["skipped_ids"]])
        if covered != sorted(c.clip_id for c in shard.clips):
            raise ValueError(f"arrays for {shard.path} do not cover the shard's {len(shard.clips)} clips")
        atomic_savez(shard.path, **arrays)

    def fill_shard(self, embedder: Embedder, shard: Shard) -> dict[str, np.ndarray]:
        """Compute one shard here and store it; returns its arrays."""
        arrays = compute_shard(embedder, shard.clips, self.batch_size, self.loader)
        self.write_shard(shard, arrays)
        return arrays

    def load_shard(self, path: Path, clips: Sequence[Clip]) -> dict[str, Any] | None:
        """A shard's contents if it exists and covers exactly ``clips``; ``None`` otherwise."""
        return read_shard(path, clips, ("clip_ids", "x", "skipped_ids", "skipped_reasons"))

    def get(self, embedder: Embedder, task: Task, split: str,
            progress: Callable[[int], None] | None = None) -> SplitEmbeddings:
        """Embeddings of ``split``, computing only the shards that are missing."""
        start = time.perf_counter()
        self.write_meta(embedder)
        plan = self.shards(embedder, task, split)
        by_id = {c.clip_id: c for s in plan for c in s.clips}
        result = SplitEmbeddings([], np.zeros((0, 0), np.float32), np.zeros(0), None)
        parts: list[dict[str, Any] | None] = [self.load_shard(shard.path, shard.clips) for shard in plan]
        missing = [k for k, arrays in enumerate(parts) if arrays is None]
        result.cached_shards = len(plan) - len(missing)
        if progress is not None:
            for shard, arrays in zip(plan, parts):
                if arrays is not None:
                    progress(len(shard.clips))
        opts = self.loader.resolve(embedder_device(embedder))
        result.loader_workers = int(opts.workers or 0)
        # one stream over all missing shards: decoding runs ahead in the workers, across shard boundaries
        computed = embed_shards(embedder, [plan[k].clips for k in missing], self.batch_size, opts)
        for k, (arrays, timing) in zip(missing, computed):
            self.write_shard(plan[k], arrays)
            parts[k] = arrays
            result.shard_seconds.append(timing.seconds)
            result.network_seconds += timing.network_seconds
            result.computed_shards += 1
            result.computed_clips += len(plan[k].clips)
            if progress is not None:
                progress(len(plan[k].clips))
        ids = [str(i) for p in parts for i in p["clip_ids"]]
        result.clip_ids = ids
        # a shard whose clips were all unreadable holds a (0, 0) array: it adds no rows and must not set the width
        filled = [p["x"] for p in parts if len(p["x"])]
        result.x = np.concatenate(filled) if filled else np.zeros((0, 0), np.float32)
        result.targets = np.stack([by_id[i].target for i in ids]) if ids else np.zeros(0)
        masks = [by_id[i].mask for i in ids]
        result.mask = np.stack(masks) if ids and masks[0] is not None else None
        result.skipped = {str(i): str(r) for p in parts for i, r in zip(p["skipped_ids"], p["skipped_reasons"])}
        result.seconds = time.perf_counter() - start
        result.location = str(self.split_dir(embedder, task, split))
        return result
