"""The provider API's batch-job endpoints (behind the same token as the rest of the API).

- ``GET /api/v1/jobs?cj_batch_id=…&open_only=…`` — the provider batch jobs (all, or those
  serving one CJ batch): state, the vendor's id and status, lines, comparisons, counts,
  times. How a ``custom_id`` maps back: a job's line ``<job_id>-<n>`` is the ``bundle_id``
  in the callbacks of the comparisons it carried.
- ``POST /api/v1/comparison/cancel`` ``{"cj_batch_id": …}`` — cancel a CJ batch's
  batch-mode comparisons: each not answered yet gets an error callback (``cancelled``) now,
  and a job left with nothing to answer is cancelled at the vendor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from cjllm.provider.batch_jobs import BatchJobs
from cjllm.provider.jobs import BatchJob


class JobView(BaseModel):
    job_id: str
    provider: str
    model: str
    mode: str
    state: str
    vendor_id: str | None
    vendor_status: str | None
    lines: int
    comparisons: int
    counts: dict[str, int]
    created_at: float
    submitted_at: float | None
    settled_at: float | None
    cancel_requested: bool
    error: str | None
    cj_batch_ids: list[str]

    @classmethod
    def of(cls, job: BatchJob) -> JobView:
        return cls(
            job_id=job.job_id,
            provider=job.provider,
            model=job.model,
            mode=job.mode,
            state=job.state.value,
            vendor_id=job.vendor_id,
            vendor_status=job.vendor_status,
            lines=job.n_lines,
            comparisons=job.n_items,
            counts=dict(job.counts),
            created_at=job.created_at,
            submitted_at=job.submitted_at,
            settled_at=job.settled_at,
            cancel_requested=job.cancel_requested,
            error=job.error,
            cj_batch_ids=list(job.cj_batch_ids),
        )


class JobList(BaseModel):
    jobs: list[JobView]


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cj_batch_id: str = Field(min_length=1)


class CancelAnswer(BaseModel):
    cj_batch_id: str
    comparisons_cancelled: int
    jobs_cancelled: list[str]
    jobs_kept: list[str]


def jobs_router(jobs: BatchJobs, dependencies: Sequence[Any]) -> APIRouter:
    """The endpoints over ``jobs``; ``dependencies`` guard them (the API's token check)."""
    router = APIRouter(dependencies=list(dependencies))

    @router.get("/api/v1/jobs")
    async def list_jobs(cj_batch_id: str | None = None, open_only: bool = False) -> JobList:
        found = await jobs.table.jobs(cj_batch_id=cj_batch_id, open_only=open_only)
        return JobList(jobs=[JobView.of(j) for j in found])

    @router.post("/api/v1/comparison/cancel")
    async def cancel(body: CancelRequest) -> CancelAnswer:
        report = await jobs.cancel(body.cj_batch_id)
        return CancelAnswer(
            cj_batch_id=body.cj_batch_id,
            comparisons_cancelled=report.comparisons,
            jobs_cancelled=report.jobs_cancelled,
            jobs_kept=report.jobs_kept,
        )

    return router
