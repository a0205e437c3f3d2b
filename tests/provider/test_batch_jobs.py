"""Provider batch jobs through the official SDKs against the simulated vendors.

Both vendors (Anthropic Message Batches, OpenAI files + batches) on both queue backends:
comparisons asking for ``async_batch`` become one job of bundled lines, results come back in
any order, and every comparison gets exactly one callback, priced at the batch rate.
"""

from __future__ import annotations

import pytest

from cjllm.provider.calls import CallUsage
from cjllm.provider.jobs import JobState
from cjllm.provider.pricing import load_price_table
from tests.provider.batch_support import (
    VENDOR_MODELS,
    batch_body,
    batch_provider,
    batch_settings,
    jobs_of,
    new_topic,
)
from tests.provider.support import Callbacks, eventually, post_all
from tests.sim.conftest import sim, sim_server, vendor_env
from tests.sim.running import SimControl

__all__ = ["sim", "sim_server", "vendor_env"]


@pytest.fixture(params=["anthropic", "openai"])
def vendor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_queued_comparisons_become_one_job_of_bundled_lines_with_one_callback_each(
    vendor: str, backend_url: str, vendor_env: SimControl
) -> None:
    vendor_env.configure(batch_seconds=0.3)
    topic, callbacks = new_topic(), Callbacks()
    bodies = [batch_body(i, topic=topic, vendor=vendor) for i in range(30)]
    async with batch_provider(batch_settings(backend_url), callbacks, topic) as (service, http):
        await post_all(http, bodies)
        await eventually(lambda: callbacks.count >= 30)
        jobs = await jobs_of(service)

    assert len(jobs) == 1
    (job,) = jobs
    assert job.state is JobState.SETTLED
    assert (job.n_lines, job.n_items, job.provider) == (3, 30, vendor)
    lines = {f"{job.job_id}-{n}" for n in range(3)}
    usage_by_line: dict[str, set[int]] = {}
    for request_body in bodies:
        result = callbacks.one(request_body["correlation_id"])
        assert result.is_success, result.error_detail
        meta = result.request_metadata
        assert meta["batching_strategy"] == "async_batch"
        assert meta["bundle_id"] in lines and meta["bundle_size"] == 10
        assert meta["resolved_provider"] == vendor
        usage_by_line.setdefault(meta["bundle_id"], set()).add(meta["bundle_index"])
    assert all(indexes == set(range(10)) for indexes in usage_by_line.values())

    counters = vendor_env.counters()
    assert counters["batches"]["created"] == 1
    assert (counters["batches"]["requests"], counters["batches"]["items"]) == (3, 30)
    assert counters["calls"] == 0  # nothing went the serial way

    # the batch price: half the standard price of exactly the tokens the vendor counted
    tokens = counters["tokens"]
    usage = CallUsage(
        input_tokens=tokens["input"],
        output_tokens=tokens["output"],
        cache_creation_input_tokens=tokens["cache_creation"],
        cache_read_input_tokens=tokens["cache_read"],
    )
    table = load_price_table()
    charged = sum(r.cost_estimate for rs in callbacks.by_id.values() for r in rs)
    assert charged == pytest.approx(table.cost(VENDOR_MODELS[vendor], usage, batch=True).total)
    assert charged == pytest.approx(table.cost(VENDOR_MODELS[vendor], usage).total / 2)
