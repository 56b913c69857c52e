"""Tests for the task loaders, the task registry and the synthetic miniature datasets."""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hear_dymn.bench.audio import AudioReadError, read_audio
from hear_dymn.bench.tasks import (
    DatasetLayoutError, HearTask, MissingDatasetFileError, OpenMicTask, UnsupportedTaskError, base, get_task,
    list_tasks, register_task,
)
from hear_dymn.bench.tasks.openmic import openmic_valid_keys
from hear_dymn.bench.tasks.synthetic import MARKER_NAME, main, write_all_miniatures, write_miniature

# Small sizes for tests that only need a valid tree.
TINY = {"esc50": (3, 5), "fsd50k": (3, 3), "openmic": (3, 4), "hear": (3, 3)}


@pytest.fixture(scope="module")
def minis(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """All miniatures with their default sizes (what the benchmark's quick suite uses)."""
    return write_all_miniatures(tmp_path_factory.mktemp("minis"), seed=0)


def _tiny(kind: str, root: Path, seed: int = 0, corrupt: bool = False) -> Path:
    num_classes, cpc = TINY[kind]
    return write_miniature(kind, root, seed=seed, clips_per_class=cpc,  # type: ignore[arg-type]
                           num_classes=num_classes, corrupt=corrupt)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {kind: _tiny(kind, root / kind) for kind in TINY}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------------------------------------
# Registry


def test_registry_builtin_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert {"esc50", "fsd50k", "openmic", "hear"} <= set(list_tasks())
    with pytest.raises(KeyError, match="did you mean 'esc50'"):
        get_task("esc5O", tmp_path)
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    register_task("dummy-task", lambda root: get_task("esc50", root))
    assert "dummy-task" in list_tasks()
    with pytest.raises(ValueError, match="already registered"):
        register_task("dummy-task", lambda root: get_task("esc50", root))
    with pytest.raises(ValueError, match="already registered"):
        register_task("esc50", lambda root: get_task("esc50", root))


def test_prefixed_hear_name_is_checked(tiny: dict[str, Path]) -> None:
    assert get_task("hear:mini_scene", tiny["hear"]).spec.name == "hear:mini_scene"
    with pytest.raises(DatasetLayoutError, match="hear:other"):
        get_task("hear:other", tiny["hear"])


# --------------------------------------------------------------------------------------------------------
# Loaders on the default miniatures


def test_esc50_miniature(minis: dict[str, Path]) -> None:
    task = get_task("esc50", minis["esc50"])
    spec = task.spec
    assert (spec.num_classes, spec.multilabel, spec.main_metric, spec.protocol) == (5, False, "accuracy", "folds")
    assert spec.splits == ("fold1", "fold2", "fold3", "fold4", "fold5")
    assert spec.labels == tuple(f"synth_{k:02d}" for k in range(5)) and spec.clip_seconds == 5.0
    for split in spec.splits:
        clips = task.clips(split)
        assert len(clips) == 10
        assert [c.clip_id for c in clips] == sorted(c.clip_id for c in clips)
        targets = [c.target for c in clips]
        assert all(t.shape == () and t.dtype == np.int64 and not t.flags.writeable for t in targets)
        assert np.bincount([int(t) for t in targets]).tolist() == [2] * 5
        assert all(c.path.name.startswith(split[-1] + "-") and c.path.stem == c.clip_id and c.mask is None
                   for c in clips)
    info = sf.info(str(task.clips("fold1")[0].path))
    assert (info.samplerate, info.channels, info.frames) == (44100, 1, 5 * 44100)
    with pytest.raises(ValueError, match="fold6"):
        task.clips("fold6")


def test_fsd50k_miniature(minis: dict[str, Path]) -> None:
    task = get_task("fsd50k", minis["fsd50k"])
    spec = task.spec
    assert (spec.num_classes, spec.multilabel, spec.main_metric, spec.protocol) == (6, True, "map", "train_valid_test")
    assert spec.splits == ("train", "valid", "eval") and spec.clip_seconds is None
    counts = {s: len(task.clips(s)) for s in spec.splits}
    assert counts == {"train": 36, "valid": 6, "eval": 18}
    rates, channels, durations = set(), set(), []
    for split in spec.splits:
        for clip in task.clips(split):
            assert clip.target.dtype == np.float32 and clip.target.shape == (6,)
            assert 1 <= clip.target.sum() <= 3
            info = sf.info(str(clip.path))
            rates.add(info.samplerate)
            channels.add(info.channels)
            durations.append(info.duration)
    assert rates == {32000, 44100, 48000} and channels == {1, 2}
    assert min(durations) >= 1.0 and max(durations) <= 6.0 and np.std(durations) > 0.5
    with open(minis["fsd50k"] / "FSD50K.ground_truth" / "dev.csv", newline="") as fh:
        assert any(len(row["labels"].split(",")) > 1 for row in csv.DictReader(fh))


def test_stereo_48k_miniature_file_reads_mono_32k(minis: dict[str, Path]) -> None:
    task = get_task("fsd50k", minis["fsd50k"])
    clips = [c for s in task.spec.splits for c in task.clips(s)]
    clip = next(c for c in clips if (sf.info(str(c.path)).samplerate, sf.info(str(c.path)).channels) == (48000, 2))
    frames = sf.info(str(clip.path)).frames
    wave = read_audio(clip.path, 32000)
    assert wave.ndim == 1 and wave.dtype == np.float32 and wave.shape == (math.ceil(frames * 2 / 3),)
    assert 0.0 < np.abs(wave).max() < 1.0


def test_openmic_miniature(minis: dict[str, Path]) -> None:
    root = minis["openmic"]
    task = get_task("openmic", root)
    spec = task.spec
    assert (spec.num_classes, spec.multilabel, spec.main_metric) == (6, True, "masked_map")
    counts = {s: len(task.clips(s)) for s in spec.splits}
    assert counts == {"train": 43, "valid": 5, "test": 12}
    train_keys = (root / "partitions" / "split01_train.csv").read_text().split()
    assert {c.clip_id for c in task.clips("valid")} == openmic_valid_keys(train_keys, 0.1)
    masks = np.stack([c.mask for s in spec.splits for c in task.clips(s)])
    targets = np.stack([c.target for s in spec.splits for c in task.clips(s)])
    assert 0.3 < 1.0 - masks.mean() < 0.7  # a good fraction of labels is missing
    assert np.all(targets[masks == 0] == 0)
    assert np.all(masks.sum(1) >= 1) and 0 < targets.mean() < 0.5
    with open(root / "openmic-2018-aggregated-labels.csv", newline="") as fh:
        rel = np.array([float(r["relevance"]) for r in csv.DictReader(fh)])
    assert rel.min() >= 0.0 and rel.max() <= 1.0 and ((rel > 0.05) & (rel < 0.95)).any()
    clip = task.clips("test")[0]
    assert clip.path == root / "audio" / clip.clip_id[:3] / f"{clip.clip_id}.ogg"
    assert sf.info(str(clip.path)).format == "OGG"


def test_hear_miniature(minis: dict[str, Path]) -> None:
    task = get_task("hear", minis["hear"])
    assert isinstance(task, HearTask) and task.audio_sample_rate == 48000
    spec = task.spec
    assert (spec.name, spec.num_classes, spec.main_metric, spec.protocol) == ("hear:mini_scene", 5, "accuracy",
                                                                            "train_valid_test")
    assert {s: len(task.clips(s)) for s in spec.splits} == {"train": 40, "valid": 10, "test": 10}
    assert read_audio(task.clips("test")[0].path, 32000).shape == (64000,)


# --------------------------------------------------------------------------------------------------------
# OpenMIC mask semantics on a hand-written tree


def _write_openmic_tree(root: Path) -> None:
    (root / "partitions").mkdir(parents=True)
    (root / "class-map.json").write_text(json.dumps({"cello": 1, "accordion": 0, "drums": 2}))
    (root / "openmic-2018-aggregated-labels.csv").write_text(
        "sample_key,instrument,relevance,num_responses\n"
        "000001_0,accordion,0.9,3\n"
        "000001_0,cello,0.5,2\n"      # exactly 0.5 is negative
        "000002_960,drums,0.51,1\n"
        "000002_960,accordion,0.0,4\n"
        "100003_0,cello,0.0,2\n")
    (root / "partitions" / "split01_train.csv").write_text("000002_960\n000001_0\n")
    (root / "partitions" / "split01_test.csv").write_text("100003_0\n")
    for key in ("000001_0", "000002_960", "100003_0"):
        path = root / "audio" / key[:3] / f"{key}.ogg"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, np.zeros(800, dtype=np.float32), 8000, format="OGG", subtype="VORBIS")


