"""projects/FAME: the motion mask, the merge, FAMEMoCo's queries, and its quick config."""

from __future__ import annotations

import math

import pytest
import torch

from fima.config import ConfigError, validate_cfg
from fima.modeling import build_model
from tests.conftest import random_batch, tiny_cfg
from tests.projects.common import import_project, read_metrics, run_project

fame = import_project("FAME", "fame")


def moving_square_clips(n: int, frames: int = 6, size: int = 32) -> torch.Tensor:
    """``[n, 3, T, size, size]`` in [0, 1]: a static random background per clip and a bright
    8x8 square that moves one pixel per frame, in a different corner region per clip."""
    gen = torch.Generator().manual_seed(0)
    clips = torch.rand(n, 3, 1, size, size, generator=gen).expand(-1, -1, frames, -1, -1).clone()
    for i in range(n):
        top, left = (i % 2) * 16, (i // 2 % 2) * 16
        for t in range(frames):
            clips[i, :, t, top + 2 : top + 10, left + t : left + t + 8] = 1.0
    return clips


def fame_cfg(prob: float = 1.0, **overrides: object):
    cfg = tiny_cfg(**overrides)
    fame.add_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "FAMEMoCo"
    cfg.MODEL.FAME.PROB = prob
    cfg.MODEL.FAME.GRID = 4
    return cfg


@pytest.mark.parametrize("grid", [4, 7, 8])
def test_mask_has_about_half_its_cells_on(grid: int) -> None:
    clips = torch.rand(5, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    mask = fame.motion_foreground_mask(clips, grid)
    assert mask.shape == (5, grid, grid) and mask.dtype == torch.bool
    # Above the lower median of grid^2 distinct energies: floor(grid^2 / 2) cells.
    assert mask.flatten(1).sum(1).tolist() == [grid * grid // 2] * 5


def test_mask_follows_the_motion_and_ignores_a_static_clip() -> None:
    clips = moving_square_clips(4)
    mask = fame.motion_foreground_mask(clips, 4)  # cells of 8 px
    for i in range(4):
        row, col = (i % 2) * 2, (i // 2 % 2) * 2
        # The square sweeps columns left .. left + 13 in rows top + 2 .. top + 9: the energy is
        # in the clip's own quadrant (cells row..row+1, col..col+1) and nowhere else.
        assert mask[i, row : row + 2, col : col + 2].any()
        outside = mask[i].clone()
        outside[row : row + 2, col : col + 2] = False
        assert not outside.any()
    still = clips[:, :, :1].expand(-1, -1, 6, -1, -1)
    assert not fame.motion_foreground_mask(still, 4).any()


def test_merge_keeps_the_foreground_and_takes_the_background_from_the_source() -> None:
    n, size = 4, 16
    clips = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1, 1).expand(n, 3, 2, size, size)
    mask = torch.zeros(n, 2, 2, dtype=torch.bool)
    mask[:, 0, 0] = True  # the top-left quarter of every clip is foreground
    sources = torch.tensor([1, 2, 3, 0])
    merged = fame.merge_foreground(clips, mask, sources)
    assert merged.shape == clips.shape
    for i in range(n):
        assert (merged[i, :, :, :8, :8] == i).all()
        background = torch.ones(size, size, dtype=torch.bool)
        background[:8, :8] = False
        assert (merged[i, :, :, background] == sources[i]).all()


def test_background_comes_from_another_video_of_the_same_window() -> None:
    torch.manual_seed(0)
    batch, windows = 5, 2
    seen_shifts = set()
    for _ in range(20):
        sources = fame.background_sources(batch, windows, torch.device("cpu"))
        index = torch.arange(batch * windows)
        assert sorted(sources.tolist()) == index.tolist()  # a permutation
        assert (sources // batch == index // batch).all()  # same window
        assert (sources % batch != index % batch).all()  # another video
        seen_shifts.add(int((index[0] - sources[0]) % batch))
    assert seen_shifts == {1, 2, 3, 4}
    with pytest.raises(ValueError, match="at least 2 videos"):
        fame.background_sources(1, 2, torch.device("cpu"))


def test_fame_moco_merges_only_the_queries() -> None:
    cfg = fame_cfg(prob=1.0)
    cfg.INPUT.AUG.BLUR_PROB = cfg.INPUT.AUG.COLOR_JITTER_PROB = cfg.INPUT.AUG.GRAYSCALE_PROB = 0
    model = build_model(cfg)
    clips = moving_square_clips(8, frames=8)
    rgb = model.augment_clips(clips.clone())
    torch.manual_seed(0)
    query = model.merge_queries(rgb, fame.motion_foreground_mask(clips, 4))
    changed = (query != rgb).flatten(1).any(1)
    assert changed.all()  # PROB 1 and every clip moves: every query is merged
    # Each query keeps its own pixels in its quadrant and shows another clip elsewhere.
    for i in range(8):
        row, col = (i % 2) * 16, (i // 2 % 2) * 16
        region = (slice(None), slice(None), slice(row + 2, row + 10), slice(col + 8, col + 14))
        assert torch.equal(query[i][region], rgb[i][region])


def seeded_model(method: str, prob: float) -> torch.nn.Module:
    """``method`` (MoCo or FAMEMoCo) on the tiny config, initialised from seed 0."""
    cfg = fame_cfg(prob=prob)
    cfg.MODEL.META_ARCHITECTURE = method
    torch.manual_seed(0)
    return build_model(cfg)


def test_fame_moco_with_prob_zero_is_moco() -> None:
    batch = random_batch(fame_cfg())
    moco, fame_moco = (seeded_model(method, 0.0)(batch) for method in ("MoCo", "FAMEMoCo"))
    assert torch.equal(moco["loss_inst"], fame_moco["loss_inst"])


def test_fame_moco_merges_in_training_only() -> None:
    """Same seeds, same weights: the training loss differs from MoCo's (the queries are
    merged), the evaluation loss does not."""
    batch = random_batch(fame_cfg())
    results = {}
    for method in ("MoCo", "FAMEMoCo"):
        model = seeded_model(method, 1.0)
        with torch.no_grad():
            torch.manual_seed(1)
            evaluation = model.eval()(batch)["loss_inst"]
        torch.manual_seed(1)
        training = model.train()(batch)["loss_inst"]
        training.backward()
        assert all(p.grad is not None for p in model.encoder_q.parameters())
        results[method] = (training, evaluation)
    assert math.isfinite(results["FAMEMoCo"][0].item())
    assert not torch.equal(results["MoCo"][0], results["FAMEMoCo"][0])
    assert torch.equal(results["MoCo"][1], results["FAMEMoCo"][1])


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("MODEL.FAME.PROB", 1.5, r"^MODEL\.FAME\.PROB: must be in \[0, 1\]"),
        ("MODEL.FAME.GRID", 0, r"^MODEL\.FAME\.GRID: must be between 1 and INPUT\.CROP_SIZE"),
        ("SOLVER.IMS_PER_BATCH", 1, r"^SOLVER\.IMS_PER_BATCH: FAME takes backgrounds"),
    ],
)
def test_bad_fame_config_is_refused(key: str, value: object, message: str) -> None:
    cfg = fame_cfg()
    node, leaf = cfg, key.split(".")
    for part in leaf[:-1]:
        node = node[part]
    node[leaf[-1]] = value
    with pytest.raises(ConfigError, match=message):
        validate_cfg(cfg)


@pytest.mark.slow
def test_quick_config_trains_end_to_end(tmp_path) -> None:
    out = str(tmp_path / "out")
    result = run_project("FAME", "fame_synthetic.yaml", out, "MODEL.FAME.GRID", "4")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = read_metrics(out)
    assert [row["iteration"] for row in rows] == [0, 1]
    assert all(math.isfinite(row["loss_inst"]) and "fame_merged" in row for row in rows)
    assert "META_ARCHITECTURE: FAMEMoCo" in (tmp_path / "out" / "config.yaml").read_text()
