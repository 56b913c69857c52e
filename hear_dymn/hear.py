"""HEAR 2021 API (``load_model``, ``get_scene_embeddings``, ``get_timestamp_embeddings``) for DyMN and MN.

Embedding recipe (default ``layers=(5, 11, 13, 15, 16)``, ``mel_means=True``): each chosen feature map
(0 = stem, 1-15 = blocks, 16 = final 1x1 conv; see ``AudioMobileNet.forward_intermediates``) is averaged over
frequency, giving one vector per network frame; the normalised log-mel is averaged over time per band (128 values),
which EfficientAT's HEAR study found to complement the network features. Blocks 5, 11, 13, 15 are the authors'
best HEAR recipe for their MobileNets; 16 adds the final features the classifier sees.

* scene embedding = the time average of those frame vectors (= global average pooling of each map), concatenated;
* timestamp embedding at time t = each map's frequency-averaged frame vector linearly interpolated at t, plus the
  log-mel frame at t; a sequence with at least 3 frames per timestamp hop (at the default 50 ms: the log-mel, 10 ms
  frames) is first averaged over a centred box of about one hop (5 log-mel frames), so every frame counts for some
  timestamp and the mean over timestamps approximates the scene embedding.

Audio is processed in windows of ``window_seconds`` (default 10 s, the AudioSet training length) placed every
``window_hop_seconds``; each timestamp is taken from the window whose centre is nearest, so every timestamp has
context on both sides and memory is bounded by one batch of windows plus the output, whatever the clip length.
A clip no longer than one window is processed in a single pass. One network pass serves all timestamps of a
window: no forward per timestamp.

Fast path (``fast=True``, the default): the network runs as an eval-only fused copy
(:func:`hear_dymn.models.fast.fuse_for_inference`: BatchNorm folded, in-place DyReLU and attention, small chunks of
the batch on CPU); the log-mel (:class:`hear_dymn.frontend.MelFrontend`) is the same on both paths. Outputs match
``fast=False`` to float32 rounding (about 1e-6 relative on the reference fixtures);
``reports/performance.md`` has the measured speed.
"""
from __future__ import annotations

import logging
import math
import numbers
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .frontend import MelConfig, MelFrontend
from .models import AudioMobileNet, NUM_FEATURE_MAPS, create_model, list_models
from .models.fast import fuse_for_inference
from .models.registry import infer_architecture
from .models.weights import PRETRAINED, get_pretrained_cfg, read_state_dict

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS = "dymn10_as"


@dataclass(frozen=True)
class EmbeddingConfig:
    """How embeddings are built; every field can be passed to ``load_model`` (hear-eval-kit ``--model-options``)."""

    layers: tuple[int, ...] = (5, 11, 13, 15, 16)
    mel_means: bool = True
    timestamp_hop_ms: float = 50.0
    window_seconds: float = 10.0
    window_hop_seconds: float = 7.5
    max_batch_windows: int = 8  # windows per network call: bounds memory for long audio
    min_seconds: float = 0.032  # shorter clips are zero-padded to this length
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"  # fp16/bf16 autocast on CUDA; elsewhere float32 + a warning
    fast: bool = True  # fused inference copy of the network + fast log-mel; False = the eager modules

    def __post_init__(self) -> None:
        if isinstance(self.layers, (str, bytes)) or not isinstance(self.layers, Iterable):
            raise ValueError(f"layers must be a list of feature-map indices (ints), got {self.layers!r}")
        kinds = [i for i in self.layers if isinstance(i, bool) or not isinstance(i, numbers.Integral)]
        if kinds:
            raise ValueError(f"layers must be a list of feature-map indices (ints), got {list(self.layers)!r}")
        layers = tuple(int(i) % NUM_FEATURE_MAPS if -NUM_FEATURE_MAPS <= int(i) < NUM_FEATURE_MAPS else int(i)
                       for i in self.layers)
        object.__setattr__(self, "layers", layers)
        if not layers and not self.mel_means:
            raise ValueError("the embedding is empty: give at least one layer or mel_means=True")
        bad = [i for i in layers if not 0 <= i < NUM_FEATURE_MAPS]
        if bad:
            raise ValueError(f"layers {bad} out of range: feature maps are numbered 0..{NUM_FEATURE_MAPS - 1}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers {list(layers)} contain duplicates")
        if self.timestamp_hop_ms <= 0:
            raise ValueError("timestamp_hop_ms must be positive")
        if not 0 < self.window_hop_seconds <= self.window_seconds:
            raise ValueError("need 0 < window_hop_seconds <= window_seconds")
        if self.max_batch_windows < 1:
            raise ValueError("max_batch_windows must be >= 1")
        if self.precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be 'fp32', 'fp16' or 'bf16', got {self.precision!r}")
        if not isinstance(self.fast, bool):
            raise TypeError(f"fast must be true or false, got {self.fast!r}")


