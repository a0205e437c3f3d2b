"""Submitting a recorded batch job: at most once at the vendor, whatever crashes in between.

    recorded ──(attempted_at written)──> vendor.submit ──(vendor id written)──> submitted
        │                                     │ refused for good: each comparison's next
        └── attempted before? list the        │ try or error callback; the job settled
            vendor's jobs first: found → adopted (submitted), not found → submit

- Only the holder of a job's claim submits it, and it writes ``attempted_at`` (and how many
  lines it sends) *before* the vendor call. From then on the vendor may have the job, so
  every later try first lists the vendor's jobs (:meth:`~cjllm.provider.batch_calls.BatchAPI.find`)
  and adopts the one it finds rather than submitting again — the answer to a crash between
  submitting and writing the vendor's id down.
- A definite refusal is tried again with backoff up to ``max_attempts`` times; a timeout or
  lost connection (it may have arrived) is never given up, only looked for before each new
  try.
- The job's comparisons stay leased to it throughout, so no other job and no serial call
  sends them meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from cjllm.provider.batch_calls import BatchAPI, JobLine
from cjllm.provider.bundling import build_call
from cjllm.provider.calls import ProviderCallError
from cjllm.provider.job_lines import held_lines, settle_line
from cjllm.provider.jobs import BatchJob, JobState, JobTable
from cjllm.provider.settle import Settlement, Settler, backoff

log = logging.getLogger(__name__)

FIND_SKEW_SECONDS = 120.0  # vendor clocks may run behind ours
_TRANSIENT = ("timeout", "connection_error")


async def check_later(
    table: JobTable, owner: str, job: BatchJob, delay: float, error: str | None = None
) -> None:
    """Give the job's claim back, due for another look in ``delay`` seconds."""
    changes: dict[str, Any] = {"next_check_at": time.time() + delay}
    if error is not None:
        changes["error"] = error
    await table.update(job.job_id, owner, changes)


async def submit_job(
    table: JobTable,
    api: BatchAPI,
    job: BatchJob,
    lines: list[JobLine] | None,
    *,
    owner: str,
    settler: Settler,
) -> None:
    """Send a recorded job to the vendor, unless an earlier try already did. ``owner``
    holds the job's claim; ``settler`` writes in the name of the job's comparisons' lease
    (for a refusal); ``lines``: the job's lines as just rendered, or None to render them
    from what the job still holds."""
    metrics = settler.metrics
    if job.attempted_at is not None:
        try:
            known = await table.vendor_ids()
            found = await api.find(
                job.job_id,
                job.lines_sent,
                job.attempted_at - FIND_SKEW_SECONDS,
                known | set(job.excluded),
            )
        except ProviderCallError as exc:
            await _failed(table, job, exc, owner, settler)
            return
        if found is not None:
            log.warning("batch job %s: found at the vendor as %s; adopted", job.job_id, found)
            metrics.batch_job_events.labels(job.provider, "adopted").inc()
            await _submitted(table, job, found, owner, settler, adopted=True)
            return
    if lines is None:
        lines = [
            api.line(cid, build_call(cid, [p for _, p in entries]))
            for cid, entries in (await held_lines(table, job)).items()
        ]
    now = time.time()
    if not lines:  # every comparison was settled meanwhile (cancelled)
        await table.update(
            job.job_id,
            owner,
            {"state": JobState.SETTLED, "settled_at": now, "vendor_status": "not_submitted"},
        )
        return
    started = {
        "attempted_at": job.attempted_at or now,
        "lines_sent": len(lines),
        "attempts": job.attempts + 1,
    }
    if not await table.update(job.job_id, owner, started, release=False):
        return  # the claim lapsed; whoever holds the job now goes on
    try:
        async with asyncio.timeout(2 * settler.settings.call_timeout_seconds):
            vendor_id = await api.submit(job.job_id, lines)
    except TimeoutError:
        error = ProviderCallError("timeout", "submitting the job took too long", retryable=True)
        await _failed(table, job, error, owner, settler)
        return
    except ProviderCallError as exc:
        await _failed(table, job, exc, owner, settler)
        return
    metrics.batch_job_events.labels(job.provider, "submitted").inc()
    log.info("batch job %s submitted as %s (%d lines)", job.job_id, vendor_id, len(lines))
    await _submitted(table, job, vendor_id, owner, settler, adopted=False)


async def _submitted(
    table: JobTable, job: BatchJob, vendor_id: str, owner: str, settler: Settler, *, adopted: bool
) -> None:
    now = time.time()
    first = settler.settings.batch_poll_min_seconds
    await table.update(
        job.job_id,
        owner,
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


async def _failed(
    table: JobTable, job: BatchJob, exc: ProviderCallError, owner: str, settler: Settler
) -> None:
    """Try again later, or give the job's comparisons their next try (or error callback)."""
    settings, metrics = settler.settings, settler.metrics
    attempts = job.attempts + 1
    transient = exc.code in _TRANSIENT
    if exc.retryable and (transient or attempts < settings.max_attempts):
        delay = backoff(
            attempts, settings.retry_base_seconds, settings.retry_max_seconds, exc.retry_after
        )
        log.warning("batch job %s: submission failed (%s); again in %.1fs", job.job_id, exc, delay)
        metrics.batch_job_events.labels(job.provider, "submit_retry").inc()
        await check_later(table, owner, job, delay, str(exc))
        return
    log.error("batch job %s: submission refused (%s)", job.job_id, exc)
    now = time.time()
    settled = Settlement()
    for custom_id, entries in (await held_lines(table, job)).items():
        call = build_call(custom_id, [p for _, p in entries])
        settle_line(settler, settled, job, call, entries, exc, 0, now)
    await settler.record(settled, now)
    metrics.batch_job_events.labels(job.provider, "refused").inc()
    await table.update(
        job.job_id,
        owner,
        {
            "state": JobState.SETTLED,
            "settled_at": now,
            "vendor_status": "not_submitted",
            "error": str(exc),
        },
    )
