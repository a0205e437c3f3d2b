"""The embedded shape: the provider service and the CJ service in one process.

Everything lives in one folder (``cjllm rank --out DIR``): the provider's SQLite queue
(``queue.sqlite``) and the CJ SQLite database (``cj.sqlite``). The CJ service still sends
one request per comparison, the same :class:`~cjllm.contracts.ComparisonRequest` with its
metadata spine, but hands the model to the provider's acceptance step
(:class:`~cjllm.provider.intake.Intake`, :func:`direct_to`) instead of serialising it into
an HTTP request that the same process would parse again: the checks, the planning and the
durable enqueue are the ones ``POST /api/v1/comparison`` runs, with the same answers
(docs/decisions.md, "Embedded: the CJ service calls the provider's intake"). Callbacks
travel on a :class:`DirectBus`.

Why a direct bus and not the queueing in-memory bus: the provider deletes a callback from
its durable outbox once the bus has accepted it. A bus that holds callbacks in memory would
lose the accepted-but-unhandled ones when the process is killed, leaving comparisons
pending forever. The direct bus accepts a callback only once the CJ handler has recorded it,
so the SQLite outbox stays the one buffer and a killed run resumes with nothing lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cjllm.bus import BatchHandler, BusError, Handler, Message, one_at_a_time
from cjllm.cj.llm_client import Direct, Reply, retry_after_seconds
from cjllm.cj.progress import ProgressHook
from cjllm.cj.service import cj_service
from cjllm.cj.workflow import CJWorkflow
from cjllm.contracts import ComparisonRequest, EventEnvelope
from cjllm.provider.calls import LLMAdapter
from cjllm.provider.intake import Intake, Refused
from cjllm.provider.limiter import Pacing
from cjllm.provider.queue import QueueUnavailable
from cjllm.provider.service import ProviderService, embedded_provider
from cjllm.provider.worker_process import WorkerProcess
from cjllm.settings import CJSettings, ProviderSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

QUEUE_FILE = "queue.sqlite"
DATABASE_FILE = "cj.sqlite"
# the provider's address as the CJ service sees it; the ASGI transport never resolves it
IN_PROCESS_PROVIDER_URL = "http://provider.in-process"


class DirectBus:
    """An in-process bus that delivers on publish: ``publish`` returns once every
    subscribed group's handler has returned, and raises :class:`BusError` if one raised
    (the publisher keeps the event and tries again; consumers de-duplicate).

    :meth:`publish_many` hands a batch handler (:meth:`subscribe_many`) all its messages in
    one call, so the CJ service records a publisher's whole batch of callbacks in one
    transaction; if the handler raises, every message of the batch is refused (and sent
    again). The first group's handler gets the publisher's envelopes themselves (the
    publisher parsed them from its outbox and drops them once published, so nothing is
    serialised twice), any other group its own copies. Handlers of one group run one at a
    time, in publish order per caller.
    A topic nobody subscribed to accepts and drops events, as a topic nobody reads would
    keep them unread. Publishing before :meth:`start` or after :meth:`stop` is refused.
    """

    def __init__(self) -> None:
        self._groups: dict[str, dict[str, BatchHandler]] = defaultdict(dict)
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._running = False

    async def start(self) -> None:
        self._running = True

    async def stop(self) -> None:
        self._running = False

    def subscribe(self, topic: str, group: str, handler: Handler) -> None:
        self.subscribe_many(topic, group, one_at_a_time(handler))

    def subscribe_many(self, topic: str, group: str, handler: BatchHandler) -> None:
        self._groups[topic][group] = handler
        self._locks.setdefault((topic, group), asyncio.Lock())

    async def publish(self, topic: str, key: str, envelope: EventEnvelope) -> None:
        (error,) = await self.publish_many(topic, [(key, envelope)])
        if error is not None:
            raise error

    async def publish_many(self, topic: str, messages: Sequence[Message]) -> list[BusError | None]:
        if not self._running:
            error = BusError(
                f"direct bus not running; {len(messages)} {topic} events not delivered"
            )
            return [error] * len(messages)
        envelopes = [envelope for _, envelope in messages]
        for n, (group, handler) in enumerate(list(self._groups[topic].items())):
            async with self._locks[(topic, group)]:
                try:
                    await handler(
                        envelopes if n == 0 else [e.model_copy(deep=True) for e in envelopes]
                    )
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the handler's failure is the publisher's retry
                    keys = ", ".join(key for key, _ in messages[:3])
                    log.warning("%s handler of %s failed on %s: %s", group, topic, keys, exc)
                    error = BusError(f"{group} could not handle {topic} events ({keys}): {exc}")
                    return [error] * len(messages)
        return [None] * len(messages)


def direct_to(provider: ProviderService) -> Direct:
    """The in-process hop from the CJ service to ``provider``: each comparison goes through
    the provider's :meth:`~cjllm.provider.intake.Intake.accept` (what the HTTP endpoint
    calls), a round's through :meth:`~cjllm.provider.intake.Intake.accept_many` (the same
    checks and answers, one hand-over); a refusal comes back as the status and message the
    API would answer with."""
    intake: Intake = provider.app.state.intake

    async def submit(request: ComparisonRequest) -> Reply:
        try:
            accepted = await intake.accept(request, estimate_wait=False)  # a Reply has no wait
        except Refused as refused:
            return _reply(refused)
        return Reply(202, queue_id=accepted.queue_id)

    async def submit_many(requests: Sequence[ComparisonRequest]) -> list[Reply]:
        answers = await intake.accept_many(requests, estimate_wait=False)
        return [
            _reply(a) if isinstance(a, Refused) else Reply(202, queue_id=a.queue_id)
            for a in answers
        ]

    async def cancel(cj_batch_id: str) -> bool:
        try:
            await provider.jobs.cancel(cj_batch_id)
        except QueueUnavailable as exc:
            log.warning("could not cancel batch %s at the provider: %s", cj_batch_id, exc)
            return False
        return True

    return Direct(submit, cancel, submit_many)


def _reply(refused: Refused) -> Reply:
    """A refusal as the status, message and ``Retry-After`` the API would answer with."""
    return Reply(
        refused.status_code,
        detail=_messages(refused.detail),
        retry_after=retry_after_seconds((refused.headers or {}).get("Retry-After")),
    )


def _messages(detail: object) -> str:
    """The messages of a refusal's errors, joined."""
    errors = detail if isinstance(detail, list) else [detail]
    text = "; ".join(str(e.get("msg", e)) if isinstance(e, dict) else str(e) for e in errors)
    return text[:500]


