"""Log-mel frontend: EfficientAT numerics (pinned by the reference mel), the textbook computation bit for bit, shapes
and errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import reference

from hear_dymn import MelConfig, MelFrontend
from hear_dymn.models.random_weights import synthetic_waveform


def textbook_log_mel(frontend: MelFrontend, waveform: torch.Tensor) -> torch.Tensor:
    """The log-mel written plainly: conv1d pre-emphasis, |STFT|^2 as a reduction over the real view, one matmul."""
    c = frontend.cfg
    x = F.conv1d(waveform.unsqueeze(1), frontend.preemphasis_kernel).squeeze(1)
    spec = torch.stft(x, c.n_fft, hop_length=c.hop_length, win_length=c.win_length, window=frontend.window,
                      center=True, pad_mode="reflect", normalized=False, return_complex=True)
    power = torch.view_as_real(spec).pow(2).sum(-1)
    mel = torch.matmul(frontend.mel_bank, power)
    return ((torch.log(mel + c.log_offset) + c.norm_shift) / c.norm_scale).unsqueeze(1)


def test_matches_reference_mel() -> None:
    """Reference: EfficientAT AugmentMelSTFT in eval mode (fixture dymn04_reference_3p7s.npz); float32 FFT
    round-off between the two runs is below 2e-4 (both are within 1e-4 of a float64 computation)."""
    ref = reference("dymn04_reference_3p7s.npz")
    mel = MelFrontend()(torch.from_numpy(ref["wave"]))
    assert mel.shape == (1, 1, 128, 370)
    np.testing.assert_allclose(mel[:, 0].numpy(), ref["mel"], atol=2e-4, rtol=0)


def test_frame_count_and_bank() -> None:
    cfg = MelConfig()
    assert cfg.num_frames(320000) == 1000 and cfg.num_frames(118400) == 370
    frontend = MelFrontend()
    assert frontend.mel_bank.shape == (128, 513)
    assert torch.all(frontend.mel_bank[:, -1] == 0)  # Nyquist column padded with zero
    assert frontend.mel_bank[:, 481:].sum() == 0  # nothing above 15 kHz (bin 480 = 15 kHz)
    assert "mel_bank" not in frontend.state_dict()


def test_bad_shapes() -> None:
    frontend = MelFrontend()
    with pytest.raises(ValueError, match=r"\(batch, samples\)"):
        frontend(torch.zeros(100))
    with pytest.raises(ValueError, match="at least"):
        frontend(torch.zeros(1, 100))


def test_equals_the_textbook_computation_bit_for_bit() -> None:
    """Clip by clip the frontend runs the textbook computation's float32 roundings on operands of the same shapes and
    layouts, so the two are equal bit for bit whatever kernels the CPU has; a batch is its clips concatenated. A
    batch through the textbook code is one larger FFT and matmul, which another CPU's kernels may sum in another
    order: there both are compared with the float64 log-mel (float32 round-off measured 4.4e-5 in the quietest
    bands; a periodic instead of a symmetric window changes the log-mel by 7e-2)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        audio = torch.cat([torch.stack([synthetic_waveform(i, 1.3) for i in range(2)]), torch.zeros(1, 41600)])
        frontend = MelFrontend()
        per_clip = torch.cat([textbook_log_mel(frontend, clip[None]) for clip in audio])
        assert torch.equal(frontend(audio), per_clip)
        assert torch.equal(frontend(audio[:1]), per_clip[:1])
        power = frontend.power_spectrogram(audio[:1])
        textbook_power = torch.view_as_real(torch.stft(
            F.conv1d(audio[:1, None], frontend.preemphasis_kernel)[:, 0], 1024, hop_length=320, win_length=800,
            window=frontend.window, center=True, pad_mode="reflect", return_complex=True)).pow(2).sum(-1)
        assert power.shape == (1, 513, MelConfig().num_frames(41600))
        assert torch.equal(power, textbook_power) and power.stride() == textbook_power.stride()
        exact = MelFrontend(dtype=torch.float64)(audio.double())
        assert exact.dtype == torch.float64
        for batched in (frontend(audio), textbook_log_mel(frontend, audio)):
            torch.testing.assert_close(batched.double(), exact, rtol=0, atol=1e-4)
        # float64 is computed in float64 (not float32 constants cast up): far closer to itself than float32 is
        exact_textbook = textbook_log_mel(MelFrontend(dtype=torch.float64), audio.double())
        torch.testing.assert_close(exact, exact_textbook, rtol=0, atol=1e-12)
    finally:
        torch.set_num_threads(threads)
