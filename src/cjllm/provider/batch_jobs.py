"""Provider batch jobs: the life of a job, from queued comparisons to one callback each.

    collect ──> record ──> submit ──> watch ──────> settle
                (items leased  (vendor    (poll with    (each line by custom_id: success,
                 to the job,    id         backoff)      retry, or error callback)
                 job written)   written)

- **collect**: a ready group of the batch lane (:mod:`cjllm.provider.job_plan`) becomes a
  job of lines, split at the vendor's limits.
- **record before submit**: the job, its lines and its items' leases are written in one
  atomic step (:mod:`cjllm.provider.jobs`) before anything goes to the vendor. A crash
  before the submission leaves a recorded job, which whoever claims it next submits.
- **nothing submitted twice**: :mod:`cjllm.provider.job_submit`. The job's comparisons
  stay leased to it until it is settled, so no other job and no serial call sends them
  meanwhile.
- **watch**: the job is looked at with doubling intervals (``batch_poll_min_seconds`` to
  ``batch_poll_max_seconds``) until the vendor says it ended.
- **settle**: results are matched to lines by ``custom_id`` (they come in any order) and
  each line's comparisons get their fate (:mod:`cjllm.provider.job_lines`): an answered
  line is reconciled item by item exactly like a serial call, so only a missing item goes
  again; an errored, expired or canceled line sends its items back or gives them error
  callbacks. Finishing is idempotent, so settling again after a crash emits no second
  callback.
- **cancel**: :mod:`cjllm.provider.job_cancel`.

Any process may take any step of any job: the table, not memory, says where a job is.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cjllm.provider.adapters import batch_api_for
from cjllm.provider.batch_calls import (
    BatchAPI,
    JobLine,
    LineResult,
    NoBatchAPI,
    VendorStatus,
)
from cjllm.provider.bundling import PlannedComparison, build_call
from cjllm.provider.calls import LLMAdapter, ProviderCallError
from cjllm.provider.job_cancel import CancelReport, cancel_cj_batch, cj_batch_of
from cjllm.provider.job_lines import held_lines, settle_line
from cjllm.provider.job_plan import draft_job, is_ready, mode_of
from cjllm.provider.job_submit import check_later, submit_job
from cjllm.provider.jobs import BatchJob, JobLineRecord, JobState, JobTable, NewJob, item_owner
from cjllm.provider.loops import nap
from cjllm.provider.metrics import ProviderMetrics
from cjllm.provider.providers import Providers, ProviderUnavailable
from cjllm.provider.queue import Queue, QueueUnavailable
from cjllm.provider.settle import OnRecorded, Settlement, Settler
from cjllm.settings import ProviderSettings

log = logging.getLogger(__name__)

ITEMS_PER_DRAFT = 100_000  # comparisons read to form one job
RECORD_EVERY = 500  # items per settlement write while settling a large job
PURGE_EVERY_SECONDS = 60.0
JOBS_AT_ONCE = 4  # jobs one process moves on at a time (CJLLM_WORKER_CONCURRENCY if set)


@dataclass(frozen=True)
class Recorded:
    """A job just recorded, with the lines it was formed of (rendered, ready to send)."""

    job: BatchJob
    api: BatchAPI
    lines: list[JobLine]


class BatchJobs:
    """Moves every batch job along (any number of processes may run one each)."""

    def __init__(
        self,
        queue: Queue,
        table: JobTable,
        providers: Providers,
        settings: ProviderSettings,
        metrics: ProviderMetrics,
        *,
        owner: str | None = None,
        on_recorded: OnRecorded | None = None,
        batch_api: Callable[[LLMAdapter], BatchAPI] = batch_api_for,
    ) -> None:
        """``batch_api`` builds a vendor's batch API over its adapter (a test may wrap it)."""
        self.batch_api = batch_api
        self.queue = queue
        self.table = table
        self.providers = providers
        self.settings = settings
        self.metrics = metrics
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.on_recorded = on_recorded
        self._last_purge = 0.0

    @property
    def job_lease(self) -> float:
        """How long a claim on a job lasts: longer than a submission may take (an upload
        and a create, each bounded by the call timeout), so two never overlap."""
        return self.settings.lease_seconds + 3 * self.settings.call_timeout_seconds

    @property
    def interval(self) -> float:
        """How often an idle loop looks for ready groups and due jobs: as often as the batch
        linger or the first poll needs (5 s by default), never more often than the sweep."""
        s = self.settings
        return max(s.sweep_interval_seconds, min(s.batch_linger_seconds, s.batch_poll_min_seconds))

    def settler(self, job_id: str | None = None) -> Settler:
        owner = item_owner(job_id) if job_id is not None else self.owner
        return Settler(self.queue, self.settings, self.metrics, owner, self.on_recorded)

    # ------------------------------------------------------------------ the loop

    async def run(self, stop: asyncio.Event) -> None:
        """Collect, submit, watch and settle until ``stop``. On the way out the job leases
        this process holds are given back, so a restart need not wait for them to lapse (a
        submission cut short is looked for at the vendor before it is tried again)."""
        try:
            while not stop.is_set():
                try:
                    busy = await self.step()
                except QueueUnavailable as exc:
                    log.warning("batch jobs: queue unavailable (%s); trying again", exc)
                    busy = False
                if not busy:
                    await nap(stop, self.interval)
        finally:
            try:
                await asyncio.shield(self.table.release_leases(self.owner))
            except QueueUnavailable as exc:
                log.warning("batch jobs: leases not given back (%s); they lapse", exc)

    async def step(self) -> bool:
        """One pass: form the jobs that are ready, then move every due job on. True when
        something happened (the loop goes again at once)."""
        now = time.time()
        made = await self.collect(now)
        at_once = self.settings.worker_concurrency or JOBS_AT_ONCE
        jobs = await self.table.claim(self.owner, now, now + self.job_lease, at_once)
        outcomes = await asyncio.gather(*(self.advance(j) for j in jobs), return_exceptions=True)
        for job, outcome in zip(jobs, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.error("batch job %s: step failed", job.job_id, exc_info=outcome)
        await self._upkeep(now)
        return made > 0 or bool(jobs)

    async def _upkeep(self, now: float) -> None:
        counts = await self.table.counts()
        for state, n in counts.items():
            self.metrics.batch_jobs.labels(state.value).set(n)
        if now - self._last_purge >= PURGE_EVERY_SECONDS:
            self._last_purge = now
            await self.table.purge(now - self.settings.record_retention_seconds)

    # ------------------------------------------------------------------ collect and record

    async def collect(self, now: float) -> int:
        """Record and submit a job for every ready lane group; returns how many."""
        made = 0
        progress = True
        while progress:
            progress = False
            for group in await self.table.lane_groups(now):
                if not is_ready(group, now, self.settings):
                    continue
                recorded = await self.record(group.group, now)
                if recorded is not None:
                    await self.submit(recorded.job, recorded.api, recorded.lines)
                    made += 1
                    progress = True
        return made

    async def record(self, group: str, now: float) -> Recorded | None:
        """Form one job from ``group`` and record it (its submission is the caller's next
        step). None: nothing recorded (another process took the comparisons first, or none
        can go; those get error callbacks)."""
        items = await self.table.lane_items(group, now, ITEMS_PER_DRAFT)
        if not items:
            return None
        first = PlannedComparison.from_json(items[0].payload)
        try:
            api = self.batch_api(self.providers.get(first.provider))
        except (ProviderUnavailable, NoBatchAPI) as exc:
            await self._refuse([i.queue_id for i in items], "provider_unavailable", str(exc))
            return None
        limits = api.limits.capped(self.settings.batch_max_lines, self.settings.batch_max_bytes)
        job_id = uuid.uuid4().hex[:16]
        draft = draft_job(job_id, items, api, limits, self.settings.batch_items_per_line)
        if draft.oversize:
            await self._refuse(
                draft.oversize,
                "request_too_large",
                f"one comparison alone is over the {limits.max_bytes}-byte job limit",
            )
        if not draft.lines:
            return None
        by_id = {i.queue_id: i for i in items}
        served = {
            cj_batch_of(PlannedComparison.from_json(by_id[q].payload))
            for line in draft.lines
            for q in line.queue_ids
        }
        job = NewJob(
            job_id=job_id,
            provider=first.provider,
            model=first.model,
            mode=mode_of(group).value,
            lines=[JobLineRecord(line.custom_id, line.queue_ids) for line in draft.lines],
            cj_batch_ids=sorted(b for b in served if b is not None),
            created_at=now,
            hold_until=now + self.settings.batch_hold_seconds,
            lease_owner=self.owner,
            lease_until=now + self.job_lease,
        )
        try:
            recorded = await self.table.record(job, now)
        except QueueUnavailable as exc:
            if not exc.may_have_applied:
                raise
            # the step may have been applied with its answer lost: the table says
            recorded = await self.table.get(job_id) is not None
        if not recorded:
            return None
        self.metrics.batch_job_events.labels(job.provider, "recorded").inc()
        self.metrics.batch_items_per_job.labels(job.provider).observe(len(job.queue_ids))
        log.info(
            "batch job %s recorded: %d comparisons in %d lines (%s %s)",
            job_id,
            len(job.queue_ids),
            len(job.lines),
            job.provider,
            job.model,
        )
        stored = await self.table.get(job_id)
        assert stored is not None  # just written, and only purged once settled
        return Recorded(stored, api, [line.line for line in draft.lines])

    async def _refuse(self, queue_ids: Sequence[str], code: str, message: str) -> None:
        """Error callbacks for queued comparisons no job can take."""
        now = time.time()
        taken = await self.table.take(queue_ids, self.owner, now, now + self.settings.lease_seconds)
        entries = [(i, PlannedComparison.from_json(i.payload)) for i in taken]
        await self.settler().give_up(entries, code, message, operation="batch_job")

    # ------------------------------------------------------------------ submit

    async def advance(self, job: BatchJob) -> None:
        """Submit a recorded job, or look at a submitted one (the caller holds its lease)."""
        try:
            api = self.batch_api(self.providers.get(job.provider))
        except (ProviderUnavailable, NoBatchAPI) as exc:
            log.warning("batch job %s: %s; looking again later", job.job_id, exc)
            await self._later(job, self.settings.batch_poll_max_seconds, str(exc))
            return
        if job.state is JobState.RECORDED:
            await self.submit(job, api)
        else:
            await self.watch(job, api)

    async def submit(
        self, job: BatchJob, api: BatchAPI, lines: list[JobLine] | None = None
    ) -> None:
        """Send a recorded job to the vendor, unless an earlier try already did
        (:mod:`cjllm.provider.job_submit`)."""
        await submit_job(
            self.table, api, job, lines, owner=self.owner, settler=self.settler(job.job_id)
        )

    async def _later(self, job: BatchJob, delay: float, error: str | None = None) -> None:
        await check_later(self.table, self.owner, job, delay, error)

    # ------------------------------------------------------------------ watch

    async def watch(self, job: BatchJob, api: BatchAPI) -> None:
        """Look at a submitted job (cancelling it first if asked); settle it once it ended."""
        assert job.vendor_id is not None
        changes: dict[str, Any] = {}
        try:
            if job.cancel_requested and not job.cancel_sent:
                status = await api.cancel(job.vendor_id)
                changes["cancel_sent"] = True
                self.metrics.batch_job_events.labels(job.provider, "cancel_sent").inc()
            else:
                status = await api.status(job.vendor_id)
        except ProviderCallError as exc:
            interval = min(max(job.poll_interval, 1.0) * 2, self.settings.batch_poll_max_seconds)
            log.warning("batch job %s: cannot look at it (%s)", job.job_id, exc)
            await self._later(job, interval, str(exc))
            return
        if not status.ended:
            interval = min(
                max(job.poll_interval, self.settings.batch_poll_min_seconds) * 2,
                self.settings.batch_poll_max_seconds,
            )
            changes.update(
                vendor_status=status.status,
                counts=status.counts,
                next_check_at=time.time() + interval,
                poll_interval=interval,
            )
            await self.table.update(job.job_id, self.owner, changes)
            return
        await self.settle(job, api, status)

    # ------------------------------------------------------------------ settle

    async def settle(self, job: BatchJob, api: BatchAPI, status: VendorStatus) -> None:
        """Give every comparison still held by an ended job its fate, then close the job."""
        assert job.vendor_id is not None
        now = time.time()
        turnaround = max(0.0, now - (job.submitted_at or job.created_at))
        latency_ms = int(turnaround * 1000)
        lines = await held_lines(self.table, job)
        calls = {cid: build_call(cid, [p for _, p in entries]) for cid, entries in lines.items()}
        found: dict[str, LineResult] = {}
        if status.failed is None and calls:
            try:
                found = await api.results(job.vendor_id, calls, latency_ms)
            except ProviderCallError as exc:
                log.warning("batch job %s: cannot read its results (%s)", job.job_id, exc)
                await self._later(job, self.settings.batch_poll_min_seconds, str(exc))
                return
        if job.adopted and found and not any(c.startswith(job.job_id + "-") for c in found):
            await self._foreign(job)
            return
        failed = ProviderCallError(
            "batch_failed", f"the vendor failed the job: {status.failed}", retryable=True
        )
        settler = self.settler(job.job_id)
        settled = Settlement()
        pending = 0
        for custom_id, entries in lines.items():
            result = failed if status.failed is not None else found.get(custom_id)
            settle_line(settler, settled, job, calls[custom_id], entries, result, latency_ms, now)
            pending += len(entries)
            if pending >= RECORD_EVERY:
                await settler.record(settled, now)
                settled, pending = Settlement(), 0
        await settler.record(settled, now)
        await self.table.update(
            job.job_id,
            self.owner,
            {
                "state": JobState.SETTLED,
                "vendor_status": status.status,
                "counts": status.counts,
                "ended_at": now,
                "settled_at": now,
            },
        )
        self.metrics.batch_job_events.labels(job.provider, f"ended_{status.status}").inc()
        self.metrics.batch_turnaround.labels(job.provider).observe(turnaround)
        log.info("batch job %s settled (%s after %.0fs)", job.job_id, status.status, turnaround)

    async def _foreign(self, job: BatchJob) -> None:
        """The adopted vendor job turned out not to be ours: forget it and submit ours."""
        assert job.vendor_id is not None
        log.warning("batch job %s: %s is not ours after all; submitting", job.job_id, job.vendor_id)
        self.metrics.batch_job_events.labels(job.provider, "foreign").inc()
        await self.table.update(
            job.job_id,
            self.owner,
            {
                "state": JobState.RECORDED,
                "vendor_id": None,
                "adopted": False,
                "excluded": [*job.excluded, job.vendor_id],
                "next_check_at": time.time(),
            },
        )

    # ------------------------------------------------------------------ cancel

    async def cancel(self, cj_batch_id: str) -> CancelReport:
        """See :mod:`cjllm.provider.job_cancel`."""
        return await cancel_cj_batch(
            self.table, self.settler(), cj_batch_id, self.settings.lease_seconds
        )
