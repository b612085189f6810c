"""Provenance of results: the git revision of the code that made them."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from irreptensor_ml.train.provenance import package_versions, source_revision

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(root, *args):
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_source_revision_names_the_commit_and_uncommitted_code(tmp_path):
    for d in ("irreptensor", "irreptensor_ml", "results"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "a.py").write_text("x = 1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    sha = _git(tmp_path, "rev-parse", "HEAD")
    assert source_revision(tmp_path) == sha
    (tmp_path / "results" / "a.py").write_text("x = 2\n")  # results are not code
    (tmp_path / "irreptensor_ml" / "new.py").write_text("")  # untracked: not what runs
    assert source_revision(tmp_path) == sha
    (tmp_path / "irreptensor_ml" / "a.py").write_text("x = 2\n")
    assert source_revision(tmp_path) == sha + "+dirty"


def test_source_revision_outside_a_checkout_is_none(tmp_path):
    assert source_revision(tmp_path) is None
    (tmp_path / "irreptensor").mkdir()
    (tmp_path / "irreptensor_ml").mkdir()
    assert source_revision(tmp_path) is None  # the folders, but no git repository


def test_package_versions_record_the_source_revision():
    assert "irreptensor_source" in package_versions()
