"""Deterministic miniature datasets in the official ESC-50, FSD50K, OpenMIC-2018 and HEAR layouts.

The miniatures exercise the real loaders end to end (same files, same columns, same directory layout) and
are small enough for a CPU smoke run of the whole benchmark. Their sounds are learnable but not trivial:
every class is a distinct synthetic timbre (a harmonic tone with class-specific pitch, number of
harmonics and spectral tilt, mixed with a class-specific noise band, under a class-specific amplitude
modulation or onset pattern). Each clip jitters those parameters, gets a random gain and a pink
background noise at -3 to 20 dB SNR, and multiclass clips sometimes contain a quieter distractor from
another class.

Default sizes (``clips_per_class`` x ``num_classes``; every split contains every class):

* ``esc50``: 5 classes x 10 clips = 50 clips, 2 per class in each of the 5 official folds; 5 s,
  44.1 kHz mono 16-bit WAV (the official format).
* ``fsd50k``: 6 classes x 10 = 60 clips of 1-6 s; each clip mixes 1-3 classes; sample rates mixed
  among 32 / 44.1 / 48 kHz, about a third stereo. Per class: 6 train, 1 val (dev) and 3 eval clips.
* ``openmic``: 6 instruments x 10 = 60 clips, OGG/Vorbis at 44.1 or 48 kHz, about a third stereo, **4 s** instead
  of the official 10 s to keep the suite fast (``TaskSpec.clip_seconds`` stays the nominal 10.0).
  Each clip mixes its primary instrument with 0-2 others. The primary instrument is always annotated;
  other (clip, instrument) pairs are annotated with probability 0.6 (present) or 0.35 (absent), so about
  half of all pairs are missing. Relevance is in [0, 1] with a few disagreeing annotations. Per class:
  8 ``split01_train`` and 2 ``split01_test`` clips.
* ``hear``: scene task ``mini_scene`` (``hear:mini_scene``), 5 classes x 12 = 60 clips of 2 s, split
  mode ``trainvaltest`` (8 / 2 / 2 per class), written at 48 kHz and resampled to 16 kHz (no 32 kHz
  folder, so the loader picks 48 kHz and resamples).
* ``hear_kfold``: scene task ``mini_scene_kfold`` (``hear:mini_scene_kfold``) exactly as ``hear-preprocess``
  writes a k-fold task and as hear-eval-kit's runners read it: 5 classes x 30 = 150 clips of 2 s, split mode
  ``new_split_kfold`` with 5 folds (6 clips per class in each), ``splits`` and ``nfolds`` in the metadata, audio
  only in a ``32000`` folder (the rate of the models here; hear-eval-kit reads ``<model sample rate>/<split>``).
* ``hear_events``: event task ``mini_events`` (``hear:mini_events``) as ``hear-preprocess`` writes a HEAR event
  task: 3 classes x 8 = 24 files of 4 s at 48 kHz only (the public release's rate), split mode ``trainvaltest``
  (12 / 6 / 6 files), ``embedding_type: "event"``, multilabel, ``evaluation`` ``event_onset_200ms_fms`` and
  ``segment_1s_er``. Each file holds two events of its primary class and one of another class (0.3-0.9 s each,
  20 ms fades, events of one class never overlap) in pink noise; the split files list every event as
  ``{"label", "start", "end"}`` in whole ms, the exact times the sounds were placed at.

``corrupt=True`` additionally replaces one listed audio file per dataset with garbage bytes (ESC-50:
first clip of fold 1; FSD50K: first dev-train clip; OpenMIC: first ``split01_test`` clip; HEAR: first
train clip; k-fold HEAR: first clip of ``fold00``), for testing skip-and-report logic; the relative paths are
recorded in the marker file.

Determinism: the same arguments give identical metadata and identical WAV bytes. OGG files decode to
identical samples but differ in a few header bytes (libsndfile picks a random Ogg stream serial number).
Writing is idempotent: a dataset is written to a temporary sibling directory and renamed into place,
together with a ``.miniature.json`` marker; a later call with the same arguments returns immediately.

CLI: ``python -m hear_dymn.bench.tasks.synthetic OUT_DIR [--seed N] [--kind KIND ...] [--corrupt]``.
"""
from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import soundfile as sf

logger = logging.getLogger(__name__)

__all__ = [
    "MiniatureKind", "KINDS", "DEFAULT_SIZES", "MARKER_NAME", "HEAR_TASK_NAME", "HEAR_KFOLD_TASK_NAME",
    "HEAR_EVENTS_TASK_NAME", "Timbre",
    "class_timbre", "render_clip",
    "write_miniature", "write_all_miniatures", "main",
]

