"""The sweeper: looks after the queue between bundles.

    every sweep_interval:  lost leases ──> requeued (the try counts)
                           past TTL     ──> error callback (``ttl_expired``, or
                                            ``rate_limited`` / ``overloaded`` when the
                                            provider's limit is what kept it waiting)
                           old records  ──> forgotten

A sweeper that dies mid-way loses nothing: expired items are leased to it before their
error callbacks are written, so an unfinished sweep's lease lapses and the next one takes
them again.
"""

from __future__ import annotations

import asyncio
import logging
import time

from cjllm.contracts import QueueItemState
from cjllm.provider.bundling import PlannedComparison
from cjllm.provider.limiter import expiry_code
from cjllm.provider.loops import nap
from cjllm.provider.metrics import ProviderMetrics
from cjllm.provider.queue import Queue
from cjllm.provider.settle import Entry, Settler
from cjllm.settings import ProviderSettings

log = logging.getLogger(__name__)


class Sweeper:
    def __init__(self, queue: Queue, settler: Settler, settings: ProviderSettings) -> None:
        self.queue = queue
        self.settler = settler
        self.settings = settings

    @property
    def metrics(self) -> ProviderMetrics:
        return self.settler.metrics

    async def sweep(self) -> None:
        """One pass: requeue lost leases, expire items past their TTL, forget old records."""
        now = time.time()
        recovered = await self.queue.recover_leases(now)
        if recovered:
            log.warning("requeued %d comparisons whose worker lost its lease", recovered)
            self.metrics.lease_recoveries.inc(recovered)
        ttl = f"not answered within its time to live ({self.settings.item_ttl_seconds:g}s)"
        while expired := await self.queue.claim_expired(
            self.settler.owner, now, now + self.settings.lease_seconds, 100
        ):
            by_code: dict[str, list[Entry]] = {}
            for item in expired:
                entry = (item, PlannedComparison.from_json(item.payload))
                by_code.setdefault(expiry_code(item.last_error), []).append(entry)
            for code, entries in by_code.items():
                reason = ttl if code == "ttl_expired" else f"{ttl}: the provider's limit ({code})"
                await self.settler.give_up(
                    entries, code, reason, operation="queue_ttl", state=QueueItemState.EXPIRED
                )
            self.metrics.expiries.inc(len(expired))
        await self.queue.purge(now - self.settings.record_retention_seconds)

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep every ``sweep_interval_seconds`` until ``stop``; refresh the depth gauges."""
        while not stop.is_set():
            await self.sweep()
            self.metrics.observe_depth(await self.queue.depth(time.time()))
            await nap(stop, self.settings.sweep_interval_seconds)
