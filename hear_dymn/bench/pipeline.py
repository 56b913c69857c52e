"""The streaming audio pipeline: decoding, mono mix-down and resampling in DataLoader worker processes, prefetched.

Every consumer of audio in the benchmark reads through here: the local embedding backend and the Ray workers
(:func:`clip_loader`), fine-tuning's training batches and evaluation (:func:`map_loader` over
:class:`ClipAudio`). Nothing holds a split's audio: at any moment the decoded clips alive are those of the batches
in flight, about ``workers * prefetch`` items plus the one being consumed, whatever the dataset's size.

API::

    opts = LoaderOptions(workers=None, prefetch=2, pin_memory=None).resolve("cpu")   # concrete settings
    for batch in clip_loader(clips, 32000, batch_size=8, workers=2):                 # decoded, grouped
        batch.indices, batch.audio, batch.skipped      # positions in clips, (n, samples) float32, [(pos, reason)]
    for out in map_loader(fn, items, opts):            # fn(item) run in workers, results in the items' order
        ...
    audio, skipped = scan_clips(clips, 32000, store=None, options=opts)   # decode once: lengths, unreadable files

Determinism: results come back in the order of the items whatever the number of workers (torch's DataLoader keeps
order), and workers compute with pure functions of their item (fine-tuning seeds its augmentation by (seed,
epoch, sample position)), so 0, 1 or 8 workers give the same batches bit for bit. Workers run one torch thread
each; the main process's share of the thread budget is reduced by the workers (:func:`thread_budget_workers`).

An unreadable file (:class:`~hear_dymn.bench.audio.AudioReadError`) is never fatal: it comes back as a skipped
entry naming the clip and the reason, from a worker as from the main process. Any other error in a worker stops
the loop with the worker's traceback.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import threads as thread_budget
from .audio import AudioReadError, read_audio
from .tasks.base import Clip

logger = logging.getLogger(__name__)

__all__ = ["LoaderOptions", "ClipBatch", "ClipAudio", "clip_loader", "map_loader", "scan_clips", "default_workers",
           "thread_budget_workers"]

CPU_WORKERS_MAX = 2  # on a CPU the workers take cores from the network: a few hide decoding, more only compete
CUDA_WORKERS_MAX = 8  # enough decoders to keep one GPU fed with 10 s clips


def default_workers(device: str = "cpu", cores: int | None = None) -> int:
    """Loader worker processes for ``device``: on CUDA one per spare core up to :data:`CUDA_WORKERS_MAX`; on a CPU
    one per 4 cores, at least one from 2 cores up, at most :data:`CPU_WORKERS_MAX` (none on a single core). On a
    quiet 2-core CPU one worker beside one torch thread beat no worker beside two threads end to end: dymn04 29.7
    against 18.9 clips/s, the log-mel baseline 63.7 against 58.8; dymn10 16.3 against 17.2 (10 s OpenMIC clips)."""
    cores = cores or thread_budget.available_cores()
    if str(device).startswith("cuda"):
        return max(1, min(CUDA_WORKERS_MAX, cores - 1))
    if cores < 2:
        return 0
    return min(CPU_WORKERS_MAX, max(1, cores // 4))


@dataclass(frozen=True)
class LoaderOptions:
    """How audio is loaded: worker processes, items prefetched per worker, pinned memory.

    ``None`` means the default for the device (:func:`default_workers`; pinned memory on CUDA only).
    """

    workers: int | None = None
    prefetch: int = 2
    pin_memory: bool | None = None

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"loader workers must be >= 0, got {self.workers}")
        if self.prefetch < 1:
            raise ValueError(f"loader prefetch must be >= 1, got {self.prefetch}")

    def resolve(self, device: str = "cpu") -> LoaderOptions:
        """The same options with every default made concrete for ``device``."""
        cuda = str(device).startswith("cuda")
        workers = default_workers(device) if self.workers is None else self.workers
        pin = (cuda and torch.cuda.is_available()) if self.pin_memory is None else bool(self.pin_memory)
        return LoaderOptions(workers=workers, prefetch=self.prefetch, pin_memory=pin)

    def describe(self) -> str:
        workers = "default" if self.workers is None else str(self.workers)
        return f"{workers} loader worker(s), prefetch {self.prefetch}, pin_memory {self.pin_memory}"


def thread_budget_workers(workers: int | None, device: str = "cpu") -> int:
    """How many cores the loader workers take from the main process's torch threads (each runs one thread)."""
    return default_workers(device) if workers is None else workers


