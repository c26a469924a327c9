"""FIMA: the losses wired as RECIPE.md says, gradients, queues, key-pass grouping, any backbone."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from fima.config import ConfigError, validate_cfg
from fima.engine.train_loop import native_autocast
from fima.modeling import HEAD_REGISTRY, build_model
from fima.modeling.losses import dense_contrastive_loss, info_nce
from fima.modeling.motion import foreground_grid_mask
from fima.modeling.ssl.fima import FIMA, _feature_map_shape
from fima.utils.events import EventStorage
from tests.conftest import load_user_backbone, random_batch, tiny_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIMA_TINY = {
    "MODEL.META_ARCHITECTURE": "FIMA",
    "MODEL.FIMA.MOTION_QUEUE_SIZE": 40,
    "MODEL.FIMA.DENSE_QUEUE_SIZE": 0,
    "MODEL.MOTION_DECODER.DIM": 16,
    "MODEL.MOTION_DECODER.FFN_DIM": 16,
    "SOLVER.AMP.ENABLED": False,
}
NO_AUGMENTATION = {
    "INPUT.AUG.GRAYSCALE_PROB": 0.0,
    "INPUT.AUG.COLOR_JITTER_PROB": 0.0,
    "INPUT.AUG.BLUR_PROB": 0.0,
}


def _model(**overrides):
    cfg = tiny_cfg(**{**FIMA_TINY, **overrides})
    validate_cfg(cfg)
    torch.manual_seed(0)
    return cfg, build_model(cfg)


def _batch(cfg, batch_size: int = 2, seed: int = 0) -> dict:
    """A random batch with distinct boxes per sample and window, some of them flipped."""
    batch = random_batch(cfg, batch_size, local=True)
    gen = torch.Generator().manual_seed(seed)
    for key in ("global", "local"):
        batch[key] = torch.randint(0, 256, batch[key].shape, dtype=torch.uint8, generator=gen)
    low = 0.3 * torch.rand(batch_size, 2, 2, generator=gen)
    high = 0.7 + 0.3 * torch.rand(batch_size, 2, 2, generator=gen)
    box = torch.cat([low, high], dim=2)
    flip = torch.rand(batch_size, 2, generator=gen) < 0.5
    box[flip] = box[flip][:, [2, 1, 0, 3]]
    batch["global_box"] = box
    return batch


def _deterministic(model: FIMA) -> FIMA:
    """Training-mode method (so keys are stashed) with BatchNorm and dropout in eval mode, so
    that the grouping of clips into encoder calls cannot change any value."""
    model.train()
    for module in (model.encoder_q, model.encoder_k, model.decoder):
        module.eval()
    return model


def naive_losses(model: FIMA, batch: dict) -> dict[str, torch.Tensor]:
    """RECIPE.md §2-§6 restated view by view and window by window, with the model's parts."""
    mean, std = model.augment.mean, model.augment.std
    clips = batch["global"].float() / 255
    local = batch["local"].float() / 255

    def diff(x):
        return (x - x.roll(1, dims=2) + 1) / 2

    def norm(x):
        return (x - mean) / std

    enc_q, enc_k, proj_q, proj_k = (
        model.encoder_q, model.encoder_k, model.projector_q, model.projector_k
    )  # fmt: skip
    with torch.no_grad():
        f_k = [enc_k(norm(clips[:, w])) for w in range(2)]
        d_k = [enc_k(norm(diff(clips[:, w]))) for w in range(2)]
        l_k = [
            [proj_k.embed(enc_k(norm(diff(local[:, w, h])))) for w in range(2)] for h in range(2)
        ]
    f_q = [enc_q(norm(clips[:, w])) for w in range(2)]
    length, height, width = f_q[0].shape[2:]
    masks = [foreground_grid_mask(f_k[w], d_k[w]).flatten(1) for w in range(2)]
    dense_keys = [
        [proj_k.project(d_k[w][:, :, t]).flatten(2).transpose(1, 2) for t in range(length)]
        for w in range(2)
    ]
    dense_terms, local_terms = [], []
    for w in range(2):
        n = 1 - w
        out = model.decoder(f_q[w], f_q[n])  # target = window w, memory = window n
        for t in range(length):
            tokens = out[:, t]  # [B, 1 + HW, C]
            pred = proj_q.project(tokens.transpose(1, 2)[:, :, :, None])[:, :, :, 0]
            pred = pred.transpose(1, 2)  # [B, 1 + HW, D]
            others = torch.cat([dense_keys[n][s] for s in range(length) if s != t], dim=1)
            dense_terms.append(
                dense_contrastive_loss(
                    pred[:, 1:], dense_keys[n][t], others, batch["global_box"][:, w],
                    batch["global_box"][:, n], masks[w], masks[n], pos_ratio=model.pos_ratio,
                    temperature=0.1, grid=(height, width),
                )
            )  # fmt: skip
            half = 2 * t // length
            negatives = torch.cat([l_k[1 - half][n], l_k[0][w], l_k[1][w]])
            local_terms.append(
                info_nce(pred[:, 0], l_k[half][n], temperature=0.1,
                         queue=model.motion_queue(), negatives=negatives)[0]
            )  # fmt: skip
    return {
        "loss_dense": torch.stack(dense_terms).mean(),
        "loss_local": torch.stack(local_terms).mean(),
        "motion_keys": torch.cat([l_k[0][1], l_k[1][1], l_k[0][0], l_k[1][0]]),
    }


