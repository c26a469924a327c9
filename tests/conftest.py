"""Shared fixtures: a private dataset cache and tiny configs that run in seconds on a CPU."""

from __future__ import annotations

import importlib.util
import os
import tempfile

import pytest
import torch

from fima.config import CfgNode, get_cfg
from fima.config.config import CfgNode as CN

# The suite checks the CPU build: its multi-process tests start gloo ranks (two ranks would need
# two GPUs under NCCL) and its exactness tests compare losses bit for bit, which GPU kernels do not
# promise. On a GPU machine it hides the GPUs from itself and from every process it starts (set
# before anything initialises CUDA); tools/gpu_checks.sh exercises the GPU paths.
os.environ["CUDA_VISIBLE_DEVICES"] = ""
# Every test session generates its synthetic videos into a private cache, never the user's.
_CACHE = tempfile.mkdtemp(prefix="fima-test-cache-")
os.environ["FIMA_CACHE"] = _CACHE
# The suite checks fima's defaults, whatever the user's shell sets for their own downloads (a
# FIMA_DOWNLOAD_TIMEOUT that is not a number failed every download test); the tests that need
# a value set it themselves.
for _name in ("FIMA_DOWNLOAD_TIMEOUT", "FIMA_MODEL_ZOO_URL"):
    os.environ.pop(_name, None)
torch.set_num_threads(min(torch.get_num_threads(), 2))


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The README's --import example: a backbone and config keys registered from outside fima.
USER_BACKBONE = os.path.join(ROOT, "examples", "my_backbone.py")


def load_user_backbone() -> None:
    """Register :data:`USER_BACKBONE`'s ``TwoLayer3D`` in this process, once (a registry refuses
    a second registration, which a tool's ``--import`` in a subprocess does not meet)."""
    from fima.modeling import BACKBONE_REGISTRY

    if "TwoLayer3D" in BACKBONE_REGISTRY:
        return
    spec = importlib.util.spec_from_file_location("fima_test_user_backbone", USER_BACKBONE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


def user_backbone_checkpoint(folder) -> tuple[str, str, torch.nn.Module]:
    """The Quickstart MoCo config with :data:`USER_BACKBONE`'s ``TwoLayer3D`` (width 8), written
    to ``folder/two_layer.yaml``, and a checkpoint of the model it builds,
    ``folder/model_final.pth``: what a tool given ``--import USER_BACKBONE`` reads.

    Returns:
        The config path, the checkpoint path and the model.
    """
    from fima.modeling import build_model

    load_user_backbone()
    cfg = get_cfg()
    cfg.MODEL.TWO_LAYER3D = CN({"WIDTH": 8})  # what the module's add_config adds
    cfg.merge_from_file(os.path.join(ROOT, "configs", "Quickstart", "moco_synthetic.yaml"))
    cfg.MODEL.BACKBONE.NAME = "TwoLayer3D"
    config, weights = (
        os.path.join(folder, "two_layer.yaml"),
        os.path.join(folder, "model_final.pth"),
    )
    with open(config, "w") as f:
        f.write(cfg.dump())
    model = build_model(cfg)
    torch.save({"model": model.state_dict(), "iteration": 1}, weights)
    return config, weights, model


def tiny_cfg(output_dir: str | None = None, **overrides: object) -> CfgNode:
    """MoCo + Tiny3D on a 4-class, 6-videos-per-class synthetic set at 32x32 crops."""
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "Tiny3D"
    cfg.MODEL.TINY3D.WIDTHS = (8, 16, 16, 32)
    cfg.MODEL.PROJECTOR.HIDDEN_DIM = 32
    cfg.MODEL.PROJECTOR.OUT_DIM = 16
    cfg.MODEL.MOCO.QUEUE_SIZE = 64
    cfg.INPUT.NUM_FRAMES = 8
    cfg.INPUT.SAMPLING_RATE = 2
    cfg.INPUT.CROP_SIZE = 32
    cfg.DATA.DATASET = "SyntheticMotion"
    cfg.DATA.NUM_WORKERS = 0
    cfg.DATA.SYNTHETIC.CLASSES = ("SlideHorizontal", "SlideUp", "SlideDown", "Circle")
    cfg.DATA.SYNTHETIC.VIDEOS_PER_CLASS = 6
    cfg.DATA.SYNTHETIC.TEST_GROUPS = 2
    cfg.DATA.SYNTHETIC.NUM_FRAMES = 40
    cfg.DATA.SYNTHETIC.HEIGHT = 48
    cfg.DATA.SYNTHETIC.WIDTH = 64
    cfg.SOLVER.IMS_PER_BATCH = 4
    cfg.SOLVER.MAX_ITER = 4
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.CHECKPOINT_PERIOD = 2
    cfg.SOLVER.SCHEDULE_UNIT = "iter"
    cfg.TEST.NUM_CLIPS = 2
    cfg.TEST.IMS_PER_BATCH = 4
    cfg.LOG_PERIOD = 1
    cfg.SEED = 0
    if output_dir is not None:
        cfg.OUTPUT_DIR = output_dir
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return cfg


@pytest.fixture
def cfg(tmp_path) -> CfgNode:
    return tiny_cfg(str(tmp_path / "output"))


def random_batch(cfg: CfgNode, batch_size: int = 4, local: bool = False) -> dict:
    """A pretraining batch of random uint8 clips with valid boxes, without any decoding."""
    t, s = cfg.INPUT.NUM_FRAMES, cfg.INPUT.CROP_SIZE
    gen = torch.Generator().manual_seed(0)
    batch = {
        "global": torch.randint(
            0, 256, (batch_size, 2, 3, t, s, s), dtype=torch.uint8, generator=gen
        ),
        "global_box": torch.tensor([0.1, 0.2, 0.8, 0.9]).repeat(batch_size, 2, 1),
        "label": torch.zeros(batch_size, dtype=torch.long),
        "index": torch.arange(batch_size),
    }
    if local:
        batch["local"] = torch.randint(
            0, 256, (batch_size, 2, 2, 3, t, s, s), dtype=torch.uint8, generator=gen
        )
        batch["local_box"] = torch.tensor([0.0, 0.0, 1.0, 1.0]).repeat(batch_size, 2, 2, 1)
    return batch


def write_test_video(
    path: str,
    num_frames: int = 30,
    size: tuple[int, int] = (48, 64),
    codec: str = "libx264",
    gop: int = 10,
    fps: int = 25,
    options: dict[str, str] | None = None,
) -> str:
    """Encode a video whose frames are easy to tell apart (a bar that moves one step per frame).

    ``options`` are passed to the encoder (``{"bf": "2"}``: B-frames), after the defaults.
    """
    import av
    import numpy as np

    height, width = size
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.options = {"bf": "2", "keyint_min": str(gop), "sc_threshold": "0"}
        if options:
            stream.options = {**stream.options, **options}
        for i in range(num_frames):
            frame = np.full((height, width, 3), 40, dtype=np.uint8)
            frame[:, (i * 2) % width : (i * 2) % width + 4] = 220
            frame[: height // 4, :, 1] = (i * 8) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
