"""Provider batch jobs: the life of a job, from queued comparisons to one callback each.

    collect ──> record ──> submit ──> watch ──────> settle
                (items leased  (vendor    (poll with    (each line by custom_id: success,
                 to the job,    id         backoff)      retry alone, or error callback)
                 job written)   written)

- **collect**: a ready group of the batch lane (:mod:`cjllm.provider.job_plan`) becomes a
  job of lines, split at the vendor's limits.
- **record before submit**: the job, its lines and its items' leases are written in one
  atomic step (:mod:`cjllm.provider.jobs`) before anything goes to the vendor. A crash
  before the submission leaves a recorded job, which whoever claims it next submits.
- **nothing submitted twice**: only the holder of a job's lease submits it, and it writes
  ``attempted_at`` first; every later try lists the vendor's jobs
  (:meth:`~cjllm.provider.batch_calls.BatchAPI.find`) and adopts the one it finds rather
  than submitting again — the answer to a crash between submitting and writing the
  vendor's id down. The job's comparisons stay leased to it until it is settled, so no
  other job and no serial call sends them meanwhile.
- **watch**: the job is looked at with doubling intervals (``batch_poll_min_seconds`` to
  ``batch_poll_max_seconds``) until the vendor says it ended.
- **settle**: results are matched to lines by ``custom_id`` (they come in any order). An
  answered line is reconciled item by item exactly like a serial call
  (:meth:`~cjllm.provider.settle.Settler.answered`): good items finish, a missing or invalid
  item goes again alone. An errored line retries its items or gives them error callbacks by
  error class; an expired, canceled or missing line sends its items back to the queue.
  Every item gets its fate through :class:`~cjllm.provider.settle.Settler`, whose finish is
  idempotent, so settling again after a crash emits no second callback.
- **cancel**: a cancelled CJ batch's comparisons get error callbacks now (queued ones and
  those inside open jobs); a job left with nothing to answer is cancelled at the vendor.

Any process may take any step of any job: the table, not memory, says where a job is.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cjllm.contracts import QueueItemState
from cjllm.provider.adapters import batch_api_for
from cjllm.provider.batch_calls import (
    BatchAPI,
    JobLine,
    LineResult,
    LineUnfinished,
    NoBatchAPI,
    VendorStatus,
)
from cjllm.provider.bundling import PlannedComparison, build_call
from cjllm.provider.calls import CallOutcome, LLMAdapter, ProviderCallError
from cjllm.provider.job_plan import draft_job, is_ready, mode_of
from cjllm.provider.jobs import BatchJob, JobLineRecord, JobState, JobTable, NewJob, item_owner
from cjllm.provider.loops import nap
from cjllm.provider.metrics import ProviderMetrics
from cjllm.provider.providers import Providers, ProviderUnavailable
from cjllm.provider.queue import Queue, QueueUnavailable, Retry, Spent
from cjllm.provider.results import CallRef
from cjllm.provider.settle import Entry, Settlement, Settler, backoff
from cjllm.settings import ProviderSettings

log = logging.getLogger(__name__)

CANCELLED = "cancelled"
ITEMS_PER_DRAFT = 100_000  # comparisons read to form one job
RECORD_EVERY = 500  # items per settlement write while settling a large job
FIND_SKEW_SECONDS = 120.0  # vendor clocks may run behind ours
PURGE_EVERY_SECONDS = 60.0
_TRANSIENT = ("timeout", "connection_error")


@dataclass(frozen=True)
class Recorded:
    """A job just recorded, with the lines it was formed of (rendered, ready to send)."""

    job: BatchJob
    api: BatchAPI
    lines: list[JobLine]


@dataclass
class CancelReport:
    """What cancelling a CJ batch did: comparisons given error callbacks, jobs cancelled
    at the vendor (nothing left in them), and jobs kept (they serve other batches too)."""

    comparisons: int
    jobs_cancelled: list[str] = field(default_factory=list)
    jobs_kept: list[str] = field(default_factory=list)


def cj_batch_of(plan: PlannedComparison) -> str | None:
    value = plan.request.metadata.get("cj_batch_id")
    return str(value) if value is not None else None


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
        on_recorded: Callable[[], None] | None = None,
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
                    await nap(stop, self.settings.sweep_interval_seconds)
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
        jobs = await self.table.claim(
            self.owner, now, now + self.job_lease, self.settings.worker_concurrency
        )
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
        if not await self.table.record(job, now):
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
        """Send a recorded job to the vendor, unless an earlier try already did."""
        if job.attempted_at is not None:
            try:
                known = await self.table.vendor_ids()
                found = await api.find(
                    job.job_id,
                    job.lines_sent,
                    job.attempted_at - FIND_SKEW_SECONDS,
                    known | set(job.excluded),
                )
            except ProviderCallError as exc:
                await self._submit_failed(job, exc)
                return
            if found is not None:
                log.warning("batch job %s: found at the vendor as %s; adopted", job.job_id, found)
                self.metrics.batch_job_events.labels(job.provider, "adopted").inc()
                await self._submitted(job, found, adopted=True)
                return
        if lines is None:
            lines = [line for line, _ in await self._active_lines(job, api)]
        now = time.time()
        if not lines:  # every comparison was settled meanwhile (cancelled)
            await self.table.update(
                job.job_id,
                self.owner,
                {"state": JobState.SETTLED, "settled_at": now, "vendor_status": "not_submitted"},
            )
            return
        started = {
            "attempted_at": job.attempted_at or now,
            "lines_sent": len(lines),
            "attempts": job.attempts + 1,
        }
        if not await self.table.update(job.job_id, self.owner, started, release=False):
            return  # the claim lapsed; whoever holds the job now goes on
        try:
            async with asyncio.timeout(2 * self.settings.call_timeout_seconds):
                vendor_id = await api.submit(job.job_id, lines)
        except TimeoutError:
            error = ProviderCallError("timeout", "submitting the job took too long", retryable=True)
            await self._submit_failed(job, error)
            return
        except ProviderCallError as exc:
            await self._submit_failed(job, exc)
            return
        self.metrics.batch_job_events.labels(job.provider, "submitted").inc()
        log.info("batch job %s submitted as %s (%d lines)", job.job_id, vendor_id, len(lines))
        await self._submitted(job, vendor_id, adopted=False)

    async def _submitted(self, job: BatchJob, vendor_id: str, *, adopted: bool) -> None:
        now = time.time()
        first = self.settings.batch_poll_min_seconds
        await self.table.update(
            job.job_id,
            self.owner,
            {
                "state": JobState.SUBMITTED,
                "vendor_id": vendor_id,
                "vendor_status": "submitted",
                "adopted": adopted,
                "submitted_at": now,
                "next_check_at": now + first,
                "poll_interval": first,
                "error": None,
            },
        )

    async def _submit_failed(self, job: BatchJob, exc: ProviderCallError) -> None:
        """Try again later, or give the job's comparisons their next try (or error callback).

        A timeout or lost connection may have reached the vendor, so it never gives up: the
        next try looks for the job first."""
        attempts = job.attempts + 1
        transient = exc.code in _TRANSIENT
        if exc.retryable and (transient or attempts < self.settings.max_attempts):
            delay = backoff(
                attempts,
                self.settings.retry_base_seconds,
                self.settings.retry_max_seconds,
                exc.retry_after,
            )
            log.warning(
                "batch job %s: submission failed (%s); again in %.1fs", job.job_id, exc, delay
            )
            self.metrics.batch_job_events.labels(job.provider, "submit_retry").inc()
            await self._later(job, delay, str(exc))
            return
        log.error("batch job %s: submission refused (%s)", job.job_id, exc)
        now = time.time()
        settler = self.settler(job.job_id)
        settled = Settlement()
        lines = await self._line_entries(job)
        for custom_id, entries in lines.items():
            self._line_failed(settler, settled, job, custom_id, entries, exc, 0, now)
        await settler.record(settled, now)
        self.metrics.batch_job_events.labels(job.provider, "refused").inc()
        await self.table.update(
            job.job_id,
            self.owner,
            {
                "state": JobState.SETTLED,
                "settled_at": now,
                "vendor_status": "not_submitted",
                "error": str(exc),
            },
        )

    async def _later(self, job: BatchJob, delay: float, error: str | None = None) -> None:
        changes: dict[str, Any] = {"next_check_at": time.time() + delay}
        if error is not None:
            changes["error"] = error
        await self.table.update(job.job_id, self.owner, changes)

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
        lines = await self._line_entries(job)
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
            if isinstance(result, CallOutcome):
                settler.answered(settled, entries, calls[custom_id], job.provider, result, now)
            elif isinstance(result, ProviderCallError):
                self._line_failed(
                    settler, settled, job, custom_id, entries, result, latency_ms, now
                )
            else:
                self._line_unfinished(settler, settled, job, custom_id, entries, result, now)
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

    def _line_failed(
        self,
        settler: Settler,
        settled: Settlement,
        job: BatchJob,
        custom_id: str,
        entries: Sequence[Entry],
        exc: ProviderCallError,
        latency_ms: int,
        now: float,
    ) -> None:
        """An errored line: split it when too large for the context, else each item's next
        try (or error callback, by error class)."""
        if exc.code == "context_window_exceeded" and len(entries) > 1:
            half = math.ceil(len(entries) / 2)
            for item, _ in entries:
                settled.retries.append(
                    (Retry(item.queue_id, now, half, exc.message, count_attempt=False), "split")
                )
            return
        for index, (item, plan) in enumerate(entries):
            ref = CallRef(custom_id, index, len(entries), job.provider, job.model, latency_ms)
            settler.next_try(
                settled,
                item,
                plan,
                ref,
                exc.code,
                exc.message,
                Spent(),
                now,
                hint=item.hint,
                retryable=exc.retryable,
                details=exc.details,
            )

    def _line_unfinished(
        self,
        settler: Settler,
        settled: Settlement,
        job: BatchJob,
        custom_id: str,
        entries: Sequence[Entry],
        result: LineResult | None,
        now: float,
    ) -> None:
        """The vendor never reached the line (expired, canceled, or not in the results)."""
        reason = result.reason if isinstance(result, LineUnfinished) else "missing"
        message = {
            "expired": "the vendor's batch window ran out before this line",
            "canceled": "the job was cancelled before this line was answered",
        }.get(reason, "the job's results do not include this line")
        for index, (item, plan) in enumerate(entries):
            ref = CallRef(custom_id, index, len(entries), job.provider, job.model, 0)
            code = f"batch_{reason}"
            settler.next_try(settled, item, plan, ref, code, message, Spent(), now, hint=item.hint)

    # ------------------------------------------------------------------ lines and items

    async def _line_entries(self, job: BatchJob) -> dict[str, list[Entry]]:
        """Each line's comparisons still held by the job (others are settled already)."""
        lines = await self.table.lines(job.job_id)
        held = await self._held(job, [q for line in lines for q in line.queue_ids])
        out: dict[str, list[Entry]] = {}
        for line in lines:
            entries = [held[q] for q in line.queue_ids if q in held]
            if entries:
                out[line.custom_id] = entries
        return out

    async def _held(self, job: BatchJob, queue_ids: Sequence[str]) -> dict[str, Entry]:
        owner = item_owner(job.job_id)
        return {
            item.queue_id: (item, PlannedComparison.from_json(item.payload))
            for item in await self.table.items(queue_ids)
            if item.state is QueueItemState.PROCESSING and item.lease_owner == owner
        }

    async def _active_lines(self, job: BatchJob, api: BatchAPI) -> list[tuple[JobLine, str]]:
        """The lines still worth sending, rendered (a recorded job submitted by a process
        other than the one that recorded it)."""
        lines = await self._line_entries(job)
        return [
            (api.line(cid, build_call(cid, [p for _, p in entries])), cid)
            for cid, entries in lines.items()
        ]

    # ------------------------------------------------------------------ cancel

    async def cancel(self, cj_batch_id: str) -> CancelReport:
        """Error callbacks (``cancelled``) for every batch-mode comparison of a CJ batch not
        answered yet; cancel at the vendor each open job left with nothing to answer."""
        now = time.time()
        message = f"CJ batch {cj_batch_id} was cancelled"
        settler = self.settler()
        queued = [
            i.queue_id
            for i in await self.table.lane_items(None, now, 10**7, available_only=False)
            if cj_batch_of(PlannedComparison.from_json(i.payload)) == cj_batch_id
        ]
        taken = await self.table.take(queued, self.owner, now, now + self.settings.lease_seconds)
        entries = [(i, PlannedComparison.from_json(i.payload)) for i in taken]
        report = CancelReport(len(entries))
        for job in await self.table.jobs(cj_batch_id=cj_batch_id, open_only=True):
            lines = await self.table.lines(job.job_id)
            held = await self._held(job, [q for line in lines for q in line.queue_ids])
            mine = [e for e in held.values() if cj_batch_of(e[1]) == cj_batch_id]
            entries += mine
            report.comparisons += len(mine)
            emptied = len(mine) == len(held)
            (report.jobs_cancelled if emptied else report.jobs_kept).append(job.job_id)
        await settler.give_up(entries, CANCELLED, message, operation="cancel")
        await self.table.request_cancel(report.jobs_cancelled, now)
        log.info(
            "CJ batch %s cancelled: %d comparisons, jobs cancelled %s, kept %s",
            cj_batch_id,
            report.comparisons,
            report.jobs_cancelled,
            report.jobs_kept,
        )
        return report
