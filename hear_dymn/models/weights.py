"""Released EfficientAT weights: one ``PretrainedCfg`` per file, download into the torch hub cache, checked load.

Release files and reported numbers come from EfficientAT (fschmid56/EfficientAT @ a425fdc): file names from
``models/dymn/model.py`` L18-33 and ``models/mn/model.py`` L24-70; parameters, MACs (10 s clip) and AudioSet mAP
from its README table.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

RELEASE_URL = "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/"


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable, of another architecture, or unavailable."""


class WeightsUnavailableError(CheckpointError):
    """Released weights are neither in the cache nor downloadable (e.g. offline)."""


@dataclass(frozen=True)
class PretrainedCfg:
    """One set of released weights.

    Attributes:
        name: EfficientAT's name, e.g. ``"dymn10_as"``.
        arch: architecture it belongs to, e.g. ``"dymn10"``.
        file_name: release asset name.
        sha256: expected digest; ``None`` where it has not been pinned yet (the digest of the file actually
            loaded is always recorded in ``model.weights_info``).
        reported: numbers the authors report (params_m, gmacs for a 10 s clip, audioset_map in %).
        dyconv_temperature: kernel-attention temperature the weights are used with (AudioSet: 1).
    """

    name: str
    arch: str
    file_name: str
    num_classes: int = 527
    classifier: str = "classifier.5"
    sha256: str | None = None
    dyconv_temperature: float = 1.0
    sample_rate: int = 32000
    reported: Mapping[str, float] = field(default_factory=dict)
    source: str = "EfficientAT README (fschmid56/EfficientAT @ a425fdc)"

    @property
    def url(self) -> str:
        return RELEASE_URL + self.file_name

    def cache_path(self) -> Path:
        return Path(torch.hub.get_dir()) / "checkpoints" / self.file_name

    def fetch(self, progress: bool = True) -> Path:
        """Path of the cached file, downloading it first if needed; checks the digest where one is pinned."""
        path = self.cache_path()
        if not path.exists():
            download(self.url, path, progress=progress, hint_name=self.name, verify=self.verify)
        elif self.sha256 is not None:
            self.verify(path)
        return path

    def verify(self, path: Path) -> None:
        """Check the file's digest where one is pinned; otherwise that it reads as a checkpoint (a truncated or
        failed download does not)."""
        if self.sha256 is not None:
            digest = sha256_of(path)
            if digest != self.sha256:
                raise CheckpointError(
                    f"{path} has sha256 {digest}, but {self.name} is pinned to {self.sha256}. The file is corrupt "
                    f"or not the release asset {self.file_name}; delete it and download again."
                )
            return
        read_state_dict(path)


def _cfg(name: str, arch: str, file_name: str, params_m: float, gmacs: float, audioset_map: float) -> PretrainedCfg:
    return PretrainedCfg(
        name=name, arch=arch, file_name=file_name,
        reported={"params_m": params_m, "gmacs": gmacs, "audioset_map": audioset_map},
    )


PRETRAINED: dict[str, PretrainedCfg] = {
    cfg.name: cfg
    for cfg in (
        _cfg("dymn04_as", "dymn04", "dymn04_as.pt", 1.97, 0.12, 45.0),
        _cfg("dymn10_as", "dymn10", "dymn10_as.pt", 10.57, 0.58, 47.7),
        _cfg("dymn20_as", "dymn20", "dymn20_as_mAP_493.pt", 40.02, 2.2, 49.1),
        _cfg("mn04_as", "mn04", "mn04_as_mAP_432.pt", 0.983, 0.11, 43.2),
        _cfg("mn05_as", "mn05", "mn05_as_mAP_443.pt", 1.43, 0.16, 44.3),
        _cfg("mn10_as", "mn10", "mn10_as_mAP_471.pt", 4.88, 0.54, 47.1),
        _cfg("mn20_as", "mn20", "mn20_as_mAP_478.pt", 17.91, 2.06, 47.8),
        _cfg("mn30_as", "mn30", "mn30_as_mAP_482.pt", 39.09, 4.55, 48.2),
        _cfg("mn40_as", "mn40", "mn40_as_mAP_484.pt", 68.43, 8.03, 48.4),
        _cfg("mn40_as_ext", "mn40", "mn40_as_ext_mAP_487.pt", 68.43, 8.03, 48.7),
    )
}

DEFAULT_WEIGHTS = {cfg.arch: cfg.name for cfg in reversed(PRETRAINED.values())}  # first listed per arch wins


def list_pretrained(pattern: str = "*") -> list[str]:
    import fnmatch

    return [name for name in PRETRAINED if fnmatch.fnmatch(name, pattern)]


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    try:
        return PRETRAINED[name]
    except KeyError:
        raise KeyError(f"unknown weights {name!r}; known: {', '.join(PRETRAINED)}") from None


