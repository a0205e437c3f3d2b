"""A helper process that samples the final fit's lapse chain while the caller samples the other.

The final fit (:func:`cjllm.cj.ranking.final_fit`) samples two posterior chains, ε = 0 and ε
sampled. Each is a Python-bound loop, so threads would take turns on the GIL; a second
process runs one of them on another core. Life: one process per Python process, started by
:func:`executor` on first need (:mod:`cjllm.cj.round_decision` asks when a batch small enough
to be sampled plans a round, so the process has imported what it needs long before the batch's
last round) and kept for the rest of the process's life. ``spawn``, not ``fork``: the parent
holds threads (the event loop's executor, aiosqlite) that a fork would copy mid-operation.

Invariant: the helper runs the same function with the same arguments and seed, so it gives
the draws the caller would have drawn itself (``tests/cj/test_chain_process.py``). If the
process dies, the chain's future raises :class:`~concurrent.futures.process.BrokenProcessPool`
and the caller lets it propagate (the workflow reopens the round, so the batch is tried
again): there is no silent fallback. :func:`discard` drops a broken executor, so the next
:func:`executor` call starts a fresh process.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor

from threadpoolctl import threadpool_limits

__all__ = ["discard", "executor"]

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None


def executor() -> ProcessPoolExecutor:
    """The helper process's executor; the first call starts the process (a few milliseconds
    here; its imports then run on the other core)."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_prepare,
            )
            _pool.submit(_ready)  # start it now, not when the final fit needs it
        return _pool


def discard(pool: ProcessPoolExecutor) -> None:
    """Shut ``pool`` down (it broke) and forget it, so the next :func:`executor` call
    starts a fresh process."""
    global _pool
    with _lock:
        if _pool is pool:
            _pool = None
    pool.shutdown(wait=False, cancel_futures=True)


_blas_limits: object = None  # held for the process's life


def _prepare() -> None:
    """Set the helper process up: the chain's code loaded and its BLAS on one thread, as the
    CJ service runs its fits (``cj_service``; a threaded BLAS stalls on small dense solves
    when the machine is busy, and the other core is the caller's)."""
    global _blas_limits
    # Ctrl-C reaches the whole process group: the parent stops the run and then this process
    # (a KeyboardInterrupt here would only print a second traceback)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # a parent killed outright (SIGKILL, OOM) never shuts the pool down, and this process
    # would wait on its task pipe forever: it leaves when it is orphaned instead
    parent = os.getppid()
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    import cjllm.cj.posterior  # noqa: F401  (loads numpy and scipy's BLAS before the limit)

    _blas_limits = threadpool_limits(limits=1, user_api="blas")


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_ORPHAN_CHECK_SECONDS)
    os._exit(0)


_ORPHAN_CHECK_SECONDS = 1.0


def _ready() -> None:
    """The first task: it makes the pool start its process now (and run :func:`_prepare`)."""
