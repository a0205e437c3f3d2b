"""Assemble the CJ Assessment Service from :class:`~cjllm.settings.CJSettings`.

Opens (and migrates) the database, builds the provider client and the bus, subscribes the
callback handler, resumes unfinished batches, and yields the :class:`CJWorkflow`::

    async with cj_service(CJSettings(), transport=provider_transport, bus=bus) as cj:
        batch_id = await cj.start_batch(essays, instructions=..., rubric=...)
        result = await cj.wait_for_completion(batch_id)

Pass ``direct`` (:class:`~cjllm.cj.llm_client.Direct`, the provider's acceptance step as a
function: :func:`cjllm.embedded.direct_to`) or ``transport`` (an ``httpx.ASGITransport`` over
the provider app) to reach the provider in-process, and ``bus`` to share one bus with an
in-process provider. A bus passed in is
subscribed to but not started or stopped: its owner does that (a Kafka bus must be started
after this subscribes). A bus built here from ``CJLLM_BUS_URL`` is started and stopped here.

While the service runs, BLAS (numpy's, scipy's) runs on one thread: the fits run beside the
event loop and each other, and a threaded BLAS on a busy machine spends most of a small
factorisation waiting for its own threads (measured: a 200 × 200 Cholesky took 41 ms with
threads on the shared 2-core machine, 0.5 ms without; docs/performance.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from threadpoolctl import threadpool_limits

from cjllm import collector
from cjllm.api_guard import serve
from cjllm.bus import EventBus, bus_from_url
from cjllm.cj.api import create_app
from cjllm.cj.llm_client import Direct, ProviderClient
from cjllm.cj.progress import ProgressHook
from cjllm.cj.store import Store
from cjllm.cj.workflow import CJWorkflow
from cjllm.settings import CJSettings


@asynccontextmanager
async def cj_service(
    settings: CJSettings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    direct: Direct | None = None,
    bus: EventBus | None = None,
    on_progress: ProgressHook | None = None,
    resume: bool = True,
) -> AsyncIterator[CJWorkflow]:
    """The running CJ service (see the module docstring). ``resume`` continues every batch
    left running by an earlier process before yielding."""
    store = await Store.open(settings.database_url)
    own_bus = bus is None
    the_bus = (
        bus_from_url(settings.bus_url, idempotent_producer=settings.kafka_idempotent_producer)
        if bus is None
        else bus
    )
    blas = threadpool_limits(limits=1, user_api="blas")
    client = ProviderClient.from_settings(settings, transport=transport, direct=direct)
    workflow = CJWorkflow(store, client, the_bus, settings, on_progress)
    the_bus.subscribe_many(
        settings.callback_topic, settings.consumer_group, workflow.handle_callbacks
    )
    try:
        if own_bus:
            await the_bus.start()
        try:
            if resume:
                await workflow.resume_all()
            yield workflow
        finally:
            if own_bus:
                await the_bus.stop()
    finally:
        await client.aclose()
        await store.close()
        blas.restore_original_limits()


def run_cj(settings: CJSettings, host: str = "127.0.0.1", port: int = 8081) -> None:
    """Run the CJ service with its HTTP API until interrupted (``cjllm serve cj``).

    The provider is reached at ``CJLLM_PROVIDER_URL``; the bus is ``CJLLM_BUS_URL``.
    """
    collector.relax()
    asyncio.run(_serve(settings, host, port))


async def _serve(settings: CJSettings, host: str, port: int) -> None:
    async with cj_service(settings) as workflow:
        await serve(create_app(workflow), host, port).serve()