MiniatureKind = Literal["esc50", "fsd50k", "openmic", "hear", "hear_kfold", "hear_events"]
KINDS: tuple[MiniatureKind, ...] = get_args(MiniatureKind)
#: Default ``(num_classes, clips_per_class)`` per kind.
DEFAULT_SIZES: dict[str, tuple[int, int]] = {
    "esc50": (5, 10), "fsd50k": (6, 10), "openmic": (6, 10), "hear": (5, 12), "hear_kfold": (5, 30),
    "hear_events": (3, 8),
}
_MIN_CLIPS_PER_CLASS = {"esc50": 5, "fsd50k": 3, "openmic": 2, "hear": 3, "hear_kfold": 5, "hear_events": 3}
MARKER_NAME = ".miniature.json"
HEAR_TASK_NAME = "mini_scene"
HEAR_KFOLD_TASK_NAME = "mini_scene_kfold"
HEAR_EVENTS_TASK_NAME = "mini_events"
_HEAR_EVENTS_RATE = 48000
_HEAR_EVENTS_SECONDS = 4.0
_HEAR_KFOLD_FOLDS = 5
_HEAR_KFOLD_RATE = 32000
_FORMAT_VERSION = 1
_ESC50_SECONDS = 5.0
_OPENMIC_SECONDS = 4.0
_HEAR_SECONDS = 2.0
_HEAR_RATES = (48000, 16000)


# ---------------------------------------------------------------------------------------------------------
# Sound synthesis


@dataclass(frozen=True)
class Timbre:
    """Parameters of one synthetic sound class.

    Attributes:
        f0: Fundamental frequency of the harmonic part (Hz).
        harmonics: Number of harmonics.
        tilt: Harmonic amplitude decay exponent (amplitude of harmonic h is ``h ** -tilt``).
        noise_center: Centre of the noise band (Hz).
        noise_octaves: Standard deviation of the noise band's Gaussian shape, in octaves.
        tonal: Energy fraction of the harmonic part (the rest is the noise band).
        am_rate: Amplitude-modulation rate (Hz); 0 for none.
        am_depth: Amplitude-modulation depth in [0, 1].
        onset_rate: Rate of percussive onsets (Hz); 0 for a sustained sound.
        decay: Decay time constant of each onset (s).
    """

    f0: float
    harmonics: int
    tilt: float
    noise_center: float
    noise_octaves: float
    tonal: float
    am_rate: float
    am_depth: float
    onset_rate: float
    decay: float


def class_timbre(k: int) -> Timbre:
    """The timbre of class ``k`` (independent of the dataset seed, so a class always sounds alike).

    Pitch and noise band follow low-discrepancy (golden-ratio) sequences over 4.5 and 4 octaves, so any
    two classes differ in both; the other parameters are drawn from a generator seeded by ``k``.
    """
    rng = np.random.default_rng([0x5EED, k])
    golden = (math.sqrt(5.0) - 1.0) / 2.0
    sustained = rng.random() < 0.5
    return Timbre(
        f0=110.0 * 2.0 ** ((k * golden * 4.5) % 4.5),
        harmonics=int(rng.integers(1, 9)),
        tilt=float(rng.uniform(0.5, 2.0)),
        noise_center=400.0 * 2.0 ** (((k * (math.sqrt(2.0) - 1.0) + 0.3) * 4.0) % 4.0),
        noise_octaves=float(rng.uniform(0.15, 0.6)),
        tonal=float(rng.uniform(0.3, 0.9)),
        am_rate=float(rng.uniform(2.0, 16.0)) if sustained else 0.0,
        am_depth=float(rng.uniform(0.3, 0.9)),
        onset_rate=0.0 if sustained else float(rng.uniform(1.0, 5.0)),
        decay=float(rng.uniform(0.05, 0.4)),
    )


def _unit_rms(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.sqrt(np.mean(x * x))), 1e-8)


_NOISE_BLOCK = 1 << 16


@functools.lru_cache(maxsize=32)
def _log2_freqs(size: int, sr: int) -> np.ndarray:
    """``log2`` of the rfft bin frequencies of a ``size``-point FFT (DC bin set to the first bin's value)."""
    freqs = np.fft.rfftfreq(size, 1.0 / sr)
    freqs[0] = freqs[1]
    out = np.log2(freqs)
    out.setflags(write=False)
    return out


