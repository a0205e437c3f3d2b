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
import contextlib
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
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


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of a running process and of all its descendants, running
    (the embedded worker process, the chain helper) or reaped (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    seconds = ticks / os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                with contextlib.suppress(OSError, ValueError):
                    seconds += _cpu_of(int(child))
    return seconds


def _job_seconds(out: Path) -> tuple[dict[str, Any], float]:
    summary = json.loads((out / "ranking.json").read_text(encoding="utf-8"))["summary"]
    started = json.loads((out / "run.json").read_text(encoding="utf-8"))["started_at"]
    seconds = (
        datetime.fromisoformat(summary["finished_at"]) - datetime.fromisoformat(started)
    ).total_seconds()
    return summary, seconds


# --------------------------------------------------------------------------- rank


def rank_section(
    sizes: Sequence[int],
    work: Path,
    baseline: Path | None = None,
    workers: Sequence[str] = ("in_process", "child_process"),
) -> None:
    """``baseline``: another checkout's ``src`` folder; each size then runs with it first
    and with this checkout right after (the ``code`` column), so their ratio is fair.
    ``workers``: the ``CJLLM_EMBEDDED_WORKER`` modes this checkout runs in, one after the
    other (the baseline runs with its default)."""
    print(f"\n== cjllm rank, embedded, zero-latency mock, {PER_ESSAY} comparisons per essay ==")
    print(
        f"{'code':>15}{'essays':>8}{'made':>8}{'rounds':>8}{'calls':>7}{'job s':>8}{'cmp/s':>8}"
        f"{'process s':>11}{'cmp/s (process)':>17}{'CPU s':>8}{'CPU ms/cmp':>12}"
        f"{'job CPU s':>11}{'job CPU ms/cmp':>16}"
    )
    codes: list[tuple[str, Path | None, dict[str, str]]] = [
        (f"this/{mode.split('_')[0]}", None, {"CJLLM_EMBEDDED_WORKER": mode}) for mode in workers
    ]
    if baseline is not None:
        codes.insert(0, ("baseline", baseline.resolve(), {}))
    for n in sizes:
        essays = work / f"rank-{n}"
        write_essays(essays, n, seed=n)
        for code, src, extra in codes:
            _rank_once(essays, n, work / f"rank-{n}-{code.replace('/', '-')}", code, src, extra)
    print(
        "CPU s: user + system time of the rank process and its children (start-up and report "
        "included); job CPU s: the same from run.json's appearance to ranking.json's (the "
        "job's span, read from /proc every 20 ms); this/in: the provider's worker in the rank "
        "process, this/child: in a child process (CJLLM_EMBEDDED_WORKER)"
    )


def _rank_once(
    essays: Path, n: int, out: Path, code: str, src: Path | None, extra: dict[str, str]
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")},
        "CJLLM_TARGET_RELIABILITY": "0.9999",  # spend the whole budget
        "COLUMNS": "120",
        **extra,
    }
    if src is not None:  # ahead of the installed (editable) package
        env["PYTHONPATH"] = str(src)
    cpu_before = _children_cpu()
    start = time.perf_counter()
    proc, job_cpu = _run_watching_job(
        [*CJLLM, "rank", str(essays), "--out", str(out), "--provider", "mock",
         "--comparisons-per-essay", str(PER_ESSAY)],
        env, out,
    )  # fmt: skip
    wall = time.perf_counter() - start
    cpu = _children_cpu() - cpu_before
    if proc.returncode != 0:
        raise RuntimeError(f"cjllm rank failed:\n{proc.stdout[-3000:]}\n{proc.stderr}")
    summary, seconds = _job_seconds(out)
    made = summary["comparisons_made"]
    assert summary["comparisons_failed"] == 0, summary
    print(
        f"{code:>15}{n:>8}{made:>8}{summary['rounds']:>8}{summary['provider_calls']:>7}"
        f"{seconds:>8.1f}{made / seconds:>8.0f}{wall:>11.1f}{made / wall:>17.0f}"
        f"{cpu:>8.1f}{1000 * cpu / made:>12.2f}{job_cpu:>11.1f}{1000 * job_cpu / made:>16.2f}",
        flush=True,
    )


def _run_watching_job(
    args: list[str], env: dict[str, str], out: Path
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``cjllm rank`` and read its CPU seconds when ``run.json`` appears (the job
    starts) and when ``ranking.json`` does (the job has finished)."""
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        with subprocess.Popen(args, env=env, stdout=stdout, stderr=stderr, text=True) as child:
            marks: dict[str, float] = {}
            deadline = time.monotonic() + 7200
            while child.poll() is None and time.monotonic() < deadline:
                for name in ("run.json", "ranking.json"):
                    if name not in marks and (out / name).exists():
                        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                            marks[name] = _cpu_of(child.pid)
                if len(marks) == 2:
                    break
                time.sleep(0.02)
            child.wait(timeout=max(1.0, deadline - time.monotonic()))
        stdout.seek(0)
        stderr.seek(0)
        done = subprocess.CompletedProcess(args, child.returncode, stdout.read(), stderr.read())
    job_cpu = marks.get("ranking.json", math.nan) - marks.get("run.json", math.nan)
    return done, job_cpu


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
    """Post every body over ``concurrency`` keep-alive HTTP/1.1 connections; every one must be
    accepted (202). Seconds taken.

    A minimal client on asyncio streams (request line, three headers, body; status line,
    headers, ``Content-Length`` body), as load generators like ``wrk`` do: httpx spends
    several times the server's CPU on each request, and on a shared 2-core machine the
    client's CPU is taken from the server under test."""
    host, port = url.removeprefix("http://").split(":")
    pending = iter(bodies)

    async def lane() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for raw in pending:
                writer.write(
                    b"POST /api/v1/comparison HTTP/1.1\r\nHost: bench\r\n"
                    b"Content-Type: application/json\r\nContent-Length: "
                    + str(len(raw)).encode()
                    + b"\r\n\r\n"
                    + raw
                )
                head = await reader.readuntil(b"\r\n\r\n")
                status = head[9:12]
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                answer = await reader.readexactly(length)
                if status != b"202":
                    raise RuntimeError(f"{status.decode()}: {answer[:300]!r}")
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return time.perf_counter() - start


async def _serve_run(
    url: str, bootstrap: str, posts: int, concurrency: int, pids: dict[str, int]
) -> None:
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
        cpu = {name: _cpu_of(pid) for name, pid in pids.items()}
        own = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        accepted = await _post_all(url, raws, concurrency)
        cpu_accepted = {name: _cpu_of(pid) - cpu[name] for name, pid in pids.items()}
        await asyncio.wait_for(finished.wait(), timeout=1800)
        completed = time.perf_counter() - start
        cpu_done = {name: _cpu_of(pid) - cpu[name] for name, pid in pids.items()}
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu_done["bench (HTTP client, Kafka consumer)"] = (
            after.ru_utime + after.ru_stime - own.ru_utime - own.ru_stime
        )
    finally:
        await consumer.stop()
    size = sum(map(len, raws)) / len(raws)
    print(
        f"{posts} POSTs (~{size / 1024:.1f} KiB each), {concurrency} in flight: accepted in "
        f"{accepted:.1f} s = {posts / accepted:.0f} comparisons/s (target ≥ 1,000); every "
        f"callback read after {completed:.1f} s = {posts / completed:.0f} completed/s; "
        f"{len(done & wanted)} of {posts} completed, {len(failed)} with an error"
    )
    print(
        f"API process CPU while accepting: {cpu_accepted['api']:.1f} s = "
        f"{1000 * cpu_accepted['api'] / posts:.2f} ms a comparison (on an idle core: at most "
        f"{posts / max(cpu_accepted['api'], 1e-9):.0f} accepted/s)"
    )
    total = sum(cpu_done.values())
    shares = ", ".join(f"{name} {seconds:.1f}" for name, seconds in cpu_done.items())
    print(
        f"CPU seconds until every callback was read: {shares}; in all {total:.1f} s = "
        f"{1000 * total / posts:.2f} ms a comparison (2 idle cores: at most "
        f"{2 * posts / max(total, 1e-9):.0f} comparisons/s end to end)"
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
            pids = {"api": procs[0].pid, "worker 1": procs[1].pid, "worker 2": procs[2].pid}
            for name, server in (("redis", redis), ("tansu", kafka)):
                if server.proc is not None:
                    pids[name] = server.proc.pid
            asyncio.run(_serve_run(url, kafka.bootstrap, posts, concurrency, pids))
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
