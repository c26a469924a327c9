"""Shuffle-BN for the key encoder: across ranks under DDP, across emulated groups in one process.

A BatchNorm layer in training mode normalises each clip with statistics of the clips it is
batched with. If the key encoder saw the same groups of clips as the query encoder, a query could
find its positive key through those shared statistics instead of through the content (MoCo, He et
al. 2020, §3.3). So every key pass shuffles the clips between BatchNorm groups, encodes them, and
puts the outputs back in the original order:

- Under DDP (each rank's BatchNorm is a group) the clips of all ranks are permuted at random
  (rank 0 draws the permutation and broadcasts it); each rank encodes its share of the permuted
  batch and the outputs return to the ranks the clips came from (two all-to-alls of the local
  batch, not an all-gather of the global one).
- In one process, ``MODEL.SPLIT_BN_GROUPS = G`` emulates G devices: :func:`convert_batchnorm`
  replaces every BatchNorm with :class:`SplitBatchNorm`, which normalises G consecutive slices
  of the batch separately, and the key pass permutes the batch before the encoder. A query pass
  over both windows (window-major ``[m_0..m_{B-1}, n_0..n_{B-1}]``) is laid out device by device
  first (:func:`device_major`), so that a group holds both windows of its videos, as one device
  of a real DDP run would.
- Both combine: under DDP with G > 1 each rank emulates G devices.
- With SyncBatchNorm (``MODEL.SYNC_BN``) the statistics span the whole global batch, so there is
  nothing to shuffle and the key pass runs as it is.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fima.config.config import CfgNode
from fima.utils import comm


class SplitBatchNorm(_BatchNorm):
    """BatchNorm over ``num_splits`` groups of the batch at once, to emulate that many devices.

    In training mode (or without running statistics) group ``g`` = the ``g``-th of ``G``
    consecutive, equal slices of the batch is normalised with its own statistics; the running
    statistics are updated per group, then averaged over the groups. In evaluation it is an
    ordinary BatchNorm, and its state dict has the same keys, so checkpoints load into models
    with plain BatchNorm and back.

    Args:
        num_features: channels ``C`` of the input ``[N, C, ...]``.
        num_splits: groups ``G``; ``N`` must be divisible by it.
        **kwargs: as for ``nn.BatchNorm3d`` (eps, momentum, affine, track_running_stats).
    """

    def __init__(self, num_features: int, num_splits: int, **kwargs: object) -> None:
        super().__init__(num_features, **kwargs)
        if num_splits < 1:
            raise ValueError(f"num_splits must be >= 1, got {num_splits}")
        self.num_splits = num_splits

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input [N, C, ...], got {input.dim()}-D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Normalise each of the ``num_splits`` groups of the batch with its own statistics.

        Args:
            input: ``[N, C, ...]`` (e.g. ``[N, C, T, H, W]``); ``num_splits`` divides ``N`` in
                training mode.

        Returns:
            The normalised input, with its shape and memory format.

        Raises:
            ValueError: ``N`` does not split into ``num_splits`` equal groups.
        """
        self._check_input_dim(input)
        groups = self.num_splits
        batch_stats = self.training or self.running_mean is None
        if groups == 1 or not batch_stats:
            return super().forward(input)
        n, c = input.shape[:2]
        if n % groups:
            raise ValueError(
                f"SplitBatchNorm: a batch of {n} cannot be split into {groups} equal groups "
                "(MODEL.SPLIT_BN_GROUPS must divide every batch the encoders see)"
            )
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as nn.BatchNorm does
                factor = 1.0 / float(self.num_batches_tracked)
        output, mean, invstd = _GroupBatchNorm.apply(
            input, self.weight, self.bias, groups, self.eps
        )
        if self.running_mean is not None and self.training:
            # Each group's running update, averaged over the groups, as G devices' BatchNorms
            # followed by an average of their buffers would give.
            with torch.no_grad():
                count = input.numel() // (groups * c)
                biased_var = invstd.float().pow(-2) - self.eps
                unbiased_var = biased_var * (count / max(count - 1, 1))
                self.running_mean.mul_(1 - factor).add_(mean.float().mean(0), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased_var.mean(0), alpha=factor)
        return output

    def extra_repr(self) -> str:
        """BatchNorm's description with ``num_splits``."""
        return f"{super().extra_repr()}, num_splits={self.num_splits}"


