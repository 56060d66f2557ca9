"""Pure-PyTorch implementations of the pynotes ops, with the same semantics.

They are the fallback when the compiled kernels cannot run, and the oracle the tests compare
the kernels against.
"""
from pynotes.reference.gcn import gcn_propagate
from pynotes.reference.group_norm import group_norm
from pynotes.reference.iwae import importance_weights, iwae_bound
from pynotes.reference.lstm import lstm_cell, lstm_layer

__all__ = ["gcn_propagate", "group_norm", "importance_weights", "iwae_bound", "lstm_cell",
           "lstm_layer"]
