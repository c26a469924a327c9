"""Pretraining checkpoints into the classifier: query encoder mapped, nothing missing, strict."""

from __future__ import annotations

import logging

import pytest
import torch

from fima.checkpoint import Checkpointer, CheckpointMismatchError
from fima.checkpoint.backbone_weights import load_backbone_weights, resolve_weights
from fima.config import ConfigError, validate_cfg
from fima.modeling import build_model
from tests.evaluation.helpers import classifier_cfg


def _moco_state(**overrides) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    moco = build_model(classifier_cfg(**{"MODEL.META_ARCHITECTURE": "MoCo", **overrides}))
    # Make the running statistics differ from a fresh model's, so their transfer shows.
    for name, buffer in moco.encoder_q.named_buffers():
        if name.endswith("running_mean"):
            buffer.normal_()
    return moco.state_dict()


def _classifier(tmp_path, **overrides):
    torch.manual_seed(0)
    return build_model(classifier_cfg(str(tmp_path / "out"), **overrides))


def _assert_backbone_is_query_encoder(classifier, state) -> None:
    for name, tensor in classifier.backbone.state_dict().items():
        assert torch.equal(tensor, state[f"encoder_q.{name}"]), name


def test_moco_checkpoint_initialises_the_backbone_through_the_trainer_path(tmp_path, caplog):
    state = _moco_state()
    torch.save({"model": state, "iteration": 3}, tmp_path / "moco.pth")
    classifier = _classifier(tmp_path)
    head_before = {k: v.clone() for k, v in classifier.head.state_dict().items()}
    # The fima logger stops propagation once a run has set it up: listen to it directly.
    fima_logger = logging.getLogger("fima")
    fima_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="fima"):
            # What DefaultTrainer.resume_or_load does with MODEL.WEIGHTS.
            Checkpointer(classifier, str(tmp_path / "out")).load(
                str(tmp_path / "moco.pth"), checkpointables=[]
            )
    finally:
        fima_logger.removeHandler(caplog.handler)
    _assert_backbone_is_query_encoder(classifier, state)
    for name, tensor in classifier.head.state_dict().items():
        assert torch.equal(tensor, head_before[name])  # a fresh classifier
    text = caplog.text
    assert "'encoder_q.*'" in text and "missing: none, unexpected: none" in text
    assert "encoder_k" in text and "queue" in text  # the ignored parts are listed


def test_fima_checkpoint_reports_no_missing_key() -> None:
    # FIMA holds a motion decoder and a motion queue next to MoCo's encoders (RECIPE.md §3, §7).
    state = _moco_state(**{"MODEL.META_ARCHITECTURE": "FIMA", "MODEL.FIMA.MOTION_QUEUE_SIZE": 32})
    classifier = build_model(classifier_cfg())
    report = load_backbone_weights(classifier.backbone, state)
    assert report.missing == [] and report.unexpected == []
    assert report.loaded == len(classifier.backbone.state_dict())
    assert report.ignored["decoder"] > 0 and report.ignored["motion_queue"] == 2
    _assert_backbone_is_query_encoder(classifier, state)


def test_ddp_prefix_and_bare_backbone_layouts(tmp_path) -> None:
    state = _moco_state()
    backbone_only = {k[len("encoder_q.") :]: v for k, v in state.items() if "encoder_q." in k}
    for i, layout in enumerate(({f"module.{k}": v for k, v in state.items()}, backbone_only)):
        path = tmp_path / f"layout{i}.pth"
        torch.save(layout, path)
        classifier = _classifier(tmp_path)
        Checkpointer(classifier, str(tmp_path / "out")).load(str(path), checkpointables=[])
        _assert_backbone_is_query_encoder(classifier, state)


def test_another_backbone_is_an_error_naming_the_keys(tmp_path) -> None:
    state = _moco_state(**{"MODEL.TINY3D.WIDTHS": (8, 16, 32, 32)})
    classifier = _classifier(tmp_path)
    with pytest.raises(CheckpointMismatchError, match=r"shape: .*checkpoint \(32, 16"):
        load_backbone_weights(classifier.backbone, state)
    del state["encoder_q.stem.0.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"missing: stem\.0\.weight"):
        load_backbone_weights(classifier.backbone, state)


def test_classifier_checkpoint_loads_whole(tmp_path) -> None:
    trained = _classifier(tmp_path)
    with torch.no_grad():
        trained.head.fc.bias.fill_(0.5)
    torch.save({"model": trained.state_dict()}, tmp_path / "clf.pth")
    fresh = build_model(classifier_cfg())
    Checkpointer(fresh, str(tmp_path / "out")).load(str(tmp_path / "clf.pth"))
    for name, tensor in trained.state_dict().items():
        assert torch.equal(tensor, fresh.state_dict()[name]), name


def test_weights_that_are_neither_file_nor_url_fail_clearly(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="neither an existing file nor a URL"):
        resolve_weights("MoCo/I3D_UCF101")
    cfg = classifier_cfg(str(tmp_path), **{"MODEL.WEIGHTS": "MoCo/I3D_UCF101"})
    with pytest.raises(ConfigError, match="^MODEL.WEIGHTS: 'MoCo/I3D_UCF101' is neither"):
        validate_cfg(cfg)
