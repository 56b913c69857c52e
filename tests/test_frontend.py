"""Log-mel frontend: EfficientAT numerics (pinned by the reference mel), shapes and errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import reference

from hear_dymn import MelConfig, MelFrontend


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
