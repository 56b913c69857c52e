#!/usr/bin/env python
"""Speed and quality of the linear probe at FSD50K's size: joint torch L-BFGS vs per-class scikit-learn.

    python eval/benchmark_linear.py                          # both solvers, FSD50K's real size (the sklearn run is long)
    python eval/benchmark_linear.py --solvers torch --device cuda
    python eval/benchmark_linear.py --scale 0.125            # 1/8 of the clips, for a quick look

Data: FSD50K's shape (36,796 train / 4,170 valid / 10,231 eval clips, 1,560-d embeddings, 200 classes,
multilabel, mAP) with a planted low-rank linear structure that a linear probe can learn: a latent ``z`` of
``--rank`` dimensions with decaying strengths is embedded by a random linear map into 1,560 dims plus isotropic
noise, and class k is on with probability ``sigmoid(z . b_k + c_k)``, ``c_k`` set so that the class priors are
log-uniform in 0.2-5 % (about 2.9 labels per clip). The labels are Bernoulli draws, so no probe reaches mAP 1;
the true logits' test mAP is printed as the ceiling. Both solvers run :func:`fit_linear_probe` with the same
preset (default: the 7 values of ``C`` and ``tol=1e-4``), so they fit the same objective to the same convergence
criterion; the comparison is wall time, the selected ``C``, validation and test mAP, and how far the test scores
of the two fits are apart. Prints one line per solver; ``--out`` also writes them as JSON.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hear_dymn.bench.metrics import get_metric  # noqa: E402
from hear_dymn.bench.probes import LINEAR_PRESETS, ProbeData, fit_linear_probe  # noqa: E402

FSD50K_SIZES = {"train": 36_796, "valid": 4_170, "test": 10_231}


def planted_splits(sizes: dict[str, int], dim: int, classes: int, rank: int, signal: float, seed: int = 0
                   ) -> tuple[dict[str, ProbeData], dict[str, np.ndarray]]:
    """Splits with a planted low-rank linear structure (see the module docstring) and the true test logits."""
    rng = np.random.default_rng(seed)
    strengths = 0.7 ** (np.arange(rank) / 4)
    embed = rng.normal(size=(rank, dim)) * strengths[:, None]
    heads = rng.normal(size=(rank, classes)) * signal / np.sqrt(rank)
    target = np.exp(rng.uniform(np.log(0.002), np.log(0.05), size=classes))
    # Intercepts giving each class its prior, found by bisection on a large latent sample.
    z = rng.normal(size=(100_000, rank))
    scores = z @ heads
    low, high = np.full(classes, -40.0), np.full(classes, 10.0)
    for _ in range(60):
        mid = (low + high) / 2
        too_many = (1 / (1 + np.exp(-(scores + mid)))).mean(axis=0) > target
        high, low = np.where(too_many, mid, high), np.where(too_many, low, mid)
    offsets = (low + high) / 2
    splits, logits = {}, {}
    for name, n in sizes.items():
        z = rng.normal(size=(n, rank))
        x = (z @ embed + rng.normal(size=(n, dim))).astype(np.float32)
        logits[name] = z @ heads + offsets
        y = (rng.random((n, classes)) < 1 / (1 + np.exp(-logits[name]))).astype(np.float32)
        splits[name] = ProbeData(x, y)
    return splits, logits


def run(solver: str, splits: dict[str, ProbeData], preset: str, device: str) -> tuple[dict[str, Any], np.ndarray]:
    cfg = replace(LINEAR_PRESETS[preset], solver=solver)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    result = fit_linear_probe(splits["train"], splits["valid"], splits["test"], multilabel=True, metric="map",
                              cfg=cfg, device=device if solver == "torch" else "cpu")
    seconds = time.perf_counter() - start
    row = {"solver": solver, "device": device if solver == "torch" else "cpu", "seconds": seconds,
           "C": result.selected["C"], "valid_map": result.metrics["valid_map"], "test_map": result.metrics["map"],
           "history": result.history, "load_before": load, "load_after": os.getloadavg()[0]}
    return row, result.scores


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--solvers", nargs="+", choices=["torch", "sklearn"], default=["torch", "sklearn"])
    parser.add_argument("--device", default="cpu", help="device of the torch solver (default cpu)")
    parser.add_argument("--preset", default="default", choices=sorted(LINEAR_PRESETS))
    parser.add_argument("--scale", type=float, default=1.0, help="share of FSD50K's clip counts (default 1)")
    parser.add_argument("--dim", type=int, default=1560)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--rank", type=int, default=32, help="dimension of the planted latent (default 32)")
    parser.add_argument("--signal", type=float, default=3.0, help="scale of the planted class heads (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="[linear %(relativeCreated)7.0f ms] %(message)s", stream=sys.stderr)

    sizes = {name: max(50, int(round(n * args.scale))) for name, n in FSD50K_SIZES.items()}
    splits, logits = planted_splits(sizes, args.dim, args.classes, args.rank, args.signal)
    average_precision = get_metric("map")
    ceiling = float(average_precision(splits["test"].y, logits["test"], None))
    labels = splits["train"].y.sum(axis=1).mean()
    print(f"[linear] {platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch thread(s), "
          f"torch {torch.__version__}; data: {sizes['train']}/{sizes['valid']}/{sizes['test']} clips, {args.dim} "
          f"dims, {args.classes} classes, {labels:.2f} labels per clip; true logits' test mAP {ceiling:.4f}",
          flush=True)
    rows, scores = [], {}
    for solver in args.solvers:
        row, scores[solver] = run(solver, splits, args.preset, args.device)
        rows.append(row)
        print(f"[linear] {solver:7s} ({row['device']}): {row['seconds']:7.1f} s, C={row['C']:g}, valid mAP "
              f"{row['valid_map']:.4f}, test mAP {row['test_map']:.4f}; load average {row['load_before']:.1f} -> "
              f"{row['load_after']:.1f}; iterations per C: {[h['iterations'] for h in row['history']]}", flush=True)
    if len(scores) == 2:
        diff = float(np.abs(scores["torch"] - scores["sklearn"]).max())
        speedup = rows[1]["seconds"] / rows[0]["seconds"] if args.solvers[0] == "torch" else rows[0]["seconds"] / rows[1]["seconds"]
        print(f"[linear] test scores differ by at most {diff:.2e}; valid mAP per C (torch / sklearn): " + ", ".join(
            f"{a['C']:g}: {a['valid_metric']:.4f} / {b['valid_metric']:.4f}"
            for a, b in zip(*(r["history"] for r in rows))) + f"; speed-up {speedup:.1f}x", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"sizes": sizes, "ceiling_map": ceiling, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
