"""The throughput sections of ``bench/scale.py`` (run them from there: ``--section rank``,
``--section serve``, ``--section tier4``).

rank
    ``cjllm rank`` embedded (SQLite queue and CJ database, in-process bus, the provider's API
    over an in-process ASGI transport) with the zero-latency mock judge, 10 comparisons per
    essay, at 200 and 10,000 essays (``--rank-sizes``). Comparisons per second = comparisons
    made / the job's time (ranking.json ``finished_at`` − run.json ``started_at``: from the
    batch's start to its last fit, without Python's start-up or the report); the process's
    whole wall time is printed beside it.
serve
    ``cjllm serve provider --api-only`` and two ``--worker-only`` processes on one Redis queue,
    callbacks on the Kafka-protocol broker (tansu), the zero-latency mock judge. The bench
    posts ``--serve-posts`` CJ-style comparison requests (two ~300-word essays each) over HTTP,
    ``--serve-concurrency`` in flight, while the workers run; it prints the accepted
    comparisons per second (first POST to last 202) and the time until every item's
    callback has been read from the broker (every item completed, or the run fails).
tier4
    ``cjllm rank`` against ``cjllm sim`` through the official ``anthropic`` SDK, with the
    realistic latency (0.5 s a call + 20 ms an output token) and the published tier-4 limits
    of Sonnet 4.x (4,000 requests, 2,000,000 input and 400,000 output tokens a minute):
    1,000 essays of ~500 tokens × 10 comparisons each. It prints the tightest rate-limit
    bound (as ``bench/rate_limits.py`` computes it, from what the sim counted), the rounds ×
    one bundle's latency (a full bundle: 0.5 s + 20 ms × its output tokens, as the sim
    counted them), the bound max(the two), the measured time and their ratio (target ≤ 2),
    and the rounds taken against the rounds the design needs (⌈budget / ⌊n/2⌋⌉). ``--tier4-scale``
    F shortens the limits' minute and the latencies F times (ratios kept; 1 = real time).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from rate_limits import CJLLM, Job, free_port, run_job, write_essays

from cjllm.bus import KafkaBus
from cjllm.contracts import EventEnvelope
from cjllm.provider.rate_limits import Limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.services import own_kafka, own_redis  # noqa: E402  (the benchmarks' services)

PER_ESSAY = 10
TIER4 = Limits(requests=4_000, input_tokens=2_000_000, output_tokens=400_000)


def _job_seconds(out: Path) -> tuple[dict[str, Any], float]:
    summary = json.loads((out / "ranking.json").read_text(encoding="utf-8"))["summary"]
    started = json.loads((out / "run.json").read_text(encoding="utf-8"))["started_at"]
    seconds = (
        datetime.fromisoformat(summary["finished_at"]) - datetime.fromisoformat(started)
    ).total_seconds()
    return summary, seconds


# --------------------------------------------------------------------------- rank


def rank_section(sizes: Sequence[int], work: Path) -> None:
    print(f"\n== cjllm rank, embedded, zero-latency mock, {PER_ESSAY} comparisons per essay ==")
    print(
        f"{'essays':>8}{'made':>8}{'rounds':>8}{'calls':>7}{'job s':>8}{'cmp/s':>8}"
        f"{'process s':>11}{'cmp/s (process)':>17}"
    )
    for n in sizes:
        essays = work / f"rank-{n}"
        write_essays(essays, n, seed=n)
        out = work / f"rank-{n}-out"
        env = {
            **{k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")},
            "CJLLM_TARGET_RELIABILITY": "0.9999",  # spend the whole budget
            "COLUMNS": "120",
        }
        start = time.perf_counter()
        proc = subprocess.run(
            [*CJLLM, "rank", str(essays), "--out", str(out), "--provider", "mock",
             "--comparisons-per-essay", str(PER_ESSAY)],
            env=env, capture_output=True, text=True, timeout=7200, check=False,
        )  # fmt: skip
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"cjllm rank failed:\n{proc.stdout[-3000:]}\n{proc.stderr}")
        summary, seconds = _job_seconds(out)
        made = summary["comparisons_made"]
        assert summary["comparisons_failed"] == 0, summary
        print(
            f"{n:>8}{made:>8}{summary['rounds']:>8}{summary['provider_calls']:>7}"
            f"{seconds:>8.1f}{made / seconds:>8.0f}{wall:>11.1f}{made / wall:>17.0f}"
        )


# --------------------------------------------------------------------------- serve

WORDS = (
    "school students sleep morning research teachers learning evidence argument health "
    "attention schedule early later start class grades because therefore however clearly"
).split()


def _request(i: int, topic: str, rng: random.Random) -> dict[str, Any]:
    """A CJ-style comparison request: shared prefix, two ~300-word essays, metadata spine."""

    def essay() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(300)).capitalize() + "."

    return {
        "prompt_blocks": [
            {"target": "system", "content": "You are an experienced examiner.", "cacheable": True},
            {"target": "user_content", "content": "Argue for a later school start.",
             "cacheable": True},
            {"target": "user_content", "content": essay()},
            {"target": "user_content", "content": essay()},
        ],
        "callback_topic": topic,
        "correlation_id": str(uuid.uuid4()),
        "llm_config_overrides": {"provider_override": "mock"},
        "metadata": {
            "essay_a_id": f"e{2 * i}", "essay_b_id": f"e{2 * i + 1}", "cj_batch_id": "bench",
            "preferred_bundle_size": 25, "bundle_group": f"bench:{i // 500}",
            "batching_strategy": "serial_round",
        },
    }  # fmt: skip


async def _post_all(url: str, bodies: list[bytes], concurrency: int) -> float:
    """Post every body, ``concurrency`` in flight; every one must be accepted. Seconds taken."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        pending = iter(bodies)

        async def lane() -> None:
            for raw in pending:
                response = await client.post("/api/v1/comparison", content=raw, headers=headers)
                if response.status_code != 202:
                    raise RuntimeError(f"{response.status_code}: {response.text[:300]}")

        start = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        return time.perf_counter() - start


