"""The outbox publisher: sends recorded callbacks to the bus and forgets them on acknowledgement.

Callbacks are written to the queue's outbox in the same atomic step that finishes their
item, so nothing is lost between "answered" and "published". The publisher leases a batch
of entries (two publishers never send the same entry at once), publishes each to its
callback topic keyed by ``correlation_id`` (one :meth:`~cjllm.bus.EventBus.publish_many` per
topic), and deletes only what the bus acknowledged. A
bus outage delays callbacks (the publisher keeps retrying, with backoff) but loses none; a
publisher that dies after publishing but before deleting makes the entry go out again —
delivery is at-least-once and consumers de-duplicate on ``correlation_id``.

An entry that can never be published — its bytes are not a readable envelope, or the bus
refuses it for what it is (:class:`~cjllm.bus.EventRejected`) — is moved to the outbox's
dead letters with the reason, counted and logged once. Any other failure is treated as an
outage (the entry is kept and tried again). Either way, one entry never holds up the
entries published beside it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Iterable

from cjllm.bus import BusError, EventBus, EventRejected
from cjllm.contracts import EventEnvelope
from cjllm.provider.loops import nap
from cjllm.provider.metrics import ProviderMetrics
from cjllm.provider.queue import Finished, OutboxEntry, Queue
from cjllm.settings import ProviderSettings

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 5.0
MAX_HANDED_OVER = 8_192
"""Envelopes this process's settler hands the publisher at most (the oldest go first: their
entries are read back from their bytes, as another process's are)."""


class Publisher:
    def __init__(
        self, queue: Queue, bus: EventBus, settings: ProviderSettings, metrics: ProviderMetrics
    ) -> None:
        self.queue = queue
        self.bus = bus
        self.settings = settings
        self.metrics = metrics
        self._wakeup = asyncio.Event()
        self._handed_over: dict[bytes, EventEnvelope] = {}

    def notify(self, recorded: Iterable[Finished] = ()) -> None:
        """Callbacks were recorded: publish now rather than at the next poll. The envelopes
        of ``recorded`` that come as models are kept for their outbox entries (matched on
        their bytes), so the publish need not parse them back."""
        handed = self._handed_over
        for finished in recorded:
            if finished.parsed is not None:
                handed[finished.envelope] = finished.parsed
        while len(handed) > MAX_HANDED_OVER:
            del handed[next(iter(handed))]
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
            failed, dead = await self._publish(pending)
            if dead:
                await self.queue.dead_letter_outbox(dead, time.time())
                self.metrics.dead_letters.inc(len(dead))
            refused = {e.entry_id for e in failed} | set(dead)
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

    async def _publish(
        self, entries: list[OutboxEntry]
    ) -> tuple[list[OutboxEntry], dict[str, str]]:
        """Publish in one group per topic; return the entries to try again and those to set
        aside (entry id → reason)."""
        dead: dict[str, str] = {}
        by_topic: dict[str, list[tuple[OutboxEntry, EventEnvelope]]] = defaultdict(list)
        handed = self._handed_over
        for entry in entries:
            try:
                envelope = handed.pop(entry.envelope, None) or EventEnvelope.from_bytes(
                    entry.envelope
                )
                by_topic[entry.topic].append((entry, envelope))
            except ValueError as exc:
                dead[entry.entry_id] = f"not a readable callback envelope: {exc}"[:2000]
                log.error("callback %s set aside: %s", entry.message_key, dead[entry.entry_id])
        failed: list[OutboxEntry] = []
        for topic, group in by_topic.items():
            try:
                outcomes = await self.bus.publish_many(
                    topic, [(e.message_key, envelope) for e, envelope in group]
                )
            except BusError as exc:
                outcomes = [exc] * len(group)
            except Exception as exc:  # not the bus's contract: say so loudly, keep them
                log.exception("%d callbacks to %s not published: the bus raised", len(group), topic)
                outcomes = [BusError(f"the bus raised {type(exc).__name__}: {exc}")] * len(group)
            for (entry, _), error in zip(group, outcomes, strict=True):
                if error is None:
                    self.metrics.callbacks_published.inc()
                elif isinstance(error, EventRejected):
                    dead[entry.entry_id] = str(error)[:2000]
                    log.error("callback %s set aside: %s", entry.message_key, error)
                else:
                    log.warning("callback %s not published yet: %s", entry.message_key, error)
                    self.metrics.publish_failures.inc()
                    failed.append(entry)
        return failed, dead
