"""get_cfg, _BASE_ inheritance, strict keys, safe YAML and start-up validation."""

from __future__ import annotations

import re
import sys

import pytest
import torch

from fima.config import ConfigError, get_cfg, validate_cfg
from tests.conftest import tiny_cfg


def test_defaults_follow_the_recipe() -> None:
    cfg = get_cfg()
    assert cfg.MODEL.MOCO.TEMPERATURE == 0.1
    assert cfg.MODEL.MOCO.MOMENTUM == 0.999
    assert cfg.INPUT.NUM_FRAMES * cfg.INPUT.SAMPLING_RATE == 32
    assert cfg.INPUT.AUG.COLOR_JITTER == (0.4, 0.4, 0.4, 0.1)
    assert cfg.SOLVER.MOMENTUM == 0.9 and cfg.SOLVER.WEIGHT_DECAY == 1e-4


def test_base_inheritance_and_override(tmp_path) -> None:
    (tmp_path / "base.yaml").write_text("SOLVER:\n  BASE_LR: 0.5\n  IMS_PER_BATCH: 8\n")
    (tmp_path / "child.yaml").write_text('_BASE_: "base.yaml"\nSOLVER:\n  IMS_PER_BATCH: 4\n')
    cfg = get_cfg()
    cfg.merge_from_file(str(tmp_path / "child.yaml"))
    assert cfg.SOLVER.BASE_LR == 0.5
    assert cfg.SOLVER.IMS_PER_BATCH == 4


