"""HTTP errors become ProviderCallError: retryable or not, with the provider's own words."""

from __future__ import annotations

from pathlib import Path

import pytest

from cjllm.provider.adapters import make_adapter
from cjllm.provider.adapters.anthropic import AnthropicAdapter
from cjllm.provider.adapters.openai import OpenAIAdapter
from cjllm.provider.adapters.vendor_errors import (
    MissingCredentials,
    retry_after_seconds,
    status_error,
)
from cjllm.provider.calls import LLMAdapter, ProviderCallError
from cjllm.provider.pricing import load_price_table
from cjllm.settings import ProviderSettings
from tests.adapters.bundles import bundle
from tests.services import free_port
from tests.sim.running import SimControl


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "bad_request"),
        (401, "authentication_failed"),
        (403, "permission_denied"),
        (404, "not_found"),
        (413, "request_too_large"),
    ],
)
async def test_client_errors_are_not_retryable_and_keep_the_providers_message(
    adapter: LLMAdapter, sim: SimControl, status: int, code: str
) -> None:
    sim.configure(forced_statuses=[status])
    with pytest.raises(ProviderCallError) as caught:
        await adapter.call_bundle(bundle(2))
    error = caught.value
    assert (error.status, error.code, error.retryable) == (status, code, False)
    assert error.details["provider_message"] == f"simulated HTTP {status}"
    assert error.details["provider"] == adapter.name
    assert error.details["request_id"]


@pytest.mark.parametrize("status", [500, 502, 503, 529])
async def test_server_errors_are_retryable(
    adapter: LLMAdapter, sim: SimControl, status: int
) -> None:
    sim.configure(forced_statuses=[status])
    with pytest.raises(ProviderCallError) as caught:
        await adapter.call_bundle(bundle(2))
    assert caught.value.retryable is True
    outcome = await adapter.call_bundle(bundle(2))  # the next call goes through
    assert len(outcome.reconciled.answers) == 2


async def test_requests_over_the_per_minute_limit_get_429_with_retry_after(
    adapter: LLMAdapter, sim: SimControl
) -> None:
    sim.configure(limits={"requests_per_minute": 2})
    await adapter.call_bundle(bundle(1))
    await adapter.call_bundle(bundle(1))
    with pytest.raises(ProviderCallError) as caught:
        await adapter.call_bundle(bundle(1))
    error = caught.value
    assert (error.code, error.status, error.retryable) == ("rate_limited", 429, True)
    assert error.retry_after is not None and 1.0 <= error.retry_after <= 60.0
    assert sim.counters()["responses"]["429"] == 1


async def test_a_call_bigger_than_the_token_limit_waits_a_whole_window(
    adapter: LLMAdapter, sim: SimControl
) -> None:
    sim.configure(limits={"tokens_per_minute": 100})
    with pytest.raises(ProviderCallError) as caught:
        await adapter.call_bundle(bundle(2))
    assert caught.value.code == "rate_limited"
    assert caught.value.retry_after == 60.0


async def test_a_wrong_api_key_is_an_authentication_failure(
    adapter: LLMAdapter, sim: SimControl
) -> None:
    sim.configure(api_key="the-right-key")
    with pytest.raises(ProviderCallError) as caught:
        await adapter.call_bundle(bundle(1))
    assert (caught.value.status, caught.value.code) == (401, "authentication_failed")
    assert caught.value.retryable is False


async def test_an_unknown_model_is_not_found(adapter: LLMAdapter, sim: SimControl) -> None:
    sim.configure(known_models=["some-other-model"])
    with pytest.raises(ProviderCallError) as caught:
        await adapter.call_bundle(bundle(1))
    assert (caught.value.status, caught.value.code) == (404, "not_found")
    assert "model" in caught.value.details["provider_message"]


async def test_an_oversized_request_is_413(adapter: LLMAdapter, sim: SimControl) -> None:
    sim.configure(max_request_bytes=2000)
    with pytest.raises(ProviderCallError) as caught:
        await adapter.call_bundle(bundle(3))
    assert (caught.value.status, caught.value.code) == (413, "request_too_large")


@pytest.mark.parametrize("vendor", ["anthropic", "openai"])
async def test_an_unreachable_provider_is_a_retryable_connection_error(
    vendor: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", closed)
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    monkeypatch.setenv("OPENAI_BASE_URL", closed + "/v1")
    adapter = make_adapter(vendor, ProviderSettings())
    try:
        with pytest.raises(ProviderCallError) as caught:
            await adapter.call_bundle(bundle(1))
    finally:
        await adapter.aclose()
    assert (caught.value.code, caught.value.retryable) == ("connection_error", True)


def test_no_key_and_no_server_is_a_clear_configuration_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN",
                 "ANTHROPIC_BASE_URL", "ANTHROPIC_PROFILE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ANTHROPIC_CONFIG_DIR", str(tmp_path))  # no credential profiles
    with pytest.raises(MissingCredentials, match="OPENAI_API_KEY"):
        OpenAIAdapter(model="gpt-4.1-mini", prices=load_price_table())
    with pytest.raises(MissingCredentials, match="anthropic"):
        AnthropicAdapter(model="claude-sonnet-4-6", prices=load_price_table())


@pytest.mark.parametrize("vendor", ["anthropic", "openai"])
async def test_a_keyless_compatible_server_needs_only_its_base_url(
    vendor: str, vendor_env: SimControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(f"{vendor.upper()}_API_KEY")
    adapter = make_adapter(vendor, ProviderSettings())
    try:
        outcome = await adapter.call_bundle(bundle(1))
    finally:
        await adapter.aclose()
    assert len(outcome.reconciled.answers) == 1


@pytest.mark.parametrize(
    ("status", "message", "code", "expected", "retryable"),
    [
        (429, "You exceeded your current quota", "insufficient_quota", "insufficient_quota", False),
        (
            400,
            "Your credit balance is too low to access the Anthropic API.",
            None,
            "insufficient_quota",
            False,
        ),
        (429, "rate limit of 50 requests per minute", "rate_limit_exceeded", "rate_limited", True),
        (
            400,
            "prompt is too long: 210000 tokens > 200000 maximum",
            None,
            "context_window_exceeded",
            False,
        ),
        (
            400,
            "This model's maximum context length is 8192 tokens",
            "context_length_exceeded",
            "context_window_exceeded",
            False,
        ),
        (408, "timeout", None, "timeout", True),
        (409, "conflict", None, "conflict", True),
        (402, "billing", None, "payment_required", False),
        (418, "teapot", None, "client_error", False),
    ],
)
def test_status_classification(
    status: int, message: str, code: str | None, expected: str, retryable: bool
) -> None:
    error = status_error("openai", status, message=message, headers={}, error_code=code)
    assert (error.code, error.retryable, error.status) == (expected, retryable, status)
    assert error.details["provider_message"] == message


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "12"}, 12.0),
        ({"retry-after": "0.25"}, 0.25),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a past date: retry now
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_is_read_from_the_headers(
    headers: dict[str, str], seconds: float | None
) -> None:
    assert retry_after_seconds(headers) == seconds
