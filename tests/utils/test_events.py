"""Writers of the event storage: metrics.json across an interrupted and resumed run."""

from __future__ import annotations

import json
from unittest import mock

from fima.utils.events import CommonMetricPrinter, EventStorage, JSONWriter


def test_json_writer_of_a_resumed_run_replaces_the_records_it_trains_again(tmp_path) -> None:
    path = tmp_path / "metrics.json"
    # What a run killed during iteration 5 left: records up to 4, then a line cut short.
    path.write_text(
        "".join(json.dumps({"iteration": i, "loss": float(i)}) + "\n" for i in range(5))
        + '{"iteration": 5, "lo'
    )
    writer = JSONWriter(str(path))
    writer.start(3)  # resumed from the checkpoint of iteration 2
    with EventStorage(3) as storage:
        storage.put_scalar("loss", 30.0, smoothing_hint=False)
        writer.write()
    writer.close()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [
        {"iteration": 0, "loss": 0.0},
        {"iteration": 1, "loss": 1.0},
        {"iteration": 2, "loss": 2.0},
        {"iteration": 3, "loss": 30.0},
    ]


def test_json_writer_from_iteration_0_keeps_an_earlier_runs_records_aside(tmp_path) -> None:
    """A run stopped before its first checkpoint, then started again: its records move to
    metrics.<time>.json instead of mixing with the new run's iterations 0, 1, ..."""
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"iteration": 0, "loss": 1.0}) + "\n")
    writer = JSONWriter(str(path))
    writer.start(0)
    with EventStorage(0) as storage:
        storage.put_scalar("loss", 2.0, smoothing_hint=False)
        writer.write()
    writer.close()
    assert json.loads(path.read_text()) == {"iteration": 0, "loss": 2.0}
    (kept,) = tmp_path.glob("metrics.*.json")
    assert json.loads(kept.read_text()) == {"iteration": 0, "loss": 1.0}


def test_console_line_after_a_stop_inside_a_step_shows_nothing_stale() -> None:
    """A run stopped during iteration 4 (the non-finite loss guard, Ctrl-C) has only put that
    iteration's momentum: the final write must not print iteration 3's losses as iteration 4's."""
    printer = CommonMetricPrinter(max_iter=10)
    printer._logger = mock.Mock()
    with EventStorage(3) as storage:
        storage.put_scalars(total_loss=2.5, loss_inst=2.5)
        printer.write()
        storage.iter = 4
        storage.put_scalar("momentum", 0.99, smoothing_hint=False)
        printer.write()
    lines = [c.args[0] for c in printer._logger.info.call_args_list]
    assert len(lines) == 1 and "iter: 3" in lines[0] and "total_loss: 2.5" in lines[0]
    # Before any step was timed the ETA is unknown: left out, not an empty "eta: " field.
    assert lines[0].startswith("iter: 3")
