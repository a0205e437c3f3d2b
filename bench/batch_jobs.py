"""Input tokens and price per comparison: serial calls vs provider batch jobs, side by side.

Run: python bench/batch_jobs.py [--vendor anthropic|openai|both] [--comparisons 200]

The same comparisons (the example essays, the example assignment and rubric as the shared
prefix) go through the whole embedded provider service (HTTP API over ASGI, SQLite queue,
worker or batch-job watcher, outbox, in-process bus) and the vendor's official SDK pointed
at ``cjllm sim``, four ways:

- ``per_request``: one serial call per comparison (the baseline);
- ``serial_round``: serial calls of ``--size`` comparisons (the shared prefix once a call);
- ``async_batch`` with one comparison per line (``CJLLM_BATCH_ITEMS_PER_LINE=1``): the
  vendor's batch price, but the shared prefix in every line;
- ``async_batch`` with bundled lines of ``--size``: the batch price on top of bundling;
- the same in the ``pool`` layout (``CJLLM_BUNDLE_LAYOUT=pool``): each distinct essay of a
  line sent once. These comparisons are not planned as CJ groups, so a line's comparisons
  share only the essays they happen to share (see docs/batch-jobs.md).

Tokens are the sim's own counts (input = uncached + cache writes + cache reads); the price
is the sum of the callbacks' ``cost_estimate`` (the packaged price table, batch lines at its
``batch_multiplier``). Everything is measured in one run; the ratios are to ``per_request``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from bundling_sim import free_port  # bench/bundling_sim.py, beside this script

from cjllm.bus import MemoryBus
from cjllm.contracts import BundleLayout, EventEnvelope
from cjllm.provider.service import embedded_provider
from cjllm.settings import ProviderSettings

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TOPIC = "bench.results"


@dataclass
class Row:
    label: str
    requests: int  # serial calls, or batch-job lines
    input_tokens: int
    output_tokens: int
    cost: float
    failed: int


def request(i: int, texts: list[str], vendor: str, strategy: str, size: int) -> dict[str, Any]:
    instructions = (EXAMPLES / "instructions.md").read_text(encoding="utf-8")
    rubric = (EXAMPLES / "rubric.md").read_text(encoding="utf-8")
    a, b = texts[i % len(texts)], texts[(i * 7 + 3) % len(texts)]
    return {
        "prompt_blocks": [
            {"target": "system", "content": "You are an experienced essay judge."},
            {"target": "user_content", "content": instructions, "cacheable": True},
            {"target": "user_content", "content": rubric, "cacheable": True},
            {"target": "user_content", "content": a},
            {"target": "user_content", "content": b},
        ],
        "callback_topic": TOPIC,
        "correlation_id": str(uuid.uuid4()),
        "llm_config_overrides": {"provider_override": vendor},
        "metadata": {
            "batching_strategy": strategy,
            "preferred_bundle_size": size,
            "bundle_group": "bench",
            "cj_batch_id": "bench",
        },
    }


async def run(
    label: str,
    vendor: str,
    strategy: str,
    size: int,
    per_line: int,
    layout: BundleLayout,
    args: argparse.Namespace,
    sim: str,
    workdir: Path,
) -> Row:
    settings = ProviderSettings(
        queue_url=f"sqlite:///{workdir / (uuid.uuid4().hex + '.sqlite')}",
        bus_url="memory://",
        worker_concurrency=4,
        linger_seconds=0.25,
        poll_interval_seconds=0.01,
        max_items_per_call=max(size, 1),
        batch_items_per_line=per_line,
        bundle_layout=layout,
        batch_linger_seconds=0.3,
        batch_poll_min_seconds=0.2,
        batch_poll_max_seconds=0.5,
        sweep_interval_seconds=0.1,
    )
    async with httpx.AsyncClient(base_url=sim) as control:
        (await control.post("/sim/reset")).raise_for_status()
    texts = [p.read_text("utf-8") for p in sorted((EXAMPLES / "essays").glob("*.txt"))]
    bodies = [request(i, texts, vendor, strategy, size) for i in range(args.comparisons)]
    cost, failed, done = 0.0, 0, asyncio.Event()
    seen: set[str] = set()

    async def on_result(envelope: EventEnvelope) -> None:
        nonlocal cost, failed
        result = envelope.result()
        if str(result.correlation_id) in seen:
            return  # at-least-once: count each comparison once
        seen.add(str(result.correlation_id))
        cost += result.cost_estimate
        failed += not result.is_success
        if len(seen) == len(bodies):
            done.set()

    bus = MemoryBus()
    bus.subscribe(TOPIC, "bench", on_result)
    await bus.start()
    async with embedded_provider(settings, bus=bus) as service:
        transport = httpx.ASGITransport(app=service.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://provider") as client:
            for body in bodies:
                (await client.post("/api/v1/comparison", json=body)).raise_for_status()
            await done.wait()
    await bus.stop()
    async with httpx.AsyncClient(base_url=sim) as control:
        counters = (await control.get("/sim/counters")).json()
    tokens = counters["tokens"]
    inputs = tokens["input"] + tokens["cache_creation"] + tokens["cache_read"]
    requests = counters["calls"] + counters["batches"]["requests"]
    return Row(label, requests, inputs, tokens["output"], cost, failed)


async def measure(vendor: str, args: argparse.Namespace, sim: str) -> list[Row]:
    size, items, pool = args.size, BundleLayout.ITEMS, BundleLayout.POOL
    plans = [
        ("per_request", "per_request", 1, 1, items),
        (f"serial_round ({size}/call)", "serial_round", size, 1, items),
        ("async_batch (1/line)", "async_batch", size, 1, items),
        (f"async_batch ({size}/line)", "async_batch", size, size, items),
        (f"async_batch ({size}/line, pool)", "async_batch", size, size, pool),
    ]
    with tempfile.TemporaryDirectory(prefix="cjllm-bench-") as tmp:
        return [
            await run(label, vendor, strategy, s, per_line, layout, args, sim, Path(tmp))
            for label, strategy, s, per_line, layout in plans
        ]


def report(vendor: str, rows: list[Row], n: int) -> None:
    base = rows[0]
    print(f"\n{vendor}: {n} comparisons (each row the same comparisons)")
    print(
        f"{'strategy':<32}{'requests':>9}{'input tok/cmp':>15}{'output tok/cmp':>16}"
        f"{'$ per 1k cmp':>14}{'input vs base':>15}{'price vs base':>15}"
    )
    for r in rows:
        print(
            f"{r.label:<32}{r.requests:>9}{r.input_tokens / n:>15.0f}{r.output_tokens / n:>16.0f}"
            f"{r.cost / n * 1000:>14.3f}{r.input_tokens / base.input_tokens:>15.2f}"
            f"{r.cost / base.cost:>15.2f}" + (f"  ({r.failed} failed)" if r.failed else "")
        )


def main(args: argparse.Namespace) -> None:
    port = free_port()
    sim = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-c", "from cjllm.cli import app; app(prog_name='cjllm')", "sim",
        "--port", str(port), "--manifest", str(EXAMPLES / "essays" / "manifest.json"),
        "--batch-seconds", "0.5",
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ.update(
        ANTHROPIC_BASE_URL=sim,
        ANTHROPIC_API_KEY=os.environ.get("ANTHROPIC_API_KEY", "sim-key"),
        OPENAI_BASE_URL=f"{sim}/v1",
        OPENAI_API_KEY=os.environ.get("OPENAI_API_KEY", "sim-key"),
    )
    vendors = ["anthropic", "openai"] if args.vendor == "both" else [args.vendor]
    try:
        for _ in range(200):
            try:
                httpx.get(f"{sim}/sim/counters").raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        results = {v: asyncio.run(measure(v, args, sim)) for v in vendors}
    finally:
        proc.terminate()
        proc.wait()
    for vendor, rows in results.items():
        report(vendor, rows, args.comparisons)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vendor", choices=["anthropic", "openai", "both"], default="both")
    parser.add_argument("--comparisons", type=int, default=200)
    parser.add_argument("--size", type=int, default=10, help="comparisons per call or line")
    main(parser.parse_args())
