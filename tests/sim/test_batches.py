"""Batch endpoints of the sim through the real SDKs: Anthropic Message Batches, OpenAI Batch."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import anthropic
import openai
import pytest

from cjllm.provider.adapters.anthropic import AnthropicAdapter
from cjllm.provider.adapters.openai import OpenAIAdapter
from cjllm.provider.answers import reconcile
from cjllm.settings import ProviderSettings
from tests.adapters.bundles import bundle, ids
from tests.sim.running import SimControl


@pytest.fixture
async def claude(vendor_env: SimControl) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(max_retries=0)
    yield client
    await client.close()


@pytest.fixture
async def gpt(vendor_env: SimControl) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(max_retries=0)
    yield client
    await client.close()


def anthropic_requests(n_bundles: int) -> tuple[list[dict[str, object]], list[set[str]]]:
    adapter = AnthropicAdapter.from_settings(ProviderSettings())
    calls = [bundle(3, prefix=f"b{n}") for n in range(n_bundles)]
    requests = [
        {"custom_id": f"bundle-{n}", "params": adapter.request_params(c)}
        for n, c in enumerate(calls)
    ]
    return requests, [ids(c) for c in calls]


async def test_a_message_batch_answers_every_bundle(
    claude: anthropic.AsyncAnthropic, sim: SimControl
) -> None:
    requests, sent = anthropic_requests(3)
    batch = await claude.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    assert batch.processing_status == "ended"  # batch_seconds = 0
    batch = await claude.messages.batches.retrieve(batch.id)
    assert batch.request_counts.succeeded == 3 and batch.results_url
    results = {r.custom_id: r async for r in await claude.messages.batches.results(batch.id)}
    assert set(results) == {"bundle-0", "bundle-1", "bundle-2"}
    for n, expected in enumerate(sent):
        result = results[f"bundle-{n}"].result
        assert result.type == "succeeded"
        text = result.message.content[0].text  # type: ignore[union-attr]
        assert set(reconcile(sorted(expected), text).answers) == expected
    assert sim.counters()["batches"] == {
        "created": 1,
        "requests": 3,
        "items": 9,
        "expired": 0,
        "canceled": 0,
    }
    assert sim.counters()["calls"] == 0


async def test_a_message_batch_in_progress_has_no_results_and_can_be_canceled(
    claude: anthropic.AsyncAnthropic, sim: SimControl
) -> None:
    sim.configure(batch_seconds=3600)
    requests, _ = anthropic_requests(2)
    batch = await claude.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    assert batch.processing_status == "in_progress" and batch.results_url is None
    assert batch.request_counts.processing == 2
    with pytest.raises(anthropic.AnthropicError, match="results_url"):
        await claude.messages.batches.results(batch.id)
    early = sim.http.get(f"/v1/messages/batches/{batch.id}/results", headers={"x-api-key": "k"})
    assert early.status_code == 400 and early.json()["error"]["type"] == "invalid_request_error"
    canceled = await claude.messages.batches.cancel(batch.id)
    assert canceled.processing_status == "ended"
    assert canceled.request_counts.canceled == 2
    listed = await claude.messages.batches.list()
    assert [b.id for b in listed.data] == [batch.id]


async def test_message_batch_faults_become_errored_results(
    claude: anthropic.AsyncAnthropic, sim: SimControl
) -> None:
    sim.configure(faults={"overloaded": 1.0})
    requests, _ = anthropic_requests(2)
    batch = await claude.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    assert batch.request_counts.errored == 2
    async for line in await claude.messages.batches.results(batch.id):
        assert line.result.type == "errored"
        assert line.result.error.error.type == "overloaded_error"  # type: ignore[union-attr]


async def test_an_unknown_message_batch_is_not_found(claude: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.NotFoundError):
        await claude.messages.batches.retrieve("msgbatch_nope")


def openai_lines(n_bundles: int) -> tuple[bytes, list[set[str]]]:
    adapter = OpenAIAdapter.from_settings(ProviderSettings())
    calls = [bundle(3, prefix=f"o{n}") for n in range(n_bundles)]
    lines = [
        {
            "custom_id": f"bundle-{n}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": adapter.chat_body(c),
        }
        for n, c in enumerate(calls)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode(), [ids(c) for c in calls]


async def test_an_openai_batch_answers_every_line(gpt: openai.AsyncOpenAI, sim: SimControl) -> None:
    content, sent = openai_lines(3)
    upload = await gpt.files.create(file=("requests.jsonl", content), purpose="batch")
    assert (upload.purpose, upload.bytes) == ("batch", len(content))
    batch = await gpt.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = await gpt.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.output_file_id
    assert batch.request_counts is not None and batch.request_counts.completed == 3
    output = await gpt.files.content(batch.output_file_id)
    lines = [json.loads(raw) for raw in output.text.splitlines()]
    assert sorted(line["custom_id"] for line in lines) == ["bundle-0", "bundle-1", "bundle-2"]
    for line in lines:
        n = int(line["custom_id"].split("-")[1])
        assert line["response"]["status_code"] == 200
        text = line["response"]["body"]["choices"][0]["message"]["content"]
        assert set(reconcile(sorted(sent[n]), text).answers) == sent[n]
    assert sim.counters()["batches"] == {
        "created": 1,
        "requests": 3,
        "items": 9,
        "expired": 0,
        "canceled": 0,
    }


async def test_failed_batch_lines_go_to_the_error_file(
    gpt: openai.AsyncOpenAI, sim: SimControl
) -> None:
    sim.configure(faults={"server_error": 1.0})
    content, _ = openai_lines(2)
    upload = await gpt.files.create(file=("requests.jsonl", content), purpose="batch")
    batch = await gpt.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.request_counts is not None and batch.request_counts.failed == 2
    assert batch.error_file_id
    errors = await gpt.files.content(batch.error_file_id)
    for raw in errors.text.splitlines():
        assert json.loads(raw)["response"]["status_code"] == 500


async def test_a_batch_with_an_unreadable_line_fails(gpt: openai.AsyncOpenAI) -> None:
    upload = await gpt.files.create(file=("requests.jsonl", b"{not json\n"), purpose="batch")
    batch = await gpt.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "failed"
    assert batch.errors is not None and batch.errors.data
    assert batch.errors.data[0].line == 1


async def test_an_openai_batch_in_progress_can_be_cancelled(
    gpt: openai.AsyncOpenAI, sim: SimControl
) -> None:
    sim.configure(batch_seconds=3600)
    content, _ = openai_lines(1)
    upload = await gpt.files.create(file=("requests.jsonl", content), purpose="batch")
    batch = await gpt.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "validating" and batch.output_file_id is None
    cancelled = await gpt.batches.cancel(batch.id)
    assert cancelled.status == "cancelled"
    with pytest.raises(openai.NotFoundError):
        await gpt.batches.retrieve("batch_nope")


async def test_message_batch_results_come_in_any_order_and_lines_may_expire(
    claude: anthropic.AsyncAnthropic, sim: SimControl
) -> None:
    sim.configure(batch_expired_rate=0.5, fault_seed=7)
    requests, _ = anthropic_requests(12)
    batch = await claude.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    order = [r.custom_id async for r in await claude.messages.batches.results(batch.id)]
    assert sorted(order) == sorted(f"bundle-{n}" for n in range(12))
    assert order != sorted(order, key=lambda c: int(c.split("-")[1]))
    types = [r.result.type async for r in await claude.messages.batches.results(batch.id)]
    counts = (await claude.messages.batches.retrieve(batch.id)).request_counts
    assert 0 < types.count("expired") == counts.expired < 12
    assert types.count("succeeded") == counts.succeeded == 12 - counts.expired
    assert sim.counters()["batches"]["items"] == 3 * counts.succeeded  # expired: never judged


async def test_a_cancelled_message_batch_is_canceling_until_the_cancel_completes(
    claude: anthropic.AsyncAnthropic, sim: SimControl
) -> None:
    sim.configure(batch_seconds=3600, batch_cancel_seconds=3600)
    requests, _ = anthropic_requests(2)
    batch = await claude.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    canceling = await claude.messages.batches.cancel(batch.id)
    assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at
    assert canceling.results_url is None
    again = await claude.messages.batches.retrieve(batch.id)
    assert again.processing_status == "canceling" and again.request_counts.processing == 2


async def test_message_batches_are_listed_newest_first_a_page_at_a_time(
    claude: anthropic.AsyncAnthropic,
) -> None:
    requests, _ = anthropic_requests(1)
    made = [
        (await claude.messages.batches.create(requests=requests)).id  # type: ignore[arg-type]
        for _ in range(3)
    ]
    listed = [b.id async for b in claude.messages.batches.list(limit=2)]
    assert listed == made[::-1]


async def test_a_message_batch_over_the_configured_limits_is_refused(
    claude: anthropic.AsyncAnthropic, sim: SimControl
) -> None:
    sim.configure(batch_max_requests=2)
    requests, _ = anthropic_requests(3)
    with pytest.raises(anthropic.APIStatusError) as caught:
        await claude.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    assert caught.value.status_code == 413
    assert sim.counters()["batches"]["created"] == 0


async def test_an_expired_openai_batch_keeps_its_answers_and_reports_the_rest(
    gpt: openai.AsyncOpenAI, sim: SimControl
) -> None:
    sim.configure(batch_expired_rate=0.5, fault_seed=7)
    content, _ = openai_lines(12)
    upload = await gpt.files.create(file=("requests.jsonl", content), purpose="batch")
    batch = await gpt.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = await gpt.batches.retrieve(batch.id)
    assert batch.status == "expired" and batch.output_file_id and batch.error_file_id
    error_file = await gpt.files.content(batch.error_file_id)
    errors = [json.loads(line) for line in error_file.text.splitlines()]
    assert errors and {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert batch.request_counts is not None
    assert batch.request_counts.failed == len(errors) and batch.request_counts.completed > 0


async def test_a_cancelled_openai_batch_is_cancelling_then_cancelled(
    gpt: openai.AsyncOpenAI, sim: SimControl
) -> None:
    sim.configure(batch_seconds=3600, batch_cancel_seconds=0.3)
    content, _ = openai_lines(2)
    upload = await gpt.files.create(file=("requests.jsonl", content), purpose="batch")
    batch = await gpt.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"cjllm_job": "j1"},
    )
    assert (await gpt.batches.cancel(batch.id)).status == "cancelling"
    for _ in range(100):
        batch = await gpt.batches.retrieve(batch.id)
        if batch.status != "cancelling":
            break
        await asyncio.sleep(0.02)
    assert batch.status == "cancelled" and batch.request_counts is not None
    assert batch.request_counts.completed == 0  # it had reached none of its lines
    newest = (await gpt.batches.list(limit=1)).data[0]
    assert (newest.id, (newest.metadata or {}).get("cjllm_job")) == (batch.id, "j1")
