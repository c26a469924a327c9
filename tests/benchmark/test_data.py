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
    # The kept workdir serves again, and a count given with --quick is the one used.
    again = subprocess.run(
        [*result.args[:-2], "--index-videos", "60"], capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Start-up: indexing 60 short videos" in again.stdout
