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
import logging
import os
from typing import NoReturn

import torch

from fima.checkpoint import Checkpointer, CheckpointMismatchError, CheckpointReadError
from fima.checkpoint.backbone_weights import resolve_weights
from fima.config import CfgNode, ConfigError
from fima.data.bad_videos import TooManyBadVideosError
from fima.data.datasets import AnnotationError
from fima.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from fima.engine.defaults import (
    check_before_launch,
    get_user_cfg,
    resolve_device,
    save_config,
    usage_error,
    usage_errors,
)
from fima.engine.launch import check_launch_arguments, launched_by_torchrun, resolve_backend
from fima.evaluation import summary_table, write_results
from fima.evaluation.evaluator import check_evaluator
from fima.model_zoo import DownloadError
from fima.utils import comm

logger = logging.getLogger("fima.train_net")
PROG = "train_net.py"


def setup(args: argparse.Namespace) -> CfgNode:
    """Config from defaults, user modules, the file and the command line; then default_setup."""
    return default_setup(get_user_cfg(args.config_file, args.opts, args.imports), args)


def fail(message: str) -> NoReturn:
    """Stop with one clear line on stderr and exit status 2 (nothing trained)."""
    usage_error(PROG, message)


def evaluate(cfg: CfgNode, args: argparse.Namespace) -> dict[str, float]:
    """``--eval-only``: evaluate a checkpoint (OUTPUT_DIR's newest with ``--resume``, else
    ``MODEL.WEIGHTS``; neither: the random initialisation, the baseline of the evaluators of
    features), log one summary table and write ``OUTPUT_DIR/results.json`` (config file,
    checkpoint and its sha256, metrics, time).

    The checkpoint must fit the model as evaluated: a classifier evaluated by the classification
    evaluator needs a classifier checkpoint, whose head it scores with."""
    # The same initialisation on every rank, for a randomly initialised model under DDP.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.SEED)
        model = DefaultTrainer.build_model(cfg).to(resolve_device(cfg))
    evaluator = DefaultTrainer.build_evaluator(cfg, model)
    if evaluator is None:
        fail(
            f"--eval-only: {cfg.MODEL.META_ARCHITECTURE} defines no evaluator; evaluate its "
            "backbone with a linear-probe or retrieval config (configs/Linear, "
            "configs/Retrieval), or monitor pretraining with TEST.KNN.ENABLED True"
        )
    # The splits the evaluation reads, and their labels, before anything is loaded or inferred.
    check_evaluator(evaluator, model)
    checkpointer = Checkpointer(model, cfg.OUTPUT_DIR)
    # With --resume, OUTPUT_DIR's newest checkpoint, loaded as it is found (read once).
    checkpoint = checkpointer.load_newest(evaluation=True) if args.resume else None
    source = ""  # the URL or model-zoo name that checkpoint was downloaded from
    if checkpoint is None:
        try:
            checkpoint = resolve_weights(cfg.MODEL.WEIGHTS) if cfg.MODEL.WEIGHTS else ""
        except FileNotFoundError as err:
            fail(str(err))
        if not checkpoint and getattr(model, "evaluates_head", False):
            # As for a pretraining checkpoint (VideoClassifier.transfer_weights): a head that
            # was never trained scores at chance, which is no result.
            where = " and OUTPUT_DIR holds no checkpoint" if args.resume else ""
            fail(
                f"--eval-only: MODEL.WEIGHTS is empty{where}, so the classification evaluator "
                "would score with a randomly initialised classifier; give a fine-tuned or "
                "linear-probed checkpoint as MODEL.WEIGHTS (or --resume in its OUTPUT_DIR), or "
                "evaluate a random backbone's features with a retrieval or linear_probe config "
                "(configs/Retrieval, TEST.EVALUATORS)"
            )
        checkpointer.load(checkpoint, checkpointables=[], evaluation=True)
        if checkpoint and checkpoint != os.path.expanduser(cfg.MODEL.WEIGHTS):
            source = cfg.MODEL.WEIGHTS  # resolve_weights downloaded it
    # The evaluation starts: its config replaces the one in OUTPUT_DIR (kept aside).
    save_config(cfg)
    results = DefaultTrainer.test(cfg, model, evaluator)
    if comm.is_main_process():
        path = write_results(cfg.OUTPUT_DIR, results, args.config_file, checkpoint, source)
        logger.info(
            "Evaluation of %s:\n%s\nWritten to %s",
            f"{source} ({checkpoint})" if source else checkpoint or "a randomly initialised model",
            summary_table(results),
            path,
        )
    return results


def main(args: argparse.Namespace) -> dict[str, float]:
    # A bad config or command line: one clear line, nothing trained, nothing written.
    with usage_errors(PROG):
        cfg = setup(args)
    # A dataset that is not where or what the config says (a missing list file or folder, a
    # malformed line), a setting that only the data shows cannot work (too few videos for one
    # batch, unlabelled videos for an evaluation that needs labels), or weights that cannot be
    # read or do not fit the model: one line, as for a bad config; the traceback goes to the log.
    stopped_before_training = (
        AnnotationError,
        TooManyBadVideosError,
        ConfigError,
        FileNotFoundError,
        CheckpointMismatchError,
        CheckpointReadError,
        DownloadError,
    )
    with usage_errors(PROG, stopped_before_training):
        if args.eval_only:
            return evaluate(cfg, args)
        trainer = DefaultTrainer(cfg)
        trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    # launch checks its arguments before it starts anything; what it raises then is a bad
    # command line, said in one line (main's own errors keep their tracebacks).
    with usage_errors(PROG, (ValueError,)):
        backend = resolve_backend(args.dist_backend)
        check_launch_arguments(
            args.num_gpus, args.num_machines, args.machine_rank, args.dist_url, args.dist_timeout
        )
    if args.num_gpus > 1 and not launched_by_torchrun():
        # The processes about to be spawned would each say what is wrong with the config.
        with usage_errors(PROG):
            check_before_launch(args, args.num_gpus * args.num_machines, args.machine_rank == 0)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        timeout=datetime.timedelta(seconds=args.dist_timeout),
        backend=backend,
    )
