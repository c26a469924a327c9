"""A model with a parameter that gets no gradient, on 2 processes: DDP's failure names the config
key that fixes it, and with ``MODEL.DDP_FIND_UNUSED_PARAMETERS`` the run trains."""

from __future__ import annotations

import os
import textwrap

from tests.engine.procs import MAX_ITER, read_losses, train_net, train_net_args

TWO = ("--num-gpus", "2")

# A user's backbone that keeps a classifier it never calls, as ported backbones often do.
UNUSED_FC_BACKBONE = textwrap.dedent(
    """
    from torch import nn

    from fima.modeling import BACKBONE_REGISTRY
    from fima.modeling.backbone.tiny import Tiny3D


    @BACKBONE_REGISTRY.register()
    class Tiny3DWithUnusedFC(Tiny3D):
        def __init__(self, cfg):
            super().__init__(cfg)
            self.fc = nn.Linear(self.out_channels, 10)
    """
)


def test_parameters_without_gradient_on_two_processes(tmp_path) -> None:
    module = tmp_path / "unused_fc.py"
    module.write_text(UNUSED_FC_BACKBONE)
    runs = {}
    for name, extra in (("default", ()), ("find", ("MODEL.DDP_FIND_UNUSED_PARAMETERS", "True"))):
        test_dir = str(tmp_path / name)
        os.makedirs(test_dir)
        args = train_net_args(
            f"{test_dir}/out", "MODEL.BACKBONE.NAME", "Tiny3DWithUnusedFC", *extra, launcher=TWO
        )
        runs[name] = (test_dir, train_net(test_dir, "--import", str(module), *args))
    codes = {name: run.wait() for name, (_, run) in runs.items()}

    default_dir, default_run = runs["default"]
    assert codes["default"] != 0
    assert "set MODEL.DDP_FIND_UNUSED_PARAMETERS True" in default_run.output
    # It fails on its second step, when DDP finds the first one's reduction unfinished.
    assert len(read_losses(default_dir)) < MAX_ITER

    find_dir, find_run = runs["find"]
    assert codes["find"] == 0, find_run.output[-3000:]
    assert [it for it, _ in read_losses(find_dir)] == list(range(MAX_ITER))
