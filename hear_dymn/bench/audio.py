"""Audio decoding for the benchmark: ``soundfile`` decode, mono mix-down and resampling.

``torchaudio.load`` is deliberately not used (it needs the optional torchcodec backend); decoding goes
through ``soundfile`` (WAV, FLAC, OGG/Vorbis, ...) and resampling through
``torchaudio.functional.resample``.
"""
from __future__ import annotations

import functools
import logging
import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torchaudio.functional.functional import _apply_sinc_resample_kernel, _get_sinc_resample_kernel

logger = logging.getLogger(__name__)

__all__ = ["AudioReadError", "read_audio"]


class AudioReadError(RuntimeError):
    """An audio file could not be decoded (missing, unreadable, corrupt or empty).

    Attributes:
        path: The offending file.
        reason: Short human-readable cause.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read audio file {self.path}: {reason}")

    def __reduce__(self) -> tuple[type[AudioReadError], tuple[Path, str]]:
        # Keep the two-argument constructor working across process boundaries (multiprocessing workers).
        return (type(self), (self.path, self.reason))


def read_audio(path: str | os.PathLike[str], sample_rate: int) -> np.ndarray:
    """Decode an audio file to a mono float32 waveform at ``sample_rate``.

    Multi-channel audio is mixed down by averaging the channels. Resampling (only when the file's rate
    differs) uses ``torchaudio.functional.resample`` with its default windowed-sinc filter; the output
    has ``ceil(num_frames * sample_rate / file_rate)`` samples.

    Args:
        path: Audio file in any format libsndfile decodes (WAV, FLAC, OGG/Vorbis, ...).
        sample_rate: Target sample rate in Hz (positive).

    Returns:
        1-D ``float32`` array.

    Raises:
        AudioReadError: The file does not exist, cannot be decoded, has no samples or contains
            non-finite samples.
        ValueError: ``sample_rate`` is not positive.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    path = Path(path)
    if not path.is_file():
        raise AudioReadError(path, "no such file")
    try:
        data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
        raise AudioReadError(path, f"decoding failed ({exc})") from exc
    if data.size == 0:
        raise AudioReadError(path, "file contains no audio samples")
    wave = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    if not np.isfinite(wave).all():
        raise AudioReadError(path, "file contains NaN or infinite samples")
    if file_rate != sample_rate:
        wave = resample(torch.from_numpy(np.ascontiguousarray(wave)), int(file_rate), int(sample_rate)).numpy()
    return np.ascontiguousarray(wave, dtype=np.float32)


@functools.lru_cache(maxsize=16)
def _sinc_kernel(orig: int, new: int, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    gcd = math.gcd(orig, new)
    return _get_sinc_resample_kernel(orig, new, gcd, 6, 0.99, "sinc_interp_hann", None, torch.device("cpu"), dtype)


def resample(wave: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """``torchaudio.functional.resample(wave, orig, new)`` with its defaults, bit for bit, on the CPU.

    The windowed-sinc kernel depends only on the two rates, yet torchaudio rebuilds it on every call, which took
    about 15 % of the log-mel baseline's extraction time; here it is built once per rate pair.
    """
    if orig == new:
        return wave
    kernel, width = _sinc_kernel(orig, new, wave.dtype)
    return _apply_sinc_resample_kernel(wave, orig, new, math.gcd(orig, new), kernel, width)
