"""The provider service assembled from :class:`ProviderSettings`: API, queue, worker, publisher.

Three ways to run it:

- **embedded** (``cjllm rank``, tests): ``async with embedded_provider(settings, bus=bus) as
  service:`` starts the worker, sweeper and publisher in the current event loop and gives
  ``service.app``, the FastAPI app, for an ``httpx.ASGITransport`` client;
- **server**: ``cjllm serve provider --host H --port P`` (API and workers in one process);
- **scaled out**: one or more ``--api-only`` processes behind a load balancer and any number
  of ``--worker-only`` processes on the same Redis queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Mapping
from urllib.parse import urlparse

import prometheus_client
from fastapi import FastAPI

from cjllm import collector
from cjllm.api_guard import serve
from cjllm.bus import EventBus, bus_from_url
from cjllm.provider.api import create_app
from cjllm.provider.batch_jobs import BatchJobs
from cjllm.provider.bundling import PlannedComparison
from cjllm.provider.calls import LLMAdapter
from cjllm.provider.jobs import job_table_for
from cjllm.provider.limiter import Limiter
from cjllm.provider.loops import supervise
from cjllm.provider.metrics import ProviderMetrics
from cjllm.provider.pricing import load_price_table
from cjllm.provider.providers import Providers
from cjllm.provider.publisher import Publisher
from cjllm.provider.queue import Queue, queue_from_url
from cjllm.provider.rate_limits import model_class
from cjllm.provider.redis_limits import buckets_for
from cjllm.provider.sweeper import Sweeper
from cjllm.provider.worker import Worker
from cjllm.provider.worker_process import WorkerProcess
from cjllm.settings import ProviderSettings

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 10.0


def known_models(settings: ProviderSettings) -> set[str]:
    """Models (and their rate-limit classes) the service may name in metric labels: its
    defaults and the price table's."""
    models = {settings.anthropic_model, settings.openai_model, settings.mock_model}
    models |= set(load_price_table(settings.price_table_path).models)
    return models | {model_class(m) for m in models}


