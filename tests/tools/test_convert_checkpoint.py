"""tools/convert_checkpoint.py: reference FIMA/FAME/MoCo and torchvision layouts into fima's."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from fima import model_zoo
from fima.checkpoint import Checkpointer
from fima.checkpoint.convert import LossyConversionError, convert_checkpoint
from fima.modeling import build_model
from fima.modeling.backbone import R3D18, R2Plus1D18
from tests.conftest import ROOT, USER_BACKBONE, tiny_cfg, user_backbone_checkpoint

_SPEC = importlib.util.spec_from_file_location(
    "convert_checkpoint_tool",
    os.path.join(os.path.dirname(__file__), "..", "..", "tools", "convert_checkpoint.py"),
)
tool = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(tool)

# The reference I3D (FAME's backbone/i3d.py, which FIMA uses): Inception blocks with their input
# channels and the widths of branch_0, branch_1 (1x1, 3x3), branch_2 (1x1, 3x3), branch_3 (1x1
# after the pool).
_REFERENCE_MIXED = (
    ("mixed_3b", 192, (64, 96, 128, 16, 32, 32)),
    ("mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
    ("mixed_4b", 480, (192, 96, 208, 16, 48, 64)),
    ("mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
    ("mixed_4d", 512, (128, 128, 256, 24, 64, 64)),
    ("mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
    ("mixed_4f", 528, (256, 160, 320, 32, 128, 128)),
    ("mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
    ("mixed_5c", 832, (384, 192, 384, 48, 128, 128)),
)


def reference_i3d_units() -> list[tuple[str, int, int, int]]:
    """``(module name, in, out, kernel)`` of every Unit3Dpy of the reference I3D."""
    units = [
        ("conv3d_1a_7x7", 3, 64, 7),
        ("conv3d_2b_1x1", 64, 64, 1),
        ("conv3d_2c_3x3", 64, 192, 3),
    ]
    for name, cin, (b0, b1a, b1b, b2a, b2b, b3) in _REFERENCE_MIXED:
        units += [
            (f"{name}.branch_0", cin, b0, 1),
            (f"{name}.branch_1.0", cin, b1a, 1),
            (f"{name}.branch_1.1", b1a, b1b, 3),
            (f"{name}.branch_2.0", cin, b2a, 1),
            (f"{name}.branch_2.1", b2a, b2b, 3),
            (f"{name}.branch_3.1", cin, b3, 1),
        ]
    return units


def reference_i3d_state(counters: bool = True) -> dict[str, torch.Tensor]:
    """A reference-layout I3D state (``.conv3d`` and ``.batch3d`` per unit) of random values."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    for name, cin, cout, k in reference_i3d_units():
        state[f"{name}.conv3d.weight"] = torch.randn(cout, cin, k, k, k, generator=gen)
        state[f"{name}.batch3d.weight"] = torch.rand(cout, generator=gen)
        state[f"{name}.batch3d.bias"] = torch.randn(cout, generator=gen)
        state[f"{name}.batch3d.running_mean"] = torch.randn(cout, generator=gen)
        state[f"{name}.batch3d.running_var"] = torch.rand(cout, generator=gen) + 0.5
        if counters:
            state[f"{name}.batch3d.num_batches_tracked"] = torch.tensor(17)
    return state


@pytest.fixture(scope="module")
def i3d_state() -> dict[str, torch.Tensor]:
    return reference_i3d_state()


