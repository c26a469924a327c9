"""VideoClassifier: losses and scores, fine-tuning vs a linear probe that really stays frozen."""

from __future__ import annotations

import pytest
import torch

from fima.config import ConfigError, validate_cfg
from fima.engine.solver import build_optimizer
from fima.modeling import build_model
from tests.evaluation.helpers import classifier_cfg


def _batch(cfg, windows: int = 1, batch_size: int = 4) -> dict[str, torch.Tensor]:
    t, s = cfg.INPUT.NUM_FRAMES, cfg.INPUT.CROP_SIZE
    gen = torch.Generator().manual_seed(0)
    return {
        "global": torch.randint(
            0, 256, (batch_size, windows, 3, t, s, s), dtype=torch.uint8, generator=gen
        ),
        "label": torch.tensor([0, 1, 2, 1])[:batch_size],
    }


def _train_steps(model, cfg, steps: int = 3) -> None:
    optimizer = build_optimizer(cfg, model)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model(_batch(cfg))["loss_cls"]
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()


def test_training_loss_and_evaluation_scores() -> None:
    cfg = classifier_cfg()
    model = build_model(cfg)
    assert model.num_classes == 3  # NUM_CLASSES 0 follows the training split
    losses = model(_batch(cfg))
    assert set(losses) == {"loss_cls"} and losses["loss_cls"].ndim == 0
    model.eval()
    scores = model(_batch(cfg, windows=2))
    assert scores.shape == (4, 2, 3) and scores.dtype == torch.float32
    features = model.extract_features(_batch(cfg)["global"][:, 0])
    torch.testing.assert_close(features.norm(dim=1), torch.ones(4))


def test_linear_probe_keeps_the_backbone_frozen_and_in_eval_mode() -> None:
    cfg = classifier_cfg(**{"MODEL.CLASSIFIER.MODE": "linear", "MODEL.CLASSIFIER.DROPOUT": 0.0})
    torch.manual_seed(0)
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = model.head.fc.weight.clone()
    optimizer_params = {
        id(p) for g in build_optimizer(cfg, model).param_groups for p in g["params"]
    }
    assert optimizer_params == {id(p) for p in model.head.parameters()}
    _train_steps(model, cfg)
    assert model.training and not model.backbone.training
    assert all(not m.training for m in model.backbone.modules())
    for name, tensor in model.backbone.state_dict().items():
        # Weights and BatchNorm running statistics (and their counters) are untouched.
        assert torch.equal(tensor, before[name]), name
    assert not torch.equal(model.head.fc.weight, head_before)
    model.eval()
    model.train()  # what DefaultTrainer.test does around an evaluation
    assert not model.backbone.training


def test_fine_tuning_trains_the_backbone_and_its_statistics() -> None:
    cfg = classifier_cfg(**{"MODEL.CLASSIFIER.DROPOUT": 0.7})
    torch.manual_seed(0)
    model = build_model(cfg)
    stem_before = model.backbone.stem[0].weight.clone()
    mean_before = model.backbone.stem[1].running_mean.clone()
    _train_steps(model, cfg, steps=1)
    assert model.backbone.training
    assert not torch.equal(model.backbone.stem[0].weight, stem_before)
    assert not torch.equal(model.backbone.stem[1].running_mean, mean_before)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("MODEL.CLASSIFIER.MODE", "frozen", "MODEL.CLASSIFIER.MODE: must be one of"),
        ("MODEL.CLASSIFIER.DROPOUT", 1.0, "MODEL.CLASSIFIER.DROPOUT: must be in"),
        ("MODEL.CLASSIFIER.HEAD", "Linear", "MODEL.CLASSIFIER.HEAD: No head named 'Linear'"),
        # A head of another kind would fail only at the first training step.
        (
            "MODEL.CLASSIFIER.HEAD",
            "ProjectionHead",
            "MODEL.CLASSIFIER.HEAD: ProjectionHead is a projector head, not a classifier head",
        ),
        ("TEST.EVALUATORS", ("detection",), "TEST.EVALUATORS: must name"),
        ("TEST.BEST_METRIC", "test/video_top1", "selecting on the test split is not allowed"),
    ],
)
def test_bad_settings_fail_at_start_up(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_cfg(classifier_cfg(**{key: value}))


def test_number_of_classes_must_fit_the_dataset(tmp_path) -> None:
    cfg = classifier_cfg(str(tmp_path), **{"MODEL.CLASSIFIER.NUM_CLASSES": 5})
    with pytest.raises(ValueError, match="NUM_CLASSES is 5 but .* has 3 classes"):
        build_model(cfg).build_train_loader(cfg)
