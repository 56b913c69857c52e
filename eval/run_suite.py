#!/usr/bin/env python
"""Run the hear_dymn benchmark suite and write leaderboard reports.

    python eval/run_suite.py                       # quick offline suite (synthetic miniatures) -> reports/
    python eval/run_suite.py --suite paper --data esc50=/data/ESC-50 fsd50k=/data/FSD50K openmic=/data/openmic
    python eval/run_suite.py --models dymn04 path/to/dymn10_as.pt logmel --tasks esc50 --protocols linear
    python eval/run_suite.py --data esc10=/data/ESC-50 --models logmel --protocols linear   # ESC-10 rows only
    torchrun --nproc-per-node 4 eval/run_suite.py --protocols finetune --device cuda   # data-parallel fine-tuning
    python eval/run_suite.py --backend ray --ray-address auto --ray-gpus-per-worker 1   # embed on a Ray cluster

Flags mirror the fields of ``hear_dymn.bench.suite.SuiteConfig``; a flag left out takes the suite's value.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hear_dymn import threads  # noqa: E402  (first: sets the OpenMP wait policy before torch loads)
from hear_dymn.bench.ray_backend import RayUnavailableError  # noqa: E402
from hear_dymn.bench.hear_module import parse_options  # noqa: E402
from hear_dymn.bench.pipeline import thread_budget_workers  # noqa: E402
from hear_dymn.bench.suite import SUITES, SuiteConfig, run_suite, suite_config  # noqa: E402
from hear_dymn.models import CheckpointError  # noqa: E402

HELP = {
    "models": "architectures (dymn10: released weights, else random init in the quick suite), weights names "
              "(dymn10_as: required), checkpoint paths, logmel, or any HEAR module as hear:MODULE[:CHECKPOINT] "
              "(e.g. hear:hearbaseline.torchcrepe; audio at the module's own sample rate)",
    "tasks": "esc50, esc10 (the esc10 rows of an ESC-50 root: --data esc10=PATH), fsd50k, openmic, hear (--data "
             "hear=PATH: a HEAR task folder, or a folder of them: every task found "
             "runs); default: the tasks named in --data if given, else the suite's",
    "protocols": "linear, mlp, finetune",
    "finetune_preset": "fine-tuning recipes: paper (EfficientAT's per-task recipes) or quick (2 epochs)",
    "finetune_epochs": "override the preset's number of epochs",
    "finetune_seeds": "fine-tuning seeds",
    "finetune_models": "which of --models to fine-tune (all given --models when --models is set)",
    "seeds": "probe seeds; results are mean +- std",
    "linear_preset": "linear probe preset (default, fast)",
    "mlp_preset": "MLP probe preset (quick, fast, hear: 8 grid points, hear_full: all 16)",
    "probe_precision": "precision of the MLP probe's matrix products: float32 (hear-eval-kit's) or bfloat16 "
                       "(faster on CPUs with AMX, see reports/probe_speed/; scores differ by rounding)",
    "out_dir": "report folder; a folder holding an earlier run's report is replaced wholly (default: reports/ for "
               "the default quick suite, reports/runs/NAME/ for any other run)",
    "run_name": "NAME of the folder under reports/runs/ (default: from the suite, models, tasks and protocols)",
    "cache_dir": "embedding cache, fine-tuning checkpoints and generated miniatures",
    "device": "cpu or cuda",
    "backend": "where embeddings are computed: local (this process) or ray (Ray actors; pip install "
               "'hear_dymn[ray]'); both fill the same cache",
    "ray_address": "Ray cluster to join (auto, HOST:6379, ray://HOST:10001); default: start one on this machine",
    "ray_workers": "Ray actors (default: as many as the cluster fits)",
    "ray_gpus_per_worker": "GPUs per Ray actor (0: CPU; 0.5: two actors share a GPU)",
    "ray_cpus_per_worker": "CPUs per Ray actor, also its torch threads",
    "loader_workers": "audio decoding processes beside the network (extraction and fine-tuning; results do not "
                      "depend on it); each takes one core from the torch threads",
    "audio_store": "fine-tuning decodes each clip once into CACHE/audio and trains on it: int16 (compact, "
                   "16-bit), float32 (exact, twice the size) or off (decode every epoch)",
}
TYPES = {"finetune_epochs": int, "ray_workers": int, "ray_gpus_per_worker": float, "ray_cpus_per_worker": float,
         "loader_workers": int}
CHOICES = {"backend": ("local", "ray"), "probe_precision": ("float32", "bfloat16"),
           "audio_store": ("int16", "float32", "off")}
LISTS = ("models", "tasks", "protocols", "seeds", "finetune_models", "finetune_seeds")
NOT_FLAGS = ("suite", "data", "allow_random_init", "hear_options")
# what a user gets wrong (a name, a path, a layout, missing weights): one line on stderr, exit code 2
USER_ERRORS = (ValueError, KeyError, CheckpointError, RayUnavailableError, FileNotFoundError)


NONE_MEANS = {"finetune_models": "all networks", "finetune_seeds": "the probe seeds", "finetune_epochs": "the preset's",
              "ray_address": "a local cluster", "ray_workers": "as many as fit",
              "loader_workers": "none on 1 CPU core, then one per 4 cores (at least 1) up to 2 on CPU, up to 8 with CUDA"}


def _shown(name: str, value) -> str:
    if value is None:
        return NONE_MEANS.get(name, "none")
    if isinstance(value, tuple):
        return " ".join(map(str, value))
    return str(value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    quick, paper = suite_config("quick"), suite_config("paper")
    parser.add_argument("--suite", default="quick", choices=sorted(SUITES),
                        help="quick: offline synthetic miniatures; paper: the real datasets and released weights "
                             "(default: quick)")
    for f in dataclasses.fields(SuiteConfig):
        if f.name in NOT_FLAGS:
            continue
        flag = "--" + f.name.replace("_", "-")
        ours, theirs = getattr(quick, f.name), getattr(paper, f.name)
        default = (_shown(f.name, ours) if ours == theirs
                   else f"{_shown(f.name, ours)}; paper suite: {_shown(f.name, theirs)}")
        text = HELP.get(f.name, "")
        if "default:" not in text:
            text += f" (default: {default})"
        if f.name in LISTS:
            kind = int if f.name in ("seeds", "finetune_seeds") else str
            parser.add_argument(flag, nargs="+", type=kind, default=None, help=text)
        else:
            parser.add_argument(flag, default=None, type=TYPES.get(f.name, str), choices=CHOICES.get(f.name),
                                help=text)
    parser.add_argument("--data", nargs="+", default=[], metavar="TASK=PATH",
                        help="dataset roots in their official layouts, e.g. esc50=/data/ESC-50-master; without "
                             "--tasks, only these tasks run")
    parser.add_argument("--hear-options", nargs="+", default=[], metavar="MODULE=JSON",
                        help="load_model keyword arguments of a HEAR module given with --models hear:MODULE, as a "
                             "JSON object, e.g. my_pkg.module='{\"hop_ms\": 25}' (part of the cache key)")
    parser.add_argument("--no-random-init", action="store_true",
                        help="fail instead of falling back to random init when released weights are missing")
    parser.add_argument("--threads", type=int, default=None,
                        help=f"torch threads (default: ${threads.ENV_THREADS}, else one per core this process may "
                             "use; see hear_dymn/threads.py)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--verbose", action="store_true", help="log every step (INFO) and show tracebacks")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> SuiteConfig:
    data = {}
    for item in args.data:
        task, sep, path = item.partition("=")
        if not sep or not task or not path:
            raise ValueError(f"--data expects TASK=PATH, got {item!r}")
        data[task] = path
    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(SuiteConfig)
                 if f.name not in NOT_FLAGS}
    for key in LISTS:
        if overrides.get(key) is not None:
            overrides[key] = tuple(overrides[key])
    if data and args.tasks is None:
        overrides["tasks"] = tuple(data)  # a user who points at datasets means those datasets
    if args.models is not None and args.finetune_models is None:
        overrides["finetune_models"] = tuple(args.models)
    if args.no_random_init:
        overrides["allow_random_init"] = False
    cfg = suite_config(args.suite, **overrides)
    if args.hear_options:
        cfg = dataclasses.replace(cfg, hear_options=parse_options(args.hear_options))
    return dataclasses.replace(cfg, data=data) if data else cfg


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_args(args)
        budget = threads.apply(args.threads, workers=thread_budget_workers(cfg.loader_workers, cfg.device))
        result = run_suite(cfg, progress=not args.quiet, threads=budget)
    except USER_ERRORS as err:
        if args.verbose:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
        return 2
    if not result["provenance"]:  # a torchrun process other than rank 0: rank 0 writes the reports
        return 0
    print(f"wrote {result['out_dir']}/ (leaderboard.md, .csv, .html, plots/; {len(result['rows'])} rows, "
          f"{result['provenance']['wall time']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
