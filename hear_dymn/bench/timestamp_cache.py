"""Timestamp embeddings per (model, task, split) for HEAR event tasks, cached on disk like the scene embeddings.

Cache layout (the key rules of :class:`~hear_dymn.bench.embeddings.EmbeddingCache`: embedder key, task, version,
split, shards of ``shard_size`` clips in clip-id order, each written atomically and holding the ids it covers)::

    <cache>/timestamp_embeddings/<timestamp key>/meta.json
    <cache>/timestamp_embeddings/<timestamp key>/<task>/v<version>/<split>/shard-00000.npz ...

The timestamp key is the embedder key plus a digest of the timestamp recipe (for the log-mel baseline its box and
hop; HEAR modules carry their hop in their description). A shard stores ``clip_ids``, the frames of its clips
concatenated (``x`` ``(N, D)`` float32), their ``timestamps`` (ms, float64), ``offsets`` (clip ``i`` owns frames
``offsets[i]:offsets[i + 1]``) and the unreadable clips (``skipped_ids``, ``skipped_reasons``). A killed run loses
at most the shard in flight; a rerun computes only the missing shards.

Embeddings come from the model's public HEAR function: :func:`hear_dymn.hear.get_timestamp_embeddings` for our
models (long files stream through its windowing: 10 s windows, a bounded number per forward pass), an embedder's
own ``timestamp_embeddings(audio)`` or ``timestamps(audio)`` method ``-> (embeddings (n, T, D), timestamps (n, T))``
when it has one (the adapter of any HEAR module), and box means and standard deviations of the log-mel frames for the ``logmel`` baseline.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..hear import get_timestamp_embeddings, timestamps_for
from .atomic import atomic_savez, atomic_write_text
from .audio import AudioReadError, read_audio
from .embeddings import HearEmbedder, LogMelBaseline, Shard, embedder_key, read_shard, shard_plan
from .tasks.base import Clip, Task

logger = logging.getLogger(__name__)

__all__ = ["TimestampCache", "TimestampSplit", "timestamp_embed", "timestamp_key", "LOGMEL_TIMESTAMP_HOP_MS"]

LOGMEL_TIMESTAMP_HOP_MS = 50.0  # the HEAR default hop, as our models use
_LOGMEL_BOX = 5  # log-mel frames (10 ms) averaged per timestamp: about one hop


def _logmel_timestamps(baseline: LogMelBaseline, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of each log-mel band over a centred box of 5 frames, every 50 ms."""
    cfg = baseline.frontend.cfg
    n_samples = audio.shape[1]
    if n_samples < cfg.min_samples:
        audio = F.pad(audio, (0, cfg.min_samples - n_samples))
    with torch.no_grad():
        mel = baseline.frontend(audio)[:, 0].double()  # (n, M, frames)
        mean = F.avg_pool1d(mel, _LOGMEL_BOX, stride=1, padding=_LOGMEL_BOX // 2, count_include_pad=False)
        square = F.avg_pool1d(mel * mel, _LOGMEL_BOX, stride=1, padding=_LOGMEL_BOX // 2, count_include_pad=False)
        std = (square - mean * mean).clamp_min(0).sqrt()
        times = timestamps_for(n_samples, cfg.sample_rate, LOGMEL_TIMESTAMP_HOP_MS)
        frame = (times * cfg.sample_rate / 1000.0 / cfg.hop_length).round().long().clamp(max=mel.shape[-1] - 1)
        emb = torch.cat([mean[..., frame], std[..., frame]], dim=1).transpose(1, 2).float()
    return emb, times.float().expand(audio.shape[0], -1).contiguous()


def _own_timestamp_api(embedder: Any):
    """An embedder's own timestamp method (``timestamp_embeddings`` or, for HEAR-module adapters, ``timestamps``)."""
    for name in ("timestamp_embeddings", "timestamps"):
        method = getattr(embedder, name, None)
        if callable(method):
            return method
    return None


def timestamp_embed(embedder: Any, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Timestamp embeddings ``(n, T, D)`` and timestamps ``(n, T)`` ms of float32 ``audio`` ``(n, samples)`` at
    ``embedder.sample_rate``, on the CPU.

    Raises:
        TypeError: the embedder has no timestamp API.
    """
    own = _own_timestamp_api(embedder)
    if own is not None:
        emb, times = own(audio)
    elif isinstance(embedder, HearEmbedder):
        emb, times = get_timestamp_embeddings(audio.to(embedder.model.device), embedder.model)
    elif isinstance(embedder, LogMelBaseline):
        emb, times = _logmel_timestamps(embedder, audio)
    else:
        raise TypeError(f"model {getattr(embedder, 'name', embedder)!r} has no timestamp embeddings (HEAR "
                        "get_timestamp_embeddings); event tasks need them")
    emb, times = torch.as_tensor(emb).cpu(), torch.as_tensor(times).cpu()
    if emb.ndim != 3 or times.shape != emb.shape[:2] or emb.shape[0] != audio.shape[0]:
        raise ValueError(f"model {embedder.name!r}: timestamp embeddings {tuple(emb.shape)} and timestamps "
                         f"{tuple(times.shape)} must be (n, T, D) and (n, T) for {audio.shape[0]} sounds")
    return emb, times


def timestamp_recipe(embedder: Any) -> dict[str, Any]:
    """What, beyond the embedder's description, determines its timestamp embeddings."""
    own = _own_timestamp_api(embedder)
    if own is not None:
        return {"timestamps": f"embedder.{own.__name__}"}
    if isinstance(embedder, LogMelBaseline):
        return {"timestamps": "logmel box mean/std", "hop_ms": LOGMEL_TIMESTAMP_HOP_MS, "box_frames": _LOGMEL_BOX}
    return {"timestamps": "hear_dymn.hear.get_timestamp_embeddings"}


def timestamp_key(embedder: Any) -> str:
    recipe = json.dumps(timestamp_recipe(embedder), sort_keys=True)
    return f"{embedder_key(embedder)}-ts{hashlib.sha256(recipe.encode()).hexdigest()[:8]}"


def compute_timestamp_shard(embedder: Any, clips: Sequence[Clip], batch_size: int = 4,
                            timing: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """Embed ``clips`` in order (equal-length neighbours batched together); unreadable files are skipped.
    ``timing["network"]`` (if given) accumulates the seconds spent in the model."""
    ids: list[str] = []
    frames: list[np.ndarray] = []
    stamps: list[np.ndarray] = []
    skipped_ids, reasons = [], []
    pending: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        if pending:
            start = time.perf_counter()
            emb, times = timestamp_embed(embedder, torch.from_numpy(np.stack([a for _, a in pending])))
            if timing is not None:
                timing["network"] = timing.get("network", 0.0) + time.perf_counter() - start
            for (clip_id, _), e, t in zip(pending, emb.numpy(), times.numpy()):
                if not np.isfinite(e).all():
                    raise ValueError(f"model {embedder.name!r}: non-finite timestamp embeddings for {clip_id}")
                ids.append(clip_id)
                frames.append(e.astype(np.float32))
                stamps.append(t.astype(np.float64))
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
    dim = frames[0].shape[1] if frames else 0
    return {
        "clip_ids": np.array(ids, dtype=str),
        "x": np.concatenate(frames) if frames else np.zeros((0, dim), np.float32),
        "timestamps": np.concatenate(stamps) if stamps else np.zeros(0),
        "offsets": np.cumsum([0] + [len(f) for f in frames]).astype(np.int64),
        "skipped_ids": np.array(skipped_ids, dtype=str),
        "skipped_reasons": np.array(reasons, dtype=str),
    }


@dataclass
class TimestampSplit:
    """Timestamp embeddings of one split in clip-id order, without the skipped clips."""

    clip_ids: list[str]
    x: np.ndarray  # (N, D)
    timestamps: np.ndarray  # (N,) ms
    offsets: np.ndarray  # (n_clips + 1,)
    skipped: dict[str, str] = field(default_factory=dict)
    computed_shards: int = 0
    cached_shards: int = 0
    computed_clips: int = 0
    shard_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0
    location: str = ""
    network_seconds: float = 0.0  # of the computing time, the part spent in the model
    loader_workers: int = 0  # audio is read in this process


class TimestampCache:
    """Resumable on-disk cache of split timestamp embeddings (see the module docstring)."""

    def __init__(self, root: Path, shard_size: int = 16, batch_size: int = 4) -> None:
        self.root = Path(root) / "timestamp_embeddings"
        self.shard_size = shard_size
        self.batch_size = batch_size

    def split_dir(self, embedder: Any, task: Task, split: str) -> Path:
        safe_task = task.spec.name.replace(":", "_").replace("/", "_")
        return self.root / timestamp_key(embedder) / safe_task / f"v{task.spec.version}" / split

    def shards(self, embedder: Any, task: Task, split: str) -> list[Shard]:
        folder = self.split_dir(embedder, task, split)
        return [Shard(task.spec.name, split, i, folder / f"shard-{i:05d}.npz", tuple(group))
                for i, group in enumerate(shard_plan(task.clips(split), self.shard_size))]

    def missing_shards(self, embedder: Any, task: Task, split: str) -> list[Shard]:
        return [s for s in self.shards(embedder, task, split) if self.load_shard(s.path, s.clips) is None]

    def write_meta(self, embedder: Any) -> None:
        meta = self.root / timestamp_key(embedder) / "meta.json"
        if not meta.exists():
            info = {"embedder": embedder.describe(), "recipe": timestamp_recipe(embedder)}
            atomic_write_text(meta, json.dumps(info, indent=2, sort_keys=True, default=str))

    @staticmethod
    def load_shard(path: Path, clips: Sequence[Clip]) -> dict[str, np.ndarray] | None:
        """A shard's contents if it exists, is readable and covers exactly ``clips``; ``None`` otherwise."""
        return read_shard(path, clips, ("clip_ids", "x", "timestamps", "offsets", "skipped_ids", "skipped_reasons"))

    def get(self, embedder: Any, task: Task, split: str, progress: Callable[[int], None] | None = None
            ) -> TimestampSplit:
        """Timestamp embeddings of ``split``, computing only the shards that are missing."""
        start = time.perf_counter()
        self.write_meta(embedder)
        result = TimestampSplit([], np.zeros((0, 0), np.float32), np.zeros(0), np.zeros(1, np.int64))
        parts = []
        timing: dict[str, float] = {}
        for shard in self.shards(embedder, task, split):
            arrays = self.load_shard(shard.path, shard.clips)
            if arrays is None:
                shard_start = time.perf_counter()
                arrays = compute_timestamp_shard(embedder, shard.clips, self.batch_size, timing)
                atomic_savez(shard.path, **arrays)
                result.shard_seconds.append(time.perf_counter() - shard_start)
                result.computed_shards += 1
                result.computed_clips += len(shard.clips)
            else:
                result.cached_shards += 1
            parts.append(arrays)
            if progress is not None:
                progress(len(shard.clips))
        result.clip_ids = [str(i) for p in parts for i in p["clip_ids"]]
        filled = [p for p in parts if len(p["clip_ids"])]
        if filled:
            result.x = np.concatenate([p["x"] for p in filled])
            result.timestamps = np.concatenate([p["timestamps"] for p in filled])
            lengths = np.concatenate([np.diff(p["offsets"]) for p in filled])
            result.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        result.skipped = {str(i): str(r) for p in parts for i, r in zip(p["skipped_ids"], p["skipped_reasons"])}
        result.seconds = time.perf_counter() - start
        result.network_seconds = timing.get("network", 0.0)
        result.location = str(self.split_dir(embedder, task, split))
        return result
