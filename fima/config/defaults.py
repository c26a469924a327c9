"""Framework-wide defaults. Each method, backbone, head and dataset adds its own section next to
its code (``add_*_config``), and :func:`fima.config.get_cfg` collects them."""

from fima.config.config import CfgNode as CN

_C = CN()
_C.VERSION = 1

# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
_C.MODEL = CN()
# A name in SSL_METHOD_REGISTRY: the method builds its own backbone and heads.
_C.MODEL.META_ARCHITECTURE = "MoCo"
# "auto" takes the GPU of this process when there is one, else the CPU.
_C.MODEL.DEVICE = "auto"
# Weights to initialise from: a fima checkpoint path/URL or a model-zoo name. Empty: from scratch.
_C.MODEL.WEIGHTS = ""
# Run encoders in channels_last_3d memory format (faster convolutions on CPU and GPU).
_C.MODEL.CHANNELS_LAST = True
# BatchNorm across devices (fima/modeling/batch_shuffle.py). The key encoder's passes always
# shuffle clips between BatchNorm groups (shuffle-BN): across ranks under DDP, and across the
# SPLIT_BN_GROUPS groups that each process emulates. SPLIT_BN_GROUPS = G > 1 normalises G groups
# of every batch separately, to reproduce a G-device run on one device; it must divide the clips
# per process and micro-batch (SOLVER.IMS_PER_BATCH / (processes x SOLVER.ACCUM_STEPS)).
_C.MODEL.SPLIT_BN_GROUPS = 1
# True: SyncBatchNorm over all ranks (GPUs only; no shuffle is needed then). Excludes
# SPLIT_BN_GROUPS > 1.
_C.MODEL.SYNC_BN = False
# DistributedDataParallel's find_unused_parameters: True for a model with parameters that some
# steps leave without a gradient (a backbone's unused classifier, a branch a method skips). Off by
# default: finding them costs a traversal of the autograd graph every step.
_C.MODEL.DDP_FIND_UNUSED_PARAMETERS = False

_C.MODEL.BACKBONE = CN()
# A name in BACKBONE_REGISTRY (I3D, R2Plus1D18, R3D18, Tiny3D, or your own).
_C.MODEL.BACKBONE.NAME = "I3D"

_C.MODEL.PROJECTOR = CN()
# A name in HEAD_REGISTRY. The projector maps backbone features to L2-normalised contrastive
# embeddings: MoCo calls its embed(feat [N, C, T, H, W]) -> [N, D], FIMA also its
# project(x [N, C, H, W]) -> [N, D, H, W] (one embedding per cell), as ProjectionHead does.
_C.MODEL.PROJECTOR.NAME = "ProjectionHead"
_C.MODEL.PROJECTOR.HIDDEN_DIM = 1024
_C.MODEL.PROJECTOR.OUT_DIM = 128

# ---------------------------------------------------------------------------------------------
# Input: what a clip is and the CPU-side spatial augmentation (RECIPE.md §1)
# ---------------------------------------------------------------------------------------------
_C.INPUT = CN()
_C.INPUT.NUM_FRAMES = 16
# Stride between sampled frames; a pretraining window spans NUM_FRAMES * SAMPLING_RATE frames.
_C.INPUT.SAMPLING_RATE = 2
_C.INPUT.CROP_SIZE = 224
_C.INPUT.CROP_SCALE = (0.2, 1.0)
_C.INPUT.CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_C.INPUT.FLIP_PROB = 0.5
# Test-time: resize the short side to TEST_SHORT_SIDE, take a centre crop of TEST_CROP_FRACTION of
# it, resize that to CROP_SIZE (RECIPE.md §9: 256 x 0.875).
_C.INPUT.TEST_SHORT_SIDE = 256
_C.INPUT.TEST_CROP_FRACTION = 0.875
_C.INPUT.MEAN = (0.43216, 0.394666, 0.37645)
_C.INPUT.STD = (0.22803, 0.22145, 0.216989)

# Device-side video augmentation, the same parameters on every frame of a clip (RECIPE.md §2).
_C.INPUT.AUG = CN()
_C.INPUT.AUG.GRAYSCALE_PROB = 0.2
# brightness, contrast, saturation, hue
_C.INPUT.AUG.COLOR_JITTER = (0.4, 0.4, 0.4, 0.1)
_C.INPUT.AUG.COLOR_JITTER_PROB = 0.8
_C.INPUT.AUG.BLUR_PROB = 0.5
_C.INPUT.AUG.BLUR_SIGMA = (0.1, 2.0)
# Kernel size = the odd number nearest BLUR_KERNEL_FRACTION * CROP_SIZE (at least 3).
_C.INPUT.AUG.BLUR_KERNEL_FRACTION = 0.1
# True: sigma drawn per clip (the fix). False: drawn once when the model is built (reference).
_C.INPUT.AUG.BLUR_SIGMA_PER_CLIP = True

# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
_C.DATA = CN()
# A name in DATASET_REGISTRY.
_C.DATA.DATASET = "SyntheticMotion"
# Dataset root. Empty for the synthetic dataset means the cache directory (see DATASETS.md).
_C.DATA.ROOT = ""
# Official split/fold (UCF101, HMDB51: 1, 2 or 3).
_C.DATA.SPLIT = 1
_C.DATA.TRAIN_SPLIT = "train"
_C.DATA.TEST_SPLIT = "test"
_C.DATA.NUM_WORKERS = 2
# Bad videos are retried and skipped; more than this fraction of bad videos seen stops the run.
_C.DATA.MAX_BAD_FRACTION = 0.05
_C.DATA.DECODE_RETRIES = 2

# ---------------------------------------------------------------------------------------------
# Solver
# ---------------------------------------------------------------------------------------------
_C.SOLVER = CN()
_C.SOLVER.OPTIMIZER = "SGD"
_C.SOLVER.BASE_LR = 0.01
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.NESTEROV = False
_C.SOLVER.WEIGHT_DECAY = 1e-4
# Clips per optimizer step summed over all processes (must divide by the world size).
_C.SOLVER.IMS_PER_BATCH = 64
_C.SOLVER.MAX_EPOCHS = 100
# If > 0, the run length in iterations, overriding MAX_EPOCHS (benchmarks, tests, quick starts).
_C.SOLVER.MAX_ITER = 0
# "cosine" or "step" (multiply by GAMMA at each epoch in STEPS).
_C.SOLVER.LR_SCHEDULER = "cosine"
_C.SOLVER.STEPS = ()
_C.SOLVER.GAMMA = 0.1
# "epoch": the learning rate changes at epoch boundaries (the reference); "iter": every step.
_C.SOLVER.SCHEDULE_UNIT = "epoch"
_C.SOLVER.CHECKPOINT_PERIOD = 1000
# Periodic checkpoints kept on disk (the final one is always kept). 0 keeps all.
_C.SOLVER.MAX_TO_KEEP = 3
# Micro-batches per optimizer step: each process runs IMS_PER_BATCH / (world size * ACCUM_STEPS)
# clips at a time and the gradients are summed over them (DDP synchronises only the last one).
# Queues and the key-encoder momentum update once per optimizer step: the key encoder is the
# same for all micro-batches of a step, and all their keys are enqueued after the step, so
# every micro-batch sees the same queue (as one large batch would; BatchNorm statistics are per
# micro-batch, though).
_C.SOLVER.ACCUM_STEPS = 1
_C.SOLVER.AMP = CN()
# Autocast the encoders to AMP.DTYPE; losses, masks and queues stay in float32. Where the device
# would only emulate AMP.DTYPE (a CPU without AVX512-BF16/AMX), the run computes in float32 and
# says so in the log: emulated bfloat16 is several times slower.
_C.SOLVER.AMP.ENABLED = True
# "bfloat16" (CPUs with AMX or AVX512-BF16, GPUs from Ampere on), "float16" (GPU only, with a
# gradient scaler), or "auto": float16 on a GPU, bfloat16 elsewhere. On an H200, float16 FIMA steps
# ran 1.3x faster than bfloat16, which ran slower than float32 (BENCHMARKS.md).
_C.SOLVER.AMP.DTYPE = "auto"

# ---------------------------------------------------------------------------------------------
# Test / evaluation
# ---------------------------------------------------------------------------------------------
_C.TEST = CN()
# Evaluate every EVAL_PERIOD iterations and at the end; 0 only at the end (if an evaluator exists).
_C.TEST.EVAL_PERIOD = 0
_C.TEST.NUM_CLIPS = 10
# Spatial crops per clip: 1, the centre crop (RECIPE.md §9); 3, also the two ends of the long side
# (SlowFast's three-crop test, usual for Kinetics-400): a video is then NUM_CLIPS x 3 views.
_C.TEST.NUM_SPATIAL_CROPS = 1
# Precise BatchNorm statistics (fvcore's update_bn_stats; detectron2's TEST.PRECISE_BN, SlowFast's
# BN.USE_PRECISE_STATS): before each evaluation and at the last iteration, before the checkpoint,
# the running statistics are recomputed with the weights fixed, as the average over NUM_ITER
# training batches, instead of the moving average over past weights. Methods that declare
# PRECISE_BN (VideoClassifier: fine-tuning; a linear probe's frozen backbone keeps its own).
_C.TEST.PRECISE_BN = CN()
_C.TEST.PRECISE_BN.ENABLED = False
_C.TEST.PRECISE_BN.NUM_ITER = 200
# Test videos per batch summed over all processes (each takes IMS_PER_BATCH / processes, at
# least 1), each as NUM_CLIPS x NUM_SPATIAL_CROPS views.
_C.TEST.IMS_PER_BATCH = 8

# ---------------------------------------------------------------------------------------------
# Misc
# ---------------------------------------------------------------------------------------------
_C.OUTPUT_DIR = "./output"
# Negative: draw a seed at start-up (it is logged and written into OUTPUT_DIR/config.yaml).
_C.SEED = -1
_C.LOG_PERIOD = 20
# cuDNN autotuning (torch.backends.cudnn.benchmark): each convolution shape is timed against every
# algorithm once and the fastest kept. Off by default: on an H200 it did not speed up a FIMA I3D
# step (bf16, 16x224x224, batch 8: 0.99x, BENCHMARKS.md) and it makes GPU runs less repeatable.
# Ignored on the CPU.
_C.CUDNN_BENCHMARK = False
