"""The Anthropic side of the simulated provider: ``POST /v1/messages``.

Request checks follow the real API where our adapters could trip them: unknown top-level
parameters are rejected (sampling parameters included), at most four ``cache_control``
breakpoints, and no one-hour breakpoint after a five-minute one. Errors use Anthropic's
body (``{"type": "error", "error": {"type", "message"}, "request_id"}``) and headers
(``request-id``, ``retry-after``; 529 for ``overloaded_error``). Every ``/v1/messages``
answer, 429s included, carries the ``anthropic-ratelimit-*`` headers.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from cjllm.sim.answers import Answer, compose
from cjllm.sim.limits import Need, anthropic_headers
from cjllm.sim.state import SimError, SimState, Usage, new_id, read_json, sim_of
from cjllm.sim.tokens import count_tokens

router = APIRouter()

MESSAGE_PARAMS = frozenset(
    {
        "model", "max_tokens", "messages", "system", "metadata", "stop_sequences", "stream",
        "output_config", "tools", "tool_choice", "thinking", "service_tier", "cache_control",
        "container", "diagnostics", "inference_geo", "speed",
    }
)  # fmt: skip
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
STOP_REASONS = {"end": "end_turn", "max_tokens": "max_tokens", "refusal": "refusal"}


def error_body(exc: SimError, request_id: str) -> dict[str, Any]:
    kind = ERROR_TYPES.get(
        exc.status, "api_error" if exc.status >= 500 else "invalid_request_error"
    )
    return {
        "type": "error",
        "error": {"type": kind, "message": exc.message},
        "request_id": request_id,
    }


CREDIT_TOO_LOW = (
    "Your credit balance is too low to access the Anthropic API. Please go to Plans & "
    "Billing to upgrade or purchase credits."
)


def error_response(state: SimState, exc: SimError, *, limits: bool = False) -> JSONResponse:
    """An error answer; ``limits`` adds the rate-limit headers (model calls carry them).
    An account out of credit is Anthropic's 400 ``invalid_request_error``."""
    if exc.code == "insufficient_quota":
        exc = SimError(400, CREDIT_TOO_LOW)
    request_id = new_id("req_")
    headers = {"request-id": request_id}
    if limits:
        headers.update(anthropic_headers(state.rate_levels()))
    if exc.retry_after is not None:
        headers["retry-after"] = str(math.ceil(exc.retry_after))
    state.counters.responses[str(exc.status)] += 1
    return JSONResponse(error_body(exc, request_id), status_code=exc.status, headers=headers)


def _blocks(value: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"type": "text", "text": value}]
    if not isinstance(value, list) or not all(isinstance(b, dict) for b in value):
        raise SimError(400, f"{where}: Input should be a string or a list of content blocks")
    return value


def prompt_blocks(body: dict[str, Any]) -> list[tuple[str, str | None]]:
    """The request's text in prompt order (tools, system, messages), with breakpoint TTLs."""
    out: list[tuple[str, str | None]] = []
    for tool in body.get("tools") or []:
        out.append((json.dumps(tool, sort_keys=True), None))
    system = body.get("system")
    sources = [_blocks(system, "system")] if system is not None else []
    sources += [_blocks(m.get("content"), "messages.content") for m in body["messages"]]
    for blocks in sources:
        for block in blocks:
            text = block.get("text") if block.get("type") == "text" else json.dumps(block)
            control = block.get("cache_control")
            ttl = control.get("ttl", "5m") if isinstance(control, dict) else None
            out.append((str(text), ttl))
    return out


def check_params(body: Any, where: str = "") -> None:
    """400 for what the real API would refuse in the requests our adapters make."""
    if not isinstance(body, dict):
        raise SimError(400, f"{where or 'body'}: Input should be an object")
    unknown = sorted(set(body) - MESSAGE_PARAMS)
    if unknown:
        raise SimError(400, f"{where}{unknown[0]}: Extra inputs are not permitted")
    model, max_tokens, messages = body.get("model"), body.get("max_tokens"), body.get("messages")
    if not isinstance(model, str) or not model:
        raise SimError(400, f"{where}model: Field required")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise SimError(400, f"{where}max_tokens: Input should be a positive integer")
    if not isinstance(messages, list) or not messages:
        raise SimError(400, f"{where}messages: at least one message is required")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise SimError(400, f"{where}messages.{i}.role: Input should be 'user' or 'assistant'")
    ttls = [ttl for _, ttl in prompt_blocks(body) if ttl is not None]
    if len(ttls) > 4:
        raise SimError(
            400, f"A maximum of 4 blocks with cache_control may be provided. Found {len(ttls)}."
        )
    if any(a == "5m" and b == "1h" for a, b in itertools.pairwise(ttls)):
        raise SimError(
            400, "a ttl='1h' cache_control block must not come after a ttl='5m' cache_control block"
        )
    fmt = (body.get("output_config") or {}).get("format")
    if fmt is not None and (
        fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict)
    ):
        raise SimError(400, f"{where}output_config.format: a json_schema with a schema is required")
    if body.get("stream"):
        raise SimError(400, f"{where}stream: streaming is not simulated")


