"""HTTP API of the CJ Assessment Service (``cjllm serve cj``).

``POST /api/v1/assessments`` starts a batch (``202`` once its first round is sent; ``409``
if its ``cj_batch_id`` is taken); ``GET /api/v1/assessments/{cj_batch_id}`` reports progress
and, when finished, the ``CJAssessmentCompletedV1`` result;
``GET /api/v1/assessments/{cj_batch_id}/comparisons`` lists every comparison as evidence
(opponents, positions, winners, justifications, bundles, tokens);
``POST /api/v1/assessments/{cj_batch_id}/cancel`` cancels a running batch (``409`` once it
has finished), provider batch jobs included; ``GET /healthz``. The completion event is also
published on the completion topic, so callers may listen instead of asking.

Starting an assessment spends the LLM budget, so the assessment routes want
``Authorization: Bearer <CJLLM_CJ_API_TOKEN>`` when that is set; bodies are limited to
``CJLLM_CJ_MAX_REQUEST_BYTES`` (413) and must arrive within
``CJLLM_REQUEST_READ_TIMEOUT_SECONDS`` (408) — the same :mod:`cjllm.api_guard` as the
provider API.
"""

from __future__ import annotations

import uuid
from typing import Literal

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from cjllm.api_guard import BodyLimit, bearer_token
from cjllm.cj.evidence import BatchJudgements, judgements
from cjllm.cj.options import InvalidBatch
from cjllm.cj.store import BatchExists, BatchNotFound
from cjllm.cj.workflow import CJWorkflow, EssayInput
from cjllm.contracts import CJAssessmentCompletedV1


class EssayIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    essay_id: str = Field(min_length=1, max_length=255)
    text: str = Field(min_length=1)


class AnchorIn(EssayIn):
    grade: str = Field(min_length=1)


class AssessmentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    essays: list[EssayIn] = Field(min_length=1)
    anchors: list[AnchorIn] = Field(default_factory=list)
    instructions: str = Field(min_length=1)
    rubric: str | None = None
    grade_scale: list[str] | None = None
    bos_batch_id: str | None = None
    cj_batch_id: uuid.UUID | None = None


class AssessmentAccepted(BaseModel):
    cj_batch_id: str
    status: Literal["running"] = "running"


class AssessmentProgress(BaseModel):
    rounds: int
    requested: int
    pending: int
    succeeded: int
    failed: int
    ignored_callbacks: int
    provider_calls: int
    total_tokens: int
    cost_estimate: float
    reliability: float | None
    mean_se: float | None
    budget: int | None


class AssessmentStatus(BaseModel):
    cj_batch_id: str
    status: str
    progress: AssessmentProgress
    result: CJAssessmentCompletedV1 | None = None


def create_app(workflow: CJWorkflow) -> FastAPI:
    app = FastAPI(title="cjllm CJ Assessment Service")
    settings = workflow.settings
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.cj_max_request_bytes,
        read_timeout=settings.request_read_timeout_seconds,
        setting="CJLLM_CJ_MAX_REQUEST_BYTES",
    )
    token = [Depends(bearer_token(settings.cj_api_token, "CJLLM_CJ_API_TOKEN"))]

    @app.post("/api/v1/assessments", status_code=202, dependencies=token)
    async def start(body: AssessmentRequest) -> AssessmentAccepted:
        try:
            batch_id = await workflow.start_batch(
                [EssayInput(e.essay_id, e.text) for e in body.essays],
                anchors=[EssayInput(a.essay_id, a.text, a.grade) for a in body.anchors],
                instructions=body.instructions,
                rubric=body.rubric,
                grade_scale=body.grade_scale,
                bos_batch_id=body.bos_batch_id,
                batch_id=str(body.cj_batch_id) if body.cj_batch_id else None,
            )
        except InvalidBatch as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        except BatchExists as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from exc
        return AssessmentAccepted(cj_batch_id=batch_id)

    @app.get("/api/v1/assessments/{cj_batch_id}", dependencies=token)
    async def status(cj_batch_id: str) -> AssessmentStatus:
        return await _status(workflow, cj_batch_id)

    @app.post("/api/v1/assessments/{cj_batch_id}/cancel", dependencies=token)
    async def cancel(cj_batch_id: str) -> AssessmentStatus:
        try:
            cancelled = await workflow.cancel(cj_batch_id)
        except BatchNotFound as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from exc
        if not cancelled:
            raise HTTPException(status_code=409, detail=f"batch {cj_batch_id} has finished")
        return await _status(workflow, cj_batch_id)

    @app.get("/api/v1/assessments/{cj_batch_id}/comparisons", dependencies=token)
    async def comparisons(cj_batch_id: str) -> BatchJudgements:
        try:
            await workflow.store.batch(cj_batch_id)
        except BatchNotFound as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from exc
        return BatchJudgements(
            cj_batch_id=cj_batch_id, comparisons=await judgements(workflow.store, cj_batch_id)
        )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


async def _status(workflow: CJWorkflow, cj_batch_id: str) -> AssessmentStatus:
    try:
        progress = await workflow.progress(cj_batch_id)
    except BatchNotFound as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    return AssessmentStatus(
        cj_batch_id=cj_batch_id,
        status=progress.status.value,
        progress=AssessmentProgress(
            rounds=progress.rounds,
            requested=progress.requested,
            pending=progress.pending,
            succeeded=progress.succeeded,
            failed=progress.failed,
            ignored_callbacks=progress.ignored_callbacks,
            provider_calls=progress.provider_calls,
            total_tokens=progress.total_tokens,
            cost_estimate=progress.cost_estimate,
            reliability=progress.reliability,
            mean_se=progress.mean_se,
            budget=progress.budget,
        ),
        result=await workflow.result(cj_batch_id),
    )
