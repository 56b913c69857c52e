"""The suite's command line: one-line errors, defaults in --help, output folders, and the thread budget."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hear_dymn import threads
from hear_dymn.bench.run_folder import MANIFEST, read_manifest, write_run
from hear_dymn.bench.suite import is_default_quick, output_folder, run_name, suite_config

ROOT = Path(__file__).resolve().parents[1]


def load_cli():
    spec = importlib.util.spec_from_file_location("run_suite_cli", ROOT / "eval" / "run_suite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def cli(monkeypatch):
    threads_before = torch.get_num_threads()
    yield load_cli()
    torch.set_num_threads(threads_before)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "esc5O"], "error: unknown task 'esc5O'; did you mean 'esc50', 'esc10'?"),
    (["--protocols", "probe"], "error: unknown protocol(s) 'probe'; protocols: linear, mlp, finetune"),
    (["--threads", "0"], "error: --threads must be at least 1, got 0"),
    (["--data", "esc50"], "error: --data expects TASK=PATH, got 'esc50'"),
    (["--suite", "paper", "--tasks", "esc50"], "error: suite 'paper' needs --data esc50=PATH"),
])
def test_user_errors_are_one_line_with_exit_code_2(cli, capsys, tmp_path, monkeypatch, argv, message) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main([*argv, "--quiet", "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message), err
    assert "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "reports").exists()  # refused before writing anything


def test_help_shows_defaults_and_every_mlp_preset(cli, capsys) -> None:
    with pytest.raises(SystemExit):
        cli.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "hear_full" in text
    assert "(default: dymn04 dymn10 mn10 logmel; paper suite: dymn04_as" in text
    assert "(default: 0 1; paper suite: 0 1 2)" in text
    assert "(default: quick; paper suite: hear)" in text


def test_data_without_tasks_runs_only_those_tasks(cli) -> None:
    cfg = cli.config_from_args(cli.parse_args(["--data", "openmic=/data/openmic"]))
    assert cfg.tasks == ("openmic",) and cfg.data == {"openmic": "/data/openmic"}
    cfg = cli.config_from_args(cli.parse_args(["--data", "hear=/data/task", "--tasks", "hear"]))
    assert cfg.tasks == ("hear",)


def test_only_the_default_quick_suite_writes_the_example_report() -> None:
    default = suite_config("quick")
    assert is_default_quick(default) and output_folder(default) == Path("reports")
    assert output_folder(suite_config("quick", cache_dir="/elsewhere", backend="ray")) == Path("reports")
    custom = suite_config("quick", models=("dymn04", "ckpt/dymn10_as.pt", "logmel"), tasks=("esc50",),
                          protocols=("linear",))
    assert output_folder(custom) == Path("reports/runs/quick-dymn04+dymn10_as+logmel-esc50-linear")
    seeded = suite_config("quick", models=("logmel",), tasks=("esc50",), protocols=("linear",), seeds=(3,))
    assert run_name(seeded).startswith("quick-logmel-esc50-linear-") and run_name(seeded) == run_name(seeded)
    assert run_name(seeded) != run_name(suite_config("quick", models=("logmel",), tasks=("esc50",),
                                                     protocols=("linear",), seeds=(4,)))
    assert output_folder(suite_config("quick", seeds=(0,))) != Path("reports")
    assert output_folder(suite_config("quick", out_dir="mine")) == Path("mine")
    assert output_folder(suite_config("quick", run_name="ablation")) == Path("reports/runs/ablation")
    with pytest.raises(ValueError, match="run name '../x'"):
        run_name(suite_config("quick", run_name="../x"))


def test_custom_run_keeps_the_example_report_and_leaves_no_stale_files(cli, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    # the committed example and another tool's report, as the default quick suite and the benchmark leave them
    write_run("reports", "run_suite", {"leaderboard.md": "example", "plots/esc50-accuracy_bars.png": b"png"})
    write_run("reports/performance", "benchmark", {"performance.md": "perf"})
    example = snapshot(tmp_path / "reports")
    common = ["--models", "logmel", "--tasks", "esc50", "--seeds", "0", "--cache-dir", "cache", "--quiet",
              "--run-name", "mine", "--threads", "1"]
    assert cli.main([*common, "--protocols", "linear"]) == 0
    run = tmp_path / "reports" / "runs" / "mine"
    assert f"wrote {Path('reports/runs/mine')}/" in capsys.readouterr().out
    assert (run / "results" / "logmel" / "linear" / "esc50.json").is_file()
    # the same folder again with another protocol: only the second run's files are there
    assert cli.main([*common, "--protocols", "mlp"]) == 0
    files = snapshot(run)
    assert not any("/linear/" in f for f in files) and any("/mlp/" in f for f in files)
    assert sorted(files) == sorted([MANIFEST, *read_manifest(run)["files"]])
    assert {k: v for k, v in snapshot(tmp_path / "reports").items() if not k.startswith("runs/")} == example
    # the thread budget was applied and recorded
    leaderboard = (run / "leaderboard.md").read_text()
    assert "1 torch thread(s) of" in leaderboard and "(--threads)" in leaderboard
    assert "OMP_WAIT_POLICY=" in leaderboard


def test_thread_budget_follows_affinity_workers_and_overrides(monkeypatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.delenv(threads.ENV_THREADS, raising=False)
    assert threads.decide().intra_op == 4 and threads.decide().source == "default"
    assert threads.decide(workers=3).intra_op == 1 and threads.decide(workers=8).intra_op == 1
    monkeypatch.setenv(threads.ENV_THREADS, "2")
    assert (threads.decide().intra_op, threads.decide().source) == (2, threads.ENV_THREADS)
    assert threads.decide(3).intra_op == 3  # the flag wins over the variable
    monkeypatch.setenv(threads.ENV_THREADS, "many")
    with pytest.raises(ValueError, match="HEAR_DYMN_THREADS must be a whole number of threads, got 'many'"):
        threads.decide()
    before = torch.get_num_threads()
    try:
        budget = threads.apply(1)
        assert torch.get_num_threads() == 1 and budget.describe().startswith("1 torch thread(s) of 4")
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("preset, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_importing_the_package_sets_the_wait_policy_before_torch(preset, expected) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    code = "import os, sys, hear_dymn; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         timeout=120, cwd=ROOT).stdout.split()
    assert out == [expected, "True"]


def _release_folder(root: Path) -> Path:
    """Two HEAR scene tasks as the public release unpacks: tasks/<task>/ with a 48000/ audio folder only."""
    import shutil

    from hear_dymn.bench.tasks.synthetic import write_miniature

    write_miniature("hear", root / "tasks" / "mini_scene-v1.0.0-mini", seed=0, clips_per_class=6)
    shutil.rmtree(root / "tasks" / "mini_scene-v1.0.0-mini" / "16000")
    kfold = write_miniature("hear_kfold", root / "tasks" / "mini_scene_kfold-v1.0.0-mini", seed=0, clips_per_class=5)
    (kfold / "32000").rename(kfold / "48000")  # rates are not checked against the folder name's claim
    return root


@pytest.mark.slow  # two tasks x two models end to end through the command line
def test_a_folder_of_hear_tasks_runs_every_task_with_a_hear_module(cli, tmp_path, monkeypatch, capsys) -> None:
    import json

    monkeypatch.syspath_prepend(str(ROOT / "tests" / "hear_modules"))
    data = _release_folder(tmp_path / "hear2021")
    argv = ["--models", "hear:tiny_hear", "logmel", "--hear-options", 'tiny_hear={"size": 6}',
            "--data", f"hear={data}", "--protocols", "linear", "--seeds", "0", "--quiet",
            "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(tmp_path / "out")]
    assert cli.main(argv) == 0
    table = list(__import__("csv").DictReader((tmp_path / "out" / "leaderboard.csv").open()))
    measured = {(r["model"], r["task"]) for r in table if r["source"] == "measured"}
    assert measured == {(m, t) for m in ("tiny_hear", "logmel") for t in ("hear:mini_scene", "hear:mini_scene_kfold")}
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert 'HEAR module `tiny_hear` version 0.1.0, 16000 Hz; options {"size": 6}' in md
    assert "mini_scene_kfold-v1.0.0-mini" in md  # each task's own folder in the provenance
    row = json.loads((tmp_path / "out" / "results" / "tiny_hear" / "linear" / "hear_mini_scene_kfold.json").read_text())
    assert len(row["per_split"]) == 5 and row["hear_scores"]["top1_acc"] == pytest.approx(row["mean"])
    # options for a module that does not run, and an event task among the folders: one clear line each
    assert cli.main([*argv[:3], "--hear-options", 'other.mod={"a": 1}', *argv[5:]]) == 2
    assert "error: --hear-options given for other.mod, which is not among the models" in capsys.readouterr().err


def test_hear_folder_discovery_finds_scene_and_event_tasks(cli, tmp_path, capsys) -> None:
    import json
    import shutil

    from hear_dymn.bench.suite import _load_tasks

    data = _release_folder(tmp_path / "hear2021")
    event = data / "tasks" / "mini_event-v1.0.0-mini"
    shutil.copytree(data / "tasks" / "mini_scene-v1.0.0-mini", event)
    meta = json.loads((event / "task_metadata.json").read_text())
    meta.update(task_name="mini_event", embedding_type="event", prediction_type="multilabel",
                evaluation=["event_onset_200ms_fms", "segment_1s_er"])
    (event / "task_metadata.json").write_text(json.dumps(meta))
    for split in ("train", "valid", "test"):
        entries = json.loads((event / f"{split}.json").read_text())
        (event / f"{split}.json").write_text(json.dumps(
            {f: [{"label": labels[0], "start": 100.0, "end": 600.0}] for f, labels in entries.items()}))
    roots = {"hear": str(data)}
    tasks = _load_tasks(("hear",), roots)
    assert list(tasks) == ["hear:mini_event", "hear:mini_scene", "hear:mini_scene_kfold"]
    assert tasks["hear:mini_event"].spec.embedding_type == "event"
    assert roots == {"hear:mini_event": str(event), "hear:mini_scene": str(data / "tasks" / "mini_scene-v1.0.0-mini"),
                     "hear:mini_scene_kfold": str(data / "tasks" / "mini_scene_kfold-v1.0.0-mini")}
    # one task folder given directly is that task alone; two folders of one task name are refused
    assert list(_load_tasks(("hear",), {"hear": str(event)})) == ["hear"]
    shutil.copytree(event, data / "tasks" / "mini_event-v1.0.0-5h")
    with pytest.raises(ValueError, match="are both task 'hear:mini_event'"):
        _load_tasks(("hear",), {"hear": str(data)})
    argv = ["--models", "logmel", "--data", f"hear={tmp_path}/nothing", "--protocols", "linear", "--quiet",
            "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(tmp_path / "out")]
    assert cli.main(argv) == 2
    assert "no HEAR task folder found" in capsys.readouterr().err