def test_openmic_hand_written_masks(tmp_path: Path) -> None:
    _write_openmic_tree(tmp_path)
    task = OpenMicTask(tmp_path, valid_fraction=0.0)
    assert task.spec.labels == ("accordion", "cello", "drums")
    assert task.clips("valid") == []
    train = {c.clip_id: c for c in task.clips("train")}
    assert list(train) == ["000001_0", "000002_960"]
    np.testing.assert_array_equal(train["000001_0"].target, [1, 0, 0])
    np.testing.assert_array_equal(train["000001_0"].mask, [1, 1, 0])
    np.testing.assert_array_equal(train["000002_960"].target, [0, 0, 1])
    np.testing.assert_array_equal(train["000002_960"].mask, [1, 0, 1])
    (test,) = task.clips("test")
    np.testing.assert_array_equal(test.target, [0, 0, 0])
    np.testing.assert_array_equal(test.mask, [0, 1, 0])
    assert test.mask.dtype == np.float32 and not test.mask.flags.writeable
    # Default 10% validation: ceil(0.1 * 2) = 1 clip, chosen by smallest SHA-1 of the key.
    valid = get_task("openmic", tmp_path).clips("valid")
    expected = min(["000002_960", "000001_0"], key=lambda k: hashlib.sha1(k.encode()).hexdigest())
    assert [c.clip_id for c in valid] == [expected]