def _shaped_noise(n: int, sr: int, rng: np.random.Generator, center: float = 0.0, octaves: float = 1.0) -> np.ndarray:
    """White noise shaped in the frequency domain: a Gaussian band (log-frequency) or pink (``center == 0``).

    The noise is made in one power-of-two block of at most ``_NOISE_BLOCK`` samples; a block from an inverse
    FFT is circular, so it is tiled seamlessly (and cropped) to ``n`` samples.
    """
    size = min(1 << max(int(n - 1).bit_length(), 1), _NOISE_BLOCK)
    spec = np.fft.rfft(rng.standard_normal(size, dtype=np.float32))
    log2f = _log2_freqs(size, sr)
    if center > 0:
        shape = np.exp(-0.5 * ((log2f - math.log2(center)) / octaves) ** 2)
    else:
        shape = np.exp2(-0.5 * log2f)  # 1 / sqrt(f): pink
    block = np.fft.irfft(spec * shape, size)
    return _unit_rms(np.resize(block, n) if n > size else block[:n])


_TABLE_SIZE = 4096


def _render_source(timbre: Timbre, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One jittered instance of ``timbre``, ``n`` samples at ``sr``, unit RMS.

    The harmonic part is read from a one-period wavetable (harmonics above 0.45 ``sr`` are dropped).
    """
    t = np.arange(n, dtype=np.float64) / sr
    f0 = timbre.f0 * float(np.clip(1.0 + 0.02 * rng.standard_normal(), 0.94, 1.06))
    cycle = np.arange(_TABLE_SIZE) / _TABLE_SIZE
    table = np.zeros(_TABLE_SIZE)
    for h in range(1, timbre.harmonics + 1):
        if f0 * h >= 0.45 * sr:
            break
        amp = h ** -timbre.tilt * float(rng.uniform(0.8, 1.2))
        table += amp * np.sin(2 * np.pi * h * cycle + rng.uniform(0, 2 * np.pi))
    index = ((f0 * _TABLE_SIZE) * t).astype(np.int64) & (_TABLE_SIZE - 1)
    tone = table[index]
    center = timbre.noise_center * float(rng.uniform(0.9, 1.1))
    noise = _shaped_noise(n, sr, rng, center=min(center, 0.4 * sr), octaves=timbre.noise_octaves)
    x = math.sqrt(timbre.tonal) * _unit_rms(tone) + math.sqrt(1.0 - timbre.tonal) * noise
    if timbre.onset_rate > 0:
        period = 1.0 / (timbre.onset_rate * float(rng.uniform(0.85, 1.15)))
        phase = (t + rng.uniform(0, period)) % period
        env = np.exp(-phase / (timbre.decay * float(rng.uniform(0.8, 1.2))))
    else:
        rate = timbre.am_rate * float(rng.uniform(0.9, 1.1))
        env = 1.0 - timbre.am_depth * 0.5 * (1.0 + np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)))
    return _unit_rms(x * env)


def _segment_window(n: int, sr: int, rng: np.random.Generator, min_fraction: float) -> np.ndarray:
    """A window that is 1 on a random segment covering at least ``min_fraction`` of the clip, with 20 ms fades."""
    length = int(n * rng.uniform(min_fraction, 1.0))
    start = int(rng.integers(0, n - length + 1))
    win = np.zeros(n)
    win[start:start + length] = 1.0
    fade = min(int(0.02 * sr), max(length // 4, 1))
    ramp = np.linspace(0.0, 1.0, fade, endpoint=False)
    win[start:start + fade] *= ramp
    win[start + length - fade:start + length] *= ramp[::-1]
    return win


def _render_clip(classes: Sequence[int], levels_db: Sequence[float], seconds: float, sr: int, channels: int,
                 rng: np.random.Generator, segment_fraction: float = 1.0) -> np.ndarray:
    """A mixture of class sources plus pink background noise, shape ``(n, channels)``, peak below 1."""
    n = int(round(seconds * sr))
    mix = np.zeros(n)
    for k, level in zip(classes, levels_db, strict=True):
        src = _render_source(class_timbre(k), n, sr, rng) * 10.0 ** (level / 20.0)
        if segment_fraction < 1.0:
            src = src * _segment_window(n, sr, rng, segment_fraction)
        mix += src
    snr_db = float(rng.uniform(-3.0, 20.0))
    mix += _shaped_noise(n, sr, rng) * float(np.sqrt(np.mean(mix * mix))) * 10.0 ** (-snr_db / 20.0)
    if channels == 2:
        other = 0.8 * mix + 0.1 * _shaped_noise(n, sr, rng) * float(np.sqrt(np.mean(mix * mix)))
        audio = np.stack([mix, other], axis=1)
    else:
        audio = mix[:, None]
    peak = 10.0 ** (float(rng.uniform(-20.0, -3.0)) / 20.0)
    return (audio * (peak / max(float(np.abs(audio).max()), 1e-8))).astype(np.float32)


def render_clip(classes: Sequence[int], seconds: float, sample_rate: int, seed: int, channels: int = 1) -> np.ndarray:
    """One synthetic clip mixing the timbres of ``classes`` at equal level over pink noise, as the miniatures make
    them: ``float32`` of shape ``(frames, channels)``, peak below 1; the same arguments give the same samples."""
    rng = np.random.default_rng([seed, *classes, int(round(seconds * 1000)), sample_rate, channels])
    return _render_clip(list(classes), [0.0] * len(classes), seconds, sample_rate, channels, rng)


def _multiclass_mixture(k: int, num_classes: int, rng: np.random.Generator) -> tuple[list[int], list[float]]:
    """Target class ``k`` at 0 dB, plus a distractor from another class at -10..-3 dB in 30% of clips."""
    if num_classes > 1 and rng.random() < 0.3:
        other = int((k + rng.integers(1, num_classes)) % num_classes)
        return [k, other], [0.0, float(rng.uniform(-10.0, -3.0))]
    return [k], [0.0]


def _clip_rngs(seed: int, tag: str, count: int) -> Iterator[np.random.Generator]:
    """Independent per-clip generators, stable under changes to other datasets or other clips' draws."""
    tag_int = int.from_bytes(hashlib.sha1(tag.encode()).digest()[:4], "little")
    for child in np.random.SeedSequence([seed, tag_int]).spawn(count):
        yield np.random.default_rng(child)


# ---------------------------------------------------------------------------------------------------------
# File writing helpers


def _write_wav(path: Path, audio: np.ndarray, sr: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, sr, subtype="PCM_16", format="WAV")


def _write_csv(path: Path, rows: Sequence[Sequence[object]], header: Sequence[str] | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        if header is not None:
            writer.writerow(header)
        writer.writerows(rows)


def _write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _corrupt(path: Path, rng: np.random.Generator) -> None:
    """Overwrite ``path`` with bytes no audio decoder accepts."""
    path.write_bytes(b"NOT-AUDIO\x00" + rng.bytes(1024))


def _round_splits(clips_per_class: int, fractions: Sequence[float]) -> list[int]:
    """Split ``clips_per_class`` rounds into the trailing splits' sizes (each >= 1); the first split gets the rest."""
    tail = [max(1, round(f * clips_per_class)) for f in fractions]
    return [clips_per_class - sum(tail), *tail]


def _split_of_round(r: int, sizes: Sequence[int]) -> int:
    acc = 0
    for i, size in enumerate(sizes):
        acc += size
        if r < acc:
            return i
    raise AssertionError(r)


# ---------------------------------------------------------------------------------------------------------
# Datasets


def _write_esc50(root: Path, seed: int, num_classes: int, cpc: int, corrupt: bool) -> list[str]:
    rng = np.random.default_rng([seed, 50])
    src_ids = rng.choice(np.arange(100000, 999999), size=num_classes * cpc, replace=False)
    rows = []
    for j, clip_rng in enumerate(_clip_rngs(seed, "esc50", num_classes * cpc)):
        k, r = j % num_classes, j // num_classes
        fold = r % 5 + 1
        filename = f"{fold}-{src_ids[j]}-A-{k}.wav"
        classes, levels = _multiclass_mixture(k, num_classes, clip_rng)
        _write_wav(root / "audio" / filename, _render_clip(classes, levels, _ESC50_SECONDS, 44100, 1, clip_rng), 44100)
        rows.append((filename, fold, k, f"synth_{k:02d}", k % 2 == 0, int(src_ids[j]), "A"))
    rows.sort()
    header = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
    _write_csv(root / "meta" / "esc50.csv", rows, header)
    if not corrupt:
        return []
    first = min(r[0] for r in rows if r[1] == 1)
    _corrupt(root / "audio" / first, rng)
    return [f"audio/{first}"]


def _write_fsd50k(root: Path, seed: int, num_classes: int, cpc: int, corrupt: bool) -> list[str]:
    rng = np.random.default_rng([seed, 51])
    gt = root / "FSD50K.ground_truth"
    vocab = [(k, f"Synth_{k:02d}", f"/t/synth{k:04d}") for k in range(num_classes)]
    _write_csv(gt / "vocabulary.csv", vocab, header=None)
    sizes = _round_splits(cpc, (0.1, 0.3))  # train, val, eval rounds
    n = num_classes * cpc
    fnames = rng.choice(np.arange(1000, 500000), size=n, replace=False)
    dev_rows, eval_rows = [], []
    for j, clip_rng in enumerate(_clip_rngs(seed, "fsd50k", n)):
        k, r = j % num_classes, j // num_classes
        split = ("train", "val", "eval")[_split_of_round(r, sizes)]
        n_extra = min(int(clip_rng.choice(3, p=[0.5, 0.3, 0.2])), num_classes - 1)
        others = [c for c in range(num_classes) if c != k]
        extra = [int(c) for c in clip_rng.choice(others, size=n_extra, replace=False)] if n_extra else []
        classes = [k, *extra]
        levels = [0.0, *(float(clip_rng.uniform(-6.0, 0.0)) for _ in extra)]
        sr = int(clip_rng.choice([32000, 44100, 48000]))
        channels = 2 if clip_rng.random() < 0.33 else 1
        seconds = round(float(clip_rng.uniform(1.0, 6.0)), 2)
        audio = _render_clip(classes, levels, seconds, sr, channels, clip_rng, segment_fraction=0.5)
        folder = "FSD50K.eval_audio" if split == "eval" else "FSD50K.dev_audio"
        _write_wav(root / folder / f"{fnames[j]}.wav", audio, sr)
        labels = ",".join(vocab[c][1] for c in sorted(classes))
        mids = ",".join(vocab[c][2] for c in sorted(classes))
        if split == "eval":
            eval_rows.append((int(fnames[j]), labels, mids))
        else:
            dev_rows.append((int(fnames[j]), labels, mids, split))
    dev_rows.sort()
    eval_rows.sort()
    _write_csv(gt / "dev.csv", dev_rows, ("fname", "labels", "mids", "split"))
    _write_csv(gt / "eval.csv", eval_rows, ("fname", "labels", "mids"))
    if not corrupt:
        return []
    first = min(str(row[0]) for row in dev_rows if row[3] == "train")
    _corrupt(root / "FSD50K.dev_audio" / f"{first}.wav", rng)
    return [f"FSD50K.dev_audio/{first}.wav"]


def _write_openmic(root: Path, seed: int, num_classes: int, cpc: int, corrupt: bool) -> list[str]:
    rng = np.random.default_rng([seed, 52])
    instruments = [f"synth_{k:02d}" for k in range(num_classes)]
    _write_json(root / "class-map.json", {name: k for k, name in enumerate(instruments)})
    sizes = _round_splits(cpc, (0.2,))  # split01_train, split01_test rounds
    n = num_classes * cpc
    ids = rng.choice(200000, size=n, replace=False)
    label_rows: list[tuple[str, str, float, int]] = []
    partitions: dict[str, list[str]] = {"train": [], "test": []}
    for j, clip_rng in enumerate(_clip_rngs(seed, "openmic", n)):
        k, r = j % num_classes, j // num_classes
        key = f"{ids[j]:06d}_{int(clip_rng.integers(0, 300)) * 960}"
        partitions[("train", "test")[_split_of_round(r, sizes)]].append(key)
        n_extra = min(int(clip_rng.choice(3, p=[0.45, 0.4, 0.15])), num_classes - 1)
        others = [c for c in range(num_classes) if c != k]
        extra = [int(c) for c in clip_rng.choice(others, size=n_extra, replace=False)] if n_extra else []
        present = {k, *extra}
        levels = [0.0, *(float(clip_rng.uniform(-6.0, 0.0)) for _ in extra)]
        sr = int(clip_rng.choice([44100, 48000]))
        channels = 2 if clip_rng.random() < 0.3 else 1
        audio = _render_clip([k, *extra], levels, _OPENMIC_SECONDS, sr, channels, clip_rng)
        path = root / "audio" / key[:3] / f"{key}.ogg"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), audio, sr, format="OGG", subtype="VORBIS")
        for c in range(num_classes):
            if c == k:
                relevance = clip_rng.uniform(0.7, 1.0)
            elif c in present:
                if clip_rng.random() >= 0.6:
                    continue  # missing label
                relevance = clip_rng.uniform(0.55, 1.0) if clip_rng.random() < 0.9 else clip_rng.uniform(0.2, 0.5)
            else:
                if clip_rng.random() >= 0.35:
                    continue  # missing label
                relevance = 0.0 if clip_rng.random() < 0.5 else clip_rng.uniform(0.0, 0.45)
            label_rows.append((key, instruments[c], round(float(relevance), 4), int(clip_rng.integers(1, 6))))
    label_rows.sort()
    _write_csv(root / "openmic-2018-aggregated-labels.csv", label_rows,
               ("sample_key", "instrument", "relevance", "num_responses"))
    for name, keys in partitions.items():
        _write_csv(root / "partitions" / f"split01_{name}.csv", [(key,) for key in sorted(keys)], header=None)
    if not corrupt:
        return []
    first = min(partitions["test"])
    _corrupt(root / "audio" / first[:3] / f"{first}.ogg", rng)
    return [f"audio/{first[:3]}/{first}.ogg"]