def pretrained_cfg_for(arch: str, pretrained: bool | str) -> PretrainedCfg:
    """Resolve ``create_model``'s ``pretrained`` argument for an architecture."""
    if pretrained is True:
        if arch not in DEFAULT_WEIGHTS:
            raise KeyError(f"no released weights for {arch!r}; pass checkpoint_path= instead")
        return PRETRAINED[DEFAULT_WEIGHTS[arch]]
    cfg = get_pretrained_cfg(str(pretrained))
    if cfg.arch != arch:
        raise ValueError(f"weights {cfg.name!r} are for {cfg.arch!r}, not {arch!r}")
    return cfg


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, progress: bool = True, hint_name: str = "",
             verify: Callable[[Path], None] | None = None) -> None:
    """Download ``url`` to ``dest`` atomically (temp file + rename); a clear error when offline.

    ``verify`` (e.g. a digest check) runs on the downloaded file before it is moved into place: a file that fails
    it is deleted, never cached.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    os.close(fd)
    try:
        try:
            torch.hub.download_url_to_file(url, tmp, progress=progress)
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            what = f"weights {hint_name!r}" if hint_name else "checkpoint"
            raise WeightsUnavailableError(
            f"Could not download {what} from {url} ({err}).\n"
            f"Without network access, put the file at {dest}\n"
            f"(the torch hub cache; set TORCH_HOME to move it), or pass the local file with "
            f"checkpoint_path=... (HEAR: load_model('path/to/{dest.name}'))."
            ) from err
        if verify is not None:
            try:
                verify(Path(tmp))
            except CheckpointError as err:
                raise CheckpointError(f"the file downloaded from {url} failed its check (incomplete download?): "
                                      f"{err}") from err
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read an EfficientAT-format checkpoint (a plain state_dict) safely with ``weights_only=True``.

    Also accepts ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers (hear_dymn's fine-tuning checkpoints).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for non-checkpoint files
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {type(err).__name__}: {err}") from err
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state_dict (a mapping of parameter names to tensors)")
    return dict(obj)


def shape_signature(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def describe_mismatch(model: nn.Module, state_dict: Mapping[str, torch.Tensor], limit: int = 5) -> str:
    """Human-readable first differences between a model's keys/shapes and a state_dict's."""
    expected = shape_signature(model)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {expected[k]}"
        for k in expected if k in state_dict and tuple(state_dict[k].shape) != expected[k]
    ]
    parts = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong)):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{len(items)} {title}: {', '.join(items[:limit])}{more}")
    return "; ".join(parts)


def num_classes_of(state_dict: Mapping[str, torch.Tensor], classifier: str = "classifier.5") -> int:
    key = f"{classifier}.weight"
    if key not in state_dict:
        raise CheckpointError(f"state_dict has no {key!r}; cannot tell its number of classes")
    return int(state_dict[key].shape[0])


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str,
                            classifier: str = "classifier.5",
                            identify: Callable[[Mapping[str, torch.Tensor]], str] | None = None) -> list[str]:
    """Load strictly, except that a classifier of another size is dropped (and logged). Returns dropped keys.

    ``identify`` names the architecture a state_dict fits (or raises ``CheckpointError``); when given, a mismatch
    error says which architecture the checkpoint looks like.
    """
    state_dict = dict(state_dict)
    own = model.state_dict()
    dropped = []
    head = f"{classifier}.weight"
    if head in state_dict and head in own and state_dict[head].shape != own[head].shape:
        logger.info("%s: dropping %s (%d classes in checkpoint, %d in model)", source, classifier,
                    state_dict[head].shape[0], own[head].shape[0])
        dropped = [k for k in list(state_dict) if k.startswith(classifier + ".")]
        for key in dropped:
            del state_dict[key]
    problem = describe_mismatch(model, {**state_dict, **{k: own[k] for k in dropped}})
    if problem:
        arch = getattr(model, "arch", type(model).__name__)
        found = ""
        if identify is not None:
            try:
                found = f" It looks like a {identify(state_dict)!r} checkpoint."
            except CheckpointError:
                pass
        raise CheckpointError(f"{source} does not fit architecture {arch!r}: {problem}.{found}")
    missing, unexpected = model.load_state_dict(state_dict, strict=not dropped)
    assert not unexpected and set(missing) == set(dropped), (missing, unexpected)
    return dropped


def load_checkpoint_into(model: nn.Module, path: Path, cfg: PretrainedCfg | None = None,
                         identify: Callable[[Mapping[str, torch.Tensor]], str] | None = None) -> None:
    """Read ``path``, load it into ``model`` (checked; ``identify`` as in :func:`load_state_dict_checked`), and record
    name/path/sha256 in ``model.weights_info``."""
    try:
        state_dict = read_state_dict(path)
    except CheckpointError as err:
        if cfg is None:
            raise
        raise CheckpointError(f"{err}\nThis is the cached copy of {cfg.name}: delete it to download it again "
                              f"from {cfg.url}.") from err
    load_state_dict_checked(model, state_dict, source=str(path), classifier=cfg.classifier if cfg else "classifier.5",
                            identify=identify)
    model.weights_info = {"name": cfg.name if cfg else None, "path": str(path), "sha256": sha256_of(Path(path))}
