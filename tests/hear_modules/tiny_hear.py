"""A small HEAR 2021 module for the tests: log band energies of 50 ms frames at 16 kHz, randomly projected.

``load_model(model_file_path="", size=12, fault=None)``: ``model_file_path`` is a ``torch.save``d state dict of
the projection; ``fault`` makes the module break the HEAR API on purpose (``"shape"``, ``"nan"``, ``"float64"``,
``"batch"``, ``"size"``, ``"timestamps"``) so that the harness's checks can be tested.
"""
from __future__ import annotations

import torch

__version__ = "0.1.0"

HOP_MS = 50
FRAME = 800  # samples at 16 kHz: 50 ms
BANDS = 16


class TinyModel(torch.nn.Module):
    sample_rate = 16000

    def __init__(self, size: int = 12, fault: str | None = None) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.projection = torch.nn.Parameter(torch.randn(BANDS, size, generator=generator) / BANDS ** 0.5)
        self.scene_embedding_size = self.timestamp_embedding_size = 2 * size if fault == "size" else size
        self.fault = fault

    def frames(self, audio: torch.Tensor) -> torch.Tensor:
        padded = torch.nn.functional.pad(audio, (FRAME // 2, FRAME // 2))
        frames = padded.unfold(1, FRAME, FRAME)  # (n, T, FRAME): frame t centred at t * 50 ms
        power = torch.fft.rfft(frames * torch.hann_window(FRAME), dim=-1).abs() ** 2
        bands = power[..., 1:].reshape(*power.shape[:2], BANDS, -1).sum(-1)
        return torch.log(bands + 1e-6) @ self.projection


def load_model(model_file_path: str = "", size: int = 12, fault: str | None = None) -> TinyModel:
    model = TinyModel(size, fault)
    if model_file_path:
        model.load_state_dict(torch.load(model_file_path, weights_only=True))
    return model


def get_timestamp_embeddings(audio: torch.Tensor, model: TinyModel) -> tuple[torch.Tensor, torch.Tensor]:
    emb = model.frames(audio)
    ts = torch.arange(emb.shape[1], dtype=torch.float32).expand(emb.shape[0], -1) * HOP_MS
    if model.fault == "timestamps":
        ts = ts[:, :-1]
    return emb, ts


def get_scene_embeddings(audio: torch.Tensor, model: TinyModel) -> torch.Tensor:
    emb = model.frames(audio).mean(1)
    if model.fault == "shape":
        return emb[:, None, :]
    if model.fault == "nan":
        emb[0, 0] = float("nan")
    if model.fault == "float64":
        return emb.double()
    if model.fault == "batch":
        return emb[:1]
    return emb
