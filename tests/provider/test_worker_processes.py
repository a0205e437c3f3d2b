"""Worker processes sharing one Redis queue, publishing to the real Kafka-protocol broker.

Workers run as ``cjllm serve provider --worker-only`` with the mock adapter slowed down
(``CJLLM_MOCK_LATENCY_SECONDS``): the worker that is killed takes far longer over a call
than the test lasts, so the ``kill -9`` lands while its bundles are in flight, and the
comparisons are queued only once the workers are up, so each takes part however slowly the
machine starts them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from cjllm.bus import KafkaBus
from cjllm.contracts import QueueItemState
from cjllm.provider.queue import QueuedItem
from cjllm.provider.service import ProviderService
from tests.provider.support import (
    Callbacks,
    body,
    eventually,
    fast_settings,
    post_all,
    provider,
    until_up,
)

REPO = Path(__file__).resolve().parents[2]
N_COMPARISONS = 40
BUNDLE = 5
LEASE_SECONDS = 3.0
CLI = "from cjllm.cli import app; app()"


def start_worker(
    queue_url: str, bus_url: str, log: Path, latency: float
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "CJLLM_QUEUE_URL": queue_url,
        "CJLLM_BUS_URL": bus_url,
        "CJLLM_MOCK_LATENCY_SECONDS": str(latency),
        "CJLLM_LEASE_SECONDS": str(LEASE_SECONDS),
        "CJLLM_LINGER_SECONDS": "0.1",
        "CJLLM_WORKER_CONCURRENCY": "2",
        "CJLLM_SWEEP_INTERVAL_SECONDS": "0.2",
        "CJLLM_POLL_INTERVAL_SECONDS": "0.02",
        "CJLLM_OUTBOX_LEASE_SECONDS": "2",
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", CLI, "serve", "provider", "--worker-only"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def owned_by(proc: subprocess.Popen[bytes]) -> Callable[[QueuedItem], bool]:
    return lambda item: item.lease_owner is not None and f":{proc.pid}:" in item.lease_owner


class Fleet:
    """The API (in the test process, no worker), the Kafka consumer, and worker processes."""

    def __init__(
        self,
        service: ProviderService,
        client: httpx.AsyncClient,
        callbacks: Callbacks,
        queue_url: str,
        bus_url: str,
        topic: str,
        log_dir: Path,
    ) -> None:
        self.service = service
        self.client = client
        self.callbacks = callbacks
        self.queue_url = queue_url
        self.bus_url = bus_url
        self.topic = topic
        self.log_dir = log_dir
        self.queue_ids: list[str] = []
        self.bodies: list[dict[str, Any]] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def log(self, proc: subprocess.Popen[bytes]) -> Path:
        return self.log_dir / f"worker-{self.procs.index(proc)}.log"

    async def spawn(self, latency: float = 1.0) -> subprocess.Popen[bytes]:
        """A worker process, once it is up (its log says so)."""
        log = self.log_dir / f"worker-{len(self.procs)}.log"
        proc = start_worker(self.queue_url, self.bus_url, log, latency)
        self.procs.append(proc)
        await until_up(proc, log)
        return proc

    async def queue_all(self) -> None:
        self.bodies = [body(i, topic=self.topic, size=BUNDLE) for i in range(N_COMPARISONS)]
        self.queue_ids = await post_all(self.client, self.bodies)

    async def items(self) -> list[QueuedItem]:
        found = [await self.service.queue.get(q) for q in self.queue_ids]
        return [item for item in found if item is not None]


@pytest.fixture
async def fleet(redis_queue_url: str, kafka_bootstrap: str, tmp_path: Path) -> AsyncIterator[Fleet]:
    topic = f"results-{uuid.uuid4().hex[:8]}"
    bus_url = f"kafka://{kafka_bootstrap}"
    callbacks = Callbacks()
    consumer = KafkaBus(kafka_bootstrap)
    consumer.subscribe(topic, f"cj-{uuid.uuid4().hex[:8]}", callbacks)
    await consumer.start()
    settings = fast_settings(redis_queue_url, bus_url=bus_url)
    try:
        async with provider(settings, work=False) as (service, client, _):
            fleet = Fleet(service, client, callbacks, redis_queue_url, bus_url, topic, tmp_path)
            try:
                yield fleet
            finally:
                for proc in fleet.procs:
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGTERM)
                for proc in fleet.procs:
                    await asyncio.to_thread(proc.wait, 30)
                    if proc.returncode not in (0, -signal.SIGKILL):
                        print(fleet.log(proc).read_text())
    finally:
        await consumer.stop()


async def test_two_worker_processes_process_every_item_once(fleet: Fleet) -> None:
    first, second = await fleet.spawn(), await fleet.spawn()
    await fleet.queue_all()  # both up and polling: eight bundles of a second each to share
    await eventually(lambda: len(fleet.callbacks.by_id) == N_COMPARISONS, timeout=120)
    await asyncio.sleep(1.0)  # room for a stray duplicate to show up (there must be none)
    assert fleet.callbacks.count == N_COMPARISONS
    assert all(r.is_success for rs in fleet.callbacks.by_id.values() for r in rs)
    items = await fleet.items()
    assert all(item.state is QueueItemState.COMPLETED and item.attempts == 0 for item in items)
    assert any(map(owned_by(first), items)) and any(map(owned_by(second), items))


async def test_a_killed_worker_bundle_is_reclaimed_after_its_lease(fleet: Fleet) -> None:
    # the victim's calls outlast the test: it holds its bundles (renewing their leases)
    # until it is killed, whenever that is
    victim = await fleet.spawn(latency=3600.0)
    await fleet.queue_all()
    holding: list[QueuedItem] = []

    async def victim_holds_a_bundle() -> bool:
        nonlocal holding
        holding = [
            it
            for it in await fleet.items()
            if it.state is QueueItemState.PROCESSING and owned_by(victim)(it)
        ]
        return bool(holding)

    for _ in range(3000):
        if await victim_holds_a_bundle():
            break
        await asyncio.sleep(0.01)
    survivor = await fleet.spawn()
    victim.send_signal(signal.SIGKILL)
    await asyncio.to_thread(victim.wait, 10)
    assert await victim_holds_a_bundle()  # dead mid-bundle: its leases are still out there
    held = {it.queue_id for it in holding}

    await eventually(lambda: len(fleet.callbacks.by_id) == N_COMPARISONS, timeout=120)
    # exactly one callback acted on per comparison; a duplicate (at-least-once) would carry
    # the same correlation_id and the same answer
    for request_body in fleet.bodies:
        results = fleet.callbacks.by_id[request_body["correlation_id"]]
        assert results and all(r.is_success for r in results)
        assert len({(r.winner, r.request_id) for r in results}) == 1
    for item in await fleet.items():
        assert item.state is QueueItemState.COMPLETED
        if item.queue_id in held:
            assert item.attempts == 1  # the lost lease counted as a try
            assert owned_by(survivor)(item)
            assert item.last_error == "lease expired (worker lost)"
