"""The queue contract, run against both backends (SQLite file, real Redis).

Times are passed in explicitly, so lease, linger, retry and TTL rules are checked without
sleeping or measuring anything.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path

import pytest

from cjllm.contracts import QueueItemState
from cjllm.provider.queue import (
    Finished,
    NewItem,
    Queue,
    QueueFull,
    QueueUnavailable,
    Retry,
    Spent,
    queue_from_url,
)
from cjllm.provider.sqlite_enqueue import enqueue
from cjllm.provider.sqlite_queue import SQLiteQueue

T0 = 1_000_000.0
REPO = Path(__file__).resolve().parents[2]


def item(
    key: str = "k1",
    *,
    hint: int = 3,
    at: float = T0,
    ttl: float = 3600,
    tokens: int = 10,
    budget: int = 10_000,
    payload: str = '{"p": 1}',
) -> NewItem:
    return NewItem(
        queue_id=str(uuid.uuid4()),
        correlation_id=str(uuid.uuid4()),
        key=key,
        hint=hint,
        tokens=tokens,
        budget=budget,
        payload=payload,
        enqueued_at=at,
        expires_at=at + ttl,
    )


async def put(queue: Queue, *items: NewItem) -> list[str]:
    return [(await queue.enqueue(it))[0] for it in items]


def done(queue_id: str, n: int = 0) -> Finished:
    return Finished(queue_id, QueueItemState.COMPLETED, "topic", f"key-{n}", f"env-{n}".encode())


async def claim(queue: Queue, now: float, owner: str = "w1", linger: float = 10.0) -> list[str]:
    return [it.queue_id for it in await queue.claim(owner, "b", now, now + 30, linger)]


async def test_a_full_bundle_is_claimed_at_once_oldest_first(queue: Queue) -> None:
    ids = await put(queue, *(item(at=T0 + i) for i in range(7)))
    assert await claim(queue, T0 + 7) == ids[:3]
    assert await claim(queue, T0 + 7) == ids[3:6]
    assert await claim(queue, T0 + 7) == []  # the seventh waits for company or the linger


async def test_a_partial_bundle_goes_when_its_oldest_item_has_waited_the_linger(
    queue: Queue,
) -> None:
    ids = await put(queue, item(at=T0), item(at=T0 + 1))
    assert await claim(queue, T0 + 9.99, linger=10) == []
    assert await claim(queue, T0 + 10, linger=10) == ids


async def test_keys_never_mix(queue: Queue) -> None:
    a = await put(queue, item("a", at=T0), item("a", at=T0 + 2), item("a", at=T0 + 4))
    b = await put(queue, item("b", at=T0 + 1), item("b", at=T0 + 3), item("b", at=T0 + 5))
    assert await claim(queue, T0 + 6) == a
    assert await claim(queue, T0 + 6) == b


async def test_an_item_that_asked_for_less_heads_its_own_bundle(queue: Queue) -> None:
    big = [item(hint=3, at=T0 + i) for i in (0, 2, 3)]
    small = item(hint=1, at=T0 + 1)
    ids = await put(queue, big[0], small, big[1], big[2])
    assert await claim(queue, T0 + 4) == [ids[0], ids[2], ids[3]]
    assert await claim(queue, T0 + 4) == [ids[1]]


async def test_the_token_budget_caps_a_bundle(queue: Queue) -> None:
    ids = await put(queue, *(item(hint=3, tokens=400, budget=1000, at=T0 + i) for i in range(3)))
    assert await claim(queue, T0 + 3) == ids[:2]


async def test_an_expired_lease_makes_items_claimable_again(queue: Queue) -> None:
    ids = await put(queue, *(item(at=T0 + i) for i in range(3)))
    claimed = await queue.claim("dead", "b1", T0 + 3, T0 + 33, 10)
    assert [it.lease_owner for it in claimed] == ["dead"] * 3
    assert await queue.recover_leases(T0 + 32.9) == 0
    assert await claim(queue, T0 + 32.9, owner="w2") == []
    assert await queue.recover_leases(T0 + 33) == 3
    again = await queue.claim("w2", "b2", T0 + 34, T0 + 64, 10)
    assert [it.queue_id for it in again] == ids
    assert [it.attempts for it in again] == [1, 1, 1]


async def test_leases_a_dead_process_held_come_back_ready_now(queue: Queue) -> None:
    ids = await put(queue, *(item(at=T0 + i) for i in range(3)))
    await queue.claim("crashed", "b1", T0 + 3, T0 + 33, 10)
    assert await queue.recover_leases(T0 + 4, expired_by=T0 + 40) == 3
    again = await queue.claim("w2", "b2", T0 + 4, T0 + 34, 10)  # not only after T0 + 40
    assert [it.queue_id for it in again] == ids


async def test_extending_a_lease_keeps_it(queue: Queue) -> None:
    ids = await put(queue, *(item(at=T0 + i) for i in range(3)))
    await claim(queue, T0 + 3, owner="w1")
    assert await queue.extend("w1", ids, T0 + 100) == 3
    assert await queue.extend("w2", ids, T0 + 500) == 0
    assert await queue.recover_leases(T0 + 99) == 0
    assert await queue.recover_leases(T0 + 100) == 3


async def test_finish_records_one_callback_even_when_two_workers_finish(queue: Queue) -> None:
    (qid,) = await put(queue, item(hint=1))
    await claim(queue, T0, owner="slow")
    await queue.recover_leases(T0 + 31)  # the slow worker's lease lapsed
    assert await claim(queue, T0 + 31, owner="fast") == [qid]
    assert await queue.finish([done(qid, 1)], T0 + 32) == [qid]  # the late answer still counts
    assert await queue.finish([done(qid, 2)], T0 + 33) == []  # no second callback
    assert await queue.retry("fast", [Retry(qid, T0, 1, "x")], T0 + 33) == []
    entries = await queue.claim_outbox(T0 + 40, T0 + 70, 10)
    assert [(e.message_key, e.envelope) for e in entries] == [("key-1", b"env-1")]
    stored = await queue.get(qid)
    assert stored is not None and stored.state is QueueItemState.COMPLETED


async def test_a_finished_group_records_each_item_once_in_its_first_state(queue: Queue) -> None:
    a, b, c = await put(queue, *(item(at=T0 + i) for i in range(3)))
    await claim(queue, T0 + 3)
    group = [
        Finished(b, QueueItemState.FAILED, "topic", "b-first", b"b1"),
        done(a, 1),
        Finished(b, QueueItemState.COMPLETED, "topic", "b-again", b"b2"),  # a repeat
    ]
    assert await queue.finish(group, T0 + 4) == [b, a]
    assert await queue.finish(group, T0 + 5) == []  # all final already: no callbacks
    entries = await queue.claim_outbox(T0 + 6, T0 + 36, 10)
    assert [(e.message_key, e.envelope) for e in entries] == [
        ("b-first", b"b1"),
        ("key-1", b"env-1"),
    ]
    states = {q: stored.state for q in (a, b, c) if (stored := await queue.get(q)) is not None}
    assert states == {
        a: QueueItemState.COMPLETED,
        b: QueueItemState.FAILED,
        c: QueueItemState.PROCESSING,
    }


async def test_only_the_lease_owner_can_requeue(queue: Queue) -> None:
    (qid,) = await put(queue, item(hint=1))
    await claim(queue, T0, owner="w1")
    assert await queue.retry("w2", [Retry(qid, T0, 1, "nope")], T0) == []
    assert await queue.retry("w1", [Retry(qid, T0, 1, "ok")], T0) == [qid]


async def test_a_retry_waits_for_its_time_and_goes_alone(queue: Queue) -> None:
    ids = await put(queue, *(item(at=T0 + i) for i in range(3)))
    await claim(queue, T0 + 3)
    spent = Spent(100, 20, 0.5)
    retry = Retry(ids[1], T0 + 20, 1, "missing_item: not answered", spent=spent)
    assert await queue.retry("w1", [retry], T0 + 4) == [ids[1]]
    await put(queue, item(at=T0 + 5), item(at=T0 + 6))
    assert await claim(queue, T0 + 19, linger=60) == []  # fresh items linger; retry not due
    assert await claim(queue, T0 + 20, linger=60) == [ids[1]]  # due, oldest, alone
    stored = await queue.get(ids[1])
    assert stored is not None
    assert (stored.attempts, stored.hint, stored.spent) == (1, 1, spent)
    assert stored.last_error == "missing_item: not answered"


async def test_a_retry_with_its_hint_rides_with_pending_work_when_due(queue: Queue) -> None:
    ids = await put(queue, *(item(hint=5, at=T0 + i) for i in range(3)))
    assert await claim(queue, T0 + 10) == ids  # the linger passed
    await queue.retry("w1", [Retry(ids[0], T0 + 20, 5, "missing_item: x")], T0 + 11)
    fresh = await put(queue, item(hint=5, at=T0 + 12), item(hint=5, at=T0 + 13))
    assert await claim(queue, T0 + 19, linger=60) == []  # not due; fresh items linger
    assert await claim(queue, T0 + 20, linger=60) == [ids[0], *fresh]  # due: one bundle


async def test_a_split_does_not_cost_an_attempt(queue: Queue) -> None:
    ids = await put(queue, *(item(hint=4, at=T0 + i) for i in range(4)))
    await claim(queue, T0 + 4)
    split = [Retry(q, T0 + 5, 2, "too large", count_attempt=False) for q in ids]
    await queue.retry("w1", split, T0 + 5)
    first = await queue.claim("w1", "b", T0 + 5, T0 + 35, 10)
    assert [(it.queue_id, it.attempts) for it in first] == [(ids[0], 0), (ids[1], 0)]


async def test_items_past_their_ttl_are_not_claimed_but_handed_to_the_sweeper(
    queue: Queue,
) -> None:
    old = await put(queue, item(at=T0, ttl=5), item(at=T0 + 1, ttl=5))
    fresh = await put(queue, item(hint=1, at=T0 + 2, ttl=500))
    assert await claim(queue, T0 + 7) == fresh
    expired = await queue.claim_expired("sweeper", T0 + 7, T0 + 37, 100)
    assert sorted(it.queue_id for it in expired) == sorted(old)
    assert all(it.payload for it in expired)
    assert await queue.claim_expired("sweeper2", T0 + 8, T0 + 38, 100) == []
    finished = [Finished(q, QueueItemState.EXPIRED, "t", q, b"e") for q in old]
    assert sorted(await queue.finish(finished, T0 + 8)) == sorted(old)
    stored = await queue.get(old[0])
    assert stored is not None and stored.state is QueueItemState.EXPIRED


async def test_capacity_counts_items_and_bytes(backend_url: str) -> None:
    q = queue_from_url(backend_url, max_items=3, max_bytes=10_000)
    try:
        a, _, _ = await put(q, item(), item(), item())
        with pytest.raises(QueueFull) as full:
            await q.enqueue(item())
        assert full.value.limit == "items"
        await claim(q, T0 + 100)
        await q.finish([done(a)], T0 + 100)  # a finished item frees its place ...
        with pytest.raises(QueueFull) as full:
            await q.enqueue(item(payload="x" * 20_000))  # ... but not room for this
        assert full.value.limit == "bytes"
        await q.enqueue(item())
    finally:
        await q.close()


async def test_a_known_correlation_id_is_not_queued_twice(queue: Queue) -> None:
    first = item()
    again = NewItem(**{**first.__dict__, "queue_id": str(uuid.uuid4())})
    assert await queue.enqueue(first) == (first.queue_id, True)
    assert await queue.enqueue(again) == (first.queue_id, False)
    assert (await queue.depth(T0)).queued == 1


async def test_a_group_is_queued_in_one_step_with_an_answer_for_each_item(
    backend_url: str,
) -> None:
    q = queue_from_url(backend_url, max_items=4, max_bytes=10_000)
    try:
        (old,) = await put(q, item())
        stored = await q.get(old)
        assert stored is not None
        repeat_old = NewItem(**{**item().__dict__, "correlation_id": stored.correlation_id})
        a, b = item(at=T0 + 1), item(at=T0 + 2)
        repeat_a = NewItem(**{**a.__dict__, "queue_id": str(uuid.uuid4())})
        too_big, c, d = item(payload="x" * 20_000), item(at=T0 + 3), item(at=T0 + 4)
        answers = await q.enqueue_many([a, repeat_old, repeat_a, too_big, b, c, d])
        assert answers[:3] == [(a.queue_id, True), (old, False), (a.queue_id, False)]
        assert isinstance(answers[3], QueueFull) and answers[3].limit == "bytes"
        assert answers[4:6] == [(b.queue_id, True), (c.queue_id, True)]
        assert isinstance(answers[6], QueueFull) and answers[6].limit == "items"
        assert (await q.depth(T0)).queued == 4
        assert await claim(q, T0 + 100, linger=1) == [old, a.queue_id, b.queue_id]
    finally:
        await q.close()


async def test_outbox_entries_are_leased_until_deleted(queue: Queue) -> None:
    ids = await put(queue, *(item(at=T0 + i) for i in range(3)))
    await claim(queue, T0 + 3)
    await queue.finish([done(q, n) for n, q in enumerate(ids)], T0 + 4)
    first = await queue.claim_outbox(T0 + 5, T0 + 35, 10)
    assert [e.message_key for e in first] == ["key-0", "key-1", "key-2"]
    assert await queue.claim_outbox(T0 + 6, T0 + 36, 10) == []  # leased to the first publisher
    await queue.delete_outbox([first[0].entry_id, first[2].entry_id])
    again = await queue.claim_outbox(T0 + 35, T0 + 65, 10)  # never acknowledged: back
    assert [e.message_key for e in again] == ["key-1"]


async def test_depth_counts_comparisons_by_state(queue: Queue) -> None:
    ids = await put(queue, *(item(at=T0 + i) for i in range(5)))
    await claim(queue, T0 + 5)
    await queue.retry("w1", [Retry(ids[0], T0 + 100, 1, "later")], T0 + 6)
    depth = await queue.depth(T0 + 6)
    assert (depth.queued, depth.delayed, depth.processing, depth.outbox) == (3, 1, 2, 0)
    await queue.finish([done(ids[1])], T0 + 7)
    depth = await queue.depth(T0 + 7)
    assert (depth.queued, depth.processing, depth.outbox) == (3, 1, 1)
    assert depth.active_bytes == 4 * len(b'{"p": 1}')


async def test_two_processes_claiming_at_once_never_get_the_same_item(backend_url: str) -> None:
    q = queue_from_url(backend_url, max_items=100_000, max_bytes=10**9)
    now = time.time()
    ids: list[str] = []
    for k in range(3):
        ids += await put(q, *(item(f"key-{k}", hint=4, at=now - 100 + i) for i in range(100)))
    await q.close()
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.provider.claim_race",
            backend_url,
            owner,
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for owner in ("p1", "p2")
    ]
    # each holds a bundle before either goes on: both take part however the two are
    # scheduled, then they race each other for the other 73 bundles
    for p in procs:
        assert p.stdout is not None
        assert await p.stdout.readline() == b"claimed\n"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(b"go\n")
    outs = [json.loads(out) for out, _ in await asyncio.gather(*(p.communicate() for p in procs))]
    assert all(p.returncode == 0 for p in procs)
    first, second = (set(o) for o in outs)
    assert len(outs[0]) == len(first) and len(outs[1]) == len(second)
    assert first.isdisjoint(second)
    assert first | second == set(ids)
    assert first and second  # both really took part


async def _steps(q: SQLiteQueue, step: Awaitable[object]) -> int:
    """SQLite virtual-machine steps an awaited queue step takes (work, not time)."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    q._conn.set_progress_handler(count, 1)
    try:
        await step
    finally:
        q._conn.set_progress_handler(None, 1)
    return steps


