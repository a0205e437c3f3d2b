"""Output-mode negotiation through the openai SDK against the sim imitating each server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cjllm.provider.adapters.openai import OpenAIAdapter
from cjllm.provider.calls import ProviderCallError
from cjllm.provider.queue import Queue, queue_from_url
from cjllm.settings import ProviderSettings
from tests.adapters.bundles import bundle, ids
from tests.provider.conftest import queue_url
from tests.sim.running import SimControl

MODEL = "local-model"


def adapter(**settings: Any) -> OpenAIAdapter:
    return OpenAIAdapter.from_settings(ProviderSettings(**settings))


def refusals(sim: SimControl) -> dict[str, int]:
    return {k: v for k, v in sim.counters()["responses"].items() if k != "200"}


@pytest.fixture
async def openai(vendor_env: SimControl) -> AsyncIterator[OpenAIAdapter]:
    built = OpenAIAdapter.from_settings(ProviderSettings())
    yield built
    await built.aclose()


@pytest.mark.parametrize(
    ("server", "settled", "refused"),
    [
        ("openai", "json_schema", {}),
        ("vllm", "json_schema", {}),
        ("ollama", "json_schema", {}),
        ("llama_cpp", "json_schema", {}),
        ("lm_studio", "json_schema", {}),
        ("llama_cpp_python", "json_object_schema", {"500": 1}),
        ("json_object_only", "json_object", {"400": 1, "422": 1}),
        ("text_only", "text", {"422": 3}),
    ],
)
async def test_each_server_is_met_on_the_best_mode_it_accepts_at_no_cost(
    openai: OpenAIAdapter, sim: SimControl, server: str, settled: str, refused: dict[str, int]
) -> None:
    sim.configure(openai_server=server)
    call = bundle(3, model=MODEL)
    outcome = await openai.call_bundle(call)  # one call: the refusals cost no failed try
    assert set(outcome.reconciled.answers) == ids(call)
    assert outcome.details["output_mode"] == settled
    assert openai.output_mode(MODEL) == settled
    assert refusals(sim) == refused
    assert sim.counters()["calls"] == 1


@pytest.mark.parametrize(
    ("mode", "response_format", "schema_in_prompt"),
    [
        ("json_schema", "json_schema", False),
        ("json_object_schema", "json_object", False),
        ("json_object", "json_object", True),
        ("text", None, True),
    ],
)
async def test_each_rung_sends_its_dialect(
    vendor_env: SimControl, mode: str, response_format: str | None, schema_in_prompt: bool
) -> None:
    forced = adapter(openai_output_mode=mode)
    call = bundle(2, model=MODEL)
    try:
        await forced.call_bundle(call)
    finally:
        await forced.aclose()
    body = vendor_env.last_call()["body"]
    sent = body.get("response_format")
    assert (sent or {}).get("type") == response_format
    prompt = body["messages"][-1]["content"]
    assert ("must match this JSON schema" in prompt) is schema_in_prompt
    # compatible servers differ in which max-token field they read: both are sent
    assert body["max_tokens"] == body["max_completion_tokens"] == 2 * 400 + 64
    schema = (
        sent.get("schema") or sent.get("json_schema", {}).get("schema")
        if sent and mode != "json_object"
        else None
    )
    if schema is not None:  # a local server gets the schema narrowed to the call's ids
        entry = schema["properties"]["comparisons"]["items"]
        assert entry["properties"]["custom_id"]["enum"] == sorted(ids(call))


async def test_the_mode_is_remembered_for_the_process(
    openai: OpenAIAdapter, sim: SimControl
) -> None:
    sim.configure(openai_server="json_object_only")
    await openai.call_bundle(bundle(2, model=MODEL))
    assert refusals(sim) == {"400": 1, "422": 1}
    await openai.call_bundle(bundle(2, model=MODEL, prefix="again"))
    assert refusals(sim) == {"400": 1, "422": 1}  # no new refusal
    assert sim.last_call()["body"]["response_format"] == {"type": "json_object"}


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_mode_learned_by_one_worker_is_where_the_next_starts(
    vendor_env: SimControl, backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store: Queue = queue_from_url(
        queue_url(backend, tmp_path, request), max_items=10, max_bytes=10**6
    )
    first, second = (
        OpenAIAdapter.from_settings(ProviderSettings(), store),
        OpenAIAdapter.from_settings(ProviderSettings(), store),
    )
    try:
        vendor_env.configure(openai_server="llama_cpp_python")
        await first.call_bundle(bundle(2, model=MODEL))
        assert refusals(vendor_env) == {"500": 1}
        outcome = await second.call_bundle(bundle(2, model=MODEL, prefix="other"))
        assert outcome.details["output_mode"] == "json_object_schema"
        assert refusals(vendor_env) == {"500": 1}  # the second worker was not refused
        other_model = await second.call_bundle(bundle(2, model="another-model"))
        assert other_model.details["output_mode"] == "json_object_schema"
        assert refusals(vendor_env) == {"500": 2}  # learned per model
    finally:
        await first.aclose()
        await second.aclose()
        await store.close()


async def test_a_forced_mode_is_never_left(vendor_env: SimControl) -> None:
    vendor_env.configure(openai_server="llama_cpp_python")
    forced = adapter(openai_output_mode="json_schema")
    try:
        with pytest.raises(ProviderCallError) as caught:
            await forced.call_bundle(bundle(2, model=MODEL))
    finally:
        await forced.aclose()
    assert caught.value.status == 500
    assert caught.value.retryable  # an ordinary server error, retried with backoff
    assert forced.output_mode(MODEL) == "json_schema"


async def test_an_error_not_naming_response_format_moves_no_rung(
    openai: OpenAIAdapter, sim: SimControl
) -> None:
    sim.configure(forced_statuses=[500, 400])
    for status in (500, 400):
        with pytest.raises(ProviderCallError) as caught:
            await openai.call_bundle(bundle(2, model=MODEL))
        assert caught.value.status == status
    assert openai.output_mode(MODEL) == "json_schema"


async def test_when_every_rung_is_refused_the_refusal_is_the_error(
    openai: OpenAIAdapter, sim: SimControl
) -> None:
    sim.configure(openai_server="text_only")
    await openai.call_bundle(bundle(2, model=MODEL))
    assert openai.output_mode(MODEL) == "text"
    # the bottom rung sends no response_format, so there is nothing left to refuse
    assert "response_format" not in sim.last_call()["body"]


async def test_a_fenced_answer_in_text_mode_is_read(
    vendor_env: SimControl,
) -> None:
    vendor_env.configure(openai_server="text_only", faults={"fenced_json": 1.0})
    plain = adapter(openai_output_mode="text")
    try:
        outcome = await plain.call_bundle(bundle(3, model=MODEL))
    finally:
        await plain.aclose()
    assert len(outcome.reconciled.answers) == 3
    answer = vendor_env.calls(1)[-1]
    assert answer["faults"] == ["fenced_json"]
    assert json.dumps(answer["body"]).count("response_format") == 0
