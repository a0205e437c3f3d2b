"""The OpenAI side of the simulated provider: chat completions, completions, files, batches.

``/v1/chat/completions`` answers a bundle in one choice. ``/v1/completions`` takes a prompt
or a list of prompts (the prompt-list mode of OpenAI-compatible servers such as vLLM) and
answers each in its own choice, ``index`` = the prompt's position. Unknown parameters are
rejected as the real API does. Errors use OpenAI's body (``{"error": {"message", "type",
"param", "code"}}``) and headers (``x-request-id``, ``retry-after``, ``retry-after-ms``);
an overloaded server answers 503.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from cjllm.sim.answers import Answer, Parsed, compose
from cjllm.sim.anthropic_api import read_json, sim_of
from cjllm.sim.faults import CALL_FAULTS, UNKNOWN_ID, draw
from cjllm.sim.state import SimError, SimState, Usage, new_id
from cjllm.sim.tokens import count_tokens

router = APIRouter()

CHAT_PARAMS = frozenset(
    {
        "messages", "model", "audio", "frequency_penalty", "function_call", "functions",
        "logit_bias", "logprobs", "max_completion_tokens", "max_tokens", "metadata",
        "modalities", "moderation", "n", "parallel_tool_calls", "prediction",
        "presence_penalty", "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention",
        "reasoning_effort", "response_format", "safety_identifier", "seed", "service_tier",
        "stop", "store", "stream", "stream_options", "temperature", "tool_choice", "tools",
        "top_logprobs", "top_p", "user", "verbosity", "web_search_options",
    }
)  # fmt: skip
COMPLETION_PARAMS = frozenset(
    {
        "model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs",
        "max_tokens", "n", "presence_penalty", "seed", "stop", "stream", "stream_options",
        "suffix", "temperature", "top_p", "user",
    }
)  # fmt: skip
ERROR_TYPES = {401: "invalid_request_error", 403: "permission_denied", 429: "requests"}
FINISH = {"end": "stop", "max_tokens": "length", "refusal": "stop"}
DEFAULT_MAX_TOKENS = 4096
BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
ONE_CHOICE_FAULTS = {"malformed_json", "refusal", "max_tokens", "invalid_item"}


def error_response(state: SimState, exc: SimError) -> JSONResponse:
    status = 503 if exc.status == 529 else exc.status
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    code = exc.code or ("invalid_api_key" if status == 401 else None)
    headers = {"x-request-id": new_id("req_")}
    if exc.retry_after is not None:
        headers["retry-after"] = str(math.ceil(exc.retry_after))
        headers["retry-after-ms"] = str(int(exc.retry_after * 1000))
    state.counters.responses[str(status)] += 1
    body = {"error": {"message": exc.message, "type": kind, "param": exc.param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _ratelimit_headers(state: SimState) -> dict[str, str]:
    limits = state.config.limits
    budget = state.limiter.budget(limits)
    reset = f"{budget.reset_seconds:.3f}s"
    headers: dict[str, str] = {}
    if limits.requests_per_minute is not None:
        headers["x-ratelimit-limit-requests"] = str(limits.requests_per_minute)
        headers["x-ratelimit-remaining-requests"] = str(budget.requests_left)
        headers["x-ratelimit-reset-requests"] = reset
    if limits.tokens_per_minute is not None:
        headers["x-ratelimit-limit-tokens"] = str(limits.tokens_per_minute)
        headers["x-ratelimit-remaining-tokens"] = str(budget.tokens_left)
        headers["x-ratelimit-reset-tokens"] = reset
    return headers


def _check_keys(body: Any, allowed: frozenset[str], required: tuple[str, ...]) -> None:
    if not isinstance(body, dict):
        raise SimError(400, "The request body must be a JSON object.")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise SimError(
            400, f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0]
        )
    for name in required:
        if name not in body:
            raise SimError(400, f"Missing required parameter: '{name}'.", param=name)
    if not isinstance(body["model"], str) or not body["model"]:
        raise SimError(400, "model must be a non-empty string", param="model")
    if body.get("stream"):
        raise SimError(400, "streaming is not simulated", param="stream")


def _content_text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    raise SimError(
        400, f"Invalid content in messages[{index}].", param=f"messages[{index}].content"
    )


def chat_prompt(body: dict[str, Any]) -> str:
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        raise SimError(400, "messages must be a non-empty array", param="messages")
    return "\n\n".join(
        f"{m.get('role')}: {_content_text(m.get('content'), i)}" if isinstance(m, dict) else ""
        for i, m in enumerate(messages)
    )


def _max_tokens(body: dict[str, Any]) -> int:
    value = body.get("max_completion_tokens", body.get("max_tokens")) or DEFAULT_MAX_TOKENS
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SimError(400, "max tokens must be a positive integer", param="max_tokens")
    return value


def _usage_json(usage: Usage) -> dict[str, Any]:
    prompt = usage.input + usage.cache_read
    return {
        "prompt_tokens": prompt,
        "completion_tokens": usage.output,
        "total_tokens": prompt + usage.output,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def build_chat(
    state: SimState, body: dict[str, Any], faults: set[str]
) -> tuple[dict[str, Any], Parsed, Usage]:
    prompt = chat_prompt(body)
    answer = compose(state.judge, prompt, max_tokens=_max_tokens(body), faults=faults)
    cached = state.cache.openai(body["model"], prompt)
    usage = Usage(
        input=count_tokens(prompt) - cached, output=answer.output_tokens, cache_read=cached
    )
    refused = answer.stop == "refusal"
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if refused else answer.text,
        "refusal": answer.text if refused else None,
        "annotations": [],
    }
    completion = {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": FINISH[answer.stop]}
        ],
        "usage": _usage_json(usage),
        "service_tier": "default",
        "system_fingerprint": "fp_cjllm_sim",
    }
    return completion, answer.items, usage


def _choice(index: int, answer: Answer) -> dict[str, Any]:
    finish = "content_filter" if answer.stop == "refusal" else FINISH[answer.stop]
    text = "" if answer.stop == "refusal" else answer.text
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}


def build_completion(
    state: SimState, body: dict[str, Any], faults: set[str]
) -> tuple[dict[str, Any], Parsed, Usage]:
    """Each prompt answered on its own; one prompt takes the one-answer faults, and the
    missing, duplicated and unknown faults act on the list of choices."""
    prompts = body["prompt"]
    prompts = [prompts] if isinstance(prompts, str) else prompts
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise SimError(400, "prompt must be a string or a list of strings", param="prompt")
    max_tokens = _max_tokens(body)
    choices: list[dict[str, Any]] = []
    items: Parsed = []
    usage = Usage(input=0, output=0)
    for i, prompt in enumerate(prompts):
        answer = compose(
            state.judge,
            prompt,
            max_tokens=max_tokens,
            faults=faults & ONE_CHOICE_FAULTS if i == 0 else set(),
        )
        cached = state.cache.openai(body["model"], prompt)
        usage.input += count_tokens(prompt) - cached
        usage.cache_read += cached
        usage.output += answer.output_tokens
        items += answer.items
        choices.append(_choice(i, answer))
    if "missing_item" in faults:
        choices.pop(len(choices) // 2)
    if "duplicate_id" in faults and choices:
        choices.append(dict(choices[-1]))
    if "unknown_id" in faults:
        stray = {
            "custom_id": UNKNOWN_ID,
            "winner": "Essay A",
            "justification": "x",
            "confidence": 3,
        }
        text = json.dumps({"comparisons": [stray]})
        choices.append(
            {"index": len(prompts), "text": text, "logprobs": None, "finish_reason": "stop"}
        )
    completion = {
        "id": new_id("cmpl-"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": choices,
        "usage": _usage_json(usage),
        "system_fingerprint": "fp_cjllm_sim",
    }
    return completion, items, usage


async def _answer(request: Request, endpoint: str, chat: bool) -> Response:
    state = sim_of(request)
    state.counters.requests[endpoint] += 1
    try:
        if not state.authorized(request.headers):
            raise SimError(401, "Incorrect API key provided.")
        body = await read_json(request, state)
        if chat:
            _check_keys(body, CHAT_PARAMS, ("model", "messages"))
            prompt_tokens = count_tokens(chat_prompt(body))
        else:
            _check_keys(body, COMPLETION_PARAMS, ("model", "prompt"))
            prompt_tokens = count_tokens(json.dumps(body["prompt"]))
        faults = state.gate(body["model"], prompt_tokens)
        build = build_chat if chat else build_completion
        completion, items, usage = build(state, body, faults)
    except SimError as exc:
        await asyncio.sleep(state.config.latency.per_call)
        return error_response(state, exc)
    state.limiter.spend(usage.input + usage.cache_read + usage.output)
    finish = ",".join(sorted({c["finish_reason"] for c in completion["choices"]}))
    state.record(
        endpoint,
        model=body["model"],
        items=items,
        usage=usage,
        faults=faults,
        stop=finish,
        body=body,
    )
    await asyncio.sleep(state.config.latency.seconds(len(items), usage.output))
    state.counters.responses["200"] += 1
    headers = {"x-request-id": new_id("req_"), **_ratelimit_headers(state)}
    return JSONResponse(completion, headers=headers)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _answer(request, "POST /v1/chat/completions", chat=True)


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await _answer(request, "POST /v1/completions", chat=False)


# --------------------------------------------------------------------------- files and batches


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
            _check_keys(body, CHAT_PARAMS, ("model", "messages"))
        else:
            _check_keys(body, COMPLETION_PARAMS, ("model", "prompt"))
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


def _run_batch(state: SimState, batch: dict[str, Any], content: bytes) -> None:
    """Answer every line of the input file now; the results show once the batch ends."""
    done: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for number, raw in enumerate(content.decode("utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
            custom_id, url, body = line["custom_id"], line["url"], line["body"]
        except (json.JSONDecodeError, KeyError, TypeError):
            error = {"code": "invalid_json_line", "message": "This line is not a valid request."}
            batch.update(status="failed", failed_at=int(time.time()))
            batch["errors"] = {"object": "list", "data": [{**error, "param": None, "line": number}]}
            return
        if url != batch["endpoint"]:
            status, response = 400, _error_json(SimError(400, f"url must be {batch['endpoint']}"))
        else:
            status, response = _run_line(state, body, url)
        record = {
            "id": new_id("batch_req_"),
            "custom_id": custom_id,
            "response": {"status_code": status, "request_id": new_id("req_"), "body": response},
            "error": None,
        }
        (done if status == 200 else failed).append(record)
    counts = {"total": len(done) + len(failed), "completed": len(done), "failed": len(failed)}
    batch["request_counts"] = counts
    batch["output_file_id"] = _store_file(state, "output.jsonl", "batch_output", _jsonl(done))["id"]
    if failed:
        errors = _store_file(state, "errors.jsonl", "batch_output", _jsonl(failed))
        batch["error_file_id"] = errors["id"]


def _batch_view(batch: dict[str, Any]) -> dict[str, Any]:
    """The Batch object as of now: in progress until ``batch_seconds`` have passed."""
    view = {k: v for k, v in batch.items() if not k.startswith("_")}
    ends = int(batch["_ends_at"])
    if view["status"] == "in_progress" and time.time() >= batch["_ends_at"]:
        view.update(status="completed", completed_at=ends, finalizing_at=ends)
    elif view["status"] != "failed":
        total = view["request_counts"]["total"]
        view.update(output_file_id=None, error_file_id=None)
        view["request_counts"] = {"total": total, "completed": 0, "failed": 0}
    return view


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
        "_ends_at": now + state.config.batch_seconds,
    }
    _run_batch(state, batch, source["content"])
    state.stores["batches"][batch["id"]] = batch
    state.counters.batches["created"] += 1
    return JSONResponse(_batch_view(batch))


@router.get("/v1/batches/{batch_id}")
async def retrieve_batch(request: Request, batch_id: str) -> Response:
    state = sim_of(request)
    state.counters.requests["GET /v1/batches/{id}"] += 1
    try:
        return JSONResponse(_batch_view(_owned(request, state, "batches", batch_id)))
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
    if _batch_view(batch)["status"] == "in_progress":
        now = int(time.time())
        batch.update(status="cancelled", cancelling_at=now, cancelled_at=now)
    return JSONResponse(_batch_view(batch))
