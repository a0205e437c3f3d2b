"""A batch job's lines as the queue holds them, and what each line's result makes of its items.

A line's comparisons are those of its recorded queue ids still held by the job (processing,
leased to ``job:<id>``); the others have their fate already (a cancellation, an earlier
settlement) and are left alone, so settling a job twice changes nothing. Each line's result
is one of the :mod:`cjllm.provider.batch_calls` outcomes:

- answered → :meth:`~cjllm.provider.settle.Settler.answered`, the serial path's own rule;
- errored → split when too large for the context, else each item's next try or its error
  callback, by error class;
- expired, canceled or not in the results → each item's next try (the try counts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from cjllm.contracts import QueueItemState
from cjllm.provider.batch_calls import LineResult, LineUnfinished
from cjllm.provider.bundling import PlannedComparison
from cjllm.provider.calls import BundleCall, CallOutcome, ProviderCallError
from cjllm.provider.jobs import BatchJob, JobTable, item_owner
from cjllm.provider.queue import Retry, Spent
from cjllm.provider.results import CallRef
from cjllm.provider.settle import Entry, Settlement, Settler

UNFINISHED = {
    "expired": "the vendor's batch window ran out before this line",
    "canceled": "the job was cancelled before this line was answered",
}


async def held(table: JobTable, job: BatchJob, queue_ids: Sequence[str]) -> dict[str, Entry]:
    """Those of ``queue_ids`` the job still holds, with their planned comparisons."""
    owner = item_owner(job.job_id)
    return {
        item.queue_id: (item, PlannedComparison.from_json(item.payload))
        for item in await table.items(queue_ids)
        if item.state is QueueItemState.PROCESSING and item.lease_owner == owner
    }


async def held_lines(table: JobTable, job: BatchJob) -> dict[str, list[Entry]]:
    """Each line's comparisons still held by the job, by ``custom_id`` (lines with none are
    left out)."""
    lines = await table.lines(job.job_id)
    holding = await held(table, job, [q for line in lines for q in line.queue_ids])
    out: dict[str, list[Entry]] = {}
    for line in lines:
        entries = [holding[q] for q in line.queue_ids if q in holding]
        if entries:
            out[line.custom_id] = entries
    return out


def settle_line(
    settler: Settler,
    settled: Settlement,
    job: BatchJob,
    call: BundleCall,
    entries: Sequence[Entry],
    result: LineResult | None,
    latency_ms: int,
    now: float,
) -> None:
    """Write down the fate of one line's comparisons (``result`` None: not in the results)."""
    if isinstance(result, CallOutcome):
        settler.answered(settled, entries, call, job.provider, result, now)
    elif isinstance(result, ProviderCallError):
        _errored(settler, settled, job, call.bundle_id, entries, result, latency_ms, now)
    else:
        reason = result.reason if isinstance(result, LineUnfinished) else "missing"
        message = UNFINISHED.get(reason, "the job's results do not include this line")
        for index, (item, plan) in enumerate(entries):
            ref = CallRef(call.bundle_id, index, len(entries), job.provider, job.model, 0)
            code = f"batch_{reason}"
            settler.next_try(settled, item, plan, ref, code, message, Spent(), now, hint=item.hint)


def _errored(
    settler: Settler,
    settled: Settlement,
    job: BatchJob,
    custom_id: str,
    entries: Sequence[Entry],
    exc: ProviderCallError,
    latency_ms: int,
    now: float,
) -> None:
    if exc.code == "context_window_exceeded" and len(entries) > 1:
        half = math.ceil(len(entries) / 2)
        for item, _ in entries:
            retry = Retry(item.queue_id, now, half, exc.message, count_attempt=False)
            settled.retries.append((retry, "split"))
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
