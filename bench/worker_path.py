"""What working a round costs the provider's worker: claim, call, settle, finish, per item.

Run: python bench/worker_path.py [--rounds 2] [--size 5000] [--repeats 2] [--baseline OLD/src]
     python bench/worker_path.py --profile      # where one drain's CPU goes (cProfile)

Rounds of ``size`` comparisons (essays of 500 words, the CJ prompt's shared prefix, bundles of
25) are queued in a fresh SQLite queue by the CJ service's submission path
(``bench/submit_path.py``) with no worker; then a worker opens the queue afresh, as the child
worker of ``cjllm rank`` does (so it parses every payload), with the mock judge knowing each
essay's quality (as from a manifest), and works until nothing is queued or in flight — no
publisher, the callbacks stay in the outbox. Printed: the CPU µs per item of this process (its
SQLite threads included) and of the event loop's thread alone, and the garbage collector's
share. ``--baseline DIR``: the same, run alternately with the package imported from DIR
(``git archive <commit> src | tar -x -C /tmp/old``), and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import pstats
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from submit_path import _Store, essay_texts, gc_timer, round_job, round_rows, side_by_side


async def _fill(settings: Any, texts: dict[str, str], rounds_: int, size: int) -> None:
    from cjllm.cj import rounds
    from cjllm.embedded import DirectBus
    from cjllm.provider.service import embedded_provider

    rng = random.Random(2)
    bus = DirectBus()
    await bus.start()
    async with embedded_provider(settings, bus=bus, work=False) as provider:
        client, job = round_job(provider, texts)
        store = _Store()
        for number in range(1, rounds_ + 1):
            await rounds.submit(store, client, job, round_rows(texts, number, size, rng))  # type: ignore[arg-type]
        assert store.submitted == rounds_ * size
    await bus.stop()


async def _drain(settings: Any, texts: dict[str, str]) -> None:
    from cjllm.provider.adapters.mock import MockAdapter
    from cjllm.provider.limiter import Limiter
    from cjllm.provider.metrics import ProviderMetrics
    from cjllm.provider.providers import Providers
    from cjllm.provider.queue import queue_from_url
    from cjllm.provider.redis_limits import buckets_for
    from cjllm.provider.service import known_models
    from cjllm.provider.worker import Worker
    from cjllm.sim.judge import Judge, text_key

    queue = queue_from_url(
        settings.queue_url,
        max_items=settings.queue_max_items,
        max_bytes=settings.queue_max_bytes,
        retention_seconds=settings.record_retention_seconds,
    )
    qualities = {text_key(t): (k % 97) / 20.0 for k, t in enumerate(texts.values())}
    adapters = {"mock": MockAdapter(judge=Judge(qualities=qualities))}
    providers = Providers(settings, adapters, store=queue)
    metrics = ProviderMetrics(known_models=known_models(settings))
    limiter = Limiter(settings, metrics, buckets_for(queue, settings.rate_limit_period_seconds))
    worker = Worker(queue, providers, settings, metrics, limiter=limiter)
    stop = asyncio.Event()
    working = asyncio.create_task(worker.run(stop))
    try:
        while True:
            await asyncio.sleep(0.05)
            depth = await queue.depth(time.time())
            if depth.queued == 0 and depth.processing == 0:
                break
    finally:
        stop.set()
        worker.notify()
        await working
        await providers.aclose()
        await queue.close()


async def measure(rounds_: int, size: int, profile: bool) -> dict[str, float]:
    from cjllm.embedded import EmbeddedPaths
    from cjllm.settings import ProviderSettings

    texts = essay_texts(2 * size, random.Random(1))
    settings = EmbeddedPaths(Path(tempfile.mkdtemp())).provider_settings(ProviderSettings())
    await _fill(settings, texts, rounds_, size)
    gc.collect()
    spent, timed = gc_timer()
    profiler = cProfile.Profile() if profile else None
    gc.callbacks.append(timed)
    cpu, loop_cpu, wall = time.process_time(), time.thread_time(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    await _drain(settings, texts)
    if profiler is not None:
        profiler.disable()
    cpu, loop_cpu = time.process_time() - cpu, time.thread_time() - loop_cpu
    wall = time.perf_counter() - wall
    gc.callbacks.remove(timed)
    if profiler is not None:
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(30)
    n = rounds_ * size
    return {
        "us_per_item": 1e6 * cpu / n,
        "loop_us_per_item": 1e6 * loop_cpu / n,
        "gc_us_per_item": 1e6 * spent["gc"] / n,
        "items_per_s": n / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--size", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--baseline", default=None)
    parser.add_argument("--profile", action="store_true", help="cProfile one drain (stderr)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one or args.profile:
        print(json.dumps(asyncio.run(measure(args.rounds, args.size, args.profile))))
        return
    print(
        f"{args.rounds} rounds of {args.size} comparisons: CPU µs per item, process "
        "(its SQLite threads included) / event loop's thread (GC), items per second"
    )
    side_by_side(
        __file__, args, "us_per_item",
        lambda r: f"{r['us_per_item']:6.0f} / {r['loop_us_per_item']:4.0f}"
        f" ({r['gc_us_per_item']:.0f}) {r['items_per_s']:7.0f}/s",
    )  # fmt: skip


if __name__ == "__main__":
    main()