def test_openmic_bad_rows(tmp_path: Path) -> None:
    _write_openmic_tree(tmp_path)
    labels = tmp_path / "openmic-2018-aggregated-labels.csv"
    good = labels.read_text()
    labels.write_text(good + "000001_0,kazoo,0.7,1\n")
    with pytest.raises(DatasetLayoutError, match="kazoo.*class-map.json"):
        OpenMicTask(tmp_path)
    labels.write_text(good + "000001_0,drums,1.5,1\n")
    with pytest.raises(DatasetLayoutError, match="line 7.*relevance"):
        OpenMicTask(tmp_path)
    labels.write_text(good + "000001_0,accordion,0.2,1\n")
    with pytest.raises(DatasetLayoutError, match="duplicate"):
        OpenMicTask(tmp_path)


# --------------------------------------------------------------------------------------------------------
# HEAR folders built by hand


def _write_hear(root: Path, *, split_mode: str, entries: dict[str, dict[str, list[str]]], rates: tuple[int, ...],
                prediction_type: str = "multiclass", evaluation: tuple[str, ...] = ("top1_acc",),
                embedding_type: str = "scene", nfolds: int | None = None) -> Path:
    root.mkdir(parents=True)
    meta = {"task_name": "tiny", "version": "v2.0.0", "embedding_type": embedding_type,
            "prediction_type": prediction_type, "split_mode": split_mode, "sample_duration": 1.0,
            "evaluation": list(evaluation)}
    if nfolds is not None:
        meta["nfolds"] = nfolds
    (root / "task_metadata.json").write_text(json.dumps(meta))
    (root / "labelvocabulary.csv").write_text("idx,label\n0,dog\n1,cat\n2,7\n")
    for split, files in entries.items():
        (root / f"{split}.json").write_text(json.dumps(files))
        for rate in rates:
            for fname in files:
                path = root / str(rate) / split / fname
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, np.full(rate, 0.1, dtype=np.float32), rate)
    return root


def test_hear_trainvaltest_prefers_32k(tmp_path: Path) -> None:
    entries = {"train": {"b.wav": ["cat"], "a.wav": ["dog"]}, "valid": {"c.wav": ["7"]}, "test": {"d.wav": ["dog"]}}
    root = _write_hear(tmp_path / "t", split_mode="trainvaltest", entries=entries, rates=(16000, 32000, 48000))
    task = get_task("hear:tiny", root)
    spec = task.spec
    assert (spec.splits, spec.protocol, spec.main_metric, spec.version) == (("train", "valid", "test"),
                                                                         "train_valid_test", "accuracy", 2)
    assert spec.labels == ("dog", "cat", "7") and spec.clip_seconds == 1.0
    train = task.clips("train")
    assert [c.clip_id for c in train] == ["a", "b"] and [int(c.target) for c in train] == [0, 1]
    assert train[0].path == root / "32000" / "train" / "a.wav"
    assert int(task.clips("valid")[0].target) == 2