async def test_sqlite_enqueue_costs_the_same_however_many_items_wait(tmp_path: Path) -> None:
    q = queue_from_url(f"sqlite:///{tmp_path / 'q.sqlite'}", max_items=10**6, max_bytes=10**10)
    assert isinstance(q, SQLiteQueue)
    try:
        await put(q, *(item(f"key-{i % 7}", at=T0 + i) for i in range(10)))
        early = await _steps(q, q.enqueue(item(at=T0 + 10)))
        q._write(
            lambda c: [
                enqueue(c, [item(f"key-{i % 7}", at=T0 + 11 + i)], q.max_items, q.max_bytes)
                for i in range(5000)
            ]
        )
        late = await _steps(q, q.enqueue(item(at=T0 + 6000)))
        assert late < 1.5 * early, (early, late)
        depth = await q.depth(T0 + 6000)
        assert depth.queued == 5012 and depth.active_bytes == 5012 * len(b'{"p": 1}')
    finally:
        await q.close()


async def test_sqlite_bundle_steps_cost_the_same_however_many_items_are_active(
    tmp_path: Path,
) -> None:
    """Extending and finishing a bundle find its rows by queue id: a state index walks
    every active item (a whole round's, thousands) for each bundle."""
    q = queue_from_url(f"sqlite:///{tmp_path / 'q.sqlite'}", max_items=10**6, max_bytes=10**10)
    assert isinstance(q, SQLiteQueue)
    try:
        # bundles of 25, as the service sends them (with three the plan happened to be right)
        await put(q, *(item("a", hint=25, at=T0 + i) for i in range(25)))
        await put(q, *(item("b", hint=25, at=T0 + 1 + i) for i in range(25)))
        await put(q, *(item(f"key-{i % 7}", at=T0 + 10) for i in range(10)))
        costs = []
        for _ in range(2):
            ids = await claim(q, T0 + 20)
            extend = await _steps(q, q.extend("w1", ids, T0 + 60))
            finish = await _steps(q, q.finish([done(x, n) for n, x in enumerate(ids)], T0 + 20))
            costs.append((extend, finish))
            await put(q, *(item(f"key-{i % 7}", at=T0 + 10) for i in range(5000)))
        (early_extend, early_finish), (late_extend, late_finish) = costs
        assert late_extend < 1.5 * early_extend, costs
        assert late_finish < 1.5 * early_finish, costs
    finally:
        await q.close()