def _write_hear(root: Path, seed: int, num_classes: int, cpc: int, corrupt: bool) -> list[str]:
    import torch
    import torchaudio.functional as AF

    rng = np.random.default_rng([seed, 53])
    labels = [f"synth_{k:02d}" for k in range(num_classes)]
    _write_json(root / "task_metadata.json", {
        "task_name": HEAR_TASK_NAME,
        "version": "v1.0.0-mini",
        "embedding_type": "scene",
        "prediction_type": "multiclass",
        "split_mode": "trainvaltest",
        "sample_duration": _HEAR_SECONDS,
        "evaluation": ["top1_acc"],
        "default_mode": "mini",
        "mode": "mini",
    })
    _write_csv(root / "labelvocabulary.csv", list(enumerate(labels)), ("idx", "label"))
    sizes = _round_splits(cpc, (1 / 6, 1 / 6))
    splits = ("train", "valid", "test")
    entries: dict[str, dict[str, list[str]]] = {s: {} for s in splits}
    hi_rate, lo_rate = _HEAR_RATES
    for j, clip_rng in enumerate(_clip_rngs(seed, "hear", num_classes * cpc)):
        k, r = j % num_classes, j // num_classes
        split = splits[_split_of_round(r, sizes)]
        fname = hashlib.sha1(f"{seed}-{j}".encode()).hexdigest()[:16] + ".wav"
        entries[split][fname] = [labels[k]]
        classes, levels = _multiclass_mixture(k, num_classes, clip_rng)
        audio = _render_clip(classes, levels, _HEAR_SECONDS, hi_rate, 1, clip_rng)
        _write_wav(root / str(hi_rate) / split / fname, audio, hi_rate)
        low = AF.resample(torch.from_numpy(audio[:, 0]), hi_rate, lo_rate).numpy()
        _write_wav(root / str(lo_rate) / split / fname, np.clip(low, -1.0, 1.0), lo_rate)
    for split in splits:
        _write_json(root / f"{split}.json", entries[split])
    if not corrupt:
        return []
    first = min(entries["train"])
    for rate in _HEAR_RATES:
        _corrupt(root / str(rate) / "train" / first, rng)
    return [f"{rate}/train/{first}" for rate in _HEAR_RATES]