# ----------------------------------------------------------------------------------------------------------------
# the generic loader


def _identity(item: Any) -> Any:
    return item


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # a worker is one busy thread of the budget


class _Mapped(torch.utils.data.Dataset):
    def __init__(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> None:
        self.fn, self.items = fn, items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.fn(self.items[index])


def map_loader(fn: Callable[[Any], Any], items: Sequence[Any], options: LoaderOptions | None = None,
               device: str = "cpu") -> Iterator[Any]:
    """``fn(item)`` for every item, computed in worker processes and returned in the items' order.

    ``fn`` must be picklable where workers are spawned (a module-level function or an object of a module-level
    class); under the default ``fork`` it is inherited. With 0 workers everything runs here, one item at a time.
    Tensors in the results are pinned when the options say so.
    """
    opts = (options or LoaderOptions()).resolve(device)
    if not items:
        return iter(())
    loader = torch.utils.data.DataLoader(
        _Mapped(fn, items), batch_size=None, shuffle=False, num_workers=opts.workers, collate_fn=_identity,
        pin_memory=bool(opts.pin_memory), worker_init_fn=_worker_init if opts.workers else None,
        prefetch_factor=opts.prefetch if opts.workers else None)
    return iter(loader)


# ----------------------------------------------------------------------------------------------------------------
# clips


class ClipAudio:
    """The clips of one split, read per item and never kept: decoded from their files, or read from an
    :class:`~hear_dymn.bench.audio_store.AudioStore`.

    ``exact=True`` (evaluation, extraction) returns exactly what :func:`read_audio` returns: the store serves only
    its lossless entries and other clips are decoded again. ``exact=False`` (training) takes any stored entry.
    ``lengths`` (samples at ``sample_rate``, from :func:`scan_clips`) let training read just a crop.
    """

    def __init__(self, clips: Sequence[Clip], sample_rate: int, store: Any = None, lengths: Sequence[int] | None = None,
                 exact: bool = True) -> None:
        self.clips = list(clips)
        self.sample_rate = int(sample_rate)
        self.store = store
        self.exact = exact
        self.lengths = None if lengths is None else [int(n) for n in lengths]
        if store is not None and store.sample_rate != self.sample_rate:
            raise ValueError(f"audio store holds {store.sample_rate} Hz audio, the clips are wanted at {sample_rate}")

    def __len__(self) -> int:
        return len(self.clips)

    def describe(self) -> str:
        """What the numbers depend on: exact decoding, or the store's quantisation (training only)."""
        if self.store is None or self.exact or self.store.lossless:
            return "exact decode"
        return self.store.describe()

    def length(self, index: int) -> int:
        if self.lengths is not None:
            return self.lengths[index]
        return len(self.wave(index))

    def wave(self, index: int) -> np.ndarray:
        """The whole clip, mono float32 at ``sample_rate``."""
        return self.segment(index, 0, None)

    def segment(self, index: int, start: int, stop: int | None) -> np.ndarray:
        """Samples ``start:stop`` of the clip (a store reads only those)."""
        path = self.clips[index].path
        if self.store is not None:
            return self.store.read(path, start, stop, exact=self.exact)
        return read_audio(path, self.sample_rate)[start:stop]


@dataclass
class ClipBatch:
    """Consecutive clips of equal length, decoded.

    Attributes:
        indices: positions in the clip list of the rows of ``audio``.
        audio: ``(len(indices), samples)`` float32, or ``None`` when the batch only reports skipped clips.
        skipped: ``(position, reason)`` of the unreadable clips met since the previous batch.
    """

    indices: list[int]
    audio: torch.Tensor | None
    skipped: list[tuple[int, str]] = field(default_factory=list)


class _Decode:
    """Worker task: one clip's samples as a tensor (shared memory across processes), or the reason it failed."""

    def __init__(self, audio: ClipAudio) -> None:
        self.audio = audio

    def __call__(self, index: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            return index, torch.from_numpy(self.audio.wave(index)), ""
        except AudioReadError as err:
            return index, None, str(err)


def clip_loader(clips: Sequence[Clip], sample_rate: int, batch_size: int = 8, workers: int | None = None,
                prefetch: int = 2, pin_memory: bool = False, store: Any = None, groups: Sequence[Any] | None = None,
                device: str = "cpu") -> Iterator[ClipBatch]:
    """Decode ``clips`` in worker processes and yield them in order as batches of equal-length neighbours.

    A batch holds at most ``batch_size`` clips, all of the same length and (when ``groups`` gives one label per
    clip, e.g. its cache shard) of the same group; a clip of another length starts a new batch, as an unreadable
    clip does not. The audio equals :func:`~hear_dymn.bench.audio.read_audio` bit for bit (an ``AudioStore``
    serves only lossless entries here). Unreadable clips are logged and reported in ``ClipBatch.skipped``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    source = ClipAudio(clips, sample_rate, store=store, exact=True)
    opts = LoaderOptions(workers=workers, prefetch=prefetch, pin_memory=False).resolve(device)
    labels = list(groups) if groups is not None else [None] * len(source)
    if len(labels) != len(source):
        raise ValueError(f"groups has {len(labels)} labels for {len(source)} clips")
    pending: list[tuple[int, torch.Tensor]] = []
    skipped: list[tuple[int, str]] = []

    def flush() -> ClipBatch:
        rows = [w for _, w in pending]
        out = torch.empty((len(rows), len(rows[0])), dtype=torch.float32, pin_memory=pin_memory) if rows else None
        if out is not None:
            torch.stack(rows, out=out)
        batch = ClipBatch([i for i, _ in pending], out, list(skipped))
        pending.clear()
        skipped.clear()
        return batch

    group: Any = None
    for index, wave, reason in map_loader(_Decode(source), range(len(source)), opts):
        if (pending or skipped) and labels[index] != group:
            yield flush()  # batches never cross groups
        group = labels[index]
        if wave is None:
            logger.warning("skipping %s: %s", source.clips[index].clip_id, reason)
            skipped.append((index, reason))
            continue
        if pending and (len(pending) >= batch_size or len(pending[0][1]) != len(wave)):
            yield flush()
        pending.append((index, wave))
    if pending or skipped:
        yield flush()


class _Length:
    """Worker task: the clip's length in samples (decoding it, or storing it once), or the reason it failed."""

    def __init__(self, audio: ClipAudio) -> None:
        self.audio = audio

    def __call__(self, index: int) -> tuple[int, int, str]:
        try:
            path = self.audio.clips[index].path
            if self.audio.store is not None:
                return index, self.audio.store.ensure(path).length, ""
            return index, len(read_audio(path, self.audio.sample_rate)), ""
        except AudioReadError as err:
            return index, -1, err.reason


def scan_clips(clips: Sequence[Clip], sample_rate: int, store: Any = None, options: LoaderOptions | None = None,
               exact: bool = True, device: str = "cpu", desc: str | None = None
               ) -> tuple[ClipAudio, dict[str, str]]:
    """Decode every clip once, in workers, keeping nothing but its length (and, with a store, its stored copy).

    Returns the readable clips as a :class:`ClipAudio` that knows their lengths, and ``{clip_id: reason}`` for the
    unreadable ones (logged). ``desc`` shows a progress bar with that label.
    """
    source = ClipAudio(clips, sample_rate, store=store, exact=exact)
    good: list[Clip] = []
    lengths: list[int] = []
    skipped: dict[str, str] = {}
    bar = None
    if desc is not None:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(source), desc=desc, unit="clip", leave=False)
    try:
        for index, length, reason in map_loader(_Length(source), range(len(source)), options, device):
            clip = source.clips[index]
            if length < 0:
                logger.warning("skipping unreadable file %s: %s", clip.path, reason)
                skipped[clip.clip_id] = reason
            else:
                good.append(clip)
                lengths.append(length)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return ClipAudio(good, sample_rate, store=store, lengths=lengths, exact=exact), skipped
