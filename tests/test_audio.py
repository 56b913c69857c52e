"""Tests for ``hear_dymn.bench.audio.read_audio``: mono mix-down, resampling and error reporting."""
from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from hear_dymn.bench.audio import AudioReadError, read_audio, resample


def _sine(freq: float, seconds: float, sr: int) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return np.sin(2 * np.pi * freq * t)


def test_stereo_48k_comes_back_mono_32k(tmp_path: Path) -> None:
    left = 0.5 * _sine(440.0, 1.0, 48000)
    stereo = np.stack([left, 0.5 * left], axis=1)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, 48000, subtype="FLOAT")

    wave = read_audio(path, 32000)

    assert wave.dtype == np.float32 and wave.ndim == 1
    assert wave.shape == (32000,)
    expected = 0.75 * 0.5 * _sine(440.0, 1.0, 32000)
    inner = slice(500, -500)  # resampling filter edge effects
    np.testing.assert_allclose(wave[inner], expected[inner], atol=2e-3)


def test_resampled_length_is_ceil(tmp_path: Path) -> None:
    path = tmp_path / "odd.wav"
    sf.write(path, _sine(300.0, 0.0123, 44100) * 0.3, 44100)
    frames = sf.info(str(path)).frames
    assert read_audio(path, 32000).shape == (math.ceil(frames * 32000 / 44100),)


@pytest.mark.parametrize(("fmt", "subtype", "suffix"), [("WAV", "PCM_16", ".wav"), ("FLAC", "PCM_16", ".flac"),
                                                         ("OGG", "VORBIS", ".ogg")])
def test_formats_same_rate_no_resampling(tmp_path: Path, fmt: str, subtype: str, suffix: str) -> None:
    path = tmp_path / f"clip{suffix}"
    sf.write(path, 0.3 * _sine(1000.0, 0.5, 32000), 32000, format=fmt, subtype=subtype)
    reference, _ = sf.read(str(path), dtype="float32")
    wave = read_audio(path, 32000)
    np.testing.assert_array_equal(wave, reference)


def test_corrupt_file_raises_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken-clip.wav"
    path.write_bytes(b"NOT-AUDIO" + bytes(range(256)) * 4)
    with pytest.raises(AudioReadError, match="broken-clip.wav") as info:
        read_audio(path, 32000)
    assert isinstance(info.value, RuntimeError)
    assert info.value.path == path


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(AudioReadError, match="nope.wav.*no such file"):
        read_audio(tmp_path / "nope.wav", 32000)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 32000)
    with pytest.raises(AudioReadError, match="empty.wav.*no audio samples"):
        read_audio(empty, 32000)


def test_bad_sample_rate_and_pickling(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        read_audio(tmp_path / "x.wav", 0)
    err = pickle.loads(pickle.dumps(AudioReadError(tmp_path / "x.wav", "reason")))
    assert err.path == tmp_path / "x.wav" and err.reason == "reason" and "x.wav" in str(err)


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
def test_resampling_equals_torchaudio_bit_for_bit(tmp_path: Path, rate: int) -> None:
    # The cached kernel must not change a single sample against torchaudio's own resample.
    wave = np.random.default_rng(rate).uniform(-0.9, 0.9, rate + 123).astype(np.float32)
    sf.write(tmp_path / "a.wav", wave, rate, subtype="FLOAT")
    expected = AF.resample(torch.from_numpy(wave), rate, 32000).numpy()
    for _ in range(2):  # the second call uses the cached kernel
        np.testing.assert_array_equal(read_audio(tmp_path / "a.wav", 32000), expected)
    doubled = torch.from_numpy(wave).double()
    assert torch.equal(resample(doubled, rate, 32000), AF.resample(doubled, rate, 32000))
