"""Functional API: each op runs the compiled kernel where it can and the reference otherwise."""
from pynotes.ops.gbdt import (advance_nodes, bin_features, build_histogram, find_best_splits,
                               grow_tree, predict_trees, quantize)
from pynotes.ops.gcn import gcn_propagate
from pynotes.ops.group_norm import group_norm
from pynotes.ops.iwae import importance_weights, iwae_bound, jvi_bound
from pynotes.ops.lstm import lstm_cell, lstm_layer
from pynotes import _ext
from pynotes.ops import _autocast

if _ext.extension_loaded():  # the raw operators' Autocast-key kernels (kept alive here)
    import torch as _torch
    _AUTOCAST_KERNELS = _torch.library.Library("pynotes", "IMPL")
    _autocast.register_kernels(_AUTOCAST_KERNELS)

__all__ = ["advance_nodes", "bin_features", "build_histogram", "find_best_splits",
           "gcn_propagate", "grow_tree", "group_norm", "importance_weights", "iwae_bound", "jvi_bound",
           "lstm_cell", "lstm_layer", "predict_trees", "quantize"]
