"""The MoCo baseline: loss, gradients, momentum update, enqueue after both terms."""

from __future__ import annotations

import pytest
import torch

from fima.engine.hooks import MomentumSchedule
from fima.modeling import build_model
from fima.modeling.losses import info_nce
from tests.conftest import random_batch, tiny_cfg


def _model(**overrides):
    torch.manual_seed(0)
    cfg = tiny_cfg(**{"SOLVER.AMP.ENABLED": False, **overrides})
    return cfg, build_model(cfg)


def test_loss_and_gradients_reach_query_side_only() -> None:
    cfg, model = _model()
    losses = model(random_batch(cfg))
    assert set(losses) == {"loss_inst"}
    assert torch.isfinite(losses["loss_inst"])
    losses["loss_inst"].backward()
    assert all(p.grad is not None for p in model.encoder_q.parameters())
    assert all(p.grad is not None for p in model.projector_q.parameters())
    assert all(p.grad is None for p in model.encoder_k.parameters())
    assert all(p.grad is None for p in model.projector_k.parameters())


def test_instance_loss_matches_symmetric_infonce_and_defers_enqueue() -> None:
    cfg, model = _model()
    q = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    k = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    queue_before = model.queue().clone()
    loss = model.instance_loss(q, k)
    expected = (
        info_nce(q[:4], k[4:], temperature=0.1, queue=queue_before)[0]
        + info_nce(q[4:], k[:4], temperature=0.1, queue=queue_before)[0]
    ) / 2
    torch.testing.assert_close(loss, expected)
    assert torch.equal(model.queue(), queue_before)  # nothing enqueued during the forward
    model.update_queues()
    held = {tuple(r) for r in model.queue().tolist()}
    assert all(tuple(r) in held for r in k.tolist())


def test_reference_enqueue_between_terms_changes_second_term() -> None:
    cfg, model = _model(**{"MODEL.MOCO.ENQUEUE_BETWEEN_TERMS": True})
    q = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    k = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    queue = model.queue().clone()
    loss = model.instance_loss(q, k)
    shifted = model.queue.peek_enqueued(k[4:])
    expected = (
        info_nce(q[:4], k[4:], temperature=0.1, queue=queue)[0]
        + info_nce(q[4:], k[:4], temperature=0.1, queue=shifted)[0]
    ) / 2
    torch.testing.assert_close(loss, expected)


def test_momentum_update() -> None:
    """Every key-side parameter, the projector's too, moves towards its query-side twin."""
    cfg, model = _model()
    pairs = [(model.encoder_q, model.encoder_k), (model.projector_q, model.projector_k)]
    with torch.no_grad():
        for online, _ in pairs:
            for p in online.parameters():
                p.add_(1.0)
    before = [[p.clone() for p in target.parameters()] for _, target in pairs]
    model.momentum_update(0.9)
    for (online, target), target_before in zip(pairs, before, strict=True):
        after = list(target.parameters())
        assert len(after) == len(target_before) > 0
        for k_before, q, k_after in zip(target_before, online.parameters(), after, strict=True):
            torch.testing.assert_close(k_after, 0.9 * k_before + 0.1 * q)


def test_a_forward_in_evaluation_enqueues_nothing() -> None:
    cfg, model = _model()
    queue = model.queue().clone()
    with torch.no_grad():
        model.eval()(random_batch(cfg))
    model.update_queues()
    assert torch.equal(model.queue(), queue) and int(model.queue.ptr) == 0
    model.train()(random_batch(cfg))  # the same forward in training does
    model.update_queues()
    assert int(model.queue.ptr) == 8


def test_cosine_momentum_schedule_rises_to_one() -> None:
    schedule = MomentumSchedule(0.99, "cosine")
    assert schedule.momentum_at(0, 100) == 0.99
    assert abs(schedule.momentum_at(100, 100) - 1.0) < 1e-12
    assert schedule.momentum_at(30, 100) < schedule.momentum_at(60, 100)
    # A cosine, not any rise: a quarter of the way, 1 - (1 - 0.99) * (cos(pi / 4) + 1) / 2.
    assert schedule.momentum_at(25, 100) == pytest.approx(0.99146447, abs=1e-8)


def test_unfused_windows_run_the_encoder_per_window() -> None:
    cfg, model = _model(**{"MODEL.MOCO.FUSE_WINDOWS": False})
    calls = []
    model.encoder_q.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    model(random_batch(cfg, batch_size=3))
    assert calls == [3, 3]


def test_bf16_autocast_runs_encoders_in_bf16_and_loss_in_fp32() -> None:
    cfg, model = _model()
    dtypes = []
    model.encoder_q.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(random_batch(cfg))["loss_inst"]
    assert dtypes == [torch.bfloat16]
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
