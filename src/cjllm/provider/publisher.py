"""The outbox publisher: sends recorded callbacks to the bus and forgets them on acknowledgement.

Callbacks are written to the queue's outbox in the same atomic step that finishes their
item, so nothing is lost between "answered" and "published". The publisher leases a batch
of entries (two publishers never send the same entry at once), publishes each to its
callback topic keyed by ``correlation_id``, and deletes only what the bus acknowledged. A
bus outage delays callbacks (the publisher keeps retrying, with backoff) but loses none; a
publisher that dies after publishing but before deleting makes the entry go out again —
delivery is at-least-once and consumers de-duplicate on ``correlation_id``.
"""

from __future__ import annotations

import asyncio
import logging
import time

from cjllm.bus import BusError, EventBus
from cjllm.contracts import EventEnvelope
from cjllm.provider.loops import nap
from cjllm.provider.metrics import ProviderMetrics
from cjllm.provider.queue import OutboxEntry, Queue
from cjllm.settings import ProviderSettings

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 5.0


class Publisher:
    def __init__(
        self, queue: Queue, bus: EventBus, settings: ProviderSettings, metrics: ProviderMetrics
    ) -> None:
        self.queue = queue
        self.bus = bus
        self.settings = settings
        self.metrics = metrics
        self._wakeup = asyncio.Event()

    def notify(self) -> None:
        """Callbacks were recorded: publish now rather than at the next poll."""
        self._wakeup.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Drain the outbox until ``stop``."""
        while not stop.is_set():
            if not await self.drain_once():
                await nap(self._wakeup, self.settings.poll_interval_seconds)
                self._wakeup.clear()

    async def drain_once(self) -> int:
        """Lease one batch and publish it, retrying bus failures while the lease lasts.

        Returns how many entries were leased (0: the outbox had nothing visible).
        """
        now = time.time()
        lease_end = now + self.settings.outbox_lease_seconds
        entries = await self.queue.claim_outbox(now, lease_end, self.settings.publish_batch_size)
        pending, delay = entries, 0.1
        while pending:
            failed = await self._publish(pending)
            refused = {e.entry_id for e in failed}
            await self.queue.delete_outbox(
                [e.entry_id for e in pending if e.entry_id not in refused]
            )
            pending = failed
            if pending:
                if time.time() + delay >= lease_end:
                    break  # the entries reappear when the lease ends; anyone may take them
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
        return len(entries)

    async def _publish(self, entries: list[OutboxEntry]) -> list[OutboxEntry]:
        """Publish concurrently; return the entries the bus refused."""

        async def one(entry: OutboxEntry) -> bool:
            try:
                await self.bus.publish(
                    entry.topic, entry.message_key, EventEnvelope.from_bytes(entry.envelope)
                )
            except BusError as exc:
                log.warning("callback %s not published yet: %s", entry.message_key, exc)
                self.metrics.publish_failures.inc()
                return False
            self.metrics.callbacks_published.inc()
            return True

        outcomes = await asyncio.gather(*(one(e) for e in entries))
        return [e for e, ok in zip(entries, outcomes, strict=True) if not ok]