def test_unknown_key_in_file_names_key_and_file(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("SOLVER:\n  BASE_LRR: 0.1\n")
    with pytest.raises(KeyError, match=r"SOLVER\.BASE_LRR.*bad\.yaml"):
        get_cfg().merge_from_file(str(path))


def test_unknown_key_on_command_line() -> None:
    with pytest.raises(KeyError, match="MODEL.NOPE"):
        get_cfg().merge_from_list(["MODEL.NOPE", "1"])


def test_integers_for_float_keys_are_floats(tmp_path) -> None:
    (tmp_path / "a.yaml").write_text(
        "SOLVER:\n  BASE_LR: 1\nMODEL:\n  FIMA:\n    DENSE_WEIGHT: 0\n"
    )
    cfg = get_cfg()
    cfg.merge_from_file(str(tmp_path / "a.yaml"))
    cfg.merge_from_list(["SOLVER.WEIGHT_DECAY", "0", "MODEL.FIMA.LOCAL_WEIGHT", 2])
    values = (cfg.SOLVER.BASE_LR, cfg.MODEL.FIMA.DENSE_WEIGHT, cfg.SOLVER.WEIGHT_DECAY)
    assert values == (1.0, 0.0, 0.0) and cfg.MODEL.FIMA.LOCAL_WEIGHT == 2.0
    assert all(type(v) is float for v in (*values, cfg.MODEL.FIMA.LOCAL_WEIGHT))
    # Only integers: text, booleans and floats for integer keys still fail the type check.
    for key, value in (("SOLVER.BASE_LR", "abc"), ("SOLVER.BASE_LR", "True"),
                       ("SOLVER.IMS_PER_BATCH", "2.0")):  # fmt: skip
        with pytest.raises(ValueError, match=f"Type mismatch .* {key}"):
            get_cfg().merge_from_list([key, value])


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("INPUT.CROP_SCALE", "('a','b')", "INPUT.CROP_SCALE: must hold float values"),
        ("INPUT.MEAN", "('a','b','c')", "INPUT.MEAN: must hold float values"),
        ("INPUT.MEAN", "(0.5, True, 0.5)", "INPUT.MEAN: must hold float values"),
        ("TEST.RETRIEVAL.TOPK", "(1, 2.5)", "TEST.RETRIEVAL.TOPK: must hold int values"),
        ("DATA.SYNTHETIC.CLASSES", "(1, 2)", "DATA.SYNTHETIC.CLASSES: must hold str values"),
    ],
)
def test_tuple_elements_have_the_defaults_type(tmp_path, key: str, value: str, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        get_cfg().merge_from_list([key, value])
    section, leaf = key.rsplit(".", 1)
    yaml_text = (
        "".join(f"{'  ' * depth}{part}:\n" for depth, part in enumerate(section.split(".")))
        + f"{'  ' * (section.count('.') + 1)}{leaf}: {value}\n"
    )
    (tmp_path / "bad.yaml").write_text(yaml_text)
    with pytest.raises(ValueError, match=re.escape(message) + r".*bad\.yaml"):
        get_cfg().merge_from_file(str(tmp_path / "bad.yaml"))


def test_integers_in_a_float_tuple_are_floats(tmp_path) -> None:
    cfg = get_cfg()
    cfg.merge_from_list(["INPUT.CROP_SCALE", "(0, 1)", "TEST.RETRIEVAL.TOPK", "(1, 5)"])
    assert cfg.INPUT.CROP_SCALE == (0.0, 1.0) and type(cfg.INPUT.CROP_SCALE[0]) is float
    assert cfg.TEST.RETRIEVAL.TOPK == (1, 5)
    (tmp_path / "a.yaml").write_text("INPUT:\n  MEAN: [0, 1, 0.5]\n")
    cfg.merge_from_file(str(tmp_path / "a.yaml"))
    assert cfg.INPUT.MEAN == (0.0, 1.0, 0.5) and all(type(v) is float for v in cfg.INPUT.MEAN)


@pytest.mark.parametrize(
    ("overrides", "options"),
    [
        (["SOLVER.BASE_LR", "0.1", "--resume"], "--resume"),
        (["SOLVER.BASE_LR", "0.1", "--num-gpus", "2"], "--num-gpus"),
        (["SOLVER.BASE_LR", "0.1", "--resume", "--num-gpus", "2"], "--resume --num-gpus"),
    ],
)
def test_options_after_the_overrides_are_a_clear_error(overrides: list, options: str) -> None:
    """argparse.REMAINDER leaves flags given after KEY VALUE pairs among the pairs."""
    with pytest.raises(ValueError, match=f"options \\({options}\\) must come before the KEY VALUE"):
        get_cfg().merge_from_list(overrides)


def test_python_tags_are_refused(tmp_path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("SOLVER:\n  BASE_LR: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(ValueError, match="Cannot read config"):
        get_cfg().merge_from_file(str(path))
    with pytest.raises(ValueError, match="safely"):
        get_cfg().merge_from_file(str(path), allow_unsafe=True)


def test_missing_and_empty_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        get_cfg().merge_from_file(str(tmp_path / "nope.yaml"))
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ValueError, match="mapping"):
        get_cfg().merge_from_file(str(tmp_path / "empty.yaml"))


def test_dump_round_trips(tmp_path) -> None:
    cfg = tiny_cfg()
    path = tmp_path / "config.yaml"
    path.write_text(cfg.dump())
    again = get_cfg()
    again.merge_from_file(str(path))
    assert again == cfg


def test_tiny_config_is_valid() -> None:
    validate_cfg(tiny_cfg())


@pytest.mark.parametrize(
    ("key", "value", "world", "message"),
    [
        ("SOLVER.IMS_PER_BATCH", 6, 4, "SOLVER.IMS_PER_BATCH: 6 must be divisible"),
        ("SOLVER.IMS_PER_BATCH", 0, 1, "SOLVER.IMS_PER_BATCH: must be positive"),
        ("SOLVER.BASE_LR", -1.0, 1, "SOLVER.BASE_LR"),
        ("SOLVER.LR_SCHEDULER", "linear", 1, "SOLVER.LR_SCHEDULER: must be 'cosine' or 'step'"),
        ("INPUT.CROP_SIZE", 8, 1, "INPUT.CROP_SIZE: 8 is smaller than the spatial stride 16"),
        ("INPUT.NUM_FRAMES", 2, 1, "INPUT.NUM_FRAMES: 2 is shorter than the temporal stride 4"),
        ("INPUT.FLIP_PROB", 1.5, 1, "INPUT.FLIP_PROB: must be a probability"),
        ("INPUT.CROP_SCALE", (0.8, 0.2), 1, "INPUT.CROP_SCALE"),
        ("MODEL.MOCO.QUEUE_SIZE", 4, 1, "MODEL.MOCO.QUEUE_SIZE: 4 is smaller than the 8 keys"),
        ("MODEL.MOCO.MOMENTUM", 1.0, 1, "MODEL.MOCO.MOMENTUM"),
        ("DATA.MAX_BAD_FRACTION", 2.0, 1, "DATA.MAX_BAD_FRACTION"),
        ("SOLVER.AMP.DTYPE", "int8", 1, "SOLVER.AMP.DTYPE"),
        ("TEST.NUM_SPATIAL_CROPS", 2, 1, "TEST.NUM_SPATIAL_CROPS: must be 1 (centre) or 3"),
        ("DATA.SYNTHETIC.CLASSES", ("SlideUp", "Teleport"), 1, "Teleport"),
        ("DATA.SYNTHETIC.CLASSES", ("SlideUp",), 1, "'SlideUp', 'Still'], got ['SlideUp']"),
        ("DATA.SYNTHETIC.PERIOD", (0.0, 10.0), 1, "DATA.SYNTHETIC.PERIOD must be (low, high)"),
        ("DATA.SYNTHETIC.OBJECT_SIZE", (0.5, 1.5), 1, "DATA.SYNTHETIC.OBJECT_SIZE"),
        ("DATA.SYNTHETIC.SPEED", (0.02, 0.01), 1, "DATA.SYNTHETIC.SPEED"),
        ("DATA.SYNTHETIC.NOISE", -0.1, 1, "DATA.SYNTHETIC.DISTRACTORS and NOISE must be >= 0"),
        ("SEED", 2**64, 1, "SEED: must be below 2**63 (negative: drawn at random), got"),
        ("LOG_PERIOD", 0, 1, "LOG_PERIOD: must be positive, got 0"),
        ("LOG_PERIOD", -5, 1, "LOG_PERIOD: must be positive, got -5"),
        ("SOLVER.CHECKPOINT_PERIOD", 0, 1, "SOLVER.CHECKPOINT_PERIOD: must be positive, got 0"),
        ("VIS_PERIOD", -1, 1, "VIS_PERIOD: must be >= 0 (0: off)"),
        ("TEST.EVAL_PERIOD", -1, 1, "TEST.EVAL_PERIOD: must be >= 0 (0: at the end only)"),
        ("TEST.IMS_PER_BATCH", 0, 1, "TEST.IMS_PER_BATCH: must be positive, got 0"),
        ("SOLVER.MOMENTUM", -1.0, 1, "SOLVER.MOMENTUM: must be in [0, 1), got -1.0"),
        ("SOLVER.STEPS", ("a", "b"), 1, "SOLVER.STEPS: must be increasing positive epochs"),
        ("MODEL.PROJECTOR.OUT_DIM", 0, 1, "MODEL.PROJECTOR.OUT_DIM: must be positive, got 0"),
        ("MODEL.PROJECTOR.HIDDEN_DIM", -1, 1, "MODEL.PROJECTOR.HIDDEN_DIM: must be positive"),
        ("MODEL.TINY3D.WIDTHS", (16, 32), 1, "MODEL.TINY3D.WIDTHS: WIDTHS, TEMPORAL_STRIDES and "
         "SPATIAL_STRIDES need one value per stage (the same length >= 1), got 2, 4 and 4"),
        ("MODEL.TINY3D.SPATIAL_STRIDES", (0, 2, 2, 2), 1,
         "MODEL.TINY3D.SPATIAL_STRIDES: must be positive, got (0, 2, 2, 2)"),
        ("MODEL.TINY3D.WIDTHS", (8, 0, 16, 32), 1, "MODEL.TINY3D.WIDTHS: must be positive"),
        ("MODEL.DEVICE", "gpu", 1, "MODEL.DEVICE: must be 'auto', 'cpu' or 'cuda[:N]'"),
        ("MODEL.DEVICE", "cuda:x", 1, "MODEL.DEVICE: must be 'auto', 'cpu' or 'cuda[:N]'"),
    ],
)  # fmt: skip
def test_bad_values_fail_naming_the_key(key: str, value, world: int, message: str) -> None:
    cfg = tiny_cfg(**{key: value})
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_cfg(cfg, world_size=world)


def test_a_period_of_0_is_off_where_documented() -> None:
    """VIS_PERIOD 0: no pictures; TEST.EVAL_PERIOD 0: evaluate at the end only. LOG_PERIOD and
    SOLVER.CHECKPOINT_PERIOD have no such meaning (see above)."""
    validate_cfg(tiny_cfg(**{"VIS_PERIOD": 0, "TEST.EVAL_PERIOD": 0}))


def test_nesterov_needs_momentum() -> None:
    cfg = tiny_cfg(**{"SOLVER.NESTEROV": True, "SOLVER.MOMENTUM": 0.0})
    with pytest.raises(ConfigError, match="SOLVER.NESTEROV: needs SOLVER.MOMENTUM > 0"):
        validate_cfg(cfg)
    # AdamW has no momentum setting: SOLVER.MOMENTUM is not read.
    validate_cfg(tiny_cfg(**{"SOLVER.OPTIMIZER": "AdamW", "SOLVER.MOMENTUM": -1.0}))


@pytest.mark.parametrize(
    ("device", "gpus", "message"),
    [
        ("cuda", 0, "MODEL.DEVICE: cuda, but this process sees no GPU"),
        ("cuda:0", 0, "MODEL.DEVICE: cuda:0, but this process sees no GPU"),
        ("cuda:3", 2, "MODEL.DEVICE: cuda:3, but this process sees 2 GPU(s): cuda:0 to cuda:1"),
        ("cuda:1", 2, None),
        ("cuda", 1, None),
        ("cpu", 0, None),
    ],
)
def test_a_gpu_device_must_be_visible(monkeypatch, device: str, gpus: int, message) -> None:
    """Checked against what torch sees, mocked here (the suite hides its GPUs)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    cfg = tiny_cfg(**{"MODEL.DEVICE": device, "SOLVER.AMP.ENABLED": False})
    if message is None:
        validate_cfg(cfg)
    else:
        with pytest.raises(ConfigError, match=re.escape(message)):
            validate_cfg(cfg)


def test_missing_paths_fail(tmp_path) -> None:
    cfg = tiny_cfg(**{"DATA.DATASET": "UCF101", "DATA.ROOT": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError, match="DATA.ROOT: directory .*nowhere.* does not exist"):
        validate_cfg(cfg)
    for name in ("missing.pth", "MISSING.PTH"):
        cfg = tiny_cfg(**{"MODEL.WEIGHTS": str(tmp_path / name)})
        with pytest.raises(ConfigError, match=f"MODEL.WEIGHTS: file .*{name}.* does not exist"):
            validate_cfg(cfg)


@pytest.mark.parametrize("dataset", ["UCF101", "HMDB51", "Kinetics400"])
def test_an_empty_root_of_a_dataset_that_needs_one_fails_at_start_up(tmp_path, dataset) -> None:
    # The transfer configs leave DATA.ROOT to the command line: forgetting it is a config error
    # (nothing written), not a failure once the model and the loader are being built.
    with pytest.raises(ConfigError, match=f"DATA.ROOT: is empty: set it to the {dataset} root"):
        validate_cfg(tiny_cfg(**{"DATA.DATASET": dataset, "DATA.ROOT": ""}))
    # VideoList may take its list files from DATA.VIDEO_LIST instead.
    (tmp_path / "train.txt").write_text("a.mp4 0\n")
    validate_cfg(
        tiny_cfg(
            **{"DATA.DATASET": "VideoList", "DATA.VIDEO_LIST.TRAIN": str(tmp_path / "train.txt")}
        )
    )


def test_unknown_registry_name_lists_known_ones() -> None:
    cfg = tiny_cfg(**{"MODEL.BACKBONE.NAME": "ResNeXt"})
    with pytest.raises(KeyError, match="Registered: .*I3D.*R2Plus1D18"):
        validate_cfg(cfg)


def test_a_missing_base_names_the_file_that_refers_to_it(tmp_path) -> None:
    (tmp_path / "child.yaml").write_text('_BASE_: "middle.yaml"\n')
    (tmp_path / "middle.yaml").write_text('_BASE_: "gone.yaml"\n')
    with pytest.raises(FileNotFoundError, match=r"gone\.yaml \(the _BASE_ of .*middle\.yaml\)"):
        get_cfg().merge_from_file(str(tmp_path / "child.yaml"))


def test_a_base_cycle_is_a_clear_error(tmp_path) -> None:
    (tmp_path / "self.yaml").write_text('_BASE_: "self.yaml"\n')
    with pytest.raises(ValueError, match=r"_BASE_ chain includes it again: .*self\.yaml"):
        get_cfg().merge_from_file(str(tmp_path / "self.yaml"))
    (tmp_path / "a.yaml").write_text('_BASE_: "b.yaml"\n')
    (tmp_path / "b.yaml").write_text('_BASE_: ["a.yaml"]\n')
    with pytest.raises(ValueError, match=r"a\.yaml -> .*b\.yaml -> .*a\.yaml$"):
        get_cfg().merge_from_file(str(tmp_path / "a.yaml"))


@pytest.mark.parametrize(
    ("base", "child", "message"),
    [
        ("SOLVER: [\n", "", r"base\.yaml, line 2, column 1 \(the _BASE_ of .*child\.yaml\): "),
        ("_BASE_: 3\n", "", r"base\.yaml: _BASE_ must be a config file path or a list of them"),
        ("SOLVER: 3\n", "", r"SOLVER is a section of keys \(ACCUM_STEPS, .*\), not a value"),
        ("OUTPUT_DIR: out\n", "OUTPUT_DIR:\n  X: 1\n", r"child\.yaml: OUTPUT_DIR is a value"),
    ],
)
def test_a_malformed_base_fails_in_one_line(tmp_path, base: str, child: str, message) -> None:
    (tmp_path / "base.yaml").write_text(base)
    (tmp_path / "child.yaml").write_text(f'_BASE_: "base.yaml"\n{child}')
    with pytest.raises(ValueError, match=message) as err:
        get_cfg().merge_from_file(str(tmp_path / "child.yaml"))
    assert "\n" not in str(err.value)


def test_a_directory_or_binary_file_as_config_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="is a directory, not a YAML file"):
        get_cfg().merge_from_file(str(tmp_path))
    (tmp_path / "model.pth").write_bytes(b"\x80\x02\xff\xfe")
    with pytest.raises(ValueError, match=r"Cannot read config .*model\.pth: 'utf-8' codec"):
        get_cfg().merge_from_file(str(tmp_path / "model.pth"))


def test_a_value_for_a_section_on_the_command_line_names_the_section() -> None:
    with pytest.raises(ValueError, match=r"^SOLVER is a section of keys .* e\.g\. SOLVER\.ACC"):
        get_cfg().merge_from_list(["SOLVER", "3"])


def test_text_keys_take_text_that_reads_as_a_number(tmp_path) -> None:
    cfg = get_cfg()
    cfg.merge_from_list(["OUTPUT_DIR", "2024", "DATA.TEST_SPLIT", "1"])
    assert cfg.OUTPUT_DIR == "2024" and cfg.DATA.TEST_SPLIT == "1"
    (tmp_path / "a.yaml").write_text('OUTPUT_DIR: "2024"\nMODEL:\n  WEIGHTS: "1e3"\n')
    cfg.merge_from_file(str(tmp_path / "a.yaml"))
    assert (cfg.OUTPUT_DIR, cfg.MODEL.WEIGHTS) == ("2024", "1e3")
    # Text that Python reads as text is still unquoted, as yacs does.
    cfg.merge_from_list(["OUTPUT_DIR", "'my runs'"])
    assert cfg.OUTPUT_DIR == "my runs"


def test_a_key_without_a_value_is_a_clear_error(tmp_path) -> None:
    (tmp_path / "a.yaml").write_text("SOLVER:\n  BASE_LR:\n")
    with pytest.raises(ValueError, match=r"SOLVER\.BASE_LR has no value .* float.*a\.yaml"):
        get_cfg().merge_from_file(str(tmp_path / "a.yaml"))
    with pytest.raises(ValueError, match=r"MODEL\.WEIGHTS has no value"):
        get_cfg().merge_from_list(["MODEL.WEIGHTS", "None"])


def test_import_takes_a_python_file_whatever_the_case_of_its_extension(tmp_path) -> None:
    from fima.engine.defaults import get_user_cfg

    (tmp_path / "base.yaml").write_text("SOLVER:\n  BASE_LR: 0.5\n")
    (tmp_path / "My_Keys.PY").write_text("def add_config(cfg):\n    cfg.MY_KEY = 3\n")
    cfg = get_user_cfg(str(tmp_path / "base.yaml"), ["MY_KEY", "4"], [str(tmp_path / "My_Keys.PY")])
    assert cfg.MY_KEY == 4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["SOLVER.BASE_LR=0.1"], "SOLVER.BASE_LR=0.1: .* separated by a space: SOLVER.BASE_LR 0.1"),
        (["SOLVER.BASE_LR=0.1", "OUTPUT_DIR=x"], "separated by a space: SOLVER.BASE_LR 0.1$"),
    ],
)
def test_key_equals_value_overrides_say_how_to_write_them(overrides: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_cfg().merge_from_list(overrides)
    cfg = get_cfg()
    cfg.merge_from_list(["OUTPUT_DIR", "OUTPUT_DIR=b"])  # a value may hold '='
    assert cfg.OUTPUT_DIR == "OUTPUT_DIR=b"


def test_an_imported_python_file_imports_the_modules_beside_it(tmp_path, monkeypatch) -> None:
    # As `python file.py` would: a project's entry file importing its own helpers module.
    from fima.engine.defaults import get_user_cfg

    monkeypatch.setattr(sys, "path", list(sys.path))
    project = tmp_path / "my_project"
    project.mkdir()
    (project / "my_project_keys_helper.py").write_text("DEFAULT = 7\n")
    (project / "entry.py").write_text(
        "import my_project_keys_helper\n\n\n"
        "def add_config(cfg):\n    cfg.SIBLING_KEY = my_project_keys_helper.DEFAULT\n"
    )
    (tmp_path / "base.yaml").write_text("SOLVER:\n  BASE_LR: 0.5\n")
    cfg = get_user_cfg(str(tmp_path / "base.yaml"), [], [str(project / "entry.py")])
    assert cfg.SIBLING_KEY == 7
    assert sys.path[-1] == str(project)  # last: a sibling never shadows an installed module
