"""The collectives of a data-parallel pynotes.gbdt fit on torch.distributed: every process holds
a shard of the rows, and whatever the processes compute apart and must agree on (metadata, cut
points, base margin, each tree level's histograms, eval metrics) is combined here so that every
process gets the same bits, builds the same trees and stops at the same round.

A tree's floating-point sums are taken in fixed point (ops.grow_tree): each process rounds its
values to integers at a scale shared by all, the integers are summed exactly by the backend (in
any order, by any algorithm) and converted back, so every process gets the same bits whatever
the backend's algorithm. On the CPU each process sums and searches the histograms of a block
of the features only (a reduce-scatter), and the processes exchange their best splits (an
all-gather), as LightGBM's data-parallel learner. Small values outside the trees (the base
margin, the eval metric) are gathered and added in rank order.
"""
import numpy as np
import torch
from sklearn.utils.validation import _num_features, _num_samples

from pynotes.gbdt.categories import is_frame
from pynotes.ops import gbdt as ops


class CollectiveError(RuntimeError):
    """A collective of a distributed fit failed: a process stopped, failed or timed out."""


def fit_group(distributed, group):
    """The group a fit trains over, or None for this process alone: `group` when one is passed,
    else (distributed="auto") the default group when torch.distributed is initialised with
    more than one process."""
    if group is not None:
        return group
    if distributed == "auto" and torch.distributed.is_available() and \
            torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        return torch.distributed.group.WORLD
    return None


class Alone:
    """The collective of a fit in one process, with Collective's interface: every combination
    is the identity, so that the boosting loop reads the same for 1 and N processes."""
    rank, size, tree_bytes = 0, 1, 0

    def gather(self, value, what):
        return [value]

    def sum_in_rank_order(self, values, what):
        return np.array(values, dtype=np.float64)

    def total_rows(self, rows):
        """Rows of the fit, this process having `rows`."""
        return rows

    def cut_points(self, x, max_bins, sample_size, seed, categorical):
        """ops.cut_points of the training rows."""
        return ops.cut_points(x, max_bins, sample_size, seed, categorical)

    def grow_tree_args(self):
        """What ops.grow_tree takes to grow a tree of every process's rows: nothing here."""
        return {}


