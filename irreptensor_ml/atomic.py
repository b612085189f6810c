"""Atomic file writes: a temporary file in the target's folder, then :func:`os.replace`.

A reader (another process, a DDP rank, a resumed run) sees either the old file or the complete
new one, never a half-written one, and an interrupted writer (an exception, SIGTERM, Ctrl-C)
leaves no temporary file behind: the target keeps its old content.  ``SIGKILL`` or a crash of
the machine can leave a hidden ``.<name>.<pid>.<random>.tmp`` beside the target, never a
truncated target.  The data are flushed to disk (``fsync``) before the rename, so the new
file survives a power loss once the call returns.

Every writer of the package goes through :func:`atomic_writer`:

* :func:`atomic_write_bytes` / :func:`atomic_write_text`: bytes or a string;
* :func:`atomic_write_json`: ``json.dump`` (keyword arguments passed on);
* :func:`atomic_torch_save`: ``torch.save``.

Parent folders are created.  The new file gets the permissions of a plain ``open(path, "w")``
(``0o666`` less the umask), not the ``0o600`` of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = ["atomic_writer", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_torch_save"]


def _temporary(path: Path) -> tuple[int, Path]:
    """Create a new, empty temporary file beside ``path``; returns its descriptor and path."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue


@contextlib.contextmanager
def atomic_writer(
    path: str | os.PathLike[str], mode: str = "w", *, encoding: str | None = "utf-8", fsync: bool = True
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; when the block ends normally it
    replaces ``path`` (after ``fsync``), when it raises (anything, ``KeyboardInterrupt`` and
    ``SystemExit`` included) the temporary file is removed and ``path`` is left as it was.

    ``mode`` is ``"w"`` (text, ``encoding``) or ``"wb"`` (bytes)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_writer: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temporary(path)
    try:
        with os.fdopen(fd, mode, encoding=None if mode == "wb" else encoding) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_writer(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    with atomic_writer(path, "w", encoding=encoding) as fh:
        fh.write(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, **dump_kwargs: Any) -> Path:
    """``json.dump(obj, ..., **dump_kwargs)`` to ``path`` atomically; returns the path.  An
    object that does not serialise leaves ``path`` untouched."""
    with atomic_writer(path, "w") as fh:
        json.dump(obj, fh, **dump_kwargs)
    return Path(path)


def atomic_torch_save(path: str | os.PathLike[str], obj: Any) -> Path:
    """``torch.save(obj, ...)`` to ``path`` atomically; returns the path."""
    import torch

    with atomic_writer(path, "wb") as fh:
        torch.save(obj, fh)
    return Path(path)
