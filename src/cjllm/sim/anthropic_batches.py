"""Anthropic Message Batches on the simulated provider: create, list, retrieve, cancel, results.

A batch's requests are answered when it is created, by the same code as ``/v1/messages``
(answer faults apply; a call-level fault makes that request ``errored``). The batch is
``in_progress`` until ``batch_seconds`` have passed, then ``ended`` with its results as JSONL
at its ``results_url``, in a random order; some lines may have ``expired``, and a cancelled
batch is ``canceling`` for a while and reports the lines it had not reached as ``canceled``
(:mod:`cjllm.sim.batch_lines`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from cjllm.sim.anthropic_api import admit, build_message, check_params, error_body, error_response
from cjllm.sim.batch_lines import JobClock, LinePlan, over_limits
from cjllm.sim.faults import CALL_FAULTS, draw
from cjllm.sim.state import SimError, SimState, new_id, sim_of

router = APIRouter()

BATCH_TTL = timedelta(hours=24)
COUNT_KEYS = ("processing", "succeeded", "errored", "canceled", "expired")


def _iso(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def final_results(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """The batch's result lines as they come back once it has ended, in result order."""
    clock: JobClock = batch["clock"]
    plan: LinePlan = batch["plan"]
    out = []
    for position, index in enumerate(plan.order):
        line = batch["lines"][index]
        if clock.reached is not None and position >= clock.reached:
            result: dict[str, Any] = {"type": "canceled"}
        elif index in plan.expired:
            result = {"type": "expired"}
        else:
            result = line["result"]
        out.append({"custom_id": line["custom_id"], "result": result})
    return out


def _batch_view(request: Request, batch: dict[str, Any]) -> dict[str, Any]:
    clock: JobClock = batch["clock"]
    status = clock.status()
    counts = dict.fromkeys(COUNT_KEYS, 0)
    if status == "ended":
        for line in final_results(batch):
            counts[line["result"]["type"]] += 1
    else:
        counts["processing"] = len(batch["lines"])
    results_url = f"{str(request.base_url).rstrip('/')}/v1/messages/batches/{batch['id']}/results"
    ended = status == "ended"
    return {
        "id": batch["id"],
        "type": "message_batch",
        "processing_status": status,
        "request_counts": counts,
        "created_at": _iso(clock.created_at),
        "expires_at": _iso(clock.created_at + BATCH_TTL.total_seconds()),
        "ended_at": _iso(clock.ended_at) if ended else None,
        "cancel_initiated_at": _iso(clock.cancel_at),
        "archived_at": None,
        "results_url": results_url if ended else None,
    }


def _batch_result(state: SimState, params: dict[str, Any]) -> dict[str, Any]:
    faults = draw(state.config.faults, state.rng)
    for name in faults:
        state.counters.faults[name] += 1
    if faults & set(CALL_FAULTS):
        status = 529 if "overloaded" in faults else 500
        exc = SimError(status, "The request could not be processed (simulated).")
        return {"type": "errored", "error": error_body(exc, new_id("req_"))}
    message, answer, usage = build_message(state, params, faults)
    state.record(
        "POST /v1/messages/batches",
        model=params["model"],
        items=answer.items,
        usage=usage,
        faults=faults,
        stop=message["stop_reason"],
        body=params,
        batch=True,
    )
    return {"type": "succeeded", "message": message}


@router.post("/v1/messages/batches")
async def create_batch(request: Request) -> Response:
    state = sim_of(request)
    state.counters.requests["POST /v1/messages/batches"] += 1
    try:
        body = await admit(request, state)
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            raise SimError(400, "requests: at least one request is required")
        too_big = over_limits(state, len(requests), len(json.dumps(body)))
        if too_big is not None:
            raise SimError(413, f"Message batch too large: {too_big}.")
        seen: set[str] = set()
        for i, entry in enumerate(requests):
            cid = entry.get("custom_id") if isinstance(entry, dict) else None
            if not isinstance(cid, str) or not 1 <= len(cid) <= 64 or cid in seen:
                raise SimError(400, f"requests.{i}.custom_id: must be unique, 1 to 64 characters")
            seen.add(cid)
            check_params(entry.get("params"), f"requests.{i}.params.")
    except SimError as exc:
        return error_response(state, exc)
    plan = LinePlan.draw(state, len(requests))
    batch: dict[str, Any] = {
        "id": new_id("msgbatch_"),
        "clock": JobClock.start(state),
        "plan": plan,
        "lines": [
            {
                "custom_id": r["custom_id"],
                "result": {"type": "expired"}
                if i in plan.expired
                else _batch_result(state, r["params"]),
            }
            for i, r in enumerate(requests)
        ],
    }
    state.stores["message_batches"][batch["id"]] = batch
    state.counters.batches["created"] += 1
    state.counters.responses["200"] += 1
    return JSONResponse(_batch_view(request, batch), headers={"request-id": new_id("req_")})


def _find_batch(request: Request, state: SimState, batch_id: str) -> dict[str, Any]:
    if not state.authorized(request.headers):
        raise SimError(401, "invalid x-api-key")
    batch: dict[str, Any] | None = state.stores["message_batches"].get(batch_id)
    if batch is None:
        raise SimError(404, f"message batch {batch_id} not found")
    return batch


@router.get("/v1/messages/batches")
async def list_batches(request: Request, limit: int = 20, after_id: str | None = None) -> Response:
    """Newest first, ``limit`` (1 to 1000) a page; ``after_id`` continues after that batch."""
    state = sim_of(request)
    state.counters.requests["GET /v1/messages/batches"] += 1
    if not state.authorized(request.headers):
        return error_response(state, SimError(401, "invalid x-api-key"))
    ids = list(reversed(state.stores["message_batches"]))
    start = ids.index(after_id) + 1 if after_id in ids else 0
    page = ids[start : start + max(1, min(limit, 1000))]
    data = [_batch_view(request, state.stores["message_batches"][i]) for i in page]
    return JSONResponse(
        {
            "data": data,
            "has_more": start + len(page) < len(ids),
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    )


@router.get("/v1/messages/batches/{batch_id}")
async def retrieve_batch(request: Request, batch_id: str) -> Response:
    state = sim_of(request)
    state.counters.requests["GET /v1/messages/batches/{id}"] += 1
    try:
        batch = _find_batch(request, state, batch_id)
    except SimError as exc:
        return error_response(state, exc)
    return JSONResponse(_batch_view(request, batch))


@router.post("/v1/messages/batches/{batch_id}/cancel")
async def cancel_batch(request: Request, batch_id: str) -> Response:
    state = sim_of(request)
    state.counters.requests["POST /v1/messages/batches/{id}/cancel"] += 1
    try:
        batch = _find_batch(request, state, batch_id)
    except SimError as exc:
        return error_response(state, exc)
    clock: JobClock = batch["clock"]
    if clock.cancel(state, len(batch["lines"])):
        state.counters.batches["canceled"] += 1
    return JSONResponse(_batch_view(request, batch))


@router.get("/v1/messages/batches/{batch_id}/results")
async def batch_results(request: Request, batch_id: str) -> Response:
    state = sim_of(request)
    state.counters.requests["GET /v1/messages/batches/{id}/results"] += 1
    try:
        batch = _find_batch(request, state, batch_id)
        if _batch_view(request, batch)["processing_status"] != "ended":
            raise SimError(400, f"message batch {batch_id} has not ended; no results yet")
    except SimError as exc:
        return error_response(state, exc)
    lines = "".join(json.dumps(line) + "\n" for line in final_results(batch))
    return Response(lines, media_type="application/x-jsonl")
