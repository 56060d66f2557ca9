"""Functional API: each op runs the compiled kernel where it can and the reference otherwise."""
from pynotes.ops.gcn import gcn_propagate
from pynotes.ops.group_norm import group_norm
from pynotes.ops.lstm import lstm_cell, lstm_layer

__all__ = ["gcn_propagate", "group_norm", "lstm_cell", "lstm_layer"]
