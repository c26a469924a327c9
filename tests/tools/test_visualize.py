"""tools/visualize.py end to end: tiny MoCo and FIMA checkpoints, a test video, --compare."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch
from PIL import Image

from fima.modeling import build_model
from tests.conftest import USER_BACKBONE, tiny_cfg, user_backbone_checkpoint, write_test_video
from tests.data.layouts import write_frames
from tests.modeling.test_fima import FIMA_TINY

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location(
    "visualize", os.path.join(ROOT, "tools", "visualize.py")
)
visualize = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(visualize)


@pytest.fixture
def setup(tmp_path):
    """A FIMA config file, MoCo and FIMA checkpoints of the same backbone, two videos."""
    cfg = tiny_cfg(str(tmp_path / "out"), **FIMA_TINY)
    config = tmp_path / "fima.yaml"
    config.write_text(cfg.dump())
    weights = {}
    for name, model_cfg in (("moco", tiny_cfg()), ("fima", cfg)):
        torch.manual_seed(0)
        path = tmp_path / name / "model_final.pth"
        path.parent.mkdir()
        torch.save({"model": build_model(model_cfg).state_dict(), "iteration": 3}, path)
        weights[name] = str(path)
    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    write_test_video(str(videos / "a.mp4"))
    write_test_video(str(videos / "sub" / "b.avi"), codec="mpeg4")
    (videos / "notes.txt").write_text("not a video")
    return str(config), weights, str(videos)


def _sizes(folder) -> dict[str, tuple[int, int]]:
    return {name: Image.open(os.path.join(folder, name)).size for name in os.listdir(folder)}


def test_single_checkpoints_and_compare_write_one_png_per_video(setup, tmp_path) -> None:
    config, weights, videos = setup
    common = ["--config-file", config, "--input", videos, "--cell", "40", "--columns", "4"]
    out = {}
    for name in ("moco", "fima"):
        out[name] = str(tmp_path / f"vis_{name}")
        args = [*common, "--output", out[name], "MODEL.WEIGHTS", weights[name]]
        assert visualize.main(args) == 0
    out["compare"] = str(tmp_path / "vis_compare")
    args = [*common, "--output", out["compare"], "--compare", weights["moco"], weights["fima"]]
    assert visualize.main(args) == 0

    sizes = {name: _sizes(folder) for name, folder in out.items()}
    assert set(sizes["compare"]) == {"a.png", "sub__b.png"}
    moco, fima, pair = sizes["moco"]["a.png"], sizes["fima"]["a.png"], sizes["compare"]["a.png"]
    assert fima[1] - moco[1] == 40 + 2  # FIMA's grid has the mask row
    assert pair[1] == fima[1]
    assert pair[0] >= moco[0] + fima[0]  # side by side
    # The frames row shows the video: the moving bright bar is in the first tile.
    image = np.asarray(Image.open(os.path.join(out["fima"], "a.png")).convert("L"))
    assert image.max() > 150

    # Nothing is overwritten without --overwrite.
    again = [*common, "--output", out["fima"]]
    with pytest.raises(SystemExit) as stop:
        visualize.main([*again, "MODEL.WEIGHTS", weights["fima"]])
    assert stop.value.code == 2
    assert visualize.main([*again, "--overwrite", "MODEL.WEIGHTS", weights["fima"]]) == 0


def test_videos_that_differ_in_their_extension_get_pictures_of_their_own(tmp_path) -> None:
    root = str(tmp_path)
    videos = [os.path.join(root, n) for n in ("clip.avi", "clip.mp4", "other.mp4")]
    videos.append(os.path.join(root, "sub", "clip.avi"))
    names = visualize.output_names(videos, root)
    assert names == ["clip.avi.png", "clip.mp4.png", "other.png", "sub__clip.png"]


def test_folders_of_frames_are_drawn_as_videos(setup, tmp_path) -> None:
    config, weights, _ = setup
    videos = tmp_path / "frames"
    write_frames(videos / "walk" / "v1", 20)
    write_frames(videos / "v2", 20)
    (videos / "walk" / "notes.txt").write_text("not a video")
    # As VideoList finds videos: hidden entries left out, links followed.
    write_frames(videos / ".cache" / "v3", 20)
    (videos / "walk" / "._v4.mp4").write_bytes(b"macOS metadata")
    write_frames(tmp_path / "elsewhere" / "Dr. Smith", 20)
    os.symlink(tmp_path / "elsewhere", videos / "linked")
    assert visualize.find_videos(str(videos)) == [
        str(videos / "linked" / "Dr. Smith"), str(videos / "v2"), str(videos / "walk" / "v1"),
    ]  # fmt: skip
    # A folder of frames as --input is one video, named after the folder.
    assert visualize.find_videos(str(videos / "v2")) == [str(videos / "v2")]
    out = tmp_path / "out"
    for source, folder in ((videos, out / "all"), (videos / "v2", out / "one")):
        args = ["--config-file", config, "--input", str(source), "--output", str(folder)]
        assert visualize.main([*args, "MODEL.WEIGHTS", weights["fima"]]) == 0
    # A folder's name keeps what follows a dot.
    assert sorted(os.listdir(out / "all")) == ["linked__Dr. Smith.png", "v2.png", "walk__v1.png"]
    assert os.listdir(out / "one") == ["v2.png"]


def test_videos_whose_pictures_would_collide_are_refused(setup, tmp_path, capsys) -> None:
    config, weights, _ = setup
    videos = tmp_path / "videos"
    for name in ("a/b__c.mp4", "a__b/c.mp4"):
        (videos / os.path.dirname(name)).mkdir(parents=True)
        write_test_video(str(videos / name))
    args = ["--config-file", config, "--input", str(videos), "--output", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as stop:
        visualize.main([*args, "MODEL.WEIGHTS", weights["fima"]])
    assert stop.value.code == 2
    assert "would both be drawn to a__b__c.mp4.png" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unreadable_videos_are_skipped_and_counted(setup, tmp_path) -> None:
    config, weights, _ = setup
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    args = ["--config-file", config, "--input", str(broken), "--output", str(tmp_path / "o")]
    assert visualize.main([*args, "MODEL.WEIGHTS", weights["moco"]]) == 1


@pytest.mark.parametrize(
    ("flags", "overrides", "message"),
    [
        ([], ["NOPE.KEY", "1"], "Non-existent config key: NOPE.KEY"),
        ([], ["SOLVER.BASE_LR", "abc"], "Type mismatch"),
        ([], ["INPUT.MEAN", "('a','b','c')"], "INPUT.MEAN: must hold float values"),
        ([], ["LOG_PERIOD", "0"], "LOG_PERIOD: must be positive"),  # the config is validated
        ([], ["MODEL.WEIGHTS", ""], "give MODEL.WEIGHTS or --compare A B"),
        ([], ["MODEL.WEIGHTS", "nope.pth"], "MODEL.WEIGHTS: file 'nope.pth' does not exist"),
        ([], ["MODEL.WEIGHTS", "nope"], "MODEL.WEIGHTS 'nope' is neither an existing file"),
        ([], ["SOLVER.BASE_LR", "0.1", "--overwrite"], "options (--overwrite) must come before"),
        (["--input", "/nonexistent"], [], "--input /nonexistent: no such file or directory"),
        (["--config-file", ""], [], "Config file not found"),
        (["--columns", "-1"], [], "argument --columns: must be >= 1, got -1"),
        (["--cell", "0"], [], "argument --cell: must be >= 1, got 0"),
        (["--cell", "x"], [], "argument --cell: expected an integer, got 'x'"),
        (["--compare", "{moco}", "nope"], [], "--compare 'nope' is neither an existing file"),
        # A file as --output (or above it) ended in a FileExistsError traceback after loading.
        (["--output", "{moco}"], [], "model_final.pth is a file, not a directory for the PNG"),
        (["--output", "{moco}/vis"], [], "model_final.pth is), not a directory for the PNG"),
        ([], ["MODEL.TINY3D.WIDTHS", "(8, 16, 16, 64)"], "does not match the model: shape: "),
        ([], ["MODEL.WEIGHTS", "{config}"], "Cannot read checkpoint"),
    ],
)
def test_user_errors_are_one_line_with_status_2(
    setup, tmp_path, capsys, flags: list[str], overrides: list[str], message: str
) -> None:
    """As tools/train_net.py: ``visualize.py: error: ...``, no traceback, nothing written."""
    config, weights, videos = setup
    common = ["--config-file", config, "--input", videos, "--output", str(tmp_path / "vis")]
    flags = [flag.format(**weights) for flag in flags]  # later flags and overrides win
    overrides = [value.format(config=config) for value in overrides]
    with pytest.raises(SystemExit) as stop:
        visualize.main([*common, *flags, "MODEL.WEIGHTS", weights["moco"], *overrides])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("visualize.py: error: ") and message in err[-1], err
    assert not (tmp_path / "vis").exists()


def test_missing_config_file_is_a_usage_error(setup, tmp_path, capsys) -> None:
    _, weights, videos = setup
    with pytest.raises(SystemExit) as stop:
        visualize.main(["--input", videos, "--output", str(tmp_path), "MODEL.WEIGHTS", "x"])
    assert stop.value.code == 2
    assert "the following arguments are required: --config-file" in capsys.readouterr().err


def test_a_backbone_of_an_imported_module_is_drawn(tmp_path) -> None:
    # A project's backbone and config keys (examples/my_backbone.py, as projects/S3D's) could be
    # trained with --import but not drawn: visualize.py had no --import, so its config failed.
    import subprocess
    import sys

    config, weights, _ = user_backbone_checkpoint(tmp_path)
    write_test_video(str(tmp_path / "a.mp4"))
    command = [
        sys.executable,
        os.path.join(ROOT, "tools", "visualize.py"),
        "--config-file",
        str(config),
        "--input",
        str(tmp_path / "a.mp4"),
        "--cell",
        "32",
        "MODEL.WEIGHTS",
        str(weights),
    ]
    env = {**os.environ, "PYTHONPATH": ROOT}
    run = subprocess.run(
        [*command[:2], "--output", str(tmp_path / "none"), *command[2:]],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("visualize.py: error: ")
    assert "TWO_LAYER3D" in run.stderr
    run = subprocess.run(
        [*command[:2], "--import", USER_BACKBONE, "--output", str(tmp_path / "vis"), *command[2:]],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    assert os.listdir(tmp_path / "vis") == ["a.png"]


def test_options_after_the_overrides_are_said_to_be_misplaced(setup, tmp_path, capsys) -> None:
    """--input/--output after MODEL.WEIGHTS were called missing ('the following arguments are
    required: --input, --output'), as tools/train_net.py once called --config-file."""
    config, weights, videos = setup
    argv = ["--config-file", config, "MODEL.WEIGHTS", weights["moco"]]
    with pytest.raises(SystemExit) as stop:
        visualize.main([*argv, "--input", videos, "--output", str(tmp_path / "vis")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "options (--input --output) must come before the KEY VALUE overrides" in err, err
    assert not (tmp_path / "vis").exists()


def test_the_commands_of_the_help_parse() -> None:
    """The examples that --help prints run as written (options before the overrides)."""
    commands = visualize.__doc__.split("\n\n")[1].replace("\\\n", " ").splitlines()
    assert len(commands) == 2, commands
    for command in commands:
        argv = command.split()[2:]  # after "python tools/visualize.py"
        args = visualize.parse_args(argv)
        assert args.input == "VIDEO_OR_DIR" and args.output == "vis/", command
