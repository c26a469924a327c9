"""Every shipped FIMA and MoCo pretraining config trains for a few iterations on the CPU, with a
tiny backbone and tiny synthetic data put over its dataset, backbone and input settings."""

from __future__ import annotations

import glob
import json
import os

import pytest

from fima.config import get_cfg
from fima.engine import DefaultTrainer, default_setup

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(
    os.path.relpath(path, os.path.join(ROOT, "configs"))
    for pattern in ("FIMA/*.yaml", "MoCo/*.yaml", "Quickstart/*.yaml")
    for path in glob.glob(os.path.join(ROOT, "configs", pattern))
)
TINY = {
    "MODEL.BACKBONE.NAME": "Tiny3D",
    "MODEL.TINY3D.WIDTHS": (8, 16, 16, 32),
    "MODEL.PROJECTOR.HIDDEN_DIM": 32,
    "MODEL.PROJECTOR.OUT_DIM": 16,
    "MODEL.MOTION_DECODER.DIM": 16,
    "MODEL.MOTION_DECODER.FFN_DIM": 16,
    "INPUT.NUM_FRAMES": 8,
    "INPUT.CROP_SIZE": 32,
    "DATA.DATASET": "SyntheticMotion",
    "DATA.ROOT": "",
    "DATA.NUM_WORKERS": 0,
    "DATA.SYNTHETIC.CLASSES": ("SlideHorizontal", "SlideUp", "SlideDown", "Circle"),
    "DATA.SYNTHETIC.VIDEOS_PER_CLASS": 6,
    "DATA.SYNTHETIC.TEST_GROUPS": 2,
    "DATA.SYNTHETIC.NUM_FRAMES": 40,
    "DATA.SYNTHETIC.HEIGHT": 48,
    "DATA.SYNTHETIC.WIDTH": 64,
    "SOLVER.IMS_PER_BATCH": 4,
    "SOLVER.MAX_ITER": 2,
    "LOG_PERIOD": 1,
}


def test_every_method_has_its_counterpart() -> None:
    fima = {os.path.basename(c) for c in CONFIGS if c.startswith("FIMA")}
    moco = {os.path.basename(c) for c in CONFIGS if c.startswith("MoCo")}
    assert (
        fima
        == moco
        == {
            "i3d_ucf101_pretrain.yaml",
            "i3d_k400_pretrain.yaml",
            "r2plus1d_k400_pretrain.yaml",
        }
    )


def test_recipe_hyperparameters() -> None:
    def load(name: str):
        cfg = get_cfg()
        cfg.merge_from_file(os.path.join(ROOT, "configs", name))
        return cfg

    ucf, k400 = load("FIMA/i3d_ucf101_pretrain.yaml"), load("FIMA/i3d_k400_pretrain.yaml")
    assert (ucf.SOLVER.BASE_LR, ucf.SOLVER.IMS_PER_BATCH, ucf.SOLVER.MAX_EPOCHS) == (
        0.00375,
        24,
        200,
    )
    assert (ucf.MODEL.MOCO.QUEUE_SIZE, ucf.MODEL.FIMA.MOTION_QUEUE_SIZE) == (2240, 2240)
    assert ucf.MODEL.FIMA.DENSE_QUEUE_SIZE == 0
    assert (k400.SOLVER.BASE_LR, k400.SOLVER.IMS_PER_BATCH, k400.SOLVER.MAX_EPOCHS) == (
        0.01,
        64,
        100,
    )
    assert (k400.MODEL.MOCO.QUEUE_SIZE, k400.MODEL.FIMA.MOTION_QUEUE_SIZE) == (65536, 65536)
    assert k400.MODEL.FIMA.DENSE_QUEUE_SIZE == 31360
    for cfg in (ucf, k400):
        assert cfg.MODEL.META_ARCHITECTURE == "FIMA" and cfg.MODEL.MOCO.MOMENTUM == 0.999
        assert (cfg.INPUT.NUM_FRAMES, cfg.INPUT.CROP_SIZE, cfg.SOLVER.WEIGHT_DECAY) == (
            16,
            224,
            1e-4,
        )
    moco = load("MoCo/i3d_ucf101_pretrain.yaml")
    assert moco.MODEL.META_ARCHITECTURE == "MoCo"
    assert (moco.SOLVER.BASE_LR, moco.SOLVER.IMS_PER_BATCH, moco.MODEL.MOCO.QUEUE_SIZE) == (
        0.00375, 24, 2240,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_config_trains_a_few_iterations(name: str, tmp_path) -> None:
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, "configs", name))
    for key, value in {**TINY, "OUTPUT_DIR": str(tmp_path / "out")}.items():
        node = cfg
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    default_setup(cfg)
    DefaultTrainer(cfg).train()
    with open(tmp_path / "out" / "metrics.json") as f:
        records = [json.loads(line) for line in f]
    losses = {k for r in records for k in r if k.startswith("loss_")}
    expected = {"loss_inst"}
    if cfg.MODEL.META_ARCHITECTURE == "FIMA":
        expected |= {"loss_dense", "loss_local"}
    assert losses == expected
