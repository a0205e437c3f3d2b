"""The job table contract, run against both backends (the queue's SQLite file, real Redis).

Times are passed in explicitly, as in the queue's own contract tests.
"""

from __future__ import annotations

import uuid

from cjllm.contracts import QueueItemState
from cjllm.provider.job_plan import LaneGroup
from cjllm.provider.jobs import JobLineRecord, JobState, NewJob, item_owner, job_table_for
from cjllm.provider.queue import Finished, Queue, Retry
from tests.provider.test_queue import T0, claim, item, put

GROUP = "batch:async:0123456789abcdef"


def lane(n: int) -> str:
    """A lane key of GROUP (the compatibility key part is 64 hex digits)."""
    return f"{GROUP}:{n:064x}"


def new_job(lines: list[list[str]], *, owner: str = "p1", at: float = T0) -> NewJob:
    job_id = uuid.uuid4().hex[:16]
    return NewJob(
        job_id=job_id,
        provider="anthropic",
        model="m",
        mode="async_batch",
        lines=[JobLineRecord(f"{job_id}-{n}", tuple(ids)) for n, ids in enumerate(lines)],
        cj_batch_ids=["cj-1"],
        created_at=at,
        hold_until=at + 7 * 86400,
        lease_owner=owner,
        lease_until=at + 60,
    )


async def test_lane_comparisons_are_grouped_for_jobs_and_never_claimed_by_the_serial_worker(
    queue: Queue,
) -> None:
    table = job_table_for(queue)
    serial = await put(queue, item("k1", at=T0))
    await put(queue, item(lane(1), at=T0), item(lane(2), at=T0 + 5), item(lane(1), at=T0 + 9))
    assert await claim(queue, T0 + 100) == serial  # the lane is left alone
    assert await claim(queue, T0 + 100, owner="w2") == []
    assert await table.lane_groups(T0 + 100) == [LaneGroup(GROUP, 3, T0, T0 + 9)]
    items = await table.lane_items(GROUP, T0 + 100, 10)
    assert [i.enqueued_at for i in items] == [T0, T0 + 5, T0 + 9]


async def test_recording_leases_the_items_to_the_job_or_changes_nothing(queue: Queue) -> None:
    table = job_table_for(queue)
    a, b, c = await put(queue, *(item(lane(1), at=T0 + i) for i in range(3)))
    job = new_job([[a, b], [c]])
    assert await table.record(job, T0 + 10)
    held = {i.queue_id: i for i in await table.items([a, b, c])}
    assert {i.state for i in held.values()} == {QueueItemState.PROCESSING}
    assert {i.lease_owner for i in held.values()} == {item_owner(job.job_id)}
    assert held[c].bundle_id == f"{job.job_id}-1"
    assert [line.queue_ids for line in await table.lines(job.job_id)] == [(a, b), (c,)]
    # a second job wanting one of them (a process that lost the race) records nothing
    (d,) = await put(queue, item(lane(1), at=T0 + 4))
    assert not await table.record(new_job([[c, d]]), T0 + 10)
    assert (await table.items([d]))[0].state is QueueItemState.QUEUED
    assert [j.job_id for j in await table.jobs()] == [job.job_id]
    assert await table.lane_groups(T0 + 10) == [LaneGroup(GROUP, 1, T0 + 4, T0 + 4)]
    # the sweeper does not take back items held by a job
    assert await queue.recover_leases(T0 + 86400) == 0


async def test_a_job_is_moved_on_only_by_the_holder_of_its_claim(queue: Queue) -> None:
    table = job_table_for(queue)
    (a,) = await put(queue, item(lane(1)))
    job = new_job([[a]], owner="p1")
    assert await table.record(job, T0)
    assert await table.claim("p2", T0 + 1, T0 + 61, 10) == []  # p1 holds it until T0 + 60
    assert not await table.update(job.job_id, "p2", {"vendor_id": "v1"})
    assert await table.update(job.job_id, "p1", {"attempted_at": T0 + 1}, release=False)
    assert await table.release_leases("p1") == 1
    (claimed,) = await table.claim("p2", T0 + 1, T0 + 61, 10)
    assert claimed.lease_owner == "p2" and claimed.attempted_at == T0 + 1
    changes = {
        "state": JobState.SUBMITTED,
        "vendor_id": "v1",
        "counts": {"processing": 1},
        "next_check_at": T0 + 30,
        "adopted": True,
    }
    assert await table.update(job.job_id, "p2", changes)
    assert await table.claim("p3", T0 + 29, T0 + 89, 10) == []  # not due yet
    (due,) = await table.claim("p3", T0 + 30, T0 + 90, 10)
    assert (due.state, due.vendor_id, due.adopted, dict(due.counts)) == (
        JobState.SUBMITTED,
        "v1",
        True,
        {"processing": 1},
    )
    assert await table.vendor_ids() == {"v1"}


async def test_a_cancel_makes_an_open_job_due_and_settled_jobs_are_purged(queue: Queue) -> None:
    table = job_table_for(queue)
    (a,) = await put(queue, item(lane(1)))
    job = new_job([[a]])
    assert await table.record(job, T0)
    assert await table.update(job.job_id, "p1", {"next_check_at": T0 + 500})
    await table.request_cancel([job.job_id], T0 + 5)
    (due,) = await table.claim("p1", T0 + 5, T0 + 65, 10)
    assert due.cancel_requested
    assert [j.job_id for j in await table.jobs(cj_batch_id="cj-1", open_only=True)] == [job.job_id]
    assert await table.jobs(cj_batch_id="cj-2") == []
    settled = {"state": JobState.SETTLED, "settled_at": T0 + 10, "excluded": ["v9"]}
    assert await table.update(job.job_id, "p1", settled)
    assert await table.claim("p1", T0 + 10**6, T0 + 10**6, 10) == []
    assert await table.jobs(open_only=True) == []
    assert (await table.counts())[JobState.SETTLED] == 1
    assert await table.purge(T0 + 10) == 0
    assert await table.purge(T0 + 11) == 1
    assert await table.get(job.job_id) is None and await table.lines(job.job_id) == []


async def test_taking_queued_lane_items_leaves_the_others_alone(queue: Queue) -> None:
    table = job_table_for(queue)
    a, b = await put(queue, item(lane(1)), item(lane(2)))
    assert await table.record(new_job([[b]]), T0)
    taken = await table.take([a, b], "canceller", T0, T0 + 30)
    assert [i.queue_id for i in taken] == [a]
    assert await queue.finish([Finished(a, QueueItemState.FAILED, "t", "k", b"e")], T0) == [a]
    assert await queue.retry("canceller", [Retry(a, T0, 1, "x")], T0) == []
