#!/usr/bin/env python3
"""The one entry point: pretrain, fine-tune, linear-probe or evaluate from a config.

    python tools/train_net.py --config-file configs/Quickstart/moco_synthetic.yaml
    python tools/train_net.py --config-file X.yaml --resume
    python tools/train_net.py --config-file X.yaml --eval-only MODEL.WEIGHTS path/to/model.pth
    python tools/train_net.py --config-file X.yaml --num-gpus 2
    python tools/train_net.py --import my_backbone.py --config-file X.yaml MODEL.BACKBONE.NAME Mine

``--import`` loads a module (or ``.py`` file) of your own before anything is built, so that what
it registers (``@BACKBONE_REGISTRY.register()``, ...) can be named in the config; if it defines
``add_config(cfg)``, that function adds its config keys.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import os
import sys
from types import ModuleType

from fima.checkpoint import Checkpointer
from fima.config import CfgNode, ConfigError, get_cfg
from fima.engine import DefaultTrainer, default_argument_parser, default_setup, launch


def import_user_module(spec: str) -> ModuleType:
    """Import a dotted module name or a ``.py`` file path."""
    if spec.endswith(".py"):
        path = os.path.abspath(spec)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--import {spec}: no such file")
        name = os.path.splitext(os.path.basename(path))[0]
        module_spec = importlib.util.spec_from_file_location(name, path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
        return module
    return importlib.import_module(spec)


def setup(args: argparse.Namespace) -> CfgNode:
    """Config from defaults, user modules, the file and the command line; then default_setup."""
    cfg = get_cfg()
    for spec in args.imports:
        add_config = getattr(import_user_module(spec), "add_config", None)
        if add_config is not None:
            add_config(cfg)
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    return default_setup(cfg, args)


def main(args: argparse.Namespace) -> dict[str, float]:
    try:
        cfg = setup(args)
    except (ConfigError, KeyError, ValueError, FileNotFoundError, FileExistsError) as err:
        # A bad config or command line: one clear line, nothing trained, nothing written.
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"train_net.py: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.eval_only:
        model = DefaultTrainer.build_model(cfg)
        Checkpointer(model, cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return DefaultTrainer.test(cfg, model)
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        timeout=datetime.timedelta(seconds=args.dist_timeout),
    )
