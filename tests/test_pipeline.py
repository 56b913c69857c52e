"""The streaming audio pipeline and the decoded-audio store: exact decoding through workers, order and batches
independent of the worker count, skipped files named from a worker, bounded memory, store round trips."""
from __future__ import annotations

import multiprocessing
import os
import pickle
import weakref
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from hear_dymn.bench import audio_store as store_module
from hear_dymn.bench import pipeline
from hear_dymn.bench.audio import AudioReadError, read_audio
from hear_dymn.bench.audio_store import HEADER, AudioStore
from hear_dymn.bench.embeddings import EmbeddingCache, ExtractionStats, LogMelBaseline
from hear_dymn.bench.finetune import DistContext, TrainingBatches, _EvalBatch, eval_batches, load_split
from hear_dymn.bench.pipeline import ClipAudio, LoaderOptions, clip_loader, default_workers, map_loader, scan_clips
from hear_dymn.bench.recipes import recipe_for
from hear_dymn.bench.tasks import get_task
from hear_dymn.bench.tasks.base import Clip
from hear_dymn.bench.tasks.synthetic import write_miniature


def _clip(path: Path, clip_id: str | None = None) -> Clip:
    return Clip(clip_id or path.stem, path, np.array(0))


def _tone(seconds: float, sr: int, seed: int, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) + 0.05 * rng.standard_normal(len(t))
    return np.stack([wave, 0.5 * wave], axis=1) if channels == 2 else wave


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[Path]:
    """Mixed formats, rates, channels and lengths; runs of equal length to batch."""
    root = tmp_path_factory.mktemp("audio")
    spec = [(0.5, 44100, 1, "PCM_16", "wav"), (0.5, 44100, 1, "PCM_16", "wav"), (0.5, 44100, 2, "PCM_16", "wav"),
            (0.3, 48000, 2, "FLOAT", "wav"), (0.3, 48000, 1, "PCM_16", "flac"), (0.4, 32000, 1, "PCM_16", "wav"),
            (0.4, 32000, 1, "PCM_16", "wav"), (0.4, 32000, 1, "PCM_16", "wav"), (0.35, 44100, 1, "VORBIS", "ogg")]
    paths = []
    for k, (seconds, sr, channels, subtype, ext) in enumerate(spec):
        path = root / f"clip{k:02d}.{ext}"
        sf.write(str(path), _tone(seconds, sr, k, channels), sr, subtype=subtype)
        paths.append(path)
    return paths


def _batches(clips, workers: int, **kwargs) -> list[tuple[list[int], np.ndarray | None, list]]:
    return [(b.indices, None if b.audio is None else b.audio.numpy().copy(), b.skipped)
            for b in clip_loader(clips, 32000, workers=workers, **kwargs)]


@pytest.mark.parametrize("workers", [0, 2])
def test_clip_loader_equals_read_audio_bit_for_bit(files, workers) -> None:
    clips = [_clip(p) for p in files]
    batches = _batches(clips, workers, batch_size=2)
    seen = []
    for indices, audio, skipped in batches:
        assert not skipped and 1 <= len(indices) <= 2 and audio.dtype == np.float32
        for row, i in zip(audio, indices):
            np.testing.assert_array_equal(row, read_audio(files[i], 32000))  # bit for bit
        seen.extend(indices)
    assert seen == list(range(len(files)))  # in order, each once
    # equal-length neighbours share a batch (at most batch_size); a new length starts a new one
    assert [b[0] for b in batches] == [[0, 1], [2], [3, 4], [5, 6], [7], [8]]


def test_batches_do_not_depend_on_workers_and_respect_groups(files) -> None:
    clips = [_clip(p) for p in files]
    groups = [0, 0, 0, 1, 1, 1, 1, 2, 2]
    zero, two = _batches(clips, 0, groups=groups), _batches(clips, 2, groups=groups, prefetch=1)
    assert [b[0] for b in zero] == [b[0] for b in two] == [[0, 1, 2], [3, 4], [5, 6], [7], [8]]
    for a, b in zip(zero, two):
        np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="groups has 2 labels for 9 clips"):
        next(clip_loader(clips, 32000, groups=[0, 1]))


