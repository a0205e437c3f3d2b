"""What settled rounds hold, read once: progress counters and pair outcomes equal a re-read."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from cjllm.cj.records import NewComparison, PairOutcome
from cjllm.cj.settled_rounds import KEPT_BATCHES
from cjllm.cj.store import Store
from cjllm.cj.tables import Comparison, ComparisonStatus
from tests.cj.batch_rows import new_batch
from tests.cj.test_store import fresh_pg_database


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/store.sqlite"
    else:
        url = await fresh_pg_database(request.getfixturevalue("postgres_url"))
    the_store = await Store.open(url)
    yield the_store
    await the_store.close()


async def _answer(store: Store, cid: uuid.UUID, bundle: str, tokens: int, ok: bool) -> None:
    """What a callback does to its row (conditional on the row still pending)."""
    async with store.write() as s:
        await s.execute(
            update(Comparison)
            .where(
                Comparison.request_correlation_id == cid,
                Comparison.status == ComparisonStatus.PENDING,
            )
            .values(
                status=ComparisonStatus.SUCCEEDED if ok else ComparisonStatus.FAILED,
                bundle_id=bundle,
                prompt_tokens=tokens,
                completion_tokens=1,
                total_tokens=tokens + 1,
                cost_estimate=tokens / 1000,
            )
        )


async def _recounted(store: Store, batch_id: str) -> tuple[object, ...]:
    """The counters read the plain way: every row of the batch."""
    async with store.read() as s:
        rows = (
            await s.execute(
                select(
                    Comparison.status,
                    Comparison.bundle_id,
                    Comparison.prompt_tokens,
                    Comparison.completion_tokens,
                    Comparison.total_tokens,
                    Comparison.cost_estimate,
                ).where(Comparison.batch_id == batch_id)
            )
        ).all()
    n = {st: sum(1 for r in rows if r[0] == st) for st in ComparisonStatus}
    return (
        len(rows),
        n[ComparisonStatus.PENDING],
        n[ComparisonStatus.SUCCEEDED],
        n[ComparisonStatus.FAILED],
        len({r[1] for r in rows if r[1] is not None}),
        sum(r[2] or 0 for r in rows),
        sum(r[3] or 0 for r in rows),
        sum(r[4] or 0 for r in rows),
        pytest.approx(sum(r[5] or 0.0 for r in rows)),
    )


async def _reread(store: Store, batch_id: str) -> list[PairOutcome]:
    """The pair outcomes read the plain way: every row of the batch, in row order."""
    async with store.read() as s:
        rows = await s.execute(
            select(
                Comparison.essay_a_id,
                Comparison.essay_b_id,
                Comparison.status,
                Comparison.winner,
                Comparison.attempt,
                Comparison.round_number,
            )
            .where(Comparison.batch_id == batch_id)
            .order_by(Comparison.id)
        )
        return [PairOutcome(a, b, ComparisonStatus(st), w, at, rn) for a, b, st, w, at, rn in rows]


async def _counters(store: Store, batch_id: str) -> tuple[object, ...]:
    assert await store.outcomes(batch_id) == await _reread(store, batch_id)
    p = await store.progress(batch_id)
    return (
        p.requested,
        p.pending,
        p.succeeded,
        p.failed,
        p.provider_calls,
        p.prompt_tokens,
        p.completion_tokens,
        p.total_tokens,
        p.cost_estimate,
    )


async def test_counters_and_outcomes_equal_a_reread_as_rounds_settle(store: Store) -> None:
    batch_id = await new_batch(store, essays=6)
    pairs = [NewComparison("e0", "e1"), NewComparison("e2", "e3"), NewComparison("e4", "e5")]
    first = await store.add_round(batch_id, 1, 2, pairs)
    assert await _counters(store, batch_id) == await _recounted(store, batch_id)
    await _answer(store, first[0].request_correlation_id, "b1", 10, ok=True)
    assert await _counters(store, batch_id) == await _recounted(store, batch_id)
    await _answer(store, first[1].request_correlation_id, "b1", 20, ok=False)
    await _answer(store, first[2].request_correlation_id, "b2", 30, ok=True)
    assert await _counters(store, batch_id) == await _recounted(store, batch_id)  # settled
    second = await store.add_round(batch_id, 2, 2, pairs[:2])
    assert await _counters(store, batch_id) == await _recounted(store, batch_id)
    # a bundle id seen in a settled round counts once when a later round names it too
    await _answer(store, second[0].request_correlation_id, "b2", 40, ok=True)
    assert await _counters(store, batch_id) == await _recounted(store, batch_id)
    await _answer(store, second[1].request_correlation_id, "b3", 50, ok=True)
    await store.add_round(batch_id, 3, 2, [])  # a round with no rows ends nothing
    await store.add_round(batch_id, 4, 2, pairs[2:])
    expected = await _recounted(store, batch_id)
    assert await _counters(store, batch_id) == expected
    assert (await store.progress(batch_id)).rounds == 4
    # another process's store (nothing kept yet) reads the same
    url = store.engine.url.render_as_string(hide_password=False)
    other = await Store.open(url, run_migrations=False)
    try:
        assert await _counters(other, batch_id) == expected
    finally:
        await other.close()


async def test_a_settled_round_is_read_once(store: Store) -> None:
    batch_id = await new_batch(store, essays=6)
    (row,) = await store.add_round(batch_id, 1, 2, [NewComparison("e0", "e1")])
    await _answer(store, row.request_correlation_id, "b1", 10, ok=True)
    assert (await store.progress(batch_id)).prompt_tokens == 10  # round 1 settled: kept
    assert (await store.outcomes(batch_id))[0].winner is None
    async with store.write() as s:  # what no code path does: change a final row
        await s.execute(update(Comparison).values(prompt_tokens=99, winner="essay_a"))
    assert (await store.progress(batch_id)).prompt_tokens == 10
    assert (await store.outcomes(batch_id))[0].winner is None  # as it was kept
    url = store.engine.url.render_as_string(hide_password=False)
    fresh = await Store.open(url, run_migrations=False)
    try:
        assert (await fresh.progress(batch_id)).prompt_tokens == 99
        assert (await fresh.outcomes(batch_id))[0].winner == "essay_a"
    finally:
        await fresh.close()


async def test_a_store_keeps_the_settled_rounds_of_a_few_batches(store: Store) -> None:
    batches = [await new_batch(store, essays=6) for _ in range(KEPT_BATCHES + 1)]
    for batch_id in batches:
        (row,) = await store.add_round(batch_id, 1, 2, [NewComparison("e0", "e1")])
        await _answer(store, row.request_correlation_id, "b1", 10, ok=True)
        assert (await store.progress(batch_id)).prompt_tokens == 10
        assert len(await store.outcomes(batch_id)) == 1
    async with store.write() as s:  # what no code path does: change final rows
        await s.execute(update(Comparison).values(prompt_tokens=99))
    # the first batch's rounds were let go (the oldest), the last one's are kept
    assert (await store.progress(batches[0])).prompt_tokens == 99
    assert (await store.progress(batches[-1])).prompt_tokens == 10
