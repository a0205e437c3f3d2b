"""Provider batch jobs through the official SDKs against the simulated vendors.

Both vendors (Anthropic Message Batches, OpenAI files + batches) on both queue backends:
comparisons asking for ``async_batch`` become one job of bundled lines, results come back in
any order, and every comparison gets exactly one callback, priced at the batch rate.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import pytest

from cjllm.contracts import ComparisonRequest, QueueItemState
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
    post_then_work,
    submitted,
    wait_jobs,
)
from tests.provider.support import Callbacks, essay, eventually, metric, post_all
from tests.sim.conftest import sim, sim_server, vendor_env
from tests.sim.running import SimControl

__all__ = ["sim", "sim_server", "vendor_env"]


# the vendor's word for a job that ran to its end
JOB_END = {"anthropic": "ended", "openai": "completed"}


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
        await post_then_work(service, http, bodies)
        await eventually(lambda: callbacks.count >= 30)
        jobs = await jobs_of(service)
        # the metrics: jobs by state, comparisons per job, one turnaround observed
        await eventually(lambda: metric(service, "cjllm_provider_batch_jobs", state="settled") == 1)
        assert metric(service, "cjllm_provider_batch_jobs", state="submitted") == 0
        per_job = "cjllm_provider_batch_items_per_job"
        assert metric(service, f"{per_job}_count", provider=vendor) == 1
        assert metric(service, f"{per_job}_sum", provider=vendor) == 30
        turnaround = "cjllm_provider_batch_turnaround_seconds_count"
        assert metric(service, turnaround, provider=vendor) == 1
        events = "cjllm_provider_batch_job_events_total"
        assert metric(service, events, provider=vendor, event="submitted") == 1
        assert metric(service, events, provider=vendor, event="ended_" + JOB_END[vendor]) == 1

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


async def test_a_bundled_line_missing_an_item_retries_only_that_item(
    vendor: str, backend_url: str, vendor_env: SimControl
) -> None:
    vendor_env.configure(batch_seconds=0.3, faults={"missing_item": 1.0})
    topic, callbacks = new_topic(), Callbacks()
    bodies = [batch_body(i, topic=topic, vendor=vendor) for i in range(30)]
    async with batch_provider(batch_settings(backend_url), callbacks, topic) as (service, http):
        await post_then_work(service, http, bodies)
        await eventually(lambda: vendor_env.counters()["batches"]["created"] == 1)
        vendor_env.configure(faults={"missing_item": 0.0})  # the retry job answers fully
        await eventually(lambda: callbacks.count >= 30)
        jobs = await jobs_of(service)

    first, second = jobs
    assert (first.n_lines, first.n_items) == (3, 30)
    # each 10-item line lost its middle item; only those three went again (together: an
    # item goes alone only after failing a second time)
    assert (second.n_lines, second.n_items) == (1, 3)
    retried = {f"{first.job_id}-{n}": 0 for n in range(3)}
    for request_body in bodies:
        result = callbacks.one(request_body["correlation_id"])
        assert result.is_success
        meta = result.request_metadata
        if meta["bundle_id"].startswith(second.job_id):
            assert meta["bundle_size"] == 3
        else:
            retried[meta["bundle_id"]] += 1
    assert sorted(retried.values()) == [9, 9, 9]  # the neighbours kept their answers


async def test_errored_and_expired_lines_send_their_comparisons_again(
    vendor: str, backend_url: str, vendor_env: SimControl
) -> None:
    vendor_env.configure(
        batch_seconds=0.3, batch_expired_rate=0.5, faults={"server_error": 0.5}, fault_seed=3
    )
    topic, callbacks = new_topic(), Callbacks()
    bodies = [batch_body(i, topic=topic, vendor=vendor, size=2) for i in range(20)]
    async with batch_provider(batch_settings(backend_url), callbacks, topic) as (service, http):
        queue_ids = await post_all(http, bodies)
        service.start_work()
        await eventually(lambda: vendor_env.counters()["batches"]["created"] == 1)
        vendor_env.configure(batch_expired_rate=0.0, faults={"server_error": 0.0})
        await eventually(lambda: callbacks.count >= 20)
        first, *later = await jobs_of(service)
        items = [await service.queue.get(queue_id) for queue_id in queue_ids]

    assert first.vendor_status == ("ended" if vendor == "anthropic" else "expired")
    reasons = set()
    for item in items:
        assert item is not None and item.state is QueueItemState.COMPLETED
        if item.attempts:
            reasons.add((item.last_error or "").split(":")[0])
    assert reasons == {"server_error", "batch_expired"}
    assert later and sum(j.n_items for j in later) < 20
    assert all(callbacks.one(b["correlation_id"]).is_success for b in bodies)
    assert {len(results) for results in callbacks.by_id.values()} == {1}


@pytest.mark.parametrize("vendor", ["anthropic", "openai"])
async def test_jobs_are_split_at_small_configured_limits(
    vendor: str, tmp_path: Path, vendor_env: SimControl
) -> None:
    # the sim refuses a job over these limits, so every comparison succeeding shows each
    # job fitted; lines of five halve when a job's byte limit cannot hold them
    limit_bytes = 60_000
    vendor_env.configure(batch_max_requests=2, batch_max_bytes=limit_bytes)
    topic, callbacks = new_topic(), Callbacks()
    settings = batch_settings(
        f"sqlite:///{tmp_path / 'q.sqlite'}", batch_max_lines=2, batch_max_bytes=limit_bytes
    )
    bodies = [batch_body(i, topic=topic, vendor=vendor, size=5) for i in range(24)]
    async with batch_provider(settings, callbacks, topic) as (service, http):
        await post_then_work(service, http, bodies)
        await eventually(lambda: callbacks.count >= 24)
        jobs = await jobs_of(service)

    assert all(callbacks.one(b["correlation_id"]).is_success for b in bodies)
    assert len(jobs) >= 3 and all(j.n_lines <= 2 for j in jobs)
    assert sum(j.n_items for j in jobs) == 24
    sizes = {r.request_metadata["bundle_size"] for rs in callbacks.by_id.values() for r in rs}
    assert max(sizes) <= 5
    assert vendor_env.counters()["batches"]["created"] == len(jobs)


async def test_a_comparison_too_big_for_any_job_gets_an_error_callback(
    tmp_path: Path, vendor_env: SimControl
) -> None:
    topic, callbacks = new_topic(), Callbacks()
    settings = batch_settings(f"sqlite:///{tmp_path / 'q.sqlite'}", batch_max_bytes=2_000)
    bodies = [batch_body(i, topic=topic, vendor="anthropic") for i in range(2)]
    async with batch_provider(settings, callbacks, topic) as (service, http):
        await post_then_work(service, http, bodies)
        await eventually(lambda: callbacks.count >= 2)
        assert await jobs_of(service) == []
    for b in bodies:
        error = callbacks.one(b["correlation_id"]).error_detail
        assert error is not None and error.error_code == "request_too_large"
    assert vendor_env.counters()["batches"]["created"] == 0


async def test_cancelling_a_cj_batch_cancels_the_jobs_left_with_nothing_to_answer(
    vendor: str, backend_url: str, vendor_env: SimControl
) -> None:
    vendor_env.configure(batch_seconds=3600)
    topic, callbacks = new_topic(), Callbacks()
    # one job for batch-1 alone; then a job shared by batch-1 and batch-2
    alone = [batch_body(i, topic=topic, vendor=vendor, group="g1") for i in range(4)]
    shared = [
        batch_body(10 + i, topic=topic, vendor=vendor, group="g2", cj_batch=f"batch-{1 + i % 2}")
        for i in range(4)
    ]
    settings = batch_settings(backend_url)
    async with batch_provider(settings, callbacks, topic) as (service, http):
        await post_then_work(service, http, alone)
        await wait_jobs(service, submitted(1))
        await service.stop_work()
        await post_then_work(service, http, shared)
        await wait_jobs(service, submitted(2))
        answer = await http.post("/api/v1/comparison/cancel", json={"cj_batch_id": "batch-1"})
        assert answer.status_code == 200, answer.text
        report = answer.json()
        await eventually(lambda: callbacks.count >= 6)
        first, second = await jobs_of(service)
        await eventually(lambda: vendor_env.counters()["batches"]["canceled"] == 1)
        listed = (await http.get("/api/v1/jobs", params={"cj_batch_id": "batch-2"})).json()

    assert report["comparisons_cancelled"] == 6
    assert (report["jobs_cancelled"], report["jobs_kept"]) == ([first.job_id], [second.job_id])
    for b in alone + shared[0::2]:
        error = callbacks.one(b["correlation_id"]).error_detail
        assert error is not None and error.error_code == "cancelled"
    assert all(not callbacks.by_id[b["correlation_id"]] for b in shared[1::2])  # still running
    assert [j["job_id"] for j in listed["jobs"]] == [second.job_id]
    assert listed["jobs"][0]["vendor_status"] in ("submitted", "in_progress", "validating")


async def test_nightly_comparisons_wait_for_the_size_threshold(
    tmp_path: Path, vendor_env: SimControl
) -> None:
    topic, callbacks = new_topic(), Callbacks()
    settings = batch_settings(
        f"sqlite:///{tmp_path / 'q.sqlite'}",
        nightly_max_items=6,
        nightly_max_age_seconds=3600,
        nightly_submit_at=None,
    )
    bodies = [
        batch_body(i, topic=topic, vendor="openai", strategy="nightly_batch", group=f"round-{i}")
        for i in range(6)
    ]
    async with batch_provider(settings, callbacks, topic) as (service, http):
        await post_all(http, bodies[:5])
        assert await service.jobs.collect(time.time()) == 0  # 5 of 6: still accumulating
        await post_all(http, bodies[5:])
        assert await service.jobs.collect(time.time()) == 1
        (job,) = await jobs_of(service)
    # six rounds (bundle groups) in one job, one line each
    assert (job.mode, job.n_lines, job.n_items) == ("nightly_batch", 6, 6)
    assert vendor_env.counters()["batches"]["created"] == 1


@pytest.mark.parametrize("vendor", ["anthropic", "openai"])
async def test_a_pooled_batch_line_sends_each_essay_once_and_a_missed_item_goes_again_alone(
    vendor: str, tmp_path: Path, vendor_env: SimControl
) -> None:
    """``CJLLM_BUNDLE_LAYOUT=pool``: a batch line is the serial path's pooled bundle (each
    distinct essay fenced once), and its answer is reconciled item by item as a serial call's."""
    vendor_env.configure(batch_seconds=0.1, faults={"missing_item": 1.0})
    topic, callbacks = new_topic(), Callbacks()
    texts = [essay(100 + k) for k in range(4)]
    bodies = []  # the six pairs of four essays, as one CJ group sends them
    for n, (a, b) in enumerate(itertools.combinations(range(4), 2)):
        request = batch_body(n, topic=topic, vendor=vendor, size=6)
        request["prompt_blocks"][2]["content"] = texts[a]
        request["prompt_blocks"][3]["content"] = texts[b]
        bodies.append(request)
    settings = batch_settings(f"sqlite:///{tmp_path / 'q.sqlite'}", bundle_layout="pool")
    async with batch_provider(settings, callbacks, topic) as (service, http):
        await post_all(http, bodies)
        (group,) = await service.jobs.table.lane_groups(time.time())
        recorded = await service.jobs.record(group.group, time.time())
        assert recorded is not None
        (line,) = recorded.lines
        sent = json.dumps(line.request)
        # each essay once (the items layout would send each of them three times)
        assert [sent.count(json.dumps(t)[1:-1]) for t in texts] == [1, 1, 1, 1]
        await service.jobs.submit(recorded.job, recorded.api, recorded.lines)
        vendor_env.configure(faults={"missing_item": 0.0})  # the retry is answered in full
        service.start_work()
        await eventually(lambda: callbacks.count >= 6)
        first, second = await jobs_of(service)

    assert (first.n_lines, first.n_items) == (1, 6)
    assert (second.n_lines, second.n_items) == (1, 1)  # only the item the answer missed
    sizes = []
    for request_body in bodies:
        result = callbacks.one(request_body["correlation_id"])
        assert result.is_success, result.error_detail
        meta = result.request_metadata
        recipe = ComparisonRequest.model_validate(request_body).prompt_sha256()
        assert meta["prompt_sha256"] == recipe  # the layout changes the prompt, not this
        sizes.append(meta["bundle_size"])
    assert sorted(sizes) == [1, 6, 6, 6, 6, 6]
