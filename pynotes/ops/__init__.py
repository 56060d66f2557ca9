"""Functional API: each op runs the compiled kernel where it can and the reference otherwise."""
from pynotes.ops.gbdt import (advance_nodes, bin_features, build_histogram, find_best_splits,
                               predict_trees, quantize)
from pynotes.ops.gcn import gcn_propagate
from pynotes.ops.group_norm import group_norm
from pynotes.ops.iwae import importance_weights, iwae_bound, jvi_bound
from pynotes.ops.lstm import lstm_cell, lstm_layer

__all__ = ["advance_nodes", "bin_features", "build_histogram", "find_best_splits",
           "gcn_propagate", "group_norm", "importance_weights", "iwae_bound", "jvi_bound",
           "lstm_cell", "lstm_layer", "predict_trees", "quantize"]