def forced_tool(body: dict[str, Any]) -> str | None:
    choice = body.get("tool_choice")
    return choice.get("name") if isinstance(choice, dict) and choice.get("type") == "tool" else None


def build_message(
    state: SimState, body: dict[str, Any], faults: set[str]
) -> tuple[dict[str, Any], Answer, Usage]:
    model = body["model"]
    blocks = prompt_blocks(body)
    prompt = "\n\n".join(text for text, _ in blocks)
    answer = compose(
        state.judge, prompt, max_tokens=body["max_tokens"], faults=faults, drop=state.drop_item
    )
    cache = state.cache.anthropic(model, blocks)
    usage = Usage(
        input=max(0, count_tokens(prompt) - cache.read - cache.written),
        output=answer.output_tokens,
        cache_creation=cache.written,
        cache_read=cache.read,
        cache_creation_1h=cache.written_1h,
    )
    stop = STOP_REASONS[answer.stop]
    tool = forced_tool(body)
    content: list[dict[str, Any]]
    if tool is not None and answer.stop != "refusal":
        given = {"comparisons": answer.entries} if "malformed_json" not in faults else {}
        content = [{"type": "tool_use", "id": new_id("toolu_"), "name": tool, "input": given}]
        stop = "tool_use" if answer.stop == "end" else stop
    else:
        content = [{"type": "text", "text": answer.text}]
    message = {
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "stop_details": {"type": "refusal", "category": None, "explanation": answer.text}
        if stop == "refusal"
        else None,
        "usage": {
            "input_tokens": usage.input,
            "output_tokens": usage.output,
            "cache_creation_input_tokens": usage.cache_creation,
            "cache_read_input_tokens": usage.cache_read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": cache.written_5m,
                "ephemeral_1h_input_tokens": cache.written_1h,
            },
            "service_tier": "standard",
        },
    }
    return message, answer, usage


def uncached_tokens(state: SimState, body: dict[str, Any]) -> int:
    """The input tokens the input-token limit counts: all but cache reads."""
    blocks = prompt_blocks(body)
    total = count_tokens("\n\n".join(t for t, _ in blocks))
    return max(0, total - state.cache.anthropic(body["model"], blocks, remember=False).read)


async def admit(request: Request, state: SimState) -> Any:
    if not state.authorized(request.headers):
        raise SimError(401, "invalid x-api-key")
    if "anthropic-version" not in request.headers:
        raise SimError(400, "anthropic-version: header is required")
    return await read_json(request, state)


@router.post("/v1/messages")
async def create_message(request: Request) -> Response:
    state = sim_of(request)
    state.counters.requests["POST /v1/messages"] += 1
    try:
        body = await admit(request, state)
        check_params(body)
        faults = state.gate(body["model"], Need(uncached_tokens(state, body), body["max_tokens"]))
        message, answer, usage = build_message(state, body, faults)
    except SimError as exc:
        await asyncio.sleep(state.config.latency.per_call)
        return error_response(state, exc, limits=True)
    state.limiter.correct(state.config.limits, body["max_tokens"], usage.output)
    state.record(
        "POST /v1/messages",
        model=body["model"],
        items=answer.items,
        usage=usage,
        faults=faults,
        stop=message["stop_reason"],
        body=body,
    )
    await asyncio.sleep(state.answer_delay(len(answer.custom_ids), usage.output, faults))
    state.counters.responses["200"] += 1
    headers = {"request-id": new_id("req_"), **anthropic_headers(state.rate_levels())}
    return JSONResponse(message, headers=headers)
