"""HEAR event tasks: loading (all split modes, 48 kHz-only folders), frame labels, post-processing, scores against
sed_eval, the timestamp-embedding cache and the suite's event rows (rescored from the saved events)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from hear_dymn.bench.embeddings import LogMelBaseline
from hear_dymn.bench.events import (
    EVENT_SCORES, FrameSplit, event_probe_config, events_from_frames, frame_labels, onset_f_measure,
    postprocessing_grid, postprocessing_points, read_events, rescore, score_events, sed_eval_score,
)
from hear_dymn.bench.probes import MLP_PRESETS
from hear_dymn.bench.suite import run_suite, suite_config
from hear_dymn.bench.tasks import DatasetLayoutError, UnsupportedTaskError, get_task
from hear_dymn.bench.tasks.hear_task import EventClip
from hear_dymn.bench.tasks.synthetic import HEAR_EVENTS_TASK_NAME, write_miniature
from hear_dymn.bench.timestamp_cache import TimestampCache, timestamp_embed

pytest.importorskip("sed_eval")


@pytest.fixture(scope="module")
def events_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_miniature("hear_events", tmp_path_factory.mktemp("events") / "mini_events", seed=0)


def _shift(events: dict, ms: float) -> dict:
    return {f: [{**e, "start": e["start"] + ms, "end": e["end"] + ms} for e in evs] for f, evs in events.items()}


# --------------------------------------------------------------------------------------------------------
# loading


def test_synthetic_event_task_is_48k_only_with_known_events(events_root: Path) -> None:
    task = get_task(f"hear:{HEAR_EVENTS_TASK_NAME}", events_root)
    spec = task.spec
    assert (spec.embedding_type, spec.main_metric, spec.multilabel, spec.protocol) == (
        "event", "event_onset_200ms_fms", True, "train_valid_test")
    assert task.audio_sample_rate == 48000 and sorted(p.name for p in events_root.iterdir() if p.is_dir()) == ["48000"]
    assert task.evaluation == ["event_onset_200ms_fms", "segment_1s_er"]
    assert [len(task.clips(s)) for s in spec.splits] == [12, 6, 6]
    clip = task.clips("test")[0]
    assert isinstance(clip, EventClip) and clip.path.parent == events_root / "48000" / "test"
    written = json.loads((events_root / "test.json").read_text())
    assert task.reference_events("test") == written  # exactly the split file, keyed by file name
    assert len(written[clip.file_name]) == 3
    labels = {e["label"] for e in written[clip.file_name]}
    np.testing.assert_array_equal(clip.target, [float(name in labels) for name in spec.labels])
    # The audio really holds the events: energy inside an event is far above the background between events.
    audio, sr = sf.read(clip.path, dtype="float32")
    event = written[clip.file_name][0]
    inside = audio[int(event["start"] * sr / 1000) + 2000:int(event["end"] * sr / 1000) - 2000]
    assert sr == 48000 and len(audio) == 4 * sr
    quiet = np.ones(len(audio), bool)
    for e in written[clip.file_name]:
        quiet[int(e["start"] * sr / 1000) - 500:int(e["end"] * sr / 1000) + 500] = False
    assert np.sqrt(np.mean(inside ** 2)) > 3 * np.sqrt(np.mean(audio[quiet] ** 2))


def _event_folder(root: Path, split_mode: str, splits: dict[str, dict], extra: dict | None = None,
                  prediction_type: str = "multilabel", embedding_type: str = "event") -> Path:
    root.mkdir(parents=True)
    meta = {"task_name": "tiny_events", "version": "hear2021", "embedding_type": embedding_type,
            "prediction_type": prediction_type, "split_mode": split_mode, "sample_duration": 1.0,
            "evaluation": ["event_onset_50ms_fms"], **(extra or {})}
    (root / "task_metadata.json").write_text(json.dumps(meta))
    (root / "labelvocabulary.csv").write_text("idx,label\n0,dog\n1,cat\n")
    for split, files in splits.items():
        (root / f"{split}.json").write_text(json.dumps(files))
        for name in files:
            (root / "48000" / split).mkdir(parents=True, exist_ok=True)
            sf.write(root / "48000" / split / name, np.zeros(48000, np.float32), 48000)
    return root


def _files(prefix: str) -> dict:
    return {f"{prefix}a.wav": [{"label": "dog", "start": 100, "end": 300.5}], f"{prefix}b.wav": []}


@pytest.mark.parametrize(("mode", "extra", "names"), [
    ("trainvaltest", {}, ("train", "valid", "test")),
    ("new_split_kfold", {"nfolds": 3, "splits": ["fold02", "fold00", "fold01"]}, ("fold00", "fold01", "fold02")),
    ("presplit_kfold", {"nfolds": 3}, ("fold00", "fold01", "fold02")),
])
def test_split_modes_load(tmp_path: Path, mode: str, extra: dict, names: tuple[str, ...]) -> None:
    root = _event_folder(tmp_path / mode, mode, {n: _files(n) for n in names}, extra)
    task = get_task("hear:tiny_events", root)
    assert task.spec.splits == names
    assert task.spec.protocol == ("train_valid_test" if mode == "trainvaltest" else "folds")
    assert task.spec.main_metric == "event_onset_50ms_fms"
    events = task.reference_events(names[0])
    assert events == {f"{names[0]}a.wav": [{"label": "dog", "start": 100.0, "end": 300.5}], f"{names[0]}b.wav": []}
    # The same modes load scene tasks.
    scene = {n: {f"{n}a.wav": ["dog"], f"{n}b.wav": ["cat", "dog"]} for n in names}
    scene_task = get_task("hear", _event_folder(tmp_path / f"{mode}-scene", mode, scene,
                                                {**extra, "evaluation": ["mAP"]}, embedding_type="scene"))
    assert (scene_task.spec.splits, scene_task.spec.embedding_type, scene_task.spec.main_metric) == (
        names, "scene", "map")


def test_event_folder_errors(tmp_path: Path) -> None:
    good = {"train": _files("t"), "valid": _files("v"), "test": _files("s")}
    with pytest.raises(UnsupportedTaskError, match="unknown split_mode 'folds'"):
        get_task("hear", _event_folder(tmp_path / "m", "folds", good))
    with pytest.raises(DatasetLayoutError, match="'nfolds' is 4 but 'splits' lists 3"):
        get_task("hear", _event_folder(tmp_path / "n", "new_split_kfold", {f"fold0{i}": _files(str(i)) for i in range(3)},
                                       {"nfolds": 4, "splits": ["fold00", "fold01", "fold02"]}))
    with pytest.raises(UnsupportedTaskError, match="only 'multilabel'"):
        get_task("hear", _event_folder(tmp_path / "c", "trainvaltest", good, prediction_type="multiclass"))
    with pytest.raises(UnsupportedTaskError, match="top1_acc"):
        get_task("hear", _event_folder(tmp_path / "e", "trainvaltest", good, {"evaluation": ["top1_acc"]}))
    for name, bad, match in [
        ("l", {"x.wav": ["dog"]}, r"event 0 of 'x.wav' must be an object with 'label', 'start' and 'end'"),
        ("u", {"x.wav": [{"label": "cow", "start": 0, "end": 1}]}, "label 'cow' is not in labelvocabulary.csv"),
        ("o", {"x.wav": [{"label": "dog", "start": 5, "end": 1}]}, "needs 0 <= start <= end"),
        ("s", {"x.wav": [{"label": "dog", "start": "soon", "end": 1}]}, "must be numbers"),
    ]:
        with pytest.raises(DatasetLayoutError, match=match):
            get_task("hear", _event_folder(tmp_path / name, "trainvaltest", {**good, "test": bad}))


# --------------------------------------------------------------------------------------------------------
# frames and events


def test_frame_labels_follow_heareval_interval_rule() -> None:
    t = np.array([50.0, 100.0, 150.0, 200.0, 200.00005, 200.0002, 250.0])
    y = frame_labels([{"label": "cat", "start": 100, "end": 200}], t, {"dog": 0, "cat": 1})
    np.testing.assert_array_equal(y[:, 1], [0, 1, 1, 1, 1, 0, 0])
    assert y[:, 0].sum() == 0 and y.dtype == np.float32


def test_events_from_frames_filters_and_round_trips() -> None:
    t = np.arange(40) * 50.0
    events = [{"label": "dog", "start": 100.0, "end": 600.0}, {"label": "cat", "start": 1000.0, "end": 1500.0}]
    probs = frame_labels(events, t, {"dog": 0, "cat": 1})
    assert events_from_frames(probs, t, ["dog", "cat"], median_filter_ms=0, min_duration=0) == events
    noisy = probs.copy()
    noisy[20, 0] = 0.9  # a one-frame blip: the 250 ms median filter (5 frames) removes it
    noisy[30:32, 0] = 0.8  # a 50 ms run: shorter than the minimum duration
    assert events_from_frames(noisy, t, ["dog", "cat"], median_filter_ms=250, min_duration=125) == events
    kept = events_from_frames(noisy, t, ["dog", "cat"], median_filter_ms=0, min_duration=0)
    assert {"label": "dog", "start": 1000.0, "end": 1000.0} in kept and len(kept) == 4
    assert postprocessing_points({"min_duration": [125, 250], "median_filter_ms": [250]}) == [
        (("median_filter_ms", 250), ("min_duration", 125)), (("median_filter_ms", 250), ("min_duration", 250))]


def test_perfect_prediction_scores_one_and_a_shift_beyond_the_collar_zero(events_root: Path) -> None:
    task = get_task("hear", events_root)
    ref = task.reference_events("test")
    labels = task.spec.labels
    perfect = score_events(ref, ref, labels, ["event_onset_200ms_fms", "event_onset_50ms_fms", "segment_1s_er"])
    assert perfect["event_onset_200ms_fms"] == 1.0 and perfect["event_onset_50ms_fms"] == 1.0
    assert perfect["segment_1s_er"] == 0.0
    assert onset_f_measure(ref, ref, 0.2)[0] == 1.0
    for shift in (250.0, -250.0):
        assert score_events(_shift(ref, shift), ref, labels, ["event_onset_200ms_fms"])["event_onset_200ms_fms"] == 0
        assert onset_f_measure(_shift(ref, shift), ref, 0.2)[0] == 0.0
    inside = _shift(ref, 150.0)  # inside the 200 ms collar, outside the 50 ms one
    assert sed_eval_score("event_onset_200ms_fms", inside, ref, labels)["f_measure"] == 1.0
    assert sed_eval_score("event_onset_50ms_fms", inside, ref, labels)["f_measure"] == 0.0


def _random_events(rng: np.random.Generator, files: int, labels: list[str]) -> tuple[dict, dict]:
    ref, est = {}, {}
    for f in range(files):
        name = f"f{f}.wav"
        # onsets on a 50 ms grid: many reference/estimate pairs lie exactly on the collar
        onsets = rng.integers(0, 200, size=int(rng.integers(0, 12))) * 50.0
        ref[name] = [{"label": str(rng.choice(labels)), "start": float(o), "end": float(o + rng.integers(1, 20) * 50)}
                     for o in onsets]
        est[name] = []
        for e in ref[name]:
            if rng.random() < 0.8:
                start = e["start"] + float(rng.choice([-250, -200, -100, -50, 0, 50, 150, 200, 250]))
                label = e["label"] if rng.random() < 0.85 else str(rng.choice(labels))
                est[name].append({"label": label, "start": start, "end": start + 100.0})
        for _ in range(int(rng.integers(0, 4))):
            start = float(rng.integers(0, 200) * 50 + rng.uniform(-30, 30))
            est[name].append({"label": str(rng.choice(labels)), "start": start, "end": start + 75.0})
    return ref, est


@pytest.mark.parametrize("seed", range(6))
def test_own_onset_f_measure_equals_sed_eval(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = ["a", "b", "c"]
    ref, est = _random_events(rng, files=5, labels=labels)
    for name, collar in (("event_onset_200ms_fms", 0.2), ("event_onset_50ms_fms", 0.05)):
        theirs = sed_eval_score(name, est, ref, labels)
        ours = onset_f_measure(est, ref, collar)
        np.testing.assert_allclose(ours, (theirs["f_measure"], theirs["precision"], theirs["recall"]), rtol=0,
                                   atol=1e-12)
    assert EVENT_SCORES["event_onset_200ms_fms"].params["t_collar"] == 0.2


def test_no_estimated_events_is_nan_as_in_sed_eval() -> None:
    ref = {"x.wav": [{"label": "a", "start": 0.0, "end": 100.0}]}
    empty = {"x.wav": []}
    assert math.isnan(sed_eval_score("event_onset_200ms_fms", empty, ref, ["a"])["f_measure"])
    assert math.isnan(onset_f_measure(empty, ref, 0.2)[0])


def test_per_task_probe_settings_and_postprocessing_grid() -> None:
    hear = MLP_PRESETS["hear"]
    assert event_probe_config(hear, "dcase2016_task2", {}).check_val_every_n_epoch == 10
    maestro = {"evaluation_params": {"event_postprocessing_grid": {"median_filter_ms": [150], "min_duration": [50]},
                                     "task_specific_param_grid": {"max_epochs": [50], "check_val_every_n_epoch": [1]}}}
    cfg = event_probe_config(hear, "maestro", maestro)
    assert (cfg.max_epochs, cfg.check_val_every_n_epoch, cfg.lr) == (50, 1, hear.lr)
    assert postprocessing_grid(maestro) == {"median_filter_ms": (150.0,), "min_duration": (50.0,)}
    assert postprocessing_grid({}) == {"median_filter_ms": (250,), "min_duration": (125, 250)}
    with pytest.raises(ValueError, match="'hidden_norm' is not a probe setting"):
        event_probe_config(hear, "x", {"evaluation_params": {"task_specific_param_grid": {"hidden_norm": ["x"]}}})


# --------------------------------------------------------------------------------------------------------
# timestamp embeddings and their cache


class _CountingEmbedder:
    """A HEAR-like model with its own timestamp API: per 50 ms, the RMS of the audio around the timestamp."""

    name = "counting"
    sample_rate = 32000

    def __init__(self) -> None:
        self.calls = 0

    def describe(self) -> dict:
        return {"kind": "test", "version": 1}

    def timestamp_embeddings(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        hop = self.sample_rate // 20
        count = audio.shape[1] // hop + 1
        padded = torch.nn.functional.pad(audio, (hop // 2, hop * 2))
        frames = torch.stack([padded[:, k * hop:k * hop + hop] for k in range(count)], dim=1)
        emb = torch.stack([frames.pow(2).mean(-1).sqrt(), frames.abs().amax(-1)], dim=-1)
        return emb, (torch.arange(count) * 50.0).expand(audio.shape[0], -1)


def test_timestamp_cache_is_resumable(events_root: Path, tmp_path: Path) -> None:
    task = get_task("hear", events_root)
    embedder = _CountingEmbedder()
    cache = TimestampCache(tmp_path, shard_size=4, batch_size=2)
    first = {s: cache.get(embedder, task, s) for s in task.spec.splits}
    assert [first[s].computed_shards for s in task.spec.splits] == [3, 2, 2]
    assert first["train"].x.shape == (12 * 81, 2) and np.diff(first["train"].offsets).tolist() == [81] * 12
    np.testing.assert_array_equal(first["test"].timestamps[:3], [0.0, 50.0, 100.0])
    calls = embedder.calls
    again = cache.get(embedder, task, "train")
    assert (embedder.calls, again.computed_shards, again.cached_shards) == (calls, 0, 3)
    shards = sorted(Path(again.location).glob("shard-*.npz"))
    shards[1].unlink()  # a run killed before this shard: only it is computed again
    shards[2].write_bytes(b"damaged")
    resumed = cache.get(embedder, task, "train")
    assert (resumed.computed_shards, resumed.cached_shards) == (2, 1)
    np.testing.assert_array_equal(resumed.x, first["train"].x)
    assert resumed.clip_ids == first["train"].clip_ids == [c.clip_id for c in task.clips("train")]
    # Another recipe (the log-mel baseline) is kept apart.
    assert cache.split_dir(LogMelBaseline(), task, "train") != cache.split_dir(embedder, task, "train")


def test_logmel_timestamp_embeddings_shape() -> None:
    emb, times = timestamp_embed(LogMelBaseline(), torch.zeros(2, 32000 * 2))
    assert emb.shape == (2, 41, 256) and times.shape == (2, 41) and float(times[0, -1]) == 2000.0


def test_frame_split_labels_come_from_the_events(events_root: Path, tmp_path: Path) -> None:
    task = get_task("hear", events_root)
    ts = TimestampCache(tmp_path).get(_CountingEmbedder(), task, "valid")
    names = [c.file_name for c in task.clips("valid")]
    frames = FrameSplit.build(ts.x, ts.timestamps, ts.offsets, names, task.reference_events("valid"), task.spec.labels)
    # the frame labels, read back as events (no post-processing), give every reference onset within 50 ms
    predicted = frames.predict_events(frames.y, task.spec.labels, (("median_filter_ms", 0), ("min_duration", 0)))
    assert onset_f_measure(predicted, task.reference_events("valid"), 0.05)[0] == 1.0


def test_validation_score_is_nan_when_no_event_is_predicted(events_root: Path, tmp_path: Path) -> None:
    # heareval picks the post-processing with nan counted as 0 but logs the chosen point's own score; a nan there
    # ends its run (EarlyStopping check_finite), so the probe must see the nan too.
    from hear_dymn.bench.events import _best_point, postprocessing_points, DEFAULT_POSTPROCESSING_GRID
    task = get_task("hear", events_root)
    ts = TimestampCache(tmp_path).get(_CountingEmbedder(), task, "valid")
    names = [c.file_name for c in task.clips("valid")]
    frames = FrameSplit.build(ts.x, ts.timestamps, ts.offsets, names, task.reference_events("valid"), task.spec.labels)
    points = postprocessing_points(DEFAULT_POSTPROCESSING_GRID)
    value, _ = _best_point(frames, np.zeros_like(frames.y, dtype=np.float32), task.spec.labels, points,
                           "event_onset_200ms_fms")
    assert np.isnan(value)
    value, _ = _best_point(frames, frames.y.astype(np.float32), task.spec.labels, points, "event_onset_200ms_fms")
    assert value > 0.9


# --------------------------------------------------------------------------------------------------------
# the suite


def test_suite_event_rows_rescore_from_saved_events(events_root: Path, tmp_path: Path) -> None:
    cfg = suite_config("quick", models=("logmel",), tasks=("hear",), protocols=("linear", "mlp"), seeds=(0, 1),
                       data={"hear": str(events_root)}, out_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "c"))
    rows = [r for r in run_suite(cfg, progress=False)["rows"] if r["source"] == "measured"]
    assert [(r["protocol"], r["metric"]) for r in rows] == [("mlp", "event_onset_200ms_fms"), ("mlp", "segment_1s_er")]
    onset, er = rows
    assert onset["mean"] > 0.5 and er["mean"] < 0.5  # learnable: distinct timbres in quiet noise
    assert onset["config"]["selection_metric"] == "event_onset_200ms_fms"
    task = get_task("hear", events_root)
    folder = tmp_path / "out" / "results" / "logmel" / "mlp" / "hear_mini_events"
    values = {m: [] for m in ("event_onset_200ms_fms", "segment_1s_er")}
    for seed in (0, 1):
        path = folder / f"test_seed{seed}.events.json"
        saved = read_events(path)
        assert sorted(saved) == sorted(task.reference_events("test"))
        assert all(set(e) == {"label", "start", "end"} for evs in saved.values() for e in evs)
        scores = rescore(path, task, "test")
        for metric in values:
            values[metric].append(scores[metric])
            assert onset["runs"][f"test_seed{seed}"]["scores"][metric] == scores[metric]
    assert float(np.mean(values["event_onset_200ms_fms"])) == onset["mean"]
    assert float(np.mean(values["segment_1s_er"])) == er["mean"]
    board = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "onset F1 200ms ↑" in board and "segment ER 1s ↓" in board


def test_event_tasks_need_the_mlp_protocol(events_root: Path, tmp_path: Path) -> None:
    cfg = suite_config("quick", models=("logmel",), tasks=("hear",), protocols=("linear",),
                       data={"hear": str(events_root)}, out_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="run under the mlp protocol only"):
        run_suite(cfg, progress=False)
