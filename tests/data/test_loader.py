"""Loaders: batch layout, determinism whatever the workers, sharding, resume position."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch

from fima.data import build_pretrain_loader, build_test_loader, build_train_loader
from fima.data.build import TrainingBatchSampler
from tests.conftest import tiny_cfg, write_test_video


def _first_batches(loader, n: int) -> list[dict]:
    iterator = iter(loader)
    return [next(iterator) for _ in range(n)]


def test_pretrain_batch_layout_for_moco_and_with_local_views(tmp_path) -> None:
    cfg = tiny_cfg(str(tmp_path))
    batch = _first_batches(build_pretrain_loader(cfg), 1)[0]
    assert batch["global"].shape == (4, 2, 3, 8, 32, 32) and batch["global"].dtype == torch.uint8
    assert batch["global_box"].shape == (4, 2, 4)
    assert "local" not in batch  # MoCo asks for the global views only
    batch = _first_batches(build_pretrain_loader(cfg, views=("global", "local")), 1)[0]
    assert batch["local"].shape == (4, 2, 2, 3, 8, 32, 32)


def test_batches_do_not_depend_on_the_number_of_workers(tmp_path) -> None:
    cfg = tiny_cfg(str(tmp_path))
    serial = _first_batches(build_pretrain_loader(cfg), 3)
    cfg.DATA.NUM_WORKERS = 2
    parallel = _first_batches(build_pretrain_loader(cfg), 3)
    for a, b in zip(serial, parallel):
        assert torch.equal(a["global"], b["global"])
        assert torch.equal(a["global_box"], b["global_box"])


def test_loader_resumes_at_its_position(tmp_path) -> None:
    cfg = tiny_cfg(str(tmp_path))
    loader = build_pretrain_loader(cfg)
    straight = _first_batches(loader, 5)
    resumed = build_pretrain_loader(cfg)
    resumed.load_state_dict({"seed": cfg.SEED, "position": 3})
    again = _first_batches(resumed, 2)
    for a, b in zip(straight[3:], again):
        assert torch.equal(a["global"], b["global"])
    assert resumed.state_dict()["position"] == 5


def test_resume_onto_other_training_videos_is_warned_about(tmp_path, caplog) -> None:
    cfg = tiny_cfg(str(tmp_path))
    state = build_pretrain_loader(cfg).state_dict()
    assert state["videos"] == len(build_pretrain_loader(cfg).dataset.valid)

    def warnings_on_resume(change) -> list[str]:
        caplog.clear()
        resumed = build_pretrain_loader(cfg)
        change(resumed.dataset)
        with caplog.at_level("WARNING", logger="fima.data.build"):
            resumed.load_state_dict(state)
        return [r.getMessage() for r in caplog.records if "training data differ" in r.getMessage()]

    # The same videos, also below another root: no warning.
    assert warnings_on_resume(lambda clips: None) == []
    assert warnings_on_resume(_moved_to(str(tmp_path / "copy"))) == []
    # One video fewer (removed, or unreadable now): the counts are named.
    (message,) = warnings_on_resume(_without_first_video)
    assert f"{state['videos']} usable videos then, {state['videos'] - 1} now)" in message
    # As many videos, one of them another file, or of another length.
    (message,) = warnings_on_resume(_first_video_renamed)
    assert "now, other paths or lengths, or other videos unreadable" in message
    (message,) = warnings_on_resume(_first_video_longer)
    assert "now, other paths or lengths, or other videos unreadable" in message
    # A checkpoint written before the fingerprint: nothing to compare.
    caplog.clear()
    old = {k: v for k, v in state.items() if k not in ("videos", "data")}
    resumed = build_pretrain_loader(cfg)
    _without_first_video(resumed.dataset)
    with caplog.at_level("WARNING", logger="fima.data.build"):
        resumed.load_state_dict(old)
    assert not [r for r in caplog.records if "training data differ" in r.getMessage()]


def _moved_to(root: str):
    def move(clips) -> None:
        videos = clips.dataset
        videos.records = [
            dataclasses.replace(r, path=os.path.join(root, os.path.relpath(r.path, videos.root)))
            for r in videos.records
        ]
        videos.root = root

    return move


def _without_first_video(clips) -> None:
    clips.valid = clips.valid[1:]


def _first_video_longer(clips) -> None:
    info = clips.infos[clips.valid[0]]
    clips.infos[clips.valid[0]] = dataclasses.replace(info, num_frames=info.num_frames + 1)


def _first_video_renamed(clips) -> None:
    first = clips.dataset.records[clips.valid[0]]
    clips.dataset.records[clips.valid[0]] = dataclasses.replace(first, path=first.path + ".x")


def test_loader_resumed_with_other_accumulation_continues_the_data_order(tmp_path) -> None:
    """Two optimizer steps of 2 micro-batches of 2 clips, resumed with ACCUM_STEPS 1: the next
    batch of 4 clips holds the clips of the micro-batches that would have come next, not those
    of a later epoch (the position is counted in clips, not batches)."""
    cfg = tiny_cfg(str(tmp_path), **{"SOLVER.ACCUM_STEPS": 2})
    loader = build_pretrain_loader(cfg)
    straight = _first_batches(loader, 6)
    loader.position = 4
    state = loader.state_dict()
    cfg.SOLVER.ACCUM_STEPS = 1
    resumed = build_pretrain_loader(cfg)
    resumed.load_state_dict(state)
    batch = _first_batches(resumed, 1)[0]
    expected = torch.cat([straight[4]["global"], straight[5]["global"]])
    assert torch.equal(batch["global"], expected)
    assert resumed.state_dict()["clips"] == 4 * 2 + 4  # 4 micro-batches of 2, then one of 4


def _epoch_keys(sampler: TrainingBatchSampler, batches: int) -> list[tuple[int, int, int]]:
    """The sample keys ``(video, epoch, position)`` of a sampler's first ``batches`` batches."""
    iterator = iter(sampler)
    return [key for _ in range(batches) for key in next(iterator)]


