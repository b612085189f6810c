"""numpy / torch dispatch without importing torch.

Every public function accepts numpy arrays (or nested lists, or ndarray subclasses such as pymatgen
tensors) and torch tensors, and returns the type it was given on the same device with the same float
dtype. Constants (bases) are converted once per (dtype, device) and cached.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_CONSTANTS: dict[tuple, Any] = {}


def is_torch(x: Any) -> bool:
    """True for a ``torch.Tensor``; never imports torch."""
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "device")


def as_float_array(x: Any, name: str = "tensor"):
    """Return ``x`` as a float32/float64 numpy array or torch tensor.

    Integers become float64 (numpy) or the default torch dtype; other dtypes are refused.
    """
    if is_torch(x):
        import torch

        if x.dtype in (torch.float32, torch.float64):
            return x
        if x.dtype.is_complex or x.dtype in (torch.float16, torch.bfloat16):
            raise ValueError(f"{name} has dtype {x.dtype}; use torch.float32 or torch.float64")
        return x.to(torch.get_default_dtype())
    a = np.asarray(x)
    if a.dtype in (np.float64, np.float32):
        return a
    if a.dtype.kind in "iub":
        return a.astype(np.float64)
    raise ValueError(f"{name} has dtype {a.dtype}; use float32 or float64 real numbers")


def constant(key: tuple, value: np.ndarray, like: Any):
    """``value`` (a float64 numpy constant) as the array type, dtype and device of ``like``, cached under ``key``."""
    if is_torch(like):
        ck = (key, "torch", like.dtype, like.device)
        c = _CONSTANTS.get(ck)
        if c is None:
            import torch

            c = torch.as_tensor(value, dtype=like.dtype, device=like.device)
            _CONSTANTS[ck] = c
        return c
    ck = (key, "numpy", like.dtype)
    c = _CONSTANTS.get(ck)
    if c is None:
        c = np.ascontiguousarray(value, dtype=like.dtype)
        c.setflags(write=False)
        _CONSTANTS[ck] = c
    return c


def to_numpy64(x: Any) -> np.ndarray:
    """A float64 numpy copy/view of ``x`` for checks (detached from autograd)."""
    if is_torch(x):
        return x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


def take_last(x: Any, index: np.ndarray):
    """``x[..., index]`` for numpy or torch with a cached integer index."""
    if is_torch(x):
        ck = (("take", index.tobytes(), index.shape), "torch-index", x.device)
        idx = _CONSTANTS.get(ck)
        if idx is None:
            import torch

            idx = torch.as_tensor(index, dtype=torch.long, device=x.device)
            _CONSTANTS[ck] = idx
        return x[..., idx]
    return x[..., index]


def batch_index(flat_index: int, batch: tuple[int, ...]) -> tuple[int, ...]:
    """The batch position of a flattened index, as plain ints for error messages."""
    return tuple(int(i) for i in np.unravel_index(int(flat_index), batch)) if batch else ()
