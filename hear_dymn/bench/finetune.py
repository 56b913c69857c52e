"""The ``finetune`` protocol: full fine-tuning with EfficientAT's recipes, resumable, and data-parallel under torchrun.

One run = (network, task round, seed, recipe). It trains the whole network with a new classifier layer
(``reset_classifier``: only ``classifier.5``, the head's last linear layer, is new), evaluates the validation split
after every epoch when there is one, and returns the test-split scores of the best epoch (or of the last epoch
when the task has no validation split).

Resumability: after every epoch ``<workdir>/last.pt`` is written atomically with the model, optimizer and
scheduler state, the epoch, the training history and the best-so-far record; the best weights go to ``best.pt``.
A killed run started again with the same arguments continues after the last finished epoch and ends with the
same numbers as an uninterrupted run: all randomness (shuffling, augmentation, mixup, dropout) is drawn from
generators seeded by (seed, epoch, position), never from leftover global state. A finished run leaves
``result.npz`` and is not trained again. ``fingerprint.json`` guards against resuming with other settings.

Audio streams (``pipeline.py``): a first pass decodes every clip once, in loader workers, keeping only its length
(and, with an :class:`~hear_dymn.bench.audio_store.AudioStore`, a stored copy that later epochs and runs read);
training batches are then built in the workers from per-item reads, cropped to the recipe's length (ESC-50 5 s,
FSD50K and OpenMIC 10 s; zero-padded when shorter), and evaluation reads whole clips a batch at a time. Memory is
bounded by the batches in flight, not by the dataset. The number of workers changes nothing: each sample's
augmentation is drawn from its own (seed, epoch, position) generator wherever it is computed (tested).

Data parallelism: when the process group is initialised (``torchrun``; see :func:`init_distributed`), every
process trains on its share of each global batch (``batch_size`` samples, split by position) with
``DistributedDataParallel`` (gloo on CPU, nccl on CUDA); rank 0 evaluates, writes checkpoints and results, and
the others wait. The same global batches and the same per-sample augmentation are drawn whatever the number of
processes; each share is cut by position. A run with N processes computes what one process with
``micro_batches=N`` computes, up to float summation order (tested). Against a plain single-process run it differs
in what is drawn or computed per share: BatchNorm statistics, mixup partners (drawn within a share), dropout draws
(seeded by the share), and the last global batch, dropped when it has fewer than 2 samples per share. A run
records its process count and resumes only with the same one. On CUDA training uses float16 autocast with a
gradient scaler.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..frontend import MelFrontend, kaldi_mel_bank
from ..models.base import AudioMobileNet
from .atomic import atomic_savez, atomic_torch_save, atomic_write_text
from .audio_store import AudioStore
from .metrics import METRICS
from .pipeline import ClipAudio, LoaderOptions, map_loader, scan_clips
from .probes import activate_scores
from .recipes import FinetuneRecipe
from .tasks.base import Clip, TaskSpec

logger = logging.getLogger(__name__)

# bump when training semantics change: finished runs of other versions are not reused. 4: training audio may come
# from the 16-bit audio store (its quantisation changes the numbers), so fingerprints name the training audio
TRAINING_VERSION = 4
MIN_EVAL_SECONDS = 1.0  # shorter evaluation clips are zero-padded so the network sees at least 100 frames


# ----------------------------------------------------------------------------------------------------------------
# distributed context


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


def init_distributed(device: str = "cpu") -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment, or run alone.

    ``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; with ``device="cuda"`` each process takes the
    GPU ``LOCAL_RANK`` and uses nccl, otherwise gloo on CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(device=device)
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    if device.startswith("cuda"):
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device, backend = f"cuda:{local_rank}", "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world_size, device=device)


# ----------------------------------------------------------------------------------------------------------------
# data


def _seed(*parts: int | str) -> int:
    """A 63-bit seed from any tuple of ints/strings (stable across processes and Python runs)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _fit_length(wave: np.ndarray, length: int, crop: str, rng: np.random.Generator | None) -> np.ndarray:
    if len(wave) < length:
        return np.pad(wave, (0, length - len(wave)))
    if len(wave) == length:
        return wave
    offset = int(rng.integers(0, len(wave) - length + 1)) if crop == "random" and rng is not None else 0
    return wave[offset:offset + length]


