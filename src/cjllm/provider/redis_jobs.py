"""The job table under the Redis queue's own prefix.

Layout (``P`` is the queue's prefix, so a job lives in the same cluster slot as its items):

- ``P:job:<id>`` hash: the job record (the fields of :class:`~cjllm.provider.jobs.BatchJob`;
  ``""`` for none, JSON for ``counts``, ``excluded`` and ``cj_batch_ids``);
- ``P:job:<id>:lines`` list: one ``"<custom_id> <queue_id>,<queue_id>…"`` per line;
- ``P:jobs:due`` open jobs scored by their next check; ``P:jobs:all`` every job by creation;
- ``P:jobs:cj:<cj_batch_id>`` set of the jobs serving a CJ batch;
- ``P:jobs:vendor`` hash: every vendor job id known (submitted, adopted or excluded) → job.

Recording a job is one script that checks every item is still queued and available, leases
them all to the job and writes the job, or changes nothing. Every change is one Lua
script (:mod:`cjllm.provider.redis_job_scripts`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from redis.exceptions import RedisError

from cjllm.provider.job_plan import LANE_PREFIX, LaneGroup
from cjllm.provider.jobs import (
    UPDATABLE,
    BatchJob,
    JobLineRecord,
    JobState,
    NewJob,
    item_owner,
)
from cjllm.provider.queue import QueuedItem
from cjllm.provider.redis_job_scripts import JOB_SCRIPTS
from cjllm.provider.redis_queue import RedisQueue, item_from_hash, redis_number, unavailable


def _encode(name: str, value: Any) -> str:
    if value is None:
        return ""
    if name == "counts":
        return json.dumps(dict(value))
    if name in ("excluded", "cj_batch_ids"):
        return json.dumps(list(value))
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return redis_number(value)
    if isinstance(value, JobState):
        return value.value
    return str(value)


def _str(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _job(flat: Sequence[bytes]) -> BatchJob:
    f = {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}

    def num(name: str) -> float | None:
        return float(f[name]) if f.get(name) else None

    return BatchJob(
        job_id=f["job_id"],
        provider=f["provider"],
        model=f["model"],
        mode=f["mode"],
        state=JobState(f["state"]),
        n_lines=int(f["n_lines"]),
        n_items=int(f["n_items"]),
        created_at=float(f["created_at"]),
        next_check_at=float(f["next_check_at"]),
        poll_interval=num("poll_interval") or 0.0,
        vendor_id=f.get("vendor_id") or None,
        vendor_status=f.get("vendor_status") or None,
        counts=json.loads(f.get("counts") or "{}"),
        attempted_at=num("attempted_at"),
        lines_sent=int(f.get("lines_sent") or 0),
        attempts=int(f.get("attempts") or 0),
        submitted_at=num("submitted_at"),
        ended_at=num("ended_at"),
        settled_at=num("settled_at"),
        adopted=f.get("adopted") == "1",
        excluded=tuple(json.loads(f.get("excluded") or "[]")),
        cancel_requested=f.get("cancel_requested") == "1",
        cancel_sent=f.get("cancel_sent") == "1",
        error=f.get("error") or None,
        cj_batch_ids=tuple(json.loads(f.get("cj_batch_ids") or "[]")),
        lease_owner=f.get("lease_owner") or None,
        lease_until=num("lease_until"),
    )


class RedisJobs:
    """Redis backend of :class:`cjllm.provider.jobs.JobTable`."""

    def __init__(self, queue: RedisQueue) -> None:
        # the job table shares the queue's client and key prefix on purpose
        self._r = queue._r
        self.prefix = queue.prefix
        self._scripts = {name: self._r.register_script(body) for name, body in JOB_SCRIPTS.items()}

    async def _call(self, name: str, *args: Any) -> Any:
        try:
            return await self._scripts[name](args=[self.prefix, *args])
        except RedisError as exc:
            raise unavailable(f"job table: {name}", exc) from exc

    async def _hashes(self, keys: Sequence[str]) -> list[dict[bytes, bytes]]:
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hgetall(key)
                found: list[dict[bytes, bytes]] = await pipe.execute()
        except RedisError as exc:
            raise unavailable("job table: read", exc) from exc
        return found

    @staticmethod
    def _flat(fields: dict[bytes, bytes]) -> list[bytes]:
        return [x for pair in fields.items() for x in pair]

    # ------------------------------------------------------------------ the batch lane

    async def lane_groups(self, now: float) -> list[LaneGroup]:
        reply = await self._call("lane_groups", redis_number(now), LANE_PREFIX)
        return [
            LaneGroup(g.decode(), int(n), float(oldest), float(newest))
            for g, n, oldest, newest in reply
        ]

    async def lane_items(
        self, group: str | None, now: float, limit: int, *, available_only: bool = True
    ) -> list[QueuedItem]:
        prefix = LANE_PREFIX if group is None else group + ":"
        reply = await self._call(
            "lane_items", redis_number(now), limit, "1" if available_only else "0", prefix
        )
        items = sorted(
            (item_from_hash(flat) for flat in reply), key=lambda i: (i.enqueued_at, i.queue_id)
        )
        return items[:limit]

    # ------------------------------------------------------------------ recording

    async def record(self, job: NewJob, now: float) -> bool:
        fields: list[Any] = []
        values: dict[str, Any] = {
            "job_id": job.job_id,
            "provider": job.provider,
            "model": job.model,
            "mode": job.mode,
            "state": JobState.RECORDED,
            "n_lines": len(job.lines),
            "n_items": len(job.queue_ids),
            "created_at": job.created_at,
            "next_check_at": now,
            "counts": {},
            "excluded": [],
            "cj_batch_ids": list(job.cj_batch_ids),
            "lease_owner": job.lease_owner,
            "lease_until": job.lease_until,
        }
        for name, value in values.items():
            fields += [name, _encode(name, value)]
        args: list[Any] = [
            redis_number(now),
            item_owner(job.job_id),
            redis_number(job.hold_until),
            job.job_id,
            len(fields),
            *fields,
            len(job.lines),
        ]
        for line in job.lines:
            args += [line.custom_id, len(line.queue_ids), *line.queue_ids]
        args += list(job.cj_batch_ids)
        return int(await self._call("record", *args)) == 1

    async def take(
        self, queue_ids: Sequence[str], owner: str, now: float, lease_until: float
    ) -> list[QueuedItem]:
        if not queue_ids:
            return []
        reply = await self._call(
            "take", redis_number(now), owner, redis_number(lease_until), *queue_ids
        )
        return [item_from_hash(flat) for flat in reply]

    # ------------------------------------------------------------------ claiming and updating

    async def claim(self, owner: str, now: float, lease_until: float, limit: int) -> list[BatchJob]:
        reply = await self._call(
            "claim", redis_number(now), owner, redis_number(lease_until), limit
        )
        return [_job(flat) for flat in reply]

    async def update(
        self, job_id: str, owner: str, changes: Mapping[str, Any], *, release: bool = True
    ) -> bool:
        unknown = set(changes) - UPDATABLE
        if unknown:
            raise ValueError(f"job fields not updatable: {sorted(unknown)}")
        args: list[Any] = [job_id, owner, "1" if release else "0"]
        for name, value in changes.items():
            args += [name, _encode(name, value)]
        return int(await self._call("update", *args)) == 1

    async def release_leases(self, owner: str | None = None) -> int:
        return int(await self._call("release", owner or ""))

    async def request_cancel(self, job_ids: Sequence[str], now: float) -> None:
        if job_ids:
            await self._call("request_cancel", redis_number(now), *job_ids)

    # ------------------------------------------------------------------ reads and upkeep

    async def lines(self, job_id: str) -> list[JobLineRecord]:
        try:
            raw = await self._r.lrange(f"{self.prefix}:job:{job_id}:lines", 0, -1)
        except RedisError as exc:
            raise unavailable("job table: lines", exc) from exc
        out = []
        for entry in raw:
            custom_id, _, ids = _str(entry).partition(" ")
            out.append(JobLineRecord(custom_id, tuple(ids.split(",")) if ids else ()))
        return out

    async def items(self, queue_ids: Sequence[str]) -> list[QueuedItem]:
        found = await self._hashes([f"{self.prefix}:item:{q}" for q in queue_ids])
        return [item_from_hash(self._flat(fields)) for fields in found if fields]

    async def get(self, job_id: str) -> BatchJob | None:
        (fields,) = await self._hashes([f"{self.prefix}:job:{job_id}"])
        return _job(self._flat(fields)) if fields else None

    async def jobs(
        self, *, cj_batch_id: str | None = None, open_only: bool = False
    ) -> list[BatchJob]:
        try:
            if cj_batch_id is None:
                ids = await self._r.zrange(f"{self.prefix}:jobs:all", 0, -1)
            else:
                ids = list(await self._r.smembers(f"{self.prefix}:jobs:cj:{cj_batch_id}"))
        except RedisError as exc:
            raise unavailable("job table: jobs", exc) from exc
        found = await self._hashes([f"{self.prefix}:job:{_str(i)}" for i in ids])
        jobs = [_job(self._flat(fields)) for fields in found if fields]
        if open_only:
            jobs = [j for j in jobs if j.state is not JobState.SETTLED]
        return sorted(jobs, key=lambda j: (j.created_at, j.job_id))

    async def vendor_ids(self) -> set[str]:
        try:
            keys = await self._r.hkeys(f"{self.prefix}:jobs:vendor")
        except RedisError as exc:
            raise unavailable("job table: vendor ids", exc) from exc
        return {_str(k) for k in keys}

    async def counts(self) -> dict[JobState, int]:
        out = dict.fromkeys(JobState, 0)
        for job in await self.jobs():
            out[job.state] += 1
        return out

    async def purge(self, before: float) -> int:
        return int(await self._call("purge", redis_number(before)))