class Collective:
    """The processes of one distributed fit (a torch.distributed group)."""

    def __init__(self, group):
        dist = torch.distributed
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        self.rows_per_process = None  # (start)
        # NCCL reduces CUDA tensors only: CPU buffers go through the current CUDA device.
        backend = str(dist.get_backend(group)).lower()
        self.device = torch.device("cuda", torch.cuda.current_device()) \
            if backend == "nccl" else torch.device("cpu")
        # gloo's reduce_scatter all-reduces every chunk (torch's ProcessGroupGloo), sending the
        # whole buffer: with gloo the trees' reduce-scatters and all-gathers are sends here.
        self.by_sends = backend == "gloo"
        self.ranks = [dist.get_global_rank(group, r) for r in range(self.size)] \
            if group is not dist.group.WORLD else list(range(self.size))
        self.tree_bytes = 0  # this process sent in the trees' collectives (see collective)
        self.started = None  # a reduce-scatter's first step, begun (REDUCE_SCATTER_START)

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

    def total_rows(self, rows):
        return sum(self.rows_per_process)

    def cut_points(self, x, max_bins, sample_size, seed, categorical):
        """ops.cut_points of every process's rows: all of them up to the sample size, else a
        sample in proportion to each process's rows."""
        rows, total = x.shape[0], sum(self.rows_per_process)
        sample = x
        if total > sample_size:
            take = max(1, round(sample_size * rows / total))
            generator = torch.Generator().manual_seed(seed + self.rank)
            sample = x[torch.randperm(rows, generator=generator)[:take].to(x.device)]
        parts = self.gather(sample.cpu().numpy(), "gathering a sample of the rows")
        union = torch.from_numpy(np.concatenate(parts)).to(x.device)
        return ops.cut_points(union, max_bins, union.shape[0], seed, categorical)

    def grow_tree_args(self):
        return {"collective": self.collective, "processes": self.size, "rank": self.rank,
                "row_offset": sum(self.rows_per_process[:self.rank])}

    def _exchange(self, send, receive, partner, group):
        """Sends `send` to the process of rank `partner` while receiving `receive` from it."""
        work = torch.distributed.isend(send, self.ranks[partner], group=group)
        torch.distributed.recv(receive, self.ranks[partner], group=group)
        work.wait()

    def _reduce_scatter_steps(self):
        """The steps of a reduce-scatter of W chunks, each (chunks sent, to, chunks received
        and added, from), so that chunk `rank` ends summed over the processes and each process
        sends (W - 1) / W of the buffer: by recursive halving in log2 W steps when W is a
        power of two (each step sends the half of its range the partner keeps), else a ring
        of W - 1."""
        W, r, steps = self.size, self.rank, []
        if W & (W - 1) == 0:
            low, high, mask = 0, W, W // 2
            while mask:
                middle = (low + high) // 2
                keep, give = ((middle, high), (low, middle)) if r & mask else \
                    ((low, middle), (middle, high))
                steps.append((give, r ^ mask, keep, r ^ mask))
                (low, high), mask = keep, mask // 2
            return steps
        for step in range(W - 1):  # chunk r - step - 1 on, chunk r - step - 2 summed
            send, add = (r - step - 1) % W, (r - step - 2) % W
            steps.append(((send, send + 1), (r + 1) % W, (add, add + 1), (r - 1) % W))
        return steps

    def _start_step(self, chunks, step, group):
        (s0, s1), to, (k0, k1), source = step
        incoming = torch.empty_like(chunks[k0:k1])
        return (torch.distributed.isend(chunks[s0:s1], self.ranks[to], group=group),
                torch.distributed.irecv(incoming, self.ranks[source], group=group), incoming,
                (k0, k1))

    def _reduce_scatter(self, chunks, started, group):
        """Chunk `rank` of (W, n) int64 chunks summed over the processes, in place (the int64
        sums are exact in any order); `started`: the first step's sends, begun while this
        process built its own chunk (REDUCE_SCATTER_START)."""
        steps = self._reduce_scatter_steps()
        for i, step in enumerate(steps):
            send, receive, incoming, (k0, k1) = started if i == 0 and started else \
                self._start_step(chunks, step, group)
            send.wait()
            receive.wait()
            chunks[k0:k1] += incoming

    def _all_gather(self, chunks, group):
        """Every process's chunk `rank` of (W, n) chunks, in place: by recursive doubling in
        log2 W steps when W is a power of two, else gloo's all_gather."""
        W, r = self.size, self.rank
        if W & (W - 1):
            torch.distributed.all_gather(list(chunks.unbind(0)), chunks[r].clone(), group=group)
            return
        mask = 1
        while mask < W:
            mine, theirs = r & ~(mask - 1), (r ^ mask) & ~(mask - 1)  # blocks of mask chunks
            self._exchange(chunks[mine:mine + mask], chunks[theirs:theirs + mask], r ^ mask,
                           group)
            mask *= 2

    def collective(self, op, buffer):
        """The collective of ops.grow_tree: combines a tree's buffer in place. tree_bytes counts
        what this process sends in a bandwidth-optimal algorithm: 2 (W - 1) / W of an
        all-reduced buffer, (W - 1) / W of a reduce-scattered or all-gathered one."""
        nbytes, W = buffer.numel() * buffer.element_size(), self.size
        if op == ops.REDUCE_SUM:
            self.tree_bytes += 2 * (W - 1) * nbytes // W
            self._reduce(buffer, torch.distributed.ReduceOp.SUM, "summing a tree's buffer")
        elif op == ops.REDUCE_MAX:
            self.tree_bytes += 2 * (W - 1) * nbytes // W
            self._reduce(buffer, torch.distributed.ReduceOp.MAX, "a tree's gradient sizes")
        elif op == ops.REDUCE_SCATTER_START:
            if self.by_sends and W > 1:
                self.started = self._call("summing a tree level's histograms",
                                          self._start_step, buffer.view(W, -1),
                                          self._reduce_scatter_steps()[0])
        elif op == ops.REDUCE_SCATTER:
            self.tree_bytes += (W - 1) * nbytes // W
            if self.by_sends:
                started, self.started = self.started, None
                self._call("summing a tree level's histograms", self._reduce_scatter,
                           buffer.view(W, -1), started)
                return
            chunks = list(buffer.view(W, -1).to(self.device).unbind(0))
            mine = torch.empty_like(chunks[self.rank])
            self._call("summing a tree level's histograms", torch.distributed.reduce_scatter,
                       mine, chunks)
            buffer.view(W, -1)[self.rank].copy_(mine)
        else:  # ALL_GATHER
            self.tree_bytes += (W - 1) * nbytes // W
            if self.by_sends:
                self._call("exchanging a tree level's splits", self._all_gather,
                           buffer.view(W, -1))
                return
            chunks = buffer.view(W, -1)
            on = chunks.to(self.device)
            self._call("exchanging a tree level's splits", torch.distributed.all_gather,
                       list(on.unbind(0)), on[self.rank].clone())
            if on is not chunks:
                chunks.copy_(on)


def start(estimator, X, eval_set, process_group):
    """Sets estimator._collective for a fit: Alone for this process alone, else the processes
    of a distributed fit (process_group, or with distributed='auto' torch.distributed's default
    group when it has more than one process), once every one fits alike."""
    group = fit_group(estimator.distributed, process_group)
    if group is None:
        estimator._collective = Alone()
        return
    collective = estimator._collective = Collective(group)
    name = f"{type(estimator).__name__} distributed fit"
    ignored = ("n_jobs", "verbose", "device", "distributed")  # may differ by process
    try:
        info = {"estimator": type(estimator).__name__,
                "parameters": repr(sorted((k, repr(v))
                                          for k, v in estimator.get_params().items()
                                          if k not in ignored)),
                "number of features": _num_features(X),
                "column names": list(map(str, X.columns)) if is_frame(X) else None,
                "number of eval sets": len(eval_set or []), "rows": _num_samples(X)}
    except (TypeError, ValueError) as e:
        info = {"error": f"{type(e).__name__}: {e}"}
    infos = collective.gather(info, "checking the processes")
    failed = [(r, i["error"]) for r, i in enumerate(infos) if "error" in i]
    if failed:
        raise ValueError(f"{name}: X of rank {failed[0][0]} is not a table: {failed[0][1]}")
    for key in ("estimator", "parameters", "number of features", "column names",
                "number of eval sets"):
        values = [i[key] for i in infos]
        other = next((r for r, v in enumerate(values) if v != values[0]), None)
        if other is not None:
            raise ValueError(f"{name}: every process must fit alike, but rank {other} "
                             f"differs from rank 0 in its {key}: {values[other]} vs "
                             f"{values[0]}")
    empty = [r for r, i in enumerate(infos) if i["rows"] == 0]
    if empty:
        raise ValueError(f"{name}: ranks {empty} have no rows; every process needs rows of "
                         "the training set")
    collective.rows_per_process = [i["rows"] for i in infos]
