#!/usr/bin/env python
"""How much a busy machine slows the quick suite: quiet, then beside competing CPU-bound processes.

    python eval/load_check.py                      # quiet vs 1 competing process -> reports/load_check/
    python eval/load_check.py --competitors 1 2    # several loads
    python eval/load_check.py --wait-policy ACTIVE # the same under OpenMP's spinning default, for comparison

Each run is ``python eval/run_suite.py`` (the default quick suite) in a subprocess with an empty cache of its own,
so every run embeds, probes and fine-tunes from scratch. A competitor is a Python process spinning on one core for
as long as the run lasts. Prints and writes the wall times and their ratio to the quiet run.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from hear_dymn.bench.run_folder import write_run  # noqa: E402
from hear_dymn.threads import available_cores  # noqa: E402

SPIN = "while True:\n    pass\n"


def timed_suite(work: Path, competitors: int, wait_policy: str | None) -> dict[str, float]:
    """Wall time of one quick suite from an empty cache beside ``competitors`` spinning processes."""
    env = dict(os.environ)
    if wait_policy:
        env["OMP_WAIT_POLICY"] = wait_policy
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(competitors)]
    try:
        time.sleep(1.0 if spinners else 0.0)  # let the competitors get going
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "eval" / "run_suite.py"), "--quiet", "--cache-dir",
                        str(work / "cache"), "--out-dir", str(work / "report")], check=True, env=env, cwd=ROOT)
        seconds = time.perf_counter() - start
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    return {"seconds": seconds, "load_before": load_before, "load_after": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--competitors", type=int, nargs="+", default=[1],
                        help="competing CPU-bound processes per loaded run (default: 1)")
    parser.add_argument("--wait-policy", default=None, help="OMP_WAIT_POLICY of the suite (default: hear_dymn's)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "reports" / "load_check",
                        help="report folder, replaced wholly (default: reports/load_check/)")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="hear_dymn_load_") as tmp:
        for competitors in [0, *args.competitors]:
            work = Path(tmp) / f"load{competitors}"
            print(f"[load] quick suite beside {competitors} competing process(es) ...", flush=True)
            result = timed_suite(work, competitors, args.wait_policy)
            rows.append({"competitors": competitors, **result})
            print(f"[load]   {result['seconds']:.0f} s", flush=True)
    quiet = rows[0]["seconds"]
    policy = args.wait_policy or "hear_dymn default (PASSIVE unless set)"
    lines = ["# Quick suite under load", "",
             f"`python eval/load_check.py{''.join(' ' + a for a in (argv or sys.argv[1:]))}` on "
             f"{time.strftime('%Y-%m-%d %H:%M')}: {platform.processor() or platform.machine()}, "
             f"{available_cores()} available core(s), OMP_WAIT_POLICY {policy}. Each run starts from an empty cache; "
             "a competing process spins on one core for the whole run.", "",
             "| competing processes | wall time (s) | ratio to quiet | 1-min load before / after |",
             "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['competitors']} | {row['seconds']:.0f} | {row['seconds'] / quiet:.2f}x | "
                     f"{row['load_before']:.1f} / {row['load_after']:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    for path in write_run(args.out_dir, "load_check", {"load_check.md": text}):
        print(f"[load] wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
