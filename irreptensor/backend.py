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

            # a writable copy: torch warns about read-only numpy arrays (the cached bases are read-only)
            c = torch.as_tensor(np.array(value, dtype=np.float64), dtype=like.dtype, device=like.device)
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


def as_numpy(x: Any) -> Any:
    """``x`` for numpy-only code: torch tensors as float64 numpy (detached), ndarray subclasses (pymatgen
    tensors) as plain ndarrays; anything else (lists, numpy arrays) unchanged."""
    if is_torch(x):
        return to_numpy64(x)
    return np.asarray(x) if isinstance(x, np.ndarray) else x


def take_last(x: Any, index: np.ndarray):
    """``x[..., index]`` for numpy or torch with a cached integer index."""
    if is_torch(x):
        ck = (("take", index.tobytes(), index.shape), "torch-index", x.device)
        idx = _CONSTANTS.get(ck)
        if idx is None:
            import torch

            idx = torch.as_tensor(np.array(index), dtype=torch.long, device=x.device)  # writable copy: see constant
            _CONSTANTS[ck] = idx
        return x[..., idx]
    return x[..., index]


def batch_index(flat_index: int, batch: tuple[int, ...]) -> tuple[int, ...]:
    """The batch position of a flattened index, as plain ints for error messages."""
    return tuple(int(i) for i in np.unravel_index(int(flat_index), batch)) if batch else ()


def check_tolerance(value: Any, name: str = "tol", *, positive: bool = False) -> float:
    """``value`` as a float; ValueError naming ``name`` and the value for NaN, inf or a negative number.

    A NaN tolerance makes every comparison with it false, which silently turns a check off; a negative one
    is a mistake whatever the check does with it. ``positive=True`` refuses 0 as well.
    """
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = float("nan")
    if not (np.isfinite(t) and (t > 0 if positive else t >= 0)):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return t


def non_finite_error(name: str, flat: np.ndarray, batch: tuple[int, ...]) -> ValueError:
    """The error for ``flat`` ``(N, K)`` (float64 numpy, ``N = prod(batch)``) holding NaN or inf.

    Names ``name``, whether the first bad tensor holds NaN (else inf) and its batch index.
    """
    bad = ~np.isfinite(flat).all(-1)
    i = int(np.flatnonzero(bad)[0])
    what = "NaN" if np.isnan(flat[i]).any() else "inf"
    return ValueError(f"{name} contains {what} at batch index {batch_index(i, batch)}")


def check_finite(x: Any, name: str, core_ndim: int) -> None:
    """Raise :func:`non_finite_error` if ``x`` (numpy or torch) holds NaN or inf.

    One ``isfinite(x).all()`` pass; the batch index (over the leading ``x.ndim - core_ndim`` axes) is only
    looked for on failure. Does not touch autograd.
    """
    if is_torch(x):
        import torch

        if bool(torch.isfinite(x.detach()).all()):
            return
    elif np.isfinite(x).all():
        return
    a = to_numpy64(x)
    batch = tuple(a.shape[: a.ndim - core_ndim])
    raise non_finite_error(name, a.reshape(int(np.prod(batch)), -1), batch)
