"""Any HEAR 2021 module as a benchmark model: ``--models hear:MODULE[:CHECKPOINT]``.

A HEAR module is an importable Python module with ``load_model``, ``get_scene_embeddings`` and
``get_timestamp_embeddings`` (https://hearbenchmark.com/hear-api.html). :class:`HearModuleEmbedder` imports it,
calls ``load_model(CHECKPOINT, **options)`` (or ``load_model(**options)`` without a checkpoint), reads the
model's ``sample_rate``, ``scene_embedding_size`` and ``timestamp_embedding_size``, and offers what the harness
needs:

* ``embedder(audio) -> (n, scene_embedding_size)`` float32 (the :class:`~.embeddings.Embedder` protocol); audio
  is read at the module's own ``sample_rate`` (the cache resamples);
* ``embedder.timestamps(audio) -> (emb (n, T, timestamp_embedding_size) float32, ts (n, T) float64 in ms)`` for
  event tasks.

Every output is checked: a tensor, float32, the right rank, one row per clip, the declared size, finite values,
and for timestamps an ``(n, T)`` array of non-decreasing times. A violation raises :class:`HearModuleError` naming
the module and the problem.

The cache key (``describe()``) holds the module name, its version (the installed distribution that provides it,
else the module's ``__version__``), the options, the checkpoint's sha256 and the sizes, so another version,
other options or another checkpoint never reuse embeddings.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models.weights import sha256_of

PREFIX = "hear:"
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_API = ("load_model", "get_scene_embeddings", "get_timestamp_embeddings")


class HearModuleError(ValueError):
    """A HEAR module is missing, cannot load, or violates the HEAR API; the message names the module."""


def is_hear_spec(spec: str) -> bool:
    return spec.startswith(PREFIX)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"hear:MODULE[:CHECKPOINT]"`` -> ``(MODULE, CHECKPOINT or None)``; the checkpoint may itself hold colons."""
    if not is_hear_spec(spec):
        raise ValueError(f"model {spec!r}: a HEAR module is given as hear:MODULE[:CHECKPOINT]")
    module, sep, checkpoint = spec[len(PREFIX):].partition(":")
    if not _MODULE_NAME.fullmatch(module):
        raise ValueError(f"model {spec!r}: {module!r} is not a Python module name (expected hear:MODULE[:CHECKPOINT], "
                         "e.g. hear:hearbaseline.torchcrepe or hear:my_pkg.module:/path/model.pt)")
    if sep and not checkpoint:
        raise ValueError(f"model {spec!r}: empty checkpoint after ':' (leave out the ':' for none)")
    return module, checkpoint or None


def parse_options(items: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``["MODULE={json object}", ...]`` (the ``--hear-options`` flag) -> ``{MODULE: options}``."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        module, sep, text = item.partition("=")
        if not sep or not module:
            raise ValueError(f"--hear-options expects MODULE='{{\"key\": value}}', got {item!r}")
        try:
            options = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--hear-options {module}: not valid JSON ({err.msg} at position {err.pos}): {text!r}"
                             ) from None
        if not isinstance(options, dict):
            raise ValueError(f"--hear-options {module}: expected a JSON object, got {text!r}")
        if module in out:
            raise ValueError(f"--hear-options given twice for {module}")
        out[module] = options
    return out


def module_version(module_name: str, module: Any) -> tuple[str, str | None]:
    """``(version, distribution)``: the installed distribution providing the module's top-level package, else the
    module's (or its package's) ``__version__``, else ``"unknown"``."""
    top = module_name.split(".")[0]
    for dist in md.packages_distributions().get(top, []):
        try:
            return md.version(dist), dist
        except md.PackageNotFoundError:
            continue
    for name in (module_name, top):
        version = getattr(sys.modules.get(name), "__version__", None)
        if version is not None:
            return str(version), None
    return "unknown", None


