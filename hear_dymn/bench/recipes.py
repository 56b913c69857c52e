"""Fine-tuning recipes: EfficientAT's downstream training settings as named presets, with their source.

The values below are the argparse defaults of the reference scripts at fschmid56/EfficientAT @ a425fdc
(``ex_esc50.py`` L187-223, ``ex_fsd50k.py`` L249-289, ``ex_openmic.py`` L214-250) and, for DyMN, the learning rate
and batch size its README gives for each script (README L323 ESC-50, L264 FSD50K, L351 OpenMIC). Shared by all
three scripts:

* Adam, weight decay 0; ``LambdaLR(exp_warmup_linear_down(10, 65, 10, 0.01))`` stepped once per epoch
  (``helpers/utils.py`` L56-87): exponential warm-up over 10 epochs, then a linear ramp down to 1 % over 65 epochs;
  80 epochs.
* Spectrogram mixup with alpha 0.3, lambda = max(lambda, 1 - lambda) per sample (``helpers/utils.py`` L90-95).
* Waveform augmentation: integer gain in [-12, 11] dB, circular roll by up to +-4000 samples, and with probability
  0.5 "wavmix" with another training clip (Beta(2, 2), zero-mean mixing, labels mixed)
  (``datasets/esc50.py`` L39-71, ``datasets/helpers/audiodatasets.py`` L26-49).
* Mel jitter: fmin raised by up to 10 Hz and fmax moved within +-1000 Hz per batch; no frequency or time masking
  (``freqm = timem = 0``) (``models/preprocess.py`` L45-63).
* DyConv temperature stays at the checkpoint's value (``pretrain_final_temp`` 1.0).
* ESC-50: 5 s clips (padded or cut at the end), cross-entropy on soft targets, evaluated on the test fold after each
  epoch; FSD50K: random 10 s crops for training, BCE, validation on ``valid``; OpenMIC: the first 10 s, BCE masked
  by the annotation mask (averaged over all entries, masked ones counting as zero); its wavmix zeroes unannotated
  labels, mixes, binarises at 0.5 and takes the union of the two masks (``datasets/openmic.py`` L74-97).

The reference keeps the last epoch. Here the reported test result comes from the epoch with the best validation
metric when the task has a validation split (FSD50K, OpenMIC), and from the last epoch otherwise (ESC-50's folds).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

REFERENCE = "fschmid56/EfficientAT @ a425fdc"


@dataclass(frozen=True)
class FinetuneRecipe:
    """Everything that defines one fine-tuning run apart from model, data and seed."""

    name: str
    source: str
    lr: float
    batch_size: int
    epochs: int = 80
    warm_up_len: int = 10
    ramp_down_start: int = 10
    ramp_down_len: int = 65
    last_lr_value: float = 0.01
    weight_decay: float = 0.0
    mixup_alpha: float = 0.3  # 0 disables spectrogram mixup
    roll_samples: int = 4000  # 0 disables the circular roll
    wavmix_prob: float = 0.5
    wavmix_beta: float = 2.0
    gain_db: int = 12  # 0 disables the gain augmentation
    fmin_aug_range: int = 10
    fmax_aug_range: int = 2000
    freqm: int = 0  # frequency-mask width (bins); 0 = off as in the reference scripts
    timem: int = 0  # time-mask width (frames)
    clip_seconds: float = 10.0
    train_crop: Literal["start", "random"] = "start"
    eval_length: Literal["clip", "full"] = "clip"  # "full": whole clips at evaluation (variable length)
    loss: Literal["ce", "bce"] = "ce"

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.batch_size < 1 or self.epochs < 1:
            raise ValueError(f"recipe {self.name!r}: lr, batch_size and epochs must be positive")
        if not 0.0 <= self.wavmix_prob <= 1.0:
            raise ValueError(f"recipe {self.name!r}: wavmix_prob must be in [0, 1], got {self.wavmix_prob}")

    def lr_multiplier(self, epoch: int) -> float:
        """The reference schedule: exponential warm-up times a linear ramp down, evaluated per epoch."""
        warm = 1.0
        if epoch < self.warm_up_len:
            phase = 1.0 - min(max(epoch, 0.5), self.warm_up_len) / self.warm_up_len
            warm = math.exp(-5.0 * phase * phase)
        if epoch <= self.ramp_down_start:
            down = 1.0
        elif epoch - self.ramp_down_start < self.ramp_down_len:
            left = self.ramp_down_len - epoch + self.ramp_down_start
            down = self.last_lr_value + (1.0 - self.last_lr_value) * left / self.ramp_down_len
        else:
            down = self.last_lr_value
        return warm * down


def _paper(task: str, family: str, lr: float, batch_size: int, source: str, **task_settings) -> FinetuneRecipe:
    return FinetuneRecipe(name=f"paper:{task}-{family}", source=f"{REFERENCE}, {source}", lr=lr,
                          batch_size=batch_size, **task_settings)


_ESC50 = dict(clip_seconds=5.0, train_crop="start", eval_length="clip", loss="ce")
_FSD50K = dict(clip_seconds=10.0, train_crop="random", eval_length="full", loss="bce")
_OPENMIC = dict(clip_seconds=10.0, train_crop="start", eval_length="clip", loss="bce")

PAPER_RECIPES: dict[tuple[str, str], FinetuneRecipe] = {
    ("esc50", "dymn"): _paper("esc50", "dymn", 4e-5, 64, "README L323 (ex_esc50.py --lr=4e-5 --batch_size=64)",
                              **_ESC50),
    ("esc50", "mn"): _paper("esc50", "mn", 6e-5, 128, "ex_esc50.py L187, L206 defaults", **_ESC50),
    ("fsd50k", "dymn"): _paper("fsd50k", "dymn", 4e-5, 32,
                               "README L264 (ex_fsd50k.py --lr=0.00004 --batch_size=32)", **_FSD50K),
    ("fsd50k", "mn"): _paper("fsd50k", "mn", 7e-5, 64, "ex_fsd50k.py L251, L272 defaults", **_FSD50K),
    ("openmic", "dymn"): _paper("openmic", "dymn", 2e-5, 32,
                                "README L351 (ex_openmic.py --lr=2e-5 --batch_size=32)", **_OPENMIC),
    ("openmic", "mn"): _paper("openmic", "mn", 1e-5, 64, "ex_openmic.py L216, L233 defaults", **_OPENMIC),
}

# Smoke-test settings for the offline quick suite: 2 epochs on the miniatures, no warm-up, a larger learning rate
# so that two epochs move the weights at all. Not the paper's recipe; the report names the preset on every row.
QUICK_OVERRIDES = dict(epochs=2, batch_size=8, lr=5e-4, warm_up_len=0, ramp_down_start=1, ramp_down_len=1,
                       last_lr_value=0.1)

FINETUNE_PRESETS = ("paper", "quick")


def family_of(arch: str) -> str:
    return "dymn" if arch.startswith("dymn") else "mn"


def recipe_for(task_name: str, arch: str, multilabel: bool, preset: str = "paper", epochs: int | None = None,
               clip_seconds: float | None = None) -> FinetuneRecipe:
    """The preset recipe for ``task_name`` (``esc50``/``fsd50k``/``openmic``; other tasks borrow ESC-50's recipe
    when multiclass and FSD50K's when multilabel) and the architecture's family (DyMN or MN).

    ``clip_seconds`` sets the training clip length of a borrowed recipe (a HEAR task's clip duration); the paper's
    three tasks keep their reference lengths (ESC-50 5 s, FSD50K and OpenMIC 10 s) whatever it says."""
    if preset not in FINETUNE_PRESETS:
        raise KeyError(f"unknown fine-tuning preset {preset!r}; presets: {', '.join(FINETUNE_PRESETS)}")
    base_task = task_name if task_name in ("esc50", "fsd50k", "openmic") else ("fsd50k" if multilabel else "esc50")
    recipe = PAPER_RECIPES[(base_task, family_of(arch))]
    if base_task != task_name:
        recipe = replace(recipe, name=f"{recipe.name} (for {task_name})",
                         clip_seconds=clip_seconds or recipe.clip_seconds)
    if preset == "quick":
        recipe = replace(recipe, name=recipe.name.replace("paper:", "quick:"),
                         source=f"{recipe.source}, with quick-suite overrides {QUICK_OVERRIDES}", **QUICK_OVERRIDES)
    if epochs is not None:
        recipe = replace(recipe, epochs=int(epochs))
    return recipe
