"""The benchmark suite: models x tasks x protocols -> result JSONs, prediction files and leaderboard reports.

Suites:
* ``quick`` (the offline default): the synthetic miniatures of ESC-50, FSD50K and OpenMIC and a small HEAR event
  task (``hear:mini_events``, scored through the timestamp API with the HEAR event protocol), written on the fly;
  models dymn04, dymn10, mn10 and the log-mel baseline; linear and mlp probes. Architectures given by name use
  their released AudioSet weights when these are available (cached or downloadable) and otherwise **random init**
  (seeded), which the reports state on every row.
* ``paper``: the real ESC-50, FSD50K and OpenMIC-2018 (``--data esc50=PATH fsd50k=PATH openmic=PATH``) with the
  released weights of dymn04/10/20 and mn04/10/40 (required, never replaced by random weights).
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import platform
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from .. import threads as thread_budget
from ..hear import HearModel, EmbeddingConfig
from ..models import PRETRAINED, create_model, list_models
from ..models.random_weights import random_state_dict
from ..models.registry import infer_architecture
from ..models.weights import DEFAULT_WEIGHTS, WeightsUnavailableError, read_state_dict
from .atomic import atomic_savez, atomic_write_text
from .audio_store import AudioStore
from .embeddings import EmbeddingCache, ExtractionStats, HearEmbedder, LogMelBaseline, embedder_key
from .metrics import HEAR_SCENE_SCORES, hear_scene_scores
from .hear_module import HearModuleEmbedder, build_hear_embedder, is_hear_spec, parse_spec
from .finetune import (TRAINING_VERSION, DistContext, FinetuneData, clip_masks, init_distributed, metric_targets,
                       run_finetune)
from .pipeline import LoaderOptions
from .recipes import FINETUNE_PRESETS, recipe_for
from .run_folder import RunFolder, check_writable
from .probes import LINEAR_PRESETS, MLP_PRESETS, MLPProbeConfig, ProbeData, fit_linear_probe, fit_mlp_probe, fold_splits
from .tasks import Task, check_task_name, get_task

logger = logging.getLogger(__name__)

# Downstream results reported in the paper (full fine-tuning), shown beside measured rows and marked as reported.
PAPER_CITATION = ("Schmid, Koutini, Widmer: Dynamic Convolutional Neural Networks as Efficient Pre-trained Audio "
                  "Models, 2023 (arXiv:2310.15648)")
REPORTED_RESULTS = (
    {"model": "dymn20", "task": "esc50", "metric": "accuracy", "mean": 0.974},
    {"model": "dymn20", "task": "fsd50k", "metric": "map", "mean": 0.655},
    {"model": "dymn20", "task": "openmic", "metric": "masked_map", "mean": 0.855},
)


@dataclass(frozen=True)
class SuiteConfig:
    suite: str = "quick"
    models: tuple[str, ...] = ("dymn04", "dymn10", "mn10", "logmel")
    tasks: tuple[str, ...] = ("esc50", "fsd50k", "openmic", "hear:mini_events")
    protocols: tuple[str, ...] = ("linear", "mlp", "finetune")
    seeds: tuple[int, ...] = (0, 1)
    linear_preset: str = "default"
    mlp_preset: str = "quick"
    probe_precision: str = "float32"  # MLPProbeConfig.precision: "float32" or "bfloat16" (matrix products)
    out_dir: str | None = None  # None: output_folder() decides (reports/ for the default quick suite only)
    run_name: str | None = None  # folder name under reports/runs/ when out_dir is None (default: from the options)
    cache_dir: str = "cache"
    data: dict[str, str] = field(default_factory=dict)  # task -> dataset root
    allow_random_init: bool = True  # architectures by name fall back to seeded random init when weights are missing
    device: str = "cpu"
    finetune_preset: str = "quick"  # recipes.FINETUNE_PRESETS: "paper" (EfficientAT's recipes) or "quick"
    finetune_epochs: int | None = None  # None: the preset's epochs
    finetune_models: tuple[str, ...] | None = ("dymn04",)  # which of `models` to fine-tune; None: all networks
    finetune_seeds: tuple[int, ...] | None = (0,)  # None: the probes' `seeds`
    backend: str = "local"  # embedding extraction: "local" (this process) or "ray" (bench/ray_backend.py)
    ray_address: str | None = None  # None: a local Ray cluster on this machine
    ray_workers: int | None = None  # None: as many as the cluster fits
    ray_gpus_per_worker: float = 0.0
    ray_cpus_per_worker: float = 1.0  # also each worker's torch threads
    hear_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # HEAR module -> load_model kwargs
    loader_workers: int | None = None  # audio decoding processes (pipeline.py); None: the device's default
    audio_store: str = "int16"  # fine-tuning's decoded-audio store (audio_store.py): int16, float32 or off


SUITES: dict[str, dict[str, Any]] = {
    "quick": {},
    "paper": {"models": ("dymn04_as", "dymn10_as", "dymn20_as", "mn04_as", "mn10_as", "mn40_as_ext", "logmel"),
              "tasks": ("esc50", "fsd50k", "openmic"),
              "seeds": (0, 1, 2), "mlp_preset": "hear", "allow_random_init": False, "finetune_preset": "paper",
              "finetune_models": None, "finetune_seeds": None},
}


# options that change where and how a run computes, not its results: a default quick suite with these set is still
# the default quick suite (the committed example report)
_RESULT_NEUTRAL = ("out_dir", "run_name", "cache_dir", "backend", "ray_address", "ray_workers",
                   "ray_gpus_per_worker", "ray_cpus_per_worker", "loader_workers")
EXAMPLE_REPORT = Path("reports")  # the committed example, written by the default quick suite
# quick-suite task names whose miniature has another kind name (tasks.synthetic)
QUICK_MINIATURES = {"hear:mini_events": "hear_events"}
RUNS_FOLDER = EXAMPLE_REPORT / "runs"
AUDIO_STORES = ("int16", "float32", "off")


def is_default_quick(cfg: SuiteConfig) -> bool:
    default = suite_config("quick")
    return all(getattr(cfg, f.name) == getattr(default, f.name) for f in fields(SuiteConfig)
               if f.name not in _RESULT_NEUTRAL)


def run_name(cfg: SuiteConfig) -> str:
    """A folder name for the run: its suite, models, tasks and protocols, plus a short digest of any other option
    that differs from the suite's defaults (so that the same command always writes the same folder)."""
    if cfg.run_name:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+=-]*", cfg.run_name):
            raise ValueError(f"run name {cfg.run_name!r}: use letters, digits and . _ + = - (it names a folder)")
        return cfg.run_name
    models = [parse_spec(m)[0] if is_hear_spec(m) else Path(m).stem if m.endswith(".pt") else m
              for m in cfg.models]
    parts = [cfg.suite, "+".join(models), "+".join(t.replace(":", "_") for t in cfg.tasks), "+".join(cfg.protocols)]
    name = re.sub(r"[^A-Za-z0-9._+=-]", "_", "-".join(parts))
    default = suite_config(cfg.suite)
    other = {f.name: getattr(cfg, f.name) for f in fields(SuiteConfig)
             if f.name not in (*_RESULT_NEUTRAL, "suite", "models", "tasks", "protocols")
             and getattr(cfg, f.name) != getattr(default, f.name)}
    if other or len(name) > 80:
        digest = hashlib.sha256(json.dumps(other, sort_keys=True, default=str).encode()).hexdigest()[:8]
        name = f"{name[:80]}-{digest}"
    return name


