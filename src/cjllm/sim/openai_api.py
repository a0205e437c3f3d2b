"""The OpenAI side of the simulated provider: chat completions and completions.

``/v1/chat/completions`` answers a bundle in one choice. ``/v1/completions`` takes a prompt
or a list of prompts (the prompt-list mode of OpenAI-compatible servers such as vLLM) and
answers each in its own choice, ``index`` = the prompt's position. Unknown parameters are
rejected as the real API does; a ``response_format`` the imitated server does not take is
refused as that server refuses it (:mod:`cjllm.sim.servers`). Errors use OpenAI's body
(``{"error": {"message", "type", "param", "code"}}``) and headers (``x-request-id``,
``retry-after``, ``retry-after-ms``); an overloaded server answers 503. Every model-call
answer, 429s included, carries the ``x-ratelimit-*`` headers.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from cjllm.sim.answers import Answer, Parsed, compose
from cjllm.sim.faults import UNKNOWN_ID
from cjllm.sim.limits import Need, openai_headers
from cjllm.sim.servers import check_response_format
from cjllm.sim.state import SimError, SimState, Usage, new_id, read_json, sim_of
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
ONE_CHOICE_FAULTS = {"malformed_json", "refusal", "max_tokens", "invalid_item"}


def error_response(state: SimState, exc: SimError, *, limits: bool = False) -> JSONResponse:
    """An error answer; ``limits`` adds the rate-limit headers (model calls carry them)."""
    status = 503 if exc.status == 529 else exc.status
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    code = exc.code or ("invalid_api_key" if status == 401 else None)
    headers = {"x-request-id": new_id("req_")}
    if limits:
        headers.update(openai_headers(state.rate_levels()))
    if exc.retry_after is not None:
        headers["retry-after"] = str(math.ceil(exc.retry_after))
        headers["retry-after-ms"] = str(int(exc.retry_after * 1000))
    state.counters.responses[str(status)] += 1
    body = {"error": {"message": exc.message, "type": kind, "param": exc.param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def check_keys(body: Any, allowed: frozenset[str], required: tuple[str, ...]) -> None:
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
    answer = compose(
        state.judge, prompt, max_tokens=_max_tokens(body), faults=faults, drop=state.drop_item
    )
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
            check_keys(body, CHAT_PARAMS, ("model", "messages"))
            check_response_format(state.config.openai_server, body)
            prompt_tokens = count_tokens(chat_prompt(body))
            reserved = _max_tokens(body)
        else:
            check_keys(body, COMPLETION_PARAMS, ("model", "prompt"))
            prompt_tokens = count_tokens(json.dumps(body["prompt"]))
            prompts = body["prompt"]
            reserved = _max_tokens(body) * (len(prompts) if isinstance(prompts, list) else 1)
        # OpenAI's token limit counts cached input tokens too
        faults = state.gate(body["model"], Need(prompt_tokens, reserved))
        build = build_chat if chat else build_completion
        completion, items, usage = build(state, body, faults)
    except SimError as exc:
        await asyncio.sleep(state.config.latency.per_call)
        return error_response(state, exc, limits=True)
    state.limiter.correct(state.config.limits, reserved, usage.output)
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
    await asyncio.sleep(state.answer_delay(len(items), usage.output, faults))
    state.counters.responses["200"] += 1
    headers = {"x-request-id": new_id("req_"), **openai_headers(state.rate_levels())}
    return JSONResponse(completion, headers=headers)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _answer(request, "POST /v1/chat/completions", chat=True)


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await _answer(request, "POST /v1/completions", chat=False)
