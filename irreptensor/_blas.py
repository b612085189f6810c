"""Helpers for batched numpy work (used by ``wigner_D``): unthreaded BLAS products and a chunk runner.

OpenBLAS threads a GEMM once ``m * n * k`` reaches ``2 * 4 * 65536`` (``GEMM_MULTITHREAD_THRESHOLD`` of 4
times ``SMP_THRESHOLD_MIN`` per extra thread). For thin products (``k, n <= ~100``) made chunk by chunk the
threads' hand-off costs more than it gains, far more on a busy machine, and worker threads of our own that
each call a threaded BLAS would oversubscribe the cores. So :func:`matmul_rows` makes a product as one
batched ``np.matmul`` over row blocks small enough to stay on the calling thread, and parallelism, where
wanted, comes from :func:`run_chunks` (numpy's ufunc loops and BLAS release the GIL).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

__all__ = ["block_rows", "matmul_rows", "run_chunks", "default_threads", "usable_cpus"]

_UNTHREADED_MNK = 1 << 19
"""Products with ``m * n * k`` below this run on one thread in OpenBLAS (checked on 0.3.31)."""


def block_rows(k: int, n: int, cap: int = 512) -> int:
    """Rows per BLAS call for ``(rows, k) @ (k, n)``: ``cap`` halved until the call stays unthreaded."""
    b = max(1, cap)
    while b > 8 and b * k * n >= _UNTHREADED_MNK:
        b //= 2
    return b


def matmul_rows(A: np.ndarray, B: np.ndarray, out: np.ndarray, rows: int | None = None) -> np.ndarray:
    """``out[:] = A @ B`` for ``A (m, k)``, ``B (k, n)``, ``out (m, n)`` (strided 2-D views allowed), made as
    unthreaded BLAS calls of ``rows`` rows each (one batched ``np.matmul`` plus one for the ragged rest).

    Returns ``out``.
    """
    m, k = A.shape
    if rows is None:
        rows = block_rows(k, B.shape[1], cap=m)
    main = m - m % rows
    if main:
        nb = main // rows
        # splitting the first axis never needs a copy, so both reshapes are views
        np.matmul(A[:main].reshape(nb, rows, k), B, out=out[:main].reshape(nb, rows, out.shape[1]))
    if main < m:
        np.matmul(A[main:], B, out=out[main:])
    return out


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, e.g. under ``taskset``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads() -> int:
    """Worker threads a call uses by default: what BLAS would use, i.e. the usable CPUs, capped by
    ``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` where set."""
    n = usable_cpus()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        try:
            v = int(os.environ.get(var, "").split(",")[0])
        except ValueError:
            continue
        if v > 0:
            n = min(n, v)
    return max(1, n)


def run_chunks(make_work: Callable[[], Callable[[int, int], None]], n: int, chunk: int, threads: int) -> None:
    """Process ``range(n)`` in consecutive chunks of ``chunk``, on up to ``threads`` threads.

    Each thread calls ``make_work()`` once (so that it can allocate its own buffers) and then the returned
    ``work(start, stop)`` on one contiguous run of chunks, in order. With one thread (or one chunk)
    everything runs on the calling thread.
    """
    starts = list(range(0, n, chunk))
    threads = max(1, min(int(threads), len(starts)))

    def run(my_starts):
        work = make_work()
        for s in my_starts:
            work(s, min(s + chunk, n))

    if threads == 1:
        run(starts)
        return
    from concurrent.futures import ThreadPoolExecutor

    per = -(-len(starts) // threads)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, [starts[i * per:(i + 1) * per] for i in range(threads)]))
