"""Validation of a finished config, once at start-up, with one-line messages naming the key."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import torch

from fima.config.config import CfgNode


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what is allowed."""


def require(condition: bool, key: str, message: str) -> None:
    """Raise ``ConfigError("KEY: message")`` unless ``condition``."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


def _range(values: Sequence[float], key: str, low: float, high: float) -> None:
    require(
        len(values) == 2 and low <= values[0] <= values[1] <= high,
        key,
        f"must be (min, max) with {low} <= min <= max <= {high}, got {tuple(values)}",
    )


def _probability(value: float, key: str) -> None:
    require(0.0 <= value <= 1.0, key, f"must be a probability in [0, 1], got {value}")


def _is_local_path(path: str) -> bool:
    return "://" not in path


def runs_on_gpu(cfg: CfgNode) -> bool:
    """Whether ``MODEL.DEVICE`` puts this process's model on a GPU."""
    from fima.utils import comm

    device = cfg.MODEL.DEVICE
    return device.startswith("cuda") or (device == "auto" and comm.uses_gpu())


def _device(device: str) -> None:
    """``MODEL.DEVICE``: its form, and that the GPU it names is visible to this process."""
    cuda = re.fullmatch(r"cuda(?::(\d+))?", device)
    require(
        device in ("auto", "cpu") or cuda is not None,
        "MODEL.DEVICE",
        f"must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}",
    )
    if cuda is None:
        return
    require(
        torch.cuda.is_available(),
        "MODEL.DEVICE",
        f"{device}, but this process sees no GPU (torch {torch.__version__}, "
        f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
        "use cpu, or auto (a GPU where there is one)",
    )
    count, index = torch.cuda.device_count(), int(cuda.group(1) or 0)
    require(
        index < count,
        "MODEL.DEVICE",
        f"{device}, but this process sees {count} GPU(s): cuda:0 to cuda:{count - 1}",
    )


def _process_group_backend() -> str | None:
    """The default process group's backend, None without one."""
    from fima.utils import comm

    return comm.backend() if comm.is_distributed() else None


def _multi_device(cfg: CfgNode, world_size: int) -> None:
    """Mixed precision and BatchNorm across devices."""
    solver, model = cfg.SOLVER, cfg.MODEL
    require(
        not (solver.AMP.ENABLED and solver.AMP.DTYPE == "float16") or runs_on_gpu(cfg),
        "SOLVER.AMP.DTYPE",
        "float16 needs a GPU (its gradient scaler is CUDA-only); use bfloat16 on the CPU",
    )
    require(
        not (world_size > 1 and model.DEVICE == "cpu" and _process_group_backend() == "nccl"),
        "MODEL.DEVICE",
        f"cpu, but the {world_size} processes are joined by NCCL, which reduces on GPUs only: "
        "pass --dist-backend gloo",
    )
    require(
        not (
            world_size > 1
            and model.DEVICE.startswith("cuda")
            and _process_group_backend() == "gloo"
        ),
        "MODEL.DEVICE",
        f"{model.DEVICE}, but the {world_size} processes are joined by gloo, which runs them "
        "on the CPU: use --dist-backend nccl (the default where GPUs are visible) or "
        "MODEL.DEVICE cpu",
    )
    groups = model.SPLIT_BN_GROUPS
    require(groups >= 1, "MODEL.SPLIT_BN_GROUPS", f"must be >= 1, got {groups}")
    per_process = solver.IMS_PER_BATCH // (world_size * solver.ACCUM_STEPS)
    require(
        per_process % groups == 0,
        "MODEL.SPLIT_BN_GROUPS",
        f"{groups} must divide the {per_process} clips per process and micro-batch "
        "(SOLVER.IMS_PER_BATCH / (processes x SOLVER.ACCUM_STEPS))",
    )
    require(
        not (model.SYNC_BN and groups > 1),
        "MODEL.SYNC_BN",
        "excludes MODEL.SPLIT_BN_GROUPS > 1 (SyncBatchNorm normalises over the whole batch)",
    )
    require(
        not model.SYNC_BN or runs_on_gpu(cfg),
        "MODEL.SYNC_BN",
        "needs GPUs (SyncBatchNorm has no CPU implementation); on the CPU the key passes "
        "use shuffle-BN across processes",
    )


