"""What a user adds to fima from one ``.py`` file (``tools/train_net.py --import this.py``): an
SSL method of their own with its own hook, and a dataset of their own. Used by
``test_user_extensions.py``, which trains it through the stock ``tools/train_net.py``."""

from __future__ import annotations

import glob
import os

import torch
import torch.nn.functional as F
from torch import nn

from fima.config import CfgNode
from fima.config.config import CfgNode as CN
from fima.data import DATASET_REGISTRY
from fima.data.datasets import VideoDataset, VideoRecord
from fima.data.transforms import VideoAugmentation
from fima.engine import HookBase
from fima.modeling import SSL_METHOD_REGISTRY, SSLMethod, build_backbone
from fima.utils.events import get_event_storage


def add_config(cfg: CfgNode) -> None:
    """``MODEL.TWIN`` and ``DATA.CLASS_FOLDERS``: this module's keys."""
    cfg.MODEL.TWIN = CN()
    cfg.MODEL.TWIN.DIM = 8
    cfg.DATA.CLASS_FOLDERS = CN()
    # Every TEST_EVERY-th video of a class (sorted by name) is a test video.
    cfg.DATA.CLASS_FOLDERS.TEST_EVERY = 3


class StepCounter(HookBase):
    """Counts the optimizer steps, into the metrics as ``twin_steps``; checkpointed."""

    def __init__(self) -> None:
        self.count = 0

    def after_step(self) -> None:
        self.count += 1
        self.trainer.storage.put_scalar("twin_steps", self.count, smoothing_hint=False)

    def state_dict(self) -> dict[str, int]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.count = state["count"]


@SSL_METHOD_REGISTRY.register()
class TwinSiam(SSLMethod):
    """SimSiam on the two windows of a video: the prediction from one window must match the
    (stop-gradient) projection of the other. Its backbone is ``encoder``, neither MoCo's
    ``encoder_q`` nor a classifier's ``backbone``."""

    def __init__(self, cfg: CfgNode) -> None:
        super().__init__()
        dim = cfg.MODEL.TWIN.DIM
        self.encoder = build_backbone(cfg)
        self.projector = nn.Linear(self.encoder.out_channels, dim)
        self.predictor = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.augment = VideoAugmentation(cfg)

    def build_hooks(self, cfg: CfgNode) -> list[HookBase]:
        return [StepCounter()]

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"loss_twin": 0-d}`` for ``global`` ``[B, 2, 3, T, S, S]`` uint8."""
        clips = batch["global"].to(self.device)
        videos = clips.shape[0]
        x = self.augment(clips.transpose(0, 1).flatten(0, 1).float().div_(255))
        z = self.projector(self.encoder(x).mean(dim=(2, 3, 4)).float())
        p = self.predictor(z)
        (z_m, z_n), (p_m, p_n) = z.split(videos), p.split(videos)
        similarity = F.cosine_similarity(p_m, z_n.detach()) + F.cosine_similarity(p_n, z_m.detach())
        get_event_storage().put_scalar("twin_dtype_is_float32", float(x.dtype == torch.float32))
        return {"loss_twin": -similarity.mean() / 2}


@DATASET_REGISTRY.register()
class ClassFolders(VideoDataset):
    """``DATA.ROOT/<class>/*.avi``; every ``TEST_EVERY``-th video of a class is a test video."""

    LAYOUT = "DATA.ROOT/<class>/<video>.avi"
    ROOT_REQUIRED = True

    def __init__(self, cfg: CfgNode, split: str) -> None:
        root = os.path.abspath(os.path.expanduser(cfg.DATA.ROOT))
        classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        every = cfg.DATA.CLASS_FOLDERS.TEST_EVERY
        records = [
            VideoRecord(path, label, group=os.path.basename(path))
            for label, name in enumerate(classes)
            for i, path in enumerate(sorted(glob.glob(os.path.join(root, name, "*.avi"))))
            if (i % every == 0) == (split == "test")
        ]
        super().__init__(records, classes, name="ClassFolders", split=split, root=root)