def _place_events(num_classes: int, primary: int, seconds: float, rng: np.random.Generator
                  ) -> list[tuple[int, int, int]]:
    """``(class, start ms, end ms)``: two events of ``primary`` and one of another class, same-class events apart."""
    other = int((primary + rng.integers(1, num_classes)) % num_classes)
    placed: list[tuple[int, int, int]] = []
    for k in (primary, primary, other):
        for _ in range(100):
            length = int(rng.integers(300, 901))
            start = int(rng.integers(100, int(seconds * 1000) - length - 100))
            if all(c != k or start > e + 100 or start + length < s - 100 for c, s, e in placed):
                placed.append((k, start, start + length))
                break
    return sorted(placed, key=lambda e: (e[1], e[0]))


def _write_hear_events(root: Path, seed: int, num_classes: int, cpc: int, corrupt: bool) -> list[str]:
    rng = np.random.default_rng([seed, 55])
    labels = [f"synth_{k:02d}" for k in range(num_classes)]
    _write_json(root / "task_metadata.json", {
        "task_name": HEAR_EVENTS_TASK_NAME,
        "version": "v1.0.0-mini",
        "embedding_type": "event",
        "prediction_type": "multilabel",
        "split_mode": "trainvaltest",
        "splits": ["train", "valid", "test"],
        "sample_duration": _HEAR_EVENTS_SECONDS,
        "evaluation": ["event_onset_200ms_fms", "segment_1s_er"],
        "default_mode": "mini",
        "mode": "mini",
    })
    _write_csv(root / "labelvocabulary.csv", list(enumerate(labels)), ("idx", "label"))
    sizes = _round_splits(cpc, (0.25, 0.25))
    splits = ("train", "valid", "test")
    entries: dict[str, dict[str, list[dict[str, object]]]] = {s: {} for s in splits}
    sr, n = _HEAR_EVENTS_RATE, int(_HEAR_EVENTS_SECONDS * _HEAR_EVENTS_RATE)
    for j, clip_rng in enumerate(_clip_rngs(seed, "hear_events", num_classes * cpc)):
        k, r = j % num_classes, j // num_classes
        split = splits[_split_of_round(r, sizes)]
        fname = hashlib.sha1(f"events-{seed}-{j}".encode()).hexdigest()[:16] + ".wav"
        events = _place_events(num_classes, k, _HEAR_EVENTS_SECONDS, clip_rng)
        mix = np.zeros(n)
        for c, start, end in events:
            a, b = start * sr // 1000, end * sr // 1000
            fade = int(0.02 * sr)
            env = np.ones(b - a)
            env[:fade] = np.linspace(0.0, 1.0, fade, endpoint=False)
            env[-fade:] = np.linspace(1.0, 0.0, fade, endpoint=False)
            level = 10.0 ** (float(clip_rng.uniform(-3.0, 3.0)) / 20.0)
            mix[a:b] += _render_source(class_timbre(c), b - a, sr, clip_rng) * env * level
        mix += _shaped_noise(n, sr, clip_rng) * 10.0 ** (-float(clip_rng.uniform(12.0, 20.0)) / 20.0)
        peak = 10.0 ** (float(clip_rng.uniform(-12.0, -3.0)) / 20.0)
        audio = (mix * (peak / max(float(np.abs(mix).max()), 1e-8))).astype(np.float32)
        _write_wav(root / str(sr) / split / fname, audio[:, None], sr)
        entries[split][fname] = [{"label": labels[c], "start": float(s), "end": float(e)} for c, s, e in events]
    for split in splits:
        _write_json(root / f"{split}.json", entries[split])
    if not corrupt:
        return []
    first = min(entries["train"])
    _corrupt(root / str(sr) / "train" / first, rng)
    return [f"{sr}/train/{first}"]