@dataclass(frozen=True)
class EmbeddedPaths:
    out_dir: Path

    @property
    def queue(self) -> Path:
        return self.out_dir / QUEUE_FILE

    @property
    def database(self) -> Path:
        return self.out_dir / DATABASE_FILE

    def provider_settings(self, base: ProviderSettings) -> ProviderSettings:
        """``base`` with the embedded queue and bus, and leases suited to one process."""
        return base.model_copy(
            update={
                "queue_url": f"sqlite:///{self.queue.resolve()}",
                "bus_url": "memory://",
                # this process holds the folder lock, so a lease left by an earlier process
                # is stale; short leases (renewed while calls run) let a restart go on soon
                "lease_seconds": min(base.lease_seconds, 30.0),
                "outbox_lease_seconds": min(base.outbox_lease_seconds, 5.0),
            }
        )

    def cj_settings(self, base: CJSettings) -> CJSettings:
        """``base`` with the embedded database, bus and in-process provider address."""
        return base.model_copy(
            update={
                "database_url": f"sqlite+aiosqlite:///{self.database.resolve()}",
                "bus_url": "memory://",
                "provider_url": IN_PROCESS_PROVIDER_URL,
            }
        )


@dataclass
class EmbeddedServices:
    """The running pair: the CJ workflow to drive, and the provider service behind it."""

    cj: CJWorkflow
    provider: ProviderService

    def pacing(self, remaining_items: int | None = None) -> Pacing:
        """The limiter's state: the worker process's as it last reported it, else this
        process's (``remaining_items`` is only used by the latter)."""
        process = self.provider.worker_process
        if process is not None:
            return process.pacing()
        return self.provider.limiter.pacing(remaining_items)

    async def until(self, work: Awaitable[T]) -> T:
        """``work``'s result; fails with :class:`WorkerProcessFailed` if the worker process
        died too often first."""
        process = self.provider.worker_process
        return await (work if process is None else process.until(work))


@asynccontextmanager
async def embedded_services(
    out_dir: Path,
    provider_settings: ProviderSettings,
    cj_settings: CJSettings,
    *,
    adapters: Mapping[str, LLMAdapter] | None = None,
    on_progress: ProgressHook | None = None,
) -> AsyncIterator[EmbeddedServices]:
    """Run both services over the files in ``out_dir``, which the caller has locked
    (:func:`cjllm.out_dir.locked_out_dir`).

    Start-up order matters: the CJ service subscribes to the callback topic (and resumes
    unfinished batches) before the provider's worker and publisher start, so no callback
    is published before someone can record it. Leases left by a killed earlier process are
    returned to the queue at once.
    """
    paths = EmbeddedPaths(out_dir)
    psettings = paths.provider_settings(provider_settings)
    csettings = paths.cj_settings(cj_settings).model_copy(
        update={"provider_api_token": psettings.api_token}
    )
    bus = DirectBus()
    await bus.start()
    try:
        async with embedded_provider(psettings, bus=bus, adapters=adapters, work=False) as provider:
            async with cj_service(
                csettings,
                direct=direct_to(provider),
                bus=bus,
                on_progress=on_progress,
                resume=True,
            ) as cj:
                stale_before = time.time() + psettings.lease_seconds + 1.0
                recovered = await provider.queue.recover_leases(time.time(), stale_before)
                if recovered:
                    log.info("requeued %d comparisons left in flight by an earlier run", recovered)
                # batch jobs an earlier run was moving on: watch (or submit) them again now
                await provider.jobs.table.release_leases()
                process = None
                if psettings.embedded_worker == "child_process":
                    process = WorkerProcess(
                        psettings, provider.queue, provider.worker.sizes, adapters
                    )
                provider.start_work(process)
                try:
                    yield EmbeddedServices(cj=cj, provider=provider)
                finally:
                    # stop calling and publishing before the CJ side closes its database
                    await provider.stop_work()
    finally:
        await bus.stop()