def _totals(q: SQLiteQueue) -> tuple[int, int]:
    counted = q._read(
        lambda c: c.execute(
            "SELECT COUNT(*), COALESCE(SUM(size_bytes), 0) FROM items"
            " WHERE state IN ('queued', 'processing')"
        ).fetchone()
    )
    kept = q._read(lambda c: c.execute("SELECT items, bytes FROM totals").fetchone())
    assert tuple(kept) == tuple(counted)
    return int(kept[0]), int(kept[1])


async def test_sqlite_totals_follow_a_group_enqueue_with_repeats_and_refusals(
    tmp_path: Path,
) -> None:
    """The enqueue step moves the totals once for what it inserted (no insert trigger):
    repeats and items over capacity add nothing; a file made when an insert trigger kept
    them has it dropped on open, so nothing is counted twice."""
    path = str(tmp_path / "q.sqlite")
    q = SQLiteQueue(path, max_items=4, max_bytes=10**6)
    first = [item(at=T0 + i) for i in range(3)]
    await q.enqueue_many(first)
    q._write(  # the trigger an older version of the schema had
        lambda c: c.execute(
            "CREATE TRIGGER totals_on_insert AFTER INSERT ON items"
            " WHEN new.state IN ('queued', 'processing') BEGIN UPDATE totals SET"
            " items = items + 1, bytes = bytes + new.size_bytes WHERE id = 1; END"
        )
    )
    await q.close()
    q = SQLiteQueue(path, max_items=4, max_bytes=10**6)
    try:
        answers = await q.enqueue_many([first[0], item(at=T0 + 5), item(at=T0 + 6), first[1]])
        assert [type(a) for a in answers] == [tuple, tuple, QueueFull, tuple]
        assert _totals(q) == (4, 4 * len(b'{"p": 1}'))
        claimed = await claim(q, T0 + 10, linger=0.0)
        assert 0 < len(claimed) < 4
        await q.finish([done(queue_id) for queue_id in claimed], T0 + 10)
        left = 4 - len(claimed)
        assert _totals(q) == (left, left * len(b'{"p": 1}'))
    finally:
        await q.close()