class _GroupBatchNorm(torch.autograd.Function):
    """Training-mode BatchNorm of ``G`` consecutive slices of the batch, each with its own
    statistics, written by the native kernels straight into one output and one input gradient.

    A group of consecutive samples is a contiguous slice in either memory format, so each is
    normalised in place of the output without a copy. Normalising the slices separately and
    concatenating them copied every activation once more forward and once backward (split's
    backward is a concatenation too): torch.cat was 16% of the profiled CPU time of a FIMA step
    of the motion benchmark's Tiny3D, and one layer's forward and backward on its activations
    take 1.05-1.7x less time this way (the largest activation gains the most).
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        input: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        groups: int,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``input [N, C, ...]`` -> output (same shape and memory format), and per-group
        ``mean [G, C]`` and ``invstd [G, C]`` (1 / sqrt(biased variance + eps))."""
        channels = input.shape[1]
        # The kernels keep their statistics in the parameters' dtype when it differs from the
        # input's (a bfloat16 activation with float32 affine parameters).
        stats_dtype = weight.dtype if weight is not None else input.dtype
        output = torch.empty_like(input)
        mean = input.new_empty(groups, channels, dtype=stats_dtype)
        invstd = torch.empty_like(mean)
        for g, (part, out) in enumerate(zip(input.chunk(groups), output.chunk(groups))):
            torch.native_batch_norm(
                part, weight, bias, None, None, True, 0.0, eps, out=(out, mean[g], invstd[g])
            )
        ctx.save_for_backward(input, weight, mean, invstd)
        ctx.groups, ctx.eps = groups, eps
        ctx.has_affine = weight is not None, bias is not None
        ctx.mark_non_differentiable(mean, invstd)
        return output, mean, invstd

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx,
        grad_output: torch.Tensor,
        _grad_mean: torch.Tensor | None,
        _grad_invstd: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, ...]:
        input, weight, mean, invstd = ctx.saved_tensors
        groups, channels = ctx.groups, input.shape[1]
        # The kernel reads the gradient in the input's layout.
        grad_output = grad_output.contiguous(memory_format=_memory_format(input))
        need_input = ctx.needs_input_grad[0]
        need_weight = ctx.has_affine[0] and ctx.needs_input_grad[1]
        need_bias = ctx.has_affine[1] and ctx.needs_input_grad[2]
        mask = [need_input, need_weight, need_bias]
        grad_input = torch.empty_like(input) if need_input else None
        param_dtype = weight.dtype if weight is not None else input.dtype
        grad_weight = input.new_zeros(groups, channels, dtype=param_dtype)
        grad_bias = torch.zeros_like(grad_weight)
        for g, (dy, x) in enumerate(zip(grad_output.chunk(groups), input.chunk(groups))):
            args = (dy, x, weight, None, None, mean[g], invstd[g], True, ctx.eps, mask)
            dx = grad_input.narrow(0, g * len(x), len(x)) if grad_input is not None else None
            if all(mask):
                torch.ops.aten.native_batch_norm_backward.out(
                    *args, out0=dx, out1=grad_weight[g], out2=grad_bias[g]
                )
                continue
            # The out= kernel needs all three gradients; without an affine or an input gradient
            # (a frozen layer) the gradients it does compute are written over.
            parts = torch.ops.aten.native_batch_norm_backward(*args)
            for wanted, part, target in zip(mask, parts, (dx, grad_weight[g], grad_bias[g])):
                if wanted:
                    target.copy_(part)
        return (
            grad_input if need_input else None,
            grad_weight.sum(0) if need_weight else None,
            grad_bias.sum(0) if need_bias else None,
            None,
            None,
        )


