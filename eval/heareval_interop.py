#!/usr/bin/env python
"""hear-eval-kit interop: its embedding runner on ``hear_dymn``, then its predictor and our MLP probe on the
very same embedding files.

    python eval/heareval_interop.py                          # -> reports/heareval_interop/heareval_interop.md
    python eval/heareval_interop.py --seeds 0 1 2 --work-dir /tmp/interop

Steps (each heareval step runs in its own process, as a user would run it):

1. Install hear-eval-kit 2021.1.3 and the packages it really imports into ``.heareval-deps`` with
   ``pip install --no-deps --target`` (its metadata pins numpy 1.19 and numba 0.48, which do not exist for
   Python 3.11; the project's venv keeps NumPy 2 and torch 2.9). heareval is then run with
   ``PYTHONPATH=.heareval-deps``.
2. Write the k-fold HEAR scene task ``mini_scene_kfold`` (hear-preprocess layout, 32 kHz) and a random-weight
   dymn04 checkpoint (``python -m hear_dymn.models.random_weights``).
3. ``python -m heareval.embeddings.runner hear_dymn --model CKPT --tasks-dir DIR`` twice: with the default
   embedding (to show the runner works as is) and with ``--model-options '{"layers": [5]}'``. Random weights
   make the deep maps of dymn04 grow to ~1e15 on these clips, so a probe on the default embedding scores at
   chance; block 5 plus the log-mel means keeps the scores informative.
4. ``python -m heareval.predictions.runner`` on the second embedding folder (its default: 8 grid points, seed
   42, early stopping; grid search on the first k-fold split, the chosen grid point retrained on the others).
5. Our :func:`hear_dymn.bench.probes.fit_mlp_folds` (``MLP_PRESETS["hear"]`` with ``grid_draw="heareval"``,
   i.e. the same 8 grid points, and ``shuffle=False`` like heareval's loader) on the embedding files heareval
   wrote (``<split>.embeddings.npy`` memmaps and ``<split>.target-labels.pkl``), one run per seed.
6. ``reports/heareval_interop/heareval_interop.md``: test accuracy per fold and seed, wall times, epochs, versions.

The event part (``--parts events``) does the same on the HEAR event task ``mini_events`` (written at 48 kHz, with
a 32 kHz copy because heareval reads ``<task>/<model rate>/``): heareval's embedding runner (timestamp embeddings,
``{"layers": [1]}``: block 1, whose random-weight activations stay bounded, unlike deeper blocks, which grow by
orders of magnitude on some clips), its predictor (8 grid points, post-processing grid, sed_eval), then our event probe
(:func:`hear_dymn.bench.events.fit_event_rounds`, the same grid points, no shuffling) on heareval's embedding files
(``<split>.embeddings.npy``, ``<split>.filename-timestamps.json``), with our frame labels checked against the ones
heareval wrote and heareval's saved test events rescored with our sed_eval scoring. Report:
``reports/heareval_interop/heareval_interop_events.md``. A part not run keeps its report file from the previous
run (``run.json`` lists every file and, under ``parts``, when each was made).

Two compatibility settings apply to heareval's processes only: Lightning 1.9.5 reads ``np.Inf`` (removed in
NumPy 2), so the alias is restored before heareval starts, and ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` lets
heareval ``torch.load`` the checkpoints it has just written itself (torch >= 2.6 defaults to weights-only
loading, which rejects the hyper-parameters Lightning pickles into them).
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import pickle
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from hear_dymn.bench.run_folder import write_run  # noqa: E402
from hear_dymn.bench.probes import MLP_PRESETS, ProbeData, ProbeResult, fit_mlp_folds, fold_splits  # noqa: E402
from hear_dymn.bench.tasks.synthetic import HEAR_EVENTS_TASK_NAME, HEAR_KFOLD_TASK_NAME, write_miniature  # noqa: E402

HEAREVAL_DEPS = ROOT / ".heareval-deps"
#: hear-eval-kit and what it imports, pinned; installed with --no-deps next to (not into) the venv.
HEAREVAL_PACKAGES = (
    "heareval==2021.1.3",
    "pytorch-lightning==1.9.5",  # heareval uses Trainer(gpus=...) and *_epoch_end hooks, gone in Lightning 2
    "torchmetrics==1.4.3",
    "lightning-utilities==0.11.9",
    "torchinfo==1.8.0",
    "pyyaml==6.0.4",
    "click==8.5.1",
    "python-slugify==9.2.0",
    "text-unidecode==1.3",
    "intervaltree==3.2.1",
    "sortedcontainers==2.4.0",
    "more-itertools==11.2.1",
    "sed-eval==0.2.1",
    "dcase-util==0.2.20",  # imported by heareval.score through sed_eval
    "librosa==0.11.0",  # dcase_util imports it at module level (lazily loaded; numba is never imported)
    "lazy_loader==0.6",
    "future==1.0.0",
    "validators==0.36.0",
)
# Lightning 1.9.5 reads np.Inf, removed in NumPy 2: restore the alias, then run the module as `python -m` would.
_LAUNCHER = ("import runpy, sys, numpy; numpy.Inf = numpy.inf; sys.argv = sys.argv[1:]; "
             "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)")
# Event tasks only: heareval looks up the post-processing chosen at the best checkpoint by the checkpoint's "epoch",
# which Lightning 1.9.5 stores one higher than the current_epoch heareval recorded at that validation (written for
# Lightning 1.4); the shim falls back to the previous epoch's entry, which is the one chosen at that checkpoint.
_EVENT_SHIM = ("import heareval.predictions.task_predictions as tp; "
               "_orig = tp.EventPredictionModel.epoch_best_postprocessing_or_default; "
               "tp.EventPredictionModel.epoch_best_postprocessing_or_default = lambda self, epoch: _orig(self, epoch "
               "if not self.use_scoring_for_early_stopping or epoch in self.epoch_best_postprocessing else epoch - 1); ")


# ----------------------------------------------------------------------------------------------------------------
# Installing and running hear-eval-kit


def install_heareval(target: Path = HEAREVAL_DEPS) -> None:
    """``pip install --no-deps --target`` the pinned packages, unless they are all there already."""
    wanted = {re.split(r"==", p)[0].lower().replace("-", "_"): p.split("==")[1] for p in HEAREVAL_PACKAGES}
    present = {}
    if target.is_dir():
        for dist in md.distributions(path=[str(target)]):
            present[dist.metadata["Name"].lower().replace("-", "_")] = dist.version
    if all(present.get(name) == version for name, version in wanted.items()):
        return
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps", "--upgrade",
           "--target", str(target), *HEAREVAL_PACKAGES]
    print("[interop] " + " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)


def heareval_env(threads: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join([str(HEAREVAL_DEPS), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"  # heareval reloads its own Lightning checkpoints
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_heareval(module: str, args: Sequence[str], log_path: Path, cwd: Path, threads: int | None = None) -> float:
    """Run ``python -m <module> <args>`` with heareval on the path; returns the wall time (imports included).

    Raises:
        RuntimeError: the command failed; the message holds the end of its log.
    """
    launcher = _LAUNCHER
    if module == "heareval.predictions.runner":
        head, tail = _LAUNCHER.split("sys.argv = sys.argv[1:]; ")
        launcher = head + _EVENT_SHIM + "sys.argv = sys.argv[1:]; " + tail
    cmd = [sys.executable, "-c", launcher, module, *args]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.run(cmd, cwd=cwd, env=heareval_env(threads), stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"`python -m {module} {' '.join(args)}` failed ({proc.returncode}); log {log_path}:\n{tail}")
    return seconds


def heareval_versions() -> dict[str, str]:
    names = ("heareval", "pytorch-lightning", "torchmetrics", "lightning-utilities")
    found = {d.metadata["Name"].lower(): d.version for d in md.distributions(path=[str(HEAREVAL_DEPS)])}
    out = {name: found.get(name, "missing") for name in names}
    out.update({"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()})
    return out


# ----------------------------------------------------------------------------------------------------------------
# heareval's embedding folder format


def read_heareval_embeddings(task_dir: Path) -> tuple[dict[str, Any], dict[str, ProbeData]]:
    """The splits of an embedding folder written by ``heareval.embeddings.runner`` (scene tasks).

    Each split is a raw float32 memmap ``<split>.embeddings.npy`` of the shape in
    ``<split>.embedding-dimensions.json`` and a pickled list of label lists ``<split>.target-labels.pkl`` in the
    same (shuffled) order.

    Returns:
        ``(task metadata, {split: ProbeData})``; multiclass targets are class indices, multilabel 0/1 matrices.
    """
    meta = json.loads((task_dir / "task_metadata.json").read_text())
    if meta["embedding_type"] != "scene":
        raise ValueError(f"{task_dir}: only scene tasks are supported, got {meta['embedding_type']!r}")
    vocab_lines = (task_dir / "labelvocabulary.csv").read_text().splitlines()
    if vocab_lines[0].strip() != "idx,label":
        raise ValueError(f"{task_dir}/labelvocabulary.csv: expected header 'idx,label', got {vocab_lines[0]!r}")
    index = {}
    for line in vocab_lines[1:]:
        idx, label = line.split(",", 1)
        index[label] = int(idx)
    multilabel = meta["prediction_type"] == "multilabel"
    splits = {}
    for split in meta["splits"]:
        n, d = json.loads((task_dir / f"{split}.embedding-dimensions.json").read_text())
        x = np.array(np.memmap(task_dir / f"{split}.embeddings.npy", dtype=np.float32, mode="r", shape=(n, d)))
        with (task_dir / f"{split}.target-labels.pkl").open("rb") as fh:
            labels = pickle.load(fh)
        if multilabel:
            y = np.zeros((n, len(index)), dtype=np.float32)
            for i, names in enumerate(labels):
                y[i, [index[str(name)] for name in names]] = 1.0
        else:
            y = np.array([index[str(names[0])] for names in labels], dtype=np.int64)
        splits[split] = ProbeData(x, y)
    return meta, splits


def write_heareval_embeddings(task_dir: Path, splits: dict[str, ProbeData], *, task_name: str, multilabel: bool,
                              num_classes: int, split_mode: str, evaluation: str,
                              param_grid: dict[str, list[Any]] | None = None) -> None:
    """Write precomputed embeddings as ``heareval.embeddings.runner`` would, so its predictor can read them.

    Args:
        task_dir: folder to create.
        splits: ``{split: ProbeData}`` (``fold00`` ... or ``train``/``valid``/``test``).
        task_name, multilabel, num_classes, split_mode, evaluation: task metadata (``evaluation`` is the
            heareval score name, e.g. ``top1_acc`` or ``mAP``).
        param_grid: optional ``evaluation_params.task_specific_param_grid`` (heareval's per-task grid override).
    """
    task_dir.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "task_name": task_name, "version": "synthetic", "embedding_type": "scene",
        "prediction_type": "multilabel" if multilabel else "multiclass", "split_mode": split_mode,
        "splits": list(splits), "sample_duration": 1.0, "evaluation": [evaluation],
    }
    if split_mode != "trainvaltest":
        meta["nfolds"] = len(splits)
    if param_grid:
        meta["evaluation_params"] = {"task_specific_param_grid": param_grid}
    (task_dir / "task_metadata.json").write_text(json.dumps(meta, indent=2))
    labels = [f"class_{k:03d}" for k in range(num_classes)]
    (task_dir / "labelvocabulary.csv").write_text("idx,label\n" + "".join(f"{k},{s}\n" for k, s in enumerate(labels)))
    for split, data in splits.items():
        x = np.ascontiguousarray(data.x, dtype=np.float32)
        memmap = np.memmap(task_dir / f"{split}.embeddings.npy", dtype=np.float32, mode="w+", shape=x.shape)
        memmap[:] = x
        memmap.flush()
        del memmap
        (task_dir / f"{split}.embedding-dimensions.json").write_text(json.dumps(list(x.shape)))
        if multilabel:
            names = [[labels[k] for k in np.flatnonzero(row)] for row in data.y]
        else:
            names = [[labels[int(k)]] for k in data.y]
        with (task_dir / f"{split}.target-labels.pkl").open("wb") as fh:
            pickle.dump(names, fh)
        (task_dir / f"{split}.json").write_text(json.dumps({}))


def heareval_rounds(meta: dict[str, Any], splits: dict[str, ProbeData]) -> list[tuple[str, ProbeData, ProbeData,
                                                                                            ProbeData]]:
    """``(test split, train, valid, test)`` per round, by heareval's split rule (k-fold: valid = next fold)."""
    if meta["split_mode"] == "trainvaltest":
        return [("test", splits["train"], splits["valid"], splits["test"])]
    rounds = []
    for train, valid, test in fold_splits(list(splits)):
        parts = [splits[s] for s in train]
        joined = ProbeData(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))
        rounds.append((test, joined, splits[valid], splits[test]))
    return rounds


