"""Training engine: the loop, hooks, ``DefaultTrainer`` and ``launch``."""

from fima.engine.defaults import (
    DefaultTrainer,
    create_ddp_model,
    default_argument_parser,
    default_setup,
)
from fima.engine.hooks import HookBase
from fima.engine.launch import launch
from fima.engine.train_loop import SimpleTrainer, TrainerBase

__all__ = [
    "DefaultTrainer",
    "HookBase",
    "SimpleTrainer",
    "TrainerBase",
    "create_ddp_model",
    "default_argument_parser",
    "default_setup",
    "launch",
]
