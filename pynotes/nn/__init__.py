"""torch.nn layers backed by pynotes kernels; each is a drop-in for its torch.nn namesake."""
from pynotes.nn.gcn import ChebConv, GCNConv
from pynotes.nn.group_norm import GroupNorm
from pynotes.nn.iwae import IWAELoss
from pynotes.nn.lstm import LSTM, LSTMCell

__all__ = ["ChebConv", "GCNConv", "GroupNorm", "IWAELoss", "LSTM", "LSTMCell"]
