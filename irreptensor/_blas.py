"""Helpers for batched numpy work (used by ``wigner_D``): BLAS thread control, row-blocked products and a
chunk runner.

For thin products (``k, n <= ~100``) made chunk by chunk, BLAS's own threads cost more in hand-off than
they gain, far more on a busy machine, and worker threads of our own that each call a threaded BLAS
would oversubscribe the cores. So parallelism, where wanted, comes from :func:`run_chunks` (numpy's ufunc
loops and BLAS release the GIL), and BLAS stays on one thread:

* with several worker threads, :func:`run_chunks` limits BLAS to one thread with threadpoolctl for the
  threaded section (:func:`single_threaded_blas`), whatever the BLAS library and its thresholds;
* on the calling thread alone (the default ``threads=1``) BLAS settings are left alone: there the row
  blocks of :func:`matmul_rows` (each product one batched ``np.matmul`` over blocks of :func:`block_rows`
  rows) stay below OpenBLAS's threading threshold. Measured against a threadpoolctl limit on that path
  (one product per chunk, BLAS limited to one thread; one process, interleaved, 2-core machine under
  load), the blocks were faster: 1 rotation 0.33 vs 0.38 ms (the limit's set and restore), 8,192 and
  100,000 rotations 10-20% faster; and the limit is process-wide, so concurrent calls from the user's
  own threads would have to take turns. Left unlimited and unblocked, OpenBLAS threads every chunk's
  products: ~7x slower on that machine.

The row blocks are used on the threaded path too (not needed there to keep BLAS on one thread; measured
no slower).

threadpoolctl also tells how many threads BLAS would use (:func:`blas_threads`), the default number of
worker threads. It is imported on first use only (it costs ~20 ms), so ``import irreptensor`` stays light.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache

import numpy as np

__all__ = ["block_rows", "matmul_rows", "run_chunks", "default_threads", "blas_threads", "single_threaded_blas",
           "usable_cpus"]

_UNTHREADED_MNK = 1 << 19
"""Products with ``m * n * k`` below this run on one thread in OpenBLAS (``GEMM_MULTITHREAD_THRESHOLD`` of 4
times ``SMP_THRESHOLD_MIN`` per extra thread, checked on 0.3.31); used by :func:`block_rows` for the
single-thread path only (the threaded path limits BLAS with threadpoolctl instead)."""


def block_rows(k: int, n: int, cap: int = 512) -> int:
    """Rows per BLAS call for ``(rows, k) @ (k, n)``: ``cap`` halved until the call stays unthreaded."""
    b = max(1, cap)
    while b > 8 and b * k * n >= _UNTHREADED_MNK:
        b //= 2
    return b


def matmul_rows(A: np.ndarray, B: np.ndarray, out: np.ndarray, rows: int | None = None) -> np.ndarray:
    """``out[:] = A @ B`` for ``A (m, k)``, ``B (k, n)``, ``out (m, n)`` (strided 2-D views allowed), made as
    BLAS calls of ``rows`` rows each (one batched ``np.matmul`` plus one for the ragged rest); ``rows=None``:
    :func:`block_rows`.

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


@lru_cache(maxsize=None)
def _blas_controller():
    """threadpoolctl's controller of the BLAS libraries loaded now (numpy's BLAS is loaded with numpy, so it
    is there on the first call; a BLAS loaded later is not the one numpy's products use)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().select(user_api="blas")


def blas_threads() -> int | None:
    """Threads BLAS uses now, as threadpoolctl reads them (the most over the BLAS libraries it finds), or
    None when it finds none. This follows ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` /
    ``MKL_NUM_THREADS`` as the library read them at start-up, the CPUs it found, and any
    ``threadpool_limits`` in effect."""
    counts = [info["num_threads"] for info in _blas_controller().info() if info.get("num_threads")]
    return max(counts) if counts else None


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, e.g. under ``taskset``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads() -> int:
    """Worker threads a call uses by default: as many as BLAS would use (:func:`blas_threads`), at most the
    usable CPUs; the usable CPUs when threadpoolctl finds no BLAS."""
    n = usable_cpus()
    b = blas_threads()
    return max(1, min(n, b) if b else n)


_SECTION = threading.Lock()


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """BLAS limited to one thread inside the block (threadpoolctl's ``limit(limits=1)`` on the BLAS
    libraries, i.e. ``threadpool_limits(1, user_api="blas")``), the previous count restored after.

    The limit is process-wide for OpenBLAS (its pthreads build), so these blocks run one at a time (a
    lock): each restores the count it found, which blocks overlapping from several threads would get
    wrong. The calls that use it fill the cores on their own, so taking turns costs little.
    """
    with _SECTION, _blas_controller().limit(limits=1):
        yield


def run_chunks(make_work: Callable[[], Callable[[int, int], None]], n: int, chunk: int, threads: int) -> None:
    """Process ``range(n)`` in consecutive chunks of ``chunk``, on up to ``threads`` threads.

    Each thread calls ``make_work()`` once (so that it can allocate its own buffers) and then the returned
    ``work(start, stop)`` on one contiguous run of chunks, in order. With one thread (or one chunk)
    everything runs on the calling thread and BLAS settings are left alone; with several, BLAS runs on one
    thread meanwhile (:func:`single_threaded_blas`), so the worker threads do not oversubscribe the cores.
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
    with single_threaded_blas(), ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, [starts[i * per:(i + 1) * per] for i in range(threads)]))
