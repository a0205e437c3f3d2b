"""Cancelling a CJ batch's batch-mode comparisons (``POST /api/v1/comparison/cancel``).

Every comparison of that CJ batch not answered yet — queued in the batch lane, or held by an
open job — gets an error callback (``cancelled``) at once, through the same idempotent
finish as any other fate, so a result arriving later changes nothing. A job left with
nothing to answer is marked to be cancelled at the vendor (its watcher does it); a job that
also serves another CJ batch runs on. Serial-mode comparisons are not touched.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from cjllm.provider.bundling import PlannedComparison
from cjllm.provider.job_lines import held
from cjllm.provider.jobs import JobTable
from cjllm.provider.settle import Entry, Settler

log = logging.getLogger(__name__)

CANCELLED = "cancelled"


@dataclass
class CancelReport:
    """Comparisons given error callbacks, jobs to cancel at the vendor, jobs kept."""

    comparisons: int = 0
    jobs_cancelled: list[str] = field(default_factory=list)
    jobs_kept: list[str] = field(default_factory=list)


def cj_batch_of(plan: PlannedComparison) -> str | None:
    value = plan.request.metadata.get("cj_batch_id")
    return str(value) if value is not None else None


async def cancel_cj_batch(
    table: JobTable, settler: Settler, cj_batch_id: str, lease_seconds: float
) -> CancelReport:
    """Cancel what is left of ``cj_batch_id`` in the batch lane and in open jobs."""
    now = time.time()
    queued = [
        i.queue_id
        for i in await table.lane_items(None, now, 10**7, available_only=False)
        if cj_batch_of(PlannedComparison.from_json(i.payload)) == cj_batch_id
    ]
    taken = await table.take(queued, settler.owner, now, now + lease_seconds)
    entries: list[Entry] = [(i, PlannedComparison.from_json(i.payload)) for i in taken]
    report = CancelReport(len(entries))
    for job in await table.jobs(cj_batch_id=cj_batch_id, open_only=True):
        lines = await table.lines(job.job_id)
        holding = await held(table, job, [q for line in lines for q in line.queue_ids])
        mine = [e for e in holding.values() if cj_batch_of(e[1]) == cj_batch_id]
        entries += mine
        report.comparisons += len(mine)
        emptied = len(mine) == len(holding)
        (report.jobs_cancelled if emptied else report.jobs_kept).append(job.job_id)
    message = f"CJ batch {cj_batch_id} was cancelled"
    await settler.give_up(entries, CANCELLED, message, operation="cancel")
    await table.request_cancel(report.jobs_cancelled, now)
    log.info(
        "CJ batch %s cancelled: %d comparisons; jobs cancelled %s, kept %s",
        cj_batch_id,
        report.comparisons,
        report.jobs_cancelled,
        report.jobs_kept,
    )
    return report
