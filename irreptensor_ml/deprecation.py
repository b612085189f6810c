"""Old names kept importable for one release: :func:`renamed` wraps the new function.

A call through the old name gives the new function's result unchanged and a
:class:`DeprecationWarning` that names the new name (``module.new``).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["renamed"]

F = TypeVar("F", bound=Callable[..., Any])


def renamed(new: F, old: str, why: str = "", *, old_module: str | None = None) -> F:
    """``new`` under its old name ``old``: the same call, plus a :class:`DeprecationWarning`.

    Args:
        new: the function that replaces ``old`` (same signature, same result).
        old: the deprecated name, in ``new``'s module unless ``old_module`` is given.
        why: optional clause saying why the name changed (appended to the warning).
        old_module: the module that holds ``old`` when it is not ``new``'s.
    """
    where = f"{new.__module__}.{new.__name__}"
    message = f"{old_module or new.__module__}.{old} is deprecated (removed in the next release); use {where}"
    if why:
        message += f" ({why})"

    @functools.wraps(new)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        return new(*args, **kwargs)

    wrapper.__name__ = wrapper.__qualname__ = old
    wrapper.__doc__ = f"Deprecated alias of :func:`{where}` (removed in the next release)."
    return wrapper  # type: ignore[return-value]
