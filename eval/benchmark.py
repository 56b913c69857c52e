#!/usr/bin/env python
"""Inference speed and memory of the HEAR module, eager vs fast path -> reports/performance/performance.{md,csv,png}.

    python eval/benchmark.py                              # dymn04, dymn10, dymn20, mn10 (several minutes)
    python eval/benchmark.py --quick                      # CI smoke test (about a minute) -> reports/runs/benchmark-quick/
    python eval/benchmark.py --device cuda --precision fp16

What is measured and how: ``hear_dymn.bench.performance``. Progress goes to stderr.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hear_dymn import threads  # noqa: E402  (first: sets the OpenMP wait policy before torch loads)
from hear_dymn.bench.performance import QUICK, BenchPlan, configure_process, run_benchmark, write_reports  # noqa: E402


def default_out_dir(args: argparse.Namespace) -> Path:
    """Only the full benchmark of the default models writes the committed report."""
    if args.quick:
        return Path("reports") / "runs" / "benchmark-quick"
    if args.models or args.device != "cpu" or args.precision != "fp32" or args.repeats:
        name = "+".join(args.models or ["default"]) + f"-{args.device}-{args.precision}"
        return Path("reports") / "runs" / f"benchmark-{name}"
    return Path("reports") / "performance"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes for CI (dymn04 and mn04, short clips)")
    parser.add_argument("--models", nargs="+", help="architectures (default: dymn04 dymn10 dymn20 mn10)")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="report folder, replaced wholly (default: reports/performance/ for the full benchmark "
                             "of the default models; reports/runs/benchmark-quick/ with --quick; "
                             "reports/runs/benchmark-MODELS/ with --models)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                        help="autocast precision of the HEAR model (CUDA only)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: $HEAR_DYMN_THREADS, else one per core this process may use)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per variant")
    args = parser.parse_args(argv)

    try:
        budget = threads.decide(args.threads)
    except ValueError as err:
        parser.error(str(err))
    # Before any tensor work: worker threads inherit flush-to-zero only if it is set before they start.
    ftz = configure_process(budget.intra_op)
    logging.basicConfig(level=logging.INFO, format="[benchmark %(relativeCreated)6.0f ms] %(message)s", stream=sys.stderr)
    plan = QUICK if args.quick else BenchPlan()
    if args.models:
        plan = dataclasses.replace(plan, models=tuple(args.models),
                                   target_model=plan.target_model if plan.target_model in args.models
                                   else args.models[0])
    if args.repeats:
        plan = dataclasses.replace(plan, repeats=args.repeats)
    command = "python eval/benchmark.py" + "".join(" " + shlex.quote(a) for a in (argv or sys.argv[1:]))
    results = run_benchmark(plan, device=args.device, precision=args.precision, threads=budget.intra_op,
                            command=command)
    results.machine.update(ftz)
    results.machine["threads"] = budget.describe()
    out_dir = args.out_dir or default_out_dir(args)
    for path in write_reports(results, out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
