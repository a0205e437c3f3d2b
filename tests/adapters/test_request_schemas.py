"""The bodies our adapters put on the wire match the vendors' published request types."""

from __future__ import annotations

import pytest
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
from anthropic.types.messages.batch_create_params import Request as BatchRequest
from openai.types import completion_create_params as completions
from openai.types.chat import completion_create_params as chat

from cjllm.provider.adapters import make_adapter
from cjllm.provider.adapters.anthropic import AnthropicAdapter
from cjllm.provider.adapters.openai import OpenAIAdapter
from cjllm.provider.pricing import load_price_table
from cjllm.settings import ProviderSettings
from tests.adapters.bundles import bundle
from tests.adapters.vendor_schemas import typed_dict_problems
from tests.sim.running import SimControl


@pytest.mark.parametrize("model", ["claude-sonnet-4-6", "claude-3-5-haiku-20241022"])
async def test_anthropic_bodies_match_the_sdks_typed_params(
    vendor_env: SimControl, model: str
) -> None:
    adapter = make_adapter("anthropic", ProviderSettings())
    try:
        await adapter.call_bundle(bundle(3, model=model, ttl="1h", temperature=0.5))
    finally:
        await adapter.aclose()
    body = vendor_env.last_call()["body"]
    assert typed_dict_problems(body, MessageCreateParamsNonStreaming) == []
    assert ("tools" in body) is (model == "claude-3-5-haiku-20241022")
    assert ("output_config" in body) is (model == "claude-sonnet-4-6")


def test_anthropic_batch_params_match_the_sdks_typed_params() -> None:
    adapter = AnthropicAdapter(model="claude-sonnet-4-6", prices=load_price_table(), api_key="k")
    call = bundle(2)
    request = {"custom_id": call.bundle_id, "params": adapter.request_params(call)}
    assert typed_dict_problems(request, BatchRequest) == []


def test_the_typed_params_check_catches_misspelt_and_misplaced_keys() -> None:
    body = {
        "model": "m",
        "max_tokens": 10,
        "temprature": 0.2,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "x", "cache_contrl": {}}]}
        ],
        "system": [
            {"type": "text", "text": "s", "cache_control": {"type": "ephemeral", "tll": "5m"}}
        ],
    }
    problems = "\n".join(typed_dict_problems(body, MessageCreateParamsNonStreaming))
    assert "body.temprature" in problems
    assert "cache_contrl" in problems
    assert "tll" in problems


async def test_openai_chat_bodies_match_the_sdks_typed_params(vendor_env: SimControl) -> None:
    adapter = make_adapter("openai", ProviderSettings())
    try:
        await adapter.call_bundle(bundle(3, temperature=0.5, max_tokens=200))
    finally:
        await adapter.aclose()
    body = vendor_env.last_call()["body"]
    assert typed_dict_problems(body, chat.CompletionCreateParamsNonStreaming) == []
    assert body["response_format"]["json_schema"]["strict"] is True


async def test_openai_prompt_list_bodies_match_the_sdks_typed_params(
    vendor_env: SimControl,
) -> None:
    adapter = make_adapter("openai", ProviderSettings(openai_completions_prompt_list=True))
    try:
        await adapter.call_bundle(bundle(3, temperature=0.5))
    finally:
        await adapter.aclose()
    body = vendor_env.last_call()["body"]
    assert typed_dict_problems(body, completions.CompletionCreateParamsNonStreaming) == []
    assert isinstance(body["prompt"], list) and len(body["prompt"]) == 3


def test_openai_batch_line_bodies_match_the_sdks_typed_params() -> None:
    adapter = OpenAIAdapter(model="gpt-4.1-mini", prices=load_price_table(), api_key="k")
    assert (
        typed_dict_problems(adapter.chat_body(bundle(2)), chat.CompletionCreateParamsNonStreaming)
        == []
    )


def test_the_openai_typed_params_check_catches_misspelt_and_misplaced_keys() -> None:
    body = {
        "model": "gpt-4.1-mini",
        "messages": [{"role": "user", "content": "hi", "nmae": "x"}],
        "max_completion_token": 10,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "n", "strict": True, "schemma": {}},
        },
    }
    problems = "\n".join(typed_dict_problems(body, chat.CompletionCreateParamsNonStreaming))
    assert "body.max_completion_token" in problems
    assert "nmae" in problems
    assert "schemma" in problems
