"""Shuffle-BN: SplitBatchNorm equals per-group BatchNorm, the key pass shuffles and restores the
order in one process and across 2 gloo processes, MoCo's key passes use it, config checks."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from torch import nn

from fima.config import ConfigError, validate_cfg
from fima.engine import DefaultTrainer, launch
from fima.modeling import build_model
from fima.modeling.batch_shuffle import (
    SplitBatchNorm,
    convert_batchnorm,
    device_major,
    shuffled_forward,
    split_bn_groups,
    window_major,
)
from fima.utils import comm
from tests.conftest import tiny_cfg


def _batch(n: int = 8, channels: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, channels, 2, 3, 3, generator=torch.Generator().manual_seed(seed)) * 3 + 1


def test_split_batchnorm_normalises_consecutive_groups_separately() -> None:
    x = _batch()
    split = SplitBatchNorm(4, 2, momentum=0.1)
    with torch.no_grad():
        split.weight.uniform_(0.5, 1.5)
        split.bias.uniform_(-1, 1)
    groups = [nn.BatchNorm3d(4, momentum=0.1) for _ in range(2)]
    for bn in groups:
        bn.load_state_dict(split.state_dict())  # same keys as a plain BatchNorm
    out = split(x)
    for g, bn in enumerate(groups):
        torch.testing.assert_close(out[4 * g : 4 * (g + 1)], bn(x[4 * g : 4 * (g + 1)]))
    torch.testing.assert_close(
        split.running_mean, (groups[0].running_mean + groups[1].running_mean) / 2
    )
    torch.testing.assert_close(
        split.running_var, (groups[0].running_var + groups[1].running_var) / 2
    )
    assert int(split.num_batches_tracked) == 1
    split.eval()
    groups[0].load_state_dict(split.state_dict())
    groups[0].eval()
    torch.testing.assert_close(split(x), groups[0](x))


def test_split_batchnorm_keeps_gradients_and_memory_format() -> None:
    x = _batch().contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    split = SplitBatchNorm(4, 4)
    out = split(x)
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    out.square().sum().backward()
    assert x.grad is not None and split.weight.grad is not None
    with pytest.raises(ValueError, match="cannot be split into 4"):
        split(_batch(n=6))


@pytest.mark.parametrize(
    "dtype, channels_last, affine, momentum, input_grad",
    [
        (torch.float32, False, True, 0.1, True),
        (torch.float32, True, True, None, True),
        (torch.float32, True, False, 0.1, True),
        (torch.float32, False, True, 0.1, False),  # a frozen input: weight and bias grads only
        (torch.bfloat16, True, True, 0.1, True),  # a bfloat16 activation, float32 parameters
    ],
)
def test_split_batchnorm_matches_one_batchnorm_per_group_forward_and_backward(
    dtype: torch.dtype, channels_last: bool, affine: bool, momentum: float | None, input_grad: bool
) -> None:
    x = _batch()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    x = x.to(dtype)
    split = SplitBatchNorm(4, 2, momentum=momentum, affine=affine)
    if affine:
        with torch.no_grad():
            split.weight.uniform_(0.5, 1.5)
            split.bias.uniform_(-1, 1)
    groups = [nn.BatchNorm3d(4, momentum=momentum, affine=affine) for _ in range(2)]
    for bn in groups:
        bn.load_state_dict(split.state_dict())
    ours, theirs = x.clone().requires_grad_(input_grad), x.clone().requires_grad_(input_grad)
    for _ in range(2):  # two steps: the running statistics' update compounds
        out = split(ours)
        expected = torch.cat([bn(part) for bn, part in zip(groups, theirs.chunk(2))])
    tol = {"atol": 2e-2, "rtol": 2e-2} if dtype == torch.bfloat16 else {}
    assert out.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last_3d) == channels_last
    torch.testing.assert_close(out, expected, **tol)
    if input_grad or affine:
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        (out.float() * grad).sum().backward()
        (expected.float() * grad).sum().backward()
    if input_grad:
        torch.testing.assert_close(ours.grad, theirs.grad, **tol)
    if affine:
        for name in ("weight", "bias"):
            summed = sum(getattr(bn, name).grad for bn in groups)
            torch.testing.assert_close(getattr(split, name).grad, summed, **tol)
    for name in ("running_mean", "running_var"):
        mean_of_groups = (getattr(groups[0], name) + getattr(groups[1], name)) / 2
        torch.testing.assert_close(getattr(split, name), mean_of_groups, **tol)
    assert int(split.num_batches_tracked) == 2


def test_convert_batchnorm_keeps_parameters_and_buffers() -> None:
    cfg = tiny_cfg()
    model = build_model(cfg)
    weight = model.encoder_q.stem[1].weight
    mean = model.encoder_k.stem[1].running_mean
    converted = convert_batchnorm(model, split_groups=2)
    assert converted is model and split_bn_groups(model.encoder_k) == 2
    assert isinstance(model.encoder_q.stem[1], SplitBatchNorm)
    assert model.encoder_q.stem[1].weight is weight
    assert model.encoder_k.stem[1].running_mean is mean
    assert not any(type(m) is nn.BatchNorm3d for m in model.modules())
    synced = convert_batchnorm(build_model(cfg), sync=True)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
    assert convert_batchnorm(model) is model
    with pytest.raises(ValueError, match="exclude"):
        convert_batchnorm(model, split_groups=2, sync=True)


class _Recorder(nn.Module):
    """A per-sample function (no batch statistics) that records what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return x.flatten(1).sum(1, keepdim=True) * torch.arange(1.0, 4.0)


