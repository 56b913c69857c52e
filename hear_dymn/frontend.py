"""Log-mel frontend with EfficientAT's eval-mode numerics (``models/preprocess.py`` ``AugmentMelSTFT`` @ a425fdc).

Waveform ``(batch, samples)`` at 32 kHz -> pre-emphasis -> |STFT|^2 (n_fft 1024, hop 320, symmetric Hann 800,
centred, reflect padding) -> Kaldi mel bank (128 bands, 0-15 kHz) -> ``log(x + 1e-5)`` -> ``(x + 4.5) / 5``.
Deterministic: the training-time fmin/fmax jitter and masking live with fine-tuning.

The implementation is written for speed on CPU while keeping the float32 roundings of the textbook computation
(a one-channel ``conv1d`` pre-emphasis, ``view_as_real(stft).pow(2).sum(-1)``, one mel matmul per batch), bit for
bit clip by clip (``tests/test_frontend.py`` checks ``torch.equal``):

* pre-emphasis as ``x[:-1] * k0 + x[1:]`` instead of the convolution (which oneDNN runs slowly for a 2-tap,
  1-channel filter): the same two roundings, since the second tap is exactly 1;
* ``|STFT|^2`` as ``re^2 + im^2`` (a reduction over a dimension of 2 is slow): the same sum in the same order, copied
  to the contiguous (frequency-major) layout that the reduction returns, so that the mel projection is the same
  BLAS call on the same operands (a BLAS may sum a transposed operand in another order; MKL's reproducibility mode
  ``MKL_CBWR=COMPATIBLE`` does, with last-bit differences);
* one clip at a time on CPU: per-clip temporaries stay below the allocator's mmap threshold, so they are not returned
  to the OS and page-faulted in again on every call. A batch is then exactly the concatenation of its clips.
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
        """Pre-emphasised power spectrogram ``(batch, n_fft // 2 + 1, frames)``, contiguous."""
        c = self.cfg
        # The kernel is (-preemphasis, 1): the product with the unit tap is exact, so this rounds like a conv1d.
        x = torch.mul(waveform[:, :-1], self.preemphasis_kernel[0, 0, 0]).add_(waveform[:, 1:])
        spec = torch.stft(x, c.n_fft, hop_length=c.hop_length, win_length=c.win_length, window=self.window,
                          center=True, pad_mode="reflect", normalized=False, return_complex=True)
        parts = torch.view_as_real(spec)
        # contiguous: the layout a pow(2).sum(-1) reduction returns, so that the mel matmul rounds the same
        return parts[..., 0].square().add_(parts[..., 1].square()).contiguous()

    def forward(self, waveform: Tensor, mel_bank: Tensor | None = None) -> Tensor:
        if waveform.dim() != 2:
            raise ValueError(f"expected waveform of shape (batch, samples), got {tuple(waveform.shape)}")
        if waveform.shape[-1] < self.cfg.min_samples:
            raise ValueError(f"waveform has {waveform.shape[-1]} samples; the frontend needs at least "
                             f"{self.cfg.min_samples}")
        if waveform.shape[0] > 1 and waveform.device.type == "cpu":
            return torch.cat([self._log_mel(clip[None], mel_bank) for clip in waveform])
        return self._log_mel(waveform, mel_bank)

    def _log_mel(self, waveform: Tensor, mel_bank: Tensor | None) -> Tensor:
        c = self.cfg
        power = self.power_spectrogram(waveform)
        bank = self.mel_bank if mel_bank is None else mel_bank
        with torch.autocast(device_type=power.device.type, enabled=False):
            mel = torch.matmul(bank.to(power.dtype), power)
        mel = (torch.log(mel + c.log_offset) + c.norm_shift) / c.norm_scale
        return mel.unsqueeze(1)
