"""Pooled bundles in the provider service: the layout changes the prompt, nothing else.

Every comparison still gets exactly one callback with its own answer, its ``prompt_sha256``
is the one recipe over its own essays, a faulty item is retried on its own account, and the
callbacks still add up to what the calls cost.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import pytest

from cjllm.contracts import BundleLayout, ComparisonRequest
from cjllm.provider.adapters.mock import MockAdapter
from cjllm.provider.prompts import pooled_texts
from tests.provider.support import (
    Callbacks,
    body,
    essay,
    eventually,
    expected_winner,
    fast_settings,
    post_all,
    provider,
)
from tests.provider.test_worker import memory_bus, topic


@pytest.fixture
def results() -> tuple[str, Callbacks]:
    return topic(), Callbacks()


def group_bodies(n_essays: int, results_topic: str, **hints: Any) -> list[dict[str, Any]]:
    """Every pair of ``n_essays`` essays, as one CJ group would send them."""
    pairs = list(itertools.combinations(range(n_essays), 2))
    out = []
    for k, (i, j) in enumerate(pairs):
        request = body(k, topic=results_topic, size=len(pairs), group="batch-1:round-1:g0")
        a, b = (i, j) if k % 2 == 0 else (j, i)
        request["prompt_blocks"][2]["content"] = essay(100 + a)
        request["prompt_blocks"][3]["content"] = essay(100 + b)
        request["metadata"].update(hints)
        out.append(request)
    return out


@pytest.mark.parametrize("fault", ["missing", "malformed", "bad_confidence"])
async def test_a_faulty_item_in_a_pooled_bundle_is_retried_on_its_own_account(
    backend_url: str, results: tuple[str, Callbacks], fault: Any
) -> None:
    results_topic, callbacks = results
    bus = await memory_bus(callbacks, results_topic)
    bodies = group_bodies(4, results_topic)  # 6 comparisons of 4 essays
    faulty = bodies[2]["correlation_id"]
    mock = MockAdapter(usd_per_million_input=3.0, usd_per_million_output=15.0)
    mock.fail_item(faulty, fault)
    settings = fast_settings(backend_url, bundle_layout=BundleLayout.POOL)
    async with provider(settings, bus=bus, mock=mock) as (_, client, _):
        await post_all(client, bodies)
        await eventually(lambda: callbacks.count == 6)
    await bus.stop()

    first, retry = mock.calls
    assert (first.layout, len(first.items), len(pooled_texts(first.items))) == (
        BundleLayout.POOL,
        6,
        4,
    )
    assert (retry.layout, [i.custom_id for i in retry.items]) == (BundleLayout.POOL, [faulty])
    for b in bodies:
        result = callbacks.one(b["correlation_id"])
        assert result.is_success and result.winner == expected_winner(mock.judge, b)
        md = result.request_metadata
        assert md["bundle_size"] == (1 if b["correlation_id"] == faulty else 6)
        assert md["prompt_sha256"] == ComparisonRequest.model_validate(b).prompt_sha256()
    results_ = [rs[0] for rs in callbacks.by_id.values()]
    assert sum(r.token_usage.prompt_tokens for r in results_) == sum(
        o.usage.prompt_tokens for o in mock.outcomes
    )
    assert sum(r.cost_estimate for r in results_) == pytest.approx(
        sum(o.cost for o in mock.outcomes)
    )


async def test_a_request_asks_for_its_layout_and_never_shares_a_call_with_the_other(
    backend_url: str, results: tuple[str, Callbacks]
) -> None:
    results_topic, callbacks = results
    bus = await memory_bus(callbacks, results_topic)
    pooled = group_bodies(4, results_topic, bundle_layout="pool")  # 6 comparisons, size 6
    plain = [
        body(50 + i, topic=results_topic, size=6, group="batch-1:round-1:g0") for i in range(6)
    ]
    mock = MockAdapter()
    settings = fast_settings(backend_url)  # default layout: items; a full bundle goes at once
    async with provider(settings, bus=bus, mock=mock) as (_, client, _):
        await post_all(client, [x for pair in zip(pooled, plain, strict=True) for x in pair])
        await eventually(lambda: callbacks.count == 12)
    await bus.stop()
    by_layout = {call.layout: {i.custom_id for i in call.items} for call in mock.calls}
    assert len(mock.calls) == 2
    assert by_layout == {
        BundleLayout.POOL: {b["correlation_id"] for b in pooled},
        BundleLayout.ITEMS: {b["correlation_id"] for b in plain},
    }
    for b in pooled:  # the hint is echoed like any other metadata
        assert callbacks.one(b["correlation_id"]).request_metadata["bundle_layout"] == "pool"


async def test_an_unknown_layout_is_refused_naming_the_field(backend_url: str) -> None:
    request = body(1, topic=topic(), correlation_id=uuid.uuid4())
    request["metadata"]["bundle_layout"] = "scattered"
    async with provider(fast_settings(backend_url), work=False) as (_, client, _):
        response = await client.post("/api/v1/comparison", json=request)
    assert response.status_code in (400, 422)
    assert "bundle_layout" in response.text
