"""The header index: probed once, cached per dataset, re-probed only where files changed."""

from __future__ import annotations

import json
import os

import pytest

from fima.data import build_dataset
from fima.data import index as index_module
from fima.data.index import build_index, index_cache_file
from tests.conftest import tiny_cfg, write_test_video
from tests.data.layouts import make_video_list


@pytest.fixture
def counted_probes(monkeypatch) -> list[str]:
    probed: list[str] = []
    real = index_module._probe

    def probe(path: str) -> dict:
        probed.append(path)
        return real(path)

    monkeypatch.setattr(index_module, "_probe", probe)
    return probed


def test_second_start_reads_the_cache_and_reprobes_changed_files(tmp_path, counted_probes) -> None:
    make_video_list(str(tmp_path), ["a", "b"], 3, {"empty": "a"})
    cfg = tiny_cfg(**{"DATA.DATASET": "VideoList", "DATA.ROOT": str(tmp_path)})
    train = build_dataset(cfg, "train")
    cache = index_cache_file(train, str(tmp_path / "out"))
    assert cache == str(tmp_path / ".fima_index" / "VideoList.json")
    infos, bad = build_index(train, cache)
    assert len(counted_probes) == len(train) == 5
    empty = str(tmp_path / "videos" / "a" / "bad_empty.mp4")
    assert [r.path for r, info in zip(train, infos) if info is None] == list(bad) == [empty]
    assert bad[empty].startswith("cannot open")
    assert (infos[0].num_frames, infos[0].width, infos[0].height) == (24, 64, 48)

    counted_probes.clear()
    assert build_index(train, cache) == (infos, bad)
    assert counted_probes == []

    # One file rewritten, the test split new: only those are probed, and the cache keeps both.
    changed = train[1].path
    write_test_video(changed, num_frames=40)
    os.utime(changed, ns=(1, 1))
    test = build_dataset(cfg, "test")
    infos, _ = build_index(train, cache)
    build_index(test, cache)
    assert counted_probes == [changed, *(r.path for r in test)]
    assert infos[1].num_frames == 40
    with open(cache) as f:
        assert len(json.load(f)["videos"]) == len(train) + len(test)


def test_read_only_root_caches_in_the_output_dir(tmp_path, monkeypatch) -> None:
    make_video_list(str(tmp_path / "data"), ["a"], 2, {})
    cfg = tiny_cfg(**{"DATA.DATASET": "VideoList", "DATA.ROOT": str(tmp_path / "data")})
    dataset = build_dataset(cfg, "train")
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    cache = index_cache_file(dataset, str(tmp_path / "out"))
    assert cache.startswith(str(tmp_path / "out" / "video_index" / "VideoList-"))


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "null",
        "[]",
        '{"format": FORMAT, "videos": {"VIDEO": 5}}',
        '{"format": FORMAT, "videos": {"VIDEO": {"key": [1, 2], "info": [24, 25.0]}}}',
        '{"format": FORMAT, "videos": {"VIDEO": {"key": [1, 2]}}}',
    ],
    ids=["not-json", "null", "list", "entry-not-object", "short-info", "neither-info-nor-error"],
)
def test_an_unreadable_cache_is_rebuilt(tmp_path, counted_probes, content: str) -> None:
    """Valid JSON of another shape (another program's file, a hand edit) once stopped the
    start-up with an AttributeError, KeyError or ValueError traceback."""
    make_video_list(str(tmp_path), ["a"], 2, {})
    cfg = tiny_cfg(**{"DATA.DATASET": "VideoList", "DATA.ROOT": str(tmp_path)})
    dataset = build_dataset(cfg, "train")
    cache = tmp_path / "cache.json"
    # Keyed like the real entry, so that the malformed one would be used if it were read.
    video = dataset[0].path
    key = index_module._file_key(video)
    content = content.replace('"VIDEO"', json.dumps(video)).replace("[1, 2]", str(key))
    cache.write_text(content.replace("FORMAT", str(index_module._INDEX_FORMAT)))
    infos, bad = build_index(dataset, str(cache))
    assert counted_probes and not bad and all(infos)
    assert json.loads(cache.read_text())["format"] == index_module._INDEX_FORMAT


@pytest.mark.parametrize(
    ("old_format", "cached"),
    [
        (2, {"error": "the header gives no frame count"}),
        (3, {"info": [76, 25.0, 64, 48]}),
        (4, {"info": [76, 25.0, 64, 48]}),
    ],
)
def test_a_cache_of_a_previous_format_is_reprobed(
    tmp_path, counted_probes, old_format: int, cached: dict
) -> None:
    """Format 2 cached a header without a length as an error (WebM recorded live, read now);
    format 3 counted frames that Matroska's file duration or an MP4's edit list promise but
    never show; format 4 counted a GIF's frames from its delays. Such entries must not outlive
    an upgrade while the file is as it was."""
    make_video_list(str(tmp_path), ["a"], 2, {})
    cfg = tiny_cfg(**{"DATA.DATASET": "VideoList", "DATA.ROOT": str(tmp_path)})
    dataset = build_dataset(cfg, "train")
    cache = tmp_path / "cache.json"
    video = dataset[0].path
    entry = {"key": index_module._file_key(video), **cached}
    cache.write_text(json.dumps({"format": old_format, "videos": {video: entry}}))
    infos, bad = build_index(dataset, str(cache))
    assert all(infos) and not bad and video in counted_probes
    assert infos[0].num_frames != 76


def test_a_full_disk_does_not_stop_the_start(tmp_path, monkeypatch, caplog) -> None:
    """Writing the cache failed with ENOSPC on a full dataset disk: the start-up stopped with
    an OSError traceback, though the index was complete in memory."""
    make_video_list(str(tmp_path), ["a"], 2, {})
    cfg = tiny_cfg(**{"DATA.DATASET": "VideoList", "DATA.ROOT": str(tmp_path)})
    dataset = build_dataset(cfg, "train")
    cache = tmp_path / ".fima_index" / "VideoList.json"

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(index_module.json, "dump", full_disk)
    infos, bad = build_index(dataset, str(cache))
    assert all(infos) and not bad
    assert "No space left on device" in caplog.text
    assert os.listdir(cache.parent) == []  # no temporary file left behind