def test_one_process_without_groups_runs_the_module_as_is() -> None:
    module, x = _Recorder(), _batch()
    state = torch.get_rng_state()
    torch.testing.assert_close(shuffled_forward(module, x), module(x))
    assert torch.equal(module.seen[0], x)
    assert torch.equal(torch.get_rng_state(), state)  # no permutation drawn


def test_split_groups_shuffle_the_batch_and_restore_its_order() -> None:
    module, x = nn.Sequential(SplitBatchNorm(4, 2), _Recorder()), _batch()
    torch.manual_seed(0)
    out = shuffled_forward(module, x)
    torch.manual_seed(0)
    perm = torch.randperm(8)
    assert torch.equal(module[1].seen[0], module[0](x[perm]))
    expected = torch.empty_like(out)
    expected[perm] = module(x[perm])
    torch.testing.assert_close(out, expected)
    assert not torch.equal(perm, torch.arange(8))


def test_split_groups_keep_the_memory_format_of_clips() -> None:
    seen: list[torch.Tensor] = []
    module = nn.Sequential(SplitBatchNorm(3, 2), nn.Conv3d(3, 4, 1))
    module[1].register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    x = torch.rand(4, 3, 2, 5, 6).contiguous(memory_format=torch.channels_last_3d)
    torch.manual_seed(0)
    with torch.no_grad():
        out = shuffled_forward(module, x)
        torch.manual_seed(0)
        perm = torch.randperm(4)
        assert seen[0].is_contiguous(memory_format=torch.channels_last_3d)
        assert torch.equal(seen[0], module[0](x[perm]))
        unshuffled = module(x[perm])
    # The output keeps the layout the module gives (channels_last_3d here, except that PyTorch
    # returns a tiny convolution's output contiguous when it runs on one thread).
    assert out.stride() == unshuffled.stride()
    expected = torch.empty_like(out)
    expected[perm] = unshuffled
    torch.testing.assert_close(out, expected)


def _shuffle_across_ranks(n: int) -> None:
    rank, world = comm.get_rank(), comm.get_world_size()
    x = _batch(n=n, seed=rank)
    everything = comm.all_gather_tensor(x)
    module = _Recorder()
    torch.manual_seed(123)  # only rank 0's draw matters: it is broadcast
    out = shuffled_forward(module, x)
    # Each sample's output comes back to its own rank, in order.
    torch.testing.assert_close(out, module.forward(x))
    # This rank encoded its slice of a global permutation, drawn by rank 0.
    torch.manual_seed(123)
    perm = torch.randperm(world * n)
    torch.testing.assert_close(module.seen[0], everything[perm[rank * n : (rank + 1) * n]])
    seen = comm.all_gather_tensor(module.seen[0])
    assert sorted(map(tuple, seen.flatten(1).tolist())) == sorted(
        map(tuple, everything.flatten(1).tolist())
    )
    # SyncBatchNorm already normalises over all ranks: nothing is shuffled.
    synced = nn.Sequential(nn.SyncBatchNorm(4).eval(), _Recorder())
    shuffled_forward(synced, x)
    assert torch.equal(synced[1].seen[0], synced[0](x))


def test_shuffle_across_two_processes() -> None:
    launch(_shuffle_across_ranks, 2, args=(5,))


