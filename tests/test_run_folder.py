"""One run, one folder: a run replaces its folder's previous report wholly, refuses stray files, keeps others'."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from hear_dymn.bench.run_folder import MANIFEST, RunFolder, RunFolderError, read_manifest, write_run


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_second_run_replaces_the_first_wholly(tmp_path) -> None:
    out = tmp_path / "report"
    write_run(out, "tool", {"a.md": "first", "plots/x.png": b"\x89PNG", "plots/y.png": b"y"})
    write_run(out, "tool", {"a.md": "second", "plots/z.png": b"z"})
    assert snapshot(out).keys() == {"a.md", "plots/z.png", MANIFEST}
    assert (out / "a.md").read_text() == "second"
    manifest = read_manifest(out)
    assert manifest["tool"] == "tool" and manifest["files"] == ["a.md", "plots/z.png"]
    assert not list(tmp_path.glob(".report.staging"))


def test_stray_files_are_refused_before_anything_is_deleted(tmp_path) -> None:
    out = tmp_path / "report"
    write_run(out, "tool", {"a.md": "first"})
    (out / "notes.txt").write_text("mine")
    (out / "old_plots").mkdir()
    before = snapshot(out)
    with pytest.raises(RunFolderError, match=r"holds files that no hear_dymn run wrote there \(notes.txt, old_plots/\)"):
        write_run(out, "tool", {"a.md": "second"})
    assert snapshot(out) == before


def test_folder_without_manifest_is_refused_unless_empty(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    write_run(tmp_path / "empty", "tool", {"a.md": "x"})
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "leaderboard.md").write_text("by hand")
    with pytest.raises(RunFolderError, match="leaderboard.md"):
        RunFolder(legacy, "tool")


def test_other_runs_folders_and_the_cache_are_kept(tmp_path) -> None:
    out = tmp_path / "reports"
    write_run(out, "suite", {"leaderboard.md": "v1"})
    write_run(out / "performance", "benchmark", {"performance.md": "perf"})
    write_run(out / "runs" / "custom", "suite", {"leaderboard.md": "custom"})
    (out / "cache").mkdir()
    (out / "cache" / "shard.npz").write_bytes(b"cached")
    kept = {k: v for k, v in snapshot(out).items() if not k.startswith("leaderboard") and k != MANIFEST}
    run = RunFolder(out, "suite", keep=[out / "cache"])
    (run.path / "leaderboard.md").write_text("v2")
    run.commit()
    after = snapshot(out)
    assert after["leaderboard.md"] == b"v2"
    assert {k: v for k, v in after.items() if k in kept} == kept  # byte for byte
    assert json.loads(after[MANIFEST])["files"] == ["leaderboard.md"]


def test_a_failed_run_leaves_the_previous_report(tmp_path) -> None:
    out = tmp_path / "report"
    write_run(out, "tool", {"a.md": "first"})
    before = snapshot(out)
    run = RunFolder(out, "tool")
    (run.path / "a.md").write_text("half")
    run.discard()
    assert snapshot(out) == before
    # and a staging folder left by a killed run does not leak into the next one
    killed = RunFolder(out, "tool")
    (killed.path / "stale.md").write_text("stale")
    write_run(out, "tool", {"b.md": "next"})
    assert snapshot(out).keys() == {"b.md", MANIFEST}


def test_unreadable_manifest_is_named(tmp_path) -> None:
    out = tmp_path / "report"
    out.mkdir()
    (out / MANIFEST).write_text("{not json")
    with pytest.raises(RunFolderError, match="unreadable run manifest"):
        RunFolder(out, "tool")
