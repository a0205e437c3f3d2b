"""The Redis queue backend: many workers, many hosts, one queue.

Every state change is one Lua script (:mod:`cjllm.provider.redis_scripts`), so it is atomic
inside Redis. Layout (``P`` is the
prefix, ``{cjllm}`` by default: the braces make it a cluster hash tag, so every key of one
queue lives in one slot):

- ``P:item:<queue_id>`` hash: the item record (fields below in :func:`_item`);
- ``P:cid:<correlation_id>`` → queue id (re-posting a correlation id is idempotent);
- ``P:ready:<key>`` sorted set of a compatibility key's queued, available items, scored by
  enqueue time; ``P:keys`` the set of keys that may have some;
- ``P:delayed`` queued items waiting for a retry time (score: available at);
- ``P:leases`` processing items (score: lease expiry); ``P:ttl`` active items (score: TTL);
- ``P:outbox`` entry ids (score: visible at) with ``P:ob:<id>`` hashes (topic, key, envelope);
  ``P:outbox:dead`` entries set aside as unpublishable (score: when; the hash gains
  ``reason``);
- ``P:learned`` hash: what workers learned about servers (``remember`` / ``recall``);
- ``P:stats`` hash: ``queued``, ``processing``, ``items`` and ``bytes`` of active items.

The claim script runs the bundle rule of :func:`cjllm.provider.bundling.pick_bundle`.
Terminal items keep a small status record for ``record_retention_seconds`` (Redis expiry).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, cast
from urllib.parse import parse_qs, urlencode, urlparse, urlunparse

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cjllm.contracts import QueueItemState
from cjllm.provider.queue import (
    DeadLetter,
    Depth,
    Finished,
    NewItem,
    OutboxEntry,
    QueuedItem,
    QueueFull,
    QueueUnavailable,
    Retry,
    Spent,
)
from cjllm.provider.redis_scripts import SCRIPTS, TO_READY

MAX_KEYS_PER_CLAIM = 100
MAX_SCAN_PER_KEY = 1000
# no step waits longer than this for Redis: a frozen server is an outage, not a hang
TIMEOUT_SECONDS = 5.0


def unavailable(what: str, exc: RedisError) -> QueueUnavailable:
    """A failed step: Redis may still run a script it received, so it may have applied."""
    return QueueUnavailable(f"Redis queue ({what}): {exc}", may_have_applied=True)


def _text(raw: bytes | None) -> str | None:
    if raw is None or raw == b"":
        return None
    return raw.decode("utf-8")


ITEM_FIELDS = (
    "qid", "cid", "key", "hint", "tokens", "budget", "payload", "state", "attempts", "enq",
    "avail", "exp", "updated", "owner", "lease", "bundle", "err", "pt", "ct", "cost",
)  # fmt: skip
"""An item record's fields, in the order the scripts' ``fields`` helper returns them."""


def _item(values: Sequence[bytes | None]) -> QueuedItem:
    """An item from its record's values in :data:`ITEM_FIELDS` order (one ``HMGET``)."""
    (qid, cid, key, hint, tokens, budget, payload, state, attempts, enq, avail, exp, updated,
     owner, lease, bundle, err, pt, ct, cost) = values  # fmt: skip
    assert qid and cid and key and state  # every record has them
    return QueuedItem(
        queue_id=qid.decode(),
        correlation_id=cid.decode(),
        key=key.decode(),
        hint=int(hint or 0),
        tokens=int(tokens or 0),
        budget=int(budget or 0),
        payload=_text(payload) or "",
        state=QueueItemState(state.decode()),
        attempts=int(attempts or 0),
        enqueued_at=float(enq or 0),
        available_at=float(avail or 0),
        expires_at=float(exp or 0),
        updated_at=float(updated or 0),
        lease_owner=_text(owner),
        lease_until=float(lease) if lease else None,
        bundle_id=_text(bundle),
        last_error=_text(err),
        spent=Spent(int(pt or 0), int(ct or 0), float(cost or 0)),
    )


def item_from_hash(flat: Sequence[bytes]) -> QueuedItem:
    """An item from a flat ``HGETALL`` reply (the batch-job scripts return those)."""
    found = dict(zip(flat[::2], flat[1::2], strict=True))
    return _item([found.get(name.encode()) for name in ITEM_FIELDS])