def load_split(clips: Sequence[Clip], sample_rate: int, store: AudioStore | None = None,
               loader: LoaderOptions | None = None, exact: bool = True, device: str = "cpu",
               desc: str | None = None) -> tuple[ClipAudio, dict[str, str]]:
    """Decode every clip once (in loader workers; into ``store`` when given) and keep only what streaming needs:
    the readable clips with their lengths, and a ``{clip_id: reason}`` record of the rest. No audio is kept."""
    return scan_clips(clips, sample_rate, store=store, options=loader, exact=exact, device=device, desc=desc)


def _targets(clips: Sequence[Clip], spec: TaskSpec) -> np.ndarray:
    if spec.multilabel:
        return np.stack([c.target.astype(np.float32) for c in clips])
    return np.eye(spec.num_classes, dtype=np.float32)[[int(c.target) for c in clips]]


def clip_masks(clips: Sequence[Clip]) -> np.ndarray | None:
    if clips and clips[0].mask is not None:
        return np.stack([c.mask.astype(np.float32) for c in clips])
    return None


class TrainingBatches:
    """Deterministic augmented training batches: the same global batches for any number of processes."""

    def __init__(self, audio: ClipAudio, targets: np.ndarray, masks: np.ndarray | None, recipe: FinetuneRecipe,
                 seed: int) -> None:
        self.audio, self.targets, self.masks, self.recipe, self.seed = audio, targets, masks, recipe, seed
        self.length = int(round(recipe.clip_seconds * audio.sample_rate))

    def global_batches(self, epoch: int, world_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """(positions in the epoch's order, clip indices) per global batch."""
        order = np.random.default_rng(_seed(self.seed, epoch, "order")).permutation(len(self.audio))
        size = self.recipe.batch_size
        batches = [(np.arange(i, min(i + size, len(order))), order[i:i + size]) for i in range(0, len(order), size)]
        # every process needs at least two samples (BatchNorm in training mode)
        return [(p, b) for p, b in batches if len(b) >= 2 * world_size]

    @staticmethod
    def shares(positions: np.ndarray, indices: np.ndarray, parts: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Cut a batch into ``parts`` shares by position (share k holds positions k, k + parts, ...)."""
        return [(positions[k::parts], indices[k::parts]) for k in range(parts)]

    def _one(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """Gain, crop (or zero-pad) to the recipe's length, roll: the same draws in the same order whether the clip
        is read whole or, when its length is known, only the crop is read."""
        r = self.recipe
        gain = np.float32(10 ** (int(rng.integers(-r.gain_db, r.gain_db)) / 20)) if r.gain_db else None
        total = self.audio.lengths[index] if self.audio.lengths is not None else None
        if total is not None and total > self.length:
            offset = int(rng.integers(0, total - self.length + 1)) if r.train_crop == "random" else 0
            wave = self.audio.segment(index, offset, offset + self.length)
            if gain is not None:
                wave = wave * gain
        else:
            wave = self.audio.wave(index)
            if gain is not None:
                wave = wave * gain
            wave = _fit_length(wave, self.length, r.train_crop, rng)
        if r.roll_samples:
            wave = np.roll(wave, int(rng.integers(-r.roll_samples, r.roll_samples + 1)))
        return wave.astype(np.float32, copy=False)

    def sample(self, epoch: int, position: int, index: int) -> dict[str, Any]:
        """Augmented waveform, soft target, mask and mixup weight of the sample at ``position`` of the epoch."""
        r = self.recipe
        rng = np.random.default_rng(_seed(self.seed, epoch, position, "sample"))
        wave, target = self._one(index, rng), self.targets[index]
        mask = None if self.masks is None else self.masks[index]
        if r.wavmix_prob and rng.random() < r.wavmix_prob:
            other = int(rng.integers(len(self.audio)))
            lam = rng.beta(r.wavmix_beta, r.wavmix_beta)
            lam = max(lam, 1.0 - lam)
            x1, x2 = wave - wave.mean(), self._one(other, rng)
            x2 = x2 - x2.mean()
            wave = (lam * x1 + (1.0 - lam) * x2).astype(np.float32)
            wave = wave - wave.mean()
            if mask is None:
                target = lam * target + (1.0 - lam) * self.targets[other]
            else:  # as the reference's OpenMIC wavmix: unannotated labels count 0, mix, binarise, union of masks
                other_mask = self.masks[other]
                mixed = lam * target * mask + (1.0 - lam) * self.targets[other] * other_mask
                target = (mixed > 0.5).astype(np.float32)
                mask = np.maximum(mask, other_mask)
        mixup = 1.0
        if r.mixup_alpha:
            mixup = rng.beta(r.mixup_alpha, r.mixup_alpha)
            mixup = max(mixup, 1.0 - mixup)
        return {"wave": wave, "target": target.astype(np.float32), "mask": mask, "lam": np.float32(mixup)}

    def batch(self, epoch: int, batch_start: int, positions: np.ndarray, indices: np.ndarray) -> dict[str, Any]:
        """One process's share of the global batch starting at ``batch_start`` of the epoch's order.

        Mixup partners are drawn within the share (spectrogram mixup happens on each process); the mel jitter is
        drawn once per global batch, as the reference draws it once per batch.
        """
        items = [self.sample(epoch, int(p), int(i)) for p, i in zip(positions, indices)]
        stack = {key: None if items[0][key] is None else torch.from_numpy(np.stack([it[key] for it in items]))
                 for key in ("wave", "target", "mask", "lam")}
        mixing = bool(self.recipe.mixup_alpha)
        perm = np.random.default_rng(_seed(self.seed, epoch, int(positions[0]), "partners")).permutation(len(items))
        return {**stack, "lam": stack["lam"] if mixing else None, "perm": torch.from_numpy(perm) if mixing else None,
                "mel_seed": _seed(self.seed, epoch, batch_start, "mel"),
                "dropout_seed": _seed(self.seed, epoch, int(positions[0]), "dropout")}

    def steps(self, epoch: int, ctx: DistContext, micro_batches: int) -> list[tuple[int, int, list]]:
        """This process's work of the epoch: per optimizer step, (epoch, batch start, its micro-batch shares)."""
        parts = ctx.world_size * micro_batches
        return [(epoch, int(positions[0]), self.shares(positions, indices, parts)[ctx.rank::ctx.world_size])
                for positions, indices in self.global_batches(epoch, parts)]

    def __call__(self, step: tuple[int, int, list]) -> list[dict[str, Any]]:
        """One optimizer step's micro-batches (what a loader worker computes)."""
        epoch, batch_start, shares = step
        return [self.batch(epoch, batch_start, p, i) for p, i in shares]


# ----------------------------------------------------------------------------------------------------------------
# model pieces


class TrainingFrontend(nn.Module):
    """The eval frontend plus the reference's training-time mel jitter and optional masking."""

    def __init__(self, recipe: FinetuneRecipe) -> None:
        super().__init__()
        self.frontend = MelFrontend()
        self.recipe = recipe

    def forward(self, wave: Tensor, seed: int | None = None) -> Tensor:
        if not self.training or seed is None:
            return self.frontend(wave)
        r, cfg = self.recipe, self.frontend.cfg
        rng = np.random.default_rng(seed)
        fmin = cfg.fmin + int(rng.integers(r.fmin_aug_range)) if r.fmin_aug_range else cfg.fmin
        fmax = cfg.fmax + r.fmax_aug_range // 2 - int(rng.integers(r.fmax_aug_range)) if r.fmax_aug_range \
            else cfg.fmax
        mel = self.frontend(wave, mel_bank=kaldi_mel_bank(cfg, fmin, fmax).to(wave.device))
        if r.freqm or r.timem:
            mel = _mask(mel, r.freqm, r.timem, rng)
        return mel


def _mask(mel: Tensor, freqm: int, timem: int, rng: np.random.Generator) -> Tensor:
    """One frequency and one time mask per example (value 0 in the normalised domain, i.e. before the shift)."""
    mel = mel.clone()
    fill = 4.5 / 5.0  # where log(mel) = 0 lands after the (x + 4.5) / 5 normalisation
    for i in range(mel.shape[0]):
        for width, axis in ((freqm, 2), (timem, 3)):
            if width:
                size = int(rng.integers(0, width + 1))
                start = int(rng.integers(0, max(1, mel.shape[axis] - size + 1)))
                mel[i].narrow(axis - 1, start, size).fill_(fill)
    return mel


def _loss(logits: Tensor, target: Tensor, mask: Tensor | None, kind: str) -> Tensor:
    if kind == "ce":
        return -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if mask is not None:
        loss = loss * mask
    return loss.mean()


# ----------------------------------------------------------------------------------------------------------------
# evaluation


class _EvalBatch:
    """Loader task: the clips of one evaluation batch, cut/padded as the recipe says, stacked."""

    def __init__(self, audio: ClipAudio, length: int | None, shortest: int) -> None:
        self.audio, self.length, self.shortest = audio, length, shortest

    def __call__(self, indices: list[int]) -> Tensor:
        waves = []
        for i in indices:
            wave = self.audio.wave(i)
            wave = _fit_length(wave, self.length, "start", None) if self.length is not None else wave
            waves.append(np.pad(wave, (0, max(0, self.shortest - len(wave)))))
        return torch.from_numpy(np.stack(waves))


def eval_batches(audio: ClipAudio, recipe: FinetuneRecipe, batch_size: int = 16) -> list[list[int]]:
    """Evaluation batches: clips of equal (fitted) length together, in order of first appearance, so that no
    padding changes a result. Needs the clips' lengths (:func:`load_split`)."""
    length = int(round(recipe.clip_seconds * audio.sample_rate)) if recipe.eval_length == "clip" else None
    shortest = int(MIN_EVAL_SECONDS * audio.sample_rate)
    by_length: dict[int, list[int]] = {}
    for i in range(len(audio)):
        fitted = length if length is not None else audio.length(i)
        by_length.setdefault(max(fitted, shortest), []).append(i)
    return [indices[start:start + batch_size] for indices in by_length.values()
            for start in range(0, len(indices), batch_size)]


@torch.no_grad()
def predict(network: nn.Module, frontend: nn.Module, audio: ClipAudio, recipe: FinetuneRecipe, device: str,
            batch_size: int = 16, loader: LoaderOptions | None = None) -> np.ndarray:
    """Logits ``(n_clips, n_classes)`` for a split; clips are cut/padded as the recipe says, or whole. The audio
    streams through the loader's workers, a batch at a time."""
    network.eval()
    frontend.eval()
    length = int(round(recipe.clip_seconds * audio.sample_rate)) if recipe.eval_length == "clip" else None
    batches = eval_batches(audio, recipe, batch_size)
    out: list[np.ndarray | None] = [None] * len(audio)
    task = _EvalBatch(audio, length, int(MIN_EVAL_SECONDS * audio.sample_rate))
    for chunk, x in zip(batches, map_loader(task, batches, loader, device)):
        logits = network(frontend(x.to(device, non_blocking=True))).float().cpu().numpy()
        for i, row in zip(chunk, logits):
            out[i] = row
    return np.stack(out)


# ----------------------------------------------------------------------------------------------------------------
# the run


@dataclass
class FinetuneResult:
    scores: np.ndarray  # activated test predictions (softmax / sigmoid)
    test_metric: float
    best_epoch: int
    history: list[dict[str, float]]
    seconds: float
    skipped: dict[str, str] = field(default_factory=dict)
    resumed_from_epoch: int | None = None
    processes: int = 1  # data-parallel processes that trained it


@dataclass
class FinetuneData:
    train: list[Clip]
    valid: list[Clip] | None
    test: list[Clip]


def fingerprint(recipe: FinetuneRecipe, seed: int, extra: dict[str, Any]) -> dict[str, Any]:
    return {"recipe": asdict(recipe), "seed": seed, **extra}


def run_finetune(network: AudioMobileNet, spec: TaskSpec, data: FinetuneData, recipe: FinetuneRecipe, seed: int,
                 workdir: Path, ctx: DistContext | None = None, identity: dict[str, Any] | None = None,
                 on_epoch: Callable[[dict[str, float]], None] | None = None, micro_batches: int = 1,
                 loader: LoaderOptions | None = None, store: AudioStore | None = None, progress: bool = False
                 ) -> FinetuneResult:
    """Fine-tune a copy of ``network`` on ``data`` and return the test predictions (see the module docstring).

    Args:
        network: Pretrained network (left unchanged; a copy is trained).
        spec: The task (classes, multilabel, main metric).
        data: Train / optional valid / test clips.
        recipe: Training settings.
        seed: Seed for the new head, shuffling, augmentation and dropout.
        workdir: Where checkpoints and the final result live; reusing it resumes.
        ctx: Distributed context (:func:`init_distributed`); alone when None.
        identity: Extra items (model, weights, task round) that must match to resume from ``workdir``.
        on_epoch: Called on rank 0 with each epoch's history record.
        micro_batches: Gradient accumulation: each process's share of a global batch is cut into this many
            micro-batches (by position, as shares are cut across processes), with one optimizer step per global
            batch. One process with ``micro_batches=N`` computes what N data-parallel processes compute (only the
            first micro-batch updates BatchNorm running statistics, as DDP keeps rank 0's), up to float
            summation order; it also fits large batches into small accelerators.
        loader: Loader workers, prefetch and pinned memory for training batches and evaluation (default: the
            device's defaults, :class:`~hear_dymn.bench.pipeline.LoaderOptions`). The results do not depend on it.
        store: Decoded-audio store: every clip is decoded once into it, and training reads its (possibly 16-bit)
            entries; evaluation reads exact audio only (see :mod:`~hear_dymn.bench.audio_store`). ``None``
            decodes the files every time.
        progress: Progress bars for the first pass over the audio.
    """
    ctx = ctx or DistContext()
    workdir = Path(workdir)
    metric = METRICS[spec.main_metric]
    started = time.perf_counter()
    sr = 32000
    loader = (loader or LoaderOptions()).resolve(ctx.device)
    if store is not None and store.sample_rate != sr:
        raise ValueError(f"fine-tuning needs a {sr} Hz audio store, got {store!r}")
    eval_store = store if store is not None and store.lossless else None  # evaluation sees exact audio only

    def scan(clips: Sequence[Clip], split: str, split_store: AudioStore | None, exact: bool):
        show = f"read {spec.name}/{split}" if progress and ctx.is_main else None
        return load_split(clips, sr, split_store, loader, exact, ctx.device, show)

    def scan_all():
        train_scan = scan(data.train, "train", store, exact=False)
        valid_scan = scan(data.valid, "valid", eval_store, exact=True) if data.valid else (None, {})
        return train_scan, valid_scan, scan(data.test, "test", eval_store, exact=True)

    if store is not None and ctx.distributed:  # each process stores its share; then every one finds all clips
        for clips, split_store in ((data.train, store), (data.valid or [], eval_store), (data.test, eval_store)):
            if split_store is not None:
                load_split(clips[ctx.rank::ctx.world_size], sr, split_store, loader, False, ctx.device)
        ctx.barrier()
    (train_audio, skipped), (valid_audio, skipped_valid), (test_audio, skipped_test) = scan_all()
    train, test = train_audio.clips, test_audio.clips
    valid = valid_audio.clips if valid_audio is not None else None
    skipped.update(skipped_valid)
    skipped.update(skipped_test)
    if len(train) < 2 * ctx.world_size:
        raise ValueError(f"{spec.name}: {len(train)} readable training clips; fine-tuning needs at least "
                         f"{2 * ctx.world_size}")

    if micro_batches < 1:
        raise ValueError(f"micro_batches must be >= 1, got {micro_batches}")
    finger = fingerprint(recipe, seed, {**(identity or {}), "micro_batches": micro_batches,
                                        "training_version": TRAINING_VERSION, "audio": train_audio.describe(),
                                        "clips": _clip_digest(train, valid, test)})
    done = workdir / "result.npz"
    if _matches(workdir, finger) and done.exists():
        return _load_result(done, skipped)

    torch.manual_seed(_seed(seed, "head"))
    model = copy.deepcopy(network).float()
    model.reset_classifier(spec.num_classes)
    model.to(ctx.device)
    frontend = TrainingFrontend(recipe).to(ctx.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, recipe.lr_multiplier)
    use_amp = ctx.device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    history: list[dict[str, float]] = []
    best = {"epoch": -1, "metric": -float("inf")}
    start_epoch, resumed = 0, None
    last = workdir / "last.pt"
    if last.exists() and _matches(workdir, finger):
        state = torch.load(last, map_location=ctx.device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        started_with = int(state.get("processes", 1))
        if started_with != ctx.world_size:
            raise RuntimeError(f"{workdir}: this run was started with {started_with} process(es); resume it with the "
                               f"same number (now {ctx.world_size}) or remove the folder to start again")
        history, best = list(state["history"]), dict(state["best"])
        start_epoch = resumed = int(state["epoch"]) + 1
        logger.info("%s: resuming after epoch %d from %s", spec.name, start_epoch - 1, last)
    elif ctx.is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(workdir / "fingerprint.json", json.dumps(finger, indent=2, sort_keys=True, default=str))
    ctx.barrier()

    train_model: nn.Module = model
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[torch.device(ctx.device)] if use_amp else None)

    batches = TrainingBatches(train_audio, _targets(train, spec), clip_masks(train), recipe, seed)
    for epoch in range(start_epoch, recipe.epochs):
        train_model.train()
        frontend.train()
        losses = []
        # the augmented batches are built in loader workers, ahead of the step that needs them
        for micro in map_loader(batches, batches.steps(epoch, ctx, micro_batches), loader, ctx.device):
            losses.append(_train_step(train_model, frontend, optimizer, scaler, micro, recipe, ctx.device, use_amp))
        record = {"epoch": epoch, "train_loss": _mean_over_processes(losses, ctx),
                  "lr": optimizer.param_groups[0]["lr"]}
        scheduler.step()
        if ctx.is_main:
            if valid_audio is not None:
                logits = predict(model, frontend, valid_audio, recipe, ctx.device, loader=loader)
                value = metric(metric_targets(valid, spec),
                               activate_scores(torch.from_numpy(logits), spec.multilabel), clip_masks(valid))
                record["valid_" + spec.main_metric] = float(value)
                if value > best["metric"]:
                    best = {"epoch": epoch, "metric": float(value)}
                    atomic_torch_save(workdir / "best.pt", model.state_dict())
            history.append(record)
            state = {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "history": history, "best": best,
                     "processes": ctx.world_size}
            if use_amp:
                state["scaler"] = scaler.state_dict()
            atomic_torch_save(last, state)
            if on_epoch is not None:
                on_epoch(record)
        ctx.barrier()

    result = None
    if ctx.is_main:
        if valid_audio is not None and (workdir / "best.pt").exists():
            model.load_state_dict(torch.load(workdir / "best.pt", map_location=ctx.device, weights_only=True))
        else:
            best = {"epoch": recipe.epochs - 1, "metric": float("nan")}
        scores = activate_scores(torch.from_numpy(predict(model, frontend, test_audio, recipe, ctx.device,
                                                          loader=loader)),
                                 spec.multilabel)
        value = float(metric(metric_targets(test, spec), scores, clip_masks(test)))
        history = history or []
        result = FinetuneResult(scores=scores, test_metric=value, best_epoch=int(best["epoch"]), history=history,
                                seconds=time.perf_counter() - started, skipped=skipped, resumed_from_epoch=resumed,
                                processes=ctx.world_size)
        atomic_savez(done, scores=scores, clip_ids=np.array([c.clip_id for c in test], dtype=str),
                     meta_json=np.array(json.dumps({"test_metric": value, "best_epoch": result.best_epoch,
                                                    "history": history, "seconds": result.seconds,
                                                    "processes": ctx.world_size})))
    ctx.barrier()
    if result is None:  # other ranks read what rank 0 wrote
        result = _load_result(done, skipped)
    return result


def _mean_over_processes(values: list[float], ctx: DistContext) -> float:
    """Mean of per-step losses over all processes (each process saw its own share of every batch)."""
    if not values:
        return float("nan")
    total = torch.tensor([float(np.sum(values)), float(len(values))], dtype=torch.float64,
                         device=ctx.device if ctx.distributed else "cpu")  # nccl reduces CUDA tensors only
    if ctx.distributed:
        torch.distributed.all_reduce(total)
    return float(total[0] / total[1])


def _train_step(model: nn.Module, frontend: TrainingFrontend, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, micro: list[dict[str, Any]], recipe: FinetuneRecipe, device: str,
                use_amp: bool) -> float:
    """One optimizer step over this process's micro-batches; returns the mean loss."""
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for m, b in enumerate(micro):
        wave, target = b["wave"].to(device), b["target"].to(device)
        mask = None if b["mask"] is None else b["mask"].to(device)
        x = frontend(wave, seed=b["mel_seed"])
        torch.manual_seed(b["dropout_seed"])  # dropout masks follow the samples, not the process layout
        if b["lam"] is not None:
            lam, perm = b["lam"].to(device), b["perm"].to(device)
            x = x * lam.view(-1, 1, 1, 1) + x[perm] * (1.0 - lam.view(-1, 1, 1, 1))
            target = target * lam.view(-1, 1) + target[perm] * (1.0 - lam.view(-1, 1))
        sync = m == len(micro) - 1 or not hasattr(model, "no_sync")  # DDP: all-reduce once, after the last
        with _running_stats_frozen(model, m > 0), (model.no_sync() if not sync else contextlib.nullcontext()):
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
                logits = model(x)
            loss = _loss(logits.float(), target, mask, recipe.loss)
            scaler.scale(loss / len(micro)).backward()
        total += float(loss.detach())
    scaler.step(optimizer)
    scaler.update()
    return total / len(micro)


class _running_stats_frozen:
    """Momentum 0 for every BatchNorm while active: the batch still normalises itself, running stats stay put."""

    def __init__(self, model: nn.Module, active: bool) -> None:
        self.norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if active else []
        self.saved: list[float | None] = []

    def __enter__(self) -> None:
        self.saved = [m.momentum for m in self.norms]
        for m in self.norms:
            m.momentum = 0.0

    def __exit__(self, *exc: object) -> None:
        for m, momentum in zip(self.norms, self.saved):
            m.momentum = momentum


def metric_targets(clips: Sequence[Clip], spec: TaskSpec) -> np.ndarray:
    """Targets as the metrics take them: class indices, or multi-hot rows for multilabel tasks."""
    if spec.multilabel:
        return np.stack([c.target.astype(np.float32) for c in clips])
    return np.array([int(c.target) for c in clips], dtype=np.int64)


def _matches(workdir: Path, finger: dict[str, Any]) -> bool:
    path = workdir / "fingerprint.json"
    if not path.exists():
        return False
    stored = json.loads(path.read_text())
    current = json.loads(json.dumps(finger, sort_keys=True, default=str))
    if stored != current:
        raise RuntimeError(f"{workdir} holds a fine-tuning run with other settings; remove it or use another "
                           f"cache directory (stored: {sorted(k for k in stored if stored[k] != current.get(k))} "
                           "differ)")
    return True


def _load_result(path: Path, skipped: dict[str, str]) -> FinetuneResult:
    with np.load(path) as data:
        meta = json.loads(str(data["meta_json"]))
        scores = data["scores"]
    return FinetuneResult(scores=scores, test_metric=float(meta["test_metric"]), best_epoch=int(meta["best_epoch"]),
                          history=list(meta["history"]), seconds=float(meta["seconds"]), skipped=skipped,
                          processes=int(meta.get("processes", 1)))


def _clip_digest(*splits: list[Clip] | None) -> str:
    """Which clips (readable ones, by id and labels) each split holds: a run on other data is never reused. Paths
    are left out, so a dataset moved to another folder still finds its runs."""
    listing = [None if clips is None else [(c.clip_id, np.asarray(c.target).tolist()) for c in clips]
               for clips in splits]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()