def test_sampler_epochs_are_permutations_and_ranks_are_disjoint() -> None:
    indices = np.arange(23)
    samplers = [TrainingBatchSampler(indices, 3, seed=5, rank=r, world_size=2) for r in range(2)]
    assert samplers[0].iters_per_epoch == 3
    seen = []
    for sampler in samplers:
        iterator = iter(sampler)
        epoch0 = [key for _ in range(3) for key in next(iterator)]
        assert {e for _, e, _ in epoch0} == {0}
        seen.extend(idx for idx, _, _ in epoch0)
    assert len(seen) == len(set(seen)) == 18
    # Each sample's key holds its position in the epoch, which seeds its random draws: the two
    # ranks' samples are, key for key, those of one process taking batches of 6, so no two
    # samples share a random stream and the draws do not depend on the number of processes.
    both = {key for sampler in samplers for key in _epoch_keys(sampler, 3)}
    assert both == set(_epoch_keys(TrainingBatchSampler(indices, 6, seed=5), 3))
    first = [k[0] for k in next(iter(TrainingBatchSampler(indices, 3, seed=5)))]
    other = [k[0] for k in next(iter(TrainingBatchSampler(indices, 3, seed=5, start_iter=7)))]
    assert first != other


def test_train_and_test_loaders(tmp_path) -> None:
    cfg = tiny_cfg(str(tmp_path))
    batch = _first_batches(build_train_loader(cfg), 1)[0]
    assert batch["global"].shape == (4, 1, 3, 8, 32, 32)
    assert batch["label"].min() >= 0
    test_batches = list(build_test_loader(cfg))
    videos = torch.cat([b["index"] for b in test_batches])
    assert sorted(videos.tolist()) == list(range(8))
    assert test_batches[0]["global"].shape[1:] == (2, 3, 8, 32, 32)
    assert all(b["valid"].all() for b in test_batches)