def test_losses_metrics_and_views() -> None:
    cfg, model = _model()
    assert FIMA.input_views(cfg) == ("global", "local")
    with EventStorage() as storage:
        losses = model(_batch(cfg))
        latest = storage.latest()
    assert set(losses) == {"loss_inst", "loss_dense", "loss_local"}
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
    assert {"acc_inst", "acc_local", "fg_share", "pos_cell_share"} <= set(latest)
    assert 0.3 < latest["fg_share"][0] <= 0.5
    assert 0.0 <= latest["pos_cell_share"][0] <= latest["fg_share"][0]


@pytest.mark.parametrize("windows_fused", [True, False])
@pytest.mark.parametrize("key_passes", ["modality", "kind", "view"])
def test_losses_match_a_view_by_view_restatement(windows_fused: bool, key_passes: str) -> None:
    cfg, model = _model(
        **NO_AUGMENTATION,
        **{"MODEL.MOCO.FUSE_WINDOWS": windows_fused, "MODEL.FIMA.KEY_PASSES": key_passes},
    )
    model = _deterministic(model)
    batch = _batch(cfg, batch_size=3)
    calls, query_calls = [], []
    model.encoder_k.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    model.encoder_q.register_forward_hook(lambda m, i, o: query_calls.append(i[0].shape[0]))
    losses = model(batch)
    recorded = list(calls)  # before the restatement's own calls
    assert query_calls == ([6] if windows_fused else [3, 3])
    expected = naive_losses(model, batch)
    for name in ("loss_dense", "loss_local"):
        torch.testing.assert_close(losses[name], expected[name], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        torch.cat(model._pending_keys["motion_queue"]), expected["motion_keys"]
    )
    # Key-encoder calls: RGB, then the differences (global view + two local halves).
    expected_calls = {"modality": [6, 18], "kind": [6, 6, 12], "view": [3] * 8}
    assert recorded == expected_calls[key_passes]


@pytest.mark.parametrize(
    ("term_off", "expected_calls"),
    # B = 3 clips per window: RGB (2B), then one call per kind of difference clip.
    [("DENSE_WEIGHT", [6, 12]), ("LOCAL_WEIGHT", [6, 6])],
)
def test_kind_key_passes_keep_each_kind_in_one_call_with_a_term_off(
    term_off: str, expected_calls: list[int]
) -> None:
    # Without the dense term the two local halves are one kind: one call of 4B clips, not two.
    cfg, model = _model(**{"MODEL.FIMA.KEY_PASSES": "kind", f"MODEL.FIMA.{term_off}": 0.0})
    calls = []
    model.encoder_k.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    model(_batch(cfg, batch_size=3))
    assert calls == expected_calls


def test_loss_weights_scale_terms_and_zero_drops_them() -> None:
    weights = {"MODEL.FIMA.DENSE_WEIGHT": 0.5, "MODEL.FIMA.LOCAL_WEIGHT": 0.25}
    cfg, model = _model(**NO_AUGMENTATION, **weights)
    batch = _batch(cfg)
    losses = _deterministic(model)(batch)
    naive = naive_losses(model, batch)
    for term, weight in (("loss_dense", 0.5), ("loss_local", 0.25)):
        torch.testing.assert_close(losses[term], weight * naive[term], rtol=1e-4, atol=1e-5)
    cfg, model = _model(**{"MODEL.FIMA.LOCAL_WEIGHT": 0.0})
    assert FIMA.input_views(cfg) == ("global",) and model.motion_queue is None
    calls = []
    model.encoder_k.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    batch = _batch(cfg)
    del batch["local"]
    assert set(model(batch)) == {"loss_inst", "loss_dense"}
    assert calls == [4, 4]  # RGB, global-view differences
    cfg, model = _model(**{"MODEL.FIMA.DENSE_WEIGHT": 0.0})
    assert set(model(_batch(cfg))) == {"loss_inst", "loss_local"}
    cfg, model = _model(**{"MODEL.FIMA.DENSE_WEIGHT": 0.0, "MODEL.FIMA.LOCAL_WEIGHT": 0.0})
    assert model.decoder is None and set(model(_batch(cfg))) == {"loss_inst"}


