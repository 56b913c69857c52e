"""Inference speed and memory of the HEAR module, eager vs fast path (CLI: ``eval/benchmark.py``).

Everything timed runs in one process, interleaving the variants, so that ratios are fair on a shared machine; peak
memory is measured in a fresh subprocess per input so that peaks do not mix. Models use random weights
(``random_state_dict(arch, seed=0)``): speed does not depend on the values. Flush-to-zero is switched on before any
thread pool exists (so on every worker thread) and the eager baseline is not slowed by subnormal floats; a separate
stress test shows what subnormals do to each path.
"""
from __future__ import annotations

import copy
import csv
import datetime
import gc
import io
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..hear import (
    EmbeddingConfig, HearModel, get_scene_embeddings, get_timestamp_embeddings, load_model, timestamps_for,
)
from ..models import PRETRAINED, AudioMobileNet, create_model
from ..models.fast import fuse_for_inference
from ..models.random_weights import random_state_dict, save_random_checkpoint, synthetic_waveform
from .run_folder import write_run

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "data"
SAMPLE_RATE = 32000
RSS_TARGET_BYTES = 2 * 1024 ** 3


@dataclass(frozen=True)
class BenchPlan:
    """What to measure. ``QUICK`` is the CI smoke-test size."""

    models: tuple[str, ...] = ("dymn04", "dymn10", "dymn20", "mn10")
    clip_seconds: float = 10.0
    batches: tuple[int, ...] = (1, 8)
    repeats: int = 5  # timed calls per variant; best and median are reported
    timestamp_seconds: float = 60.0
    timestamp_hop_ms: float = 50.0
    loop_window_ms: float = 160.0  # the authors' HEAR wrapper: one forward per 160 ms window
    loop_windows: int = 100  # the per-window loop is timed on this many windows and extrapolated
    memory_model: str = "dymn10"
    memory_seconds: tuple[float, ...] = (10.0, 600.0, 3600.0)
    memory_eager_seconds: tuple[float, ...] = (3600.0,)  # sizes also measured with the eager path
    memory_calls: tuple[str, ...] = ("timestamp", "scene")
    stress_model: str = "dymn04"
    target_model: str = "dymn10"
    quick: bool = False


QUICK = BenchPlan(models=("dymn04", "mn04"), clip_seconds=2.0, batches=(1, 2), repeats=2, timestamp_seconds=10.0,
                  loop_windows=8, memory_model="dymn04", memory_seconds=(10.0, 60.0), memory_eager_seconds=(),
                  memory_calls=("timestamp",),
                  stress_model="dymn04", target_model="dymn04", quick=True)


@dataclass
class Results:
    plan: BenchPlan
    device: str
    precision: str
    command: str
    machine: dict[str, Any] = field(default_factory=dict)
    complexity: list[dict] = field(default_factory=list)
    scene: list[dict] = field(default_factory=list)
    timestamps: list[dict] = field(default_factory=list)
    memory: list[dict] = field(default_factory=list)
    stress: list[dict] = field(default_factory=list)
    fixtures: list[dict] = field(default_factory=list)
    diffs: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# set-up helpers


def configure_process(threads: int | None) -> dict[str, Any]:
    """Threads and flush-to-zero; call before any tensor work so that the worker threads inherit FTZ/DAZ."""
    if threads:
        torch.set_num_threads(threads)
    supported = torch.set_flush_denormal(True)
    probe = torch.full((1 << 20,), 1e-39)  # subnormal; large enough to run on every thread
    flushed = bool(supported and not (probe * 1.0).any())
    return {"flush_denormal": supported, "flush_all_threads": flushed}


def machine_info(device: str) -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device": device, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "load_start": os.getloadavg(),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def random_network(arch: str) -> AudioMobileNet:
    network = create_model(arch).eval()
    network.load_state_dict(random_state_dict(arch, seed=0))
    network.weights_info = {"name": None, "path": None, "sha256": None, "random_init_seed": 0}
    return network


def clips(batch: int, seconds: float, first_seed: int = 0) -> torch.Tensor:
    return torch.stack([synthetic_waveform(first_seed + i, seconds) for i in range(batch)])


