"""The collectives of a data-parallel pynotes.gbdt fit on torch.distributed: every process holds
a shard of the rows, and whatever the processes compute apart and must agree on (metadata, cut
points, base margin, each tree level's histograms, eval metrics) is combined here so that every
process gets the same bits, builds the same trees and stops at the same round.

A tree's floating-point sums are taken in fixed point (ops.grow_tree): each process rounds its
values to integers at a scale shared by all, the integers are summed exactly by the backend (in
any order, by any algorithm) and converted back, so every process gets the same bits whatever
the backend's algorithm. Small values outside the trees (the base margin, the eval metric) are
gathered and added in rank order.
"""
import numpy as np
import torch

from pynotes.ops import gbdt as ops


class CollectiveError(RuntimeError):
    """A collective of a distributed fit failed: a process stopped, failed or timed out."""


def process_group(distributed, group):
    """The group a fit trains over, or None for this process alone: `group` when one is passed,
    else (distributed="auto") the default group when torch.distributed is initialised with
    more than one process."""
    if group is not None:
        return group
    if distributed == "auto" and torch.distributed.is_available() and \
            torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        return torch.distributed.group.WORLD
    return None


class Collective:
    """The processes of one distributed fit (a torch.distributed group)."""

    def __init__(self, group):
        dist = torch.distributed
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        # NCCL reduces CUDA tensors only: CPU buffers go through the current CUDA device.
        backend = str(dist.get_backend(group)).lower()
        self.device = torch.device("cuda", torch.cuda.current_device()) \
            if backend == "nccl" else torch.device("cpu")
        self.tree_bytes = 0  # of the buffers the trees' reductions combined

    def _call(self, what, fn, *args):
        try:
            return fn(*args, group=self.group)
        except Exception as e:  # the backends raise RuntimeError, DistBackendError, ...
            raise CollectiveError(
                f"pynotes.gbdt distributed fit, rank {self.rank} of {self.size}: {what} failed; "
                f"another process stopped, failed or timed out ({type(e).__name__}: {e})") from e

    def gather(self, value, what):
        """Every process's (picklable) value, in rank order."""
        out = [None] * self.size
        self._call(what, torch.distributed.all_gather_object, out, value)
        return out

    def sum_in_rank_order(self, values, what):
        """The float64 sum over the processes of an array, added in rank order."""
        gathered = self.gather(np.asarray(values, dtype=np.float64), what)
        total = gathered[0].copy()
        for part in gathered[1:]:
            total += part
        return total

    def _reduce(self, tensor, op, what):
        on = tensor if tensor.device == self.device else tensor.to(self.device)
        self._call(what, torch.distributed.all_reduce, on, op)
        if on is not tensor:
            tensor.copy_(on)

    def all_reduce(self, kind, buffer):
        """The all_reduce of ops.grow_tree: combines a tree's buffer in place."""
        self.tree_bytes += buffer.numel() * buffer.element_size()
        if kind == ops.REDUCE_SUM:
            self._reduce(buffer, torch.distributed.ReduceOp.SUM, "summing a tree level")
        else:
            self._reduce(buffer, torch.distributed.ReduceOp.MAX, "a tree's gradient sizes")