@pytest.mark.parametrize("self_attention", [False, True])
def test_gradients_reach_query_side_from_each_loss(self_attention: bool) -> None:
    cfg, model = _model(**{"MODEL.MOTION_DECODER.SELF_ATTENTION": self_attention})
    batch = _batch(cfg)
    uses_decoder = {"loss_inst": False, "loss_dense": True, "loss_local": True}
    for name, decoded in uses_decoder.items():
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        model(batch)[name].backward()
        for part in (model.encoder_q, model.projector_q):
            assert all(p.grad is not None for p in part.parameters()), (name, part)
            assert sum(p.grad.abs().sum() for p in part.parameters()) > 0, name
        decoder_grads = {n: p.grad for n, p in model.decoder.named_parameters()}
        if decoded:
            assert all(g is not None for g in decoder_grads.values()), name
            assert sum(g.abs().sum() for g in decoder_grads.values()) > 0, name
            # Without self-attention the CLS token reaches only the local (CLS) prediction.
            cls_used = name == "loss_local" or self_attention
            assert (decoder_grads["cls_token"].abs().sum() > 0) == cls_used, name
        else:
            assert all(g is None for g in decoder_grads.values())
        for part in (model.encoder_k, model.projector_k):
            assert all(p.grad is None for p in part.parameters())


@pytest.mark.parametrize("channels_last", [True, False])
def test_gradients_keep_the_strides_of_their_parameters(channels_last: bool) -> None:
    # DistributedDataParallel builds its buckets with each parameter's strides and warns, once
    # per rank and step copying, when a gradient comes back with others: the projector's 1x1
    # convolutions on channels-last maps gave their weights channels-last gradients.
    cfg, model = _model(**{"MODEL.CHANNELS_LAST": channels_last})
    torch.manual_seed(1)
    sum(model(_batch(cfg)).values()).backward()
    strides = {
        name: (param.stride(), param.grad.stride())
        for name, param in model.named_parameters()
        if param.grad is not None
    }
    assert any(name.startswith("projector_q.") for name in strides)
    assert {name: pair for name, pair in strides.items() if pair[0] != pair[1]} == {}


@pytest.mark.parametrize("dense_queue", [0, 100])
def test_queues_hold_exactly_the_last_keys(dense_queue: int) -> None:
    # 8 local keys per step into 20 slots and 64 dense keys into 100: both wrap unevenly.
    cfg, model = _model(
        **{"MODEL.FIMA.DENSE_QUEUE_SIZE": dense_queue, "MODEL.FIMA.MOTION_QUEUE_SIZE": 20}
    )
    if dense_queue:
        # 2 windows x 2 samples x T'=2 x 2x2 cells = 32 dense keys per step.
        assert model.dense_queue is not None and model.dense_queue.size == dense_queue
    history: dict[str, list[torch.Tensor]] = {"queue": [], "motion_queue": [], "dense_queue": []}
    for step in range(4):
        model(_batch(cfg, seed=step))
        for name, keys in model._pending_keys.items():
            history[name].append(torch.cat(keys))
        model.update_queues()
        for name, parts in history.items():
            if not parts:
                continue
            queue = getattr(model, name)
            everything = torch.cat(parts)
            held = {tuple(r) for r in queue().tolist()}
            assert all(tuple(r) in held for r in everything[-queue.size :].tolist()), name
            assert int(queue.ptr) == len(everything) % queue.size
    assert len(torch.cat(history["motion_queue"])) == 4 * 8 > model.motion_queue.size
    assert bool(history["dense_queue"]) == bool(dense_queue)


def test_bf16_autocast_runs_encoders_in_bf16_and_losses_in_fp32() -> None:
    cfg, model = _model()
    dtypes = []
    for encoder in (model.encoder_q, model.encoder_k):
        encoder.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(_batch(cfg))
    assert dtypes and all(d == torch.bfloat16 for d in dtypes)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    assert model.motion_queue().dtype == torch.float32