def test_hear_folds_multilabel(tmp_path: Path) -> None:
    entries = {"fold00": {"x.wav": ["dog", "cat"], "y.wav": []}, "fold01": {"z.wav": ["7"]}}
    root = _write_hear(tmp_path / "f", split_mode="new_split_kfold", entries=entries, rates=(16000, 44100),
                       prediction_type="multilabel", evaluation=("mAP", "d_prime"), nfolds=2)
    task = get_task("hear", root)
    assert task.audio_sample_rate == 44100
    spec = task.spec
    assert (spec.splits, spec.protocol, spec.main_metric, spec.multilabel) == (("fold00", "fold01"), "folds", "map",
                                                                            True)
    fold0 = task.clips("fold00")
    np.testing.assert_array_equal(fold0[0].target, [1, 1, 0])
    np.testing.assert_array_equal(fold0[1].target, [0, 0, 0])
    assert read_audio(fold0[0].path, 32000).shape == (32000,)


def test_hear_errors(tmp_path: Path) -> None:
    entries = {"train": {"a.wav": ["dog"]}, "valid": {"b.wav": ["dog"]}, "test": {"c.wav": ["dog"]}}
    event = _write_hear(tmp_path / "e", split_mode="trainvaltest", entries=entries, rates=(16000,),
                        embedding_type="event")
    with pytest.raises(UnsupportedTaskError, match="event task 'tiny' has prediction_type 'multiclass'"):
        get_task("hear", event)
    # An event task lists {"label", "start", "end"} per file, not label lists (loading them: tests/test_events.py).
    scene_lists = _write_hear(tmp_path / "el", split_mode="trainvaltest", entries=entries, rates=(16000,),
                              embedding_type="event", prediction_type="multilabel",
                              evaluation=("event_onset_200ms_fms",))
    with pytest.raises(DatasetLayoutError, match="event 0 of 'a.wav' must be an object"):
        get_task("hear", scene_lists)
    two = dict(entries, train={"a.wav": ["dog", "cat"]})
    bad = _write_hear(tmp_path / "b", split_mode="trainvaltest", entries=two, rates=(16000,))
    with pytest.raises(DatasetLayoutError, match="train.json.*2 labels"):
        get_task("hear", bad)
    unknown = dict(entries, test={"c.wav": ["cow"]})
    bad2 = _write_hear(tmp_path / "u", split_mode="trainvaltest", entries=unknown, rates=(16000,))
    with pytest.raises(DatasetLayoutError, match="cow"):
        get_task("hear", bad2)
    (bad2 / "task_metadata.json").unlink()
    with pytest.raises(MissingDatasetFileError, match="task_metadata.json"):
        get_task("hear", bad2)


# --------------------------------------------------------------------------------------------------------
# Layout errors


@pytest.mark.parametrize(("kind", "relpath"), [
    ("esc50", "meta/esc50.csv"),
    ("fsd50k", "FSD50K.ground_truth/vocabulary.csv"),
    ("fsd50k", "FSD50K.ground_truth/eval.csv"),
    ("openmic", "class-map.json"),
    ("openmic", "partitions/split01_test.csv"),
    ("hear", "labelvocabulary.csv"),
    ("hear", "valid.json"),
])
def test_missing_metadata_file(tiny: dict[str, Path], tmp_path: Path, kind: str, relpath: str) -> None:
    root = _copy(tiny[kind], tmp_path / kind)
    (root / relpath).unlink()
    with pytest.raises(DatasetLayoutError, match=relpath.split("/")[-1]) as info:
        get_task(kind, root)
    assert isinstance(info.value, FileNotFoundError) and "Expected layout" in str(info.value)


