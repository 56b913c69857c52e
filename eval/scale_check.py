#!/usr/bin/env python
"""Scale check: the harness on full-size official layouts of FSD50K, OpenMIC-2018 and ESC-50 made of hard links.

    python eval/scale_check.py                                   # defaults: small sizes, every stage
    python eval/scale_check.py --sizes 10%,100%                  # a tenth, then the real sizes
    python eval/scale_check.py --stages harness --sizes 100%     # logmel + linear on all of FSD50K, cold then warm
    python eval/scale_check.py --stages finetune-memory --train-clips 100,4000,40000 --steps 20

Layouts. Each dataset is written in the exact official layout its loader reads (``hear_dymn/bench/tasks/``), with
the official split sizes scaled to the requested size: FSD50K 51,197 clips (dev train 36,796 / val 4,170, eval
10,231; 200 classes), OpenMIC-2018 20,000 clips of 10 s (split01_train 14,915 / split01_test 5,085; its 20
instruments), ESC-50 2,000 clips of 5 s (50 classes x 5 folds x 8, real categories and esc10 column). The audio is
a small pool of distinct synthetic clips (the miniatures' timbres), hard-linked under the official file names, so a
full-size layout costs the pool's few tens of MB: FSD50K 40 WAVs of 0.3-30 s (log-uniform lengths plus two 30 s
clips, mean about 7.6 s as in FSD50K's 108 h), OpenMIC 20 OGGs of 10 s, ESC-50 50 WAVs of 5 s, all 44.1 kHz mono.
Layouts are written once (atomically, with a marker) and reused.

Stages (each run in a fresh child process through the suite's public API, ``hear_dymn.bench.suite.run_suite``, with
its wall time and the peak PSS of the child's whole process tree, DataLoader and Ray workers included, sampled every
``--interval`` s by :class:`hear_dymn.bench.memory.TreeMemorySampler`):

* ``extract``: every dataset at each size, ``--models``, linear probe, from an empty embedding cache;
* ``linear``, ``mlp``: the same again on the warm cache (probe time; no embedding may be computed);
* ``finetune``: ``--finetune-model`` with the paper recipe on each dataset, stopped after ``--steps`` optimizer
  steps (``--steps 0``: one whole epoch, evaluation included); time to the first step and steps/s;
* ``harness``: logmel + linear probe on FSD50K alone, from an empty cache, then warm (target: cold under 10 min at
  full size, warm under a quarter of that computing no embedding);
* ``finetune-memory``: dymn04 (``--finetune-model``), paper recipe, 10 s clips, FSD50K layouts with
  ``--train-clips`` training clips, ``--steps`` steps each (target: peaks within 0.5 GB of the smallest's).

Options of the suite that these stages do not set (e.g. data-loading workers) are passed with ``--set KEY=VALUE``.
Output: ``<out-dir>/scale.md`` and ``scale.json`` with a ``run.json`` manifest (default ``reports/scale/``); layouts,
caches and finished stages live under ``--work-dir`` (default ``cache/scale``): a rerun measures only the stages
not yet measured with the same settings and code (``--redo`` measures all again).

Caveats stated in the report: every read after the first of a pool file comes from the page cache (a real dataset
is read from disk), and the pool's few distinct files make the probes' features repeat.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from hear_dymn import threads  # noqa: E402  (first: sets the OpenMP wait policy before torch loads)

GB = 1 << 30
LAYOUT_VERSION = 1
MARKER = ".scale_layout.json"

# official sizes
FSD50K_SPLITS = {"train": 36796, "val": 4170, "eval": 10231}  # 51,197
FSD50K_CLASSES = 200
OPENMIC_SPLITS = {"train": 14915, "test": 5085}  # 20,000
OPENMIC_INSTRUMENTS = ("accordion", "banjo", "bass", "cello", "clarinet", "cymbals", "drums", "flute", "guitar",
                       "mallet_percussion", "mandolin", "organ", "piano", "saxophone", "synthesizer", "trombone",
                       "trumpet", "ukulele", "violin", "voice")
ESC50_FULL = 2000
FULL = {"fsd50k": sum(FSD50K_SPLITS.values()), "openmic": sum(OPENMIC_SPLITS.values()), "esc50": ESC50_FULL}
DATASETS = ("fsd50k", "openmic", "esc50")
POOL_SIZES = {"fsd50k": 40, "openmic": 20, "esc50": 50, "ftmem": 20}
SAMPLE_RATE = 44100

STAGES = ("extract", "linear", "mlp", "finetune", "harness", "finetune-memory")
TARGETS = {"harness_cold_s": 600.0, "harness_warm_fraction": 0.25, "finetune_memory_gb": 0.5}


# ------------------------------------------------------------------------------------------------------------
# sizes


@dataclass(frozen=True)
class Size:
    """A size token: ``500`` (clips per dataset, capped at its full size), ``10%`` or ``full``."""

    label: str
    fraction: float | None = None
    clips: int | None = None

    def of(self, dataset: str) -> int:
        full = FULL[dataset]
        return max(1, min(full, round(self.fraction * full))) if self.fraction is not None else min(full, self.clips)


def parse_size(token: str) -> Size:
    text = token.strip().lower()
    if text in ("full", "100%"):
        return Size("100%", fraction=1.0)
    if text.endswith("%"):
        try:
            value = float(text[:-1])
        except ValueError:
            value = -1.0
        if not 0 < value <= 100:
            raise ValueError(f"--sizes: {token!r} must be a percentage in (0, 100]")
        return Size(f"{value:g}%", fraction=value / 100.0)
    if text.isdigit() and int(text) >= 1:
        return Size(text, clips=int(text))
    raise ValueError(f"--sizes: {token!r} is neither a clip count (500), a percentage (10%) nor 'full'")


def fsd50k_counts(n: int) -> dict[str, int]:
    """The official train/val/eval proportions for ``n`` clips (at least 1 each; ``n >= 3``)."""
    if n < 3:
        raise ValueError(f"an FSD50K layout needs at least 3 clips (train, val, eval), got {n}")
    total = FULL["fsd50k"]
    val = max(1, round(n * FSD50K_SPLITS["val"] / total))
    evals = max(1, round(n * FSD50K_SPLITS["eval"] / total))
    return {"train": n - val - evals, "val": val, "eval": evals}


def openmic_counts(n: int) -> dict[str, int]:
    if n < 3:
        raise ValueError(f"an OpenMIC layout needs at least 3 clips, got {n}")
    test = max(1, round(n * OPENMIC_SPLITS["test"] / FULL["openmic"]))
    return {"train": n - test, "test": test}


def esc50_per_fold(n: int) -> int:
    """Clips per class and fold (1..8) for about ``n`` clips: 50 classes x 5 folds x this."""
    return max(1, min(8, round(n / 250)))


# ------------------------------------------------------------------------------------------------------------
# pools of distinct audio and hard-linked layouts


def fsd50k_pool_seconds(count: int = POOL_SIZES["fsd50k"]) -> list[float]:
    """Clip lengths of the FSD50K pool: log-uniform quantiles over 0.3-30 s plus 5 % of 30 s clips (FSD50K's
    longest), mean about 7.6 s (FSD50K: 108 h over 51,197 clips)."""
    long = max(1, round(0.05 * count))
    short = count - long
    return [round(0.3 * 100.0 ** ((q + 0.5) / short), 2) for q in range(short)] + [30.0] * long


def _fsd_labels(item: int, pool: int) -> list[int]:
    return list(range(item, FSD50K_CLASSES, pool))


def write_pool(folder: Path, dataset: str, seed: int = 0) -> list[Path]:
    """The distinct files of ``dataset``'s pool (written once; names ``item-NN.wav`` / ``.ogg``)."""
    from hear_dymn.bench.tasks.synthetic import render_clip
    import soundfile as sf

    count = POOL_SIZES[dataset]
    if dataset == "fsd50k":
        specs = [(_fsd_labels(j, count)[:2], s) for j, s in enumerate(fsd50k_pool_seconds(count))]
    elif dataset == "ftmem":
        specs = [(_fsd_labels(j, count)[:2], 10.0) for j in range(count)]
    elif dataset == "openmic":
        specs = [([j], 10.0) for j in range(count)]
    elif dataset == "esc50":
        specs = [([j], 5.0) for j in range(count)]
    else:
        raise ValueError(f"unknown pool {dataset!r}")
    suffix = ".ogg" if dataset == "openmic" else ".wav"
    paths = [folder / f"item-{j:02d}{suffix}" for j in range(count)]
    if all(p.is_file() for p in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    for path, (classes, seconds) in zip(paths, specs):
        if path.is_file():
            continue
        audio = render_clip(classes, seconds, SAMPLE_RATE, seed)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{suffix}")
        if suffix == ".ogg":
            sf.write(str(tmp), audio, SAMPLE_RATE, format="OGG", subtype="VORBIS")
        else:
            sf.write(str(tmp), audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    return paths


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError as err:
        raise OSError(f"cannot hard-link {src} to {dst} ({err.strerror}); the pool and the layouts must be on one "
                      "filesystem that supports hard links (use --work-dir on such a filesystem)") from err


def _write_csv(path: Path, header: tuple[str, ...] | None, rows: list[tuple[Any, ...]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        if header:
            writer.writerow(header)
        writer.writerows(rows)


def _ids(count: int, high: int, seed: int, tag: int) -> list[int]:
    import numpy as np

    rng = np.random.default_rng([seed, tag])
    return sorted(int(i) for i in rng.choice(high, size=count, replace=False))


def _write_fsd50k(root: Path, pool: list[Path], counts: dict[str, int], seed: int) -> None:
    gt = root / "FSD50K.ground_truth"
    names = [f"Scale_class_{k:03d}" for k in range(FSD50K_CLASSES)]
    _write_csv(gt / "vocabulary.csv", None, [(k, n, f"/m/scale{k:03d}") for k, n in enumerate(names)])
    ids = _ids(sum(counts.values()), 600000, seed, 51)
    order = {"train": ids[:counts["train"]], "val": ids[counts["train"]:counts["train"] + counts["val"]],
             "eval": ids[counts["train"] + counts["val"]:]}
    dev_rows, eval_rows = [], []
    for folder in ("FSD50K.dev_audio", "FSD50K.eval_audio"):
        (root / folder).mkdir(parents=True)
    for split, fnames in order.items():
        for position, fname in enumerate(fnames):
            item = position % len(pool)  # round robin: every split holds every pool file
            labels = _fsd_labels(item, len(pool))
            folder = "FSD50K.eval_audio" if split == "eval" else "FSD50K.dev_audio"
            _link(pool[item], root / folder / f"{fname}.wav")
            text = ",".join(names[k] for k in labels), ",".join(f"/m/scale{k:03d}" for k in labels)
            (eval_rows if split == "eval" else dev_rows).append(
                (fname, *text) if split == "eval" else (fname, *text, split))
    _write_csv(gt / "dev.csv", ("fname", "labels", "mids", "split"), sorted(dev_rows))
    _write_csv(gt / "eval.csv", ("fname", "labels", "mids"), sorted(eval_rows))


def _write_openmic(root: Path, pool: list[Path], counts: dict[str, int], seed: int) -> None:
    (root / "class-map.json").write_text(json.dumps({n: k for k, n in enumerate(OPENMIC_INSTRUMENTS)}, indent=2))
    tracks = _ids(sum(counts.values()), 200000, seed, 52)
    keys = [f"{t:06d}_{(t * 7919 % 300) * 960}" for t in tracks]
    label_rows = []
    for position, key in enumerate(keys):
        item = position % len(pool)
        path = root / "audio" / key[:3] / f"{key}.ogg"
        path.parent.mkdir(parents=True, exist_ok=True)
        _link(pool[item], path)
        other = (item + 1 + position % (len(OPENMIC_INSTRUMENTS) - 1)) % len(OPENMIC_INSTRUMENTS)
        label_rows.append((key, OPENMIC_INSTRUMENTS[item], 0.9, 3))  # about two annotations per clip, as released
        label_rows.append((key, OPENMIC_INSTRUMENTS[other], 0.1, 3))
    _write_csv(root / "openmic-2018-aggregated-labels.csv", ("sample_key", "instrument", "relevance",
                                                              "num_responses"), sorted(label_rows))
    split = {"train": keys[:counts["train"]], "test": keys[counts["train"]:]}
    for name, part in split.items():
        _write_csv(root / "partitions" / f"split01_{name}.csv", None, [(k,) for k in sorted(part)])


def _write_esc50(root: Path, pool: list[Path], per_fold: int, seed: int) -> None:
    from hear_dymn.bench.tasks.esc50 import ESC10_TARGETS, ESC50_CATEGORIES

    (root / "audio").mkdir(parents=True)
    sources = _ids(len(ESC50_CATEGORIES) * 5 * per_fold, 900000, seed, 50)
    rows = []
    for target, category in enumerate(ESC50_CATEGORIES):
        for fold in range(1, 6):
            for take in range(per_fold):
                src = sources[(target * 5 + fold - 1) * per_fold + take] + 100000
                name = f"{fold}-{src}-{'ABCDEFGH'[take]}-{target}.wav"
                _link(pool[target % len(pool)], root / "audio" / name)
                rows.append((name, fold, target, category, target in ESC10_TARGETS, src, "ABCDEFGH"[take]))
    _write_csv(root / "meta" / "esc50.csv", ("filename", "fold", "target", "category", "esc10", "src_file", "take"),
               sorted(rows))


def write_layout(dataset: str, root: Path, pool_dir: Path, clips: int, seed: int = 0,
                 split_counts: dict[str, int] | None = None) -> dict[str, Any]:
    """Write ``dataset`` (``fsd50k``, ``openmic``, ``esc50``, or ``ftmem``: FSD50K's layout with 10 s clips and
    ``split_counts``) with about ``clips`` clips at ``root``, hard-linked from the pool in ``pool_dir``; written to a
    temporary sibling and renamed, with a marker; an existing layout with the same parameters is kept. Returns the
    layout's description (clip counts, pool files, audio hours)."""
    params = {"dataset": dataset, "clips": clips, "seed": seed, "split_counts": split_counts,
              "version": LAYOUT_VERSION}
    marker = root / MARKER
    if marker.is_file():
        info = json.loads(marker.read_text())
        if info.get("params") == params:
            return info
    pool = write_pool(pool_dir / dataset, dataset, seed)
    tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    started = time.perf_counter()
    try:
        if dataset in ("fsd50k", "ftmem"):
            counts = split_counts or fsd50k_counts(clips)
            _write_fsd50k(tmp, pool, counts, seed)
        elif dataset == "openmic":
            counts = openmic_counts(clips)
            _write_openmic(tmp, pool, counts, seed)
        elif dataset == "esc50":
            per = esc50_per_fold(clips)
            counts = {f"fold{k}": 50 * per for k in range(1, 6)}
            _write_esc50(tmp, pool, per, seed)
        else:
            raise ValueError(f"unknown dataset {dataset!r}")
        import soundfile as sf

        seconds = [sf.info(str(p)).duration for p in pool]
        total = sum(counts.values())
        # round robin over the pool within each split
        audio_s = sum(sum(seconds[i % len(pool)] for i in range(n)) for n in counts.values())
        if dataset == "esc50":
            audio_s = total * seconds[0]
        info = {"params": params, "counts": counts, "clips": total, "pool_files": len(pool),
                "pool_mb": round(sum(p.stat().st_size for p in pool) / 1e6, 1), "audio_hours": round(audio_s / 3600, 2),
                "pool_seconds": [round(s, 2) for s in seconds],
                "write_seconds": round(time.perf_counter() - started, 1)}
        (tmp / MARKER).write_text(json.dumps(info, indent=2))
        if root.exists():
            shutil.rmtree(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


# ------------------------------------------------------------------------------------------------------------
# one measured stage = one child process


class StepLimitReached(BaseException):
    """Raised from the optimizer's step hook to end a fine-tuning run after N steps (not an error)."""


def _child(spec_path: Path) -> int:
    """Run one stage described in ``spec_path`` and write its result beside it (``.result.json``)."""
    spec = json.loads(spec_path.read_text())
    budget = threads.apply(spec.get("threads"))
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from hear_dymn.bench.memory import tree_pss_bytes
    from hear_dymn.bench.suite import run_suite, suite_config

    result: dict[str, Any] = {"threads": budget.describe(), "baseline_pss": tree_pss_bytes()[0],
                              "load_before": os.getloadavg()}
    steps: list[float] = []
    limit = int(spec.get("steps") or 0)

    def count_step(optimizer, args, kwargs) -> None:
        steps.append(time.perf_counter())
        if limit and len(steps) >= limit:
            raise StepLimitReached()

    if limit:  # fine-tuning stages only: the probes' own optimizers (L-BFGS, Adam) are not counted
        register_optimizer_step_post_hook(count_step)
    cfg = suite_config("quick", **_suite_overrides(spec["suite"]))
    started = time.perf_counter()
    try:
        out = run_suite(cfg, progress=spec.get("progress", False))
        result["provenance"] = {k: v for k, v in out["provenance"].items() if isinstance(v, str)}
        result["rows"] = [{k: r.get(k) for k in ("model", "task", "protocol", "mean", "seconds", "config")}
                          for r in out["rows"] if r.get("source") == "measured"]
        result["stopped"] = "finished"
    except StepLimitReached:
        result["stopped"] = f"after {limit} steps"
    result["wall_s"] = time.perf_counter() - started
    result["step_times"] = [t - started for t in steps]
    result["load_after"] = os.getloadavg()
    result["torch_threads"] = torch.get_num_threads()
    tmp = spec_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    os.replace(tmp, spec_path.with_suffix(".result.json"))
    return 0


def _suite_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """JSON values back to SuiteConfig types (lists become tuples)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def measure(name: str, suite: dict[str, Any], work: Path, args: argparse.Namespace, steps: int = 0) -> dict[str, Any]:
    """Run one stage in a child process under the tree-memory sampler; returns its record."""
    from hear_dymn.bench.memory import TreeMemorySampler

    work.mkdir(parents=True, exist_ok=True)
    spec_path = work / f"{_slug(name)}.json"
    spec = {"suite": suite, "steps": steps, "threads": args.threads, "progress": not args.quiet}
    spec_path.write_text(json.dumps(spec, indent=2))
    result_path = spec_path.with_suffix(".result.json")
    result_path.unlink(missing_ok=True)
    print(f"[scale] {name} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)])
    with TreeMemorySampler(child.pid, interval=args.interval) as sampler:
        code = child.wait()
    process_s = time.perf_counter() - started
    if code != 0 or not result_path.is_file():
        raise RuntimeError(f"stage {name!r} failed (exit code {code}); its settings are in {spec_path}")
    result = json.loads(result_path.read_text())
    record = {"name": name, "peak_gb": sampler.peak_bytes / GB, "peak_processes": sampler.peak_processes,
              "max_processes": sampler.max_processes, "samples": sampler.count, "process_s": process_s,
              "baseline_gb": result.pop("baseline_pss") / GB, **result}
    print(f"[scale] {name}: {record['wall_s']:.1f} s, peak {record['peak_gb']:.2f} GB over "
          f"{record['peak_processes']} process(es)", file=sys.stderr, flush=True)
    return record


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


# ------------------------------------------------------------------------------------------------------------
# the plan


def _parse_sets(items: list[str]) -> dict[str, Any]:
    from hear_dymn.bench.suite import SuiteConfig

    known = {f.name: f for f in dataclasses.fields(SuiteConfig)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in known:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY a SuiteConfig field "
                             f"({', '.join(sorted(known))})")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        default = known[key].default
        if isinstance(default, tuple) and not isinstance(parsed, list):
            parsed = [json.loads(v) if re.fullmatch(r"-?\d+(\.\d+)?", v) else v for v in value.split(",")]
        out[key] = parsed
    return out


def _stage_key(name: str, suite: dict[str, Any], steps: int, layout: dict[str, Any]) -> str:
    from hear_dymn.bench.suite import git_commit

    blob = json.dumps({"name": name, "suite": {k: v for k, v in suite.items() if k not in ("out_dir", "cache_dir")},
                       "steps": steps, "layout": layout, "commit": git_commit()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Runner:
    """Runs the stages, keeping finished ones in ``<work-dir>/results/`` so that a rerun measures only the rest."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.work_dir)
        self.records: list[dict[str, Any]] = []
        self.sets = _parse_sets(args.set)

    def stage(self, name: str, suite: dict[str, Any], layouts: dict[str, Any], steps: int = 0,
              fresh_cache: bool = False) -> dict[str, Any]:
        suite = {"seeds": [0], **suite, **self.sets}
        key = _stage_key(name, suite, steps, layouts)
        saved = self.work / "results" / f"{_slug(name)}-{key}.json"
        if saved.is_file() and not self.args.redo:
            record = json.loads(saved.read_text())
            print(f"[scale] {name}: measured before ({saved})", file=sys.stderr)
        else:
            if fresh_cache:  # measured from an empty cache (embeddings and fine-tuning checkpoints)
                shutil.rmtree(suite["cache_dir"], ignore_errors=True)
            record = measure(name, suite, self.work / "stages", self.args, steps)
            record["layouts"] = layouts
            saved.parent.mkdir(parents=True, exist_ok=True)
            tmp = saved.with_suffix(".tmp")
            tmp.write_text(json.dumps(record, indent=2, default=str))
            os.replace(tmp, saved)
        self.records.append(record)
        return record


def _layouts_for(args: argparse.Namespace, size: Size, datasets=DATASETS) -> dict[str, dict[str, Any]]:
    data = Path(args.work_dir) / "data"
    return {d: write_layout(d, data / size.label.replace("%", "pct") / d, data / "pool", size.of(d), args.seed)
            for d in datasets}


def _root(args: argparse.Namespace, size: Size, dataset: str) -> str:
    return str(Path(args.work_dir) / "data" / size.label.replace("%", "pct") / dataset)


def run(args: argparse.Namespace) -> dict[str, Any]:
    runner = Runner(args)
    work = Path(args.work_dir)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    stages = [s.strip() for s in args.stages.split(",")]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages: {', '.join(STAGES)}")
    models = tuple(args.models.split(","))
    layouts: dict[str, dict[str, Any]] = {}
    for size in sizes:
        if not {"extract", "linear", "mlp", "finetune", "harness"} & set(stages):
            break
        wanted = DATASETS if {"extract", "linear", "mlp", "finetune"} & set(stages) else ("fsd50k",)
        print(f"[scale] layouts at {size.label} ...", file=sys.stderr, flush=True)
        found = _layouts_for(args, size, wanted)
        for d, info in found.items():
            layouts[f"{d}@{size.label}"] = info
        data = {d: _root(args, size, d) for d in wanted}
        cache = str(work / "caches" / f"probes-{_slug(size.label)}")
        common = {"models": list(models), "tasks": list(wanted), "data": data, "cache_dir": cache}
        if {"extract", "linear", "mlp"} & set(stages):
            if "extract" in stages or not Path(cache).is_dir():  # the warm stages need its cache
                runner.stage(f"extract+linear (cold) @ {size.label}",
                             {**common, "protocols": ["linear"], "out_dir": str(work / "runs" / "extract")}, found,
                             fresh_cache=True)
            for probe in ("linear", "mlp"):
                if probe in stages:
                    runner.stage(f"{probe} (warm) @ {size.label}",
                                 {**common, "protocols": [probe], "out_dir": str(work / "runs" / probe)}, found)
        if "finetune" in stages:
            for d in wanted:
                runner.stage(f"finetune {d} @ {size.label}",
                             {"models": [args.finetune_model], "tasks": [d], "data": {d: data[d]},
                              "protocols": ["finetune"], "finetune_preset": "paper",
                              "finetune_epochs": None if args.steps else 1,
                              "cache_dir": str(work / "caches" / f"finetune-{d}-{_slug(size.label)}"),
                              "out_dir": str(work / "runs" / "finetune")}, {d: found[d]}, steps=args.steps,
                             fresh_cache=True)
        if "harness" in stages:
            cache = str(work / "caches" / f"harness-{_slug(size.label)}")
            suite = {"models": ["logmel"], "tasks": ["fsd50k"], "data": {"fsd50k": data["fsd50k"]},
                     "protocols": ["linear"], "seeds": list(suite_default("seeds")), "cache_dir": cache,
                     "out_dir": str(work / "runs" / "harness")}
            runner.stage(f"harness cold @ {size.label}", suite, {"fsd50k": found["fsd50k"]}, fresh_cache=True)
            runner.stage(f"harness warm @ {size.label}", suite, {"fsd50k": found["fsd50k"]}, fresh_cache=False)
    if "finetune-memory" in stages:
        data_dir = work / "data" / "ftmem"
        for n in [int(v) for v in args.train_clips.split(",")]:
            counts = {"train": n, "val": args.eval_clips, "eval": args.eval_clips}
            info = write_layout("ftmem", data_dir / f"train{n}", work / "data" / "pool", sum(counts.values()),
                                args.seed, split_counts=counts)
            layouts[f"ftmem@{n}"] = info
            runner.stage(f"finetune-memory {n} train clips",
                         {"models": [args.finetune_model], "tasks": ["fsd50k"],
                          "data": {"fsd50k": str(data_dir / f"train{n}")}, "protocols": ["finetune"],
                          "finetune_preset": "paper", "finetune_epochs": None,
                          "cache_dir": str(work / "caches" / f"ftmem-{n}"), "out_dir": str(work / "runs" / "ftmem")},
                         {"ftmem": info}, steps=max(args.steps, 2), fresh_cache=True)
    return {"records": runner.records, "layouts": layouts, "sizes": [s.label for s in sizes], "stages": stages}


def suite_default(name: str) -> Any:
    from hear_dymn.bench.suite import suite_config

    return getattr(suite_config("quick"), name)


# ------------------------------------------------------------------------------------------------------------
# the report


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")) / (1 << 20)
    except (OSError, StopIteration, ValueError):
        mem = float("nan")
    return f"{cpu}, {threads.available_cores()} core(s) available, {mem:.0f} GiB RAM"


def _embedding_line(record: dict[str, Any]) -> str:
    return record.get("provenance", {}).get("embedding shards", "")


def _computed(record: dict[str, Any]) -> tuple[int | None, float | None, float | None]:
    """(shards computed, clips computed, their seconds) from the provenance line, where it says."""
    line = _embedding_line(record)
    shards = re.match(r"(\d+) of \d+ computed", line)
    clips = re.search(r"\((\d+) clips in ([\d.]+) s", line)
    return (int(shards.group(1)) if shards else None, int(clips.group(1)) if clips else None,
            float(clips.group(2)) if clips else None)


def _steps(record: dict[str, Any]) -> tuple[float | None, float | None, int]:
    """(seconds to the first optimizer step, steps/s after it, steps)."""
    times = record.get("step_times") or []
    if not times or not record["name"].startswith("finetune"):
        return None, None, 0
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None
    return times[0], rate, len(times)


def _fmt(value: float | None, fmt: str = ".1f") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def render(plan: dict[str, Any], args: argparse.Namespace, started: str, wall: float) -> str:
    from hear_dymn.bench.suite import git_commit

    records = plan["records"]
    lines = ["# Scale check", "",
             f"Report written {started} on {_machine()}; git {git_commit()}; python {platform.python_version()}. "
             f"Command: `{' '.join(sys.argv)}`; the stages took {sum(r['process_s'] for r in records) / 60:.1f} min "
             f"(this invocation {wall / 60:.1f} min; stages measured before are reused).", "",
             "Peak memory is the largest sample (every "
             f"{args.interval:g} s) of PSS summed over the stage's whole process tree (the child process running "
             "the stage and all its descendants: DataLoader and Ray workers); *after imports* is that process's "
             "PSS once torch and the package are loaded, before any work. Wall time is the stage's run in its "
             "process (imports excluded); *with process start* adds the interpreter start and imports. Load is "
             "the 1-minute load average before / after (other work on the "
             "same cores slows every figure).", ""]
    if plan["layouts"]:
        lines += ["## Layouts", "", "| layout | clips | splits | distinct pool files (MB) | audio (h) | written in |",
                  "|---|---:|---|---:|---:|---:|"]
        for name, info in plan["layouts"].items():
            splits = ", ".join(f"{k} {v}" for k, v in info["counts"].items())
            lines.append(f"| {name} | {info['clips']:,} | {splits} | {info['pool_files']} ({info['pool_mb']}) | "
                         f"{info['audio_hours']} | {info.get('write_seconds', 0)} s |")
        lines.append("")
    lines += ["## Stages", "", "| stage | wall (s) | with process start (s) | peak PSS (GB) | after imports (GB) "
              "| processes at peak (max) | load | outcome |", "|---|---:|---:|---:|---:|---:|---|---|"]
    for r in records:
        shards, clips, _ = _computed(r)
        first, rate, n = _steps(r)
        outcome = r.get("stopped", "")
        if shards is not None:
            outcome += f"; {shards} embedding shard(s) computed" + (f" ({clips} clips)" if clips else "")
        if n:
            outcome += f"; {n} optimizer steps, first after {first:.1f} s"
        load = f"{r['load_before'][0]:.1f} / {r['load_after'][0]:.1f}"
        lines.append(f"| {r['name']} | {r['wall_s']:.1f} | {r['process_s']:.1f} | {r['peak_gb']:.2f} | "
                     f"{r['baseline_gb']:.2f} | "
                     f"{r['peak_processes']} ({r['max_processes']}) | {load} | {outcome} |")
    lines.append("")
    lines += _growth(records, plan["sizes"])
    lines += _throughput(records)
    lines += _targets(records)
    lines += ["## Notes", "",
              "- The audio of every layout is a pool of a few distinct synthetic files hard-linked under the official "
              "names: after its first read each file comes from the page cache, so decoding and resampling are "
              "measured but disk reads are not (a real FSD50K is about 34 GB of WAV read from disk).",
              "- Probe features repeat with the pool files, so probe fit times here say how the harness scales, not "
              "what a probe costs on real, varied features (`eval/benchmark_linear.py` measures that).",
              f"- Networks without released weights on this machine run with random init (timing and memory do not "
              f"depend on the weights). Threads: {records[0]['threads'] if records else '-'}.",
              "- Fine-tuning stages stop after the given number of optimizer steps (counted by a global optimizer "
              "step hook); their wall time covers data setup and those steps only.", ""]
    return "\n".join(lines)


def _growth(records: list[dict[str, Any]], sizes: list[str]) -> list[str]:
    by_stage: dict[str, dict[str, dict[str, Any]]] = {}
    for r in records:
        stage, sep, size = r["name"].rpartition(" @ ")
        if sep:
            by_stage.setdefault(stage, {})[size] = r
    rows = [(stage, found) for stage, found in by_stage.items() if len(found) > 1]
    if not rows:
        return []
    shown = [s for s in sizes if any(s in found for _, found in rows)]
    lines = ["## Growth with dataset size", "", "| stage | " + " | ".join(f"{s}: wall s / peak GB" for s in shown)
             + " |", "|---|" + "---:|" * len(shown)]
    for stage, found in rows:
        cells = [f"{found[s]['wall_s']:.1f} / {found[s]['peak_gb']:.2f}" if s in found else "–" for s in shown]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _throughput(records: list[dict[str, Any]]) -> list[str]:
    lines = ["## Throughput", "", "| stage | what | rate |", "|---|---|---:|"]
    for r in records:
        _, clips, seconds = _computed(r)
        if clips and seconds:
            lines.append(f"| {r['name']} | embedding: clips computed / s of computing | {clips / seconds:.1f} |")
        first, rate, n = _steps(r)
        if rate:
            batch = next((row.get("config", {}).get("batch_size") for row in r.get("rows", [])), None)
            lines.append(f"| {r['name']} | fine-tuning: optimizer steps / s after the first | {rate:.3f} |")
            if batch:
                lines.append(f"| {r['name']} | fine-tuning: training clips / s | {rate * batch:.1f} |")
        line = _embedding_line(r)
        if line and "computed" in line and "all read" not in line:
            lines.append(f"| {r['name']} | provenance | {line} |")
    return [*lines, ""] if len(lines) > 4 else []


def _targets(records: list[dict[str, Any]]) -> list[str]:
    lines = []
    cold = {r["name"].rpartition(" @ ")[2]: r for r in records if r["name"].startswith("harness cold")}
    warm = {r["name"].rpartition(" @ ")[2]: r for r in records if r["name"].startswith("harness warm")}
    for size, c in cold.items():
        w = warm.get(size)
        judged = size == "100%"  # the targets are stated for the full-size layout

        def verdict(ok: bool) -> str:
            return ("met" if ok else "missed") if judged else "judged at full size only"

        lines.append(f"- harness at {size} (FSD50K, logmel + linear), cold: {c['process_s']:.0f} s with the "
                     f"process start ({c['wall_s']:.0f} s run) (target < {TARGETS['harness_cold_s']:.0f} s: "
                     f"{verdict(c['process_s'] < TARGETS['harness_cold_s'])})")
        if w:
            shards, _, _ = _computed(w)
            fraction = w["process_s"] / c["process_s"] if c["process_s"] else float("nan")
            ok = fraction < TARGETS["harness_warm_fraction"] and shards == 0
            lines.append(f"- harness at {size}, warm: {w['process_s']:.0f} s = {fraction:.0%} of cold, "
                         f"{shards if shards is not None else '?'} embedding shard(s) computed (target < 25 % "
                         f"computing none: {verdict(ok)})")
    memory = [(int(re.match(r"finetune-memory (\d+)", r["name"]).group(1)), r) for r in records
              if r["name"].startswith("finetune-memory")]
    if memory:
        memory.sort(key=lambda item: item[0])
        base_n, base = memory[0]
        for n, r in memory[1:]:
            delta = r["peak_gb"] - base["peak_gb"]
            judged = base_n == 100 and n in (4000, 40000)  # the target's clip counts
            verdict = ("met" if delta <= TARGETS["finetune_memory_gb"] else "missed") if judged else \
                "judged at 4,000 and 40,000 clips against 100 only"
            lines.append(f"- fine-tuning peak at {n:,} training clips: {r['peak_gb']:.2f} GB, {delta:+.2f} GB against "
                         f"{base_n:,} clips ({base['peak_gb']:.2f} GB); target within "
                         f"{TARGETS['finetune_memory_gb']} GB: {verdict}")
    return ["## Targets", "", *lines, ""] if lines else []


# ------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="500,1000",
                        help="dataset sizes, comma-separated: clips per dataset (capped at its full size), N%% or "
                             "full (default: 500,1000)")
    parser.add_argument("--stages", default="extract,linear,mlp,finetune,harness,finetune-memory",
                        help=f"comma-separated, of {', '.join(STAGES)} (default: all)")
    parser.add_argument("--steps", type=int, default=4,
                        help="optimizer steps per fine-tuning stage; 0: one whole epoch (default: 4)")
    parser.add_argument("--train-clips", default="100,400",
                        help="training clips of the finetune-memory stage (default: 100,400; the target: "
                             "100,4000,40000)")
    parser.add_argument("--eval-clips", type=int, default=32,
                        help="validation and evaluation clips of the finetune-memory layouts (default: 32)")
    parser.add_argument("--models", default="logmel", help="models of the extract/linear/mlp stages (default: logmel)")
    parser.add_argument("--finetune-model", default="dymn04",
                        help="network of the fine-tuning stages (default: dymn04)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other SuiteConfig field for every stage, e.g. --set device=cuda")
    parser.add_argument("--out-dir", default="reports/scale", help="report folder (default: reports/scale)")
    parser.add_argument("--work-dir", default="cache/scale",
                        help="layouts, caches and finished stages (default: cache/scale)")
    parser.add_argument("--interval", type=float, default=0.05, help="memory sampling interval, s (default: 0.05)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of each stage (default: the "
                        "thread budget's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the layouts (default: 0)")
    parser.add_argument("--redo", action="store_true", help="measure stages again even if measured before")
    parser.add_argument("--quiet", action="store_true", help="no progress bars from the stages")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return _child(args.child)
    from datetime import datetime, timezone

    from hear_dymn.bench.run_folder import write_run

    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    t0 = time.perf_counter()
    try:
        plan = run(args)
    except (ValueError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - t0
    text = render(plan, args, started, wall)
    write_run(args.out_dir, "scale_check", {"scale.md": text, "scale.json": json.dumps(plan, indent=2, default=str)},
              {"sizes": plan["sizes"], "stages": plan["stages"]})
    print(f"wrote {args.out_dir}/scale.md ({len(plan['records'])} stages, {wall / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
