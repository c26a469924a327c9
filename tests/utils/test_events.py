"""Writers of the event storage: metrics.json across an interrupted and resumed run."""

from __future__ import annotations

import json

from fima.utils.events import EventStorage, JSONWriter


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


def test_json_writer_of_a_new_run_keeps_the_file(tmp_path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"iteration": 7, "loss": 1.0}) + "\n")
    writer = JSONWriter(str(path))
    writer.start(0)
    writer.close()
    assert json.loads(path.read_text()) == {"iteration": 7, "loss": 1.0}
