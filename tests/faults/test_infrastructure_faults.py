"""Crashes and restarts of the services and the infrastructure under a running assessment.

The tests share one fleet — the distributed shape as separate processes on servers of
their own (so they may crash and restart them): ``cjllm serve provider`` (API and worker)
on a durable Redis, ``cjllm serve cj`` on PostgreSQL, callbacks on a Kafka-protocol broker,
``cjllm sim`` playing Anthropic with a second of latency per call so rounds are in flight
long enough to be hit. Each test starts an assessment and hits it with one fault mid-round; then the
assessment must complete with every comparison accounted for: every CJ row final, and
requests queued = callbacks recorded = callbacks the bus took = CJ rows (read from the
provider's own counters, as a difference over the test), with nothing left in the outbox.

A provider worker killed mid-bundle is proven by ``tests/e2e/test_distributed.py`` and
``tests/provider/test_worker_processes.py``. The broker outage is a frozen broker (SIGSTOP,
then SIGCONT) for longer than a round: publishes, reads and commits hang until it answers
again, as with a broker cut off by the network. A stop and a fresh start is not here: the
test broker (tansu, memory storage) forgets every topic, message and offset when stopped,
which a real broker does not; the publisher's side of that (callbacks kept and retried)
is also proven in-process by
``tests/provider/test_worker.py::test_a_bus_outage_delays_callbacks_but_loses_none``.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cjllm.cj.store import Store
from cjllm.cj.tables import ComparisonStatus
from cjllm.contracts import CJAssessmentCompletedV1, QueueItemState
from cjllm.provider.queue import queue_from_url
from tests import services
from tests.e2e.cli import CJLLM, REPO, env
from tests.services import free_port

pytestmark = pytest.mark.slow

SIM_KEY = "sim-faults-key"
N_ESSAYS = 10
BROKER_OUTAGE_SECONDS = 15.0  # longer than a round (calls take a second each)


@dataclass
class Fleet:
    """The processes and servers of one test; each may be stopped and started again."""

    log_dir: Path
    redis: services.RedisServer
    postgres: services.PostgresServer
    kafka: services.KafkaBroker
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ports = {"sim": free_port(), "provider": free_port(), "cj": free_port()}

    @property
    def provider_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['provider']}"

    @property
    def cj_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['cj']}"

    def commands(self) -> dict[str, tuple[list[str], dict[str, str]]]:
        bus = f"kafka://{self.kafka.bootstrap}"
        sim = ["sim", "--port", str(self.ports["sim"]), "--api-key", SIM_KEY]
        provider_env = {
            "CJLLM_QUEUE_URL": self.redis.url,
            "CJLLM_BUS_URL": bus,
            "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{self.ports['sim']}",
            "ANTHROPIC_API_KEY": SIM_KEY,
            "CJLLM_LINGER_SECONDS": "0.1",
            "CJLLM_LEASE_SECONDS": "4",
            "CJLLM_SWEEP_INTERVAL_SECONDS": "0.2",
            "CJLLM_OUTBOX_LEASE_SECONDS": "2",
            "CJLLM_RETRY_BASE_SECONDS": "0.2",
            "CJLLM_RETRY_MAX_SECONDS": "1",
        }
        cj_env = {
            "CJLLM_DATABASE_URL": self.postgres.url,
            "CJLLM_BUS_URL": bus,
            "CJLLM_PROVIDER_URL": self.provider_url,
            "CJLLM_LLM_PROVIDER": "anthropic",
            "CJLLM_CALLBACK_TOPIC": f"faults-{self.run}.results",
            "CJLLM_COMPLETION_TOPIC": f"faults-{self.run}.completed",
            "CJLLM_CONSUMER_GROUP": f"cj-{self.run}",
            "MAX_CONCURRENT_COMPARISONS": "10",
            "CJLLM_COMPARISONS_PER_ESSAY": "6",
            "CJLLM_TARGET_RELIABILITY": "0.999",
            "CJLLM_SPLIT_HALF_SPLITS": "2",
            "CJLLM_SUBMIT_RETRIES": "8",
            "CJLLM_SUBMIT_BACKOFF_SECONDS": "0.2",
            "CJLLM_SUBMIT_MAX_BACKOFF_SECONDS": "2",
        }
        return {
            "sim": ([*sim, "--latency-call", "1.0"], {}),
            "provider": (
                ["serve", "provider", "--port", str(self.ports["provider"])],
                provider_env,
            ),
            "cj": (["serve", "cj", "--port", str(self.ports["cj"])], cj_env),
        }

    def start(self, name: str) -> None:
        args, extra = self.commands()[name]
        with (self.log_dir / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                [*CJLLM, *args], cwd=REPO, env=env(extra), stdout=log, stderr=subprocess.STDOUT
            )

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait(10)

    def logs(self) -> str:
        return "\n".join(
            f"===== {n}\n{(self.log_dir / f'{n}.log').read_text(errors='replace')[-5000:]}"
            for n in self.procs
        )

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


@pytest.fixture(scope="module")
def servers() -> Iterator[
    tuple[services.RedisServer, services.PostgresServer, services.KafkaBroker]
]:
    with ExitStack() as stack:
        redis = stack.enter_context(services.own_redis(durable=True))
        postgres = stack.enter_context(services.own_postgres())
        kafka = stack.enter_context(services.own_kafka())
        yield redis, postgres, kafka


@pytest.fixture(scope="module")
async def fleet(
    tmp_path_factory: pytest.TempPathFactory,
    servers: tuple[services.RedisServer, services.PostgresServer, services.KafkaBroker],
) -> AsyncIterator[Fleet]:
    running = Fleet(tmp_path_factory.mktemp("fleet"), *servers)
    try:
        for name in ("sim", "provider", "cj"):
            running.start(name)
        await healthy(running, "provider", running.provider_url)
        await healthy(running, "cj", running.cj_url)
        yield running
    except BaseException:
        print(running.logs())
        raise
    finally:
        running.stop()


async def healthy(fleet: Fleet, name: str, url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline:
            assert fleet.procs[name].poll() is None, f"{name} exited"
            with suppress(httpx.HTTPError):
                if (await client.get(f"{url}/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise AssertionError(f"{name} not healthy within {timeout}s")


async def submit(fleet: Fleet) -> str:
    essays = [
        {"essay_id": f"e{i:02d}", "text": f"Essay {i}. " + "An argument with evidence. " * (i + 1)}
        for i in range(N_ESSAYS)
    ]
    body = {"essays": essays, "instructions": "Which essay argues better?"}
    async with httpx.AsyncClient(timeout=30.0) as client:
        response = await client.post(f"{fleet.cj_url}/api/v1/assessments", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["cj_batch_id"])


async def until(cond: Callable[[], Awaitable[bool]], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(Exception):  # the servers being hit may refuse now and then
            if await cond():
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not reached within {timeout}s: {what}")


async def a_round_is_in_flight(fleet: Fleet, batch_id: str) -> bool:
    """The provider holds some of the batch's comparisons, and has answered none of a round
    it is working on (its callbacks so far all handled by the CJ service)."""
    store = await Store.open(fleet.postgres.url)
    queue = queue_from_url(fleet.redis.url, max_items=10**6, max_bytes=10**10)
    try:
        rows = await store.comparisons(batch_id)
        pending = [r for r in rows if r.status == ComparisonStatus.PENDING and r.queue_id]
        if not pending:
            return False
        items = [await queue.get(str(r.queue_id)) for r in pending]
        depth = await queue.depth(time.time())
        held = all(i is not None and i.state is QueueItemState.PROCESSING for i in items)
        return held and depth.outbox == 0
    finally:
        await store.close()
        await queue.close()


async def wait_for_result(
    fleet: Fleet, batch_id: str, timeout: float = 240
) -> CJAssessmentCompletedV1:
    deadline = time.monotonic() + timeout
    data: dict[str, object] = {}
    async with httpx.AsyncClient(timeout=10.0) as client:
        while time.monotonic() < deadline:
            with suppress(httpx.HTTPError, ValueError):
                response = await client.get(f"{fleet.cj_url}/api/v1/assessments/{batch_id}")
                data = response.json()
                if data.get("result"):
                    return CJAssessmentCompletedV1.model_validate(data["result"])
            await asyncio.sleep(0.5)
    raise AssertionError(f"batch {batch_id} did not finish within {timeout}s: {data}")


async def provider_counts(fleet: Fleet) -> Mapping[str, float]:
    async with httpx.AsyncClient(timeout=10.0) as client:
        text = (await client.get(f"{fleet.provider_url}/metrics")).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "cjllm_provider_requests_total":
                counts[f"requests_{sample.labels['outcome']}"] = sample.value
            elif sample.name == "cjllm_provider_callbacks_total":
                counts["callbacks"] = counts.get("callbacks", 0) + sample.value
            elif sample.name in (
                "cjllm_provider_callbacks_published_total",
                "cjllm_provider_outbox_depth",
                "cjllm_provider_outbox_dead_letters",
            ):
                counts[sample.name.removeprefix("cjllm_provider_")] = sample.value
    return counts


async def check_everything_accounted_for(
    fleet: Fleet, batch_id: str, before: Mapping[str, float]
) -> None:
    try:
        await _check_everything_accounted_for(fleet, batch_id, before)
    except BaseException:
        print(fleet.logs())
        raise


async def _check_everything_accounted_for(
    fleet: Fleet, batch_id: str, before: Mapping[str, float]
) -> None:
    result = await wait_for_result(fleet, batch_id)
    assert result.status == "completed", result.message
    store = await Store.open(fleet.postgres.url)
    try:
        rows = await store.comparisons(batch_id)
        progress = await store.progress(batch_id)
    finally:
        await store.close()
    assert {r.status for r in rows} <= {ComparisonStatus.SUCCEEDED, ComparisonStatus.FAILED}
    assert all(r.error_code for r in rows if r.status == ComparisonStatus.FAILED)
    assert progress.pending == 0 and progress.succeeded + progress.failed == len(rows)
    assert result.comparisons_requested == len(rows)

    async def drained() -> bool:
        counts = await provider_counts(fleet)
        return counts.get("outbox_depth", 1) == 0

    await until(drained, "the provider's outbox is empty", timeout=60)
    now = await provider_counts(fleet)
    counts = {k: v - before.get(k, 0.0) for k, v in now.items()}
    # one request queued per CJ row, one callback recorded per request, all of them sent
    assert counts["requests_queued"] == len(rows), (counts, len(rows))
    assert counts["callbacks"] == len(rows), counts
    assert counts["callbacks_published_total"] >= len(rows), counts
    assert now["outbox_dead_letters"] == 0, now


async def test_the_cj_service_killed_mid_round_resumes_and_finishes(fleet: Fleet) -> None:
    before = await provider_counts(fleet)
    batch_id = await submit(fleet)
    await until(lambda: a_round_is_in_flight(fleet, batch_id), "a round in flight")
    fleet.kill("cj")  # its round's callbacks wait on the bus meanwhile
    fleet.start("cj")
    await healthy(fleet, "cj", fleet.cj_url)
    await check_everything_accounted_for(fleet, batch_id, before)


async def test_a_redis_restart_mid_round_loses_nothing(fleet: Fleet) -> None:
    before = await provider_counts(fleet)
    batch_id = await submit(fleet)
    await until(lambda: a_round_is_in_flight(fleet, batch_id), "a round in flight")
    fleet.redis.kill()  # SIGKILL; the append-only file keeps every acknowledged write
    await asyncio.sleep(1.0)
    fleet.redis.start()
    await check_everything_accounted_for(fleet, batch_id, before)


async def test_a_postgresql_restart_mid_round_loses_nothing(fleet: Fleet) -> None:
    before = await provider_counts(fleet)
    batch_id = await submit(fleet)
    await until(lambda: a_round_is_in_flight(fleet, batch_id), "a round in flight")
    fleet.postgres.crash()  # callbacks that arrive now cannot be stored: the bus redelivers
    await asyncio.sleep(2.0)
    fleet.postgres.start()
    await check_everything_accounted_for(fleet, batch_id, before)


async def test_a_broker_outage_mid_round_loses_nothing(fleet: Fleet) -> None:
    before = await provider_counts(fleet)
    batch_id = await submit(fleet)
    await until(lambda: a_round_is_in_flight(fleet, batch_id), "a round in flight")
    fleet.kafka.freeze()  # publishes and the CJ service's reads and commits hang meanwhile
    try:
        await asyncio.sleep(BROKER_OUTAGE_SECONDS)
    finally:
        fleet.kafka.thaw()
    await check_everything_accounted_for(fleet, batch_id, before)
