"""tools/benchmark.py --task motion at a tiny scale: every arm pretrains, every backbone is
evaluated, and the table reports finite metrics. Which method wins is the benchmark's output,
never asserted here."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from unittest import mock

import pytest

from fima.benchmark.motion import (
    ARMS,
    BENCHMARK_CONFIGS,
    DIAGNOSTICS,
    METRICS,
    RANDOM,
    Arm,
    BenchmarkResult,
    RunFailedError,
    chance_top1,
    cpu_sharing,
    data_check,
    main,
    markdown_table,
    paired_differences,
    run_motion_benchmark,
    run_precision,
)
from fima.evaluation.results import sha256_of
from fima.utils.env import (
    describe_cpu_model,
    processes_per_cpus,
    threads_per_process,
    user_threads,
)

from .independent_motion import MOTIONS, make_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The model, input, budget and evaluation of a tiny benchmark; then a tiny SyntheticMotion.
TINY_RUN = [
    "MODEL.TINY3D.WIDTHS", "(8,16,16,32)", "MODEL.PROJECTOR.HIDDEN_DIM", "32",
    "MODEL.PROJECTOR.OUT_DIM", "16", "MODEL.MOCO.QUEUE_SIZE", "16",
    "MODEL.FIMA.MOTION_QUEUE_SIZE", "32", "MODEL.MOTION_DECODER.DIM", "16",
    "MODEL.MOTION_DECODER.FFN_DIM", "16", "INPUT.NUM_FRAMES", "8", "INPUT.CROP_SIZE", "32",
    "DATA.NUM_WORKERS", "0",
    "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "3",
    "TEST.NUM_CLIPS", "2", "TEST.IMS_PER_BATCH", "4",
]  # fmt: skip
TINY = TINY_RUN + [
    "DATA.SYNTHETIC.CLASSES", "('SlideHorizontal','SlideUp','Circle')",
    "DATA.SYNTHETIC.VIDEOS_PER_CLASS", "6", "DATA.SYNTHETIC.TEST_GROUPS", "2",
    "DATA.SYNTHETIC.NUM_FRAMES", "24", "DATA.SYNTHETIC.HEIGHT", "40", "DATA.SYNTHETIC.WIDTH", "48",
]  # fmt: skip


def assert_metrics_in_range(result, names: list[str]) -> None:
    """Every name has every metric and diagnostic for seed 0, finite and in range ([0, 100],
    a cosine similarity in [-1, 1])."""
    assert sorted(result.metrics) == sorted(names)
    for name in names:
        values = result.metrics[name][0]
        assert set(values) == set(METRICS + DIAGNOSTICS)
        for metric, value in values.items():
            low = -1.0 if metric.endswith("similarity") else 0.0
            high = 1.0 if metric.endswith("similarity") else 100.0
            assert math.isfinite(value) and low <= value <= high, (name, metric, value)


@pytest.mark.slow
def test_tiny_motion_benchmark_reports_every_arm(tmp_path, capsys) -> None:
    out = tmp_path / "bench"
    result = main(["--output-dir", str(out), "--seeds", "0", *TINY])
    names = [arm.name for arm in ARMS] + [RANDOM]
    assert_metrics_in_range(result, names)
    table = (out / "results.md").read_text()
    for name in names:
        assert f"| {name} |" in table
    assert "tools/benchmark.py --task motion" in table
    assert "| Static top-1 (%) | Frozen similarity | seeds |" in table
    # 3 classes, 2 test videos each (TINY): chance and the test split's size are the data's.
    assert "chance 33.3% (standard error 19.2 at 6 test videos)" in table
    assert "Paired by seed (linear probe top-1, first - second, points):" in table
    assert "Paired by seed (R@1, first - second, points):" in table
    assert table.count("- FIMA > MoCo > Random init: on ") == 2
    # Without --jobs, one run per CPU (2 at a time on a 2-core CI machine), said in the table.
    assert result.cpu_sharing == cpu_sharing(min(processes_per_cpus(), len(names)))
    assert f"; runs {result.cpu_sharing}" in table
    # The table names the CPU and what the runs computed in: fp32 and bf16 runs of one seed
    # give different figures, and hosts of one CPU model expose different extensions.
    assert f"- Machine: {describe_cpu_model()}, " in table
    assert result.precision in (
        "bfloat16 autocast",
        "float32 (bfloat16 would be emulated on this cpu)",
    )
    assert f"- Precision: {result.precision}\n" in table
    assert json.loads((out / "results.json").read_text())["metrics"].keys() == set(names)
    assert "| MoCo |" in capsys.readouterr().out

    # An interrupted or repeated benchmark reuses what it has: no run starts again.
    runs_log = (out / "runs.log").read_text()
    again = main(["--output-dir", str(out), "--seeds", "0", *TINY])
    assert again.metrics == result.metrics and again.seconds == {}
    # Every pretraining (5 arms) and evaluation (5 arms + random init) folder is reused and said so.
    assert result.reused == [] and len(again.reused) == 2 * len(ARMS) + 1
    report = (out / "results.md").read_text()
    assert f"{len(again.reused)} runs found done on disk were reused" in report
    # The CPU sharing stated is this invocation's, which the reused runs may not have had.
    assert "(the reused runs as the invocation that ran them did" in report
    assert (out / "runs.log").read_text() == runs_log
    assert os.path.isfile(out / "fima_seed0" / "model_final.pth")

    # Another config (here another budget) in the same folder: neither reused nor overwritten.
    checkpoint = out / "moco_seed0" / "model_final.pth"
    before = checkpoint.read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main(["--output-dir", str(out), "--seeds", "0", *TINY, "SOLVER.MAX_ITER", "4"])
    assert stopped.value.code == 2 and "holds a run of another config" in capsys.readouterr().err
    assert checkpoint.read_bytes() == before
    assert (out / "runs.log").read_text() == runs_log

    # A pretraining run again (its folder moved away) is evaluated again, not read from the
    # evaluation of its former checkpoint; the other runs are reused.
    os.rename(out / "moco_seed0", tmp_path / "moco_seed0_before")
    relative = os.path.relpath(out, os.getcwd())  # the runs see it from where the user stands
    rerun = main(["--output-dir", relative, "--seeds", "0", *TINY])
    record = json.loads((out / "eval_moco_seed0" / "results.json").read_text())
    assert record["checkpoint_sha256"] == sha256_of(str(out / "moco_seed0" / "model_final.pth"))
    assert len(rerun.reused) == 2 * len(ARMS) - 1 and list(rerun.seconds) == ["MoCo seed 0"]


@pytest.mark.slow
def test_motion_benchmark_runs_on_a_video_list_of_other_videos(tmp_path) -> None:
    """A dataset built without fima's generator (H.264 files listed in train.csv / test.csv)
    goes through the same benchmark as a user's own videos would: DATA.DATASET VideoList."""
    root = tmp_path / "videos"
    make_dataset(str(root), train_per_class=3, test_per_class=2, height=40, width=48, frames=24)
    with pytest.raises(FileExistsError):  # a second dataset never overwrites the first
        make_dataset(str(root), train_per_class=1, test_per_class=1)
    arms = [arm for arm in ARMS if arm.name in ("MoCo", "Supervised (labels)")]
    opts = [*TINY_RUN, "DATA.DATASET", "VideoList", "DATA.ROOT", str(root)]
    # Two runs at a time, each on its share of the CPUs, each run's output whole in runs.log.
    result = run_motion_benchmark(str(tmp_path / "bench"), [0], opts, arms=arms, jobs=2)
    assert_metrics_in_range(result, [RANDOM, *(arm.name for arm in arms)])
    assert list(result.seconds) == [f"{arm.name} seed 0" for arm in arms]
    log = (tmp_path / "bench" / "runs.log").read_text()
    threads = str(user_threads() or threads_per_process(2))
    starts = [line for line in log.splitlines() if "CPU threads" in line]
    assert len(starts) == 2 * len(arms) + 1 and all(
        f"; {threads} CPU threads;" in line for line in starts
    )
    assert not [
        name
        for name in os.listdir(tmp_path / "bench")
        if name.endswith(".log") and name != "runs.log"
    ]
    # Every listed video was read: 3 training and 2 test videos of each of the 5 motions.
    record = json.loads(
        (tmp_path / "bench" / "eval_random_init_seed0" / "results.json").read_text()
    )
    assert record["metrics"]["retrieval/num_train"] == 3 * len(MOTIONS)
    assert record["metrics"]["retrieval/num_queries"] == 2 * len(MOTIONS)
    # The folder rebuilt with other videos: the finished runs, which read the first ones, were
    # reused, and the table averaged two datasets.
    shutil.rmtree(root)
    make_dataset(str(root), train_per_class=2, test_per_class=2, height=40, width=48, frames=24)
    with pytest.raises(RuntimeError, match=r"differ from those its finished runs in .*train: 15 "):
        run_motion_benchmark(str(tmp_path / "bench"), [0], opts, arms=arms, jobs=2)
    assert (
        json.loads((tmp_path / "bench" / "eval_random_init_seed0" / "results.json").read_text())
        == record
    )  # nothing was run again or overwritten


