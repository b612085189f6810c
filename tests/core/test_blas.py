"""The batched-product and threading helpers of ``irreptensor._blas``."""

import os
import subprocess
import sys

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from irreptensor import _blas


@pytest.mark.parametrize("rows", [None, 8, 64, 1000])
def test_matmul_rows_matches_one_product(rows):
    """Row blocks (plus the ragged rest) on strided and Fortran-ordered views give the plain product."""
    rng = np.random.default_rng(0)
    A = rng.normal(size=(45, 301)).T  # Fortran-ordered (301, 45), like the monomial matrices
    B = rng.normal(size=(45, 21))
    out = np.zeros((301, 30))
    _blas.matmul_rows(A, B, out[:, 3:24], rows)
    np.testing.assert_allclose(out[:, 3:24], A @ B, rtol=0, atol=1e-12)
    assert not out[:, :3].any() and not out[:, 24:].any()


def test_block_rows_stays_below_the_threading_threshold():
    """The single-thread path's blocks (BLAS left alone there) stay below OpenBLAS's threading threshold."""
    for k, n in [(81, 21), (45, 21), (20, 60), (9, 10), (243, 100)]:
        b = _blas.block_rows(k, n, cap=4096)
        assert b * k * n < _blas._UNTHREADED_MNK or b <= 8
    assert _blas.block_rows(9, 10, cap=300) == 300


def test_default_threads_is_what_blas_uses_at_most_the_cpus(monkeypatch):
    b = _blas.blas_threads()
    assert b is not None and b >= 1, "threadpoolctl finds numpy's BLAS"
    assert _blas.default_threads() == min(b, _blas.usable_cpus())
    with threadpool_limits(1, user_api="blas"):
        assert _blas.blas_threads() == 1 and _blas.default_threads() == 1
    assert _blas.blas_threads() == b
    monkeypatch.setattr(_blas, "blas_threads", lambda: None)  # no BLAS found: the usable CPUs
    assert _blas.default_threads() == _blas.usable_cpus()
    monkeypatch.setattr(_blas, "blas_threads", lambda: 10 * _blas.usable_cpus())
    assert _blas.default_threads() == _blas.usable_cpus()


def test_default_threads_follows_the_environment_read_by_blas():
    """``OPENBLAS_NUM_THREADS=1`` (read by OpenBLAS at start-up) gives one worker thread; threadpoolctl is not
    imported by ``import irreptensor``, only on first use."""
    code = ("import sys, irreptensor, irreptensor._blas as b; t = 'threadpoolctl' in sys.modules; "
            "print(t, b.blas_threads(), b.default_threads())")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split() == ["False", "1", "1"]


def test_single_threaded_blas_limits_and_restores():
    before = _blas.blas_threads()
    with _blas.single_threaded_blas():
        assert _blas.blas_threads() == 1
    assert _blas.blas_threads() == before
    with pytest.raises(RuntimeError), _blas.single_threaded_blas():
        raise RuntimeError("restored on errors too")
    assert _blas.blas_threads() == before


@pytest.mark.parametrize("threads", [1, 3])
def test_run_chunks_limits_blas_to_one_thread_only_while_worker_threads_run(threads):
    """Worker threads see BLAS on one thread (so no oversubscription, whatever the product sizes); the
    single-thread path leaves BLAS alone (its row blocks keep OpenBLAS unthreaded)."""
    outside = _blas.blas_threads()
    seen = []

    def make_work():
        return lambda s, e: seen.append(_blas.blas_threads())

    _blas.run_chunks(make_work, 1000, 96, threads)
    assert seen == [1 if threads > 1 else outside] * len(range(0, 1000, 96))
    assert _blas.blas_threads() == outside


def test_wigner_D_is_the_same_on_worker_threads():
    import irreptensor as it

    R = it.random_rotation(3000, seed=5)
    one = it.wigner_D(R, "elastic", chunk=256, threads=1)
    before = _blas.blas_threads()
    assert np.array_equal(it.wigner_D(R, "elastic", chunk=256, threads=3), one)
    assert _blas.blas_threads() == before


@pytest.mark.parametrize("threads", [1, 3, 50])
def test_run_chunks_covers_the_range_once_in_order_per_thread(threads):
    seen = []

    def make_work():
        mine = []
        seen.append(mine)
        return lambda s, e: mine.append((s, e))

    _blas.run_chunks(make_work, 1000, 96, threads)
    spans = sorted(span for mine in seen for span in mine)
    assert spans == [(s, min(s + 96, 1000)) for s in range(0, 1000, 96)]
    assert all(mine == sorted(mine) for mine in seen)
    assert len(seen) == min(threads, len(spans))