def test_unreadable_file_is_skipped_and_named_from_a_worker(files, tmp_path) -> None:
    broken = tmp_path / "broken-clip.wav"
    broken.write_bytes(b"NOT-AUDIO" * 50)
    clips = [_clip(files[0]), _clip(broken), _clip(tmp_path / "gone.wav"), _clip(files[1])]
    batches = _batches(clips, workers=2)
    assert [b[0] for b in batches] == [[0, 3]]  # the unreadable files do not split the run of equal lengths
    (i, reason), (j, missing) = batches[0][2]
    assert (i, j) == (1, 2) and "broken-clip.wav" in reason and "gone.wav" in missing and "no such file" in missing
    only_bad = _batches(clips[1:3], workers=2)  # nothing readable: one batch without audio names both
    assert [(b[0], b[1], [i for i, _ in b[2]]) for b in only_bad] == [([], None, [0, 1])]


class _Explodes:
    def __call__(self, item):
        raise KeyError(f"bad item {item}")


def test_other_worker_errors_stop_the_loop_with_the_cause() -> None:
    with pytest.raises(KeyError, match="bad item 1"):
        list(map_loader(_Explodes(), [1, 2], LoaderOptions(workers=2)))


def test_loader_options_and_defaults(monkeypatch) -> None:
    assert default_workers("cpu", cores=1) == 0 and default_workers("cpu", cores=2) == 1
    assert default_workers("cpu", cores=4) == 1 and default_workers("cpu", cores=8) == 2
    assert default_workers("cpu", cores=64) == pipeline.CPU_WORKERS_MAX
    assert default_workers("cuda", cores=16) == pipeline.CUDA_WORKERS_MAX and default_workers("cuda", cores=2) == 1
    opts = LoaderOptions().resolve("cpu")
    assert opts.workers == default_workers("cpu") and opts.pin_memory is False
    with pytest.raises(ValueError, match="loader workers must be >= 0"):
        LoaderOptions(workers=-1)
    with pytest.raises(ValueError, match="prefetch must be >= 1"):
        LoaderOptions(prefetch=0)
    # the thread budget gives the workers' cores to nobody else
    from hear_dymn import threads

    monkeypatch.delenv(threads.ENV_THREADS, raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    budget = threads.decide(workers=pipeline.thread_budget_workers(None, "cpu"))
    assert budget.intra_op + budget.workers == 8 and budget.workers == 2


# ------------------------------------------------------------------------------------------------------------
# embedding extraction through the pipeline


def test_cache_results_and_stats_do_not_depend_on_workers(tmp_path) -> None:
    root = write_miniature("esc50", tmp_path / "esc50", seed=0, corrupt=True)
    task = get_task("esc50", root)
    results = {}
    for workers in (0, 2):
        cache = EmbeddingCache(tmp_path / f"cache{workers}", shard_size=4, loader=LoaderOptions(workers=workers))
        results[workers] = cache.get(LogMelBaseline(), task, "fold1")
    a, b = results[0], results[2]
    assert a.clip_ids == b.clip_ids and a.skipped == b.skipped and len(a.skipped) == 1
    np.testing.assert_array_equal(a.x, b.x)
    assert b.loader_workers == 2 and b.network_seconds > 0
    stats = ExtractionStats()
    stats.record(b)
    provenance = stats.provenance()
    assert "2 audio loader worker(s)" in provenance["embedding workers"]
    assert provenance["embedding throughput"].startswith("end to end ") and "network only" in \
        provenance["embedding throughput"]
    assert ExtractionStats().provenance()["embedding throughput"] == "nothing computed"


# ------------------------------------------------------------------------------------------------------------
# fine-tuning's data path


@pytest.fixture(scope="module")
def esc50(tmp_path_factory):
    return get_task("esc50", write_miniature("esc50", tmp_path_factory.mktemp("esc50"), seed=0))


def _recipe(**overrides):
    return replace(recipe_for("esc50", "dymn04", False, preset="quick"), clip_seconds=1.0, batch_size=4,
                   **overrides)


def _batches_of_epoch(audio: ClipAudio, workers: int, recipe) -> list[list[dict]]:
    clips = audio.clips
    targets = np.eye(5, dtype=np.float32)[[int(c.target) for c in clips]]
    batches = TrainingBatches(audio, targets, None, recipe, seed=1)
    steps = batches.steps(0, DistContext(), micro_batches=2)
    return list(map_loader(batches, steps, LoaderOptions(workers=workers)))


def test_training_batches_do_not_depend_on_workers_or_on_reading_crops(esc50) -> None:
    clips = esc50.clips("fold1") + esc50.clips("fold2")
    recipe = _recipe(train_crop="random")
    scanned, skipped = load_split(clips, 32000, loader=LoaderOptions(workers=2))
    assert not skipped and scanned.lengths == [len(read_audio(c.path, 32000)) for c in clips]
    whole = _batches_of_epoch(ClipAudio(clips, 32000), 0, recipe)  # lengths unknown: decode whole, then crop
    for audio, workers in ((scanned, 0), (scanned, 2)):  # lengths known: only the crop is read
        got = _batches_of_epoch(audio, workers, recipe)
        assert len(got) == len(whole) == 5 and all(len(step) == 2 for step in got)
        for step_a, step_b in zip(whole, got):
            for a, b in zip(step_a, step_b):
                for key in ("wave", "target", "lam", "perm"):
                    np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
                assert (a["mel_seed"], a["dropout_seed"]) == (b["mel_seed"], b["dropout_seed"])


class _LiveCounter:
    """Counts the decoded clips alive at once, across loader worker processes (shared counters, fork)."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("fork")
        self.live, self.peak, self.total = context.Value("i", 0), context.Value("i", 0), context.Value("i", 0)

    def _released(self) -> None:
        with self.live.get_lock():
            self.live.value -= 1

    def __call__(self, path, sample_rate):
        wave = read_audio(path, sample_rate)
        with self.live.get_lock():
            self.live.value += 1
            self.total.value += 1
            self.peak.value = max(self.peak.value, self.live.value)
        weakref.finalize(wave, self._released)
        return wave


@pytest.mark.parametrize("workers", [0, 2])
def test_decoded_clips_held_at_once_do_not_grow_with_the_dataset(esc50, tmp_path, monkeypatch, workers) -> None:
    """An epoch of training batches and an evaluation pass hold a few decoded clips at a time, however many clips
    the split has: 10 clips or 50 (the same files listed 5 times)."""
    recipe = _recipe()
    peaks = {}
    for copies in (1, 5):
        clips = [replace(c, clip_id=f"{c.clip_id}-{k}") for k in range(copies) for c in esc50.clips("fold1")]
        counter = _LiveCounter()
        monkeypatch.setattr(pipeline, "read_audio", counter)
        audio, _ = scan_clips(clips, 32000, options=LoaderOptions(workers=workers))
        steps = _batches_of_epoch(audio, workers, recipe)
        assert len(steps) == len(clips) // recipe.batch_size
        plan = eval_batches(audio, recipe, batch_size=4)
        evaluated = sum(len(x) for x in map_loader(_EvalBatch(audio, 32000, 32000), plan,
                                                   LoaderOptions(workers=workers)))
        trained = len(steps) * recipe.batch_size
        assert evaluated == len(clips) and counter.total.value >= 2 * len(clips) + trained  # scan, eval, training
        assert counter.live.value == 0
        peaks[copies] = counter.peak.value
    # one sample reads its clip and maybe a wavmix partner; an evaluation batch holds 4; per worker
    bound = 4 * max(1, workers)
    assert peaks[1] <= bound and peaks[5] <= bound, peaks


# ------------------------------------------------------------------------------------------------------------
# the decoded-audio store


@pytest.fixture
def store(tmp_path) -> AudioStore:
    return AudioStore(tmp_path / "store", 32000, "int16")


def test_store_round_trip_exact_where_it_can_be(files, store, tmp_path) -> None:
    exact_source = files[5]  # 16-bit mono at 32 kHz: int16 holds it exactly
    entry = store.ensure(exact_source)
    assert entry.lossless and entry.length == len(read_audio(exact_source, 32000))
    assert entry.file.stat().st_size == HEADER.size + 2 * entry.length  # 2 bytes a sample
    np.testing.assert_array_equal(store.read(exact_source), read_audio(exact_source, 32000))
    resampled = files[0]  # 44.1 kHz: quantised
    decoded = read_audio(resampled, 32000)
    entry = store.ensure(resampled)
    assert not entry.lossless and entry.length == len(decoded)
    stored = store.read(resampled)
    assert stored.dtype == np.float32 and 0 < np.max(np.abs(stored - decoded)) <= 2.0 ** -16 * 1.0001
    np.testing.assert_array_equal(store.read(resampled, exact=True), decoded)  # exact: decoded again
    np.testing.assert_array_equal(store.read(resampled, 100, 900), stored[100:900])
    assert len(store.read(resampled, entry.length - 5, entry.length + 100)) == 5
    # float32 stores are exact everywhere; the store travels to workers by pickling
    exact = pickle.loads(pickle.dumps(AudioStore(tmp_path / "f32", 32000, "float32")))
    for path in files:
        np.testing.assert_array_equal(exact.read(path), read_audio(path, 32000))
    assert exact.lossless and not store.lossless and "int16" in store.describe()
    with pytest.raises(ValueError, match="dtype must be one of int16, float32"):
        AudioStore(tmp_path, dtype="mp3")


def test_store_decodes_again_after_the_source_changed(tmp_path, store, monkeypatch) -> None:
    source = tmp_path / "clip.wav"
    sf.write(str(source), _tone(0.2, 32000, 0), 32000, subtype="PCM_16")
    first = store.read(source)
    calls = []
    monkeypatch.setattr(store_module, "read_audio", lambda p, sr: calls.append(p) or read_audio(p, sr))
    np.testing.assert_array_equal(store.read(source), first)
    assert calls == []  # a stored clip is not decoded again
    stat = source.stat()
    sf.write(str(source), _tone(0.2, 32000, 1), 32000, subtype="PCM_16")  # same size, other samples
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert source.stat().st_size == stat.st_size
    second = store.read(source)
    assert calls == [source] and not np.array_equal(second, first)
    np.testing.assert_array_equal(second, read_audio(source, 32000))


def test_store_writes_are_atomic(tmp_path, store, files, monkeypatch) -> None:
    def crash(src, dst):
        raise OSError("killed while writing")

    with monkeypatch.context() as patch:
        patch.setattr(store_module.os, "replace", crash)
        with pytest.raises(OSError, match="killed"):
            store.ensure(files[0])
    assert store.lookup(files[0]) is None and not list(store.root.rglob("*.tmp"))  # nothing half-written
    entry = store.ensure(files[0])
    good = entry.file.read_bytes()
    entry.file.write_bytes(good[:-2])  # a file cut short (e.g. a power loss) is not trusted
    assert store.lookup(files[0]) is None
    np.testing.assert_array_equal(store.read(files[0]), store_module._samples(entry, 0, None))
    assert entry.file.read_bytes() == good
    entry.file.write_bytes(b"XXXX" + good[4:])  # another format or version: written again
    assert store.lookup(files[0]) is None and store.ensure(files[0]).length == entry.length
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio")
    with pytest.raises(AudioReadError, match="broken.wav"):
        store.ensure(broken)
    assert store.lookup(broken) is None and store.lookup(tmp_path / "gone.wav") is None


def test_scan_fills_the_store_once_and_training_reads_it(esc50, store, monkeypatch) -> None:
    clips = esc50.clips("fold1")
    audio, skipped = scan_clips(clips, 32000, store=store, exact=False, options=LoaderOptions(workers=2))
    assert not skipped and len(list(store.folder.rglob("*.pcm"))) == len(clips)
    assert audio.describe() == store.describe()
    assert ClipAudio(clips, 32000, store=store, exact=True).describe() == "exact decode"

    def no_decoding(*args):
        raise AssertionError("decoded although stored")

    monkeypatch.setattr(store_module, "read_audio", no_decoding)
    monkeypatch.setattr(pipeline, "read_audio", no_decoding)
    again, _ = scan_clips(clips, 32000, store=store, exact=False, options=LoaderOptions(workers=0))
    assert again.lengths == audio.lengths
    steps = _batches_of_epoch(again, 0, _recipe())
    assert len(steps) == 2 and torch.isfinite(steps[0][0]["wave"]).all()
    with pytest.raises(ValueError, match="holds 32000 Hz audio"):
        ClipAudio(clips, 16000, store=store)
