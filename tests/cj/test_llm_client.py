"""The provider client: retries what is transient, gives up cleanly, bounds concurrency."""

from __future__ import annotations

import asyncio
import uuid
from email.utils import format_datetime

import httpx
import pytest

from cjllm.cj.llm_client import (
    Accepted,
    Direct,
    ProviderClient,
    Refused,
    Reply,
    retry_after_seconds,
)
from cjllm.contracts import ComparisonRequest, LLMConfigOverrides, PromptBlock, utcnow
from tests.cj.stub_provider import StubProvider


def _request() -> ComparisonRequest:
    return ComparisonRequest(
        prompt_blocks=[
            PromptBlock(target="user_content", content="Essay one"),
            PromptBlock(target="user_content", content="Essay two"),
        ],
        callback_topic="t",
        correlation_id=uuid.uuid4(),
        llm_config_overrides=LLMConfigOverrides(provider_override="mock"),
    )


def _client(
    transport: httpx.AsyncBaseTransport, *, retries: int = 3, concurrency: int = 8
) -> ProviderClient:
    http = httpx.AsyncClient(transport=transport, base_url="http://provider")
    return ProviderClient(http, max_concurrency=concurrency, retries=retries, backoff_seconds=0)


async def test_503_with_retry_after_is_retried_until_accepted() -> None:
    stub = StubProvider(answer=None, fail_first=2, status=503, retry_after="0")
    client = _client(httpx.ASGITransport(app=stub.app()))
    outcome = await client.submit(_request())
    assert isinstance(outcome, Accepted)
    assert outcome.queue_id == str(stub.received[0].queue_id)
    assert stub.posts == 3 and len(stub.received) == 1


async def test_retry_after_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    real_sleep = asyncio.sleep
    submitting: asyncio.Task[Accepted | Refused] | None = None

    async def sleep(delay: float) -> None:
        # the patch is process-wide (asyncio.sleep itself): every other sleeper (a
        # simulator's thread, a session fixture's task) keeps its real sleep
        if asyncio.current_task() is not submitting:
            await real_sleep(delay)
            return
        waits.append(delay)
        await real_sleep(0)

    monkeypatch.setattr("cjllm.cj.llm_client.asyncio.sleep", sleep)
    stub = StubProvider(answer=None, fail_first=1, status=503, retry_after="7")
    client = _client(httpx.ASGITransport(app=stub.app()))
    submitting = asyncio.create_task(client.submit(_request()))
    assert isinstance(await submitting, Accepted)
    assert waits == [7.0]


@pytest.mark.parametrize("status", [400, 401, 413, 422])
async def test_client_errors_are_final_at_once(status: int) -> None:
    stub = StubProvider(answer=None, fail_first=5, status=status, retry_after=None)
    client = _client(httpx.ASGITransport(app=stub.app()))
    outcome = await client.submit(_request())
    assert isinstance(outcome, Refused) and outcome.error_code == f"http_{status}"
    assert "busy" in outcome.message
    assert stub.posts == 1


async def test_connection_errors_exhaust_retries_and_refuse() -> None:
    calls = 0

    def refuse(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("connection refused", request=request)

    client = _client(httpx.MockTransport(refuse), retries=2)
    outcome = await client.submit(_request())
    assert isinstance(outcome, Refused) and outcome.error_code == "submission_failed"
    assert "ConnectError" in outcome.message and "3 tries" in outcome.message
    assert calls == 3


async def test_concurrent_submissions_are_bounded() -> None:
    stub = StubProvider(answer=None, gate=asyncio.Event())
    client = _client(httpx.ASGITransport(app=stub.app()), concurrency=3)
    pending = asyncio.gather(*(client.submit(_request()) for _ in range(10)))
    for _ in range(50):
        await asyncio.sleep(0)
    assert stub.in_flight == 3
    assert stub.gate is not None
    stub.gate.set()
    outcomes = await pending
    assert all(isinstance(o, Accepted) for o in outcomes)
    assert stub.max_in_flight == 3


def test_retry_after_header_forms() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    later = utcnow().replace(microsecond=0)
    seconds = retry_after_seconds(format_datetime(later, usegmt=True))
    assert seconds is not None and seconds <= 1.0


async def test_a_direct_provider_is_retried_on_503_and_refused_on_4xx_as_over_http() -> None:
    answers = [Reply(503, detail="queue full", retry_after=0.0)] * 2 + [Reply(202, "q-1")]

    async def submit(_: ComparisonRequest) -> Reply:
        return answers.pop(0)

    async def cancel(_: str) -> bool:
        return True

    client = ProviderClient(
        None, max_concurrency=2, backoff_seconds=0, direct=Direct(submit, cancel)
    )
    assert await client.submit(_request()) == Accepted("q-1")
    assert client.requests_sent == 3
    answers[:] = [Reply(400, detail="unknown provider")]
    refused = await client.submit(_request())
    assert refused == Refused("http_400", "HTTP 400: unknown provider")
    assert await client.cancel("batch-1")
