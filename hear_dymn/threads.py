"""The thread budget: how many CPU threads hear_dymn's work uses, decided in one place.

Two settings matter on a CPU that other jobs share:

* **OpenMP wait policy.** By default OpenMP threads spin while they wait at a barrier; a thread that the kernel has
  descheduled in favour of another job then holds up every other thread. ``OMP_WAIT_POLICY=PASSIVE`` makes them
  sleep instead. OpenMP reads the variable once, when torch loads it, so :func:`prepare_environment` must run
  before ``import torch``: ``hear_dymn/__init__.py`` calls it first thing, and it does nothing when torch is already
  imported or the variable is already set (a value you set yourself always wins).
* **Intra-op threads.** :func:`decide` gives one torch thread per core this process may run on
  (``os.sched_getaffinity``, so ``taskset`` and container CPU sets are respected), less the cores that worker
  processes of the same job get (audio loader workers, ``bench/pipeline.py``, run one thread each). ``HEAR_DYMN_THREADS=N`` or a CLI's ``--threads N`` overrides it. The count does not
  depend on the machine's load, so a run's numbers do not change with what else is running.

The CLIs apply the budget with :func:`apply` and write :meth:`ThreadBudget.describe` into the report provenance.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

ENV_THREADS = "HEAR_DYMN_THREADS"
WAIT_POLICY = "PASSIVE"


def prepare_environment() -> None:
    """Set the OpenMP wait policy for the torch that is about to be imported (see the module docstring)."""
    if "torch" in sys.modules:
        return  # OpenMP has read its environment already
    os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask), else the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ThreadBudget:
    """The decision: ``intra_op`` torch threads out of ``cores``, with ``workers`` worker processes beside."""

    cores: int
    intra_op: int
    workers: int
    source: str  # "default", "HEAR_DYMN_THREADS" or "--threads"
    wait_policy: str

    def describe(self) -> str:
        """One line for report provenance."""
        workers = f", {self.workers} worker process(es)" if self.workers else ""
        return (f"{self.intra_op} torch thread(s) of {self.cores} available core(s){workers} ({self.source}); "
                f"OMP_WAIT_POLICY={self.wait_policy}")


def _positive(value: str | int, what: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a whole number of threads, got {value!r}") from None
    if number < 1:
        raise ValueError(f"{what} must be at least 1, got {number}")
    return number


def decide(threads: int | None = None, workers: int = 0) -> ThreadBudget:
    """The budget for this process: ``threads`` if given, else ``$HEAR_DYMN_THREADS``, else the available cores
    less ``workers`` (worker processes that do CPU work of their own, such as audio decoding), at least one."""
    cores = available_cores()
    if threads is not None:
        intra, source = _positive(threads, "--threads"), "--threads"
    elif os.environ.get(ENV_THREADS):
        intra, source = _positive(os.environ[ENV_THREADS], ENV_THREADS), ENV_THREADS
    else:
        intra, source = max(1, cores - workers), "default"
    return ThreadBudget(cores=cores, intra_op=intra, workers=workers, source=source,
                        wait_policy=os.environ.get("OMP_WAIT_POLICY", "(OpenMP default: active)"))


def current() -> ThreadBudget:
    """The threads torch uses now, described like a decision (for runs whose caller set them)."""
    import torch

    return ThreadBudget(cores=available_cores(), intra_op=torch.get_num_threads(), workers=0, source="as set",
                        wait_policy=os.environ.get("OMP_WAIT_POLICY", "(OpenMP default: active)"))


def apply(threads: int | None = None, workers: int = 0) -> ThreadBudget:
    """Decide the budget and set torch's intra-op threads to it."""
    import torch

    budget = decide(threads, workers)
    torch.set_num_threads(budget.intra_op)
    return budget
