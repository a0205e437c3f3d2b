"""Bundling vs one call per comparison through the real Anthropic SDK adapter and `cjllm sim`.

Run: python bench/bundling_sim.py

A more realistic companion to ``bench/bundling.py``: the simulated server charges time per
call *and per output token*, so a bundle of ten takes longer than a single answer, and it
counts tokens, so the shared prefix (sent once per call) shows up in the input totals.
The same comparisons go through the whole embedded provider service (HTTP API over ASGI,
SQLite queue, worker, outbox, in-process bus) and the official ``anthropic`` SDK pointed
at ``cjllm sim`` (``ANTHROPIC_BASE_URL``), once ``per_request`` and once bundled. Prints
provider calls, input/output tokens and wall time for both, and the ratios, from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from bundling import post_and_wait  # bench/bundling.py, beside this script

from cjllm.settings import ProviderSettings

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@dataclass
class Run:
    label: str
    calls: int
    input_tokens: int
    output_tokens: int
    seconds: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def essays() -> list[str]:
    return [p.read_text(encoding="utf-8") for p in sorted((EXAMPLES / "essays").glob("*.txt"))]


def request(i: int, texts: list[str], strategy: str, size: int) -> dict[str, Any]:
    shared = (EXAMPLES / "instructions.md").read_text(encoding="utf-8")
    rubric = (EXAMPLES / "rubric.md").read_text(encoding="utf-8")
    a, b = texts[i % len(texts)], texts[(i * 7 + 3) % len(texts)]
    return {
        "prompt_blocks": [
            {"target": "system", "content": "You are an experienced essay judge."},
            {"target": "user_content", "content": shared, "cacheable": True},
            {"target": "user_content", "content": rubric, "cacheable": True},
            {"target": "user_content", "content": a},
            {"target": "user_content", "content": b},
        ],
        "callback_topic": "bench.results",
        "correlation_id": str(uuid.uuid4()),
        "llm_config_overrides": {"provider_override": "anthropic"},
        "metadata": {
            "batching_strategy": strategy,
            "preferred_bundle_size": size,
            "bundle_group": "bench",
            "cj_batch_id": "bench",
        },
    }


async def run(
    label: str, strategy: str, size: int, args: argparse.Namespace, sim: str, workdir: Path
) -> Run:
    settings = ProviderSettings(
        queue_url=f"sqlite:///{workdir / (strategy + '.sqlite')}",
        worker_concurrency=args.concurrency,
        linger_seconds=args.linger,
        poll_interval_seconds=0.01,
        max_items_per_call=max(size, 1),
    )
    async with httpx.AsyncClient(base_url=sim) as control:
        (await control.post("/sim/reset")).raise_for_status()
    texts = essays()
    bodies = [request(i, texts, strategy, size) for i in range(args.comparisons)]
    seconds = await post_and_wait(settings, bodies)
    async with httpx.AsyncClient(base_url=sim) as control:
        counters = (await control.get("/sim/counters")).json()
    tokens = counters["tokens"]
    inputs = tokens["input"] + tokens["cache_creation"] + tokens["cache_read"]
    return Run(label, counters["calls"], inputs, tokens["output"], seconds)


async def measure(args: argparse.Namespace, sim: str) -> tuple[Run, Run]:
    with tempfile.TemporaryDirectory(prefix="cjllm-bench-") as tmp:
        base = await run("per_request", "per_request", 1, args, sim, Path(tmp))
        label = f"bundled (size {args.size})"
        bundled = await run(label, "serial_round", args.size, args, sim, Path(tmp))
    return base, bundled


@contextlib.contextmanager
def simulator(manifest: Path, *options: str) -> Iterator[str]:
    """``cjllm sim`` in a child process on a free port, the anthropic SDK's environment
    pointed at it; yields its URL."""
    port = free_port()
    sim = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-c", "from cjllm.cli import app; app(prog_name='cjllm')", "sim",
        "--port", str(port), "--manifest", str(manifest), *options,
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ["ANTHROPIC_BASE_URL"] = sim
    os.environ.setdefault("ANTHROPIC_API_KEY", "sim-key")
    try:
        for _ in range(200):
            try:
                httpx.get(f"{sim}/sim/counters").raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield sim
    finally:
        proc.terminate()
        proc.wait()


def main(args: argparse.Namespace) -> None:
    latency = ("--latency-call", str(args.latency_call), "--latency-token", str(args.latency_token))
    with simulator(EXAMPLES / "essays" / "manifest.json", *latency) as sim:
        base, bundled = asyncio.run(measure(args, sim))
    print(
        f"{args.comparisons} comparisons via the anthropic SDK and cjllm sim: "
        f"{args.latency_call:g}s per call + {args.latency_token:g}s per output token, "
        f"{args.concurrency} calls in flight, linger {args.linger:g}s"
    )
    print(f"{'strategy':<20}{'calls':>8}{'input tok':>12}{'output tok':>12}{'wall (s)':>10}")
    for r in (base, bundled):
        print(
            f"{r.label:<20}{r.calls:>8}{r.input_tokens:>12,}{r.output_tokens:>12,}"
            f"{r.seconds:>10.2f}"
        )
    print(
        f"ratio: {base.calls / bundled.calls:.1f}x fewer calls, "
        f"{base.input_tokens / bundled.input_tokens:.1f}x fewer input tokens, "
        f"{base.seconds / bundled.seconds:.1f}x less wall time"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--comparisons", type=int, default=100)
    parser.add_argument("--size", type=int, default=10, help="preferred bundle size")
    parser.add_argument("--latency-call", type=float, default=0.5, help="sim seconds per call")
    parser.add_argument("--latency-token", type=float, default=0.004, help="per output token")
    parser.add_argument("--concurrency", type=int, default=4, help="worker_concurrency")
    parser.add_argument("--linger", type=float, default=0.25, help="linger_seconds")
    main(parser.parse_args())
