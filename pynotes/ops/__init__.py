"""Functional API: each op runs the compiled kernel where it can and the reference otherwise."""
from pynotes.ops.group_norm import group_norm

__all__ = ["group_norm"]
