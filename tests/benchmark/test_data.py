"""tools/benchmark.py --task data, as a user runs it: it makes its videos and reports figures."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_quick_data_benchmark_reports_every_figure(tmp_path) -> None:
    out = tmp_path / "figures.json"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "benchmark.py"),
            "--task",
            "data",
            "--quick",
            "--num-workers",
            "1",
            "--workdir",
            str(tmp_path / "work"),
            "--json",
            str(out),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for heading in (
        "keyframe every 1 s",
        "keyframe every 10 s",
        "Start-up: indexing 100 short videos",
        "Pretraining loader",
        "Resident memory over 40 decoded clips",
    ):
        assert heading in result.stdout
    figures = json.loads(out.read_text())["figures"]
    names = {(f["section"], f["name"]) for f in figures}
    assert len(names) == len(figures) > 25
    for figure in figures:
        assert math.isfinite(figure["value"]), figure
        if figure["unit"] in ("ms", "s", "clips/s", "x"):
            assert figure["value"] > 0, figure
    # The decoder's work, per keyframe interval: never fewer frames than the unavoidable ones.
    work = [f["value"] for f in figures if f["name"].startswith("frames decoded")]
    assert len(work) == 2 and min(work) >= 1.0
    # The kept workdir serves again, and a count given with --quick is the one used (the other
    # sections at their smallest: only the second run's start-up and counts are checked).
    smallest = ["--loader-batches", "1", "--windows", "1", "--rss-clips", "10", "--batch-size", "1"]
    again = subprocess.run(
        [*result.args[:-2], "--index-videos", "60", *smallest],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Start-up: indexing 60 short videos" in again.stdout


def test_a_kept_workdir_indexes_cold_on_every_first_start(tmp_path, monkeypatch) -> None:
    """The "first start" figures time an index built from the headers, also when --workdir
    keeps the cache files of an earlier run."""
    from fima.benchmark import data

    cold = []

    def recording_build_index(dataset, cache, **kwargs):
        cold.append(not os.path.exists(cache))
        return build_index(dataset, cache, **kwargs)

    build_index = data.build_index
    monkeypatch.setattr(data, "build_index", recording_build_index)
    for _ in range(2):
        data.indexing(str(tmp_path), num_videos=4)
    # Per run: the 1- and 8-thread first starts are cold, the start after them reads the cache.
    assert cold == [True, True, False, True, True, False]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("notes.md", "--json: {path} exists; pass --overwrite to replace it"),
        ("missing/d.json", "--json: folder {folder} does not exist"),
    ],
)
def test_a_json_file_that_cannot_be_written_is_refused_before_anything_runs(
    tmp_path, capsys, name: str, message: str
) -> None:
    """An existing file was replaced by the figures; a missing folder failed in a traceback
    after every section had run."""
    from fima.benchmark import data

    (tmp_path / "notes.md").write_text("the user's notes\n")
    path = tmp_path / name
    with pytest.raises(SystemExit) as stop:
        data.main(["--quick", "--workdir", str(tmp_path / "work"), "--json", str(path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message.format(path=path, folder=path.parent) in err
    assert (tmp_path / "notes.md").read_text() == "the user's notes\n"
    assert not (tmp_path / "work").exists()


def test_a_memory_test_too_short_to_measure_is_refused(tmp_path, capsys) -> None:
    # With 1 clip it reported a growth of 0.000 MB against its target: a pass that measured nothing.
    from fima.benchmark import data

    with pytest.raises(SystemExit) as stop:
        data.main(["--quick", "--workdir", str(tmp_path / "work"), "--rss-clips", "5"])
    assert stop.value.code == 2
    assert "argument --rss-clips: must be >= 10, got 5" in capsys.readouterr().err
