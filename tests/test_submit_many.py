"""A round handed over in one go (``Intake.accept_many`` through the embedded direct hop,
``ProviderClient.submit_many``): every comparison gets the answer it would get alone, what a
round shares is derived once without mixing up comparisons that differ, a hand-over the
queue refuses in part is retried comparison by comparison, and each comparison is answered
by exactly one callback."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from cjllm.cj.llm_client import Accepted, ProviderClient, Refused
from cjllm.contracts import ComparisonRequest, LLMConfigOverrides
from cjllm.embedded import QUEUE_FILE, DirectBus, direct_to
from tests.provider.support import (
    COMPARISON_PATH,
    Callbacks,
    body,
    eventually,
    fast_settings,
    provider,
)


def _variant(base: ComparisonRequest, **metadata: Any) -> ComparisonRequest:
    """``base`` with its own correlation id and the given hints, sharing ``base``'s prompt
    block objects (as a round's requests share their prefix)."""
    cid = uuid.uuid4()
    overrides = base.llm_config_overrides
    if "temperature" in metadata:
        overrides = LLMConfigOverrides(
            provider_override=overrides.provider_override,
            temperature_override=metadata.pop("temperature"),
        )
    return base.model_copy(
        update={
            "correlation_id": cid,
            "metadata": {**base.metadata, **metadata, "request_correlation_id": str(cid)},
            "llm_config_overrides": overrides,
        }
    )


async def test_a_hand_over_answers_each_request_as_the_http_endpoint_does(
    tmp_path: Path,
) -> None:
    settings = fast_settings(f"sqlite:///{tmp_path / QUEUE_FILE}", max_prompt_chars=5_000)
    cases = {
        "valid": {},
        "unknown provider": {"provider": "nobody"},
        "prompt too long": {"shared": "x" * 6_000},
        "no batch API": {"strategy": "async_batch"},
        "bundle size not a number": {"size": "many"},
        "valid, in another group": {"group": "batch-1:round-2"},
    }
    async with provider(settings, work=False) as (svc, client, _):
        direct = direct_to(svc)
        assert direct.submit_many is not None
        in_process = [body(1, topic="t", **options) for options in cases.values()]
        requests = [ComparisonRequest.model_validate(b) for b in in_process]
        # the first valid one twice in one hand-over: queued once
        replies = await direct.submit_many([*requests, requests[0]])
        for (name, options), reply in zip(cases.items(), replies, strict=False):
            response = await client.post(COMPARISON_PATH, json=body(1, topic="t", **options))
            assert reply.status == response.status_code, name
            if reply.status != 202:
                assert response.json()["detail"][0]["msg"] in reply.detail, name
        assert replies[-1].queue_id == replies[0].queue_id is not None
        again = await direct.submit_many(requests)
        assert [r.queue_id for r in again] == [r.queue_id for r in replies[:-1]]
        depth = await svc.queue.depth(time.time())
        assert depth.queued == 2 + 2  # two valid ones in process, two over HTTP


async def test_what_a_round_shares_is_derived_once_but_never_across_differences(
    tmp_path: Path,
) -> None:
    """Requests sharing one prefix but differing in hints or overrides get the key, size
    hint and token budget each gets when accepted alone."""
    settings = fast_settings(f"sqlite:///{tmp_path / QUEUE_FILE}")
    base = ComparisonRequest.model_validate(body(1, topic="t", size=5))
    variants = [
        {},
        {},
        {"preferred_bundle_size": 7},
        {"bundle_group": "batch-1:round-9"},
        {"batching_strategy": "per_request"},
        {"temperature": 0.5},
        {"preferred_bundle_size": 7},
    ]
    together = [_variant(base, **dict(v)) for v in variants]
    alone = [_variant(base, **dict(v)) for v in variants]
    async with provider(settings, work=False) as (svc, _, _):
        answers = await svc.app.state.intake.accept_many(together)
        singles = [await svc.app.state.intake.accept(r) for r in alone]
        for n, (a, b) in enumerate(zip(answers, singles, strict=True)):
            first, second = await svc.queue.get(a.queue_id), await svc.queue.get(b.queue_id)
            assert first is not None and second is not None
            assert (first.key, first.hint, first.tokens, first.budget) == (
                second.key,
                second.hint,
                second.tokens,
                second.budget,
            ), variants[n]
        keys = [(await svc.queue.get(a.queue_id)).key for a in answers]  # type: ignore[union-attr]
        assert keys[0] == keys[1] == keys[2] == keys[6]
        assert len({keys[0], keys[3], keys[5]}) == 3


async def test_a_hand_over_refused_in_part_is_retried_until_each_is_queued_once(
    tmp_path: Path,
) -> None:
    """The queue holds 3 items: a hand-over of 8 gets 3 queued and 5 answered 503; those go
    on alone through the client's retries while the worker frees room, and every
    comparison ends with exactly one callback."""
    bus = DirectBus()
    callbacks = Callbacks()
    bus.subscribe("r", "cj", callbacks)
    await bus.start()
    settings = fast_settings(
        f"sqlite:///{tmp_path / QUEUE_FILE}",
        linger_seconds=0.0,
        queue_max_items=3,
        queue_full_retry_after_seconds=0,
    )
    requests = [ComparisonRequest.model_validate(body(i, topic="r", size=3)) for i in range(8)]
    async with provider(settings, bus=bus) as (svc, _, _):
        client = ProviderClient(
            None, max_concurrency=4, retries=200, backoff_seconds=0.01, direct=direct_to(svc)
        )
        outcomes = await client.submit_many(requests)
        assert all(isinstance(o, Accepted) for o in outcomes)
        assert client.requests_sent > len(requests)  # some were refused first, then retried
        await eventually(lambda: callbacks.count >= len(requests))
    await bus.stop()
    assert {cid: len(results) for cid, results in callbacks.by_id.items()} == {
        str(r.correlation_id): 1 for r in requests
    }


async def test_a_hand_over_without_retries_fails_only_what_the_queue_refused(
    tmp_path: Path,
) -> None:
    settings = fast_settings(f"sqlite:///{tmp_path / QUEUE_FILE}", queue_max_items=3)
    requests = [ComparisonRequest.model_validate(body(i, topic="r")) for i in range(5)]
    async with provider(settings, work=False) as (svc, _, _):
        client = ProviderClient(None, max_concurrency=4, retries=0, direct=direct_to(svc))
        outcomes = await client.submit_many(requests)
        assert [type(o) for o in outcomes] == [Accepted] * 3 + [Refused] * 2
        assert all(
            isinstance(o, Refused) and o.error_code == "submission_failed" for o in outcomes[3:]
        )
        assert client.requests_sent == len(requests)
        assert (await svc.queue.depth(time.time())).queued == 3


async def test_a_round_sent_again_after_a_crash_is_answered_once_per_comparison(
    tmp_path: Path,
) -> None:
    """As after a crash between queueing a round and recording its queue ids: the whole
    round is handed over again (more than one hand-over's worth); the provider answers
    with the comparisons it holds, and each gets one callback."""
    bus = DirectBus()
    callbacks = Callbacks()
    bus.subscribe("r", "cj", callbacks)
    await bus.start()
    settings = fast_settings(f"sqlite:///{tmp_path / QUEUE_FILE}", linger_seconds=0.0)
    requests = [ComparisonRequest.model_validate(body(i, topic="r", size=25)) for i in range(1_100)]
    async with provider(settings, bus=bus) as (svc, _, _):
        client = ProviderClient(None, max_concurrency=4, direct=direct_to(svc))
        first = await client.submit_many(requests)
        second = await client.submit_many(requests[::-1])
        assert all(isinstance(o, Accepted) for o in first)
        assert first == second[::-1]
        await eventually(lambda: callbacks.count >= len(requests))
    await bus.stop()
    assert callbacks.count == len(requests)
    assert {cid: len(results) for cid, results in callbacks.by_id.items()} == {
        str(r.correlation_id): 1 for r in requests
    }
