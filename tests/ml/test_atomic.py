"""The one atomic-write helper (issue 16): a failed or interrupted write leaves the target as it
was and no temporary file; a successful one replaces it whole, with a plain file's permissions."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from irreptensor_ml.atomic import (
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    atomic_writer,
)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_writes_replace_the_target_and_create_folders(tmp_path):
    path = tmp_path / "a" / "b" / "out.json"
    atomic_write_json(path, {"x": 1}, indent=1)
    assert json.loads(path.read_text()) == {"x": 1}
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n"
    atomic_write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert atomic_torch_save(path, {"w": torch.arange(3)}) == path
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.json"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()  # not mkstemp's 0o600


def _die_while_writing(path, how):
    with atomic_writer(path) as fh:
        fh.write("half of the new content")
        fh.flush()
        raise RuntimeError("writer died") if how == "raise" else KeyboardInterrupt()


@pytest.mark.parametrize("how, write, error", [
    ("raise", lambda p: _die_while_writing(p, "raise"), RuntimeError),
    ("interrupt", lambda p: _die_while_writing(p, "interrupt"), KeyboardInterrupt),
    ("json", lambda p: atomic_write_json(p, {"ok": 1, "bad": object()}), TypeError),  # after a prefix
    ("torch", lambda p: atomic_torch_save(p, {"ok": torch.zeros(100), "bad": lambda: 0}), Exception),
])
def test_a_failed_write_leaves_the_old_file_and_no_partial_one(tmp_path, how, write, error):
    path = tmp_path / "out.json"
    path.write_text("old")
    with pytest.raises(error):
        write(path)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_failed_first_write_leaves_nothing(tmp_path):
    path = tmp_path / "new.json"
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": {1, 2}})
    assert list(tmp_path.iterdir()) == []


def test_bad_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_writer(tmp_path / "x", "a"):
            pass
