"""Pure-PyTorch gradient-boosting kernels: the fallback and the oracle (conventions in
csrc/gbdt/gbdt_kernels.h, formulas in csrc/gbdt/gbdt.h). Each has the name and arguments of
its wrapper in pynotes.ops.gbdt. grow_tree has none: its fallback is the level loop of these
(pynotes.gbdt.grower.grow_tree_by_levels)."""
import collections
import math

import torch

Splits = collections.namedtuple(
    "Splits", "gain feature bin default_left left_sum right_sum")


def _check(ok, error, message):
    if not ok:
        raise error(message)


def _range(op, name, t, low, high):
    if t.numel():
        lo, hi = int(t.min()), int(t.max())
        _check(lo >= low and hi < high, ValueError,
               f"{op}: {name} must hold values in [{low}, {high}), got {lo if lo < low else hi}")


def bin_features(x, cuts, missing_bin):
    op = "gbdt_bin"
    _check(x.dtype in (torch.float32, torch.float64), TypeError,
           f"{op}: x must be float32 or float64, got {x.dtype}")
    _check(x.dim() == 2, ValueError, f"{op}: x must have shape (rows, features), got "
           f"{tuple(x.shape)}")
    _check(cuts.dtype == x.dtype and cuts.dim() == 2 and cuts.shape[0] == x.shape[1], ValueError,
           f"{op}: cuts must have x's dtype and shape (features, max_cuts)")
    _check(cuts.shape[1] < missing_bin <= 255, ValueError,
           f"{op}: missing_bin must be in (cuts.size(1), 255] = ({cuts.shape[1]}, 255], got "
           f"{missing_bin}")
    bins = torch.searchsorted(cuts.contiguous(), x.t().contiguous(), right=False).t()
    bins = torch.where(torch.isnan(x), missing_bin, bins)
    return bins.to(torch.uint8).contiguous()


def build_histogram(bins, grad, hess, node, slot_of_node, num_slots, num_bins=256):
    op = "gbdt_histogram"
    _check(bins.dtype == torch.uint8 and bins.dim() == 2, TypeError,
           f"{op}: bins must be a 2-D uint8 tensor, got {bins.dtype} {tuple(bins.shape)}")
    _check(2 <= num_bins <= 256, ValueError, f"{op}: num_bins must be in [2, 256], got {num_bins}")
    _range(op, "bins", bins, 0, num_bins)
    rows, features = bins.shape
    for name, t in (("grad", grad), ("hess", hess), ("node", node)):
        _check(t.dim() == 1 and t.shape[0] == rows, ValueError,
               f"{op}: {name}.size(0) must be bins.size(0) = {rows}, got {tuple(t.shape)}")
    _check(node.dtype == torch.int32 and slot_of_node.dtype == torch.int32, TypeError,
           f"{op}: node and slot_of_node must have dtype Int")
    _range(op, "node", node, 0, slot_of_node.shape[0])
    _range(op, "slot_of_node", slot_of_node, -1, num_slots)
    slot = slot_of_node[node.long()]
    keep = slot >= 0
    cell = (slot[keep].long()[:, None] * features + torch.arange(features, device=bins.device)) \
        * num_bins + bins[keep].long()
    values = torch.stack([grad[keep], hess[keep]], 1).double()  # (rows, 2)
    hist = torch.zeros(num_slots * features * num_bins, 2, dtype=torch.float64,
                       device=bins.device)
    hist.index_add_(0, cell.reshape(-1), values.repeat_interleave(features, 0))
    return hist.reshape(num_slots, features, num_bins, 2)


