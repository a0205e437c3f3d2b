"""Crash at any step of a batch's life, restart, and nothing is stuck or done twice."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from cjllm.cj import rounds
from cjllm.cj.callbacks import apply_callbacks, record_result
from cjllm.cj.options import BatchOptions
from cjllm.cj.records import NewEssay
from cjllm.cj.store import Store
from cjllm.cj.tables import Batch, ComparisonStatus, RoundStatus
from cjllm.contracts import EventEnvelope
from tests.cj.conftest import MakeHarness, essays_with_quality, judging_stub


async def test_crash_after_the_batch_row_before_any_round(make_harness: MakeHarness) -> None:
    essays, qualities = essays_with_quality(6)
    h = await make_harness(stub=judging_stub(qualities), max_concurrent_comparisons=3)
    options = BatchOptions.from_settings(h.settings)
    # what start_batch writes first, as if the process died right after
    await h.cj.store.create_batch(
        Batch(
            id="7d6a3f0e-2b53-4b0e-9a39-0d5f4f3f2a11",
            batching_strategy=options.batching_strategy.value,
            provider=h.settings.llm_provider,
            instructions="Describe a journey.",
            options=options.to_json(len(essays)),
            ignored_callbacks=0,
            completion_published=False,
        ),
        [NewEssay(e.essay_id, e.text) for e in essays],
    )
    assert await h.cj.resume_all() == ["7d6a3f0e-2b53-4b0e-9a39-0d5f4f3f2a11"]
    result = await h.cj.wait_for_completion("7d6a3f0e-2b53-4b0e-9a39-0d5f4f3f2a11", timeout=60)
    assert result.status == "completed" and result.comparisons_requested == 30


async def test_crash_after_closing_a_round_before_the_next(make_harness: MakeHarness) -> None:
    essays, qualities = essays_with_quality(6)
    h = await make_harness(stub=judging_stub(qualities, answer=None), max_concurrent_comparisons=3)
    batch_id = await h.cj.start_batch(essays, instructions="Describe a journey.")
    for item in h.stub.received:  # the callbacks land, but nobody advances the batch
        await h.cj.store.mark_submitted([(item.request.correlation_id, str(item.queue_id))])  # type: ignore[list-item]
    for item in h.stub.received:
        result = h.stub.result_for(item)
        await record_result(h.cj.store, result, EventEnvelope.for_result(result, "stub"))
    assert await h.cj.store.close_round_if_done(batch_id, 1)
    h.stub.answer = "after"
    await h.cj.resume(batch_id)
    await h.cj.resume(batch_id)  # resuming twice starts nothing twice
    result = await h.cj.wait_for_completion(batch_id, timeout=60)
    assert result.status == "completed"
    rounds = [r.round_number for r in await h.cj.store.comparisons(batch_id)]
    assert rounds.count(2) == 3 and len(rounds) == 30


@pytest.mark.parametrize("restart", ["resume", "redelivery"])
async def test_crash_after_recording_a_rounds_last_callback_before_closing_it(
    make_harness: MakeHarness, restart: str
) -> None:
    essays, qualities = essays_with_quality(6)
    h = await make_harness(stub=judging_stub(qualities, answer=None), max_concurrent_comparisons=3)
    batch_id = await h.cj.start_batch(essays, instructions="Describe a journey.")
    envelopes = [
        EventEnvelope.for_result(h.stub.result_for(item), "stub") for item in h.stub.received
    ]
    # recorded in two groups; the process dies before the round is closed
    first = await apply_callbacks(h.cj.store, envelopes[:2], h.cj.callbacks)
    last = await apply_callbacks(h.cj.store, envelopes[2:], h.cj.callbacks)
    assert [o.round_open for o, _ in first] == [True, True]  # its round is not due: no close
    assert [o.round_open for o, _ in last] == [False]  # the round is due
    assert (await h.cj.store.latest_round(batch_id)).status == RoundStatus.OPEN  # type: ignore[union-attr]
    h.stub.answer = "after"
    if restart == "resume":
        await h.cj.resume(batch_id)
    else:  # the bus delivers the unacknowledged group again: ignored, and it moves the batch on
        await h.cj.handle_callbacks(envelopes[2:])
    result = await h.cj.wait_for_completion(batch_id, timeout=60)
    assert result.status == "completed"
    rows = await h.cj.store.comparisons(batch_id)
    assert len(rows) == 30 and [r.round_number for r in rows].count(2) == 3
    assert (await h.cj.progress(batch_id)).ignored_callbacks == (restart == "redelivery")


async def test_a_failed_advance_is_retried_by_the_redelivered_callback(
    make_harness: MakeHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    essays, qualities = essays_with_quality(6)
    h = await make_harness(stub=judging_stub(qualities), max_concurrent_comparisons=3)
    real_outcomes = Store.outcomes
    calls: list[int] = []

    async def flaky(self: Store, batch_id: str):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 2:  # the advance after round 1 fails once
            raise OperationalError("SELECT", {}, Exception("database is locked"))
        return await real_outcomes(self, batch_id)

    monkeypatch.setattr(Store, "outcomes", flaky)
    batch_id = await h.cj.start_batch(essays, instructions="Describe a journey.")
    result = await h.cj.wait_for_completion(batch_id, timeout=60)
    assert result.status == "completed"
    rows = await h.cj.store.comparisons(batch_id)
    assert len(rows) == 30 and all(r.status == ComparisonStatus.SUCCEEDED for r in rows)
    assert max(r.round_number for r in rows) == 10
    # the redelivered group: the callback that closed round 1 and any delivered with it
    assert 1 <= (await h.cj.progress(batch_id)).ignored_callbacks <= 3


async def test_an_error_that_would_repeat_fails_the_batch_instead_of_looping(
    make_harness: MakeHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    essays, qualities = essays_with_quality(6)
    h = await make_harness(stub=judging_stub(qualities), max_concurrent_comparisons=3)
    real_plan = rounds.plan_next_round

    def broken(batch_id: str, number: int, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        if number == 3:
            raise RuntimeError("planner bug")
        return real_plan(batch_id, number, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(rounds, "plan_next_round", broken)
    batch_id = await h.cj.start_batch(essays, instructions="Describe a journey.")
    result = await h.cj.wait_for_completion(batch_id, timeout=60)
    assert (result.status, result.stop_reason) == ("failed", "internal_error")
    assert "RuntimeError: planner bug" in (result.message or "")
    assert (result.rounds, result.comparisons_succeeded) == (2, 6)
    assert (await h.cj.progress(batch_id)).ignored_callbacks == 0  # nothing was redelivered