def validate_cfg(cfg: CfgNode, world_size: int = 1) -> None:
    """Check a finished config before anything is built.

    Checks the framework's keys here, then asks the chosen method, backbone and dataset classes
    for their own checks (a ``validate_config(cfg, world_size)`` classmethod, where they have one).

    Raises:
        ConfigError: the first problem found, as ``"KEY: what is wrong and what is allowed"``.
        KeyError: a registry name (method, backbone, dataset) that is not registered.
    """
    from fima.data.datasets.build import DATASET_REGISTRY
    from fima.modeling.backbone.build import BACKBONE_REGISTRY
    from fima.modeling.ssl.build import SSL_METHOD_REGISTRY

    # torch.manual_seed and the generators take 64-bit seeds; larger ones failed inside a run.
    require(
        cfg.SEED < 2**63,
        "SEED",
        f"must be below 2**63 (negative: drawn at random), got {cfg.SEED}",
    )
    solver = cfg.SOLVER
    batch = solver.IMS_PER_BATCH
    require(batch > 0, "SOLVER.IMS_PER_BATCH", f"must be positive, got {batch}")
    accum = solver.ACCUM_STEPS
    require(accum >= 1, "SOLVER.ACCUM_STEPS", f"must be >= 1, got {accum}")
    require(
        batch % (world_size * accum) == 0,
        "SOLVER.IMS_PER_BATCH",
        f"{batch} must be divisible by the number of processes ({world_size}) times "
        f"SOLVER.ACCUM_STEPS ({accum})",
    )
    require(solver.BASE_LR > 0, "SOLVER.BASE_LR", f"must be positive, got {solver.BASE_LR}")
    require(solver.WEIGHT_DECAY >= 0, "SOLVER.WEIGHT_DECAY", "must be >= 0")
    require(solver.OPTIMIZER in ("SGD", "AdamW"), "SOLVER.OPTIMIZER", "must be 'SGD' or 'AdamW'")
    if solver.OPTIMIZER == "SGD":
        require(
            0 <= solver.MOMENTUM < 1,
            "SOLVER.MOMENTUM",
            f"must be in [0, 1), got {solver.MOMENTUM}",
        )
        require(
            not solver.NESTEROV or solver.MOMENTUM > 0,
            "SOLVER.NESTEROV",
            "needs SOLVER.MOMENTUM > 0",
        )
    require(
        solver.MAX_EPOCHS > 0 or solver.MAX_ITER > 0,
        "SOLVER.MAX_EPOCHS",
        "must be positive (or set SOLVER.MAX_ITER > 0)",
    )
    require(solver.MAX_ITER >= 0, "SOLVER.MAX_ITER", f"must be >= 0, got {solver.MAX_ITER}")
    require(
        solver.LR_SCHEDULER in ("cosine", "step"),
        "SOLVER.LR_SCHEDULER",
        f"must be 'cosine' or 'step', got {solver.LR_SCHEDULER!r}",
    )
    require(
        solver.SCHEDULE_UNIT in ("epoch", "iter"),
        "SOLVER.SCHEDULE_UNIT",
        f"must be 'epoch' or 'iter', got {solver.SCHEDULE_UNIT!r}",
    )
    require(
        all(type(s) is int and s > 0 for s in solver.STEPS)
        and list(solver.STEPS) == sorted(solver.STEPS),
        "SOLVER.STEPS",
        f"must be increasing positive epochs, got {tuple(solver.STEPS)}",
    )
    require(
        solver.CHECKPOINT_PERIOD > 0,
        "SOLVER.CHECKPOINT_PERIOD",
        f"must be positive, got {solver.CHECKPOINT_PERIOD}",
    )
    require(solver.MAX_TO_KEEP >= 0, "SOLVER.MAX_TO_KEEP", "must be >= 0 (0 keeps all)")
    require(
        solver.AMP.DTYPE in ("auto", "bfloat16", "float16"),
        "SOLVER.AMP.DTYPE",
        f"must be 'auto', 'bfloat16' or 'float16', got {solver.AMP.DTYPE!r}",
    )
    _device(cfg.MODEL.DEVICE)
    _multi_device(cfg, world_size)

    inp = cfg.INPUT
    require(inp.NUM_FRAMES > 0, "INPUT.NUM_FRAMES", f"must be positive, got {inp.NUM_FRAMES}")
    require(inp.SAMPLING_RATE > 0, "INPUT.SAMPLING_RATE", "must be positive")
    require(inp.CROP_SIZE > 0, "INPUT.CROP_SIZE", f"must be positive, got {inp.CROP_SIZE}")
    _range(inp.CROP_SCALE, "INPUT.CROP_SCALE", 1e-6, 1.0)
    _range(inp.CROP_RATIO, "INPUT.CROP_RATIO", 1e-6, float("inf"))
    _probability(inp.FLIP_PROB, "INPUT.FLIP_PROB")
    require(0 < inp.TEST_CROP_FRACTION <= 1, "INPUT.TEST_CROP_FRACTION", "must be in (0, 1]")
    require(len(inp.MEAN) == 3 and len(inp.STD) == 3, "INPUT.MEAN/STD", "need 3 values each")
    require(all(s > 0 for s in inp.STD), "INPUT.STD", "must be positive")
    aug = inp.AUG
    _probability(aug.GRAYSCALE_PROB, "INPUT.AUG.GRAYSCALE_PROB")
    _probability(aug.COLOR_JITTER_PROB, "INPUT.AUG.COLOR_JITTER_PROB")
    _probability(aug.BLUR_PROB, "INPUT.AUG.BLUR_PROB")
    require(
        len(aug.COLOR_JITTER) == 4
        and all(v >= 0 for v in aug.COLOR_JITTER)
        and aug.COLOR_JITTER[3] <= 0.5,
        "INPUT.AUG.COLOR_JITTER",
        "must be (brightness, contrast, saturation, hue) >= 0 with hue <= 0.5",
    )
    _range(aug.BLUR_SIGMA, "INPUT.AUG.BLUR_SIGMA", 1e-6, float("inf"))

    data = cfg.DATA
    require(data.NUM_WORKERS >= 0, "DATA.NUM_WORKERS", "must be >= 0")
    require(0 <= data.MAX_BAD_FRACTION <= 1, "DATA.MAX_BAD_FRACTION", "must be in [0, 1]")
    require(data.DECODE_RETRIES >= 0, "DATA.DECODE_RETRIES", "must be >= 0")
    require(data.DECODE_THREADS >= 0, "DATA.DECODE_THREADS", "must be >= 0 (0: automatic)")
    require(data.MIN_VIDEO_FRAMES >= 1, "DATA.MIN_VIDEO_FRAMES", "must be >= 1")
    require(inp.TRAIN_SHORT_SIDE >= 0, "INPUT.TRAIN_SHORT_SIDE", "must be >= 0 (0: keep)")
    require(inp.TEST_SHORT_SIDE >= 0, "INPUT.TEST_SHORT_SIDE", "must be >= 0 (0: keep)")
    dataset_class = DATASET_REGISTRY.get(data.DATASET)
    layout = getattr(dataset_class, "LAYOUT", "see DATASETS.md")
    if data.ROOT and data.DATASET != "SyntheticMotion":
        require(
            os.path.isdir(os.path.expanduser(data.ROOT)),
            "DATA.ROOT",
            f"directory {data.ROOT!r} does not exist ({layout})",
        )
    # The transfer configs leave DATA.ROOT to the command line; forgetting it must stop the run
    # here, before config.yaml and the log are written, not once the loader is built.
    require(
        bool(data.ROOT) or not getattr(dataset_class, "ROOT_REQUIRED", False),
        "DATA.ROOT",
        f"is empty: set it to the {data.DATASET} root ({layout})",
    )
    from fima.model_zoo.model_zoo import PREFIX, zoo_file_problem

    if cfg.MODEL.WEIGHTS.startswith(PREFIX):
        problem = zoo_file_problem(cfg.MODEL.WEIGHTS)
        require(problem is None, "MODEL.WEIGHTS", problem or "")
    if (
        cfg.MODEL.WEIGHTS
        and _is_local_path(cfg.MODEL.WEIGHTS)
        and cfg.MODEL.WEIGHTS.lower().endswith((".pth", ".pt", ".pkl"))
    ):
        require(
            os.path.isfile(os.path.expanduser(cfg.MODEL.WEIGHTS)),
            "MODEL.WEIGHTS",
            f"file {cfg.MODEL.WEIGHTS!r} does not exist",
        )
    require(cfg.TEST.NUM_CLIPS > 0, "TEST.NUM_CLIPS", "must be positive")
    require(
        cfg.TEST.IMS_PER_BATCH > 0,
        "TEST.IMS_PER_BATCH",
        f"must be positive, got {cfg.TEST.IMS_PER_BATCH}",
    )
    precise_bn = cfg.TEST.PRECISE_BN
    require(precise_bn.NUM_ITER > 0, "TEST.PRECISE_BN.NUM_ITER", "must be positive")
    require(
        not precise_bn.ENABLED
        or getattr(SSL_METHOD_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE), "PRECISE_BN", False),
        "TEST.PRECISE_BN.ENABLED",
        f"{cfg.MODEL.META_ARCHITECTURE} does not support it (its forward has side effects, as a "
        "MoCo queue's); VideoClassifier does",
    )
    require(
        cfg.TEST.NUM_SPATIAL_CROPS in (1, 3),
        "TEST.NUM_SPATIAL_CROPS",
        f"must be 1 (centre) or 3 (both ends and centre), got {cfg.TEST.NUM_SPATIAL_CROPS}",
    )
    require(cfg.TEST.EVAL_PERIOD >= 0, "TEST.EVAL_PERIOD", "must be >= 0 (0: at the end only)")
    require(bool(cfg.OUTPUT_DIR), "OUTPUT_DIR", "must not be empty")
    require(cfg.VIS_PERIOD >= 0, "VIS_PERIOD", f"must be >= 0 (0: off), got {cfg.VIS_PERIOD}")
    require(cfg.VIS_NUM_CLIPS >= 1, "VIS_NUM_CLIPS", f"must be >= 1, got {cfg.VIS_NUM_CLIPS}")
    require(cfg.LOG_PERIOD > 0, "LOG_PERIOD", f"must be positive, got {cfg.LOG_PERIOD}")

    # The backbone's own keys first: its strides and the method's checks (FIMA runs it) use them.
    backbone_cls = BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME)
    _component_checks(backbone_cls, cfg, world_size)
    strides = getattr(backbone_cls, "output_strides", None)
    if strides is not None:
        temporal, spatial = strides(cfg)
        require(
            spatial <= inp.CROP_SIZE,
            "INPUT.CROP_SIZE",
            f"{inp.CROP_SIZE} is smaller than the spatial stride {spatial} of "
            f"{cfg.MODEL.BACKBONE.NAME}; use at least {spatial}",
        )
        require(
            temporal <= inp.NUM_FRAMES,
            "INPUT.NUM_FRAMES",
            f"{inp.NUM_FRAMES} is shorter than the temporal stride {temporal} of "
            f"{cfg.MODEL.BACKBONE.NAME}; use at least {temporal}",
        )
    _component_checks(SSL_METHOD_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE), cfg, world_size)
    _component_checks(DATASET_REGISTRY.get(cfg.DATA.DATASET), cfg, world_size)


def validate_cfg_without_data(cfg: CfgNode, world_size: int = 1) -> None:
    """:func:`validate_cfg` for a tool that builds the model but reads no dataset (the train
    benchmark's synthetic batches, ``tools/visualize.py``'s own videos): the dataset's settings
    (``DATA.DATASET``, ``DATA.ROOT`` and the dataset's own checks) are left out.

    Raises:
        ConfigError: as :func:`validate_cfg`.
    """
    checked = cfg.clone()
    checked.defrost()
    checked.DATA.DATASET, checked.DATA.ROOT = "SyntheticMotion", ""
    validate_cfg(checked, world_size)


def _component_checks(component: type, cfg: CfgNode, world_size: int) -> None:
    """A registered class's own ``validate_config(cfg, world_size)``, where it has one."""
    check = getattr(component, "validate_config", None)
    if check is not None:
        check(cfg, world_size)