def long_audio(seconds: float) -> torch.Tensor:
    """``(1, samples)``: a 10 s synthetic sound tiled, built in place (no second copy of a 1 h signal)."""
    n = int(round(seconds * SAMPLE_RATE))
    base = synthetic_waveform(0, min(seconds, 10.0))
    audio = torch.empty(1, n)
    for start in range(0, n, len(base)):
        stop = min(n, start + len(base))
        audio[0, start:stop] = base[:stop - start]
    return audio


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved_times(fns: dict[str, Callable[[], Any]], repeats: int, device: str) -> dict[str, list[float]]:
    """Seconds per call of each function: one warm-up call each, then ``repeats`` rounds, variants interleaved."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def sgemm_gflops(device: str, n: int = 2048, repeats: int = 5) -> float:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    best = min(interleaved_times({"mm": lambda: a @ b}, repeats, device)["mm"])
    return 2 * n ** 3 / best / 1e9


def count_complexity(network: AudioMobileNet, seconds: float = 10.0) -> tuple[int, int]:
    """(parameters, multiply-accumulates for one clip of ``seconds``) of the eager network; MACs = FLOPs / 2 as
    counted by ``FlopCounterMode`` (convolutions and matrix products, kernel mixing included; no elementwise ops)."""
    frames = 1 + (int(seconds * SAMPLE_RATE) - 1) // 320
    mel = torch.zeros(1, 1, 128, frames)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network.cpu()(mel)
    return sum(p.numel() for p in network.parameters()), counter.get_total_flops() // 2


def reported(arch: str) -> dict[str, float]:
    return next((dict(cfg.reported, weights=cfg.name) for cfg in PRETRAINED.values() if cfg.arch == arch), {})


def rel_diff(actual: torch.Tensor | np.ndarray, expected: torch.Tensor | np.ndarray) -> tuple[float, float]:
    """(max |a - e|, max |a - e| / max |e|)."""
    a = torch.as_tensor(actual).double().cpu()
    e = torch.as_tensor(expected).double().cpu()
    diff = (a - e).abs().max().item()
    return diff, diff / max(e.abs().max().item(), 1e-30)


def part_diffs(actual: torch.Tensor, expected: torch.Tensor, sizes: Sequence[int]) -> tuple[float, float]:
    """Max abs and max relative difference over the parts of an embedding (each part relative to its own scale)."""
    worst_abs, worst_rel, offset = 0.0, 0.0, 0
    for size in sizes:
        d_abs, d_rel = rel_diff(actual[..., offset:offset + size], expected[..., offset:offset + size])
        worst_abs, worst_rel, offset = max(worst_abs, d_abs), max(worst_rel, d_rel), offset + size
    return worst_abs, worst_rel


def embedding_parts(model: HearModel) -> list[int]:
    sizes = [model.network.feature_info[i]["num_chs"] for i in model.cfg.layers]
    return sizes + ([model.frontend.cfg.n_mels] if model.cfg.mel_means else [])


# ---------------------------------------------------------------------------------------------------------------
# measurements


def measure_model(arch: str, plan: BenchPlan, device: str, precision: str, results: Results) -> None:
    network = random_network(arch)
    params, macs = count_complexity(network, plan.clip_seconds)
    params_10s, macs_10s = count_complexity(network, 10.0)
    results.complexity.append({"model": arch, "params": params, "macs_clip": macs, "gmacs_10s": macs_10s / 1e9,
                               "reported": reported(arch)})
    logger.info("%s: %.2f M parameters, %.3f GMACs per 10 s", arch, params / 1e6, macs_10s / 1e9)
    network.to(device)
    eager = HearModel(network, EmbeddingConfig(fast=False, precision=precision)).to(device)
    fast = HearModel(network, EmbeddingConfig(fast=True, precision=precision)).to(device)

    # scene embeddings, eager vs fast, and the network alone at the largest batch
    for batch in plan.batches:
        audio = clips(batch, plan.clip_seconds).to(device)
        outputs: dict[str, torch.Tensor] = {}

        def run(model: HearModel, name: str) -> Callable[[], None]:
            def call() -> None:
                outputs[name] = get_scene_embeddings(audio, model)
            return call

        fns = {"eager": run(eager, "eager"), "fast": run(fast, "fast")}
        if batch == max(plan.batches):
            with torch.no_grad():
                mel = eager.frontend(audio)

            def net(model: torch.nn.Module) -> Callable[[], None]:
                def call() -> None:
                    with torch.no_grad(), fast._autocast():
                        model.forward_intermediates(mel, fast.cfg.layers)
                return call

            fns.update({"network eager": net(network), "network fast": net(fast.fused)})
        times = interleaved_times(fns, plan.repeats, device)
        row = {"model": arch, "batch": batch, "clip_seconds": plan.clip_seconds, "macs_clip": macs}
        for name, values in times.items():
            row[name] = {"best": min(values), "median": statistics.median(values)}
        row["diff_abs"], row["diff_rel"] = part_diffs(outputs["fast"], outputs["eager"], embedding_parts(fast))
        results.scene.append(row)
        logger.info("%s scene batch %d: eager %.2f clips/s, fast %.2f clips/s (x%.2f)", arch, batch,
                    batch / row["eager"]["best"], batch / row["fast"]["best"],
                    row["eager"]["best"] / row["fast"]["best"])

    # numerical yardstick: eager float32 vs float64 on one clip, next to fast vs eager
    measure_diffs(arch, network, fast, plan, device, results)

    # timestamp embeddings: shared 10 s windows vs one forward per 160 ms window
    audio = synthetic_waveform(0, plan.timestamp_seconds)[None].to(device)
    reps = max(2, plan.repeats // 2)
    times = interleaved_times({"fast": lambda: get_timestamp_embeddings(audio, fast),
                               "eager": lambda: get_timestamp_embeddings(audio, eager)}, reps, device)
    n_stamps = len(timestamps_for(audio.shape[1], SAMPLE_RATE, plan.timestamp_hop_ms))
    loop_seconds, timed_windows = per_window_loop_seconds(audio, eager, plan, device)
    row = {"model": arch, "seconds": plan.timestamp_seconds, "hop_ms": plan.timestamp_hop_ms,
           "timestamps": n_stamps, "fast": min(times["fast"]), "eager": min(times["eager"]),
           "loop_total": loop_seconds * n_stamps / timed_windows, "loop_timed_windows": timed_windows,
           "loop_timed_seconds": loop_seconds}
    results.timestamps.append(row)
    logger.info("%s timestamps %.0f s: fast %.2f s, eager %.2f s, per-window loop ~%.1f s (x%.1f)", arch,
                plan.timestamp_seconds, row["fast"], row["eager"], row["loop_total"], row["loop_total"] / row["fast"])


def per_window_loop_seconds(audio: torch.Tensor, model: HearModel, plan: BenchPlan, device: str) -> tuple[float, int]:
    """Seconds for ``plan.loop_windows`` forwards of one 160 ms window each (reflect-padded so windows are centred
    on the timestamps, like the authors' HEAR wrapper), and how many windows were timed."""
    window = int(round(plan.loop_window_ms * SAMPLE_RATE / 1000))
    padded = torch.nn.functional.pad(audio[:, None], (window // 2, window // 2), mode="reflect")[:, 0]
    starts = torch.round(timestamps_for(audio.shape[1], SAMPLE_RATE, plan.timestamp_hop_ms)
                         * SAMPLE_RATE / 1000).long()
    chosen = starts[torch.linspace(0, len(starts) - 1, min(plan.loop_windows, len(starts))).round().long()]
    for start in chosen[:2].tolist():  # warm-up
        get_scene_embeddings(padded[:, start:start + window], model)
    _sync(device)
    begin = time.perf_counter()
    for start in chosen.tolist():
        get_scene_embeddings(padded[:, start:start + window], model)
    _sync(device)
    return time.perf_counter() - begin, len(chosen)


def measure_diffs(arch: str, network: AudioMobileNet, fast: HearModel, plan: BenchPlan, device: str,
                  results: Results, n_clips: int = 3) -> None:
    audio = clips(n_clips, plan.clip_seconds, first_seed=100)
    with torch.no_grad():
        mel = fast.frontend(audio.to(device))
        layers = list(fast.cfg.layers)
        pooled_eager = [m.mean((2, 3)) for m in network.forward_intermediates(mel, layers)]
        pooled_fast = [m.mean((2, 3)) for m in fast.fused.forward_intermediates(mel, layers)]
        network64 = copy.deepcopy(network).cpu().double()
        pooled_64 = [m.mean((2, 3)) for m in network64.forward_intermediates(mel.cpu().double(), layers)]
        logits = network(mel), fast.fused(mel)
    row = {"model": arch, "seconds": plan.clip_seconds}
    for key, (a, b) in {"fast_vs_eager": (pooled_fast, pooled_eager), "fast_vs_f64": (pooled_fast, pooled_64),
                        "eager_vs_f64": (pooled_eager, pooled_64)}.items():
        pairs = [rel_diff(x, y) for x, y in zip(a, b)]
        row[key] = (max(p[0] for p in pairs), max(p[1] for p in pairs))
    row["logits_fast_vs_eager"] = rel_diff(logits[1], logits[0])
    row["max_abs_map"] = max(m.abs().max().item() for m in pooled_64)
    results.diffs.append(row)


def measure_fixtures(results: Results) -> None:
    """Fast vs eager on the reference fixtures (official-format checkpoints and EfficientAT's outputs)."""
    for arch in ("dymn04", "mn04"):
        ckpt, ref_file = FIXTURES / f"{arch}_random_weights.pt", FIXTURES / f"{arch}_reference_3p7s.npz"
        if not ckpt.exists() or not ref_file.exists():
            logger.warning("fixture %s not found: skipping", ckpt)
            continue
        with np.load(ref_file) as data:
            ref = {k: data[k] for k in data.files}
        network = create_model(arch, checkpoint_path=ckpt).eval()
        fused = fuse_for_inference(network)
        mel = torch.from_numpy(ref["mel"]).unsqueeze(1)
        with torch.no_grad():
            maps_e, maps_f = network.forward_intermediates(mel), fused.forward_intermediates(mel)
            logits_e, logits_f = network(mel), fused(mel)
            emb_e = network.forward_head(maps_e[-1], pre_logits=True)
            emb_f = fused.forward_head(maps_f[-1], pre_logits=True)
        maps = [rel_diff(f, e) for f, e in zip(maps_f, maps_e)]
        ref_pooled = [ref[f"f64_pooled_{i:02d}"] for i in range(len(maps_e))]
        results.fixtures.append({
            "model": arch,
            "maps": (max(m[0] for m in maps), max(m[1] for m in maps)),
            "logits": rel_diff(logits_f, logits_e), "embedding": rel_diff(emb_f, emb_e),
            "fast_vs_ref": max(rel_diff(m.mean((2, 3)), r)[1] for m, r in zip(maps_f, ref_pooled)),
            "eager_vs_ref": max(rel_diff(m.mean((2, 3)), r)[1] for m, r in zip(maps_e, ref_pooled)),
        })


# ---------------------------------------------------------------------------------------------------------------
# subprocess probes: peak memory and subnormal stress


def _status_bytes(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def memory_probe(spec: dict[str, Any]) -> dict[str, Any]:
    """Run in a fresh process: one HEAR call on ``spec['seconds']`` of audio; peak RSS (and CUDA peak)."""
    configure_process(spec["threads"])
    device = spec["device"]
    # As a HEAR user would: load_model on an official-format checkpoint (random weights written by the parent).
    model = load_model(spec["checkpoint"], fast=spec["fast"], precision=spec["precision"]).to(device)
    audio = long_audio(spec["seconds"]).to(device)
    gc.collect()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = _status_bytes("VmRSS")
    start = time.perf_counter()
    if spec["kind"] == "timestamp":
        out = get_timestamp_embeddings(audio, model)[0]
    else:
        out = get_scene_embeddings(audio, model)
    _sync(device)
    result = {"seconds_taken": time.perf_counter() - start, "rss_before": rss_before,
              "peak_rss": _status_bytes("VmHWM"), "output_bytes": out.numel() * out.element_size(),
              "audio_bytes": audio.numel() * audio.element_size()}
    if device == "cuda":
        result["cuda_max_allocated"] = torch.cuda.max_memory_allocated()
    return result


def stress_probe(spec: dict[str, Any]) -> dict[str, Any]:
    """Run in a fresh process: saturated attention gates (subnormal products) with flush-to-zero on or off."""
    torch.set_num_threads(spec["threads"])
    torch.set_flush_denormal(spec["flush"])
    network = random_network(spec["arch"])
    with torch.no_grad():
        for block in getattr(network, "layers", []):
            block.context_gen.conv_f.bias.sub_(88.0)  # sigmoid(-88) ~ 6e-39: subnormal gates and products
    fused = fuse_for_inference(network)
    x = _mel_of(clips(1, spec["seconds"]))
    with torch.no_grad():
        times = interleaved_times({"eager": lambda: network.forward_intermediates(x, [16]),
                                   "fast": lambda: fused.forward_intermediates(x, [16])}, spec["repeats"], "cpu")
    return {name: min(values) for name, values in times.items()}


def _mel_of(audio: torch.Tensor) -> torch.Tensor:
    from ..frontend import MelFrontend

    with torch.no_grad():
        return MelFrontend()(audio)


def run_probe(kind: str, spec: dict[str, Any], timeout: float = 3600) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "hear_dymn.bench.performance", kind, json.dumps(spec)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} probe {spec} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_memory(plan: BenchPlan, device: str, precision: str, threads: int, results: Results) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = save_random_checkpoint(plan.memory_model, Path(tmp) / f"{plan.memory_model}.pt")
        for seconds in plan.memory_seconds:
            for kind in plan.memory_calls:
                for fast in (True, False):
                    if fast or seconds in plan.memory_eager_seconds:
                        _memory_row(plan, seconds, kind, fast, str(checkpoint), device, precision, threads, results)


def _memory_row(plan: BenchPlan, seconds: float, kind: str, fast: bool, checkpoint: str, device: str, precision: str,
                threads: int, results: Results) -> None:
    spec = {"arch": plan.memory_model, "seconds": seconds, "kind": kind, "fast": fast, "device": device,
            "precision": precision, "threads": threads, "checkpoint": checkpoint}
    result = run_probe("memory", spec)
    results.memory.append({**spec, **result})
    logger.info("memory %s %s %.0f s (%s): peak RSS %.0f MB", plan.memory_model, kind, seconds,
                "fast" if fast else "eager", result["peak_rss"] / 2 ** 20)


def measure_stress(plan: BenchPlan, threads: int, results: Results) -> None:
    for flush in (False, True):
        spec = {"arch": plan.stress_model, "seconds": plan.clip_seconds, "flush": flush, "threads": threads,
                "repeats": max(2, plan.repeats // 2)}
        result = run_probe("stress", spec)
        results.stress.append({**spec, **result})
        logger.info("subnormal stress (flush %s): eager %.3f s, fast %.3f s", flush, result["eager"], result["fast"])


# ---------------------------------------------------------------------------------------------------------------
# driver and report


def run_benchmark(plan: BenchPlan, device: str = "cpu", precision: str = "fp32", threads: int | None = None,
                  command: str = "") -> Results:
    """All measurements of ``plan``. Call :func:`configure_process` first (before any tensor work)."""
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda, but torch.cuda.is_available() is False")
    results = Results(plan=plan, device=device, precision=precision, command=command)
    results.machine = machine_info(device)
    threads = threads or torch.get_num_threads()
    results.machine["sgemm_gflops"] = sgemm_gflops(device)
    logger.info("machine: %s, %d threads, sgemm %.0f GFLOP/s", results.machine["cpu"], threads,
                results.machine["sgemm_gflops"])
    measure_fixtures(results)
    for arch in plan.models:
        measure_model(arch, plan, device, precision, results)
    measure_memory(plan, device, precision, threads, results)
    if device == "cpu" and plan.stress_model:
        measure_stress(plan, threads, results)
    results.machine["load_end"] = os.getloadavg()
    return results


def _fmt(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.3e}"


def _mb(value: float) -> str:
    return f"{value / 2 ** 20:,.0f} MB"


def targets(results: Results) -> list[tuple[str, str, str]]:
    plan = results.plan
    rows: list[tuple[str, str, str]] = []
    scene = next((r for r in results.scene if r["model"] == plan.target_model and r["batch"] == max(plan.batches)),
                 None)
    if scene:
        ratio = scene["eager"]["best"] / scene["fast"]["best"]
        where = "CPU" if results.device == "cpu" else results.device
        rows.append((f"scene embeddings >= 2x eager, {plan.target_model} batch {scene['batch']} ({where})",
                     f"{ratio:.2f}x (median {scene['eager']['median'] / scene['fast']['median']:.2f}x)",
                     "yes" if ratio >= 2 else "no"))
    stamp = next((r for r in results.timestamps if r["model"] == plan.target_model), None)
    if stamp:
        ratio = stamp["loop_total"] / stamp["fast"]
        rows.append((f"timestamps (fast path) >= 20x the per-window loop (eager network, as the authors' wrapper), "
                     f"{plan.target_model}, {stamp['seconds']:.0f} s clip, {stamp['hop_ms']:.0f} ms hop",
                     f"{ratio:.1f}x (eager path: {stamp['loop_total'] / stamp['eager']:.1f}x)",
                     "yes" if ratio >= 20 else "no"))
    longest = [r for r in results.memory if r["fast"] and r["seconds"] == max(plan.memory_seconds)]
    if longest:
        peak = max(r["peak_rss"] for r in longest)
        hours = max(plan.memory_seconds) / 3600
        calls = " and ".join("timestamps" if c == "timestamp" else c for c in plan.memory_calls)
        rows.append((f"{_fmt(hours)} h of audio, peak RSS < 2 GB ({plan.memory_model}, fast path, {calls})",
                     _mb(peak), "yes" if peak < RSS_TARGET_BYTES else "no"))
    if results.fixtures:
        worst = max(max(f["maps"][1], f["logits"][1], f["embedding"][1]) for f in results.fixtures)
        rows.append(("fast vs eager <= 1e-4 relative on the fixtures (maps, logits, embedding)", f"{worst:.1e}",
                     "yes" if worst <= 1e-4 else "no"))
    if results.device == "cuda":
        rows.append((f"CUDA autocast ({results.precision})", "measured below", "see tables"))
    else:
        rows.append(("fp16/bf16 autocast on CUDA", "not measured: no GPU on this machine", "n/a"))
    return rows


def render_markdown(results: Results) -> str:
    plan, m = results.plan, results.machine
    lines = ["# Inference performance: eager vs fast path", ""]
    lines.append(f"Generated by `{results.command or 'python eval/benchmark.py'}` on {m['date']}"
                 + (" (**quick mode**: smoke-test sizes, not the reference numbers)" if plan.quick else "") + ".")
    lines.append("Models use **random weights** (`random_state_dict(arch, seed=0)`): speed does not depend on the "
                 "values. Times are wall-clock, best of the repeats (median in brackets); the variants are "
                 "interleaved in one process, so ratios are fair even when absolute numbers are noisy.")
    lines += ["", "## Machine", "", "| CPU | logical CPUs | torch threads | torch | device | load average 1/5/15 min "
              "(start; end) | flush-to-zero |", "|---|---|---|---|---|---|---|"]
    load = "; ".join("/".join(f"{v:.1f}" for v in m[k]) for k in ("load_start", "load_end") if k in m)
    device = m["device"] + (f" ({m['gpu']})" if "gpu" in m else "")
    lines.append(f"| {m['cpu']} | {m['logical_cpus']} | {m['torch_threads']} | {m['torch']} | {device} | {load} | "
                 f"{'all threads' if m.get('flush_all_threads') else 'off or partial'} |")
    lines += ["", f"sgemm ceiling (2048 x 2048 matmul, same threads): **{m['sgemm_gflops']:.0f} GFLOP/s**. "
              f"OMP_WAIT_POLICY: {m['omp_wait_policy']}."
              + (f" Thread budget: {m['threads']}." if "threads" in m else ""), ""]

    lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in targets(results)]

    lines += ["", "## Complexity (per 10 s clip)", "",
              "Counted with `torch.utils.flop_counter.FlopCounterMode` on the eager model (MACs = FLOPs / 2: "
              "convolutions and matrix products, including the kernel mixing; elementwise operations excluded).", "",
              "| model | parameters (counted) | parameters (reported, M) | GMACs (counted) | GMACs (reported) |",
              "|---|---|---|---|---|"]
    for row in results.complexity:
        rep = row["reported"]
        lines.append(f"| {row['model']} | {row['params']:,} | {rep.get('params_m', '–')} | {row['gmacs_10s']:.3f} | "
                     f"{rep.get('gmacs', '–')} |")
    lines += ["", "Reported values: the authors' table (EfficientAT README) for "
              + ", ".join(f"`{r['reported']['weights']}`" for r in results.complexity if r["reported"]) + "."]

    lines += ["", f"## Scene embeddings ({plan.clip_seconds:g} s clips)", "",
              "`get_scene_embeddings` end to end (log-mel + network + pooling) with `fast=False` (eager modules) and "
              "`fast=True` (default). *network only*: `forward_intermediates` of the eager vs the fused network on "
              "the same log-mel. GFLOP/s = 2 x counted MACs x clips/s.", "",
              "| model | batch | path | eager clips/s | fast clips/s | speed-up | fast x real time | eager GFLOP/s | "
              "fast GFLOP/s | max abs / rel diff |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in results.scene:
        for label, e_key, f_key in (("HEAR", "eager", "fast"), ("network only", "network eager", "network fast")):
            if e_key not in row:
                continue
            e, f, b = row[e_key], row[f_key], row["batch"]
            e_cps, f_cps = b / e["best"], b / f["best"]
            diff = f"{row['diff_abs']:.1e} / {row['diff_rel']:.1e}" if label == "HEAR" else ""
            lines.append(
                f"| {row['model']} | {b} | {label} | {e_cps:.2f} ({b / e['median']:.2f}) | {f_cps:.2f} "
                f"({b / f['median']:.2f}) | **{e['best'] / f['best']:.2f}x** | {f_cps * row['clip_seconds']:.0f} | "
                f"{2 * row['macs_clip'] * e_cps / 1e9:.1f} | {2 * row['macs_clip'] * f_cps / 1e9:.1f} | {diff} |")

    lines += ["", f"## Timestamp embeddings ({plan.timestamp_seconds:g} s clip, {plan.timestamp_hop_ms:g} ms hop)", "",
              "*ours*: `get_timestamp_embeddings` (10 s windows every 7.5 s, one pass serves all timestamps of a "
              "window). *per-window loop*: one forward per 160 ms window at every timestamp (reflect-padded, like "
              "the authors' HEAR wrapper; eager network, batch = 1 clip), timed on a subset of windows spread over "
              "the clip and extrapolated to all of them.", "",
              "| model | timestamps | ours, fast (s) | ours, eager (s) | per-window loop (s, extrapolated) | loop / ours "
              "fast | loop / ours eager |", "|---|---|---|---|---|---|---|"]
    for row in results.timestamps:
        lines.append(f"| {row['model']} | {row['timestamps']} | {row['fast']:.2f} | {row['eager']:.2f} | "
                     f"{row['loop_total']:.1f} (timed {row['loop_timed_windows']} windows: "
                     f"{row['loop_timed_seconds']:.2f} s) | **{row['loop_total'] / row['fast']:.1f}x** | "
                     f"{row['loop_total'] / row['eager']:.1f}x |")

    lines += ["", f"## Peak memory ({plan.memory_model}, one clip, fresh process per row)", "",
              "`load_model` on an official-format checkpoint, then one `get_timestamp_embeddings` or "
              "`get_scene_embeddings` call. Peak RSS is the process high-water mark (`VmHWM`: Python, torch, the "
              "model, the audio and the output included); *before* is the resident size just before the call.", "",
              "| call | audio | path | peak RSS | RSS before | audio | output | time (s) |"
              + (" CUDA max allocated |" if results.device == "cuda" else ""),
              "|---|---|---|---|---|---|---|---|" + ("---|" if results.device == "cuda" else "")]
    for row in results.memory:
        cuda = f" {_mb(row['cuda_max_allocated'])} |" if "cuda_max_allocated" in row else ""
        lines.append(f"| {row['kind']} | {_duration(row['seconds'])} | {'fast' if row['fast'] else 'eager'} | "
                     f"**{_mb(row['peak_rss'])}** | {_mb(row['rss_before'])} | {_mb(row['audio_bytes'])} | "
                     f"{_mb(row['output_bytes'])} | {row['seconds_taken']:.1f} |{cuda}")

    if results.stress:
        lines += ["", f"## Subnormal floats ({plan.stress_model}, {plan.clip_seconds:g} s, network only)", "",
                  "Every frequency-attention bias shifted by -88, so gates and gated activations are subnormal "
                  "float32 numbers (saturated attention). Fresh process per row; flush-to-zero set before the thread pool exists.",
                  "", "| flush-to-zero | eager (s) | fast (s) | eager / fast |", "|---|---|---|---|"]
        for row in results.stress:
            lines.append(f"| {'on' if row['flush'] else 'off'} | {row['eager']:.3f} | {row['fast']:.3f} | "
                         f"{row['eager'] / row['fast']:.1f}x |")

    lines += ["", "## Fast vs eager: differences", ""]
    if results.fixtures:
        lines += ["Reference fixtures (`tests/data/*_random_weights.pt` and EfficientAT's outputs for a 3.7 s clip), "
                  "max |diff| / max |eager| per array:", "",
                  "| model | 17 maps abs / rel | logits abs / rel | embedding abs / rel | fast vs EfficientAT f64 | "
                  "eager vs EfficientAT f64 |", "|---|---|---|---|---|---|"]
        for row in results.fixtures:
            lines.append(f"| {row['model']} | {row['maps'][0]:.1e} / {row['maps'][1]:.1e} | {row['logits'][0]:.1e} / "
                         f"{row['logits'][1]:.1e} | {row['embedding'][0]:.1e} / {row['embedding'][1]:.1e} | "
                         f"{row['fast_vs_ref']:.1e} | {row['eager_vs_ref']:.1e} |")
    lines += ["", f"Benchmark models (random weights, three {plan.clip_seconds:g} s clips, pooled maps of the "
              "embedding layers, worst clip). Random networks amplify rounding on some inputs (their deep maps reach "
              "the magnitude below), so the eager model's own float32 error against float64 is the yardstick:", "",
              "| model | max pooled map (f64) | fast vs eager (abs / rel) | fast vs eager f64 (rel) | eager f32 vs f64 "
              "(rel) | logits fast vs eager (rel) |", "|---|---|---|---|---|---|"]
    for row in results.diffs:
        lines.append(f"| {row['model']} | {_fmt(row['max_abs_map'])} | {row['fast_vs_eager'][0]:.1e} / "
                     f"{row['fast_vs_eager'][1]:.1e} | {row['fast_vs_f64'][1]:.1e} | {row['eager_vs_f64'][1]:.1e} | "
                     f"{row['logits_fast_vs_eager'][1]:.1e} |")
    lines += ["", "Plot: `performance.png` (throughput vs MACs). Raw numbers: `performance.csv`.", ""]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    if seconds >= 60:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def csv_rows(results: Results) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(section: str, model: str, metric: str, value: float, unit: str, batch: Any = "", path: str = "") -> None:
        rows.append({"section": section, "model": model, "path": path, "batch": batch, "metric": metric,
                     "value": value, "unit": unit})

    add("machine", "", "sgemm", results.machine["sgemm_gflops"], "GFLOP/s")
    for r in results.complexity:
        add("complexity", r["model"], "params", r["params"], "count")
        add("complexity", r["model"], "macs_10s", r["gmacs_10s"], "GMAC")
    for r in results.scene:
        for key in ("eager", "fast", "network eager", "network fast"):
            if key in r:
                add("scene", r["model"], "throughput_best", r["batch"] / r[key]["best"], "clips/s", r["batch"], key)
                add("scene", r["model"], "throughput_median", r["batch"] / r[key]["median"], "clips/s", r["batch"], key)
        add("scene", r["model"], "max_abs_diff", r["diff_abs"], "", r["batch"], "fast vs eager")
        add("scene", r["model"], "max_rel_diff", r["diff_rel"], "", r["batch"], "fast vs eager")
    for r in results.timestamps:
        for key in ("fast", "eager", "loop_total"):
            add("timestamps", r["model"], "seconds", r[key], "s", 1, key)
    for r in results.memory:
        add("memory", r["arch"], f"peak_rss_{r['kind']}_{r['seconds']:g}s", r["peak_rss"], "bytes", 1,
            "fast" if r["fast"] else "eager")
    for r in results.stress:
        for key in ("eager", "fast"):
            add("stress", r["arch"], f"seconds_flush_{'on' if r['flush'] else 'off'}", r[key], "s", 1, key)
    for r in results.fixtures:
        for key in ("maps", "logits", "embedding"):
            add("fixtures", r["model"], f"{key}_max_abs_diff", r[key][0], "")
            add("fixtures", r["model"], f"{key}_max_rel_diff", r[key][1], "")
    for r in results.diffs:
        for key in ("fast_vs_eager", "fast_vs_f64", "eager_vs_f64"):
            add("diffs", r["model"], f"{key}_max_rel", r[key][1], "")
    return rows


def render_csv(results: Results) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["section", "model", "path", "batch", "metric", "value", "unit"])
    writer.writeheader()
    writer.writerows(csv_rows(results))
    return buffer.getvalue()


def render_plot(results: Results) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    batch = max(results.plan.batches)
    rows = [r for r in results.scene if r["batch"] == batch]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for key, marker in (("eager", "o"), ("fast", "s")):
        xs = [r["macs_clip"] / 1e9 for r in rows]
        ys = [batch / r[key]["best"] for r in rows]
        ax.plot(xs, ys, marker=marker, linestyle="none", label=f"{key} (batch {batch})")
        if key == "fast":
            for x, y, r in zip(xs, ys, rows):
                ax.annotate(r["model"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))
        axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(f"GMACs per {results.plan.clip_seconds:g} s clip (counted)")
    ax.set_ylabel("scene embeddings: clips / s")
    ax.set_title(f"{results.machine['cpu'][:48]}, {results.machine['torch_threads']} threads", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


def write_reports(results: Results, out_dir: Path) -> list[Path]:
    """``performance.{md,csv,png}`` as the whole content of ``out_dir`` (see :mod:`.run_folder`)."""
    files = {"performance.md": render_markdown(results), "performance.csv": render_csv(results),
             "performance.png": render_plot(results)}
    return write_run(out_dir, "benchmark", files)


def _probe_main(argv: Sequence[str]) -> None:
    kind, spec = argv[0], json.loads(argv[1])
    result = memory_probe(spec) if kind == "memory" else stress_probe(spec)
    print(json.dumps(result))


if __name__ == "__main__":
    _probe_main(sys.argv[1:])