def test_moco_key_passes_use_the_split_groups() -> None:
    cfg = tiny_cfg(**{"SOLVER.AMP.ENABLED": False})
    model = convert_batchnorm(build_model(cfg), split_groups=2)
    clips = torch.rand(8, 3, cfg.INPUT.NUM_FRAMES, 32, 32)
    torch.manual_seed(0)
    keys = model.encode_keys(clips)
    torch.manual_seed(0)
    perm = torch.randperm(8)
    expected = torch.empty_like(keys)
    with torch.no_grad():
        expected[perm] = model.encoder_k(clips[perm])
    torch.testing.assert_close(keys, expected)
    with torch.no_grad():
        assert not torch.allclose(keys, model.encoder_k(clips))  # other BatchNorm groups


def test_device_major_puts_both_windows_of_a_device_together() -> None:
    # Window-major [m_0..m_5, n_0..n_5]; 3 devices of 2 videos each.
    x = torch.arange(12.0).view(12, 1, 1, 1, 1).expand(12, 2, 2, 2, 2)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    laid_out = device_major(x, windows=2, groups=3)
    assert laid_out[:, 0, 0, 0, 0].tolist() == [0, 1, 6, 7, 2, 3, 8, 9, 4, 5, 10, 11]
    assert laid_out.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.equal(window_major(laid_out, windows=2, groups=3), x)


def test_fused_query_pass_normalises_each_device_over_both_windows_of_its_videos() -> None:
    """With 2 emulated devices, the query encoder's BatchNorm groups are what 2 DDP ranks with
    2 videos each would see: [m_0, m_1, n_0, n_1] and [m_2, m_3, n_2, n_3]."""
    cfg = tiny_cfg(**{"SOLVER.AMP.ENABLED": False})
    model = convert_batchnorm(build_model(cfg), split_groups=2)
    reference = build_model(cfg)
    reference.load_state_dict(model.state_dict())
    clips = torch.rand(8, 3, cfg.INPUT.NUM_FRAMES, 32, 32)  # windows m then n of 4 videos
    feats = model.encode(model.encoder_q, clips, windows=2)
    for device in (0, 1):
        videos = [2 * device, 2 * device + 1]
        rows = videos + [4 + v for v in videos]
        torch.testing.assert_close(feats[rows], reference.encoder_q(clips[rows]))


@pytest.mark.parametrize(
    ("overrides", "world", "message"),
    [
        ({"MODEL.SPLIT_BN_GROUPS": 3}, 1, "MODEL.SPLIT_BN_GROUPS: 3 must divide the 4 clips"),
        ({"MODEL.SPLIT_BN_GROUPS": 4}, 2, "MODEL.SPLIT_BN_GROUPS: 4 must divide the 2 clips"),
        ({"MODEL.SPLIT_BN_GROUPS": 0}, 1, "MODEL.SPLIT_BN_GROUPS: must be >= 1"),
        ({"MODEL.SYNC_BN": True, "MODEL.DEVICE": "cpu"}, 2, "MODEL.SYNC_BN: needs GPUs"),
        ({"MODEL.SYNC_BN": True, "MODEL.SPLIT_BN_GROUPS": 2}, 1, "MODEL.SYNC_BN: excludes"),
    ],
)
def test_batchnorm_settings_are_validated(overrides: dict, world: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_cfg(tiny_cfg(**overrides), world)


def test_split_groups_that_divide_the_batch_are_accepted() -> None:
    validate_cfg(tiny_cfg(**{"MODEL.SPLIT_BN_GROUPS": 2}), 2)


def test_default_trainer_emulates_split_groups_under_bfloat16(tmp_path) -> None:
    cfg = tiny_cfg(str(tmp_path), **{"MODEL.SPLIT_BN_GROUPS": 2, "SOLVER.MAX_ITER": 2})
    assert cfg.SOLVER.AMP.ENABLED
    # bfloat16 even on a CPU that would only emulate it (the run would otherwise fall back).
    with mock.patch("fima.engine.train_loop.native_autocast", return_value=True):
        trainer = DefaultTrainer(cfg)
    assert trainer.amp
    assert split_bn_groups(trainer.method.encoder_q) == split_bn_groups(trainer.method) == 2
    trainer.train()
    assert torch.isfinite(torch.tensor(trainer.loss_dict["loss_inst"]))


@pytest.mark.parametrize(("overrides", "world", "warns"), [
    ({}, 1, True),
    ({"MODEL.SPLIT_BN_GROUPS": 2}, 1, False),
    ({}, 2, False),
])  # fmt: skip
def test_single_process_moco_without_shuffle_bn_is_warned_about(
    overrides: dict, world: int, warns: bool, caplog
) -> None:
    with caplog.at_level("WARNING", logger="fima.modeling.ssl.moco"):
        validate_cfg(tiny_cfg(**overrides), world)
    assert ("emulate shuffle-BN" in caplog.text) == warns
