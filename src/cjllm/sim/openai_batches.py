"""OpenAI Files and Batch on the simulated provider.

``/v1/files`` stores uploads (multipart) and serves their content; ``/v1/batches`` answers
every line of the input file when the batch is created, by the same code as the direct
endpoints (answer faults apply; a call-level fault fails that line with a 500), and shows
the batch ``in_progress`` until ``batch_seconds`` have passed. Then it is ``completed`` with
its output (and error) file, lines in a random order — or ``expired`` when some lines
expired (they are in the error file as ``batch_expired``). A cancelled batch is
``cancelling`` for a while, then ``cancelled`` with the lines it had reached; the others are
in neither file (:mod:`cjllm.sim.batch_lines`). ``GET /v1/batches`` lists batches, newest
first.
"""

from __future__ import annotations

import json
import time
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from cjllm.sim.batch_lines import JobClock, LinePlan, over_limits
from cjllm.sim.faults import CALL_FAULTS, draw
from cjllm.sim.openai_api import (
    CHAT_PARAMS,
    COMPLETION_PARAMS,
    build_chat,
    build_completion,
    check_keys,
    error_response,
)
from cjllm.sim.state import SimError, SimState, new_id, read_json, sim_of

router = APIRouter()

BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/completions")


def _file_view(stored: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stored.items() if k != "content"}


def _store_file(state: SimState, filename: str, purpose: str, content: bytes) -> dict[str, Any]:
    stored: dict[str, Any] = {
        "id": new_id("file-"),
        "object": "file",
        "bytes": len(content),
        "created_at": int(time.time()),
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
        "content": content,
    }
    state.stores["files"][stored["id"]] = stored
    return stored


