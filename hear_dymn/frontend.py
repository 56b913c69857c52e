"""Log-mel frontend with EfficientAT's eval-mode numerics (``models/preprocess.py`` ``AugmentMelSTFT`` @ a425fdc).

Waveform ``(batch, samples)`` at 32 kHz -> pre-emphasis -> |STFT|^2 (n_fft 1024, hop 320, symmetric Hann 800,
centred, reflect padding) -> Kaldi mel bank (128 bands, 0-15 kHz) -> ``log(x + 1e-5)`` -> ``(x + 4.5) / 5``.
Deterministic: the training-time fmin/fmax jitter and masking live with fine-tuning.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchaudio.compliance import kaldi


@dataclass(frozen=True)
class MelConfig:
    sample_rate: int = 32000
    n_mels: int = 128
    n_fft: int = 1024
    win_length: int = 800
    hop_length: int = 320
    fmin: float = 0.0
    fmax: float = 15000.0
    preemphasis: float = 0.97
    log_offset: float = 1e-5
    norm_shift: float = 4.5  # "fast normalization": (log_mel + shift) / scale
    norm_scale: float = 5.0

    @property
    def hop_ms(self) -> float:
        return 1000.0 * self.hop_length / self.sample_rate

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for ``num_samples`` samples (pre-emphasis drops one sample)."""
        return 1 + (num_samples - 1) // self.hop_length

    @property
    def min_samples(self) -> int:
        """Shortest input the centred STFT accepts (reflect padding needs more than n_fft/2 samples)."""
        return self.n_fft // 2 + 2


def kaldi_mel_bank(cfg: MelConfig, fmin: float | None = None, fmax: float | None = None,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    """Mel matrix ``(n_mels, n_fft // 2 + 1)``: torchaudio's Kaldi banks plus a zero column for the Nyquist bin.

    ``dtype=torch.float64`` evaluates the bank's formula in float64 (torchaudio builds it in the default dtype), not
    the float32 bank cast up: its values then do not depend on a CPU's float32 ``log``.
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        bank, _ = kaldi.get_mel_banks(
            cfg.n_mels, cfg.n_fft, float(cfg.sample_rate), cfg.fmin if fmin is None else fmin,
            cfg.fmax if fmax is None else fmax, 100.0, -500.0, 1.0,
        )
    finally:
        torch.set_default_dtype(previous)
    return F.pad(bank, (0, 1))


class MelFrontend(nn.Module):
    """Waveform ``(batch, samples)`` float32 -> normalised log-mel ``(batch, 1, n_mels, frames)``.

    ``dtype=torch.float64`` builds window and mel bank in float64 (for float64 waveforms), so that the whole log-mel
    is computed in float64; ``MelFrontend().double()`` would only cast the float32 constants.
    """

    def __init__(self, cfg: MelConfig | None = None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.cfg = cfg or MelConfig()
        c = self.cfg
        self.register_buffer("preemphasis_kernel", torch.tensor([[[-c.preemphasis, 1.0]]], dtype=dtype),
                             persistent=False)
        self.register_buffer("window", torch.hann_window(c.win_length, periodic=False, dtype=dtype),
                             persistent=False)
        self.register_buffer("mel_bank", kaldi_mel_bank(c, dtype=dtype), persistent=False)

    def power_spectrogram(self, waveform: Tensor) -> Tensor:
        """Pre-emphasised power spectrogram ``(batch, n_fft // 2 + 1, frames)``."""
        c = self.cfg
        x = F.conv1d(waveform.unsqueeze(1), self.preemphasis_kernel).squeeze(1)
        spec = torch.stft(x, c.n_fft, hop_length=c.hop_length, win_length=c.win_length, window=self.window,
                          center=True, pad_mode="reflect", normalized=False, return_complex=True)
        spec = torch.view_as_real(spec)
        return spec.pow(2).sum(-1)

    def forward(self, waveform: Tensor, mel_bank: Tensor | None = None) -> Tensor:
        if waveform.dim() != 2:
            raise ValueError(f"expected waveform of shape (batch, samples), got {tuple(waveform.shape)}")
        if waveform.shape[-1] < self.cfg.min_samples:
            raise ValueError(f"waveform has {waveform.shape[-1]} samples; the frontend needs at least "
                             f"{self.cfg.min_samples}")
        c = self.cfg
        power = self.power_spectrogram(waveform)
        bank = self.mel_bank if mel_bank is None else mel_bank
        with torch.autocast(device_type=power.device.type, enabled=False):
            mel = torch.matmul(bank.to(power.dtype), power)
        mel = (torch.log(mel + c.log_offset) + c.norm_shift) / c.norm_scale
        return mel.unsqueeze(1)
