"""MODEL.WEIGHTS loads: strict for every model, the classifier's one intended partial load, and
files that cannot be read named with a one-line reason."""

from __future__ import annotations

import errno
import logging

import pytest
import torch

from fima.checkpoint import Checkpointer, CheckpointMismatchError, CheckpointReadError
from fima.modeling import build_model
from tests.evaluation.helpers import classifier_cfg

# No dataset is built for the head's size.
CLASSES = {"MODEL.CLASSIFIER.NUM_CLASSES": 3}
OTHER_WIDTHS = {"MODEL.TINY3D.WIDTHS": (8, 16, 32, 32)}


def _model(**overrides: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(classifier_cfg(**{**CLASSES, **overrides}))


def _save(tmp_path, name: str, model: torch.nn.Module) -> str:
    """A checkpoint of ``model`` whose every tensor differs from a fresh model's."""
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.add_(1)
    path = str(tmp_path / name)
    torch.save({"model": model.state_dict(), "iteration": 9}, path)
    return path


def _unchanged(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("evaluation", [False, True], ids=["finetune", "eval_only"])
def test_classifier_of_another_backbone_config_is_an_error(tmp_path, evaluation) -> None:
    # fvcore's non-strict load warned about the shapes and went on with a partly random model.
    path = _save(tmp_path, "clf.pth", _model(**OTHER_WIDTHS))
    model = _model()
    before = _copy(model)
    with pytest.raises(CheckpointMismatchError) as info:
        Checkpointer(model).load(path, checkpointables=[], evaluation=evaluation)
    message = str(info.value)
    assert "\n" not in message
    assert f"Checkpoint {path} does not match the model" in message
    assert "shape: backbone." in message and "checkpoint (32, 16" in message
    assert "in all)" in message  # a few keys, then their number
    assert _unchanged(model, before)


def test_classifier_with_another_number_of_classes_is_an_error(tmp_path) -> None:
    path = _save(tmp_path, "clf.pth", _model(**{"MODEL.CLASSIFIER.NUM_CLASSES": 5}))
    with pytest.raises(CheckpointMismatchError, match=r"head\.fc\.weight: checkpoint \(5, 32\)"):
        Checkpointer(_model()).load(path, checkpointables=[])


def test_pretraining_method_refuses_a_classifier_checkpoint(tmp_path) -> None:
    # MoCo took nothing from it, warned, and pretrained from scratch.
    path = _save(tmp_path, "clf.pth", _model())
    moco = _model(**{"MODEL.META_ARCHITECTURE": "MoCo"})
    before = _copy(moco)
    with pytest.raises(CheckpointMismatchError, match=r"missing: encoder_k\..* in all\)"):
        Checkpointer(moco).load(path, checkpointables=[])
    assert _unchanged(moco, before)


def test_extra_entries_are_logged_and_the_rest_loads_strictly(tmp_path, caplog) -> None:
    fima_state = _model(**{"MODEL.META_ARCHITECTURE": "FIMA"}).state_dict()
    moco = _model(**{"MODEL.META_ARCHITECTURE": "MoCo"})
    state = {k: v + 1 if v.is_floating_point() else v for k, v in fima_state.items()}
    extra = sorted(set(state) - set(moco.state_dict()))
    assert extra and not set(moco.state_dict()) - set(state)
    torch.save({"model": state}, tmp_path / "fima.pth")
    fima_logger = logging.getLogger("fima")
    fima_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="fima"):
            Checkpointer(moco).load(str(tmp_path / "fima.pth"), checkpointables=[])
    finally:
        fima_logger.removeHandler(caplog.handler)
    assert f"{len(extra)} entries that the model does not have are ignored" in caplog.text
    for key, value in moco.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_eval_only_of_a_classifier_needs_its_head_from_the_checkpoint(tmp_path) -> None:
    path = _save(tmp_path, "moco.pth", _model(**{"MODEL.META_ARCHITECTURE": "MoCo"}))
    model = _model()
    before = _copy(model)
    with pytest.raises(CheckpointMismatchError, match="has no classifier head") as info:
        Checkpointer(model).load(path, checkpointables=[], evaluation=True)
    assert "fine-tune or linear-probe it first" in str(info.value)
    assert "retrieval or linear_probe" in str(info.value)
    assert _unchanged(model, before)
    # Fine-tuning from it is the intended partial load: the backbone, not the head.
    Checkpointer(model).load(path, checkpointables=[])
    moco_state = torch.load(path, weights_only=True)["model"]
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, moco_state[f"encoder_q.{key}"]), key
    for key, value in model.head.state_dict().items():
        assert torch.equal(value, before[f"head.{key}"]), key
    # Evaluators that read the backbone's features only take it for --eval-only too.
    retrieval = _model(**{"TEST.EVALUATORS": ("retrieval",)})
    Checkpointer(retrieval).load(path, checkpointables=[], evaluation=True)
    assert torch.equal(retrieval.backbone.stem[0].weight, moco_state["encoder_q.stem.0.weight"])