class HearModuleEmbedder:
    """A third-party HEAR module used through its public functions (see the module docstring).

    Args:
        module_name: importable module, e.g. ``"hearbaseline.torchcrepe"``.
        checkpoint: file passed to ``load_model`` (``None``: ``load_model`` is called without one).
        options: keyword arguments of ``load_model`` (JSON-compatible).
        device: where the model runs (``model.to(device)`` when it is a ``torch.nn.Module``).
    """

    def __init__(self, module_name: str, checkpoint: str | None = None, options: dict[str, Any] | None = None,
                 device: str = "cpu") -> None:
        self.module_name = module_name
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.options = dict(options or {})
        self.device = device
        self.spec = PREFIX + module_name + (f":{checkpoint}" if checkpoint else "")
        if self.checkpoint is not None and not self.checkpoint.is_file():
            raise HearModuleError(f"HEAR module {module_name}: checkpoint {self.checkpoint} does not exist")
        self.checkpoint_sha256 = sha256_of(self.checkpoint) if self.checkpoint is not None else None
        self._load()
        self.name = module_name if self.checkpoint is None else f"{module_name}-{self.checkpoint.stem}"
        label = f"HEAR module {module_name} {self.version}"
        self.weights_label = label + (f", checkpoint {self.checkpoint.name}" if self.checkpoint else "")

    # -- loading ----------------------------------------------------------------------------------------------

    def _fail(self, problem: str) -> HearModuleError:
        return HearModuleError(f"HEAR module {self.module_name}: {problem}")

    def _load(self) -> None:
        try:
            self.module = importlib.import_module(self.module_name)
        except ImportError as err:
            raise self._fail(f"cannot be imported ({type(err).__name__}: {err}); install the package that "
                             "provides it, or put its folder on PYTHONPATH") from err
        missing = [f for f in _API if not callable(getattr(self.module, f, None))]
        if missing:
            raise self._fail(f"does not follow the HEAR API: no function {', '.join(missing)}")
        self.version, self.distribution = module_version(self.module_name, self.module)
        args = () if self.checkpoint is None else (str(self.checkpoint),)
        try:
            self.model = self.module.load_model(*args, **self.options)
        except TypeError as err:
            raise self._fail(f"load_model({', '.join([*map(repr, args), *self.options])}) failed: {err} "
                             "(check --hear-options)") from err
        except Exception as err:  # anything a third-party loader raises, named as its module's failure
            raise self._fail(f"load_model failed: {type(err).__name__}: {err}") from err
        for attr in ("sample_rate", "scene_embedding_size", "timestamp_embedding_size"):
            value = getattr(self.model, attr, None)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise self._fail(f"the model from load_model has no positive integer attribute {attr!r} "
                                 f"(got {value!r}), which the HEAR API requires")
        self.sample_rate = int(self.model.sample_rate)
        self.scene_embedding_size = int(self.model.scene_embedding_size)
        self.timestamp_embedding_size = int(self.model.timestamp_embedding_size)
        if isinstance(self.model, torch.nn.Module):
            self.model = self.model.to(self.device).eval()

    def __getstate__(self) -> dict[str, Any]:
        # a module object cannot be pickled (Ray ships embedders to its workers): the worker imports and loads it
        return {k: v for k, v in self.__dict__.items() if k not in ("module", "model")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._load()

    # -- the Embedder protocol ---------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {"kind": "hear-module", "module": self.module_name, "version": self.version,
                "distribution": self.distribution, "options": self.options,
                "checkpoint": None if self.checkpoint is None else self.checkpoint.name,
                "weights": {"sha256": self.checkpoint_sha256},
                "sample_rate": self.sample_rate, "scene_embedding_size": self.scene_embedding_size,
                "timestamp_embedding_size": self.timestamp_embedding_size}

    def provenance_line(self) -> str:
        """One line for the report's provenance: module, version, distribution, options and checkpoint."""
        dist = f" (distribution {self.distribution})" if self.distribution else ""
        parts = [f"HEAR module `{self.module_name}` version {self.version}{dist}, {self.sample_rate} Hz"]
        if self.options:
            parts.append(f"options {json.dumps(self.options, sort_keys=True)}")
        if self.checkpoint is not None:
            parts.append(f"checkpoint {self.checkpoint} (sha256 {self.checkpoint_sha256})")
        return "; ".join(parts)

    def parameters_m(self) -> float | None:
        """Parameters in millions of the model ``load_model`` returned; ``None`` when it is not a
        ``torch.nn.Module`` or holds none (a wrapper whose network lives elsewhere: unknown, not zero)."""
        if not isinstance(self.model, torch.nn.Module):
            return None
        count = sum(p.numel() for p in self.model.parameters())
        return count / 1e6 if count else None

    def _audio(self, audio: torch.Tensor) -> torch.Tensor:
        if not isinstance(audio, torch.Tensor) or audio.ndim != 2:
            raise ValueError(f"audio must be a (n_sounds, n_samples) tensor, got {getattr(audio, 'shape', audio)}")
        return audio.to(torch.float32).to(self.device)

    def _check_embeddings(self, out: Any, function: str, n: int, shape_tail: tuple[int, ...], size: int,
                          size_attr: str) -> torch.Tensor:
        if not isinstance(out, torch.Tensor):
            raise self._fail(f"{function} returned {type(out).__name__}, not a torch.Tensor")
        expected = f"(n_sounds={n}, {', '.join([*map(str, shape_tail), str(size)])})"
        if out.ndim != len(shape_tail) + 2:
            raise self._fail(f"{function} returned shape {tuple(out.shape)}; expected {expected}")
        if out.shape[0] != n:
            raise self._fail(f"{function} returned {out.shape[0]} rows for a batch of {n} sounds "
                             f"(shape {tuple(out.shape)}; expected {expected})")
        if out.shape[-1] != size:
            raise self._fail(f"{function} returned embeddings of size {out.shape[-1]} but the model's {size_attr} "
                             f"is {size} (shape {tuple(out.shape)})")
        if out.dtype != torch.float32:
            raise self._fail(f"{function} returned dtype {out.dtype}; the HEAR API requires float32")
        bad = ~torch.isfinite(out)
        if bad.any():
            what = "NaN" if torch.isnan(out).any() else "inf"
            raise self._fail(f"{function} returned {int(bad.sum())} non-finite value(s) ({what}) in shape "
                             f"{tuple(out.shape)}")
        return out

    @torch.no_grad()
    def __call__(self, audio: torch.Tensor) -> torch.Tensor:
        """Scene embeddings ``(n, scene_embedding_size)`` float32 on the CPU."""
        audio = self._audio(audio)
        out = self.module.get_scene_embeddings(audio, self.model)
        return self._check_embeddings(out, "get_scene_embeddings", audio.shape[0], (), self.scene_embedding_size,
                                      "scene_embedding_size").detach().cpu()

    @torch.no_grad()
    def timestamps(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Timestamp embeddings: ``(emb (n, T, timestamp_embedding_size) float32, ts (n, T) float64 in ms)``."""
        audio = self._audio(audio)
        n = audio.shape[0]
        result = self.module.get_timestamp_embeddings(audio, self.model)
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise self._fail("get_timestamp_embeddings must return a tuple (embeddings, timestamps), got "
                             f"{type(result).__name__}")
        emb, ts = result
        if not isinstance(emb, torch.Tensor) or emb.ndim != 3:
            raise self._fail(f"get_timestamp_embeddings returned embeddings of shape "
                             f"{tuple(getattr(emb, 'shape', ()))}; expected (n_sounds={n}, n_timestamps, "
                             f"{self.timestamp_embedding_size})")
        emb = self._check_embeddings(emb, "get_timestamp_embeddings", n, (emb.shape[1],),
                                     self.timestamp_embedding_size, "timestamp_embedding_size")
        if not isinstance(ts, torch.Tensor) or tuple(ts.shape) != tuple(emb.shape[:2]):
            raise self._fail(f"get_timestamp_embeddings returned timestamps of shape "
                             f"{tuple(getattr(ts, 'shape', ()))}; expected {tuple(emb.shape[:2])} "
                             "(one time in ms per embedding)")
        ts = ts.detach().cpu().to(torch.float64)
        if not torch.isfinite(ts).all():
            raise self._fail("get_timestamp_embeddings returned non-finite timestamps")
        if ts.shape[1] > 1 and (ts.diff(dim=1) < 0).any():
            raise self._fail("get_timestamp_embeddings returned timestamps that decrease within a sound")
        return emb.detach().cpu(), ts


def build_hear_embedder(spec: str, options: dict[str, dict[str, Any]] | None = None,
                        device: str = "cpu") -> HearModuleEmbedder:
    """The embedder for ``spec`` (``hear:MODULE[:CHECKPOINT]``) with ``options[MODULE]`` as ``load_model``
    keyword arguments."""
    module, checkpoint = parse_spec(spec)
    return HearModuleEmbedder(module, checkpoint, (options or {}).get(module), device)
