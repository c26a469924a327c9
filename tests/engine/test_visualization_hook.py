"""VisualizationHook: image summaries in TensorBoard, and a training run unchanged by them."""

from __future__ import annotations

import os

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fima.engine import DefaultTrainer, HookBase
from fima.engine.hooks import VisualizationHook
from fima.utils.env import seed_all_rng
from tests.conftest import tiny_cfg
from tests.modeling.test_fima import FIMA_TINY


class LossRecorder(HookBase):
    def __init__(self) -> None:
        self.losses: list[dict[str, float]] = []

    def after_step(self) -> None:
        self.losses.append(dict(self.trainer.loss_dict))


def _train(output: str, vis_period: int) -> tuple[DefaultTrainer, LossRecorder]:
    cfg = tiny_cfg(
        output,
        **FIMA_TINY,
        **{"SOLVER.MAX_ITER": 2, "VIS_PERIOD": vis_period, "VIS_NUM_CLIPS": 2},
    )
    os.makedirs(output)
    seed_all_rng(cfg.SEED)
    trainer = DefaultTrainer(cfg)
    recorder = LossRecorder()
    trainer.register_hooks([recorder])
    trainer.train()
    return trainer, recorder


def test_hook_writes_images_to_tensorboard_and_changes_no_loss(tmp_path) -> None:
    with_vis, seen = _train(str(tmp_path / "vis"), vis_period=1)
    assert any(isinstance(h, VisualizationHook) for h in with_vis.hooks)
    without, plain = _train(str(tmp_path / "plain"), vis_period=0)
    assert not any(isinstance(h, VisualizationHook) for h in without.hooks)
    assert seen.losses == plain.losses  # bit-identical losses with and without the pictures
    assert with_vis.method.training

    events = EventAccumulator(str(tmp_path / "vis"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()["images"]
    assert len(tags) == 2 and all(tag.startswith("vis/") for tag in tags)
    # Drawn after every iteration (the period).
    assert [event.step for event in events.Images(tags[0])] == [0, 1]
    image = events.Images(tags[0])[-1]
    assert image.width > 8 * 96 and image.height > 4 * 96  # four rows (FIMA: with the mask)
    assert "vis_time" in events.Tags()["scalars"]
    assert not EventAccumulator(str(tmp_path / "plain")).Reload().Tags()["images"]