def test_features_of_a_classifier_of_another_dataset_are_evaluated_with_its_backbone(
    tmp_path, caplog
) -> None:
    """--eval-only retrieval of a classifier fine-tuned on a dataset of another class count
    stopped on the head's shape, which retrieval never reads; its backbone is evaluated now."""
    path = _save(tmp_path, "ucf.pth", _model(**{"MODEL.CLASSIFIER.NUM_CLASSES": 5}))
    saved = torch.load(path, weights_only=True)["model"]
    retrieval = _model(**{"TEST.EVALUATORS": ("retrieval",)})
    fima_logger = logging.getLogger("fima")
    fima_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="fima"):
            Checkpointer(retrieval).load(path, checkpointables=[], evaluation=True)
    finally:
        fima_logger.removeHandler(caplog.handler)
    for key, value in retrieval.backbone.state_dict().items():
        assert torch.equal(value, saved[f"backbone.{key}"]), key
    assert "classifier head does not fit this config's (3 classes)" in caplog.text
    # Its backbone must still fit, strictly.
    with pytest.raises(CheckpointMismatchError, match="shape: stage"):
        Checkpointer(_model(**{"TEST.EVALUATORS": ("retrieval",), **OTHER_WIDTHS})).load(
            path, checkpointables=[], evaluation=True
        )
    # Where the head's scores are evaluated, or the head is trained on, the head must fit.
    for model, evaluation in ((_model(), True), (_model(), False)):
        before = _copy(model)
        with pytest.raises(CheckpointMismatchError, match=r"head.fc.bias: checkpoint \(5,\)"):
            Checkpointer(model).load(path, checkpointables=[], evaluation=evaluation)
        assert _unchanged(model, before)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"hello, I am a text file\n", "not a file written by torch.save"),
        # torch.load takes it for a pickle that needs code to run ("Weights only load failed").
        (b"path,label\nvideos/a.mp4,0\n", "not a file written by torch.save: it starts with"),
        (b"", "empty or ends early"),
        ("truncated", "truncated or corrupt"),
        ("truncated where torch.load says Invalid argument", "truncated or corrupt"),
        ("directory", "it is a directory"),
        ([1, 2, 3], "holds a list, not a checkpoint dict"),
    ],
)
def test_unreadable_weights_are_named_with_a_reason(tmp_path, content, reason) -> None:
    path = tmp_path / "weights.pth"
    if content == "truncated":
        torch.save({"model": _model().state_dict()}, path)
        path.write_bytes(path.read_bytes()[:1000])
    elif isinstance(content, str) and content.startswith("truncated where"):
        torch.save({"model": _model().state_dict()}, path)
        whole = path.read_bytes()
        for cut in range(1000, len(whole), 997):  # torch raises OSError(EINVAL) for some cuts
            path.write_bytes(whole[:cut])
            try:
                torch.load(path, weights_only=True)
            except OSError as err:
                assert err.errno == errno.EINVAL
                break
            except RuntimeError:
                pass
        else:
            pytest.fail("no cut of the file made torch.load raise OSError")
    elif content == "directory":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointReadError) as info:
        Checkpointer(_model()).load(str(path), checkpointables=[])
    message = str(info.value)
    assert message.startswith(f"Cannot read checkpoint {path}: ") and reason in message
    assert "\n" not in message


def test_reference_checkpoint_says_to_convert_it(tmp_path) -> None:
    backbone = _model().backbone.state_dict()
    state = {f"module.encoder_q.{k}": v for k, v in backbone.items()}
    torch.save({"epoch": 200, "arch": "I3D", "state_dict": state}, tmp_path / "ref.pth.tar")
    with pytest.raises(CheckpointReadError) as info:
        Checkpointer(_model()).load(str(tmp_path / "ref.pth.tar"), checkpointables=[])
    message = str(info.value)
    assert "checkpoint of the reference code" in message and "\n" not in message
    assert "tools/convert_checkpoint.py --from fima-reference --to backbone" in message