def output_folder(cfg: SuiteConfig) -> Path:
    """``cfg.out_dir`` if set; else ``reports/`` for the default quick suite (unless it is given a run name) and
    ``reports/runs/<name>/`` for any other run, so that a custom run never overwrites the committed example."""
    if cfg.out_dir is not None:
        return Path(cfg.out_dir)
    return EXAMPLE_REPORT if is_default_quick(cfg) and not cfg.run_name else RUNS_FOLDER / run_name(cfg)


def suite_config(suite: str = "quick", **overrides: Any) -> SuiteConfig:
    if suite not in SUITES:
        raise KeyError(f"unknown suite {suite!r}; suites: {', '.join(SUITES)}")
    values = {**SUITES[suite], **{k: v for k, v in overrides.items() if v is not None}}
    return SuiteConfig(suite=suite, **values)


# ------------------------------------------------------------------------------------------------------------
# models


def build_embedder(spec: str, allow_random_init: bool, device: str = "cpu",
                   hear_options: dict[str, dict[str, Any]] | None = None):
    """``spec``: ``logmel``, an architecture (``dymn10``), a weights name (``dymn10_as``), a checkpoint path, or
    any HEAR module ``hear:MODULE[:CHECKPOINT]`` (``hear_options[MODULE]``: its ``load_model`` keyword arguments)."""
    if spec == "logmel":
        return LogMelBaseline()
    if is_hear_spec(spec):
        return build_hear_embedder(spec, hear_options, device)
    path = Path(spec)
    if spec.endswith(".pt") or path.exists():
        arch = infer_architecture(read_state_dict(path))
        network = create_model(arch, checkpoint_path=path)
        label = name = path.stem  # the file names the model: two checkpoints of one architecture stay apart
    elif spec in PRETRAINED:
        network = create_model(PRETRAINED[spec].arch, pretrained=spec)  # must be available: no fallback
        label = name = spec
        arch = PRETRAINED[spec].arch
    elif spec in list_models():
        arch = name = spec
        try:
            network = create_model(arch, pretrained=DEFAULT_WEIGHTS[arch]) if arch in DEFAULT_WEIGHTS else None
            label = DEFAULT_WEIGHTS.get(arch, "")
        except WeightsUnavailableError as err:  # only missing weights fall back; a damaged file is an error
            if not allow_random_init:
                raise
            logger.warning("%s: released weights unavailable (%s); using RANDOM INIT (seed 0)", arch,
                           str(err).splitlines()[0])
            network = None
        if network is None:
            network = create_model(arch)
            network.load_state_dict(random_state_dict(arch, seed=0))
            network.weights_info = {"name": None, "path": None, "sha256": None, "random_init_seed": 0}
            label = "random init"
    else:
        raise ValueError(f"model {spec!r} is neither 'logmel', an architecture ({', '.join(list_models())}), "
                         f"released weights ({', '.join(PRETRAINED)}) nor an existing checkpoint file")
    model = HearModel(network.eval(), EmbeddingConfig()).to(device)
    return HearEmbedder(name, model, label, spec=spec)


def model_complexity(embedder: HearEmbedder | LogMelBaseline) -> tuple[float | None, float | None]:
    """(params in M, GMACs per 10 s as reported by the authors) or (None, None) for the baseline."""
    if isinstance(embedder, HearModuleEmbedder):
        return embedder.parameters_m(), None
    if not isinstance(embedder, HearEmbedder):
        return None, None
    network = embedder.model.network
    params = sum(p.numel() for p in network.parameters()) / 1e6
    gmacs = next((cfg.reported["gmacs"] for cfg in PRETRAINED.values() if cfg.arch == network.arch), None)
    return params, gmacs


# ------------------------------------------------------------------------------------------------------------
# protocols


def _probe_data(emb) -> ProbeData:
    y = emb.targets.astype(np.int64) if emb.targets.ndim == 1 else emb.targets.astype(np.float32)
    return ProbeData(x=emb.x, y=y, mask=emb.mask, clip_ids=emb.clip_ids)


