"""The batched-product and threading helpers of ``irreptensor._blas``."""

import numpy as np
import pytest

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
    for k, n in [(81, 21), (45, 21), (20, 60), (9, 10), (243, 100)]:
        b = _blas.block_rows(k, n, cap=4096)
        assert b * k * n < _blas._UNTHREADED_MNK or b <= 8
    assert _blas.block_rows(9, 10, cap=300) == 300


def test_default_threads_follows_the_environment(monkeypatch):
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    assert _blas.default_threads() == _blas.usable_cpus()
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    assert _blas.default_threads() == 1
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "junk")
    assert _blas.default_threads() == _blas.usable_cpus()


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