def _write_hear_kfold(root: Path, seed: int, num_classes: int, cpc: int, corrupt: bool) -> list[str]:
    rng = np.random.default_rng([seed, 54])
    labels = [f"synth_{k:02d}" for k in range(num_classes)]
    folds = [f"fold{i:02d}" for i in range(_HEAR_KFOLD_FOLDS)]
    _write_json(root / "task_metadata.json", {
        "task_name": HEAR_KFOLD_TASK_NAME,
        "version": "v1.0.0-mini",
        "embedding_type": "scene",
        "prediction_type": "multiclass",
        "split_mode": "new_split_kfold",
        "nfolds": _HEAR_KFOLD_FOLDS,
        "splits": folds,
        "sample_duration": _HEAR_SECONDS,
        "evaluation": ["top1_acc"],
        "default_mode": "mini",
        "mode": "mini",
    })
    _write_csv(root / "labelvocabulary.csv", list(enumerate(labels)), ("idx", "label"))
    entries: dict[str, dict[str, list[str]]] = {f: {} for f in folds}
    for j, clip_rng in enumerate(_clip_rngs(seed, "hear_kfold", num_classes * cpc)):
        k, r = j % num_classes, j // num_classes
        fold = folds[r % len(folds)]
        fname = hashlib.sha1(f"kfold-{seed}-{j}".encode()).hexdigest()[:16] + ".wav"
        entries[fold][fname] = [labels[k]]
        classes, levels = _multiclass_mixture(k, num_classes, clip_rng)
        audio = _render_clip(classes, levels, _HEAR_SECONDS, _HEAR_KFOLD_RATE, 1, clip_rng)
        _write_wav(root / str(_HEAR_KFOLD_RATE) / fold / fname, audio, _HEAR_KFOLD_RATE)
    for fold in folds:
        _write_json(root / f"{fold}.json", entries[fold])
    if not corrupt:
        return []
    first = min(entries[folds[0]])
    _corrupt(root / str(_HEAR_KFOLD_RATE) / folds[0] / first, rng)
    return [f"{_HEAR_KFOLD_RATE}/{folds[0]}/{first}"]