class HearModel(nn.Module):
    """A network plus its frontend and embedding recipe, as HEAR expects (``sample_rate``, embedding sizes)."""

    def __init__(self, network: AudioMobileNet, cfg: EmbeddingConfig | None = None,
                 mel: MelConfig | None = None) -> None:
        super().__init__()
        self.network = network.eval()
        self.cfg = cfg or EmbeddingConfig()
        # The eager network stays the source of truth (weights, parameter counts); the fused copy only runs it.
        self.fused = fuse_for_inference(network) if self.cfg.fast else None
        if self.fused is not None:
            # new weights loaded into the network (directly or through this model) are fused again
            network.register_load_state_dict_post_hook(self._refuse_after_load)
        self.frontend = MelFrontend(mel)
        self.sample_rate: int = self.frontend.cfg.sample_rate
        self._check_windows()
        info = network.feature_info
        size = sum(info[i]["num_chs"] for i in self.cfg.layers) + (self.frontend.cfg.n_mels if self.cfg.mel_means else 0)
        self.scene_embedding_size: int = int(size)
        self.timestamp_embedding_size: int = int(size)
        self._precision_warned = False
        self.eval()

    def __repr__(self) -> str:
        # One line (hear-validator prints the model): the facts that determine the embeddings, not the module tree.
        # ``repr(model.network)`` still gives the full network.
        parts = [f"layers={list(self.cfg.layers)}"] + (["mel_means"] if self.cfg.mel_means else [])
        precision = self.cfg.precision
        if precision != "fp32" and self.device.type != "cuda":
            precision += " (inactive: float32)"
        return (f"HearModel({self.network.arch}, weights={self._weights_label()}, "
                f"embedding={' + '.join(parts)} -> {self.scene_embedding_size}, sample_rate={self.sample_rate}, "
                f"timestamp_hop_ms={self.cfg.timestamp_hop_ms:g}, precision={precision}, device={self.device}, "
                f"fast={self.cfg.fast})")

    def _weights_label(self) -> str:
        info = self.weights_info
        if not info.get("name") and not info.get("path"):
            seed = info.get("random_init_seed")
            return "random init" + (f" (seed {seed})" if seed is not None else "")
        label = info.get("name") or Path(info["path"]).name
        return label + (f" sha256:{info['sha256'][:12]}" if info.get("sha256") else "")

    def _warn_if_precision_inactive(self, stacklevel: int = 2) -> None:
        """Warn (once per model) when ``precision`` asks for fp16/bf16 but the model is not on CUDA."""
        if self.cfg.precision == "fp32" or self._precision_warned or self.device.type == "cuda":
            return
        self._precision_warned = True
        warnings.warn(f"precision={self.cfg.precision!r} has no effect on {self.device.type.upper()}: "
                      f"{self.cfg.precision} autocast applies on CUDA only, so the model runs in float32 "
                      f"(move it with model.to('cuda'), or pass precision='fp32')", UserWarning,
                      stacklevel=stacklevel + 1)

    def _check_windows(self) -> None:
        window = int(round(self.cfg.window_seconds * self.sample_rate))
        if window < self.frontend.cfg.min_samples:
            raise ValueError(f"window_seconds={self.cfg.window_seconds} is {window} samples at {self.sample_rate} Hz; "
                             f"the log-mel needs at least {self.frontend.cfg.min_samples}")
        if int(round(self.cfg.window_hop_seconds * self.sample_rate)) < 1:
            raise ValueError(f"window_hop_seconds={self.cfg.window_hop_seconds} is less than one sample at "
                             f"{self.sample_rate} Hz")

    def refresh_fused(self) -> None:
        """Fuse the network again (fast path) after changing it in place, e.g. its DyConv temperature or weights
        updated by an optimizer; ``load_state_dict`` does this by itself."""
        if self.fused is not None:
            self.fused = fuse_for_inference(self.network, cpu_chunk_frames=self.fused.cpu_chunk_frames)

    def _refuse_after_load(self, module: nn.Module, incompatible_keys: Any) -> None:
        self.refresh_fused()

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def weights_info(self) -> dict:
        return dict(getattr(self.network, "weights_info", {}))

    def describe(self) -> dict[str, Any]:
        """Everything that determines the embeddings (for caches and reports)."""
        return {"arch": self.network.arch, "weights": self.weights_info, "embedding": asdict(self.cfg),
                "mel": asdict(self.frontend.cfg), "embedding_size": self.scene_embedding_size}

    def train(self, mode: bool = True) -> "HearModel":
        # The HEAR model is an inference object: BatchNorm and dropout always stay in eval mode.
        return super().train(False)

    # ---------------------------------------------------------------------------------------------------------
    # windows and frame features

    def _window_starts(self, num_samples: int) -> list[int]:
        window = int(round(self.cfg.window_seconds * self.sample_rate))
        if num_samples <= window:
            return [0]
        hop = int(round(self.cfg.window_hop_seconds * self.sample_rate))
        last = num_samples - window
        starts = list(range(0, last, hop)) + [last]
        return starts

    def _autocast(self):
        device_type = self.device.type
        if self.cfg.precision == "fp32" or device_type != "cuda":
            return torch.autocast(device_type=device_type, enabled=False)
        dtype = torch.float16 if self.cfg.precision == "fp16" else torch.bfloat16
        return torch.autocast(device_type="cuda", dtype=dtype)

    def frame_features(self, audio: Tensor) -> list[tuple[Tensor, int]]:
        """Frequency-averaged feature sequences of one batch of windows.

        Args:
            audio: ``(batch, samples)`` on the model's device.
        Returns:
            One ``(features (batch, channels, frames), frame_step_in_mel_frames)`` per embedding part, in
            embedding order (layers, then log-mel).
        """
        network = self.network if self.fused is None else self.fused
        with self._autocast():
            mel = self.frontend(audio)
            maps = network.forward_intermediates(mel, self.cfg.layers)
        parts = [(fmap.float().mean(dim=2), self.network.feature_info[i]["reduction"])
                 for fmap, i in zip(maps, self.cfg.layers)]
        if self.cfg.mel_means:
            parts.append((mel.float()[:, 0], 1))
        return parts

    def _pad_short(self, audio: Tensor) -> Tensor:
        minimum = max(self.frontend.cfg.min_samples, int(math.ceil(self.cfg.min_seconds * self.sample_rate)))
        if audio.shape[1] < minimum:
            audio = F.pad(audio, (0, minimum - audio.shape[1]))
        return audio

    def embed(self, audio: Tensor, timestamps_ms: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Scene embeddings ``(n, D)`` and, if ``timestamps_ms`` ``(T,)`` is given, timestamp embeddings
        ``(n, T, D)``; both float32 on the model's device."""
        self._warn_if_precision_inactive(stacklevel=2)
        audio = self._pad_short(audio)
        n_sounds, n_samples = audio.shape
        starts = self._window_starts(n_samples)
        window = min(n_samples, int(round(self.cfg.window_seconds * self.sample_rate)))
        centres = torch.tensor([s + window / 2 for s in starts], dtype=torch.float64)
        device = self.device
        dim = self.scene_embedding_size
        scene = torch.zeros(n_sounds, dim, dtype=torch.float64, device=device)
        stamps = None
        owner = None
        if timestamps_ms is not None:
            stamps = torch.zeros(n_sounds, len(timestamps_ms), dim, dtype=torch.float32, device=device)
            stamp_samples = timestamps_ms.double() * self.sample_rate / 1000.0
            # Nearest window centre (ties to the earlier window), without a (timestamps x windows) matrix: 1 h of
            # audio has 72k timestamps and 480 windows.
            owner = torch.searchsorted((centres[:-1] + centres[1:]) / 2, stamp_samples)
        # Each sample of the clip belongs to the window with the nearest centre: weights for the scene average.
        bounds = [0.0] + [(a + b) / 2 for a, b in zip(centres[:-1].tolist(), centres[1:].tolist())] + [float(n_samples)]
        hop_samples = self.frontend.cfg.hop_length
        per_call = max(1, self.cfg.max_batch_windows // max(1, n_sounds))
        for first in range(0, len(starts), per_call):
            group = list(range(first, min(first + per_call, len(starts))))
            batch = torch.cat([audio[:, starts[k]:starts[k] + window] for k in group]).to(device)
            parts = self.frame_features(batch)
            for j, k in enumerate(group):
                rows = slice(j * n_sounds, (j + 1) * n_sounds)
                lo, hi = bounds[k] - starts[k], bounds[k + 1] - starts[k]  # owned span, in window samples
                offset = 0
                for feats, step in parts:
                    seq = feats[rows]  # (n_sounds, C, frames)
                    channels = seq.shape[1]
                    frame_pos = (torch.arange(seq.shape[2], device=device, dtype=torch.float64) * step
                                 * hop_samples)
                    weight = _span_weights(frame_pos, lo, hi, single=len(starts) == 1)
                    scene[:, offset:offset + channels] += (seq.double() * weight).sum(-1) * (hi - lo) / n_samples
                    if stamps is not None:
                        mine = (owner == k).nonzero().flatten()
                        if len(mine):
                            local = stamp_samples[mine] - starts[k]
                            frame_ms = 1000.0 * step * hop_samples / self.sample_rate
                            smooth = _box_smooth(seq, frame_ms, self.cfg.timestamp_hop_ms)
                            values = _interpolate(smooth, local.to(device) / (step * hop_samples))
                            stamps[:, mine.to(device), offset:offset + channels] = values
                    offset += channels
        return scene.float(), stamps


def _span_weights(frame_pos: Tensor, lo: float, hi: float, single: bool) -> Tensor:
    """Averaging weights over frames for the owned span ``[lo, hi)`` (all frames equally for a single window)."""
    if single:
        return torch.full_like(frame_pos, 1.0 / len(frame_pos))
    inside = ((frame_pos >= lo) & (frame_pos < hi)).double()
    if inside.sum() == 0:  # span narrower than one frame step: take the nearest frame
        inside[(frame_pos - (lo + hi) / 2).abs().argmin()] = 1.0
    return inside / inside.sum()


def _box_smooth(seq: Tensor, frame_ms: float, hop_ms: float) -> Tensor:
    """``seq (n, C, frames)`` averaged over a centred box of about one timestamp hop, so that a sequence finer than
    the timestamps (the log-mel: 10 ms frames, 50 ms timestamps) gives each timestamp the mean of its own slot
    instead of one frame in several (a short event between two timestamps would otherwise be missed)."""
    width = int(hop_ms // frame_ms)
    width -= 1 - width % 2  # odd, so that the box is centred on the frame
    if width <= 1:
        return seq
    return F.avg_pool1d(seq, width, stride=1, padding=width // 2, count_include_pad=False)


def _interpolate(seq: Tensor, positions: Tensor) -> Tensor:
    """Linear interpolation of ``seq (n, C, frames)`` at fractional frame ``positions (T,)`` -> ``(n, T, C)``."""
    n_frames = seq.shape[-1]
    pos = positions.to(seq.device, torch.float64).clamp(0, n_frames - 1)
    left = pos.floor().long().clamp(max=n_frames - 1)
    right = (left + 1).clamp(max=n_frames - 1)
    frac = (pos - left.double()).to(seq.dtype)
    values = seq[..., left] * (1 - frac) + seq[..., right] * frac
    return values.transpose(1, 2)


# -------------------------------------------------------------------------------------------------------------
# HEAR entry points


def load_model(model_file_path: str = "", **options: Any) -> HearModel:
    """HEAR 2021 entry point: a CPU :class:`HearModel` in eval mode.

    Args:
        model_file_path: an EfficientAT-format checkpoint; the architecture is read from the file unless
            ``model_name`` is given. Empty: the released ``model_name`` weights (default ``dymn10_as``) from the
            torch hub cache, downloaded if needed (a clear error when offline and not cached).
        **options: ``model_name`` (architecture such as ``"dymn04"`` or weights name such as ``"dymn04_as"``) and
            any :class:`EmbeddingConfig` field: ``layers``, ``mel_means``, ``timestamp_hop_ms``,
            ``window_seconds``, ``window_hop_seconds``, ``max_batch_windows``, ``min_seconds``, ``precision``,
            ``fast``.
    """
    model_name = options.pop("model_name", None)
    known = {f.name for f in fields(EmbeddingConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown load_model option(s) {unknown}; valid: model_name, {', '.join(sorted(known))}")
    if isinstance(options.get("layers"), list):  # JSON gives lists; anything else is checked by the config
        options["layers"] = tuple(options["layers"])
    cfg = EmbeddingConfig(**options)
    network = _load_network(str(model_file_path or ""), model_name)
    model = HearModel(network.eval(), cfg)
    logger.info("loaded %s (%s), embedding size %d", network.arch, model.weights_info.get("name") or
                model.weights_info.get("path") or "random init", model.scene_embedding_size)
    return model


def _load_network(path: str, model_name: str | None) -> AudioMobileNet:
    if not path:
        weights = get_pretrained_cfg(model_name or DEFAULT_WEIGHTS) if (model_name or DEFAULT_WEIGHTS) in PRETRAINED \
            else None
        if weights is None:
            raise ValueError(f"model_name {model_name!r} names no released weights; pass a checkpoint path, or one "
                             f"of: {', '.join(PRETRAINED)}")
        return create_model(weights.arch, pretrained=weights.name)
    state = read_state_dict(Path(path))
    if model_name is None:
        arch = infer_architecture(state)
    elif model_name in PRETRAINED:
        arch = PRETRAINED[model_name].arch
    elif model_name in list_models():
        arch = model_name
    else:
        raise ValueError(f"unknown model_name {model_name!r}; architectures: {', '.join(list_models())}")
    num_classes = int(state["classifier.5.weight"].shape[0]) if "classifier.5.weight" in state else 527
    return create_model(arch, checkpoint_path=path, num_classes=num_classes)


AUDIO_RULE = "a torch.Tensor or numpy.ndarray of shape (n_sounds, n_samples), float32"


def _check_audio(audio: Tensor | np.ndarray, model: HearModel) -> Tensor:
    """Apply the one input rule (:data:`AUDIO_RULE`, at ``model.sample_rate``) and return the audio as a tensor.

    A numpy array is wrapped without a copy (copied only when it is read-only or has negative strides). Other
    dtypes, float64 included, are refused with a message saying how to convert, never converted silently.
    """
    is_numpy = isinstance(audio, np.ndarray)
    if not is_numpy and not isinstance(audio, Tensor):
        kind = type(audio)
        name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        raise TypeError(f"audio must be {AUDIO_RULE} at {model.sample_rate} Hz, got {name}")
    if audio.ndim != 2:
        hint = " For a single clip pass audio[None]." if audio.ndim == 1 else ""
        raise ValueError(f"audio must have shape (n_sounds, n_samples), got {tuple(audio.shape)}.{hint}")
    if is_numpy:
        floating, wrong = audio.dtype.kind == "f", audio.dtype != np.float32
        convert = "audio.astype(np.float32)"
    else:
        floating, wrong = audio.dtype.is_floating_point, audio.dtype != torch.float32
        convert = "audio.float()"
    if wrong:
        hint = (f"convert it with {convert}" if floating else
                f"convert integer PCM to float32 in [-1, 1], e.g. {convert} / 32768 for int16")
        raise TypeError(f"audio must be float32 at {model.sample_rate} Hz, got {audio.dtype}: {hint}")
    if is_numpy:
        if not audio.flags.writeable or any(stride < 0 for stride in audio.strides):
            audio = audio.copy()  # torch.from_numpy needs a writeable array with non-negative strides
        audio = torch.from_numpy(audio)
    if audio.shape[0] == 0 or audio.shape[1] == 0:
        raise ValueError(f"audio is empty: shape {tuple(audio.shape)}")
    # A NaN or infinity makes the sum non-finite: one reduction pass clears the common case. Only then (or when
    # huge values overflow the sum) check element-wise, in blocks: isfinite's temporaries are larger than its
    # input (0.8 GB for an hour of audio).
    if not bool(torch.isfinite(audio.sum())) and not all(
            bool(torch.isfinite(block).all()) for block in audio.split(1 << 20, dim=1)):
        raise ValueError("audio contains NaN or infinite values")
    return audio


def timestamps_for(num_samples: int, sample_rate: int, hop_ms: float) -> Tensor:
    """Evenly spaced timestamps (ms) ``k * hop_ms`` inside the clip; the float hop is never rounded."""
    duration_ms = 1000.0 * num_samples / sample_rate
    count = int(math.floor(duration_ms / hop_ms + 1e-9)) + 1
    return torch.arange(count, dtype=torch.float64) * hop_ms


def get_scene_embeddings(audio: Tensor | np.ndarray, model: HearModel) -> Tensor:
    """HEAR scene embeddings: per part, the mean of its frame vectors over the clip.

    Args:
        audio: ``(n_sounds, n_samples)`` float32 at ``model.sample_rate``, a torch.Tensor or a numpy.ndarray
            (any other type, and any other dtype, float64 included, raises ``TypeError``). A tensor may be on
            any device; the windows are moved to the model's device.
    Returns:
        ``(n_sounds, model.scene_embedding_size)`` float32 torch.Tensor on the model's device.
    """
    with torch.no_grad():
        audio = _check_audio(audio, model)
        model._warn_if_precision_inactive(stacklevel=2)
        scene, _ = model.embed(audio, None)
    return scene


def get_timestamp_embeddings(audio: Tensor | np.ndarray, model: HearModel) -> tuple[Tensor, Tensor]:
    """HEAR timestamp embeddings, every ``model.cfg.timestamp_hop_ms`` from 0 to the end of the clip.

    Args:
        audio: ``(n_sounds, n_samples)`` float32 at ``model.sample_rate``, a torch.Tensor or a numpy.ndarray
            (any other type, and any other dtype, float64 included, raises ``TypeError``).
    Returns:
        Embeddings ``(n_sounds, n_timestamps, model.timestamp_embedding_size)`` and timestamps in ms
        ``(n_sounds, n_timestamps)``, both float32 torch.Tensors on the model's device.
    """
    with torch.no_grad():
        audio = _check_audio(audio, model)
        model._warn_if_precision_inactive(stacklevel=2)
        times = timestamps_for(audio.shape[1], model.sample_rate, model.cfg.timestamp_hop_ms)
        _, stamps = model.embed(audio, times)
        timestamps = times.float().to(stamps.device).expand(audio.shape[0], -1).contiguous()
    return stamps, timestamps
