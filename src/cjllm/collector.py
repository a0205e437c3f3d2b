"""How often Python's cyclic garbage collector runs in a cjllm process.

A service process holds a large and growing heap of long-lived objects: a batch's essays,
its comparisons read back every round, the queue's and the bus's buffers. With CPython's
default thresholds (700, 10, 10) a collection of the youngest generation runs every 700
container allocations, and a full one whenever enough of them have survived into the
oldest — each full one walking the whole heap while every thread of the process waits.
Measured at 10,000 essays (``cjllm rank``, the zero-latency mock, 50,000 comparisons): 28
full collections took 4.5 s of the rank process's time and the young ones 1.3 s more; with
a first threshold of 50,000 the collector ran 68 times for 0.85 s in all
(docs/performance.md). cjllm's own objects seldom form reference cycles, so collecting
them 70 times less often costs little memory: cycles wait up to 50,000 allocations.
"""

from __future__ import annotations

import gc

THRESHOLDS = (50_000, 20, 20)  # young, middle, old generation (CPython's: 700, 10, 10)


def relax() -> None:
    """Set :data:`THRESHOLDS` for this process (its entry point calls this once)."""
    gc.set_threshold(*THRESHOLDS)
