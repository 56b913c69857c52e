"""One run, one folder: a report folder holds exactly the files of the run that wrote it last.

A run writes into a hidden staging folder beside its output folder and, once it has finished, replaces the files of
the folder's previous run with its own. The previous run's files are known from the folder's manifest
(``run.json``: the tool, the command, the date and every file written). The only other things an output folder may
hold are other runs' folders (a subfolder with a manifest, such as ``reports/performance/``, or a folder of those,
such as ``reports/runs/``) and the run's own cache folder; anything else makes the run refuse before it starts, naming
the files, so that nothing a person put there is deleted and no stale file is left beside the new report.

A run that fails or is killed leaves the previous report untouched (its staging folder is replaced by the next
run); finished work is kept in the caches, not here.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .atomic import atomic_write_bytes, atomic_write_text

MANIFEST = "run.json"


class RunFolderError(ValueError):
    """The output folder holds files that no hear_dymn run wrote there."""


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RunFolderError(f"{path}: unreadable run manifest ({err}); delete the folder's old report by hand "
                             "or choose another --out-dir") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise RunFolderError(f"{path}: not a run manifest (no 'files' list)")
    return manifest


def _is_run_container(path: Path) -> bool:
    """A run's folder (it has a manifest), or a folder that holds only such folders (``reports/runs/``)."""
    if not path.is_dir() or path.is_symlink():
        return False
    if (path / MANIFEST).is_file():
        return True
    children = [child for child in path.iterdir() if not child.name.startswith(".")]
    return bool(children) and all(_is_run_container(child) for child in children)


def _owned_names(manifest: dict[str, Any] | None) -> set[str]:
    """Top-level entries the previous run wrote (``plots/x.png`` owns ``plots``)."""
    if manifest is None:
        return set()
    return {Path(f).parts[0] for f in manifest["files"]} | {MANIFEST}


def foreign_entries(folder: Path, keep: Iterable[Path] = ()) -> list[str]:
    """Entries of ``folder`` that are neither its last run's files, nor other runs' folders, nor in ``keep``."""
    folder = Path(folder)
    if not folder.exists():
        return []
    if not folder.is_dir():
        raise RunFolderError(f"output folder {folder} is a file")
    owned = _owned_names(read_manifest(folder))
    kept = {Path(k).resolve() for k in keep}
    out = []
    for entry in sorted(folder.iterdir()):
        if entry.name in owned or entry.name.startswith("."):
            continue
        if entry.resolve() in kept or _is_run_container(entry):
            continue
        out.append(entry.name + ("/" if entry.is_dir() else ""))
    return out


def check_writable(folder: Path, keep: Iterable[Path] = ()) -> None:
    """Refuse, before any work, a folder holding files that are not a run's output."""
    stray = foreign_entries(folder, keep)
    if stray:
        shown = ", ".join(stray[:8]) + (f" and {len(stray) - 8} more" if len(stray) > 8 else "")
        raise RunFolderError(f"output folder {folder} holds files that no hear_dymn run wrote there ({shown}); "
                             "a run replaces its folder's previous report wholly, so choose an empty or new "
                             "--out-dir, or move those files away")


class RunFolder:
    """Staging area for one run's output; :meth:`commit` swaps it into ``folder``.

    Args:
        folder: the output folder.
        tool: what writes it (recorded in the manifest), e.g. ``"run_suite"``.
        keep: paths inside ``folder`` that are neither output nor to be touched (the run's cache folder).
    """

    def __init__(self, folder: str | os.PathLike[str], tool: str, keep: Iterable[Path] = ()) -> None:
        self.folder = Path(folder)
        self.tool = tool
        self.keep = tuple(keep)
        check_writable(self.folder, self.keep)
        self.staging = self.folder.parent / f".{self.folder.name}.staging"
        if self.staging.exists():
            shutil.rmtree(self.staging)  # a run that did not finish
        self.staging.mkdir(parents=True)

    @property
    def path(self) -> Path:
        """Where the run writes its files."""
        return self.staging

    def commit(self, info: dict[str, Any] | None = None) -> list[str]:
        """Replace the previous run's files in ``folder`` with the staged ones; returns the files, relative."""
        check_writable(self.folder, self.keep)  # nothing appeared meanwhile
        files = sorted(str(p.relative_to(self.staging)) for p in self.staging.rglob("*") if p.is_file())
        self.folder.mkdir(parents=True, exist_ok=True)
        for name in sorted(_owned_names(read_manifest(self.folder))):
            old = self.folder / name
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            elif old.exists() or old.is_symlink():
                old.unlink()
        for entry in self.staging.iterdir():
            os.replace(entry, self.folder / entry.name)
        shutil.rmtree(self.staging)
        write_manifest(self.folder, self.tool, files, info)
        return files

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def write_manifest(folder: Path, tool: str, files: list[str], info: dict[str, Any] | None = None) -> Path:
    manifest = {"tool": tool, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join(sys.argv), **(info or {}), "files": files}
    path = Path(folder) / MANIFEST
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")
    return path


def write_run(folder: str | os.PathLike[str], tool: str, files: dict[str, str | bytes],
              info: dict[str, Any] | None = None) -> list[Path]:
    """Write a small run's files (name -> text or bytes) as ``folder``'s new, whole content."""
    run = RunFolder(folder, tool)
    try:
        for name, content in files.items():
            data = content.encode("utf-8") if isinstance(content, str) else content
            atomic_write_bytes(run.path / name, data)
        run.commit(info)
    except BaseException:
        run.discard()
        raise
    return [Path(folder) / name for name in files]