@pytest.mark.slow
def test_a_failed_run_stops_the_benchmark_after_the_runs_under_way(tmp_path) -> None:
    """With 2 runs at a time, a run that fails is named, the run beside it finishes, and no
    further run starts."""
    # Weights that exist (so the config is valid) but are not a checkpoint: the run fails.
    (tmp_path / "weights.pth").write_text("not a checkpoint")
    broken = Arm("Broken", "moco_motion.yaml", ("MODEL.WEIGHTS", str(tmp_path / "weights.pth")))
    moco = next(arm for arm in ARMS if arm.name == "MoCo")
    out = tmp_path / "bench"
    with pytest.raises(RunFailedError, match="broken_seed0 failed"):
        run_motion_benchmark(str(out), [0], TINY, arms=[broken, moco], jobs=2)
    # The MoCo pretraining started beside the broken run and was let finish.
    assert (out / "moco_seed0" / "model_final.pth").is_file()
    # The random init's evaluation, queued behind the broken run, never started.
    assert not (out / "eval_random_init_seed0").exists()
    log = (out / "runs.log").read_text()
    assert "Cannot read checkpoint" in log
    assert [name for name in os.listdir(out) if name.endswith(".log")] == ["runs.log"]


def test_the_runs_precision_follows_the_machine_and_the_overrides() -> None:
    moco = os.path.join(BENCHMARK_CONFIGS, "moco_motion.yaml")
    assert run_precision(moco, ["SOLVER.AMP.ENABLED", "False"]) == "float32"
    for native, precision in (
        (True, "bfloat16 autocast"),
        (False, "float32 (bfloat16 would be emulated on this cpu)"),
    ):
        with mock.patch("fima.engine.train_loop.native_autocast", return_value=native):
            assert run_precision(moco, ["MODEL.DEVICE", "cpu"]) == precision