def read_heareval_predictions(pred_dir: Path) -> dict[str, Any]:
    """heareval's predictor output: test score, validation score and best epoch per split, its wall time
    (``prediction-done.json``: the ``task_predictions`` call, imports excluded), and per Lightning run (one per
    grid point, then one per retrained split) the hyper-parameters and the number of epochs run."""
    scores = json.loads((pred_dir / "test.predicted-scores.json").read_text())
    done = json.loads((pred_dir / "prediction-done.json").read_text())
    folds = {k: v for k, v in scores.items() if isinstance(v, dict) and "test_score" in v}
    runs = []
    versions = sorted((pred_dir / "lightning_logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    for version in versions:
        hparams = _read_simple_yaml(version / "hparams.yaml")
        epochs = [int(float(row["epoch"])) for row in _read_csv(version / "metrics.csv") if row.get("val_score")]
        runs.append({
            "hidden_layers": int(hparams["hidden_layers"]), "lr": float(hparams["lr"]),
            "initialization": "xavier_normal" if "normal" in hparams["initialization"] else "xavier_uniform",
            "epochs_run": max(epochs) + 1 if epochs else 0, "validations": len(epochs),
        })
    return {"folds": folds, "seconds": float(done["time"]), "runs": runs, "hparams": scores.get("hparams", {})}


def _read_simple_yaml(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if ":" in line and not line.startswith(" "):
            key, value = line.split(":", 1)
            out[key.strip()] = value.strip()
    return out


def _read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------------------------------------------------------
# Event tasks


def write_event_task(work: Path) -> Path:
    """The 48 kHz event miniature plus the 32 kHz copy heareval's runner reads (``<task>/32000/<split>``)."""
    from hear_dymn.bench.audio import read_audio

    src = write_miniature("hear_events", work / "src" / HEAR_EVENTS_TASK_NAME)
    dst = work / "tasks_events" / HEAR_EVENTS_TASK_NAME
    if (dst / ".done").exists():
        return dst
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    import soundfile as sf

    for path in sorted((dst / "48000").rglob("*.wav")):
        out = dst / "32000" / path.relative_to(dst / "48000")
        out.parent.mkdir(parents=True, exist_ok=True)
        sf.write(out, np.clip(read_audio(path, 32000), -1.0, 1.0), 32000, subtype="PCM_16")
    (dst / ".done").write_text("")
    return dst


def read_heareval_event_split(task_dir: Path, split: str, labels: Sequence[str]):
    """One split of heareval's event embedding folder as our :class:`~hear_dymn.bench.events.FrameSplit` (frame
    labels from the split's events by our rule) and heareval's own frame labels ``(N, C)`` for comparison."""
    from hear_dymn.bench.events import FrameSplit

    n, d = json.loads((task_dir / f"{split}.embedding-dimensions.json").read_text())
    x = np.array(np.memmap(task_dir / f"{split}.embeddings.npy", dtype=np.float32, mode="r", shape=(n, d)))
    stamps = json.loads((task_dir / f"{split}.filename-timestamps.json").read_text())
    with (task_dir / f"{split}.target-labels.pkl").open("rb") as fh:
        frame_names = pickle.load(fh)
    names = [Path(slug).name for slug, _ in stamps]
    times = np.array([t for _, t in stamps], dtype=np.float64)
    files, offsets = [], [0]
    for i, name in enumerate(names):  # heareval writes each file's frames contiguously
        if i and name != names[i - 1]:
            files.append(names[i - 1])
            offsets.append(i)
    files.append(names[-1])
    offsets.append(len(names))
    if len(set(files)) != len(files):
        raise ValueError(f"{task_dir}/{split}: the frames of a file are not contiguous")
    reference = json.loads((task_dir / f"{split}.json").read_text())
    frames = FrameSplit.build(x, times, np.array(offsets), files, reference, labels)
    index = {label: i for i, label in enumerate(labels)}
    theirs = np.zeros((n, len(labels)), dtype=np.float32)
    for i, present in enumerate(frame_names):
        theirs[i, [index[str(label)] for label in present]] = 1.0
    return frames, theirs


def run_event_part(work: Path, ckpt: Path, seeds: Sequence[int], threads: int, timings: dict[str, Any],
                   timings_path: Path) -> dict[str, Any]:
    """heareval's runners and our event probe on the event miniature; returns what the report shows."""
    from hear_dymn.bench.events import event_probe_config, fit_event_rounds, postprocessing_grid, score_events

    tasks_dir = write_event_task(work)
    options, folder = '{"layers": [1]}', "hear_dymn-layers=1"
    emb_dir = work / "embeddings_events" / folder / HEAR_EVENTS_TASK_NAME
    if not (emb_dir / ".done.embeddings").exists():
        print(f"[interop] heareval embeddings runner on {HEAR_EVENTS_TASK_NAME}, --model-options {options}", flush=True)
        timings["events embed"] = run_heareval(
            "heareval.embeddings.runner",
            ["hear_dymn", "--model", str(ckpt), "--tasks-dir", str(tasks_dir.parent), "--task", HEAR_EVENTS_TASK_NAME,
             "--embeddings-dir", str(work / "embeddings_events"), "--model-options", options],
            work / "logs" / "embed-events.log", cwd=work)
        timings_path.write_text(json.dumps(timings, indent=2))
    if not (emb_dir / "prediction-done.json").exists():
        print("[interop] heareval predictions runner on the event task (8 grid points)", flush=True)
        timings["events predict_started"] = time.strftime("%Y-%m-%d %H:%M")
        timings["events predict_load"] = round(os.getloadavg()[0], 1)
        timings["events predict"] = run_heareval("heareval.predictions.runner", [str(emb_dir)],
                                                 work / "logs" / "predict-events.log", cwd=work, threads=threads)
        timings["events predict_threads"] = threads
        timings_path.write_text(json.dumps(timings, indent=2))
    if timings.get("events predict_threads") != threads:
        raise RuntimeError(f"heareval's event predictor in {emb_dir} ran with {timings.get('events predict_threads')} "
                           f"threads, not --threads {threads}; rerun with --fresh")

    meta = json.loads((emb_dir / "task_metadata.json").read_text())
    labels = [line.split(",", 1)[1] for line in (emb_dir / "labelvocabulary.csv").read_text().splitlines()[1:]]
    frames, label_mismatch, n_frames, at_end = {}, 0, 0, 0
    for split in ("train", "valid", "test"):
        frames[split], theirs = read_heareval_event_split(emb_dir, split, labels)
        bad = np.flatnonzero((frames[split].y != theirs).any(axis=1))
        label_mismatch += len(bad)
        n_frames += len(theirs)
        for i in bad:  # a timestamp exactly on an event's end?
            f = int(np.searchsorted(frames[split].offsets, i, side="right")) - 1
            ends = {float(e["end"]) for e in frames[split].reference[frames[split].file_names[f]]}
            at_end += int(float(frames[split].timestamps[i]) in ends)
    nan_stops = 0  # heareval runs whose last validation score was nan (Lightning's EarlyStopping stops on it)
    for version in (emb_dir / "lightning_logs").glob("version_*"):
        checks = [row["val_score"] for row in _read_csv(version / "metrics.csv") if row.get("val_score")]
        nan_stops += int(bool(checks) and checks[-1].lower() == "nan")
    he = json.loads((emb_dir / "test.predicted-scores.json").read_text())
    with (emb_dir / "test.predictions.pkl").open("rb") as fh:
        he_pred = pickle.load(fh)  # heareval's own output of this run: test events among torch tensors
    he_events = {name: [{"label": str(e["label"]), "start": float(e["start"]), "end": float(e["end"])} for e in evs]
                 for name, evs in he_pred["predicted_events"].items()}
    rescored = score_events(he_events, frames["test"].reference, labels, meta["evaluation"])

    cfg = replace(event_probe_config(MLP_PRESETS["hear"], meta["task_name"], meta), grid_draw="heareval",
                  shuffle=False)
    ours, started, load = {}, time.strftime("%Y-%m-%d %H:%M"), round(os.getloadavg()[0], 1)
    for seed in seeds:
        start = time.perf_counter()
        result = fit_event_rounds([(frames["train"], frames["valid"], frames["test"])], labels=labels,
                                  evaluation=meta["evaluation"], cfg=cfg, seed=seed, grid=postprocessing_grid(meta),
                                  use_scoring=bool(meta.get("use_scoring_for_early_stopping", True)))[0]
        ours[seed] = {"metrics": result.metrics, "selected": result.selected, "postprocessing": result.postprocessing,
                      "seconds": time.perf_counter() - start,
                      "epochs": sum(max(h["epoch"] for h in result.history if h["config"] == c)
                                    for c in {h["config"] for h in result.history})}
        print(f"[interop] ours seed {seed}: test {meta['evaluation'][0]} "
              f"{result.metrics[meta['evaluation'][0]]:.3f} in {ours[seed]['seconds']:.1f} s", flush=True)
    profile = json.loads((emb_dir / "profile.embeddings.json").read_text())
    return {"meta": meta, "heareval": he, "heareval_runs": read_heareval_predictions(emb_dir)["runs"],
            "rescored": rescored, "ours": ours, "frames": n_frames, "label_mismatch": label_mismatch,
            "label_mismatch_at_end": at_end, "nan_stops": nan_stops,
            "runs_total": len(list((emb_dir / "lightning_logs").glob("version_*"))),
            "dim": int(frames["train"].x.shape[1]), "embed_wall": timings["events embed"],
            "embed_profile": profile["time_elapsed"], "predict_wall": timings["events predict"],
            "predict_started": timings.get("events predict_started"), "predict_load": timings.get("events predict_load"),
            "ours_started": started, "ours_load": load, "files": {s: len(f.file_names) for s, f in frames.items()}}


def render_event_report(info: dict[str, Any], ev: dict[str, Any]) -> str:
    meta, he, ours = ev["meta"], ev["heareval"], ev["ours"]
    names = meta["evaluation"]
    seeds = sorted(ours)
    he_test = he["test"]
    lines = [
        "# hear-eval-kit interop: event task",
        "",
        f"Generated by `python eval/heareval_interop.py --parts events` on {info['date']} ({info['machine']}; load "
        f"average {info['load']} at the start).",
        "",
        f"Task: `{HEAR_EVENTS_TASK_NAME}`, the HEAR event task written by `hear_dymn.bench.tasks.synthetic` "
        f"(hear-preprocess layout, embedding_type `event`, {ev['files']['train']} / {ev['files']['valid']} / "
        f"{ev['files']['test']} files of 4 s, 3 classes of synthetic timbres with known event times; written at "
        "48 kHz, with a 32 kHz copy since heareval reads `<task>/<model rate>/`). Model: `hear_dymn` with a "
        "**random-weight** dymn04 checkpoint and `--model-options '{\"layers\": [1]}'` (block 1 + 128 log-mel "
        f"values per 50 ms timestamp, {ev['dim']} dims), not pretrained weights. Block 1 because the deeper blocks "
        "of random weights blow up on some clips (activations growing by orders of magnitude from block to block), "
        "which leaves both probes with a few huge outliers instead of features.",
        "",
        "## 1. heareval's embedding runner (timestamp embeddings)",
        "",
        f"`python -m heareval.embeddings.runner hear_dymn` completed in {ev['embed_wall']:.1f} s (heareval's "
        f"embedding time {ev['embed_profile']:.1f} s) and wrote {ev['frames']} frames with "
        "`<split>.filename-timestamps.json` and per-frame labels. Our frame labels (`hear_dymn.bench.events."
        f"frame_labels` on the split files' events) differ from heareval's on **{ev['label_mismatch']}** of "
        f"{ev['frames']} frames ({ev['label_mismatch_at_end']} of them on a timestamp exactly at an event's end: "
        "heareval compares the float32 timestamp with `end + 0.0001`, which NumPy 2 evaluates in float32 "
        "(`3700.0001` rounds to `3700.0`), so the end frame drops out; under the NumPy 1.19 heareval pins the "
        "comparison is float64 and includes it, as ours does).",
        "",
        "## 2. heareval's predictor vs our event probe on the same embedding files",
        "",
        "Same protocol: heareval's default grid and the same 8 grid points, early stopping on the validation "
        f"`{names[0]}` (every 3 epochs, patience 20), post-processing grid "
        "(median filter 250 ms, minimum duration 125 / 250 ms) chosen on the validation files at each check, test "
        "events from the best checkpoint with its post-processing, sed_eval scores. Differences that remain: "
        "initialisation and dropout random streams (heareval: Lightning's global seed 42; ours: seeded per grid "
        "point from `seed`). Ours scores the validation checks with its own onset F-measure (equal to sed_eval, "
        "`tests/test_events.py`) and the test events with sed_eval.",
        "",
        "| run | " + " | ".join(f"test {n}" for n in names) + f" | valid {names[0]} | post-processing | "
        "hidden layers | lr | initialization |",
        "|---|" + "---|" * (len(names) + 5),
    ]
    pp = ", ".join(f"{k} {v:g}" for k, v in he.get("postprocessing", []))
    hp = he.get("hparams", {})
    lines.append(f"| heareval (seed 42) | " + " | ".join(f"{he_test[f'test_{n}']:.3f}" for n in names)
                 + f" | {he_test['validation_score']:.3f} | {pp} | {hp.get('hidden_layers')} | {hp.get('lr')} | "
                 f"{'xavier_normal' if 'normal' in str(hp.get('initialization')) else 'xavier_uniform'} |")
    for s in seeds:
        o = ours[s]
        sel = o["selected"]
        lines.append(f"| ours seed {s} | " + " | ".join(f"{o['metrics'][n]:.3f}" for n in names)
                     + f" | {o['metrics'][f'valid_{names[0]}']:.3f} | "
                     + ", ".join(f"{k} {v:g}" for k, v in sorted(o["postprocessing"].items()))
                     + f" | {sel['hidden_layers']} | {sel['lr']} | {sel['initialization']} |")
    means = {n: float(np.mean([ours[s]["metrics"][n] for s in seeds])) for n in names}
    spread = {n: float(np.std([ours[s]["metrics"][n] for s in seeds], ddof=1)) if len(seeds) > 1 else float("nan")
              for n in names}
    lines += [
        "",
        "Ours over seeds: " + "; ".join(f"{n} {means[n]:.3f} (seed-to-seed std {spread[n]:.3f}, heareval "
                                        f"{he_test[f'test_{n}']:.3f}, difference {he_test[f'test_{n}'] - means[n]:+.3f})"
                                        for n in names) + ".",
        "",
        (("**Not within seed noise.** " if not min(ours[s]["metrics"][names[0]] for s in seeds)
          <= he_test[f"test_{names[0]}"] <= max(ours[s]["metrics"][names[0]] for s in seeds) else "")
         + f"{ev['nan_stops']} of heareval's {ev['runs_total']} Lightning runs ended on a "
        "validation check whose onset F-measure was `nan` (no event predicted on any validation file): Lightning's "
        "`EarlyStopping` (`check_finite=True`) stops a run there, long before its patience of 20 checks. Our probe "
        "follows the same rule (a `nan` check ends that grid point's training; `tests/test_probes.py`). Which grid "
        "points predict any event at their first checks, and so train on, depends on the initialisation and "
        "dropout draws, which differ between the two: on this random-weight embedding with 6 validation files the "
        "validation scores are low and noisy, heareval's best surviving run reached only the validation score "
        "above, and its test events match no reference onset. heareval fixes its seed (42), so its own "
        "seed-to-seed spread is not measured here.") if ev["nan_stops"] else "No heareval run ended on a `nan` check.",
        "",
        "heareval's saved test events (`test.predictions.pkl`) rescored with our sed_eval scoring "
        "(`hear_dymn.bench.events.score_events`): " + ", ".join(
            f"{n} {ev['rescored'][n]:.6f} (heareval reports {he_test[f'test_{n}']:.6f})" for n in names) + ".",
        "",
        "## 3. Wall time (CPU)",
        "",
        f"heareval's predictor ran at {ev['predict_started']} (1-minute load average {ev['predict_load']}), ours from "
        f"{ev['ours_started']} (load {ev['ours_load']}), each with {info['threads']} thread(s); not interleaved.",
        "",
        "| run | wall time (s) | epochs trained (all grid points) |",
        "|---|---|---|",
        f"| heareval predictor process (imports included) | {ev['predict_wall']:.1f} | "
        f"{sum(r['epochs_run'] for r in ev['heareval_runs'])} |",
    ]
    lines += [f"| ours seed {s} (`fit_event_rounds`) | {ours[s]['seconds']:.1f} | {ours[s]['epochs']} |" for s in seeds]
    lines += ["", "## Versions", ""] + [f"* {k}: {v}" for k, v in info["versions"].items()] + [""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# The interop run


def _epochs_run(result: ProbeResult) -> int:
    """Epochs trained by the run of the selected grid point (its last validation check)."""
    index = result.selected["grid_index"]
    return max(h["epoch"] for h in result.history if h["config"] == index)


def run_ours(rounds, cfg, seed: int) -> tuple[list[ProbeResult], float]:
    start = time.perf_counter()
    results = fit_mlp_folds([(train, valid, test) for _, train, valid, test in rounds], multilabel=False,
                            metric="accuracy", cfg=cfg, seed=seed)
    return results, time.perf_counter() - start


def render_report(info: dict[str, Any]) -> str:
    he, ours = info["heareval"], info["ours"]
    folds = [name for name, *_ in info["rounds"]]
    seeds = sorted(ours)
    lines = [
        "# hear-eval-kit interop",
        "",
        f"Generated by `python eval/heareval_interop.py` on {info['date']} ({info['machine']}; load average "
        f"{info['load']} at the start).",
        "",
        f"Task: `{HEAR_KFOLD_TASK_NAME}`, the k-fold HEAR scene task written by "
        "`hear_dymn.bench.tasks.synthetic` (hear-preprocess layout, 5 folds x 30 clips of 2 s at 32 kHz, 5 classes "
        "of synthetic timbres). Model: `hear_dymn` with a **random-weight** dymn04 checkpoint "
        "(`python -m hear_dymn.models.random_weights dymn04`), not pretrained weights.",
        "",
        "## 1. heareval's embedding runner on hear_dymn",
        "",
        "| `--model-options` | embedding size | clips | runner wall time (s) | heareval's embedding time (s) |",
        "|---|---|---|---|---|",
    ]
    for row in info["embedding_runs"]:
        lines.append(f"| `{row['options']}` | {row['dim']} | {row['clips']} | {row['wall']:.1f} | "
                     f"{row['profile']:.1f} |")
    lines += [
        "",
        "Both runs completed and wrote `task_metadata.json`, `labelvocabulary.csv`, and per fold "
        "`<fold>.embeddings.npy`, `<fold>.embedding-dimensions.json`, `<fold>.target-labels.pkl`. "
        f"With random weights the default embedding's deep maps reach |x| ~ {info['default_abs_max']:.1e}, so "
        "the predictor below uses `{\"layers\": [5]}` (block 5 + 128 log-mel means, "
        f"{info['probe_dim']} dims; largest |x| {info['probe_abs_max']:.1e}).",
        "",
        "## 2. heareval's predictor vs our MLP probe on the same embedding files",
        "",
        "Same protocol: heareval's default grid, the same 8 grid points (heareval draws them with Python's "
        "`random` seeded 42; ours reproduces that draw with `grid_draw=\"heareval\"`), early stopping after 20 "
        "validation checks without improvement (every 3 epochs, at most 500 epochs), best-checkpoint test "
        "predictions, grid search on the first split only and the chosen grid point retrained on the other "
        "splits, no shuffling (heareval's loader never shuffles). Differences that remain: initialisation and "
        "dropout random streams (heareval: Lightning's global seed 42; ours: seeded per grid point from "
        "`seed`).",
        "",
        "Test accuracy (top-1) per test fold:",
        "",
        "| test fold | heareval (seed 42) | " + " | ".join(f"ours seed {s}" for s in seeds) + " |",
        "|---|---|" + "---|" * len(seeds),
    ]
    for fold in folds:
        cells = [f"{he['folds'][fold]['test_score']:.3f}"]
        cells += [f"{ours[s]['folds'][fold]['test']:.3f}" for s in seeds]
        lines.append(f"| {fold} | " + " | ".join(cells) + " |")
    he_mean = float(np.mean([he["folds"][f]["test_score"] for f in folds]))
    he_std = float(np.std([he["folds"][f]["test_score"] for f in folds], ddof=1))
    means = {s: float(np.mean([ours[s]["folds"][f]["test"] for f in folds])) for s in seeds}
    stds = {s: float(np.std([ours[s]["folds"][f]["test"] for f in folds], ddof=1)) for s in seeds}
    lines.append("| **mean ± std over folds** | " + f"**{he_mean:.3f} ± {he_std:.3f}** | "
                 + " | ".join(f"**{means[s]:.3f} ± {stds[s]:.3f}**" for s in seeds) + " |")
    seed_means = np.array([means[s] for s in seeds])
    lines += [
        "",
        f"Ours over seeds: {seed_means.mean():.3f} (seed-to-seed std of the fold mean "
        f"{seed_means.std(ddof=1) if len(seeds) > 1 else float('nan'):.3f}); heareval: {he_mean:.3f}; "
        f"difference {he_mean - seed_means.mean():+.3f}. The standard error of one fold mean with 150 test "
        f"clips in all is about {np.sqrt(he_mean * (1 - he_mean) / 150):.3f}.",
        "",
        "Selected grid point (chosen on the first split):",
        "",
        "| run | hidden layers | lr | initialization | best epoch (split 1) |",
        "|---|---|---|---|---|",
        f"| heareval | {he['hparams'].get('hidden_layers')} | {he['hparams'].get('lr')} | "
        f"{'xavier_normal' if 'normal' in str(he['hparams'].get('initialization')) else 'xavier_uniform'} | "
        f"{int(he['folds'][folds[0]]['epoch']) + 1} |",
    ]
    for s in seeds:
        sel = ours[s]["selected"]
        lines.append(f"| ours seed {s} | {sel['hidden_layers']} | {sel['lr']} | {sel['initialization']} | "
                     f"{sel['epoch']} |")
    he_epochs = sum(r["epochs_run"] for r in he["runs"])
    lines += [
        "",
        "## 3. Wall time of the same work (CPU)",
        "",
        f"heareval's predictor ran at {he['started']} (1-minute load average {he['load']}), ours from "
        f"{info['ours_started']} (load {info['ours_load']}), each with {info['threads']} thread(s). These runs are "
        "not interleaved, so machine load can skew the ratio; `reports/probe_speed/probe_speed.md` has interleaved runs.",
        "",
        "| run | wall time (s) | epochs trained (all grid points + retrained splits) | ms per epoch |",
        "|---|---|---|---|",
        f"| heareval predictor (`task_predictions`, imports excluded) | {he['seconds']:.1f} | {he_epochs} | "
        f"{1000 * he['seconds'] / max(he_epochs, 1):.1f} |",
        f"| heareval predictor process (imports included) | {he['process_seconds']:.1f} | | |",
    ]
    for s in seeds:
        lines.append(f"| ours seed {s} (`fit_mlp_folds`) | {ours[s]['seconds']:.1f} | {ours[s]['epochs']} | "
                     f"{1000 * ours[s]['seconds'] / max(ours[s]['epochs'], 1):.1f} |")
    our_seconds = float(np.mean([ours[s]["seconds"] for s in seeds]))
    our_epochs = float(np.mean([ours[s]["epochs"] for s in seeds]))
    lines += [
        "",
        f"Ratio heareval / ours (mean over seeds): {he['seconds'] / our_seconds:.1f}x in wall time. The runs "
        "stop at different epochs (different random streams), so the per-epoch cost is the fairer comparison: "
        f"{(he['seconds'] / max(he_epochs, 1)) / (our_seconds / max(our_epochs, 1)):.1f}x. "
        "`eval/benchmark_probes.py` compares the two at equal epochs (`reports/probe_speed/probe_speed.md`).",
        "",
        "## Versions and commands",
        "",
    ]
    lines += [f"* {name}: {version}" for name, version in info["versions"].items()]
    lines += [
        "",
        "```bash",
        "pip install --no-deps --target .heareval-deps " + " ".join(HEAREVAL_PACKAGES),
        "PYTHONPATH=.heareval-deps python -m heareval.embeddings.runner hear_dymn --model dymn04.pt "
        "--tasks-dir tasks --task mini_scene_kfold --model-options '{\"layers\": [5]}'",
        "PYTHONPATH=.heareval-deps TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 python -c \"import numpy; numpy.Inf = numpy.inf; "
        "...\" heareval.predictions.runner embeddings/hear_dymn-layers=5/mini_scene_kfold",
        "```",
        "",
        "(`eval/heareval_interop.py` runs exactly these; the `-c` launcher restores `numpy.Inf` for Lightning 1.9.5 "
        "and then runs the module as `python -m` does.)",
        "",
    ]
    return "\n".join(lines)


PART_FILES = {"scene": "heareval_interop.md", "events": "heareval_interop_events.md"}


def _previous_parts(out_dir: Path) -> dict[str, dict[str, str]]:
    """``parts`` of the report folder's ``run.json`` (which part was made when); a folder from before parts
    existed holds the scene part only."""
    try:
        manifest = json.loads((out_dir / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    parts = (manifest.get("info") or {}).get("parts") or manifest.get("parts")
    if isinstance(parts, dict):
        return parts
    if PART_FILES["scene"] in manifest.get("files", []):
        return {"scene": {"file": PART_FILES["scene"], "date": "before parts were recorded"}}
    return {}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/hear_dymn_heareval_interop"),
                        help="task, checkpoint, embeddings and heareval outputs (heareval steps already done "
                             "there are not rerun)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of our probe")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "reports" / "heareval_interop",
                        help="report folder, replaced wholly (default: reports/heareval_interop/)")
    parser.add_argument("--fresh", action="store_true", help="delete --work-dir first")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for both predictors (heareval via OMP_NUM_THREADS; default 1: on a shared "
                             "machine two-thread OpenMP regions mostly wait for each other)")
    parser.add_argument("--parts", nargs="+", choices=tuple(PART_FILES), default=list(PART_FILES),
                        help="which comparisons to run (default: both); a part not run keeps its report file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    work = args.work_dir.resolve()
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    install_heareval()

    write_miniature("hear_kfold", work / "tasks" / HEAR_KFOLD_TASK_NAME)
    ckpt = work / "dymn04.pt"
    if not ckpt.exists():
        subprocess.run([sys.executable, "-m", "hear_dymn.models.random_weights", "dymn04", str(ckpt)], check=True,
                       cwd=ROOT)

    timings_path = work / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    base = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} CPU "
            f"cores, torch threads {torch.get_num_threads()}", "load": load, "threads": args.threads,
            "versions": heareval_versions()}
    files: dict[str, str | bytes] = {}
    if "scene" in args.parts:
        embedding_runs = []
        for options, folder in (("{}", "hear_dymn"), ('{"layers": [5]}', "hear_dymn-layers=5")):
            emb_dir = work / "embeddings" / folder / HEAR_KFOLD_TASK_NAME
            if not (emb_dir / ".done.embeddings").exists():
                print(f"[interop] heareval embeddings runner, --model-options {options}", flush=True)
                timings[f"embed {options}"] = run_heareval(
                    "heareval.embeddings.runner",
                    ["hear_dymn", "--model", str(ckpt), "--tasks-dir", str(work / "tasks"), "--task",
                     HEAR_KFOLD_TASK_NAME, "--embeddings-dir", str(work / "embeddings"), "--model-options", options],
                    work / "logs" / f"embed-{folder}.log", cwd=work)
                timings_path.write_text(json.dumps(timings, indent=2))
            meta, splits = read_heareval_embeddings(emb_dir)
            profile = json.loads((emb_dir / "profile.embeddings.json").read_text())
            embedding_runs.append({"options": options, "dim": next(iter(splits.values())).x.shape[1],
                                   "clips": sum(len(s) for s in splits.values()), "wall": timings[f"embed {options}"],
                                   "profile": profile["time_elapsed"], "abs_max": max(float(np.abs(s.x).max())
                                                                                     for s in splits.values())})

        pred_dir = work / "embeddings" / "hear_dymn-layers=5" / HEAR_KFOLD_TASK_NAME
        if not (pred_dir / "prediction-done.json").exists():
            print("[interop] heareval predictions runner (8 grid points; this takes minutes on CPU)", flush=True)
            timings["predict_started"] = time.strftime("%Y-%m-%d %H:%M")
            timings["predict_load"] = round(os.getloadavg()[0], 1)
            timings["predict"] = run_heareval("heareval.predictions.runner", [str(pred_dir)],
                                              work / "logs" / "predict.log", cwd=work, threads=args.threads)
            timings["predict_threads"] = args.threads
            timings_path.write_text(json.dumps(timings, indent=2))
            timings_path.write_text(json.dumps(timings, indent=2))
        heareval = read_heareval_predictions(pred_dir)
        heareval["process_seconds"] = timings["predict"]
        heareval["started"], heareval["load"] = timings.get("predict_started", "?"), timings.get("predict_load", "?")
        ours_load = round(os.getloadavg()[0], 1)
        if timings.get("predict_threads") != args.threads:
            raise RuntimeError(f"heareval's predictor in {pred_dir} ran with {timings.get('predict_threads')} threads, "
                               f"not --threads {args.threads}; rerun with --fresh")

        meta, splits = read_heareval_embeddings(pred_dir)  # the files heareval's predictor has just read
        rounds = heareval_rounds(meta, splits)
        cfg = replace(MLP_PRESETS["hear"], grid_draw="heareval", shuffle=False)
        ours_started = time.strftime("%Y-%m-%d %H:%M")
        ours = {}
        for seed in args.seeds:
            results, seconds = run_ours(rounds, cfg, seed)
            epochs = sum(max(h["epoch"] for h in r.history if h["config"] == c)
                         for r in results for c in {h["config"] for h in r.history})
            ours[seed] = {
                "folds": {name: {"test": r.metrics["accuracy"], "valid": r.metrics["valid_accuracy"]}
                          for (name, *_), r in zip(rounds, results)},
                "selected": results[0].selected, "seconds": seconds, "epochs": epochs,
            }
            print(f"[interop] ours seed {seed}: mean test accuracy "
                  f"{np.mean([v['test'] for v in ours[seed]['folds'].values()]):.3f} in {seconds:.1f} s", flush=True)

        info = {
            "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
            f"torch threads {torch.get_num_threads()}", "load": load, "threads": args.threads,
            "embedding_runs": embedding_runs, "default_abs_max": embedding_runs[0]["abs_max"],
            "probe_dim": embedding_runs[1]["dim"], "probe_abs_max": embedding_runs[1]["abs_max"],
            "rounds": rounds, "heareval": heareval, "ours": ours, "versions": heareval_versions(),
            "ours_started": ours_started, "ours_load": ours_load,
        }
        files["heareval_interop.md"] = render_report(info)
    if "events" in args.parts:
        events = run_event_part(work, ckpt, args.seeds, args.threads, timings, timings_path)
        files["heareval_interop_events.md"] = render_event_report(base, events)
    previous = _previous_parts(args.out_dir)
    parts = dict(previous)
    for part, name in PART_FILES.items():
        if part in args.parts:
            parts[part] = {"file": name, "date": base["date"]}
        elif (args.out_dir / name).is_file() and part in previous:
            files[name] = (args.out_dir / name).read_bytes()  # not rerun: kept as it was
    files = {name: files[name] for name in sorted(files)}
    parts = {k: v for k, v in parts.items() if v["file"] in files}
    for path in write_run(args.out_dir, "heareval_interop", files, {"parts": parts}):
        print(f"[interop] wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
