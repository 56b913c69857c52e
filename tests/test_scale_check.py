"""The scale check's layouts: official names and counts, hard links into a small pool, readable by the loaders."""
from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest
import soundfile as sf

from hear_dymn.bench.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scale():
    spec = importlib.util.spec_from_file_location("scale_check", ROOT / "eval" / "scale_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["scale_check"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules["scale_check"]


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.suffix in (".wav", ".ogg")]


def test_sizes_and_official_proportions(scale) -> None:
    assert scale.FULL == {"fsd50k": 51197, "openmic": 20000, "esc50": 2000}
    assert scale.fsd50k_counts(51197) == {"train": 36796, "val": 4170, "eval": 10231}
    assert scale.openmic_counts(20000) == {"train": 14915, "test": 5085}
    assert scale.parse_size("10%").of("fsd50k") == 5120 and scale.parse_size("full").of("openmic") == 20000
    assert scale.parse_size("5000").of("esc50") == 2000 and scale.parse_size("500").of("fsd50k") == 500
    assert scale.esc50_per_fold(2000) == 8 and scale.esc50_per_fold(500) == 2
    lengths = scale.fsd50k_pool_seconds()
    assert len(lengths) == 40 and min(lengths) >= 0.3 and max(lengths) == 30.0
    assert 7.0 < sum(lengths) / len(lengths) < 8.2 and sorted(lengths)[20] < 5.0  # mean ~7.6 s, mostly short
    for bad in ("0", "0%", "150%", "ten"):
        with pytest.raises(ValueError, match="--sizes"):
            scale.parse_size(bad)


def test_layouts_are_hard_links_under_official_names_and_load(scale, tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    fsd = scale.write_layout("fsd50k", tmp_path / "fsd50k", pool, 120)
    assert fsd["counts"] == {"train": 86, "val": 10, "eval": 24} and fsd["pool_files"] == 40
    openmic = scale.write_layout("openmic", tmp_path / "openmic", pool, 60)
    esc = scale.write_layout("esc50", tmp_path / "esc50", pool, 250)
    assert esc["clips"] == 250 and openmic["counts"] == {"train": 45, "test": 15}

    pool_files = {p.stat().st_ino: p for p in _files(pool)}
    for name, expected in (("fsd50k", 120), ("openmic", 60), ("esc50", 250)):
        files = _files(tmp_path / name)
        assert len(files) == expected
        assert all(f.stat().st_ino in pool_files and f.stat().st_nlink > 1 for f in files)  # links, not copies
    assert {f.stat().st_ino for f in _files(tmp_path / "fsd50k")} == {p.stat().st_ino for p in _files(pool / "fsd50k")}

    task = get_task("fsd50k", tmp_path / "fsd50k")
    assert task.spec.num_classes == 200 and {s: len(task.clips(s)) for s in task.spec.splits} == {
        "train": 86, "valid": 10, "eval": 24}
    clip = task.clips("train")[0]
    assert clip.path.parent.name == "FSD50K.dev_audio" and clip.clip_id.isdigit()
    assert sf.info(str(clip.path)).samplerate == 44100 and 1 <= clip.target.sum() <= 5

    task = get_task("openmic", tmp_path / "openmic")
    assert task.spec.labels[0] == "accordion" and len(task.spec.labels) == 20
    clip = task.clips("test")[0]
    assert clip.path == tmp_path / "openmic" / "audio" / clip.clip_id[:3] / f"{clip.clip_id}.ogg"
    assert sf.info(str(clip.path)).duration == pytest.approx(10.0, abs=0.01) and clip.mask.sum() == 2

    task = get_task("esc50", tmp_path / "esc50")
    assert task.spec.num_classes == 50 and task.spec.notes == ()
    with open(tmp_path / "esc50" / "meta" / "esc50.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert all(r["filename"] == f"{r['fold']}-{r['src_file']}-{r['take']}-{r['target']}.wav" for r in rows)
    esc10 = get_task("esc10", tmp_path / "esc50")
    assert sum(len(esc10.clips(s)) for s in esc10.spec.splits) == 50 == sum(r["esc10"] == "True" for r in rows)

    marker = (tmp_path / "fsd50k" / scale.MARKER).stat().st_mtime_ns
    assert scale.write_layout("fsd50k", tmp_path / "fsd50k", pool, 120) == fsd  # kept, not rewritten
    assert (tmp_path / "fsd50k" / scale.MARKER).stat().st_mtime_ns == marker


def test_ten_second_training_layout_and_bad_options(scale, tmp_path: Path) -> None:
    counts = {"train": 50, "val": 4, "eval": 4}
    info = scale.write_layout("ftmem", tmp_path / "ft", tmp_path / "pool", 58, split_counts=counts)
    assert info["counts"] == counts and set(info["pool_seconds"]) == {10.0}
    task = get_task("fsd50k", tmp_path / "ft")
    assert len(task.clips("train")) == 50
    with pytest.raises(ValueError, match="--set 'nope=1': expected KEY=VALUE with KEY a SuiteConfig field"):
        scale._parse_sets(["nope=1"])
    assert scale._parse_sets(["device=cuda", "seeds=0,1", "finetune_epochs=3"]) == {
        "device": "cuda", "seeds": [0, 1], "finetune_epochs": 3}