def redis_number(x: float) -> str:
    """A float as Redis takes it in a script argument or a sorted-set score."""
    return repr(float(x))


class RedisQueue:
    """Redis backend of :class:`cjllm.provider.queue.Queue`."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "cjllm",
        max_items: int,
        max_bytes: int,
        retention_seconds: float = 24 * 3600,
    ) -> None:
        self._r = client
        self.client = client  # shared with the rate-limit buckets (redis_limits)
        self.prefix = "{" + prefix + "}"
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.retention_seconds = retention_seconds
        self._scripts = {
            name: client.register_script(TO_READY + body) for name, body in SCRIPTS.items()
        }

    @classmethod
    def from_url(
        cls, url: str, *, max_items: int, max_bytes: int, retention_seconds: float = 24 * 3600
    ) -> RedisQueue:
        """``redis://host:port/db[?prefix=name]``; other query options go to redis-py."""
        parts = urlparse(url)
        query = parse_qs(parts.query)
        prefix = query.pop("prefix", ["cjllm"])[0]
        clean = urlunparse(parts._replace(query=urlencode(query, doseq=True)))
        # options in the URL (e.g. ?socket_timeout=1) win over these defaults
        client = aioredis.Redis.from_url(
            clean,
            decode_responses=False,
            socket_timeout=TIMEOUT_SECONDS,
            socket_connect_timeout=TIMEOUT_SECONDS,
        )
        return cls(
            client,
            prefix=prefix,
            max_items=max_items,
            max_bytes=max_bytes,
            retention_seconds=retention_seconds,
        )

    async def _call(self, name: str, *args: Any) -> Any:
        try:
            return await self._scripts[name](args=[self.prefix, *args])
        except RedisError as exc:
            raise unavailable(name, exc) from exc

    async def enqueue(self, item: NewItem) -> tuple[str, bool]:
        (answer,) = await self.enqueue_many([item])
        if isinstance(answer, QueueFull):
            raise answer
        return answer

    async def enqueue_many(self, items: Sequence[NewItem]) -> list[tuple[str, bool] | QueueFull]:
        if not items:
            return []
        args: list[Any] = [self.max_items, self.max_bytes]
        for it in items:
            args += [
                it.queue_id,
                it.correlation_id,
                it.key,
                it.hint,
                it.tokens,
                it.budget,
                it.payload,
                redis_number(it.enqueued_at),
                redis_number(it.expires_at),
            ]
        answers: list[tuple[str, bool] | QueueFull] = []
        for reply in await self._call("enqueue", *args):
            outcome = reply[0].decode()
            if outcome == "full":
                limit = reply[1].decode()
                maximum = self.max_items if limit == "items" else self.max_bytes
                answers.append(QueueFull(limit, int(reply[2]), maximum))
            else:
                answers.append((reply[1].decode(), outcome == "created"))
        return answers

    async def claim(
        self, owner: str, bundle_id: str, now: float, lease_until: float, linger: float
    ) -> list[QueuedItem]:
        reply = await self._call(
            "claim",
            redis_number(now),
            redis_number(linger),
            owner,
            redis_number(lease_until),
            bundle_id,
            MAX_KEYS_PER_CLAIM,
            MAX_SCAN_PER_KEY,
        )
        return [_item(flat) for flat in reply]

    async def extend(self, owner: str, queue_ids: Sequence[str], lease_until: float) -> int:
        if not queue_ids:
            return 0
        return int(await self._call("extend", owner, redis_number(lease_until), *queue_ids))

    async def finish(self, finished: Sequence[Finished], now: float) -> list[str]:
        if not finished:
            return []
        args: list[Any] = [redis_number(now), math.ceil(self.retention_seconds)]
        for f in finished:
            args += [f.queue_id, f.state.value, f.topic, f.message_key, f.envelope]
        return [qid.decode() for qid in await self._call("finish", *args)]

    async def retry(self, owner: str, retries: Sequence[Retry], now: float) -> list[str]:
        if not retries:
            return []
        args: list[Any] = [redis_number(now), owner]
        for r in retries:
            args += [
                r.queue_id,
                redis_number(r.available_at),
                r.hint,
                int(r.count_attempt),
                r.error,
                r.spent.prompt_tokens,
                r.spent.completion_tokens,
                redis_number(r.spent.cost),
            ]
        return [qid.decode() for qid in await self._call("retry", *args)]

    async def recover_leases(self, now: float, expired_by: float | None = None) -> int:
        cutoff = now if expired_by is None else expired_by
        return int(await self._call("recover", redis_number(now), redis_number(cutoff)))

    async def claim_expired(
        self, owner: str, now: float, lease_until: float, limit: int
    ) -> list[QueuedItem]:
        reply = await self._call(
            "claim_expired", redis_number(now), owner, redis_number(lease_until), limit
        )
        return [_item(flat) for flat in reply]

    async def claim_outbox(self, now: float, visible_until: float, limit: int) -> list[OutboxEntry]:
        reply = await self._call(
            "claim_outbox", redis_number(now), redis_number(visible_until), limit
        )
        return [
            OutboxEntry(oid.decode(), topic.decode(), key.decode(), bytes(env))
            for oid, topic, key, env in reply
        ]

    async def delete_outbox(self, entry_ids: Sequence[str]) -> None:
        if not entry_ids:
            return
        try:
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.delete(*(f"{self.prefix}:ob:{oid}" for oid in entry_ids))
                pipe.zrem(f"{self.prefix}:outbox", *entry_ids)
                await pipe.execute()
        except RedisError as exc:
            raise unavailable("delete_outbox", exc) from exc

    async def dead_letter_outbox(self, reasons: Mapping[str, str], now: float) -> None:
        if not reasons:
            return
        args: list[Any] = [redis_number(now)]
        for entry_id, reason in reasons.items():
            args += [entry_id, reason]
        await self._call("dead_letter_outbox", *args)

    async def dead_letters(self, limit: int) -> list[DeadLetter]:
        try:
            found = await self._r.zrange(f"{self.prefix}:outbox:dead", 0, limit - 1)
            ids = [cast(bytes, oid).decode() for oid in found]
            async with self._r.pipeline(transaction=False) as pipe:
                for oid in ids:
                    pipe.hmget(
                        f"{self.prefix}:ob:{oid}",
                        "topic",
                        "key",
                        "env",
                        "reason",
                        "dead_at",
                    )
                rows = await pipe.execute()
        except RedisError as exc:
            raise unavailable("dead_letters", exc) from exc
        return [
            DeadLetter(oid, t.decode(), k.decode(), bytes(e), r.decode(), float(at))
            for oid, (t, k, e, r, at) in zip(ids, rows, strict=True)
        ]

    async def get(self, queue_id: str) -> QueuedItem | None:
        try:
            values = await self._r.hmget(f"{self.prefix}:item:{queue_id}", ITEM_FIELDS)
        except RedisError as exc:
            raise unavailable("get", exc) from exc
        if values[0] is None:
            return None
        return _item(cast(list[bytes | None], values))

    async def remember(self, key: str, value: str) -> None:
        try:
            await self._r.hset(f"{self.prefix}:learned", key, value)
        except RedisError as exc:
            raise unavailable("remember", exc) from exc

    async def recall(self, key: str) -> str | None:
        try:
            value = await self._r.hget(f"{self.prefix}:learned", key)
        except RedisError as exc:
            raise unavailable("recall", exc) from exc
        return _text(cast(bytes | None, value))

    async def depth(self, now: float) -> Depth:
        p = self.prefix
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.hmget(f"{p}:stats", "queued", "processing", "bytes")
                pipe.zcount(f"{p}:delayed", f"({redis_number(now)}", "+inf")
                pipe.zcard(f"{p}:outbox")
                pipe.zcard(f"{p}:outbox:dead")
                stats, delayed, outbox, dead = await pipe.execute()
        except RedisError as exc:
            raise unavailable("depth", exc) from exc
        queued, processing, size = (int(x or 0) for x in stats)
        return Depth(queued, int(delayed), processing, size, int(outbox), int(dead))

    async def purge(self, before: float) -> int:
        """Terminal records expire by themselves in Redis (``record_retention_seconds``)."""
        return 0

    async def close(self) -> None:
        await self._r.aclose()
