"""Functional API: each op runs the compiled kernel where it can and the reference otherwise."""
from pynotes.ops.gbdt import (advance_nodes, bin_features, build_histogram, find_best_splits,
                               predict_trees, quantize)
from pynotes.ops.gcn import gcn_propagate
from pynotes.ops.group_norm import group_norm
from pynotes.ops.lstm import lstm_cell, lstm_layer

__all__ = ["advance_nodes", "bin_features", "build_histogram", "find_best_splits",
           "gcn_propagate", "group_norm", "predict_trees", "quantize", "lstm_cell", "lstm_layer"]
