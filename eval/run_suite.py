#!/usr/bin/env python
"""Run the hear_dymn benchmark suite and write leaderboard reports.

    python eval/run_suite.py                       # quick offline suite (synthetic miniatures) -> reports/
    python eval/run_suite.py --suite paper --data esc50=/data/ESC-50 fsd50k=/data/FSD50K openmic=/data/openmic
    python eval/run_suite.py --models dymn04 path/to/dymn10_as.pt logmel --tasks esc50 --protocols linear
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

from hear_dymn.bench.suite import SUITES, SuiteConfig, run_suite, suite_config  # noqa: E402

HELP = {
    "models": "architectures (dymn10: released weights, else random init in the quick suite), weights names "
              "(dymn10_as: required), checkpoint paths, or logmel",
    "tasks": "esc50, fsd50k, openmic, hear (a HEAR task folder given with --data hear=PATH)",
    "protocols": "linear, mlp, finetune",
    "finetune_preset": "fine-tuning recipes: paper (EfficientAT's per-task recipes) or quick (2 epochs)",
    "finetune_epochs": "override the preset's number of epochs",
    "finetune_seeds": "fine-tuning seeds (default: 0 in the quick suite, --seeds in the paper suite)",
    "finetune_models": "which of --models to fine-tune (default: dymn04 in the quick suite; all given --models "
                       "when --models is set)",
    "seeds": "probe seeds; results are mean +- std",
    "linear_preset": "linear probe preset", "mlp_preset": "MLP probe preset (quick, fast, hear)",
    "probe_precision": "precision of the MLP probe's matrix products: float32 (hear-eval-kit's) or bfloat16 "
                       "(faster on CPUs with AMX, see reports/probe_speed.md; scores differ by rounding)",
    "out_dir": "report folder", "cache_dir": "embedding cache and generated miniatures",
    "device": "cpu or cuda",
    "backend": "where embeddings are computed: local (this process) or ray (Ray actors; pip install "
               "'hear_dymn[ray]'); both fill the same cache",
    "ray_address": "Ray cluster to join (auto, HOST:6379, ray://HOST:10001); default: start one on this machine",
    "ray_workers": "Ray actors (default: as many as the cluster fits)",
    "ray_gpus_per_worker": "GPUs per Ray actor (0: CPU; 0.5: two actors share a GPU)",
    "ray_cpus_per_worker": "CPUs per Ray actor, also its torch threads (default 1)",
}
TYPES = {"finetune_epochs": int, "ray_workers": int, "ray_gpus_per_worker": float, "ray_cpus_per_worker": float}
CHOICES = {"backend": ("local", "ray"), "probe_precision": ("float32", "bfloat16")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="quick", choices=sorted(SUITES))
    for f in dataclasses.fields(SuiteConfig):
        if f.name in ("suite", "data", "allow_random_init"):
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.name in ("models", "tasks", "protocols", "seeds", "finetune_models", "finetune_seeds"):
            kind = int if f.name in ("seeds", "finetune_seeds") else str
            parser.add_argument(flag, nargs="+", type=kind, default=None, help=HELP.get(f.name))
        else:
            parser.add_argument(flag, default=None, type=TYPES.get(f.name, str), choices=CHOICES.get(f.name),
                                help=HELP.get(f.name))
    parser.add_argument("--data", nargs="+", default=[], metavar="TASK=PATH",
                        help="dataset roots in their official layouts, e.g. esc50=/data/ESC-50-master")
    parser.add_argument("--no-random-init", action="store_true",
                        help="fail instead of falling back to random init when released weights are missing")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    data = {}
    for item in args.data:
        task, sep, path = item.partition("=")
        if not sep or not path:
            raise SystemExit(f"--data expects TASK=PATH, got {item!r}")
        data[task] = path
    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(SuiteConfig)
                 if f.name not in ("suite", "data", "allow_random_init")}
    for key in ("models", "tasks", "protocols", "seeds", "finetune_models", "finetune_seeds"):
        if overrides.get(key) is not None:
            overrides[key] = tuple(overrides[key])
    if args.models is not None and args.finetune_models is None:
        overrides["finetune_models"] = tuple(args.models)
    if args.no_random_init:
        overrides["allow_random_init"] = False
    cfg = suite_config(args.suite, data=data or None, **overrides)
    if data:
        cfg = dataclasses.replace(cfg, data=data)
    if cfg.backend == "ray":
        from hear_dymn.bench.ray_backend import RayUnavailableError, require_ray

        try:
            require_ray()
        except RayUnavailableError as err:
            raise SystemExit(f"error: {err}") from None
    result = run_suite(cfg, progress=not args.quiet)
    if not result["provenance"]:  # a torchrun process other than rank 0: rank 0 writes the reports
        return 0
    print(f"wrote {Path(cfg.out_dir) / 'leaderboard.md'} ({len(result['rows'])} rows, "
          f"{result['provenance']['wall time']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