def test_bad_column_and_missing_audio(tiny: dict[str, Path], tmp_path: Path) -> None:
    root = _copy(tiny["esc50"], tmp_path / "esc50")
    meta = root / "meta" / "esc50.csv"
    text = meta.read_text()
    meta.write_text(text.replace("filename,fold,", "filename,folds,", 1))
    with pytest.raises(DatasetLayoutError, match=r"esc50.csv.*\['fold'\]"):
        get_task("esc50", root)
    meta.write_text(text)
    victim = sorted((root / "audio").iterdir())[0]
    victim.unlink()
    with pytest.raises(MissingDatasetFileError, match=victim.name):
        get_task("esc50", root)

    root = _copy(tiny["fsd50k"], tmp_path / "fsd50k")
    vocab = root / "FSD50K.ground_truth" / "vocabulary.csv"
    vocab.write_text("index,label,mid\n" + vocab.read_text())
    with pytest.raises(DatasetLayoutError, match="vocabulary.csv.*header"):
        get_task("fsd50k", root)


# --------------------------------------------------------------------------------------------------------
# Synthetic generator: corrupt files, determinism, idempotence, CLI


def test_corrupt_option(tmp_path: Path) -> None:
    for kind in TINY:
        root = _tiny(kind, tmp_path / kind, corrupt=True)
        task = get_task(kind, root)
        corrupt = {root / p for p in json.loads((root / MARKER_NAME).read_text())["corrupt_files"]}
        assert corrupt
        clips = [c for s in task.spec.splits for c in task.clips(s)]
        bad = [c for c in clips if c.path in corrupt]
        assert len(bad) == 1
        with pytest.raises(AudioReadError, match=bad[0].path.name):
            read_audio(bad[0].path, 32000)
        assert all(read_audio(c.path, 32000).size > 0 for c in clips if c.path not in corrupt)  # the others read