def _concat(parts: list[ProbeData]) -> ProbeData:
    mask = None if parts[0].mask is None else np.concatenate([p.mask for p in parts])
    return ProbeData(x=np.concatenate([p.x for p in parts]), y=np.concatenate([p.y for p in parts]), mask=mask,
                     clip_ids=[i for p in parts for i in p.clip_ids])


def evaluation_rounds(task: Task, data: dict[str, Any], concat: Callable[[list[Any]], Any] | None = None
                      ) -> list[tuple[str, Any, Any, Any]]:
    """(name, train, valid, test) per round: one per fold for k-fold tasks, one otherwise. ``data`` maps split
    names to :class:`ProbeData` (joined by ``_concat``) or to anything ``concat`` joins (event frames)."""
    spec = task.spec
    concat = concat or _concat
    if spec.protocol == "folds":
        return [(test, concat([data[s] for s in train]), data[valid], data[test])
                for train, valid, test in fold_splits(spec.splits)]
    train, valid, test = spec.splits[0], spec.splits[1], spec.splits[-1]
    return [(test, data[train], data[valid], data[test])]


def mlp_config(cfg: SuiteConfig) -> MLPProbeConfig:
    """The suite's MLP probe settings: its preset, trained on the suite's device at its probe precision."""
    return replace(MLP_PRESETS[cfg.mlp_preset], device=cfg.device, precision=cfg.probe_precision)


def run_probe(protocol: str, cfg: SuiteConfig, task: Task, train: ProbeData, valid: ProbeData | None,
              test: ProbeData, seed: int):
    kwargs = dict(multilabel=task.spec.multilabel, metric=task.spec.main_metric, seed=seed)
    if protocol == "linear":
        return fit_linear_probe(train, valid, test, cfg=LINEAR_PRESETS[cfg.linear_preset], device=cfg.device,
                                **kwargs)
    if protocol == "mlp":
        return fit_mlp_probe(train, valid, test, cfg=mlp_config(cfg), **kwargs)
    raise ValueError(f"unknown protocol {protocol!r}; protocols: linear, mlp")


# ------------------------------------------------------------------------------------------------------------
# provenance