def test_under_ddp_every_test_video_goes_to_exactly_one_rank(tmp_path, monkeypatch) -> None:
    from fima.utils import comm

    cfg = tiny_cfg(str(tmp_path), **{"TEST.IMS_PER_BATCH": 3, "TEST.NUM_CLIPS": 1})
    monkeypatch.setattr(comm, "get_world_size", lambda: 3)
    # Indexing is collective; here every simulated rank indexes alone, as rank 0 would.
    monkeypatch.setattr(comm, "is_main_process", lambda: True)
    monkeypatch.setattr(comm, "broadcast_object", lambda data, src=0: data)
    monkeypatch.setattr(comm, "all_gather_object", lambda data: [data])
    monkeypatch.setattr(comm, "sum_over_ranks", lambda counts: counts)  # the bad-video budget
    shares = []
    for rank in range(3):
        monkeypatch.setattr(comm, "get_rank", lambda rank=rank: rank)
        loader = build_test_loader(cfg)
        assert loader.batch_size == 1
        shares.append([i for batch in loader for i in batch["index"].tolist()])
    videos = [i for share in shares for i in share]
    assert sorted(videos) == list(range(8))  # 8 test videos: none twice, none left out
    assert [len(share) for share in shares] == [3, 3, 2]


def test_frames_larger_than_the_short_side_are_downscaled_before_cropping(tmp_path) -> None:
    # The synthetic videos are 48x64; a 24-px short side halves them before the crops.
    cfg = tiny_cfg(str(tmp_path), **{"INPUT.TRAIN_SHORT_SIDE": 24, "INPUT.CROP_SCALE": (1.0, 1.0)})
    batch = _first_batches(build_train_loader(cfg), 1)[0]
    assert batch["global"].shape == (4, 1, 3, 8, 32, 32)
    full = _first_batches(build_train_loader(tiny_cfg(str(tmp_path))), 1)[0]
    assert not torch.equal(batch["global"], full["global"])


def test_workers_seed_numpy_differently(tmp_path) -> None:
    from torch.utils.data import DataLoader

    from fima.data.build import _worker_init

    class Draw(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, index: int) -> float:
            return float(np.random.random())

    loader = DataLoader(
        Draw(),
        batch_size=1,
        num_workers=2,
        worker_init_fn=_worker_init,
        generator=torch.Generator().manual_seed(0),
    )
    first, second = [float(x) for x in loader]
    assert first != second
    assert [float(x) for x in loader] != [first, second]  # new epoch, new worker seeds


def test_take_returns_a_view_for_evenly_spaced_rows() -> None:
    from fima.data.build import _take

    frames = torch.arange(10 * 2).view(10, 2)
    view = _take(frames, np.array([1, 3, 5, 7]))
    assert view.data_ptr() == frames[1].data_ptr()  # no copy
    assert torch.equal(view, frames[[1, 3, 5, 7]])
    assert torch.equal(_take(frames, np.array([0, 1, 1, 4])), frames[[0, 1, 1, 4]])
    assert torch.equal(_take(frames, np.array([6])), frames[[6]])


def test_class_folders_train_and_test_like_list_files(tmp_path) -> None:
    for split, per_class in (("train", 2), ("test", 1)):
        for label in ("left", "right"):
            for i in range(per_class):
                folder = tmp_path / "videos" / split / label
                folder.mkdir(parents=True, exist_ok=True)
                write_test_video(str(folder / f"{i}.mp4"), num_frames=24)
    cfg = tiny_cfg(
        str(tmp_path), **{"DATA.DATASET": "VideoList", "DATA.ROOT": str(tmp_path / "videos")}
    )
    batch = _first_batches(build_train_loader(cfg), 1)[0]
    assert batch["global"].shape == (4, 1, 3, 8, 32, 32)
    assert sorted(batch["label"].tolist()) == [0, 0, 1, 1]
    test_batches = list(build_test_loader(cfg))
    assert sorted(torch.cat([b["label"] for b in test_batches]).tolist()) == [0, 1]


def test_three_crop_test_views_hold_the_centre_crop_loader_clip_by_clip(tmp_path) -> None:
    cfg = tiny_cfg(str(tmp_path), **{"TEST.NUM_CLIPS": 2})
    centre = next(iter(build_test_loader(cfg)))["global"]
    cfg = tiny_cfg(str(tmp_path), **{"TEST.NUM_CLIPS": 2, "TEST.NUM_SPATIAL_CROPS": 3})
    three = next(iter(build_test_loader(cfg)))["global"]
    assert three.shape == (4, 6, 3, 8, 32, 32)
    # Clip by clip: each clip's three crops are adjacent, the centre one in the middle.
    assert torch.equal(three[:, 1::3], centre)
    assert not torch.equal(three[:, 0::3], centre)