def _tree_digest(root: Path) -> dict[str, str]:
    """Hash of every file; OGG files are hashed by decoded samples (their stream serial number is random)."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix == ".ogg":
            data = sf.read(str(path), dtype="float32")[0].tobytes()
        else:
            data = path.read_bytes()
        out[str(path.relative_to(root))] = hashlib.sha1(data).hexdigest()
    return out


@pytest.mark.parametrize("kind", ["esc50", "fsd50k", "openmic"])
def test_determinism(tiny: dict[str, Path], tmp_path: Path, kind: str) -> None:
    same = _tiny(kind, tmp_path / "same")
    other = _tiny(kind, tmp_path / "other", seed=1)
    reference = _tree_digest(tiny[kind])
    assert _tree_digest(same) == reference
    other_digest = _tree_digest(other)
    audio_ref = {v for k, v in reference.items() if k.endswith((".wav", ".ogg"))}
    audio_other = {v for k, v in other_digest.items() if k.endswith((".wav", ".ogg"))}
    assert audio_ref and audio_ref.isdisjoint(audio_other)
    task_a, task_b = get_task(kind, tiny[kind]), get_task(kind, same)
    for split in task_a.spec.splits:
        a, b = task_a.clips(split), task_b.clips(split)
        assert [c.clip_id for c in a] == [c.clip_id for c in b]
        assert all(np.array_equal(x.target, y.target) for x, y in zip(a, b, strict=True))


def test_idempotent_writes(tmp_path: Path) -> None:
    root = _tiny("hear", tmp_path / "hear")
    marker = root / MARKER_NAME
    stamp = marker.stat().st_mtime_ns
    assert _tiny("hear", root) == root and marker.stat().st_mtime_ns == stamp
    _tiny("hear", root, seed=3)
    assert json.loads(marker.read_text())["params"]["seed"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="foreign"):
        _tiny("hear", foreign)
    with pytest.raises(ValueError, match="clips_per_class"):
        write_miniature("esc50", tmp_path / "e", clips_per_class=2)


def test_cli(tmp_path: Path) -> None:
    assert main([str(tmp_path), "--kind", "hear", "--seed", "2"]) == 0
    assert get_task("hear:mini_scene", tmp_path / "hear").spec.num_classes == 5
    assert not (tmp_path / "esc50").exists() and os.listdir(tmp_path) == ["hear"]


def test_hear_kfold_miniature_has_hear_eval_kit_layout(minis: dict[str, Path]) -> None:
    root = minis["hear_kfold"]
    meta = json.loads((root / "task_metadata.json").read_text())
    folds = [f"fold{i:02d}" for i in range(5)]
    # The keys hear-eval-kit's runners read: splits, split_mode (a k-fold mode it knows), sample_duration.
    assert meta["splits"] == folds and meta["nfolds"] == 5 and meta["split_mode"] == "new_split_kfold"
    assert meta["sample_duration"] == 2.0 and meta["evaluation"] == ["top1_acc"]
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["32000"]
    task = get_task("hear:mini_scene_kfold", root)
    spec = task.spec
    assert (spec.protocol, spec.splits, spec.num_classes, task.audio_sample_rate) == ("folds", tuple(folds), 5, 32000)
    for fold in folds:
        clips = task.clips(fold)
        assert len(clips) == 30
        assert np.bincount([int(c.target) for c in clips]).tolist() == [6] * 5
        names = json.loads((root / f"{fold}.json").read_text())
        assert all((root / "32000" / fold / name).is_file() for name in names)
    info = sf.info(str(task.clips("fold03")[0].path))
    assert (info.samplerate, info.channels, info.frames) == (32000, 1, 64000)


def test_hear_kfold_corrupt_and_determinism(tmp_path: Path) -> None:
    a = write_miniature("hear_kfold", tmp_path / "a", clips_per_class=5, num_classes=3)
    b = write_miniature("hear_kfold", tmp_path / "b", clips_per_class=5, num_classes=3)
    assert _tree_digest(a) == _tree_digest(b)
    bad = write_miniature("hear_kfold", tmp_path / "bad", clips_per_class=5, num_classes=3, corrupt=True)
    corrupt = json.loads((bad / MARKER_NAME).read_text())["corrupt_files"]
    assert len(corrupt) == 1 and corrupt[0].startswith("32000/fold00/")
    with pytest.raises(AudioReadError):
        read_audio(bad / corrupt[0], 32000)
    with pytest.raises(ValueError, match="clips_per_class"):
        write_miniature("hear_kfold", tmp_path / "few", clips_per_class=4)


@pytest.mark.parametrize("kind", sorted(TINY))
def test_a_byte_order_mark_is_not_data(kind: str, tmp_path: Path) -> None:
    root = _tiny(kind, tmp_path / kind)
    plain = get_task(kind, root)
    for path in [*root.rglob("*.csv"), *root.rglob("*.json")]:
        if path.name.startswith("."):
            continue
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as spreadsheet programs export UTF-8
    marked = get_task(kind, root)
    assert marked.spec == plain.spec
    for split in plain.spec.splits:
        a, b = plain.clips(split), marked.clips(split)
        assert [(c.clip_id, c.path) for c in a] == [(c.clip_id, c.path) for c in b]
        assert all(np.array_equal(x.target, y.target) for x, y in zip(a, b))


def test_layout_errors_quote_the_expected_layout(tmp_path: Path) -> None:
    root = _tiny("fsd50k", tmp_path / "fsd50k")
    dev = root / "FSD50K.ground_truth" / "dev.csv"
    dev.write_text(dev.read_text().replace(",train\n", ",training\n", 1))
    with pytest.raises(DatasetLayoutError, match=r"line \d+: column 'split' must be 'train' or 'val', got "
                                                 r"'training'\. Expected layout: <root>/FSD50K\.ground_truth"):
        get_task("fsd50k", root)


# --------------------------------------------------------------------------------------------------------
# ESC-50 subsets and ESC-10, on hand-written official-format layouts


def _official_esc50(root: Path, targets, folds=(1, 2, 3, 4, 5), per_fold: int = 1, seconds: float = 0.05) -> Path:
    """An ESC-50 root in the official format: real targets and categories, ``esc10`` as in the release, one tone per
    class (so a probe can learn it), ``per_fold`` clips per class and fold."""
    from hear_dymn.bench.tasks.esc50 import ESC10_TARGETS, ESC50_CATEGORIES

    (root / "audio").mkdir(parents=True)
    (root / "meta").mkdir()
    rows = []
    t = np.arange(int(seconds * 44100)) / 44100
    for target in targets:
        for fold in folds:
            for take in range(per_fold):
                src = 100000 + 1000 * target + 10 * fold + take
                name = f"{fold}-{src}-{'ABCDEFGH'[take]}-{target}.wav"
                wave = 0.3 * np.sin(2 * np.pi * (200.0 + 150.0 * target) * t) * (1.0 + 0.1 * take)
                sf.write(str(root / "audio" / name), wave.astype(np.float32), 44100, subtype="PCM_16")
                rows.append((name, fold, target, ESC50_CATEGORIES[target], target in ESC10_TARGETS, src,
                             "ABCDEFGH"[take]))
    with open(root / "meta" / "esc50.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(("filename", "fold", "target", "category", "esc10", "src_file", "take"))
        writer.writerows(sorted(rows))
    return root


def _official_target(clip) -> int:
    return int(clip.path.stem.rsplit("-", 1)[1])


def test_full_official_esc50_csv_loads_as_before(tmp_path: Path, minis: dict[str, Path]) -> None:
    from hear_dymn.bench.tasks.esc50 import ESC50_CATEGORIES

    task = get_task("esc50", _official_esc50(tmp_path / "esc50", range(50)))
    spec = task.spec
    assert (spec.num_classes, spec.labels, spec.notes) == (50, ESC50_CATEGORIES, ())
    assert task.official_targets == tuple(range(50))
    assert spec.description == ("ESC-50 environmental sound classification: 50 classes, 250 clips of 5 s; 5-fold "
                                "cross-validation over the official folds, accuracy.")
    assert all(int(c.target) == _official_target(c) for s in spec.splits for c in task.clips(s))
    assert get_task("esc50", minis["esc50"]).spec.notes == ()  # synthetic names, targets 0..4: nothing to state


def test_esc50_subset_remaps_classes_in_target_order_and_names_the_absent(tmp_path: Path) -> None:
    task = get_task("esc50", _official_esc50(tmp_path / "sub", (41, 0, 10)))
    spec = task.spec
    assert spec.num_classes == 3 and spec.labels == ("dog", "rain", "chainsaw")
    assert task.official_targets == (0, 10, 41) and spec.splits == tuple(f"fold{k}" for k in range(1, 6))
    remap = {0: 0, 10: 1, 41: 2}
    clips = [c for s in spec.splits for c in task.clips(s)]
    assert len(clips) == 15 and all(int(c.target) == remap[_official_target(c)] for c in clips)
    (note,) = spec.notes
    assert note.startswith("subset of ESC-50: 3 of the 50 official classes present; class indices 0..2 are "
                           "official targets 0, 10, 41 in that order; absent: rooster (1), pig (2), ")
    assert "hand_saw (49)" in note and "dog (0)" not in note and note in spec.description


def test_esc10_selects_exactly_the_esc10_rows(tmp_path: Path) -> None:
    from hear_dymn.bench.tasks.esc50 import ESC10_TARGETS

    root = _official_esc50(tmp_path / "esc", (*ESC10_TARGETS, 2, 3, 49))
    with open(root / "meta" / "esc50.csv", newline="") as fh:
        wanted = {Path(r["filename"]).stem for r in csv.DictReader(fh) if r["esc10"] == "True"}
    task = get_task("esc10", root)
    spec = task.spec
    got = [c for s in spec.splits for c in task.clips(s)]
    assert {c.clip_id for c in got} == wanted and len(got) == 50
    assert (spec.name, spec.num_classes, spec.splits) == ("esc10", 10, tuple(f"fold{k}" for k in range(1, 6)))
    assert spec.labels == ("dog", "rooster", "rain", "sea_waves", "crackling_fire", "crying_baby", "sneezing",
                           "clock_tick", "helicopter", "chainsaw")
    assert task.official_targets == ESC10_TARGETS
    assert all(int(c.target) == ESC10_TARGETS.index(_official_target(c)) for c in got)
    assert spec.notes[0].startswith("ESC-10: the 10 classes marked in the official esc10 column; class indices "
                                    "0..9 are official targets 0-1, 10-12, 20-21, 38, 40-41 in that order")
    assert spec.description.startswith("ESC-10 environmental sound classification: 10 classes, 50 clips")
    assert get_task("esc50", root).spec.num_classes == 13  # the same root as ESC-50
    # ESC-10 needs only its own audio files
    (root / "audio" / "1-102010-A-2.wav").unlink()
    assert len(get_task("esc10", root).clips("fold1")) == 10
    with pytest.raises(MissingDatasetFileError, match="1-102010-A-2.wav"):
        get_task("esc50", root)


def test_esc50_subset_of_folds_runs_the_folds_present(tmp_path: Path) -> None:
    task = get_task("esc50", _official_esc50(tmp_path / "f", (0, 1), folds=(1, 2, 4)))
    assert task.spec.splits == ("fold1", "fold2", "fold4")
    classes, folds = task.spec.notes
    assert classes.startswith("subset of ESC-50: 2 of the 50 official classes present")
    assert folds == "folds present: 1-2, 4 (absent: 3, 5); cross-validation runs over the folds present."
    with pytest.raises(ValueError, match="fold3"):
        task.clips("fold3")


def _edit_csv(root: Path, edit) -> None:
    meta = root / "meta" / "esc50.csv"
    with open(meta, newline="") as fh:
        reader = csv.DictReader(fh)
        header, rows = reader.fieldnames, [edit(dict(r)) for r in reader]
    with open(meta, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[h for h in header if h in rows[0]], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def test_bad_esc50_subsets_are_named(tmp_path: Path) -> None:
    one_fold = _official_esc50(tmp_path / "one", (0, 5), folds=(3,))
    with pytest.raises(DatasetLayoutError, match=r"fold 3 only \(missing folds: 1-2, 4-5\); cross-validation needs "
                                                 "at least 2 folds"):
        get_task("esc50", one_fold)

    no_esc10 = _official_esc50(tmp_path / "none", (2, 3))
    assert get_task("esc50", no_esc10).spec.num_classes == 2
    with pytest.raises(DatasetLayoutError, match="no row has esc10 == True"):
        get_task("esc10", no_esc10)

    bad_flag = _official_esc50(tmp_path / "flag", (0, 1))
    _edit_csv(bad_flag, lambda r: {**r, "esc10": "maybe" if r["filename"] == "3-101030-A-1.wav" else r["esc10"]})
    with pytest.raises(DatasetLayoutError, match=r"esc50.csv, line \d+: column 'esc10' must be True or False, "
                                                 "got 'maybe'"):
        get_task("esc10", bad_flag)

    no_column = _official_esc50(tmp_path / "col", (0, 1))
    _edit_csv(no_column, lambda r: {k: v for k, v in r.items() if k != "esc10"})
    assert get_task("esc50", no_column).spec.num_classes == 2  # esc50 does not need the column
    with pytest.raises(DatasetLayoutError, match=r"missing column\(s\) \['esc10'\]"):
        get_task("esc10", no_column)

    clash = _official_esc50(tmp_path / "clash", (0, 1))
    _edit_csv(clash, lambda r: {**r, "category": "cat" if r["filename"] == "2-101020-A-1.wav" else r["category"]})
    with pytest.raises(DatasetLayoutError, match="target 1 has category 'cat' but earlier rows say 'rooster'"):
        get_task("esc50", clash)


def test_esc10_runs_in_the_suite_from_data_alone(tmp_path: Path) -> None:
    """``--data esc10=PATH`` alone: the ESC-10 rows of an ESC-50 root, log-mel features and the linear probe."""
    import importlib.util

    from hear_dymn.bench.suite import run_suite
    from hear_dymn.bench.tasks.esc50 import ESC10_TARGETS

    root = _official_esc50(tmp_path / "ESC-50", (*ESC10_TARGETS, 7), per_fold=2, seconds=0.5)
    spec = importlib.util.spec_from_file_location("cli", Path(__file__).parents[1] / "eval" / "run_suite.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    cfg = cli.config_from_args(cli.parse_args([
        "--data", f"esc10={root}", "--models", "logmel", "--protocols", "linear", "--seeds", "0",
        "--linear-preset", "fast", "--out-dir", str(tmp_path / "report"), "--cache-dir", str(tmp_path / "cache")]))
    assert cfg.tasks == ("esc10",)
    result = run_suite(cfg, progress=False)
    (row,) = [r for r in result["rows"] if r["source"] == "measured"]
    assert (row["task"], row["metric"], row["n"]) == ("esc10", "accuracy", 5)
    assert row["mean"] > 0.9  # ten pure tones: learnable from log-mel statistics
    with np.load(tmp_path / "report" / "results" / "logmel" / "linear" / "esc10" / "fold1_seed0.npz") as pred:
        assert pred["scores"].shape == (20, 10) and sorted(set(pred["targets"].tolist())) == list(range(10))
    text = (tmp_path / "report" / "leaderboard.md").read_text()
    assert "ESC-10 acc" in text and f"**esc10:** {root} (fold1: 20," in text