# ---------------------------------------------------------------------- writers' turns (SQLite)

_HOLD_TURN = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1] + "-writer", os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("holding", flush=True)
time.sleep(3600)
"""


async def test_a_writer_waits_for_the_turn_another_process_holds(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    q = SQLiteQueue(path, max_items=100, max_bytes=10**6)
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLD_TURN, path, stdout=subprocess.PIPE
    )
    assert holder.stdout is not None
    assert await holder.stdout.readline() == b"holding\n"
    new = item()
    writing = asyncio.ensure_future(q.enqueue(new))
    await asyncio.sleep(0.3)  # (no claim on time: the write must still be waiting)
    assert not writing.done()
    holder.terminate()
    await holder.wait()
    assert await writing == (new.queue_id, True)
    assert (await q.depth(T0)).queued == 1
    await q.close()


_HOLD_TURN_UNTIL_TOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1] + "-writer", os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("holding", flush=True)
sys.stdin.readline()
fcntl.flock(fd, fcntl.LOCK_UN)
print("released", flush=True)
time.sleep(3600)
"""


async def test_a_stopped_process_holding_the_turn_makes_writers_fail_not_hang(
    tmp_path: Path,
) -> None:
    """A process stopped (Ctrl-Z) while it holds the turn: a writer gives up after the busy
    timeout as it would on SQLite's own lock (``QueueUnavailable``, nothing applied), and
    writes once the holder goes on and releases the turn."""
    path = str(tmp_path / "q.sqlite")
    q = SQLiteQueue(path, max_items=100, max_bytes=10**6, busy_timeout=0.2)
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLD_TURN_UNTIL_TOLD, path,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert await holder.stdout.readline() == b"holding\n"
        os.kill(holder.pid, signal.SIGSTOP)
        refused = item()
        with pytest.raises(QueueUnavailable, match="database is locked") as caught:
            await q.enqueue(refused)
        assert not caught.value.may_have_applied
        assert (await q.depth(T0)).queued == 0  # readers never take the turn
        os.kill(holder.pid, signal.SIGCONT)
        holder.stdin.write(b"release\n")
        await holder.stdin.drain()
        assert await holder.stdout.readline() == b"released\n"
        assert await q.enqueue(refused) == (refused.queue_id, True)
        assert (await q.depth(T0)).queued == 1
    finally:
        holder.kill()
        await holder.wait()
        await q.close()