async def _serve_run(url: str, bootstrap: str, posts: int, concurrency: int) -> None:
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    rng = random.Random(0)
    bodies = [_request(i, topic, rng) for i in range(posts)]
    wanted = {b["correlation_id"] for b in bodies}
    done: set[str] = set()
    failed: list[str] = []
    finished = asyncio.Event()

    async def read(envelopes: Sequence[EventEnvelope]) -> None:
        for envelope in envelopes:
            result = envelope.result()
            done.add(str(result.correlation_id))
            if not result.is_success:
                failed.append(str(result.correlation_id))
        if wanted <= done:
            finished.set()

    consumer = KafkaBus(bootstrap)
    consumer.subscribe_many(topic, f"bench-{uuid.uuid4().hex[:8]}", read)
    await consumer.start()
    try:
        raws = [json.dumps(b).encode() for b in bodies]
        start = time.perf_counter()
        accepted = await _post_all(url, raws, concurrency)
        await asyncio.wait_for(finished.wait(), timeout=1800)
        completed = time.perf_counter() - start
    finally:
        await consumer.stop()
    size = sum(map(len, raws)) / len(raws)
    print(
        f"{posts} POSTs (~{size / 1024:.1f} KiB each), {concurrency} in flight: accepted in "
        f"{accepted:.1f} s = {posts / accepted:.0f} comparisons/s (target ≥ 1,000); every "
        f"callback read after {completed:.1f} s = {posts / completed:.0f} completed/s; "
        f"{len(done & wanted)} of {posts} completed, {len(failed)} with an error"
    )
    if len(done & wanted) != posts or failed:
        raise RuntimeError("not every item completed successfully")


def serve_section(posts: int, concurrency: int, work: Path) -> None:
    print("\n== cjllm serve provider: Redis queue, two worker processes, Kafka callbacks ==")
    with own_redis() as redis, own_kafka() as kafka:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "CJLLM_QUEUE_URL": redis.url,
            "CJLLM_BUS_URL": f"kafka://{kafka.bootstrap}",
            "CJLLM_QUEUE_MAX_ITEMS": str(max(50_000, 2 * posts)),
        }

        def start(*args: str, log: str) -> subprocess.Popen[bytes]:
            with (work / log).open("wb") as out:
                return subprocess.Popen(
                    [*CJLLM, "serve", "provider", *args],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )

        procs = [start("--api-only", "--port", str(port), log="api.log")]
        procs += [start("--worker-only", log=f"worker-{k}.log") for k in range(2)]
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(url + "/healthz", timeout=1).raise_for_status()
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline or procs[0].poll() is not None:
                        raise RuntimeError((work / "api.log").read_text()) from None
                    time.sleep(0.2)
            time.sleep(2.0)  # the workers' start-up, so they are claiming when the POSTs come
            asyncio.run(_serve_run(url, kafka.bootstrap, posts, concurrency))
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)


# --------------------------------------------------------------------------- tier 4


def tier4_section(essays: int, scale: float, work: Path) -> None:
    print(
        f"\n== tier 4 on cjllm sim: {essays} essays × {PER_ESSAY} comparisons, 0.5 s a call + "
        f"20 ms an output token, 4,000 RPM / 2,000,000 ITPM / 400,000 OTPM, scale {scale:g} =="
    )
    job = Job("tier4", essays, PER_ESSAY, "serial_round", TIER4, scale, 0.5, 0.02)
    result = run_job(job, work)
    out = work / "tier4-out"
    summary, _ = _job_seconds(out)
    budget = math.ceil(PER_ESSAY * essays / 2)
    design_rounds = math.ceil(budget / (essays // 2))
    calls = result.answered_calls
    per_call_output = result.output_tokens / calls
    bundle = (job.latency_call + job.latency_token * per_call_output) / scale
    latency_bound = summary["rounds"] * bundle
    bound = max(result.bound_seconds, latency_bound)
    print(
        f"made {result.made}, failed {result.failed}; {result.requests} requests, "
        f"{result.refused} answered 429"
    )
    print(
        f"tightest rate-limit bound ({result.budget}): {result.bound_seconds:.1f} s; "
        f"rounds × one bundle's latency: {summary['rounds']} × {bundle:.2f} s "
        f"({per_call_output:.0f} output tokens a call) = {latency_bound:.1f} s"
    )
    print(
        f"bound {bound:.1f} s, measured {result.seconds:.1f} s: ratio "
        f"{result.seconds / bound:.2f} (target ≤ 2); rounds {summary['rounds']}, "
        f"the design needs {design_rounds}"
    )