def _multipart(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Form fields of a multipart body: name -> (filename, bytes)."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + raw)
    if not message.is_multipart():
        raise SimError(400, "expected a multipart/form-data body")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = (part.get_filename(), payload)
    return fields


@router.post("/v1/files")
async def upload_file(request: Request) -> Response:
    state = sim_of(request)
    state.counters.requests["POST /v1/files"] += 1
    try:
        if not state.authorized(request.headers):
            raise SimError(401, "Incorrect API key provided.")
        fields = _multipart(request.headers.get("content-type", ""), await request.body())
        if "file" not in fields or "purpose" not in fields:
            raise SimError(400, "file and purpose are required", param="file")
        filename, content = fields["file"]
        purpose = fields["purpose"][1].decode()
    except SimError as exc:
        return error_response(state, exc)
    stored = _store_file(state, filename or "upload.jsonl", purpose, content)
    return JSONResponse(_file_view(stored))


def _owned(request: Request, state: SimState, store: str, key: str) -> dict[str, Any]:
    if not state.authorized(request.headers):
        raise SimError(401, "Incorrect API key provided.")
    found: dict[str, Any] | None = state.stores[store].get(key)
    if found is None:
        raise SimError(404, f"No such {store.rstrip('s')} object: '{key}'", param="id")
    return found


@router.get("/v1/files/{file_id}")
async def retrieve_file(request: Request, file_id: str) -> Response:
    state = sim_of(request)
    state.counters.requests["GET /v1/files/{id}"] += 1
    try:
        return JSONResponse(_file_view(_owned(request, state, "files", file_id)))
    except SimError as exc:
        return error_response(state, exc)


@router.get("/v1/files/{file_id}/content")
async def file_content(request: Request, file_id: str) -> Response:
    state = sim_of(request)
    state.counters.requests["GET /v1/files/{id}/content"] += 1
    try:
        stored = _owned(request, state, "files", file_id)
    except SimError as exc:
        return error_response(state, exc)
    return Response(stored["content"], media_type="application/octet-stream")


def _error_json(exc: SimError) -> dict[str, Any]:
    kind = "server_error" if exc.status >= 500 else "invalid_request_error"
    return {"error": {"message": exc.message, "type": kind, "param": exc.param, "code": exc.code}}


def _run_line(state: SimState, body: Any, endpoint: str) -> tuple[int, dict[str, Any]]:
    """One batch request line's body: (status, response body)."""
    chat = endpoint == "/v1/chat/completions"
    try:
        if chat:
            check_keys(body, CHAT_PARAMS, ("model", "messages"))
        else:
            check_keys(body, COMPLETION_PARAMS, ("model", "prompt"))
        faults = draw(state.config.faults, state.rng)
        for name in faults:
            state.counters.faults[name] += 1
        if faults & set(CALL_FAULTS):
            raise SimError(500, "The server had an error processing the request (simulated).")
        completion, items, usage = (build_chat if chat else build_completion)(state, body, faults)
    except SimError as exc:
        return exc.status, _error_json(exc)
    state.record(
        endpoint,
        model=body["model"],
        items=items,
        usage=usage,
        faults=faults,
        stop="batch",
        body=body,
        batch=True,
    )
    return 200, completion


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


EXPIRED_ERROR = {
    "code": "batch_expired",
    "message": "This request could not be executed before the completion window expired.",
}


def _run_batch(state: SimState, batch: dict[str, Any], content: bytes) -> None:
    """Answer every line of the input file now; the results show once the batch ends."""
    lines: list[tuple[str, str, Any]] = []
    for number, raw in enumerate(content.decode("utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
            lines.append((line["custom_id"], line["url"], line["body"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            error = {"code": "invalid_json_line", "message": "This line is not a valid request."}
            _fail(batch, [{**error, "param": None, "line": number}])
            return
    too_big = over_limits(state, len(lines), len(content))
    if too_big is not None:
        _fail(batch, [{"code": "batch_too_large", "message": too_big, "param": None}])
        return
    plan = LinePlan.draw(state, len(lines))
    records: list[dict[str, Any]] = []
    for index, (custom_id, url, body) in enumerate(lines):
        record: dict[str, Any] = {"id": new_id("batch_req_"), "custom_id": custom_id}
        if index in plan.expired:
            record.update(response=None, error=EXPIRED_ERROR)
        else:
            if url != batch["endpoint"]:
                error = _error_json(SimError(400, f"url must be {batch['endpoint']}"))
                status, response = 400, error
            else:
                status, response = _run_line(state, body, url)
            rid = new_id("req_")
            record.update(
                response={"status_code": status, "request_id": rid, "body": response}, error=None
            )
        records.append(record)
    batch["request_counts"] = {"total": len(lines), "completed": 0, "failed": 0}
    batch["_records"], batch["_plan"] = records, plan


def _fail(batch: dict[str, Any], errors: list[dict[str, Any]]) -> None:
    batch.update(status="failed", failed_at=int(time.time()))
    batch["errors"] = {"object": "list", "data": errors}


def _finish(state: SimState, batch: dict[str, Any], clock: JobClock) -> None:
    """Write the output and error files of a batch that has just ended (once)."""
    plan: LinePlan = batch["_plan"]
    done: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for position, index in enumerate(plan.order):
        if clock.reached is not None and position >= clock.reached:
            continue  # the cancellation reached the batch first
        record = batch["_records"][index]
        ok = record["response"] is not None and record["response"]["status_code"] == 200
        (done if ok else failed).append(record)
    ended = int(clock.ended_at)
    if clock.cancel_at is not None:
        batch.update(status="cancelled", cancelled_at=ended)
    elif plan.expired:
        batch.update(status="expired", expired_at=ended)
    else:
        batch.update(status="completed", completed_at=ended, finalizing_at=ended)
    batch["request_counts"] = {
        "total": len(batch["_records"]),
        "completed": len(done),
        "failed": len(failed),
    }
    batch["output_file_id"] = _store_file(state, "output.jsonl", "batch_output", _jsonl(done))["id"]
    if failed:
        errors = _store_file(state, "errors.jsonl", "batch_output", _jsonl(failed))
        batch["error_file_id"] = errors["id"]


def _batch_view(state: SimState, batch: dict[str, Any]) -> dict[str, Any]:
    """The Batch object as of now (its files are written the first time it is seen ended)."""
    if batch["status"] in ("in_progress", "cancelling"):
        clock: JobClock = batch["_clock"]
        status = clock.status()
        if status == "ended":
            _finish(state, batch, clock)
        elif status == "canceling":
            batch["status"] = "cancelling"
    return {k: v for k, v in batch.items() if not k.startswith("_")}


BATCH_PARAMS = frozenset(
    {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}
)


def _check_batch(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise SimError(400, "The request body must be a JSON object.")
    unknown = sorted(set(body) - BATCH_PARAMS)
    if unknown:
        raise SimError(
            400, f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0]
        )
    if body.get("endpoint") not in BATCH_ENDPOINTS:
        allowed = ", ".join(BATCH_ENDPOINTS)
        raise SimError(400, f"endpoint must be one of {allowed}", param="endpoint")
    if body.get("completion_window") != "24h":
        raise SimError(400, "completion_window must be '24h'", param="completion_window")
    return body


@router.post("/v1/batches")
async def create_batch(request: Request) -> Response:
    state = sim_of(request)
    state.counters.requests["POST /v1/batches"] += 1
    try:
        if not state.authorized(request.headers):
            raise SimError(401, "Incorrect API key provided.")
        body = _check_batch(await read_json(request, state))
        source = _owned(request, state, "files", str(body.get("input_file_id")))
    except SimError as exc:
        return error_response(state, exc)
    now = time.time()
    batch: dict[str, Any] = {
        "id": new_id("batch_"),
        "object": "batch",
        "endpoint": body["endpoint"],
        "errors": None,
        "input_file_id": source["id"],
        "completion_window": "24h",
        "status": "in_progress",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": int(now),
        "in_progress_at": int(now),
        "expires_at": int(now) + 86400,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": body.get("metadata"),
        "_clock": JobClock.start(state),
    }
    _run_batch(state, batch, source["content"])
    state.stores["batches"][batch["id"]] = batch
    state.counters.batches["created"] += 1
    view = _batch_view(state, batch)
    if view["status"] == "in_progress":
        view["status"] = "validating"  # as the real API answers a create
    return JSONResponse(view)


@router.get("/v1/batches")
async def list_batches(request: Request, limit: int = 20, after: str | None = None) -> Response:
    """Newest first, ``limit`` (1 to 100) a page; ``after`` continues after that batch."""
    state = sim_of(request)
    state.counters.requests["GET /v1/batches"] += 1
    if not state.authorized(request.headers):
        return error_response(state, SimError(401, "Incorrect API key provided."))
    ids = list(reversed(state.stores["batches"]))
    start = ids.index(after) + 1 if after in ids else 0
    page = ids[start : start + max(1, min(limit, 100))]
    data = [_batch_view(state, state.stores["batches"][i]) for i in page]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": start + len(page) < len(ids),
        }
    )


@router.get("/v1/batches/{batch_id}")
async def retrieve_batch(request: Request, batch_id: str) -> Response:
    state = sim_of(request)
    state.counters.requests["GET /v1/batches/{id}"] += 1
    try:
        return JSONResponse(_batch_view(state, _owned(request, state, "batches", batch_id)))
    except SimError as exc:
        return error_response(state, exc)


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(request: Request, batch_id: str) -> Response:
    state = sim_of(request)
    state.counters.requests["POST /v1/batches/{id}/cancel"] += 1
    try:
        batch = _owned(request, state, "batches", batch_id)
    except SimError as exc:
        return error_response(state, exc)
    clock: JobClock = batch["_clock"]
    if batch["status"] == "in_progress" and clock.cancel(state, len(batch["_records"])):
        state.counters.batches["canceled"] += 1
        batch.update(status="cancelling", cancelling_at=int(time.time()))
    return JSONResponse(_batch_view(state, batch))