async def test_a_writer_killed_holding_its_turn_does_not_block_the_queue(tmp_path: Path) -> None:
    """SIGKILL mid-transaction: the kernel drops the dead process's turn and SQLite rolls its
    transaction back, so the survivor writes and nothing of the dead one's step is kept."""
    path = str(tmp_path / "q.sqlite")
    q = SQLiteQueue(path, max_items=100, max_bytes=10**6)
    kept = item()
    await q.enqueue(kept)
    killed = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _DIE_MID_WRITE, path, stdout=subprocess.PIPE, cwd=REPO
    )
    assert killed.stdout is not None
    assert await killed.stdout.readline() == b"mid-write\n"
    killed.kill()
    await killed.wait()
    new = item()
    assert await q.enqueue(new) == (new.queue_id, True)
    depth = await q.depth(T0)
    assert depth.queued == 2  # the killed process's uncommitted item is not there
    await q.close()


_DIE_MID_WRITE = """
import sys, time, uuid
from cjllm.provider.queue import NewItem
from cjllm.provider.sqlite_enqueue import enqueue
from cjllm.provider.sqlite_queue import SQLiteQueue
q = SQLiteQueue(sys.argv[1], max_items=100, max_bytes=10**6)
def step(conn):
    enqueue(conn, [NewItem(str(uuid.uuid4()), str(uuid.uuid4()), "k1", 3, 10, 10_000,
                           "{}", 1_000_000.0, 1_000_000.0 + 3600)], 100, 10**6)
    print("mid-write", flush=True)
    time.sleep(3600)
q._write(step)
"""
