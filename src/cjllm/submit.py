"""``cjllm submit``: start an assessment on a running CJ service (the distributed shape).

The essays are read and checked locally exactly as ``cjllm rank`` does, then sent in one
``POST /api/v1/assessments``. The service runs the batch (its provider, model, strategy and
budget come from its own ``CJLLM_*`` settings); the result lands in its database and as a
``CJAssessmentCompletedV1`` event on the completion topic. With ``wait`` this polls
``GET /api/v1/assessments/{id}`` until the batch finishes and returns the result;
:func:`judgements` then fetches every comparison (``…/{id}/comparisons``) for the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from cjllm.cj.evidence import BatchJudgements, Judgement
from cjllm.contracts import CJAssessmentCompletedV1
from cjllm.essays import check_distinct, load_anchors, load_essays, read_text
from cjllm.preflight import DEFAULT_INSTRUCTIONS

ASSESSMENTS_PATH = "/api/v1/assessments"


class SubmitError(Exception):
    """The CJ service refused the assessment or could not be reached."""


@dataclass(frozen=True)
class SubmitRequest:
    path: Path
    cj_url: str
    instructions: Path | None = None
    rubric: Path | None = None
    anchors: Path | None = None
    grade_scale: Sequence[str] | None = None
    bos_batch_id: str | None = None


def assessment_body(request: SubmitRequest) -> dict[str, Any]:
    """The ``POST /api/v1/assessments`` body; raises ``EssayInputError`` on bad input."""
    essays = load_essays(request.path)
    anchors = load_anchors(request.anchors) if request.anchors is not None else []
    if request.anchors is not None:
        check_distinct(essays, anchors, request.anchors)
    instructions = (
        read_text(request.instructions, "instructions file").strip()
        if request.instructions is not None
        else DEFAULT_INSTRUCTIONS
    )
    rubric = read_text(request.rubric, "rubric file").strip() if request.rubric else None
    body: dict[str, Any] = {
        "essays": [{"essay_id": e.essay_id, "text": e.text} for e in essays],
        "anchors": [{"essay_id": a.essay_id, "text": a.text, "grade": a.grade} for a in anchors],
        "instructions": instructions or DEFAULT_INSTRUCTIONS,
        "rubric": rubric or None,
    }
    if request.grade_scale:
        body["grade_scale"] = list(request.grade_scale)
    if request.bos_batch_id:
        body["bos_batch_id"] = request.bos_batch_id
    return body


def _detail(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:500]
    return str(data.get("detail", data)) if isinstance(data, dict) else str(data)


def submit(request: SubmitRequest, client: httpx.Client, body: dict[str, Any] | None = None) -> str:
    """Start the assessment (``body``: :func:`assessment_body`, read now if not given);
    return its ``cj_batch_id``."""
    body = assessment_body(request) if body is None else body
    url = request.cj_url.rstrip("/") + ASSESSMENTS_PATH
    try:
        response = client.post(url, json=body)
    except httpx.HTTPError as exc:
        raise SubmitError(f"cannot reach the CJ service at {request.cj_url}: {exc}") from exc
    if response.status_code != 202:
        raise SubmitError(
            f"the CJ service refused the assessment ({response.status_code}): {_detail(response)}"
        )
    return str(response.json()["cj_batch_id"])


def status(cj_url: str, batch_id: str, client: httpx.Client) -> dict[str, Any]:
    url = f"{cj_url.rstrip('/')}{ASSESSMENTS_PATH}/{batch_id}"
    try:
        response = client.get(url)
    except httpx.HTTPError as exc:
        raise SubmitError(f"cannot reach the CJ service at {cj_url}: {exc}") from exc
    if response.status_code != 200:
        raise SubmitError(f"status of {batch_id}: {response.status_code} {_detail(response)}")
    data: dict[str, Any] = response.json()
    return data


def wait(
    cj_url: str,
    batch_id: str,
    client: httpx.Client,
    *,
    timeout: float | None = None,
    every: float = 1.0,
    on_status: Callable[[dict[str, Any]], None] | None = None,
) -> CJAssessmentCompletedV1:
    """Poll until the batch has a result; raise ``TimeoutError`` after ``timeout`` seconds.
    Connection errors are retried until the timeout (the service may be restarting)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            data = status(cj_url, batch_id, client)
        except SubmitError:
            if deadline is not None and time.monotonic() > deadline:
                raise
            data = {}
        if on_status is not None and data:
            on_status(data)
        if data.get("result"):
            return CJAssessmentCompletedV1.model_validate(data["result"])
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"batch {batch_id} did not finish within {timeout:.0f}s")
        time.sleep(every)


def judgements(cj_url: str, batch_id: str, client: httpx.Client) -> list[Judgement]:
    """Every comparison of the batch, as the CJ service recorded it."""
    url = f"{cj_url.rstrip('/')}{ASSESSMENTS_PATH}/{batch_id}/comparisons"
    try:
        response = client.get(url)
    except httpx.HTTPError as exc:
        raise SubmitError(f"cannot reach the CJ service at {cj_url}: {exc}") from exc
    if response.status_code != 200:
        raise SubmitError(f"comparisons of {batch_id}: {response.status_code} {_detail(response)}")
    return BatchJudgements.model_validate(response.json()).comparisons
