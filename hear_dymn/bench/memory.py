"""Peak memory of a process tree: PSS summed over a process and all its descendants, sampled in the background.

PSS (proportional set size) charges each resident page to the processes that map it in equal shares, so the sum
over a tree counts a page shared by a forked DataLoader worker and its parent once, and the total is what the
tree costs the machine. The figures are read from ``/proc/<pid>/smaps_rollup`` (Linux 4.14+; ``smaps`` is summed
on older kernels); the tree is the process and everything below it (``/proc/<pid>/task/*/children``), found anew at
every sample so that workers started or stopped meanwhile are counted while they live.

Sampling misses peaks shorter than the interval (default 50 ms); what is reported is the largest sample.

    with TreeMemorySampler() as sampler:        # this process and its descendants
        work()
    print(sampler.peak_bytes / 2**30, "GiB at peak over", sampler.peak_processes, "processes")
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["descendants", "process_pss_bytes", "tree_pss_bytes", "TreeMemorySampler", "MemoryUnavailableError"]

_PROC = Path("/proc")


class MemoryUnavailableError(RuntimeError):
    """The platform has no ``/proc/<pid>/smaps_rollup`` or ``smaps`` (not Linux, or a restricted ``/proc``)."""


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (all its threads'); empty when it has gone."""
    out: list[int] = []
    try:
        tasks = list((_PROC / str(pid) / "task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            out.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    if not out and tasks and not (tasks[0] / "children").exists():  # kernel without CONFIG_PROC_CHILDREN
        out = _children_by_scan(pid)
    return out


def _children_by_scan(pid: int) -> list[int]:
    found = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces and parentheses
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    """All processes below ``pid`` (children, their children, ...), in breadth-first order."""
    out: list[int] = []
    queue = [pid]
    seen = {pid}
    while queue:
        for child in _children(queue.pop(0)):
            if child not in seen:
                seen.add(child)
                out.append(child)
                queue.append(child)
    return out


def process_pss_bytes(pid: int) -> int | None:
    """PSS of one process in bytes; ``None`` when it has gone (or its memory map cannot be read)."""
    base = _PROC / str(pid)
    for name in ("smaps_rollup", "smaps"):
        try:
            text = (base / name).read_text()
        except FileNotFoundError:
            if not base.exists():
                return None
            continue
        except (ProcessLookupError, PermissionError, OSError):
            return None
        total = 0
        for line in text.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * 1024  # kB
        return total
    raise MemoryUnavailableError(f"{base}: neither smaps_rollup nor smaps is readable; PSS needs Linux /proc")


def tree_pss_bytes(pid: int | None = None) -> tuple[int, int]:
    """``(PSS in bytes summed over pid and its descendants, number of processes counted)``; ``pid`` default: this
    process. Processes that end while they are read are left out."""
    root = os.getpid() if pid is None else pid
    total = count = 0
    for p in (root, *descendants(root)):
        pss = process_pss_bytes(p)
        if pss is not None:
            total += pss
            count += 1
    return total, count


@dataclass
class MemorySample:
    seconds: float  # since the sampler started
    pss_bytes: int
    processes: int


class TreeMemorySampler:
    """Samples :func:`tree_pss_bytes` of ``pid`` on a background thread until stopped; keeps the peak.

    Args:
        pid: Root of the tree (default: this process).
        interval: Seconds between samples.
        keep_samples: Keep every sample in ``samples`` (for plots); the peak is kept regardless.

    Attributes:
        peak_bytes: Largest tree PSS seen; ``peak_processes``: processes counted in that sample.
        samples: Every sample when ``keep_samples``.
    """

    def __init__(self, pid: int | None = None, interval: float = 0.05, keep_samples: bool = False) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.pid = os.getpid() if pid is None else pid
        self.interval = interval
        self.keep_samples = keep_samples
        self.peak_bytes = 0
        self.peak_processes = 0
        self.max_processes = 0
        self.count = 0
        self.samples: list[MemorySample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0.0
        process_pss_bytes(self.pid)  # raises MemoryUnavailableError at once where /proc cannot tell

    def sample(self) -> MemorySample:
        """Take one sample now (also done by the thread); updates the peak."""
        pss, processes = tree_pss_bytes(self.pid)
        record = MemorySample(time.perf_counter() - self._start, pss, processes)
        self.count += 1
        self.max_processes = max(self.max_processes, processes)
        if pss > self.peak_bytes:
            self.peak_bytes, self.peak_processes = pss, processes
        if self.keep_samples:
            self.samples.append(record)
        return record

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def start(self) -> TreeMemorySampler:
        if self._thread is not None:
            raise RuntimeError("sampler already started")
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="tree-memory-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> TreeMemorySampler:
        """Stop the thread after a last sample."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            if self.pid == os.getpid() or _PROC.joinpath(str(self.pid)).exists():
                self.sample()
        return self

    def __enter__(self) -> TreeMemorySampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
