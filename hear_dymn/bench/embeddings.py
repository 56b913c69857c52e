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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..frontend import MelFrontend
from ..hear import HearModel, get_scene_embeddings
from .atomic import atomic_savez, atomic_write_text
from .audio import AudioReadError, read_audio
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


def compute_shard(embedder: Embedder, clips: Sequence[Clip], batch_size: int = 8) -> dict[str, np.ndarray]:
    """Embed ``clips`` in order (equal-length neighbours batched together); unreadable files are skipped.

    Returns:
        The shard's arrays: ``clip_ids``, ``x`` ``(n, D)`` float32, ``skipped_ids``, ``skipped_reasons``.
    """
    ids, vectors, skipped_ids, reasons = [], [], [], []
    pending: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        if pending:
            audio = torch.from_numpy(np.stack([a for _, a in pending]))
            emb = embedder(audio).numpy().astype(np.float32)
            ids.extend(i for i, _ in pending)
            vectors.extend(emb)
            pending.clear()

    for clip in clips:
        try:
            audio = read_audio(clip.path, embedder.sample_rate)
        except AudioReadError as err:
            logger.warning("skipping %s: %s", clip.clip_id, err)
            skipped_ids.append(clip.clip_id)
            reasons.append(str(err))
            continue
        if pending and (len(pending) >= batch_size or len(pending[0][1]) != len(audio)):
            flush()
        pending.append((clip.clip_id, audio))
    flush()
    dim = vectors[0].shape[0] if vectors else 0
    return {
        "clip_ids": np.array(ids, dtype=str),
        "x": np.stack(vectors) if vectors else np.zeros((0, dim), np.float32),
        "skipped_ids": np.array(skipped_ids, dtype=str),
        "skipped_reasons": np.array(reasons, dtype=str),
    }


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

    @property
    def total_shards(self) -> int:
        return sum(self.planned.values())

    def record(self, emb: SplitEmbeddings) -> None:
        """Add one split as returned by :meth:`EmbeddingCache.get` (whatever it computed counts as local work)."""
        self.planned[emb.location] = emb.computed_shards + emb.cached_shards
        self.computed_clips += emb.computed_clips
        self.shard_seconds.extend(emb.shard_seconds)
        self.seconds += sum(emb.shard_seconds)

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
        return {"embedding backend": self.backend, "embedding workers": self.workers, "embedding shards": line}


class EmbeddingCache:
    """Resumable on-disk cache of split embeddings (see the module docstring)."""

    def __init__(self, root: Path, shard_size: int = 64, batch_size: int = 8) -> None:
        self.root = Path(root) / "embeddings"
        self.shard_size = shard_size
        self.batch_size = batch_size

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
        arrays = compute_shard(embedder, shard.clips, self.batch_size)
        self.write_shard(shard, arrays)
        return arrays

    def load_shard(self, path: Path, clips: Sequence[Clip]) -> dict[str, Any] | None:
        """A shard's contents if it exists and covers exactly ``clips``; ``None`` otherwise."""
        if not path.exists():
            return None
        try:
            with np.load(path) as data:
                shard = {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:  # damaged: recomputed, never trusted
            logger.warning("ignoring unreadable cache shard %s: %s", path, err)
            return None
        covered = list(shard["clip_ids"]) + list(shard["skipped_ids"])
        if sorted(covered) != sorted(c.clip_id for c in clips):
            return None
        return shard

    def get(self, embedder: Embedder, task: Task, split: str,
            progress: Callable[[int], None] | None = None) -> SplitEmbeddings:
        """Embeddings of ``split``, computing only the shards that are missing."""
        start = time.perf_counter()
        self.write_meta(embedder)
        plan = self.shards(embedder, task, split)
        by_id = {c.clip_id: c for s in plan for c in s.clips}
        result = SplitEmbeddings([], np.zeros((0, 0), np.float32), np.zeros(0), None)
        parts = []
        for shard in plan:
            arrays = self.load_shard(shard.path, shard.clips)
            if arrays is None:
                shard_start = time.perf_counter()
                arrays = self.fill_shard(embedder, shard)
                result.shard_seconds.append(time.perf_counter() - shard_start)
                result.computed_shards += 1
                result.computed_clips += len(shard.clips)
            else:
                result.cached_shards += 1
            parts.append(arrays)
            if progress is not None:
                progress(len(shard.clips))
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
