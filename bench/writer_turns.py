"""Two processes writing one SQLite queue: the writer turn blocking vs polling, side by side
(run: python bench/writer_turns.py).

Each run starts two processes on a fresh queue file; both enqueue ``--n`` items, one write
transaction each, as fast as they can (or ``--think-us`` apart), so writes find the turn
taken often. ``block`` is the turn as it was (a blocking ``flock``: the waiter wakes in the
kernel when the holder unlocks), ``poll`` the turn as it is (``LOCK_NB`` with sleeps from
0.1 ms to 1 ms, bounded by the busy timeout). The modes alternate for ``--runs`` runs each.
Printed per mode: writes per second of wall time (both processes, until the later one
finishes) and process CPU per write (both processes), medians over the runs, and poll/block
ratios.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from cjllm.provider import sqlite_turns
from cjllm.provider.queue import NewItem
from cjllm.provider.sqlite_enqueue import enqueue
from cjllm.provider.sqlite_queue import SQLiteQueue


def item() -> NewItem:
    now = time.time()
    return NewItem(
        str(uuid.uuid4()), str(uuid.uuid4()), "k1", 10, 500, 100_000, '{"c": 1}', now, now + 3600
    )


def child(mode: str, path: str, n: int, think: float) -> None:
    """One writer: ``n`` one-item enqueues after the parent says go, ``think`` seconds apart
    (a sleep: the other work a worker does between two writes); prints wall and CPU."""
    if mode == "block":

        def blocking(self: sqlite_turns.WriterTurns, fd: int) -> None:
            fcntl.flock(fd, fcntl.LOCK_EX)

        sqlite_turns.WriterTurns._take = blocking  # type: ignore[method-assign]
    q = SQLiteQueue(path, max_items=10 * n, max_bytes=10**12)
    items = [item() for _ in range(n)]
    print("ready", flush=True)
    sys.stdin.readline()
    wall, cpu = time.perf_counter(), time.process_time()
    for new in items:
        q._write(lambda c, new=new: enqueue(c, [new], 10 * n, 10**12))
        if think:
            time.sleep(think)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"wall": wall, "cpu": cpu}), flush=True)


def run(mode: str, n: int, think: float) -> tuple[float, float]:
    """(writes per second, CPU µs per write) of one two-process run."""
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "q.sqlite")
        SQLiteQueue(path, max_items=1, max_bytes=1)  # the schema, before both start
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--child", mode, path, str(n), str(think)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == "ready\n"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for p in procs:
            assert p.stdout is not None
            results.append(json.loads(p.stdout.readline()))
            p.wait()
    wall = max(r["wall"] for r in results)
    return 2 * n / wall, 1e6 * sum(r["cpu"] for r in results) / (2 * n)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="writes per process per run")
    parser.add_argument("--runs", type=int, default=5, help="runs per mode, alternating")
    parser.add_argument("--think-us", type=float, default=0.0, help="sleep between writes, µs")
    args = parser.parse_args()
    figures: dict[str, list[tuple[float, float]]] = {"block": [], "poll": []}
    for _ in range(args.runs):
        for mode in figures:
            figures[mode].append(run(mode, args.n, args.think_us / 1e6))
    medians = {
        mode: (statistics.median(r for r, _ in runs), statistics.median(c for _, c in runs))
        for mode, runs in figures.items()
    }
    print(
        f"two writers, {args.n} one-item enqueues each, {args.think_us:g} µs apart, "
        f"{args.runs} runs per mode"
    )
    for mode, (rate, cpu) in medians.items():
        spread = ", ".join(f"{r:,.0f}" for r, _ in figures[mode])
        print(f"  {mode:5}  {rate:8,.0f} writes/s ({spread})  {cpu:6.0f} µs CPU/write")
    (rate_b, cpu_b), (rate_p, cpu_p) = medians["block"], medians["poll"]
    print(f"  poll/block: writes/s {rate_p / rate_b:.2f}, CPU/write {cpu_p / cpu_b:.2f}")


if __name__ == "__main__":
    main()