@pytest.mark.parametrize(
    ("backbone", "frames", "crop"),
    # I3D (space /32) at 48 px: a 2x2 grid; at 32 px its one cell has no foreground.
    [("I3D", 16, 48), ("R2Plus1D18", 16, 32), ("R3D18", 16, 32), ("Tiny3D", 8, 32),
     ("Tiny3D", 16, 48), ("TwoLayer3D", 8, 16)],
)  # fmt: skip
def test_every_backbone_trains_with_fima(backbone: str, frames: int, crop: int) -> None:
    load_user_backbone()
    overrides = {"MODEL.BACKBONE.NAME": backbone, "INPUT.NUM_FRAMES": frames,
                 "INPUT.CROP_SIZE": crop}  # fmt: skip
    cfg = tiny_cfg(**{**FIMA_TINY, **overrides})
    if backbone == "TwoLayer3D":
        from fima.config.config import CfgNode

        cfg.MODEL.TWO_LAYER3D = CfgNode({"WIDTH": 8})
    validate_cfg(cfg)
    torch.manual_seed(0)
    model = build_model(cfg)
    # The training default (bf16) where the CPU has it; emulated, the full-size backbones take
    # minutes, and training would run them in fp32 there anyway (resolve_amp).
    with torch.autocast(
        "cpu", dtype=torch.bfloat16, enabled=native_autocast("cpu", torch.bfloat16)
    ):
        losses = model(_batch(cfg))
    sum(losses.values()).backward()
    assert set(losses) == {"loss_inst", "loss_dense", "loss_local"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert any(p.grad is not None for p in model.decoder.parameters())


@pytest.mark.parametrize("backbone", ["I3D", "R2Plus1D18", "R3D18", "Tiny3D"])
def test_start_up_check_knows_every_builtin_feature_map(backbone: str) -> None:
    cfg = tiny_cfg(**{**FIMA_TINY, "MODEL.BACKBONE.NAME": backbone, "INPUT.NUM_FRAMES": 16})
    cfg.INPUT.CROP_SIZE = 64
    expected = {"I3D": (2, 2, 2), "R2Plus1D18": (2, 4, 4), "R3D18": (2, 4, 4), "Tiny3D": (4, 4, 4)}
    assert _feature_map_shape(cfg, 16) == expected[backbone]


@pytest.mark.parametrize(
    ("frames", "crop", "slices"),
    # 4 frames at 16x16 is a 1x1x1 feature map, on which BatchNorm in training mode would fail.
    [(12, 32, 3), (4, 32, 1), (4, 16, 1)],
)
def test_slices_that_do_not_split_into_halves_are_rejected_at_start_up(
    frames: int, crop: int, slices: int
) -> None:
    cfg = tiny_cfg(**{**FIMA_TINY, "INPUT.NUM_FRAMES": frames, "INPUT.CROP_SIZE": crop})
    with pytest.raises(ConfigError, match=f"INPUT.NUM_FRAMES: .*T'={slices} temporal slices"):
        validate_cfg(cfg)
    cfg.MODEL.FIMA.LOCAL_WEIGHT = 0.0  # the dense term alone handles any T'
    if crop // 16 >= 2:  # Tiny3D's spatial stride is 16
        validate_cfg(cfg)
    else:  # but not a grid of one cell (test_a_one_cell_grid_is_rejected_with_the_dense_term)
        with pytest.raises(ConfigError, match="INPUT.CROP_SIZE: .*1x1 feature grid"):
            validate_cfg(cfg)


@pytest.mark.parametrize("local_weight", [1.0, 0.0])
def test_a_one_cell_grid_is_rejected_with_the_dense_term(local_weight: float) -> None:
    """16-pixel crops give Tiny3D (space /16) one cell, whose foreground mask (the cells above
    the median) is empty: the dense loss would be 0 at every step."""
    cfg = tiny_cfg(**{**FIMA_TINY, "INPUT.CROP_SIZE": 16, "MODEL.FIMA.LOCAL_WEIGHT": local_weight})
    with pytest.raises(ConfigError, match="INPUT.CROP_SIZE: 16-pixel crops give Tiny3D a 1x1"):
        validate_cfg(cfg)
    # What the check prevents: one cell is never foreground, so no cell has a positive.
    cell = torch.rand(2, 4, 2, 1, 1)
    assert not foreground_grid_mask(cell, cell).any()
    # A backbone that cannot run on the meta device is checked at the first step instead.
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="^FIMA: the backbone gives a 1x1 feature grid"):
        build_model(cfg)(_batch(cfg))
    cfg.MODEL.FIMA.DENSE_WEIGHT = 0.0  # the other terms are fine on one cell
    validate_cfg(cfg)
    cfg.MODEL.FIMA.DENSE_WEIGHT, cfg.INPUT.CROP_SIZE = 1.0, 32  # and 2x2 cells are enough
    validate_cfg(cfg)


