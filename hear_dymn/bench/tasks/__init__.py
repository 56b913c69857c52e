"""Benchmark tasks: dataset loaders in their official layouts and the task registry.

Importing this package registers the built-in loaders ``esc50`` (any subset of the official CSV), ``esc10`` (its
``esc10 == True`` rows, read from the same ESC-50 root), ``fsd50k``, ``openmic`` and ``hear`` (any hear-preprocess
scene task folder, also reachable as ``hear:<task_name>``). Miniature synthetic datasets in the same layouts are
written by :mod:`hear_dymn.bench.tasks.synthetic`.
"""
from __future__ import annotations

from .base import (
    Clip, DatasetLayoutError, MissingDatasetFileError, Task, TaskSpec, UnsupportedTaskError, check_task_name, get_task,
    list_tasks, register_task,
)
from .esc50 import Esc10Task, Esc50Task
from .fsd50k import Fsd50kTask
from .hear_task import HearTask
from .openmic import OpenMicTask

__all__ = [
    "Clip", "TaskSpec", "Task", "DatasetLayoutError", "MissingDatasetFileError", "UnsupportedTaskError",
    "register_task", "get_task", "check_task_name", "list_tasks", "Esc50Task", "Esc10Task", "Fsd50kTask",
    "OpenMicTask", "HearTask",
]