def _memory_format(reference: torch.Tensor) -> torch.memory_format:
    """``channels_last_3d`` for a channels-last 5-D tensor, else ``contiguous_format``."""
    if (
        reference.dim() == 5
        and not reference.is_contiguous()
        and reference.is_contiguous(memory_format=torch.channels_last_3d)
    ):
        return torch.channels_last_3d
    return torch.contiguous_format


def _like(tensor: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``tensor`` in the memory format of ``reference`` (channels-last 3-D or as it is)."""
    if _memory_format(reference) == torch.channels_last_3d:
        return tensor.contiguous(memory_format=torch.channels_last_3d)
    return tensor


def _swap_blocks(x: torch.Tensor, outer: int, inner: int) -> torch.Tensor:
    """``[outer * inner * k, ...]`` seen as ``[outer, inner, k, ...]`` with its first two axes
    swapped, flattened back, in ``x``'s memory format."""
    blocks = x.view(outer, inner, x.shape[0] // (outer * inner), *x.shape[1:])
    return _like(blocks.transpose(0, 1).reshape(x.shape), x)


def device_major(x: torch.Tensor, windows: int, groups: int) -> torch.Tensor:
    """Lay a window-major batch out device by device, for :class:`SplitBatchNorm`'s groups.

    Args:
        x: ``[W * B, ...]``, window ``w``'s ``B`` clips at ``w * B``; ``groups`` divides ``B``.
        windows: ``W``; groups: ``G``, the emulated devices.

    Returns:
        ``[W * B, ...]``: device ``g``'s ``B / G`` videos, all windows of each, at
        ``g * W * B / G`` (so the ``g``-th of ``G`` consecutive slices is device ``g``'s batch).
        :func:`window_major` undoes it.
    """
    return _swap_blocks(x, windows, groups)


def window_major(x: torch.Tensor, windows: int, groups: int) -> torch.Tensor:
    """The inverse of :func:`device_major`.

    Args:
        x: ``[W * B, ...]`` in device-major order.
        windows: ``W``; groups: ``G``, the emulated devices (as given to :func:`device_major`).

    Returns:
        ``[W * B, ...]`` in window-major order, in ``x``'s memory format.
    """
    return _swap_blocks(x, groups, windows)


def convert_batchnorm(model: nn.Module, *, split_groups: int = 1, sync: bool = False) -> nn.Module:
    """Replace the BatchNorm layers of ``model`` for multi-device training.

    Call it before the optimizer is built; the new layers keep the old parameters and buffers.

    Args:
        model: any module.
        split_groups: > 1 replaces every BatchNorm by :class:`SplitBatchNorm` with that many
            groups (``MODEL.SPLIT_BN_GROUPS``).
        sync: replace every BatchNorm by ``nn.SyncBatchNorm`` (``MODEL.SYNC_BN``; GPUs only).

    Returns:
        ``model``, or a new top-level module if ``model`` itself was a BatchNorm.
    """
    if sync and split_groups > 1:
        raise ValueError("SyncBatchNorm and SplitBatchNorm exclude each other")
    if sync:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if split_groups == 1:
        return model
    return _convert_split(model, split_groups)


def convert_batchnorm_for(cfg: CfgNode, model: nn.Module) -> nn.Module:
    """:func:`convert_batchnorm` as ``MODEL.SPLIT_BN_GROUPS`` and ``MODEL.SYNC_BN`` say
    (SyncBatchNorm only with more than one process: alone it has nothing to synchronise).

    Args:
        cfg: the finished config.
        model: any module.

    Returns:
        As :func:`convert_batchnorm`.
    """
    return convert_batchnorm(
        model,
        split_groups=cfg.MODEL.SPLIT_BN_GROUPS,
        sync=cfg.MODEL.SYNC_BN and comm.get_world_size() > 1,
    )


def _convert_split(module: nn.Module, groups: int) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, SplitBatchNorm | nn.SyncBatchNorm):
        split = SplitBatchNorm(
            module.num_features,
            groups,
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
        )
        if module.affine:
            split.weight = module.weight
            split.bias = module.bias
        split.running_mean = module.running_mean
        split.running_var = module.running_var
        split.num_batches_tracked = module.num_batches_tracked
        split.train(module.training)
        return split
    for name, child in module.named_children():
        converted = _convert_split(child, groups)
        if converted is not child:
            setattr(module, name, converted)
    return module


def split_bn_groups(module: nn.Module) -> int:
    """The number of emulated BatchNorm groups of a module.

    Args:
        module: any module.

    Returns:
        The largest ``num_splits`` of its :class:`SplitBatchNorm` layers; 1 without any.
    """
    return max((m.num_splits for m in module.modules() if isinstance(m, SplitBatchNorm)), default=1)


def _has_sync_bn(module: nn.Module) -> bool:
    return any(isinstance(m, nn.SyncBatchNorm) for m in module.modules())


@torch.no_grad()
def shuffled_forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` with BatchNorm groups drawn at random across ranks and split-BN groups.

    Every rank must call it together with the same batch size (it runs collectives). Without
    groups to shuffle between (one process without SplitBatchNorm, or SyncBatchNorm) it is just
    ``module(x)``. The permutation comes from rank 0's global torch RNG, which checkpoints save,
    so a resumed run draws the same permutations.

    Args:
        module: the key encoder; its output has the batch in dim 0.
        x: this rank's batch ``[N, ...]`` (e.g. clips ``[N, 3, T, H, W]``).

    Returns:
        ``module``'s output for this rank's samples, in the order of ``x``: ``[N, ...]``.
    """
    world, rank = comm.get_world_size(), comm.get_rank()
    if world * split_bn_groups(module) == 1 or _has_sync_bn(module):
        return module(x)
    n = x.shape[0]
    if world == 1:
        # Split-BN groups in one process: a permutation and back, no exchange. Gathered straight
        # into x's memory format: the general path below copies the batch twice (a
        # FIMA step's 96 Tiny3D difference clips at 8x64², 33 ms against 15).
        perm = torch.randperm(n).to(x.device)
        out = module(torch.index_select(x, 0, perm, out=torch.empty_like(x)))
        return torch.empty_like(out).index_copy_(0, perm, out)
    perm = torch.randperm(world * n) if rank == 0 else torch.empty(world * n, dtype=torch.long)
    perm = comm.broadcast_tensor(perm.to(comm.collective_device())).cpu()
    # Rank d encodes the global samples slots[d] (sample i of rank r is global index r * n + i).
    slots = perm.view(world, n)
    owner = slots // n
    mine = owner == rank
    # This rank's samples, grouped by the rank that encodes them, in that rank's slot order.
    send_index = (slots[mine] % n).to(x.device)
    send_counts = mine.sum(dim=1).tolist()
    recv_counts = torch.bincount(owner[rank], minlength=world).tolist()
    # Rows arrive grouped by source rank; arrival[j] is the slot that the j-th row fills.
    arrival = torch.argsort(owner[rank], stable=True).to(x.device)
    received = comm.all_to_all_tensor(x[send_index], send_counts, recv_counts)
    shuffled = torch.empty_like(received)
    shuffled[arrival] = received
    out = module(_like(shuffled, x))
    returned = comm.all_to_all_tensor(out[arrival], recv_counts, send_counts)
    result = torch.empty_like(returned)
    result[send_index] = returned
    return _like(result, out)


class ShuffleBN(nn.Module):
    """A view of ``module`` whose forward is :func:`shuffled_forward` (for key passes).

    It holds no state of its own; build it around the key encoder where a key pass runs.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:func:`shuffled_forward` of the wrapped module.

        Args:
            x: this rank's batch ``[N, ...]`` (e.g. clips ``[N, 3, T, H, W]``).

        Returns:
            The module's output ``[N, ...]`` in the order of ``x``.
        """
        return shuffled_forward(self.module, x)