def test_config_errors_name_the_key() -> None:
    cases = {
        "MODEL.FIMA.MOTION_QUEUE_SIZE": (8, "smaller than the 16 local keys"),
        "MODEL.FIMA.DENSE_QUEUE_SIZE": (20, "smaller than the 64 dense keys"),
        "INPUT.SAMPLING_RATE": (3, "must be even"),
        "MODEL.MOTION_DECODER.DIM": (18, "multiple of NUM_HEADS"),
        "MODEL.FIMA.DENSE_WEIGHT": (-1.0, "must be >= 0"),
        # A misspelt head is a one-line start-up error, not a traceback from the model build.
        "MODEL.PROJECTOR.NAME": ("Projection", "No head named 'Projection'"),
        "MODEL.MOTION_DECODER.NAME": ("Decoder", "No head named 'Decoder'"),
    }
    # A head of another kind: one line naming the key, not a traceback from the first step.
    for key, value, message in (
        ("MODEL.PROJECTOR.NAME", "LinearClassifier", "a classifier head, not a projector head"),
        ("MODEL.MOTION_DECODER.NAME", "ProjectionHead", "a projector head, not a motion decoder"),
    ):
        with pytest.raises(ConfigError, match=f"{key}: {value} is {message}"):
            validate_cfg(tiny_cfg(**{**FIMA_TINY, key: value}))
    for key, (value, message) in cases.items():
        cfg = tiny_cfg(**{**FIMA_TINY, key: value})
        with pytest.raises(ConfigError, match=f"{key}: .*{message}"):
            validate_cfg(cfg)
    # Tiny3D turns 5 frames into 2 slices but the 4 frames of their differences into 1.
    cfg = tiny_cfg(
        **{**FIMA_TINY, "MODEL.FIMA.DIFF_WRAP_FIRST_FRAME": False, "INPUT.NUM_FRAMES": 5}
    )
    with pytest.raises(ConfigError, match="MODEL.FIMA.DIFF_WRAP_FIRST_FRAME: False makes"):
        validate_cfg(cfg)


def test_a_projector_of_ones_own_must_have_what_the_method_calls() -> None:
    """A head named by MODEL.PROJECTOR.NAME is called through embed() (MoCo) and project()
    (FIMA): one without them is a start-up error, not an AttributeError at the first step."""

    @HEAD_REGISTRY.register()
    class _ForwardOnly(nn.Module):
        def __init__(self, cfg, in_channels: int) -> None:
            super().__init__()

    @HEAD_REGISTRY.register()
    class _EmbedOnly(_ForwardOnly):
        def embed(self, feat: torch.Tensor) -> torch.Tensor:
            return feat.mean(dim=(2, 3, 4))

    try:
        moco = tiny_cfg(**{"MODEL.PROJECTOR.NAME": "_ForwardOnly"})
        with pytest.raises(
            ConfigError, match=r"^MODEL.PROJECTOR.NAME: _ForwardOnly has no embed\(\); MoCo"
        ):
            validate_cfg(moco)
        moco.MODEL.PROJECTOR.NAME = "_EmbedOnly"
        validate_cfg(moco)  # all that MoCo calls
        fima = tiny_cfg(**{**FIMA_TINY, "MODEL.PROJECTOR.NAME": "_EmbedOnly"})
        with pytest.raises(ConfigError, match=r"_EmbedOnly has no project\(\); FIMA calls"):
            validate_cfg(fima)
    finally:
        HEAD_REGISTRY._obj_map.pop("_ForwardOnly")
        HEAD_REGISTRY._obj_map.pop("_EmbedOnly")


def test_dropping_the_wrapped_difference_frame() -> None:
    cfg, model = _model(**{"MODEL.FIMA.DIFF_WRAP_FIRST_FRAME": False})
    shapes = []
    model.encoder_k.register_forward_hook(lambda m, i, o: shapes.append(i[0].shape[2]))
    losses = model(_batch(cfg))
    assert shapes == [8, 7]  # RGB clips, then differences without the wrapped frame
    assert all(torch.isfinite(v) for v in losses.values())
