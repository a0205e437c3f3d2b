"""The distributed shape end to end, every service its own process, on real servers.

`cjllm sim` plays Anthropic; the provider runs as one API process and two worker processes
on a Redis queue, calling the sim through the official ``anthropic`` SDK adapter; the CJ
service keeps its state in PostgreSQL; callbacks and the completion event travel on the
Kafka-protocol broker. `cjllm submit` starts the assessment. One worker is killed with
SIGKILL while it holds a bundle: the assessment still completes, every comparison accounted
for.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from scipy.stats import spearmanr

from cjllm.bus import KafkaBus
from cjllm.cj.store import Store
from cjllm.contracts import (
    COMPLETION_EVENT_TYPE,
    CJAssessmentCompletedV1,
    EventEnvelope,
    QueueItemState,
)
from cjllm.provider.queue import Queue, queue_from_url
from tests.e2e.cli import CJLLM, EXAMPLES, REPO, env
from tests.services import free_port, wait_for_port

pytestmark = pytest.mark.slow

SIM_KEY = "sim-test-key"
N_ESSAYS = 18
BUDGET = 90  # ⌈10·18/2⌉


@dataclass
class Fleet:
    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, args: list[str], extra_env: Mapping[str, str]) -> None:
        with (self.log_dir / f"{name}.log").open("wb") as log:
            self.procs[name] = subprocess.Popen(
                [*CJLLM, *args], cwd=REPO, env=env(extra_env), stdout=log, stderr=subprocess.STDOUT
            )

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(encoding="utf-8", errors="replace")

    def logs(self) -> str:
        return "\n".join(f"===== {n}\n{self.log(n)[-6000:]}" for n in self.procs)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    running = Fleet(tmp_path)
    try:
        yield running
    finally:
        running.stop()


async def _wait_http(
    url: str, proc: subprocess.Popen[bytes], name: str, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"{name} exited with {proc.returncode}"
            with suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise AssertionError(f"{name} not healthy at {url} within {timeout}s")


async def test_assessment_completes_across_processes_when_a_worker_is_killed(
    fleet: Fleet, redis_url: str, postgres_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    queue_url = f"{redis_url}?prefix=e2e-{run}"
    bus_url = f"kafka://{kafka_bootstrap}"
    sim_port, provider_port, cj_port = free_port(), free_port(), free_port()
    completion_topic = f"e2e-{run}.completed"

    fleet.start(
        "sim",
        [
            "sim",
            "--port",
            str(sim_port),
            "--manifest",
            str(EXAMPLES / "manifest.json"),
            "--api-key",
            SIM_KEY,
            "--latency-call",
            "0.8",
        ],
        {},
    )
    provider_env = {
        "CJLLM_QUEUE_URL": queue_url,
        "CJLLM_BUS_URL": bus_url,
        "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{sim_port}",
        "ANTHROPIC_API_KEY": SIM_KEY,
        "CJLLM_MAX_ITEMS_PER_CALL": "10",
        "CJLLM_WORKER_CONCURRENCY": "2",
        "CJLLM_LINGER_SECONDS": "0.1",
        "CJLLM_LEASE_SECONDS": "3",
        "CJLLM_SWEEP_INTERVAL_SECONDS": "0.2",
        "CJLLM_OUTBOX_LEASE_SECONDS": "2",
    }
    fleet.start(
        "provider-api",
        ["serve", "provider", "--api-only", "--port", str(provider_port)],
        provider_env,
    )
    fleet.start("worker-1", ["serve", "provider", "--worker-only"], provider_env)
    fleet.start("worker-2", ["serve", "provider", "--worker-only"], provider_env)
    fleet.start(
        "cj",
        ["serve", "cj", "--port", str(cj_port)],
        {
            "CJLLM_DATABASE_URL": postgres_url,
            "CJLLM_BUS_URL": bus_url,
            "CJLLM_PROVIDER_URL": f"http://127.0.0.1:{provider_port}",
            "CJLLM_LLM_PROVIDER": "anthropic",
            "CJLLM_CALLBACK_TOPIC": f"e2e-{run}.results",
            "CJLLM_COMPLETION_TOPIC": completion_topic,
            "CJLLM_CONSUMER_GROUP": f"e2e-cj-{run}",
            "MAX_CONCURRENT_COMPARISONS": "30",
            "CJLLM_COMPARISONS_PER_ESSAY": "10",
            "CJLLM_TARGET_RELIABILITY": "0.999",
        },
    )
    try:
        wait_for_port(sim_port, fleet.procs["sim"], "cjllm sim")
        await _wait_http(
            f"http://127.0.0.1:{provider_port}/healthz", fleet.procs["provider-api"], "provider API"
        )
        await _wait_http(f"http://127.0.0.1:{cj_port}/healthz", fleet.procs["cj"], "CJ service")
        await _run_and_check(
            fleet,
            queue_url,
            postgres_url,
            kafka_bootstrap,
            cj_port,
            sim_port,
            completion_topic,
            tmp_path,
        )
    except BaseException:
        print(fleet.logs())
        raise


async def _run_and_check(
    fleet: Fleet,
    queue_url: str,
    postgres_url: str,
    kafka_bootstrap: str,
    cj_port: int,
    sim_port: int,
    completion_topic: str,
    tmp_path: Path,
) -> None:
    cj_url = f"http://127.0.0.1:{cj_port}"
    submitted = await asyncio.to_thread(
        subprocess.run,
        [*CJLLM, "submit", str(EXAMPLES), "--cj-url", cj_url],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    batch_id = submitted.stdout.strip().splitlines()[-1]
    uuid.UUID(batch_id)

    # kill -9 whichever worker holds a bundle first, while it holds it
    queue = queue_from_url(queue_url, max_items=10**6, max_bytes=10**10)
    store = await Store.open(postgres_url)
    try:
        victim = await _kill_a_worker_holding_a_bundle(fleet, store, queue, batch_id)
        survivor = "worker-2" if victim == "worker-1" else "worker-1"

        result = await _wait_for_result(cj_url, batch_id, timeout=300)
        assert result.status == "completed", result
        assert fleet.procs[survivor].poll() is None

        # every comparison accounted for: the budget, each row settled, none pending
        rows = await store.comparisons(batch_id)
        assert len(rows) == BUDGET == result.comparisons_requested
        assert {r.status for r in rows} <= {"succeeded", "failed"}
        assert result.comparisons_succeeded + result.comparisons_failed == BUDGET
        # nothing failed: the dead worker's comparisons were retried, not given up
        assert all(r.status == "succeeded" for r in rows), [r.error_code for r in rows]
        assert result.comparisons_failed == 0
        # the queue holds nothing unfinished (no item stuck with the dead worker), and the
        # bundle the dead worker held went back to the queue when its lease ran out
        items = [await queue.get(str(r.queue_id)) for r in rows]
        assert all(i is not None and i.state is QueueItemState.COMPLETED for i in items), items
        assert any(i is not None and i.attempts > 0 for i in items)
    finally:
        await store.close()
        await queue.close()

    # few calls through the official SDK adapter, and the simulated judge's order recovered
    assert result.provider == "anthropic"
    assert 0 < result.provider_calls < BUDGET / 3
    manifest = json.loads((EXAMPLES / "manifest.json").read_text(encoding="utf-8"))
    quality = {e["essay_id"]: e["quality"] for e in manifest["essays"]}
    rho = spearmanr(
        [quality[e.essay_id] for e in result.ranking], [e.score for e in result.ranking]
    ).statistic
    assert rho > 0.7  # a sanity check; the ranking quality test is the embedded one
    async with httpx.AsyncClient() as client:
        counters = (await client.get(f"http://127.0.0.1:{sim_port}/sim/counters")).json()
    assert counters["items"] >= BUDGET

    # the result also went out as an event on the completion topic
    event = await _completion_event(kafka_bootstrap, completion_topic, batch_id)
    assert event.cj_batch_id == batch_id
    assert [e.essay_id for e in event.ranking] == [e.essay_id for e in result.ranking]

    # `cjllm submit --wait --out` on another batch would print the same table; here we check
    # the status endpoint renders into report files through the same code path
    out = tmp_path / "report"
    waited = await asyncio.to_thread(
        subprocess.run,
        [
            *CJLLM,
            "submit",
            str(EXAMPLES),
            "--cj-url",
            cj_url,
            "--wait",
            "--out",
            str(out),
            "--timeout",
            "300",
        ],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=360,
        check=False,
    )
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert "anthropic" in waited.stdout and (out / "report.html").exists()
    data = json.loads((out / "ranking.json").read_text(encoding="utf-8"))
    assert data["summary"]["comparisons_made"] == BUDGET
    assert len(data["ranking"]) == N_ESSAYS
    # the evidence came from the CJ service's comparisons endpoint
    judged = (out / "comparisons.csv").read_text(encoding="utf-8").splitlines()
    assert len(judged) == 1 + BUDGET
    assert (out / "report.html").read_text(encoding="utf-8").count('<article class="essay"') == (
        N_ESSAYS
    )


async def _kill_a_worker_holding_a_bundle(
    fleet: Fleet, store: Store, queue: Queue, batch_id: str
) -> str:
    pids = {name: fleet.procs[name].pid for name in ("worker-1", "worker-2")}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for row in await store.comparisons(batch_id):
            if row.queue_id is None:
                continue
            item = await queue.get(str(row.queue_id))
            if item is None or item.state is not QueueItemState.PROCESSING or not item.lease_owner:
                continue
            for name, pid in pids.items():
                if f":{pid}:" in item.lease_owner:
                    os.kill(pid, signal.SIGKILL)
                    fleet.procs[name].wait(10)
                    return name
        await asyncio.sleep(0.05)
    raise AssertionError("no worker took a bundle within 120 s")


async def _wait_for_result(cj_url: str, batch_id: str, timeout: float) -> CJAssessmentCompletedV1:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=10.0) as client:
        while time.monotonic() < deadline:
            data = (await client.get(f"{cj_url}/api/v1/assessments/{batch_id}")).json()
            if data.get("result"):
                return CJAssessmentCompletedV1.model_validate(data["result"])
            await asyncio.sleep(0.5)
    raise AssertionError(f"batch {batch_id} did not finish within {timeout}s: {data}")


async def _completion_event(bootstrap: str, topic: str, batch_id: str) -> CJAssessmentCompletedV1:
    seen: list[EventEnvelope] = []
    found = asyncio.Event()

    async def handle(envelope: EventEnvelope) -> None:
        seen.append(envelope)
        if (
            envelope.event_type == COMPLETION_EVENT_TYPE
            and str(envelope.correlation_id) == batch_id
        ):
            found.set()

    bus = KafkaBus(bootstrap)
    bus.subscribe(topic, f"e2e-reader-{uuid.uuid4().hex[:8]}", handle)
    await bus.start()
    try:
        await asyncio.wait_for(found.wait(), 60)
    finally:
        await bus.stop()
    envelope = next(e for e in seen if str(e.correlation_id) == batch_id)
    return CJAssessmentCompletedV1.model_validate(envelope.data)
