"""Bundling vs one call per comparison, on the mock (run: python bench/bundling.py).

The same 200 comparisons go through the whole embedded provider service (HTTP API over
ASGI, SQLite queue, worker, outbox, in-process bus) twice: once as ``per_request`` (one
provider call each, the baseline) and once bundled (``serial_round`` with a preferred
bundle size of 10). The mock adapter takes a fixed time per call, whatever its size, as a
stand-in for a provider's round trip. Prints provider calls and wall time (first POST to
last callback) for both, and the ratios, all from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from cjllm.bus import MemoryBus
from cjllm.contracts import EventEnvelope
from cjllm.provider.adapters.mock import MockAdapter
from cjllm.provider.calls import LLMAdapter
from cjllm.provider.service import embedded_provider
from cjllm.settings import ProviderSettings

RUBRIC = "Assignment: argue for or against school uniforms.\nRubric: argument, evidence, style."


@dataclass
class Run:
    label: str
    calls: int
    seconds: float


def request(i: int, strategy: str, size: int) -> dict[str, Any]:
    return {
        "prompt_blocks": [
            {"target": "user_content", "content": RUBRIC, "cacheable": True},
            {"target": "user_content", "content": f"Essay {i}a. " + "A short argument. " * (i % 7)},
            {"target": "user_content", "content": f"Essay {i}b. " + "Another view. " * (i % 5)},
        ],
        "callback_topic": "bench.results",
        "correlation_id": str(uuid.uuid4()),
        "llm_config_overrides": {"provider_override": "mock"},
        "metadata": {
            "batching_strategy": strategy,
            "preferred_bundle_size": size,
            "bundle_group": "bench",
            "cj_batch_id": "bench",
        },
    }


async def post_and_wait(
    settings: ProviderSettings,
    bodies: list[dict[str, Any]],
    adapters: dict[str, LLMAdapter] | None = None,
) -> float:
    """POST every body to the embedded provider; seconds from the first POST to the last
    callback on ``bench.results``."""
    done = asyncio.Event()
    received = 0

    async def on_result(envelope: EventEnvelope) -> None:
        nonlocal received
        received += 1
        if received == len(bodies):
            done.set()

    bus = MemoryBus()
    bus.subscribe("bench.results", "bench", on_result)
    await bus.start()
    async with embedded_provider(settings, bus=bus, adapters=adapters) as service:
        transport = httpx.ASGITransport(app=service.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://provider") as client:
            start = time.perf_counter()
            for body in bodies:
                (await client.post("/api/v1/comparison", json=body)).raise_for_status()
            await done.wait()
            seconds = time.perf_counter() - start
    await bus.stop()
    return seconds


async def run(label: str, strategy: str, size: int, args: argparse.Namespace, workdir: Path) -> Run:
    settings = ProviderSettings(
        queue_url=f"sqlite:///{workdir / (strategy + '.sqlite')}",
        worker_concurrency=args.concurrency,
        linger_seconds=args.linger,
        poll_interval_seconds=0.01,
    )
    mock = MockAdapter(latency_seconds=args.latency)
    bodies = [request(i, strategy, size) for i in range(args.comparisons)]
    seconds = await post_and_wait(settings, bodies, adapters={"mock": mock})
    return Run(label, len(mock.calls), seconds)


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="cjllm-bench-") as tmp:
        baseline = await run("per_request", "per_request", 1, args, Path(tmp))
        bundled = await run(
            f"bundled (size {args.size})", "serial_round", args.size, args, Path(tmp)
        )
    print(
        f"{args.comparisons} comparisons, mock provider with {args.latency:g}s per call, "
        f"{args.concurrency} calls in flight, linger {args.linger:g}s, SQLite queue"
    )
    print(f"{'strategy':<22}{'provider calls':>16}{'wall time (s)':>16}")
    for r in (baseline, bundled):
        print(f"{r.label:<22}{r.calls:>16}{r.seconds:>16.2f}")
    print(
        f"ratio: {baseline.calls / bundled.calls:.1f}x fewer provider calls, "
        f"{baseline.seconds / bundled.seconds:.1f}x less wall time"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--comparisons", type=int, default=200)
    parser.add_argument("--size", type=int, default=10, help="preferred bundle size")
    parser.add_argument("--latency", type=float, default=0.25, help="mock seconds per call")
    parser.add_argument("--concurrency", type=int, default=4, help="worker_concurrency")
    parser.add_argument("--linger", type=float, default=0.25, help="linger_seconds")
    asyncio.run(main(parser.parse_args()))
