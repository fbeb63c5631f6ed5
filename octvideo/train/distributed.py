"""Every collective that training and evaluation issue, in one place, on the worker's device.

NCCL has no CPU backend: a collective on a CPU tensor in a job that runs on GPUs raises "No
backend type associated with device type cpu" on every rank. The training code therefore never
calls ``torch.distributed`` itself; it asks :class:`Collectives`, which builds or checks every
tensor on the worker's device before it reaches the process group. ``tests/train/test_harness.py``
records the device of every tensor that reaches ``torch.distributed`` during a short job, and
``tests/train/test_collectives.py`` checks that no other module of the package calls it.

Without a process group (a single process) every reduction is the identity, so the same code
runs in a notebook, a unit test or a one-GPU run.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


class Collectives:
    """Reductions over the default process group, with tensors on ``device``."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1

    def _on_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device.type != self.device.type:
            raise ValueError(f"a collective got a tensor on {tensor.device}; this worker's collectives run on {self.device}")
        return tensor

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` (on the worker's device) over all ranks, in place; returns it."""
        if self.distributed:
            dist.all_reduce(self._on_device(tensor), op=dist.ReduceOp.SUM)
        return tensor

    def max_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise maximum of ``tensor`` (on the worker's device) over all ranks, in place."""
        if self.distributed:
            dist.all_reduce(self._on_device(tensor), op=dist.ReduceOp.MAX)
        return tensor

    def sum_values(self, values: Sequence[float | torch.Tensor]) -> list[float]:
        """Per-position sums of ``values`` (numbers, or 0-d tensors on the device) over all ranks,
        in float64 (exact for counts)."""
        totals = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=self.device) for v in values])
        return self.sum_(totals).tolist()

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's picklable ``obj``, in rank order. For small things (a few KB) and rare
        calls: it pickles, and NCCL moves the bytes through the current CUDA device."""
        if not self.distributed:
            return [obj]
        objects: list[Any] = [None] * self.world_size
        dist.all_gather_object(objects, obj)
        return objects

    def average_batch_norm_stats(self, module: nn.Module, frozen: Collection[nn.Module] = ()) -> None:
        """Make every batch norm's running statistics the same on all ranks: the pooled mean and
        variance of the ranks' estimates (each rank saw as many samples). DeepSpeed, unlike
        DDP, does not broadcast buffers, so without this each rank evaluates, and rank 0
        exports, statistics of its own shard only. ``frozen`` norms (the same on every rank, by
        construction) are left exactly as they are."""
        if not self.distributed:
            return
        norms = [
            m for m in module.modules()
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats and not any(m is f for f in frozen)
        ]
        if not norms:
            return
        # One flat buffer of [means..., second moments...] in fp32, one all-reduce for all layers.
        means = [m.running_mean.float() for m in norms]
        squares = [m.running_var.float() + mean.square() for m, mean in zip(norms, means)]
        flat = self.sum_(torch.cat(means + squares).to(self.device)) / self.world_size
        pooled_means, pooled_squares = flat.chunk(2)
        sizes = [len(m) for m in means]
        for norm, mean, square in zip(norms, pooled_means.split(sizes), pooled_squares.split(sizes)):
            norm.running_mean.copy_(mean)
            norm.running_var.copy_((square - mean.square()).clamp_(min=0))