@functools.lru_cache(maxsize=None)
def git_commit() -> str:
    """Short commit of the checkout the package runs from, ``+dirty`` when its code (not its reports) has
    uncommitted changes; ``unknown`` outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    code = ["hear_dymn", "eval", "setup.cfg", "pyproject.toml"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=root)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *code],
                               capture_output=True, text=True, timeout=10, cwd=root).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_description(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def run_suite(cfg: SuiteConfig, progress: bool = True, threads: thread_budget.ThreadBudget | None = None
              ) -> dict[str, Any]:
    """Run ``cfg`` end to end; returns the provenance, the result rows and the output folder (see
    :func:`output_folder`), which afterwards holds this run's files only (:mod:`.run_folder`).

    ``threads`` is the thread budget the caller applied, for the provenance (default: torch's current threads).
    """
    from .tasks.synthetic import write_miniature

    started = time.perf_counter()
    _check_backend(cfg)  # before any work: an unknown backend or a missing Ray fails at once
    _check_protocols(cfg)
    for name in cfg.tasks:
        check_task_name(name)  # before a miniature writer or a loader says something less direct
    _check_data(cfg)
    _check_device(cfg)
    _check_audio_options(cfg)
    ctx = init_distributed(cfg.device)  # alone, or one of torchrun's processes (fine-tuning is data-parallel)
    probes = [p for p in cfg.protocols if p != "finetune"]
    if ctx.distributed and probes:
        # the other processes would wait idle at a barrier, and time out, while rank 0 embeds and probes
        raise ValueError(f"under torchrun ({ctx.world_size} processes) only --protocols finetune runs; run "
                         f"{', '.join(probes)} afterwards in a plain `python eval/run_suite.py` with the same "
                         "--cache-dir: it reads the finished fine-tuning runs and writes the combined report")
    final_dir = output_folder(cfg)
    if ctx.is_main:
        check_writable(final_dir, keep=[Path(cfg.cache_dir)])  # refuse a folder of stray files before any work
    cache = EmbeddingCache(Path(cfg.cache_dir), loader=LoaderOptions(workers=cfg.loader_workers))
    data_roots = dict(cfg.data)
    for name in cfg.tasks:
        if name not in data_roots:
            if cfg.suite != "quick":
                raise ValueError(f"suite {cfg.suite!r} needs --data {name}=PATH (the dataset's official layout)")
            root = Path(cfg.cache_dir) / "miniatures" / name.replace(":", "_")
            if ctx.is_main:
                write_miniature(QUICK_MINIATURES.get(name, name), root, seed=0)
            data_roots[name] = str(root)
    ctx.barrier()
    tasks = _load_tasks(cfg.tasks, data_roots)  # a HEAR root may hold many task folders: one task each
    if probes:
        _check_event_tasks(tasks, probes)
    for name, task in tasks.items():
        if probes and task.spec.protocol == "folds" and len(task.spec.splits) < 3:
            # the probes' fold rule needs a test fold, the next fold for validation and at least one to train on
            raise ValueError(f"task {name} has {len(task.spec.splits)} folds; the probes need at least 3 "
                             "(fine-tuning alone works with 2: --protocols finetune)")
    _check_hear_options(cfg)
    embedders = [build_embedder(spec, cfg.allow_random_init, ctx.device, cfg.hear_options) for spec in cfg.models]
    _check_unique_names(embedders)
    folder = RunFolder(final_dir, "run_suite", keep=[Path(cfg.cache_dir)]) if ctx.is_main else None
    try:
        return _run_staged(cfg, ctx, cache, embedders, tasks, data_roots, probes, folder, final_dir, started,
                           progress, threads)
    except BaseException:
        if folder is not None:
            folder.discard()  # the previous report stays as it was
        raise


def _run_staged(cfg, ctx, cache, embedders, tasks, data_roots, probes, folder, final_dir, started, progress,
                threads) -> dict[str, Any]:
    from .report import write_reports

    out_dir = folder.path if folder else final_dir  # staged; other torchrun processes write no report files

    rows: list[dict[str, Any]] = []
    skipped: dict[str, dict[str, str]] = {}
    clip_counts: dict[str, dict[str, int]] = {}
    extraction = ExtractionStats()
    if probes and ctx.is_main:
        extraction = _extract_embeddings(cfg, cache, embedders, tasks, progress)
        for embedder in embedders:
            params_m, gmacs = model_complexity(embedder)
            weights = embedder.describe().get("weights", {})  # sha256 of the weights or checkpoint, if any
            for name, task in tasks.items():
                if _is_event(task):
                    if "mlp" in probes:
                        rows.extend(_run_event_task(cfg, out_dir, embedder, task, name, progress, extraction,
                                                    clip_counts, skipped, params_m, gmacs, weights))
                    continue
                data = {}
                for split in task.spec.splits:
                    emb = _embed_split(cache, embedder, task, name, split, progress, extraction)
                    data[split] = _probe_data(emb)
                    clip_counts.setdefault(name, {})[split] = len(emb.clip_ids) + len(emb.skipped)
                    if emb.skipped:
                        skipped.setdefault(name, {}).update(emb.skipped)
                for protocol in probes:
                    rows.append(_run_protocol(cfg, out_dir, embedder, task, data, protocol, params_m, gmacs,
                                              weights))
    if "finetune" in cfg.protocols:
        for embedder in _finetuned(cfg, embedders):
            for task in tasks.values():
                if _is_event(task):
                    continue  # event tasks: HEAR's protocol (mlp) only
                row, task_skipped = _run_finetune(cfg, ctx, out_dir, embedder, task, progress)
                rows.append(row)
                if task_skipped:
                    skipped.setdefault(task.spec.name, {}).update(task_skipped)
    if not ctx.is_main:
        return {"provenance": {}, "rows": rows}
    for name, task in tasks.items():
        if name not in clip_counts:
            clip_counts[name] = {split: len(task.clips(split)) for split in task.spec.splits}
    rows.extend(_reported_rows(cfg))
    # HEAR's leaderboard beside tasks read from real data, never beside the synthetic miniatures
    rows.extend(reported_hear_rows({k: t for k, t in tasks.items()
                                    if k in cfg.data or (k.startswith("hear:") and "hear" in cfg.data)}))
    provenance = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "suite": cfg.suite,
        "git commit": git_commit(),
        "versions": f"hear_dymn {__version__}, torch {torch.__version__}, numpy {np.__version__}, "
                    f"python {platform.python_version()}",
        "device": device_description(ctx.device),
        "threads": (threads or thread_budget.current()).describe(),
        "weights": {e.name: _weights_line(e) for e in embedders},
        "datasets": {name: f"{data_roots[name]} ({', '.join(f'{s}: {n}' for s, n in clip_counts[name].items())})"
                     for name in tasks},
        "task notes": {name: "; ".join(t.spec.notes) for name, t in tasks.items() if t.spec.notes} or "none",
        "skipped files": {t: sorted(ids) for t, ids in skipped.items()} or "none",
        "seeds": list(cfg.seeds),
        "probe presets": f"linear={cfg.linear_preset}, mlp={cfg.mlp_preset} ({cfg.probe_precision} products)",
        **extraction.provenance(),
        "wall time": f"{time.perf_counter() - started:.0f} s",
    }
    if "finetune" in cfg.protocols:
        trained = sorted({json.dumps(r.get("config", {}).get("processes")) for r in rows
                          if r.get("protocol") == "finetune" and r.get("source") == "measured"})
        provenance["fine-tuning"] = (f"preset {cfg.finetune_preset}"
                                     + (f", {cfg.finetune_epochs} epochs" if cfg.finetune_epochs else "")
                                     + f", trained with {' / '.join(trained) or '-'} process(es) (this run: "
                                     + f"{ctx.world_size}, {'DDP' if ctx.distributed else 'single'})")
    write_reports(rows, out_dir, provenance)
    folder.commit({"suite": cfg.suite, "rows": len(rows)})
    return {"provenance": provenance, "rows": rows, "out_dir": final_dir}


def _weights_line(embedder) -> str:
    if isinstance(embedder, HearModuleEmbedder):
        return embedder.provenance_line()
    if not isinstance(embedder, HearEmbedder):
        return "no network (log-mel statistics)"
    info = embedder.model.weights_info
    if info.get("sha256"):
        return f"{embedder.weights_label} (sha256 {info['sha256']})"
    return "**random init** (seed 0) - official weights not available; NOT pretrained results"


def _check_audio_options(cfg: SuiteConfig) -> None:
    if cfg.audio_store not in AUDIO_STORES:
        raise ValueError(f"unknown audio store {cfg.audio_store!r}; choices: {', '.join(AUDIO_STORES)}")
    LoaderOptions(workers=cfg.loader_workers)  # says what is wrong with a negative count


def audio_store_for(cfg: SuiteConfig) -> AudioStore | None:
    """Fine-tuning's decoded-audio store under the cache folder, or None (``--audio-store off``)."""
    return None if cfg.audio_store == "off" else AudioStore(Path(cfg.cache_dir) / "audio", 32000, cfg.audio_store)


def _check_device(cfg: SuiteConfig) -> None:
    try:
        device = torch.device(cfg.device)
    except RuntimeError:
        raise ValueError(f"unknown device {cfg.device!r}; devices: cpu, cuda, cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {cfg.device!r}: no CUDA device is available here; use --device cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {cfg.device!r}: this machine has {count} CUDA device(s)")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {cfg.device!r}; devices: cpu, cuda, cuda:N")


def _check_backend(cfg: SuiteConfig) -> None:
    if cfg.backend not in ("local", "ray"):
        raise ValueError(f"unknown backend {cfg.backend!r}; backends: local, ray")
    if cfg.backend == "ray":
        from .ray_backend import require_ray

        require_ray()  # says what to install


def _extract_embeddings(cfg: SuiteConfig, cache: EmbeddingCache, embedders, tasks: dict[str, Task],
                        progress: bool) -> ExtractionStats:
    """Ray backend: fill the cache for every (model, task, split) now. Local: the cache fills split by split."""
    if cfg.backend == "local":
        return ExtractionStats()
    from .ray_backend import RayConfig, fill_cache

    ray_cfg = RayConfig(address=cfg.ray_address, workers=cfg.ray_workers, gpus_per_worker=cfg.ray_gpus_per_worker,
                        cpus_per_worker=cfg.ray_cpus_per_worker, batch_size=cache.batch_size)
    work = [(e, t, split) for e in embedders for t in tasks.values() if not _is_event(t) for split in t.spec.splits]
    return fill_cache(cache, work, ray_cfg, progress=progress)


def _embed_split(cache, embedder, task: Task, name: str, split: str, progress: bool, extraction, kind: str = ""):
    """One split's embeddings from ``cache`` (scene or timestamp), with a progress bar, recorded in ``extraction``;
    a split with no readable clip is an error naming the first skipped file."""
    bar = _progress(progress, f"embed {embedder.name}/{name}/{split}{kind}", len(task.clips(split)))
    emb = cache.get(embedder, task, split, progress=bar)
    extraction.record(emb)
    if not emb.clip_ids:
        first = next(iter(emb.skipped.items()), ("", "no clips listed"))
        raise ValueError(f"{name} split {split!r}: no readable clip ({len(emb.skipped)} skipped; "
                         f"first: {first[0]}: {first[1]})")
    return emb


def _progress(enabled: bool, label: str, total: int):
    """A callback advancing a tqdm bar of ``total`` clips, shown from the first update (cached splits are instant)."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    bar: dict[str, Any] = {}

    def update(n: int) -> None:
        if "bar" not in bar:
            bar["bar"] = tqdm(desc=label, total=total, unit="clip", leave=False)
        bar["bar"].update(n)
        if bar["bar"].n >= total:
            bar["bar"].close()

    return update


def _run_protocol(cfg, out_dir, embedder, task, data, protocol, params_m, gmacs, weights) -> dict[str, Any]:
    spec = task.spec
    metric = spec.main_metric
    result_dir = out_dir / "results" / embedder.name / protocol
    per_round: dict[str, list[float]] = {}
    hear_names = _hear_score_names(task)
    hear_per_round: dict[str, list[dict[str, float]]] = {}
    seconds = 0.0
    for seed in cfg.seeds:
        for round_name, train, valid, test in evaluation_rounds(task, data):
            result = run_probe(protocol, cfg, task, train, valid, test, seed)
            seconds += result.seconds
            per_round.setdefault(round_name, []).append(result.metrics[metric])
            if hear_names:
                hear_per_round.setdefault(round_name, []).append(hear_scene_scores(test.y, result.scores,
                                                                                   hear_names))
            _save_predictions(result_dir, spec, f"{round_name}_seed{seed}", test.clip_ids, test.y, result.scores,
                              test.mask)
    values = _summary_values(spec, per_round)
    config = {"probe_preset": cfg.linear_preset if protocol == "linear" else cfg.mlp_preset}
    if protocol == "mlp":
        config["precision"] = cfg.probe_precision
    row = _result_row(cfg, embedder, spec, protocol, values, per_round, params_m, gmacs, weights, seconds, config)
    if hear_names:
        # as the main metric: mean over seeds per round, then over rounds; nan/inf stay what they are
        row["hear_scores"] = {n: float(np.mean([np.mean([r[n] for r in runs]) for runs in hear_per_round.values()]))
                              for n in hear_names}
    atomic_write_text(result_dir / f"{_file_stem(spec)}.json", json.dumps(row, indent=2))
    return row


def _hear_score_names(task: Task) -> list[str]:
    """HEAR scene scores to report for a HEAR scene task: those its metadata's ``evaluation`` lists."""
    meta = getattr(task, "metadata", None)
    if meta is None or getattr(task.spec, "embedding_type", "scene") != "scene":
        return []
    listed = meta.get("evaluation") or list(HEAR_SCENE_SCORES)
    return [n for n in listed if n in HEAR_SCENE_SCORES]


def _run_event_task(cfg, out_dir, embedder, task, name, progress, extraction, clip_counts, skipped, params_m,
                    gmacs, weights) -> list[dict[str, Any]]:
    """A HEAR event task under the ``mlp`` protocol (:mod:`.events`): timestamp embeddings from their cache, the
    MLP on frames with the post-processing grid, one row per score of the task's ``evaluation`` list (the first is
    the selection metric), and the predicted test events of every round and seed as
    ``results/<model>/mlp/<task>/<round>_seed<seed>.events.json``."""
    from .events import FrameSplit, concat_frames, event_probe_config, fit_event_rounds, postprocessing_grid, \
        write_events
    from .timestamp_cache import TimestampCache

    spec = task.spec
    cache = TimestampCache(Path(cfg.cache_dir))
    frames = {}
    for split in spec.splits:
        clips = task.clips(split)
        emb = _embed_split(cache, embedder, task, name, split, progress, extraction, " (timestamps)")
        by_id = {c.clip_id: c.file_name for c in clips}
        frames[split] = FrameSplit.build(emb.x, emb.timestamps, emb.offsets, [by_id[i] for i in emb.clip_ids],
                                         task.reference_events(split), spec.labels)
        clip_counts.setdefault(name, {})[split] = len(emb.clip_ids) + len(emb.skipped)
        if emb.skipped:
            skipped.setdefault(name, {}).update(emb.skipped)
    rounds = evaluation_rounds(task, frames, concat=concat_frames)
    probe_cfg = event_probe_config(mlp_config(cfg), task.task_name, task.metadata)
    grid = postprocessing_grid(task.metadata)
    use_scoring = bool(task.metadata.get("use_scoring_for_early_stopping", True))
    result_dir = out_dir / "results" / embedder.name / "mlp"
    per_metric: dict[str, dict[str, list[float]]] = {m: {} for m in task.evaluation}
    runs: dict[str, dict[str, Any]] = {}
    seconds = 0.0
    for seed in cfg.seeds:
        results = fit_event_rounds([r[1:] for r in rounds], labels=spec.labels, evaluation=task.evaluation,
                                   cfg=probe_cfg, seed=seed, grid=grid, use_scoring=use_scoring)
        for (round_name, *_), result in zip(rounds, results):
            seconds += result.seconds
            for metric in task.evaluation:
                per_metric[metric].setdefault(round_name, []).append(result.metrics[metric])
            run = f"{round_name}_seed{seed}"
            write_events(result_dir / _file_stem(spec) / f"{run}.events.json", result.predicted)
            runs[run] = {"split": round_name, "postprocessing": result.postprocessing, "selected": result.selected,
                         "scores": result.metrics}
    config = {"probe_preset": cfg.mlp_preset, "precision": cfg.probe_precision, "protocol": "hear_event",
              "selection_metric": task.evaluation[0], "postprocessing_grid": {k: list(v) for k, v in grid.items()},
              "check_val_every_n_epoch": probe_cfg.check_val_every_n_epoch, "max_epochs": probe_cfg.max_epochs,
              "select_on": "validation score" if use_scoring else "validation loss"}
    rows = []
    for metric in task.evaluation:
        row = _result_row(cfg, embedder, spec, "mlp", _summary_values(spec, per_metric[metric]), per_metric[metric],
                          params_m, gmacs, weights, seconds, config)
        row["metric"] = metric
        row["runs"] = runs
        stem = _file_stem(spec) if metric == task.evaluation[0] else f"{_file_stem(spec)}.{metric}"
        atomic_write_text(result_dir / f"{stem}.json", json.dumps(row, indent=2))
        rows.append(row)
    return rows


def _file_stem(spec) -> str:
    """The task's name as a file or folder name (``hear:<task>`` names hold a colon)."""
    return spec.name.replace(":", "_")


def _save_predictions(result_dir: Path, spec, run: str, clip_ids, targets: np.ndarray, scores: np.ndarray,
                      mask: np.ndarray | None) -> None:
    """One test split's predictions next to the row's JSON, so the reported metric can be recomputed."""
    arrays = {"clip_ids": np.array(clip_ids, dtype=str), "targets": targets, "scores": scores}
    if mask is not None:
        arrays["mask"] = mask
    atomic_savez(result_dir / _file_stem(spec) / f"{run}.npz", **arrays)


def _summary_values(spec, per_round: dict[str, list[float]]) -> list[float]:
    """The values a row's mean +- std is taken over: per fold (mean over seeds) for k-fold tasks, else per seed."""
    if spec.protocol == "folds":
        return [float(np.mean(v)) for v in per_round.values()]
    return [float(v) for v in next(iter(per_round.values()))]


def _result_row(cfg: SuiteConfig, embedder, spec, protocol: str, values: list[float],
                per_round: dict[str, list[float]], params_m, gmacs, weights: dict[str, Any], seconds: float,
                config: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": embedder.name, "weights": getattr(embedder, "weights_label", ""),
        "weights_sha256": weights.get("sha256"), "protocol": protocol, "task": spec.name,
        "task_version": spec.version, "metric": spec.main_metric,
        "mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values),
        "per_split": {k: float(np.mean(v)) for k, v in per_round.items()},  # mean over seeds
        "params_m": params_m, "gmacs": gmacs, "seconds": seconds, "source": "measured",
        "seeds": list(cfg.seeds), "config": config,
        "hear_dymn_version": __version__, "git_commit": git_commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _check_data(cfg: SuiteConfig) -> None:
    """A --data root for a task that will not run is a typo or a missing --tasks entry, never silently ignored
    (the quick suite would otherwise fall back to the synthetic miniature)."""
    unused = sorted(set(cfg.data) - set(cfg.tasks))
    if unused:
        raise ValueError(f"--data given for {', '.join(unused)}, which is not among the tasks to run "
                         f"({', '.join(cfg.tasks)}); task names: esc50, esc10, fsd50k, openmic, hear")


TASK_METADATA = "task_metadata.json"  # marks a hear-preprocess task folder


def find_hear_task_folders(root: Path, max_depth: int = 3) -> list[Path]:
    """``root`` itself when it is a HEAR task folder, else every task folder below it (down to ``max_depth``
    levels, as the HEAR release unpacks: ``tasks/<task>-<version>-<mode>/``), sorted; scene and event alike."""
    root = Path(root)
    if (root / TASK_METADATA).is_file():
        return [root]
    found: list[Path] = []
    level = [root] if root.is_dir() else []
    for _ in range(max_depth):
        below = sorted(p for d in level for p in d.iterdir() if p.is_dir() and not p.name.isdigit())
        found += [p for p in below if (p / TASK_METADATA).is_file()]
        level = [p for p in below if not (p / TASK_METADATA).is_file()]
    return sorted(found)


def _load_tasks(names, data_roots: dict[str, str]) -> dict[str, Task]:
    """Build the tasks to run; ``hear`` expands to every task folder under its root, keyed by task name (and
    ``data_roots`` is updated to each task's own folder)."""
    tasks: dict[str, Task] = {}
    for name in names:
        root = Path(data_roots[name])
        if name != "hear" or (root / TASK_METADATA).is_file():
            tasks[name] = get_task(name, root)
            continue
        folders = find_hear_task_folders(root)
        if not folders:
            raise ValueError(f"--data hear={root}: no HEAR task folder found (a folder with {TASK_METADATA}, or "
                             "folders of them as the HEAR release unpacks)")
        del data_roots[name]
        for folder in folders:
            task = get_task("hear", folder)
            key = task.spec.name
            if key in tasks:
                raise ValueError(f"--data hear={root}: {data_roots[key]} and {folder} are both task {key!r} "
                                 "(e.g. two modes of one task); point --data hear= at one of them")
            tasks[key] = task
            data_roots[key] = str(folder)
        logger.info("--data hear=%s: %d task folder(s): %s", root, len(folders), ", ".join(tasks))
    return tasks


def _check_event_tasks(tasks: dict[str, Task], probes: list[str]) -> None:
    """HEAR event tasks run under the ``mlp`` protocol only (HEAR's: timestamp embeddings, the MLP on frames,
    sed_eval scores); without it they would run under nothing."""
    events = [name for name, task in tasks.items() if _is_event(task)]
    if not events or "mlp" in probes:
        return
    if len(events) == len(tasks):
        raise ValueError(f"event tasks ({', '.join(events)}) run under the mlp protocol only (HEAR's event "
                         f"protocol); --protocols {' '.join(probes)} would run nothing: add mlp")
    logger.warning("event tasks %s run under the mlp protocol only; not run with --protocols %s",
                   ", ".join(events), " ".join(probes))


def _is_event(task: Task) -> bool:
    return getattr(task.spec, "embedding_type", "scene") == "event"


def _check_hear_options(cfg: SuiteConfig) -> None:
    """Options for a HEAR module that is not among the models are a typo, never silently ignored."""
    modules = {parse_spec(m)[0] for m in cfg.models if is_hear_spec(m)}
    unused = sorted(set(cfg.hear_options) - modules)
    if unused:
        raise ValueError(f"--hear-options given for {', '.join(unused)}, which is not among the models "
                         f"(HEAR modules run: {', '.join(sorted(modules)) or 'none'}; give it as --models hear:MODULE)")


def _check_protocols(cfg: SuiteConfig) -> None:
    unknown = [p for p in cfg.protocols if p not in ("linear", "mlp", "finetune")]
    if unknown:
        raise ValueError(f"unknown protocol(s) {', '.join(map(repr, unknown))}; protocols: linear, mlp, finetune")
    if "linear" in cfg.protocols and cfg.linear_preset not in LINEAR_PRESETS:
        raise ValueError(f"unknown linear probe preset {cfg.linear_preset!r}; presets: {', '.join(LINEAR_PRESETS)}")
    if "mlp" in cfg.protocols:
        if cfg.mlp_preset not in MLP_PRESETS:
            raise ValueError(f"unknown MLP probe preset {cfg.mlp_preset!r}; presets: {', '.join(MLP_PRESETS)}")
        mlp_config(cfg)  # names a bad probe_precision before any work
    if "finetune" in cfg.protocols and cfg.finetune_preset not in FINETUNE_PRESETS:
        raise ValueError(f"unknown fine-tuning preset {cfg.finetune_preset!r}; presets: "
                         f"{', '.join(FINETUNE_PRESETS)}")


def _check_unique_names(embedders) -> None:
    """Results are filed under the model's name: two models with one name would overwrite each other."""
    seen: dict[str, str] = {}
    for e in embedders:
        spec = getattr(e, "spec", e.name)
        if e.name in seen:
            raise ValueError(f"models {seen[e.name]!r} and {spec!r} would both be reported as {e.name!r}; rename "
                             "one checkpoint file")
        seen[e.name] = spec


def _finetuned(cfg: SuiteConfig, embedders) -> list[HearEmbedder]:
    """The network models to fine-tune: all of them, or those named in ``cfg.finetune_models``."""
    networks = [e for e in embedders if isinstance(e, HearEmbedder)]
    if cfg.finetune_models is None:
        return networks
    chosen = [e for e in networks if e.name in cfg.finetune_models or e.spec in cfg.finetune_models]
    left = [e.name for e in networks if e not in chosen]
    if left:
        logger.info("fine-tuning %s only (finetune_models); not fine-tuning %s",
                    ", ".join(e.name for e in chosen) or "nothing", ", ".join(left))
    return chosen


def finetune_rounds(task: Task) -> list[tuple[str, FinetuneData]]:
    """(name, data) per round: k-fold tasks test each fold after training on all others (no validation split,
    as in the reference); train/valid/test tasks select the epoch on the validation split."""
    spec = task.spec
    if spec.protocol == "folds":
        return [(test, FinetuneData(train=[c for s in spec.splits if s != test for c in task.clips(s)], valid=None,
                                    test=task.clips(test)))
                for test in spec.splits]
    train, valid, test = spec.splits[0], spec.splits[1], spec.splits[-1]
    return [(test, FinetuneData(train=task.clips(train), valid=task.clips(valid), test=task.clips(test)))]


def _run_finetune(cfg: SuiteConfig, ctx: DistContext, out_dir: Path, embedder: HearEmbedder, task: Task,
                  progress: bool) -> tuple[dict[str, Any], dict[str, str]]:
    spec = task.spec
    network = embedder.model.network  # the eager network with the loaded weights; run_finetune trains a copy
    recipe = recipe_for(spec.name.split(":")[0], network.arch, spec.multilabel, cfg.finetune_preset,
                        cfg.finetune_epochs, spec.clip_seconds)
    key = embedder_key(embedder)
    result_dir = out_dir / "results" / embedder.name / "finetune"
    per_round: dict[str, list[float]] = {}
    curves: dict[str, list[dict[str, float]]] = {}
    skipped: dict[str, str] = {}
    seconds = 0.0
    processes: set[int] = set()  # as trained: a later plain run may only read finished DDP runs
    seeds = cfg.finetune_seeds or cfg.seeds
    store = audio_store_for(cfg)
    for seed in seeds:
        for round_name, data in finetune_rounds(task):
            run = f"{round_name}_seed{seed}"
            # runs on exact audio (no store, or a float32 one) and on the 16-bit store differ: separate folders
            folder = run if store is not None and not store.lossless else f"{run}-exact"
            workdir = Path(cfg.cache_dir) / "finetune" / key / _file_stem(spec) / f"v{TRAINING_VERSION}" / folder
            identity = {"embedder": key, "task": spec.name, "task_version": spec.version, "round": round_name}
            on_epoch = _epoch_progress(f"finetune {embedder.name}/{spec.name}/{run}", recipe.epochs, progress)
            result = run_finetune(network, spec, data, recipe, seed, workdir, ctx, identity, on_epoch,
                                  loader=LoaderOptions(workers=cfg.loader_workers), store=store, progress=progress)
            processes.add(result.processes)
            seconds += result.seconds
            skipped.update(result.skipped)
            per_round.setdefault(round_name, []).append(result.test_metric)
            curves[run] = result.history
            if ctx.is_main:
                test = [c for c in data.test if c.clip_id not in result.skipped]
                _save_predictions(result_dir, spec, run, [c.clip_id for c in test], metric_targets(test, spec),
                                  result.scores, clip_masks(test))
    values = _summary_values(spec, per_round)
    params_m, gmacs = model_complexity(embedder)
    weights = embedder.describe().get("weights", {})
    config = {"finetune_preset": cfg.finetune_preset, "recipe": recipe.name, "recipe_source": recipe.source,
              "epochs": recipe.epochs, "lr": recipe.lr, "batch_size": recipe.batch_size,
              "processes": next(iter(processes)) if len(processes) == 1 else sorted(processes)}
    row = _result_row(cfg, embedder, spec, "finetune", values, per_round, params_m, gmacs, weights, seconds, config)
    row["seeds"] = list(seeds)
    row["curves"] = curves
    if ctx.is_main:
        atomic_write_text(result_dir / f"{_file_stem(spec)}.json", json.dumps(row, indent=2))
    return row, skipped


def _epoch_progress(label: str, epochs: int, bar_enabled: bool):
    """Per-epoch callback: a tqdm bar over the epochs (when enabled) and an INFO line with the epoch's record."""
    bar: dict[str, Any] = {}

    def update(record: dict[str, float]) -> None:
        logger.info("%s: %s", label, ", ".join(f"{k} {v:.4g}" for k, v in record.items()))
        if not bar_enabled:
            return
        if "bar" not in bar:
            from tqdm.auto import tqdm

            bar["bar"] = tqdm(desc=label, total=epochs, unit="epoch", leave=False, initial=int(record["epoch"]))
        done = int(record["epoch"]) + 1
        bar["bar"].update(done - bar["bar"].n)
        bar["bar"].set_postfix({k: f"{v:.3g}" for k, v in record.items() if k != "epoch"}, refresh=False)
        if done >= epochs:
            bar["bar"].close()

    return update


REPORTED_HEAR = Path(__file__).with_name("reported_hear.json")  # HEAR 2021 leaderboard numbers with their source


def reported_hear_rows(tasks: dict[str, Task], path: Path = REPORTED_HEAR) -> list[dict[str, Any]]:
    """Rows of the public HEAR 2021 leaderboard for the tasks run, marked ``reported`` with their source.

    A HEAR task folder matches a leaderboard task by its metadata's ``task_name`` and ``mode``; ``esc50`` and
    ``fsd50k`` in their official layouts match the HEAR versions of the same datasets (same folds and splits),
    unless the task notes that it is a subset (``spec.notes``).
    """
    data = json.loads(path.read_text(encoding="utf-8"))
    citation = f"{data['source']}: {data['url']}. {data['protocol_note']}"
    rows = []
    for key, task in tasks.items():
        meta = getattr(task, "metadata", None)
        matches = [k for k, t in data["tasks"].items()
                   if (meta is not None and t["task_name"] == meta.get("task_name")
                       and t["mode"] == meta.get("mode", t["mode"]))
                   or (meta is None and key in t["aliases"] and not getattr(task.spec, "notes", ()))]
        if len(matches) != 1:  # unknown task, or a folder without a mode that fits several (5h and 50h)
            continue
        for model in data["models"]:
            if matches[0] not in model["scores"]:
                continue
            rows.append({"model": model["model"], "weights": "HEAR 2021 submission", "weights_sha256": None,
                         "protocol": "mlp", "task": task.spec.name, "task_version": None,
                         "metric": task.spec.main_metric, "mean": model["scores"][matches[0]], "std": None,
                         "n": None, "per_split": {}, "params_m": None, "gmacs": None, "seconds": None,
                         "source": "reported", "citation": citation})
    return rows


def _reported_rows(cfg: SuiteConfig) -> list[dict[str, Any]]:
    rows = []
    for item in REPORTED_RESULTS:
        if item["task"] not in cfg.tasks:
            continue
        cfg_weights = PRETRAINED[DEFAULT_WEIGHTS[item["model"]]]
        rows.append({**item, "weights": cfg_weights.name, "weights_sha256": None, "protocol": "finetune",
                     "task_version": None, "std": None, "n": None, "per_split": {},
                     "params_m": cfg_weights.reported["params_m"], "gmacs": cfg_weights.reported["gmacs"],
                     "seconds": None, "source": "reported", "citation": PAPER_CITATION})
    return rows
