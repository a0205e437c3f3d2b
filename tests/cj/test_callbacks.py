"""Callbacks are applied exactly once, whatever order, repetition or garbage they arrive in."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from cjllm.cj.callbacks import apply_callbacks, dead_letters
from cjllm.cj.evidence import Judgement, judgements
from cjllm.cj.tables import ComparisonStatus
from cjllm.contracts import EventEnvelope
from tests.cj.conftest import MakeHarness, essays_with_quality, judging_stub
from tests.cj.stub_provider import StubProvider
from tests.cj.test_store import fresh_pg_database


async def _started(make_harness: MakeHarness, n: int = 6, **overrides: object):  # type: ignore[no-untyped-def]
    essays, qualities = essays_with_quality(n)
    stub = judging_stub(qualities, answer=None)
    values = {"max_concurrent_comparisons": 3, "comparisons_per_essay": 4.0, **overrides}
    h = await make_harness(stub=stub, **values)
    batch_id = await h.cj.start_batch(essays, instructions="Argue for or against homework.")
    return h, batch_id


async def _rows(h, batch_id):  # type: ignore[no-untyped-def]
    return {c.request_correlation_id: c for c in await h.cj.store.comparisons(batch_id)}


async def test_duplicate_callback_is_counted_and_ignored(make_harness: MakeHarness) -> None:
    h, batch_id = await _started(make_harness)
    first = h.stub.received[0]
    await h.stub.publish(first)
    await h.bus.drain()
    before = (await _rows(h, batch_id))[first.request.correlation_id]
    await h.stub.publish(first)  # the same success again
    await h.stub.publish(first, error="late_error")  # and a contradicting error
    await h.bus.drain()
    after = (await _rows(h, batch_id))[first.request.correlation_id]
    assert after.status == ComparisonStatus.SUCCEEDED
    assert (after.winner, after.confidence, after.completed_at) == (
        before.winner,
        before.confidence,
        before.completed_at,
    )
    assert (await h.cj.progress(batch_id)).ignored_callbacks == 2
    assert h.cj.callbacks.ignored == 2 and h.cj.callbacks.applied == 1
    finished = [e for e in h.progress if e.kind == "comparison_finished"]
    assert len(finished) == 1


async def test_late_success_after_an_error_changes_nothing(make_harness: MakeHarness) -> None:
    h, batch_id = await _started(make_harness)
    item = h.stub.received[0]
    await h.stub.publish(item, error="provider_timeout")
    await h.stub.publish(item)  # a late success for the same comparison
    await h.bus.drain()
    row = (await _rows(h, batch_id))[item.request.correlation_id]
    assert row.status == ComparisonStatus.FAILED
    assert row.error_code == "provider_timeout" and row.winner is None
    assert (await h.cj.progress(batch_id)).ignored_callbacks == 1


async def test_unknown_callback_goes_to_the_dead_letter_table(make_harness: MakeHarness) -> None:
    h, batch_id = await _started(make_harness)
    stray = h.stub.received[0]
    forged = stray.request.model_copy(update={"correlation_id": uuid.uuid4()})
    await h.stub.publish(type(stray)(forged, uuid.uuid4()))
    await h.bus.drain()
    letters = await dead_letters(h.cj.store)
    assert letters == [(str(forged.correlation_id), "no comparison has this correlation_id")]
    assert h.cj.callbacks.unknown == 1
    # the consumer carries on: real callbacks are still applied afterwards
    await h.stub.publish(stray)
    await h.bus.drain()
    row = (await _rows(h, batch_id))[stray.request.correlation_id]
    assert row.status == ComparisonStatus.SUCCEEDED


async def test_error_callback_fails_the_row_and_the_pair_is_retried(
    make_harness: MakeHarness,
) -> None:
    h, batch_id = await _started(make_harness)
    round_one = list(h.stub.received)
    await h.stub.publish(round_one[0], error="content_filtered")
    for item in round_one[1:]:
        await h.stub.publish(item)
    await h.bus.drain()
    rows = await h.cj.store.comparisons(batch_id)
    failed = [r for r in rows if r.status == ComparisonStatus.FAILED]
    assert [(r.error_code, r.round_number) for r in failed] == [("content_filtered", 1)]
    retried = [r for r in rows if r.round_number == 2 and r.attempt == 2]
    assert [(r.essay_a_id, r.essay_b_id) for r in retried] == [
        (failed[0].essay_a_id, failed[0].essay_b_id)
    ]
    assert len(h.stub.received) == len(round_one) + 3  # round 2 went out at once


async def test_callbacks_out_of_order_and_before_the_202(make_harness: MakeHarness) -> None:
    essays, qualities = essays_with_quality(8)
    h = await make_harness(
        stub=judging_stub(qualities, answer="before"),
        max_concurrent_comparisons=4,
        comparisons_per_essay=4.0,
    )
    batch_id = await h.cj.start_batch(essays, instructions="Describe a journey.")
    result = await h.cj.wait_for_completion(batch_id, timeout=60)
    assert result.status == "completed"
    assert result.comparisons_succeeded == result.comparisons_requested == 16
    rows = await h.cj.store.comparisons(batch_id)
    assert all(r.status == ComparisonStatus.SUCCEEDED and r.submitted_at for r in rows)


async def test_reversed_callbacks_within_a_round(make_harness: MakeHarness) -> None:
    h, batch_id = await _started(make_harness)
    for item in reversed(h.stub.received):
        await h.stub.publish(item)
    await h.bus.drain()
    progress = await h.cj.progress(batch_id)
    assert (progress.rounds, progress.succeeded, progress.pending) == (2, 3, 3)


async def test_a_round_in_which_every_comparison_fails(make_harness: MakeHarness) -> None:
    essays, qualities = essays_with_quality(6)
    stub = judging_stub(qualities, error_for=lambda _req: True)
    h = await make_harness(
        stub=stub, max_concurrent_comparisons=3, max_pair_retries=1, max_failed_rounds=2
    )
    batch_id = await h.cj.start_batch(essays, instructions="Describe a journey.")
    result = await h.cj.wait_for_completion(batch_id, timeout=60)
    assert result.status == "failed"
    assert result.stop_reason == "too_few_comparisons_succeeded"
    assert "0 of 6" in (result.message or "") and "every_comparison_failed" in (
        result.message or ""
    )
    assert (result.rounds, result.comparisons_failed, result.comparisons_succeeded) == (2, 6, 0)
    rows = await h.cj.store.comparisons(batch_id)
    assert [r.attempt for r in rows if r.round_number == 2] == [2, 2, 2]
    await h.settle()
    assert len(h.completions) == 1


async def test_refused_submissions_fail_at_once(make_harness: MakeHarness) -> None:
    essays, qualities = essays_with_quality(4)
    stub = judging_stub(qualities, fail_first=10_000, status=503, retry_after="0")
    h = await make_harness(stub=stub, max_concurrent_comparisons=2, max_failed_rounds=1)
    batch_id = await h.cj.start_batch(essays, instructions="Describe a journey.")
    # no callback can ever come, yet the batch has already finished
    result = await h.cj.result(batch_id)
    assert result is not None and result.status == "failed"
    rows = await h.cj.store.comparisons(batch_id)
    assert {r.error_code for r in rows} == {"submission_failed"}
    assert all("HTTP 503" in (r.error_message or "") for r in rows)
    assert stub.posts == len(rows) * 3  # first try + 2 retries each


async def test_unreadable_callback_naming_a_pending_row_fails_it(
    make_harness: MakeHarness,
) -> None:
    h, batch_id = await _started(make_harness)
    item = h.stub.received[0]
    good = EventEnvelope.for_result(h.stub.result_for(item), "stub")
    bad = good.model_copy(update={"data": {**good.data, "winner": "Essay C"}})
    await h.bus.publish(h.settings.callback_topic, "k", bad)
    await h.bus.drain()
    row = (await _rows(h, batch_id))[item.request.correlation_id]
    assert row.status == ComparisonStatus.FAILED and row.error_code == "malformed_callback"
    (letter,) = await dead_letters(h.cj.store)
    assert letter[0] == str(item.request.correlation_id) and "does not parse" in letter[1]


async def test_callback_contradicting_its_row_is_not_trusted(make_harness: MakeHarness) -> None:
    h, batch_id = await _started(make_harness)
    item = h.stub.received[0]
    result = h.stub.result_for(item)
    md = result.request_metadata
    md["essay_a_id"], md["essay_b_id"] = md["essay_b_id"], md["essay_a_id"]
    await h.bus.publish(h.settings.callback_topic, "k", EventEnvelope.for_result(result, "stub"))
    await h.bus.drain()
    row = (await _rows(h, batch_id))[item.request.correlation_id]
    assert row.status == ComparisonStatus.FAILED
    assert row.error_code == "callback_metadata_mismatch" and row.winner is None
    assert "contradicts" in (await dead_letters(h.cj.store))[0][1]


async def test_two_concurrent_last_callbacks_start_one_next_round(
    make_harness: MakeHarness,
) -> None:
    h, batch_id = await _started(make_harness, n=4, max_concurrent_comparisons=2)
    assert len(h.stub.received) == 2
    envelopes = [EventEnvelope.for_result(h.stub.result_for(i), "stub") for i in h.stub.received]
    await asyncio.gather(*(h.cj.handle_callback(e) for e in envelopes))
    progress = await h.cj.progress(batch_id)
    assert progress.rounds == 2
    assert len(h.stub.received) == 4


class Crash(BaseException):
    """Stands in for the process dying."""


class CrashingTransport(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise Crash


async def test_crash_between_writing_rows_and_submitting_resumes(
    make_harness: MakeHarness, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    essays, qualities = essays_with_quality(6)
    crashed = await make_harness(stub=StubProvider(answer=None), max_concurrent_comparisons=3)
    monkeypatch.setattr(
        crashed.cj.client,
        "_http",
        httpx.AsyncClient(transport=CrashingTransport(), base_url="http://p"),
    )
    with pytest.raises(Crash):
        await crashed.cj.start_batch(essays, instructions="Describe a journey.")
    (batch_id,) = await crashed.cj.store.running_batch_ids()
    assert len(await crashed.cj.store.unsubmitted(batch_id)) == 3
    # a new process on the same database: startup resumes the batch
    restarted = await make_harness(
        stub=judging_stub(qualities),
        database_url=crashed.settings.database_url,
        max_concurrent_comparisons=3,
    )
    result = await restarted.cj.wait_for_completion(batch_id, timeout=60)
    assert result.status == "completed"
    first_round = [
        r for r in restarted.stub.received if r.request.metadata["bundle_group"].endswith(":1")
    ]
    assert len(first_round) == 3
    rows = await restarted.cj.store.comparisons(batch_id)
    assert all(r.status == ComparisonStatus.SUCCEEDED for r in rows)
    assert await restarted.cj.store.unsubmitted(batch_id) == []


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_a_group_of_callbacks_is_recorded_in_one_go_each_as_if_it_came_alone(
    make_harness: MakeHarness, request: pytest.FixtureRequest, database: str
) -> None:
    url = None
    if database == "postgresql":
        url = await fresh_pg_database(request.getfixturevalue("postgres_url"))
    h, batch_id = await _started(make_harness, database_url=url)
    first, second, third = h.stub.received
    ok = EventEnvelope.for_result(h.stub.result_for(first), "stub")
    failed = EventEnvelope.for_result(h.stub.result_for(second, error="provider_timeout"), "stub")
    forged = first.request.model_copy(update={"correlation_id": uuid.uuid4()})
    unknown = EventEnvelope.for_result(h.stub.result_for(type(first)(forged, uuid.uuid4())), "stub")
    contradicting = h.stub.result_for(third)
    md = contradicting.request_metadata
    md["essay_a_id"], md["essay_b_id"] = md["essay_b_id"], md["essay_a_id"]
    group = [ok, ok, failed, unknown, EventEnvelope.for_result(contradicting, "stub")]
    applied = await apply_callbacks(h.cj.store, group, h.cj.callbacks)
    assert [outcome.kind for outcome, _ in applied] == [
        "applied",
        "ignored",  # the repeat within the group, like a late one
        "applied",
        "unknown",
        "mismatch",
    ]
    rows = await _rows(h, batch_id)
    assert rows[first.request.correlation_id].status == ComparisonStatus.SUCCEEDED
    assert rows[second.request.correlation_id].error_code == "provider_timeout"
    assert rows[third.request.correlation_id].error_code == "callback_metadata_mismatch"
    assert (await h.cj.progress(batch_id)).ignored_callbacks == 1
    assert len(await dead_letters(h.cj.store)) == 2
    # handed to the workflow, the same group changes nothing more and closes round 1 once
    await h.cj.handle_callbacks(group)
    progress = await h.cj.progress(batch_id)
    assert progress.rounds == 2 and progress.ignored_callbacks == 1 + 4
    assert len(h.stub.received) == 6


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_the_evidence_is_every_row_as_recorded(
    make_harness: MakeHarness, request: pytest.FixtureRequest, database: str
) -> None:
    """`judgements` (the report's and the API's evidence) reads the database's own values
    without validating them one by one: each field is the row's own, of the type the
    validated model gives, for a success, an error and a comparison still pending."""
    url = None
    if database == "postgresql":
        url = await fresh_pg_database(request.getfixturevalue("postgres_url"))
    h, batch_id = await _started(make_harness, database_url=url)
    ok, failed = h.stub.received[:2]
    await h.stub.publish(ok)
    await h.stub.publish(failed, error="provider_timeout")
    await h.bus.drain()
    rows = await h.cj.store.comparisons(batch_id)
    evidence = await judgements(h.cj.store, batch_id)
    assert [j.request_correlation_id for j in evidence] == [
        str(r.request_correlation_id) for r in rows
    ]
    for judgement, row in zip(evidence, rows, strict=True):
        validated = Judgement.model_validate(
            {
                **{name: getattr(row, name) for name in Judgement.model_fields},
                "request_correlation_id": str(row.request_correlation_id),
            }
        )
        assert judgement == validated
        for name, value in judgement.model_dump().items():
            expected = getattr(validated, name)
            assert value == expected and type(value) is type(expected), (name, value, expected)
    by_id = {j.request_correlation_id: j for j in evidence}
    assert by_id[str(ok.request.correlation_id)].winner_id is not None
    assert by_id[str(failed.request.correlation_id)].error_code == "provider_timeout"
    assert sum(j.status == ComparisonStatus.PENDING for j in evidence) == len(rows) - 2