def find_best_splits(hist, reg_lambda=1.0, gamma=0.0, min_child_weight=1.0, feature_mask=None):
    op = "gbdt_best_splits"
    _check(hist.dtype == torch.float64 and hist.dim() == 4 and hist.shape[3] == 2
           and hist.shape[2] >= 2, ValueError,
           f"{op}: hist must have shape (slots, features, num_bins >= 2, 2), got "
           f"{tuple(hist.shape)}")
    _check(reg_lambda >= 0 and gamma >= 0 and min_child_weight >= 0, ValueError,
           f"{op}: reg_lambda, gamma and min_child_weight must be non-negative, got "
           f"{reg_lambda}, {gamma}, {min_child_weight}")
    slots, features, num_bins, _ = hist.shape
    total = hist.sum(2)                          # (S, F, 2)
    missing = hist[:, :, -1]                     # (S, F, 2)
    prefix = hist[:, :, :-1].cumsum(2)           # (S, F, B - 1, 2): bins <= b
    left = torch.stack([prefix, prefix + missing[:, :, None]], 3)  # (S, F, B-1, 2 dirs, 2)
    right = total[:, :, None, None] - left

    def score(s):
        return s[..., 0] ** 2 / (s[..., 1] + reg_lambda)
    parent = score(total)[:, :, None, None]
    gain = 0.5 * (score(left) + score(right) - parent) - gamma
    ok = (left[..., 1] >= min_child_weight) & (right[..., 1] >= min_child_weight) & \
        (left[..., 1] > 0) & (right[..., 1] > 0)
    if feature_mask is not None:
        ok &= feature_mask.bool()[None, :, None, None]
    gain = torch.where(ok, gain, -torch.inf).reshape(slots, -1)
    best = gain.argmax(1) if gain.shape[1] else torch.zeros(slots, dtype=torch.long)
    best_gain = gain.gather(1, best[:, None])[:, 0] if gain.shape[1] else \
        torch.full((slots,), -torch.inf, dtype=torch.float64)
    found = best_gain > -torch.inf
    feature = torch.where(found, best // (2 * (num_bins - 1)), -1)
    b = torch.where(found, best % (2 * (num_bins - 1)) // 2, -1)
    default_left = found & (best % 2 == 1)
    index = torch.arange(slots, device=hist.device)
    node_total = total[:, 0] if features else torch.zeros(slots, 2, dtype=torch.float64)
    left_sum = torch.where(found[:, None],
                           left.reshape(slots, -1, 2)[index, best.clamp_min(0)], node_total)
    right_sum = torch.where(found[:, None], node_total - left_sum, 0.0)
    return Splits(best_gain, feature, b, default_left, left_sum, right_sum)


def advance_nodes(bins, node, split_feature, split_bin, default_left, missing_bin=255):
    feature = split_feature[node.long()].long()
    is_split = feature >= 0
    b = bins.gather(1, feature.clamp_min(0)[:, None])[:, 0].long()
    left = torch.where(b == missing_bin, default_left[node.long()],
                       b <= split_bin[node.long()].long())
    child = 2 * node + torch.where(left, 1, 2).to(node.dtype)
    node = torch.where(is_split, child, node)
    return node, torch.bincount(node.long(), minlength=split_feature.shape[0])


def _in_set(cat_left, code):
    """Whether each code (int64) is in its row's bitset (rows, 8) int32."""
    word = cat_left.gather(1, (code >> 5)[:, None])[:, 0].long() & 0xFFFFFFFF
    return (word >> (code & 31)) & 1 == 1


def predict_trees(x, feature, threshold, default_left, value, group, base, missing_bin=255,
            categorical=None, cat_left=None):
    out = base.double().expand(x.shape[0], base.shape[0]).clone(
        memory_format=torch.contiguous_format)
    rows = torch.arange(x.shape[0], device=x.device)
    binned = x.dtype == torch.uint8
    for t in range(feature.shape[0]):
        node = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        nodes = feature.shape[1]
        while True:
            f = feature[t, node].long()
            active = (f >= 0) & (2 * node + 2 < nodes)
            if not bool(active.any()):
                break
            v = x[rows, f.clamp_min(0)]
            if binned:
                v = v.long()
                left = torch.where(v == missing_bin, default_left[t, node],
                                   v <= threshold[t, node].long())
            else:
                left = torch.where(torch.isnan(v), default_left[t, node], v <= threshold[t, node])
            if categorical is not None:
                # A category code: a bin, or a float equal to an integer in [0, 256).
                code = torch.nan_to_num(v.double(), nan=-1.0).long().clamp(0, 255)
                is_code = v != missing_bin if binned else (v >= 0) & (v < 256) & (v == code)
                left = torch.where(categorical[f.clamp_min(0)],
                                   torch.where(is_code, _in_set(cat_left[t, node], code),
                                               default_left[t, node]), left)
            node = torch.where(active, 2 * node + torch.where(left, 1, 2), node)
        out[:, int(group[t])] += value[t, node].double()
    return out


def fixed_point_scale(bound):
    """The scale of fixed-point sums over the processes of a data-parallel fit (gbdt.h's
    fixed_point_scale): a power of two that keeps every process's rounded values below
    2^62 / processes when bound >= processes x the largest sum of |values| of one process, so
    that their int64 sum is exact and the same on every process."""
    return 2.0 ** (62 - math.frexp(bound)[1])