def reference_pretraining(backbone: dict[str, torch.Tensor]) -> dict:
    """A reference FIMA training checkpoint: DDP ``module.`` prefix, both encoders with FAME's
    projection head (``id_head``), the queues, and further parts outside the encoders (FIMA's
    decoder and motion queue; their exact names do not matter, everything outside
    ``encoder_q`` is dropped)."""
    head = {
        "id_head.2.weight": torch.randn(1024, 1024),
        "id_head.2.bias": torch.zeros(1024),
        "id_head.4.weight": torch.randn(128, 1024),
        "id_head.4.bias": torch.zeros(128),
    }
    state = {}
    for encoder in ("encoder_q", "encoder_k"):
        for key, value in {**backbone, **head}.items():
            state[f"module.{encoder}.{key}"] = value
    state["module.queue"] = torch.randn(128, 64)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    state["module.decoder.layers.0.linear1.weight"] = torch.randn(512, 512)
    state["module.motion_queue"] = torch.randn(128, 64)
    optimizer = {"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]}
    return {"epoch": 200, "arch": "I3D", "state_dict": state, "optimizer": optimizer}


def reference_finetuned(backbone: dict[str, torch.Tensor], num_classes: int = 101) -> dict:
    """A reference fine-tuned classifier (``I3D(with_classifier=True)`` under DDP)."""
    state = {f"module.{k}": v for k, v in backbone.items()}
    state["module.fc.weight"] = torch.randn(num_classes, 1024)
    state["module.fc.bias"] = torch.randn(num_classes)
    return {"epoch": 150, "arch": "I3D", "state_dict": state, "best_acc1": 84.2}


def classifier(config: str = "Finetune/i3d_ucf101.yaml", **overrides: object) -> torch.nn.Module:
    cfg = model_zoo.get_config(config)
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return build_model(cfg)


def run_tool(tmp_path, checkpoint: dict, *args: str) -> int:
    source = tmp_path / "input.pth"
    if not source.exists():
        torch.save(checkpoint, source)
    return tool.main(["--input", str(source), *args])


def test_reference_fima_pretraining_loads_into_the_classifier(tmp_path, i3d_state, capsys) -> None:
    output = tmp_path / "backbone.pth"
    code = run_tool(
        tmp_path,
        reference_pretraining(i3d_state),
        *("--from", "fima-reference", "--to", "backbone", "--output", str(output)),
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert f"mapped: {len(i3d_state)} tensors" in printed
    assert "encoder_k (" in printed and "queue (1)" in printed and "id_head" in printed
    assert "sha256" in printed
    model = classifier()
    # MODEL.WEIGHTS = the converted file: the classifier's backbone loads strictly (a missing
    # backbone key would raise CheckpointMismatchError).
    Checkpointer(model).load(str(output), checkpointables=[])
    own = model.backbone.state_dict()
    assert len(own) == len(i3d_state)
    pairs = {
        "conv_1a.conv.weight": "conv3d_1a_7x7.conv3d.weight",
        "conv_2c.bn.running_var": "conv3d_2c_3x3.batch3d.running_var",
        "mixed_3b.b1a.conv.weight": "mixed_3b.branch_1.0.conv3d.weight",
        "mixed_4f.b2b.bn.bias": "mixed_4f.branch_2.1.batch3d.bias",
        "mixed_5c.b3b.bn.running_mean": "mixed_5c.branch_3.1.batch3d.running_mean",
    }
    for ours, theirs in pairs.items():
        assert torch.equal(own[ours], i3d_state[theirs]), ours
    written = torch.load(output, weights_only=True)
    assert sorted(written) == sorted(own)


def test_reference_finetuned_classifier_converts_whole(tmp_path, i3d_state) -> None:
    checkpoint = reference_finetuned(i3d_state)
    output = tmp_path / "classifier.pth"
    args = ("--from", "fame-reference", "--to", "classifier", "--output", str(output))
    assert run_tool(tmp_path, checkpoint, *args) == 0
    model = classifier()
    state = torch.load(output, weights_only=True)["model"]
    model.load_state_dict(state, strict=True)
    assert torch.equal(model.head.fc.weight, checkpoint["state_dict"]["module.fc.weight"])
    assert torch.equal(
        model.backbone.mixed_4d.b0.conv.weight,
        checkpoint["state_dict"]["module.mixed_4d.branch_0.conv3d.weight"],
    )


def test_pretraining_to_classifier_is_refused(i3d_state) -> None:
    with pytest.raises(LossyConversionError, match="no classifier head"):
        convert_checkpoint(reference_pretraining(i3d_state), "moco-reference", "classifier")


def test_missing_or_misshapen_backbone_keys_are_refused(tmp_path, i3d_state, capsys) -> None:
    checkpoint = reference_pretraining(i3d_state)
    del checkpoint["state_dict"]["module.encoder_q.mixed_4c.branch_2.1.conv3d.weight"]
    checkpoint["state_dict"]["module.encoder_q.mixed_5b.branch_0.batch3d.bias"] = torch.zeros(3)
    output = tmp_path / "out.pth"
    args = ("--from", "fima-reference", "--to", "backbone", "--output", str(output))
    assert run_tool(tmp_path, checkpoint, *args) == 2
    err = capsys.readouterr().err
    assert "MISSING" in err and "mixed_4c.b2b.conv.weight" in err
    assert "SHAPE MISMATCH" in err and "mixed_5b.b0.bn.bias: source (3,) vs target (256,)" in err
    assert "--allow-lossy" in err
    assert not output.exists()
    assert run_tool(tmp_path, checkpoint, *args, "--allow-lossy") == 0
    written = torch.load(output, weights_only=True)
    assert "mixed_4c.b2b.conv.weight" not in written and "conv_1a.conv.weight" in written


def test_a_checkpoint_read_as_the_wrong_source_is_refused_with_the_right_one(
    tmp_path, i3d_state, capsys
) -> None:
    # A reference checkpoint read --from fima mapped nothing: a 600-line report without a
    # hint, and with --allow-lossy a file of BatchNorm counters alone.
    checkpoint = reference_pretraining(i3d_state)
    output = tmp_path / "out.pth"
    args = ("--from", "fima", "--to", "backbone", "--output", str(output))
    for extra in ((), ("--allow-lossy",)):
        assert run_tool(tmp_path, checkpoint, *args, *extra) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "None of the fima checkpoint's" in err
        assert (
            "reference code's layout ({'state_dict': ...}): convert it with --from fima-reference"
            in err
        )
        assert not output.exists()
    fima_state = {"model": {f"backbone.{k}": v for k, v in R3D18().state_dict().items()}}
    with pytest.raises(ValueError, match=r"fits I3D .*; check --from \(one of fima-reference"):
        convert_checkpoint(
            fima_state, "fima", "backbone", tiny_cfg(**{"MODEL.BACKBONE.NAME": "I3D"})
        )


def test_unknown_backbone_keys_are_refused(i3d_state) -> None:
    checkpoint = reference_finetuned(i3d_state)
    checkpoint["state_dict"]["module.mixed_6a.branch_0.conv3d.weight"] = torch.zeros(1)
    with pytest.raises(LossyConversionError, match=r"UNEXPECTED.*\n.*mixed_6a\.branch_0"):
        convert_checkpoint(checkpoint, "fame-reference", "backbone")


def test_old_checkpoints_without_counters_convert() -> None:
    checkpoint = reference_finetuned(reference_i3d_state(counters=False))
    output, report = convert_checkpoint(checkpoint, "fima-reference", "classifier")
    assert not report.lossy
    assert "backbone.conv_1a.bn.num_batches_tracked" in report.filled
    classifier().load_state_dict(output["model"], strict=True)


def torchvision_names(r2plus1d: bool) -> list[str]:
    """Key names of torchvision's ``r2plus1d_18`` / ``r3d_18`` (``torchvision.models.video``),
    written out from its module layout: a Sequential stem, four layers of two BasicBlocks whose
    conv1/conv2 are Sequential(conv builder, BatchNorm3d[, ReLU]); the (2+1)D builder is
    Sequential(Conv3d, BatchNorm3d, ReLU, Conv3d)."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    names = []
    stem = (
        ((0, "conv"), (1, "bn"), (3, "conv"), (4, "bn")) if r2plus1d else ((0, "conv"), (1, "bn"))
    )
    for index, kind in stem:
        names += [f"stem.{index}.weight"] if kind == "conv" else [f"stem.{index}.{p}" for p in bn]
    for layer in range(1, 5):
        for block in range(2):
            base = f"layer{layer}.{block}"
            for conv in ("conv1", "conv2"):
                if r2plus1d:
                    names += [f"{base}.{conv}.0.0.weight", f"{base}.{conv}.0.3.weight"]
                    names += [f"{base}.{conv}.0.1.{p}" for p in bn]
                else:
                    names.append(f"{base}.{conv}.0.weight")
                names += [f"{base}.{conv}.1.{p}" for p in bn]
            if layer > 1 and block == 0:
                names.append(f"{base}.downsample.0.weight")
                names += [f"{base}.downsample.1.{p}" for p in bn]
    return names + ["fc.weight", "fc.bias"]


@pytest.mark.parametrize("cls,r2plus1d", [(R2Plus1D18, True), (R3D18, False)])
def test_torchvision_names_are_fimas(cls, r2plus1d) -> None:
    assert sorted(cls().state_dict()) == sorted(torchvision_names(r2plus1d)[:-2])


def test_torchvision_r2plus1d_converts(tmp_path) -> None:
    own = R2Plus1D18().state_dict()
    state = {name: torch.randn_like(own[name].float()).to(own[name].dtype) for name in own}
    state["fc.weight"], state["fc.bias"] = torch.randn(400, 512), torch.randn(400)
    output, report = convert_checkpoint(state, "torchvision", "classifier")
    assert report.backbone == "R2Plus1D18" and not report.lossy
    assert all(
        source == target[len("backbone.") :]
        for target, source in report.mapped.items()
        if target.startswith("backbone.")
    )
    model = classifier("Finetune/r2plus1d_ucf101.yaml", **{"MODEL.CLASSIFIER.NUM_CLASSES": 400})
    model.load_state_dict(output["model"], strict=True)
    assert torch.equal(
        model.backbone.layer3[0].conv1[0][3].weight, state["layer3.0.conv1.0.3.weight"]
    )
    backbone, report = convert_checkpoint(state, "torchvision", "backbone")
    assert report.dropped == {"classifier head fc": 2}
    assert any("classifier head is dropped" in note for note in report.notes)
    assert sorted(backbone) == sorted(own)


def test_fima_pretraining_exports_a_plain_backbone() -> None:
    cfg = tiny_cfg()
    moco = build_model(cfg)
    output, report = convert_checkpoint({"model": moco.state_dict()}, "fima", "backbone", cfg)
    expected = {
        k[len("encoder_q.") :]: v
        for k, v in moco.state_dict().items()
        if k.startswith("encoder_q.")
    }
    assert output.keys() == expected.keys()
    assert all(torch.equal(output[k], v) for k, v in expected.items())
    assert "encoder_k" in report.dropped and "projector_q" in report.dropped


def test_existing_output_is_kept_without_overwrite(tmp_path, i3d_state, capsys) -> None:
    output = tmp_path / "out.pth"
    output.write_bytes(b"precious")
    args = ("--from", "fame-reference", "--to", "classifier", "--output", str(output))
    checkpoint = reference_finetuned(i3d_state)
    assert run_tool(tmp_path, checkpoint, *args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert output.read_bytes() == b"precious"
    assert run_tool(tmp_path, checkpoint, *args, "--overwrite") == 0
    assert "model" in torch.load(output, weights_only=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.pth", "out.pth"]


@pytest.mark.parametrize(
    ("layout", "reason"),
    [
        ("text", "not a file written by torch.save"),
        ("truncated", "truncated or corrupt"),
        ("directory", "it is a directory"),
    ],
)
def test_unreadable_input_is_one_line_and_exit_2(tmp_path, i3d_state, capsys, layout, reason):
    source = tmp_path / "input.pth"
    if layout == "text":
        source.write_text("epoch 200, top-1 84.2\n")
    elif layout == "truncated":
        torch.save(reference_finetuned(i3d_state), source)
        source.write_bytes(source.read_bytes()[:4096])
    else:
        source.mkdir()
    output = tmp_path / "out.pth"
    args = ("--from", "fame-reference", "--to", "classifier", "--output", str(output))
    assert tool.main(["--input", str(source), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"convert_checkpoint.py: error: Cannot read checkpoint {source}: ")
    assert reason in err and err.count("\n") == 1
    assert not output.exists()


def test_output_that_cannot_be_written_is_one_line_and_exit_2(tmp_path, i3d_state, capsys):
    # A directory as --output was refused with "exists; pass --overwrite", then --overwrite
    # ended in an IsADirectoryError traceback; an unwritable place ended in a traceback too.
    folder = tmp_path / "converted"
    folder.mkdir()
    checkpoint = reference_finetuned(i3d_state)
    args = ("--from", "fame-reference", "--to", "classifier", "--output")
    for flags in ((), ("--overwrite",)):
        assert run_tool(tmp_path, checkpoint, *args, str(folder), *flags) == 2
        err = capsys.readouterr().err
        assert err == (
            f"convert_checkpoint.py: error: --output {folder} is a directory; give the file to "
            f"write, e.g. {folder / 'converted.pth'}\n"
        )
    assert list(folder.iterdir()) == []
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    assert run_tool(tmp_path, checkpoint, *args, str(blocker / "out.pth")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"convert_checkpoint.py: error: Cannot write {blocker / 'out.pth'}: ")
    assert err.count("\n") == 1


def test_config_with_unknown_keys_is_one_line_and_exit_2(tmp_path, i3d_state, capsys) -> None:
    # A project's config (its keys are added by --import in train_net.py) ended in a KeyError
    # traceback.
    config = tmp_path / "s3d.yaml"
    config.write_text("MODEL:\n  S3D:\n    WIDTH_MULT: 0.125\n")
    args = ("--from", "fame-reference", "--to", "backbone", "--output", str(tmp_path / "o.pth"))
    assert run_tool(tmp_path, reference_finetuned(i3d_state), *args, "--config-file", str(config))
    err = capsys.readouterr().err
    assert err.startswith("convert_checkpoint.py: error: Non-existent config key: MODEL.S3D")
    assert err.count("\n") == 1
    # A backbone no module registered (not S3D: tests/projects registers it in this process).
    config.write_text("MODEL:\n  BACKBONE:\n    NAME: UnregisteredNet\n")
    assert run_tool(tmp_path, reference_finetuned(i3d_state), *args, "--config-file", str(config))
    err = capsys.readouterr().err
    assert err.startswith("convert_checkpoint.py: error: ") and "UnregisteredNet" in err
    assert err.count("\n") == 1 and not (tmp_path / "o.pth").exists()


def test_imported_backbone_config_converts_with_import(tmp_path) -> None:
    # A project's config (its keys and backbone come from --import, as in train_net.py) could
    # not be read by convert_checkpoint.py, which had no --import.
    import subprocess
    import sys

    config, weights, model = user_backbone_checkpoint(tmp_path)
    output = tmp_path / "backbone.pth"
    command = [
        sys.executable,
        os.path.join(ROOT, "tools", "convert_checkpoint.py"),
        "--import",
        USER_BACKBONE,
        *("--from", "fima", "--to", "backbone", "--config-file", str(config)),
        *("--input", weights, "--output", str(output)),
    ]
    run = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT}
    )
    assert run.returncode == 0, run.stderr
    assert "(TwoLayer3D)" in run.stdout
    backbone = torch.load(output, weights_only=True)
    expected = model.encoder_q.state_dict()
    assert backbone.keys() == expected.keys()
    assert all(torch.equal(backbone[k], expected[k]) for k in expected)