_WRITERS = {
    "esc50": _write_esc50, "fsd50k": _write_fsd50k, "openmic": _write_openmic, "hear": _write_hear,
    "hear_kfold": _write_hear_kfold, "hear_events": _write_hear_events,
}
# tasks that read another kind's files: the esc10 task is the esc10 == True rows of an ESC-50 root
_SAME_FILES_AS = {"esc10": "esc50"}


def _marker_matches(marker: Path, params: dict[str, object]) -> bool:
    """Whether ``marker`` exists and records exactly ``params``."""
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("params") == params
    except (OSError, ValueError, AttributeError):
        return False


def write_miniature(kind: MiniatureKind, root: str | os.PathLike[str], seed: int = 0,
                    clips_per_class: int | None = None, num_classes: int | None = None,
                    corrupt: bool = False) -> Path:
    """Write a miniature dataset of ``kind`` in its official layout at ``root`` (the dataset root).

    Args:
        kind: ``"esc50"``, ``"fsd50k"``, ``"openmic"``, ``"hear"`` or ``"hear_kfold"`` (HEAR scene task folders);
            ``"esc10"`` writes the ESC-50 miniature, whose ``esc10`` column marks the even-numbered classes.
        root: Dataset root to create; its parent is created if needed.
        seed: Seed of all random draws (class timbres do not depend on it).
        clips_per_class: Clips per (primary) class; defaults in :data:`DEFAULT_SIZES` (minimum 5 for
            ESC-50 and the k-fold HEAR task so that every fold has every class, 3 for FSD50K and HEAR, 2 for
            OpenMIC).
        num_classes: Number of classes (>= 2); defaults in :data:`DEFAULT_SIZES`.
        corrupt: Replace one listed audio file with garbage bytes (see module docstring).

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: Unknown ``kind`` or sizes out of range.
        FileExistsError: ``root`` exists, is not empty and was not written by this function.
    """
    kind = _SAME_FILES_AS.get(kind, kind)  # type: ignore[assignment]
    if kind not in _WRITERS:
        raise ValueError(f"unknown miniature kind {kind!r}; expected one of {KINDS}")
    default_classes, default_cpc = DEFAULT_SIZES[kind]
    num_classes = default_classes if num_classes is None else num_classes
    clips_per_class = default_cpc if clips_per_class is None else clips_per_class
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if clips_per_class < _MIN_CLIPS_PER_CLASS[kind]:
        raise ValueError(f"clips_per_class must be >= {_MIN_CLIPS_PER_CLASS[kind]} for {kind}, got {clips_per_class}")

    root = Path(root)
    params = {"kind": kind, "seed": seed, "num_classes": num_classes, "clips_per_class": clips_per_class,
              "corrupt": corrupt, "format_version": _FORMAT_VERSION}
    marker = root / MARKER_NAME
    if _marker_matches(marker, params):
        logger.debug("miniature %s at %s is up to date", kind, root)
        return root
    if not marker.is_file() and root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root} exists and was not written by write_miniature (no {MARKER_NAME}); "
                              "refusing to overwrite it")

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        corrupt_files = _WRITERS[kind](tmp, seed, num_classes, clips_per_class, corrupt)
        _write_json(tmp / MARKER_NAME, {"params": params, "corrupt_files": corrupt_files})
        if root.exists():
            shutil.rmtree(root)
        try:
            os.replace(tmp, root)
        except OSError:
            if not _marker_matches(marker, params):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # a concurrent writer finished the same dataset first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote miniature %s (%d classes x %d clips, seed %d) to %s", kind, num_classes, clips_per_class,
                seed, root)
    return root


def write_all_miniatures(root: str | os.PathLike[str], seed: int = 0, corrupt: bool = False) -> dict[str, Path]:
    """Write every miniature with default sizes under ``root`` (``root/esc50``, ``root/fsd50k``, ...).

    Args:
        root: Output directory.
        seed: Seed passed to :func:`write_miniature`.
        corrupt: Passed to :func:`write_miniature`.

    Returns:
        Mapping kind -> dataset root (for ``"hear"`` and ``"hear_kfold"`` the task folders, loadable as
        ``hear:mini_scene`` and ``hear:mini_scene_kfold``).
    """
    root = Path(root)
    return {kind: write_miniature(kind, root / kind, seed=seed, corrupt=corrupt) for kind in KINDS}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description="Write miniature synthetic datasets in the official layouts.")
    parser.add_argument("out_dir", type=Path, help="output directory (one sub-folder per dataset)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--kind", choices=KINDS, action="append", help="dataset(s) to write (default: all)")
    parser.add_argument("--corrupt", action="store_true", help="also write one unreadable audio file per dataset")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for kind in args.kind or KINDS:
        write_miniature(kind, args.out_dir / kind, seed=args.seed, corrupt=args.corrupt)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