def test_cpu_sharing_says_how_many_runs_and_threads(monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert cpu_sharing(1) == "1 at a time, on every CPU"
    assert cpu_sharing(2) == "2 at a time, 2 thread(s) each"
    assert cpu_sharing(4) == "4 at a time, 1 thread(s) each"
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert cpu_sharing(1) == "1 at a time, on OMP_NUM_THREADS=2"
    assert cpu_sharing(2) == "2 at a time, OMP_NUM_THREADS=2 each"


def test_without_jobs_one_run_per_cpu_up_to_the_runs_that_can_go_at_once(
    tmp_path, monkeypatch
) -> None:
    import fima.benchmark.motion as motion

    asked = []

    def record(argv, log_file, threads=None, lock_fd=None):
        asked.append(threads)
        with open(log_file, "a") as log:
            log.write("not run\n")
        return 1, 0.0  # a failed run: the benchmark stops after the runs under way

    monkeypatch.setattr(motion, "_run", record)
    monkeypatch.setattr(motion, "_read_splits", lambda cfg: {})  # not the full-size data
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    # 64 CPUs, 1 seed: 6 runs can go at once (5 arms and the random init), ~10 threads each.
    with pytest.raises(SystemExit) as stopped:  # a failed run: one line, exit status 1
        main(["--output-dir", str(tmp_path / "one"), "--seeds", "0"])
    assert stopped.value.code == 1
    assert set(asked) == {10}
    assert "6 at a time, 10 thread(s) each" in (tmp_path / "one" / "log.txt").read_text()
    asked.clear()
    with pytest.raises(SystemExit):
        main(["--output-dir", str(tmp_path / "three"), "--seeds", "0", "--jobs", "3"])
    assert set(asked) == {21}
    # More than can go at once: as many as can, and the report says so (it said 10).
    asked.clear()
    with pytest.raises(SystemExit):
        main(["--output-dir", str(tmp_path / "ten"), "--seeds", "0", "--jobs", "10"])
    assert set(asked) == {10}
    assert "6 at a time, 10 thread(s) each" in (tmp_path / "ten" / "log.txt").read_text()


@pytest.mark.parametrize("seeds", ["0,0", "-1", "0,x"])
def test_seeds_must_be_distinct_and_not_negative(tmp_path, capsys, seeds: str) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--output-dir", str(tmp_path), "--seeds", seeds])
    assert stopped.value.code == 2 and "--seeds" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_bad_overrides_and_missing_data_stop_before_any_run(tmp_path, capsys, monkeypatch) -> None:
    import fima.benchmark.motion as motion

    monkeypatch.setattr(motion, "_run", mock.Mock(side_effect=AssertionError("a run started")))
    for opts, message in (
        (["NO.SUCH_KEY", "1"], "NO.SUCH_KEY"),
        (["DATA.DATASET", "VideoList", "DATA.ROOT", str(tmp_path)], "split 'train'"),
    ):
        with pytest.raises(SystemExit) as stopped:
            main(["--output-dir", str(tmp_path / "out"), "--seeds", "0", *TINY_RUN, *opts])
        assert stopped.value.code == 2 and message in capsys.readouterr().err
        if message == "NO.SUCH_KEY":  # refused before the output folder and its log are made
            assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_sigint_to_the_benchmark_alone_starts_no_more_runs(tmp_path) -> None:
    """kill -INT of the benchmark's process (not its group, as Ctrl-C) raised KeyboardInterrupt
    in the main thread while the pool started every remaining run, then a traceback."""
    out = tmp_path / "out"
    command = [
        sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "--task", "motion",
        "--output-dir", str(out), "--seeds", "0", "--jobs", "1", *TINY,
    ]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)

    def started() -> int:
        return sum((folder / "config.yaml").exists() for folder in out.glob("*seed0"))

    deadline = time.monotonic() + 120
    while started() < 1 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    at_signal = started()
    os.kill(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted; the same command continues it" in err and "Traceback" not in err
    assert at_signal >= 1 and started() <= at_signal + 1  # the run under way, at most
    assert not (out / "results.md").exists()


def test_a_second_benchmark_in_the_same_folder_is_refused_while_the_first_runs(tmp_path) -> None:
    from fima.benchmark.motion import _lock_output_dir

    with (
        _lock_output_dir(str(tmp_path)),
        pytest.raises(RuntimeError, match="Another motion benchmark, or a run it started"),
    ):
        _lock_output_dir(str(tmp_path))
    _lock_output_dir(str(tmp_path)).close()  # free again once the first lets go
    # Refused before it opens its log: its lines and traceback went into the first one's log.txt.
    (tmp_path / "log.txt").write_text("the running benchmark's log\n")
    with _lock_output_dir(str(tmp_path)), pytest.raises(SystemExit) as stopped:
        main(["--output-dir", str(tmp_path), "--seeds", "0", *TINY])
    assert stopped.value.code == 2
    assert (tmp_path / "log.txt").read_text() == "the running benchmark's log\n"


def _result(top1: dict[str, list[float]]) -> BenchmarkResult:
    result = BenchmarkResult()
    for name, values in top1.items():
        result.metrics[name] = {
            seed: {"linear_probe/top1": v, "retrieval/R@1": 0.0, "retrieval/R@5": 0.0}
            for seed, v in enumerate(values)
        }
    return result


def test_paired_differences_say_per_seed_which_method_is_ahead() -> None:
    result = _result(
        {
            RANDOM: [28.8, 25.0, 26.2],
            "MoCo": [26.0, 25.8, 30.8],
            "FIMA": [59.8, 47.6, 61.4],
            "FIMA w/o dense": [42.0, 32.4, 38.2],
        }
    )
    lines = paired_differences(result)
    assert lines[1] == "Paired by seed (linear probe top-1, first - second, points):"
    assert lines[3] == (
        "- FIMA - MoCo: +33.8, +21.8, +30.6 (mean +28.7 ± 6.2; FIMA ahead on 3 of 3 seeds)"
    )
    assert lines[4] == (
        "- MoCo - Random init: -2.8, +0.8, +4.6 (mean +0.9 ± 3.7; MoCo ahead on 2 of 3 seeds)"
    )
    assert any(line.startswith("- FIMA - FIMA w/o dense: +17.8") for line in lines)
    # An arm that was not run (here FIMA w/o local) is left out, not reported as missing data.
    assert not any("w/o local" in line for line in lines)
    # Seed 0 has MoCo below the random init: the claimed order holds on seeds 1 and 2 only.
    assert lines[-1] == "- FIMA > MoCo > Random init: on 2 of 3 seeds"


def _diagnosed(static: dict[str, list[float]], num_classes: int = 5, videos: int = 500):
    result = _result({name: [30.0] * len(values) for name, values in static.items()})
    for name, values in static.items():
        for seed, value in enumerate(values):
            result.metrics[name][seed].update(
                {DIAGNOSTICS[0]: value, DIAGNOSTICS[1]: 0.9 - 0.1 * seed}
            )
    result.chance, result.num_test_videos = 1 / num_classes, videos
    return result


def test_the_table_shows_the_diagnostics_when_every_evaluation_has_them() -> None:
    result = _diagnosed({RANDOM: [21.0, 23.0], "MoCo": [22.0, 20.0]})
    table = markdown_table(result, "python tools/benchmark.py --task motion", 60.0)
    assert "| Method | Linear probe top-1 (%) | R@1 (%) | R@5 (%) | Static top-1 (%) |" in table
    assert "| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n" in table
    assert "| MoCo | 30.0 ± 0.0 | 0.0 ± 0.0 | 0.0 ± 0.0 | 21.0 ± 1.4 | 0.850 ± 0.071 | 2 |" in table
    # An evaluation without them (TEST.EVALUATORS overridden): the columns are left out.
    del result.metrics["MoCo"][1][DIAGNOSTICS[0]]
    table = markdown_table(result, "python tools/benchmark.py --task motion", 60.0)
    assert "Static top-1" not in table and "Data check" not in table
    assert "| --- | ---: | ---: | ---: | ---: |\n" in table


def test_the_data_check_says_when_the_appearance_tells_the_class() -> None:
    # 5 classes, 500 test videos: chance 20%, standard error 1.8, so the limit is 27.2.
    (line,) = data_check(_diagnosed({RANDOM: [21.0, 23.0], "MoCo": [27.0, 20.0]}))
    assert "tells 20.0-27.0%, chance 20.0% (standard error 1.8 at 500 test videos)" in line
    assert line.endswith("no feature reads the class from the appearance")
    (line,) = data_check(_diagnosed({RANDOM: [21.0, 23.0], "MoCo": [27.5, 20.0]}))
    assert "**above 27.2, so the appearance tells part of the class**" in line
    # The supervised arm learns what a frame tells: it does not test the data.
    clean = {RANDOM: [21.0], "MoCo": [22.0], "Supervised (labels)": [45.0]}
    assert data_check(_diagnosed(clean))[0].endswith("from the appearance")
    # Fewer test videos, more noise: the same figure is within it.
    (line,) = data_check(_diagnosed({RANDOM: [21.0, 23.0], "MoCo": [27.5, 20.0]}, videos=100))
    assert line.endswith("from the appearance")
    assert data_check(_result({RANDOM: [21.0]})) == []


def test_chance_is_the_most_frequent_class_share() -> None:
    # Features that tell nothing reach the majority class's share, not 1 / classes, on a test
    # split of unequal classes: the data check must not call that a leak.
    assert chance_top1([0, 1, 2, 3, 4] * 10) == pytest.approx(0.2)
    assert chance_top1([0] * 6 + [1] * 2 + [2] * 2) == pytest.approx(0.6)
    assert chance_top1([]) == 0.0


def test_paired_differences_use_the_seeds_both_methods_have() -> None:
    result = _result({RANDOM: [20.0, 22.0], "MoCo": [25.0]})
    assert paired_differences(result)[-1] == (
        "- MoCo - Random init: +5.0 (mean +5.0; MoCo ahead on 1 of 1 seeds)"
    )
    assert paired_differences(_result({"MoCo": [25.0]})) == []