class ProviderService:
    """One provider service instance: its queue, adapters, metrics, worker, batch jobs and
    API app."""

    def __init__(
        self,
        settings: ProviderSettings,
        *,
        queue: Queue,
        bus: EventBus,
        providers: Providers,
        metrics: ProviderMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.bus = bus
        self.providers = providers
        self.metrics = metrics or ProviderMetrics(known_models=known_models(settings))
        self.publisher = Publisher(queue, bus, settings, self.metrics)
        buckets = buckets_for(queue, settings.rate_limit_period_seconds)
        self.limiter = Limiter(settings, self.metrics, buckets)
        self.worker = Worker(
            queue,
            providers,
            settings,
            self.metrics,
            limiter=self.limiter,
            on_recorded=self.publisher.notify,
        )
        self.sweeper = Sweeper(queue, self.worker.settler, settings)
        self.jobs = BatchJobs(
            queue,
            job_table_for(queue),
            providers,
            settings,
            self.metrics,
            owner=self.worker.owner,
            on_recorded=self.publisher.notify,
        )
        self.app: FastAPI = create_app(
            queue,
            providers,
            settings,
            self.metrics,
            jobs=self.jobs,
            on_enqueue=self._queued,
            limiter=self.limiter,
        )
        self.worker_process: WorkerProcess | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()

    def _queued(self, queue_id: str, plan: PlannedComparison) -> None:
        if self.worker_process is not None:
            self.worker_process.notify()
        else:
            self.worker.queued(queue_id, plan)

    def start_work(self, worker_process: WorkerProcess | None = None) -> None:
        """Start the worker, the sweeper, the batch jobs and the outbox publisher in this
        event loop; with ``worker_process``, the worker runs in that child process instead
        (:mod:`cjllm.provider.worker_process`)."""
        if self._tasks:
            return
        self._stop = asyncio.Event()
        self.worker_process = worker_process
        working = self.worker.run
        if worker_process is not None:
            worker_process.on_recorded = self.publisher.notify
            working = worker_process.run
        self._tasks = [
            asyncio.create_task(supervise(name, loop, self._stop))
            for name, loop in (
                ("worker", working),
                ("sweeper", self.sweeper.run),
                ("batch jobs", self.jobs.run),
                ("publisher", self.publisher.run),  # last: stop_work lets it finish
            )
        ]

    async def stop_work(self) -> None:
        """Stop them. Bundles in flight hand their items back to the queue untouched; the
        publisher first sends the callbacks already recorded (for at most
        ``SHUTDOWN_GRACE_SECONDS``), so a clean stop leaves none behind in the outbox."""
        self._stop.set()
        if not self._tasks:
            return
        *loops, publishing = self._tasks
        self._tasks = []
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        try:
            async with asyncio.timeout(SHUTDOWN_GRACE_SECONDS):
                await publishing  # it finishes the batch it is sending, then sees the stop
                while await self.publisher.drain_once():
                    pass
        except TimeoutError:
            log.warning("stopped with callbacks still in the outbox; they go out on restart")
        finally:
            publishing.cancel()
            await asyncio.gather(publishing, return_exceptions=True)


@contextlib.asynccontextmanager
async def embedded_provider(
    settings: ProviderSettings | None = None,
    *,
    bus: EventBus | None = None,
    adapters: Mapping[str, LLMAdapter] | None = None,
    queue: Queue | None = None,
    work: bool = True,
) -> AsyncIterator[ProviderService]:
    """A running provider service in this event loop.

    ``bus``: share the caller's bus (e.g. the CJ service's in-process bus; the caller starts
    and stops it); otherwise one is made from ``CJLLM_BUS_URL`` and owned here.
    ``adapters``: pre-built adapters by provider name (e.g. a mock with a manifest).
    ``queue``: a queue object instead of ``CJLLM_QUEUE_URL``. ``work=False`` runs no worker
    (the API only queues).
    """
    settings = settings or ProviderSettings()
    own_queue = queue is None
    if queue is None:
        queue = queue_from_url(
            settings.queue_url,
            max_items=settings.queue_max_items,
            max_bytes=settings.queue_max_bytes,
            retention_seconds=settings.record_retention_seconds,
        )
    own_bus = bus is None
    if bus is None:
        bus = bus_from_url(settings.bus_url, idempotent_producer=settings.kafka_idempotent_producer)
    providers = Providers(settings, adapters, store=queue)
    service = ProviderService(settings, queue=queue, bus=bus, providers=providers)
    try:
        if own_bus and work:  # only the publisher uses the bus
            await bus.start()
        if work:
            service.start_work()
        yield service
    finally:
        await service.stop_work()
        if own_bus and work:
            await bus.stop()
        await providers.aclose()
        if own_queue:
            await queue.close()


def run_provider(
    settings: ProviderSettings,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    api: bool = True,
    work: bool = True,
) -> None:
    """Run the service until SIGINT/SIGTERM (``cjllm serve provider``)."""
    if not (api or work):
        raise ValueError("nothing to run: enable the API, the workers, or both")
    collector.relax()
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(_serve(settings, host, port, api=api, work=work))


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (a dependency on Linux and macOS: it does a
    server's socket and scheduling work in C, about a third of the API's CPU per request),
    else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _serve(
    settings: ProviderSettings, host: str, port: int, *, api: bool, work: bool
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # our handlers stay installed underneath uvicorn's, so a signal it re-raises on its way
    # out lands here (and the clean shutdown below still runs)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
    async with embedded_provider(settings, work=work) as service:
        if settings.metrics_port is not None:
            prometheus_client.start_http_server(
                settings.metrics_port, registry=service.metrics.registry
            )
        log.info(
            "provider service up: api=%s workers=%s queue=%s bus=%s",
            f"http://{host}:{port}" if api else "off",
            f"{settings.worker_concurrency or 'as many as the rate limits admit'} bundles in flight"
            if work
            else "off",
            urlparse(settings.queue_url).scheme,
            urlparse(settings.bus_url).scheme,
        )
        if api:
            await serve(service.app, host, port).serve()
        else:
            await stop.wait()
    log.info("provider service stopped")
