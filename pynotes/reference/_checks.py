"""Argument checks shared by the references; messages match the C++ ops' (common/checks.h)."""


def check_like(op, name, t, input):
    """`t` must be on input's device and have its dtype."""
    if t.device != input.device:
        raise RuntimeError(f"{op}: {name} must be on the same device as input ({input.device}), "
                           f"got {t.device}")
    if t.dtype != input.dtype:
        raise TypeError(f"{op}: {name} must have the same dtype as input ({input.dtype}), "
                        f"got {t.dtype}")
