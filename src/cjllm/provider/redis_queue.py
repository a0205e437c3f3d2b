"""The Redis queue backend: many workers, many hosts, one queue.

Every state change is one Lua script, so it is atomic inside Redis. Layout (``P`` is the
prefix, ``{cjllm}`` by default: the braces make it a cluster hash tag, so every key of one
queue lives in one slot):

- ``P:item:<queue_id>`` hash: the item record (fields below in :func:`_item`);
- ``P:cid:<correlation_id>`` → queue id (re-posting a correlation id is idempotent);
- ``P:ready:<key>`` sorted set of a compatibility key's queued, available items, scored by
  enqueue time; ``P:keys`` the set of keys that may have some;
- ``P:delayed`` queued items waiting for a retry time (score: available at);
- ``P:leases`` processing items (score: lease expiry); ``P:ttl`` active items (score: TTL);
- ``P:outbox`` entry ids (score: visible at) with ``P:ob:<id>`` hashes (topic, key, envelope);
- ``P:stats`` hash: ``queued``, ``processing``, ``items`` and ``bytes`` of active items.

The claim script runs the bundle rule of :func:`cjllm.provider.bundling.pick_bundle`.
Terminal items keep a small status record for ``record_retention_seconds`` (Redis expiry).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import parse_qs, urlencode, urlparse, urlunparse

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cjllm.contracts import QueueItemState
from cjllm.provider.queue import (
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

MAX_KEYS_PER_CLAIM = 100
MAX_SCAN_PER_KEY = 1000

_TO_READY = """
local function to_ready(P, qid, key, enq)
  redis.call('ZADD', P..':ready:'..key, enq, qid)
  redis.call('SADD', P..':keys', key)
end
local function stat(P, field, n)
  redis.call('HINCRBY', P..':stats', field, n)
end
"""

_ENQUEUE = """
local P, qid, cid, key = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local payload, enq, exp = ARGV[8], ARGV[9], ARGV[10]
local max_items, max_bytes = tonumber(ARGV[11]), tonumber(ARGV[12])
local known = redis.call('GET', P..':cid:'..cid)
if known then return {'known', known} end
local st = redis.call('HMGET', P..':stats', 'items', 'bytes')
local items, bytes, size = tonumber(st[1] or '0'), tonumber(st[2] or '0'), #payload
if items + 1 > max_items then return {'full', 'items', tostring(items)} end
if bytes + size > max_bytes then return {'full', 'bytes', tostring(bytes)} end
redis.call('HSET', P..':item:'..qid, 'qid', qid, 'cid', cid, 'key', key, 'hint', ARGV[5],
  'tokens', ARGV[6], 'budget', ARGV[7], 'payload', payload, 'bytes', size, 'state', 'queued',
  'attempts', 0, 'enq', enq, 'avail', enq, 'exp', exp, 'updated', enq,
  'pt', 0, 'ct', 0, 'cost', 0)
redis.call('SET', P..':cid:'..cid, qid)
to_ready(P, qid, key, enq)
redis.call('ZADD', P..':ttl', exp, qid)
stat(P, 'items', 1); stat(P, 'bytes', size); stat(P, 'queued', 1)
return {'created', qid}
"""

_CLAIM = """
local P, now, linger, owner, lease, bundle = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]),
  ARGV[4], ARGV[5], ARGV[6]
local max_keys, max_scan = tonumber(ARGV[7]), tonumber(ARGV[8])
for _, qid in ipairs(redis.call('ZRANGEBYSCORE', P..':delayed', '-inf', ARGV[2])) do
  redis.call('ZREM', P..':delayed', qid)
  local f = redis.call('HMGET', P..':item:'..qid, 'state', 'key', 'enq')
  if f[1] == 'queued' then to_ready(P, qid, f[2], f[3]) end
end
local heads = {}
for _, key in ipairs(redis.call('SMEMBERS', P..':keys')) do
  local h = redis.call('ZRANGE', P..':ready:'..key, 0, 0, 'WITHSCORES')
  if #h == 0 then redis.call('SREM', P..':keys', key)
  else heads[#heads + 1] = {key, tonumber(h[2])} end
end
table.sort(heads, function(a, b) return a[2] < b[2] end)
for i = 1, math.min(#heads, max_keys) do
  local key = heads[i][1]
  local picked, size, budget, used, head_enq, full = {}, nil, 0, 0, 0, false
  for _, qid in ipairs(redis.call('ZRANGE', P..':ready:'..key, 0, max_scan - 1)) do
    local f = redis.call('HMGET', P..':item:'..qid, 'hint', 'tokens', 'budget', 'enq', 'exp')
    local hint, tokens = tonumber(f[1]), tonumber(f[2])
    if tonumber(f[5]) > now then
      if size == nil then
        size, budget, used, head_enq = hint, tonumber(f[3]), tokens, tonumber(f[4])
        picked[1] = qid
        full = #picked >= size
      elseif hint >= size then
        if used + tokens > budget then
          full = true
        else
          picked[#picked + 1] = qid
          used = used + tokens
          full = #picked >= size
        end
      end
      if full then break end
    end
  end
  if size ~= nil and (full or now - head_enq >= linger) then
    local out = {}
    for j, qid in ipairs(picked) do
      redis.call('ZREM', P..':ready:'..key, qid)
      redis.call('HSET', P..':item:'..qid, 'state', 'processing', 'owner', owner,
        'lease', lease, 'bundle', bundle, 'updated', ARGV[2])
      redis.call('ZADD', P..':leases', lease, qid)
      out[j] = redis.call('HGETALL', P..':item:'..qid)
    end
    stat(P, 'queued', -#picked); stat(P, 'processing', #picked)
    return out
  end
end
return {}
"""

_EXTEND = """
local P, owner, lease, n = ARGV[1], ARGV[2], ARGV[3], 0
for i = 4, #ARGV do
  local f = redis.call('HMGET', P..':item:'..ARGV[i], 'state', 'owner')
  if f[1] == 'processing' and f[2] == owner then
    redis.call('HSET', P..':item:'..ARGV[i], 'lease', lease)
    redis.call('ZADD', P..':leases', lease, ARGV[i])
    n = n + 1
  end
end
return n
"""

_FINISH = """
local P, now, retention, done = ARGV[1], ARGV[2], tonumber(ARGV[3]), {}
for i = 4, #ARGV, 5 do
  local qid = ARGV[i]
  local ik = P..':item:'..qid
  local f = redis.call('HMGET', ik, 'state', 'key', 'bytes', 'cid')
  if f[1] == 'queued' or f[1] == 'processing' then
    redis.call('ZREM', P..':ready:'..f[2], qid)
    redis.call('ZREM', P..':delayed', qid)
    redis.call('ZREM', P..':leases', qid)
    redis.call('ZREM', P..':ttl', qid)
    stat(P, f[1], -1); stat(P, 'items', -1); stat(P, 'bytes', -tonumber(f[3]))
    redis.call('HSET', ik, 'state', ARGV[i + 1], 'updated', now)
    redis.call('HDEL', ik, 'payload', 'lease')
    redis.call('EXPIRE', ik, retention)
    redis.call('EXPIRE', P..':cid:'..f[4], retention)
    local oid = redis.call('INCR', P..':outbox:seq')
    redis.call('HSET', P..':ob:'..oid, 'topic', ARGV[i + 2], 'key', ARGV[i + 3],
      'env', ARGV[i + 4])
    redis.call('ZADD', P..':outbox', now, oid)
    done[#done + 1] = qid
  end
end
return done
"""

_RETRY = """
local P, now, owner, done = ARGV[1], tonumber(ARGV[2]), ARGV[3], {}
for i = 4, #ARGV, 8 do
  local qid, avail = ARGV[i], ARGV[i + 1]
  local ik = P..':item:'..qid
  local f = redis.call('HMGET', ik, 'state', 'owner', 'key', 'enq')
  if f[1] == 'processing' and f[2] == owner then
    redis.call('ZREM', P..':leases', qid)
    redis.call('HSET', ik, 'state', 'queued', 'owner', '', 'lease', '', 'avail', avail,
      'hint', ARGV[i + 2], 'err', ARGV[i + 4], 'updated', ARGV[2])
    redis.call('HINCRBY', ik, 'attempts', ARGV[i + 3])
    redis.call('HINCRBY', ik, 'pt', ARGV[i + 5])
    redis.call('HINCRBY', ik, 'ct', ARGV[i + 6])
    redis.call('HINCRBYFLOAT', ik, 'cost', ARGV[i + 7])
    if tonumber(avail) <= now then to_ready(P, qid, f[3], f[4])
    else redis.call('ZADD', P..':delayed', avail, qid) end
    stat(P, 'processing', -1); stat(P, 'queued', 1)
    done[#done + 1] = qid
  end
end
return done
"""

_RECOVER = """
local P, now, n = ARGV[1], ARGV[2], 0
for _, qid in ipairs(redis.call('ZRANGEBYSCORE', P..':leases', '-inf', now)) do
  redis.call('ZREM', P..':leases', qid)
  local ik = P..':item:'..qid
  local f = redis.call('HMGET', ik, 'state', 'key', 'enq')
  if f[1] == 'processing' then
    redis.call('HSET', ik, 'state', 'queued', 'owner', '', 'lease', '', 'avail', now,
      'err', 'lease expired (worker lost)', 'updated', now)
    redis.call('HINCRBY', ik, 'attempts', 1)
    to_ready(P, qid, f[2], f[3])
    stat(P, 'processing', -1); stat(P, 'queued', 1)
    n = n + 1
  end
end
return n
"""

_CLAIM_EXPIRED = """
local P, now, owner, lease, limit, out = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), {}
for _, qid in ipairs(redis.call('ZRANGEBYSCORE', P..':ttl', '-inf', now)) do
  if #out >= limit then break end
  local ik = P..':item:'..qid
  local f = redis.call('HMGET', ik, 'state', 'key')
  if f[1] == 'queued' then
    redis.call('ZREM', P..':ready:'..f[2], qid)
    redis.call('ZREM', P..':delayed', qid)
    redis.call('HSET', ik, 'state', 'processing', 'owner', owner, 'lease', lease,
      'bundle', '', 'updated', now)
    redis.call('ZADD', P..':leases', lease, qid)
    stat(P, 'queued', -1); stat(P, 'processing', 1)
    out[#out + 1] = redis.call('HGETALL', ik)
  end
end
return out
"""

_CLAIM_OUTBOX = """
local P, now, visible, out = ARGV[1], ARGV[2], ARGV[3], {}
for _, oid in ipairs(redis.call('ZRANGEBYSCORE', P..':outbox', '-inf', now, 'LIMIT', 0, ARGV[4])) do
  redis.call('ZADD', P..':outbox', visible, oid)
  local f = redis.call('HMGET', P..':ob:'..oid, 'topic', 'key', 'env')
  out[#out + 1] = {oid, f[1], f[2], f[3]}
end
return out
"""


def _text(raw: bytes | None) -> str | None:
    if raw is None or raw == b"":
        return None
    return raw.decode("utf-8")


def _item(flat: Sequence[bytes]) -> QueuedItem:
    """An item from a flat ``HGETALL`` reply."""
    f = {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}
    lease = _text(f.get("lease"))
    return QueuedItem(
        queue_id=f["qid"].decode(),
        correlation_id=f["cid"].decode(),
        key=f["key"].decode(),
        hint=int(f["hint"]),
        tokens=int(f["tokens"]),
        budget=int(f["budget"]),
        payload=_text(f.get("payload")) or "",
        state=QueueItemState(f["state"].decode()),
        attempts=int(f["attempts"]),
        enqueued_at=float(f["enq"]),
        available_at=float(f["avail"]),
        expires_at=float(f["exp"]),
        updated_at=float(f["updated"]),
        lease_owner=_text(f.get("owner")),
        lease_until=float(lease) if lease else None,
        bundle_id=_text(f.get("bundle")),
        last_error=_text(f.get("err")),
        spent=Spent(int(f["pt"]), int(f["ct"]), float(f["cost"])),
    )


def _num(x: float) -> str:
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
            name: client.register_script(_TO_READY + body)
            for name, body in (
                ("enqueue", _ENQUEUE),
                ("claim", _CLAIM),
                ("extend", _EXTEND),
                ("finish", _FINISH),
                ("retry", _RETRY),
                ("recover", _RECOVER),
                ("claim_expired", _CLAIM_EXPIRED),
                ("claim_outbox", _CLAIM_OUTBOX),
            )
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
        client = aioredis.Redis.from_url(clean, decode_responses=False)
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
            raise QueueUnavailable(f"Redis queue ({name}): {exc}") from exc

    async def enqueue(self, item: NewItem) -> tuple[str, bool]:
        reply = await self._call(
            "enqueue",
            item.queue_id,
            item.correlation_id,
            item.key,
            item.hint,
            item.tokens,
            item.budget,
            item.payload,
            _num(item.enqueued_at),
            _num(item.expires_at),
            self.max_items,
            self.max_bytes,
        )
        outcome = reply[0].decode()
        if outcome == "full":
            limit = reply[1].decode()
            maximum = self.max_items if limit == "items" else self.max_bytes
            raise QueueFull(limit, int(reply[2]), maximum)
        return reply[1].decode(), outcome == "created"

    async def claim(
        self, owner: str, bundle_id: str, now: float, lease_until: float, linger: float
    ) -> list[QueuedItem]:
        reply = await self._call(
            "claim",
            _num(now),
            _num(linger),
            owner,
            _num(lease_until),
            bundle_id,
            MAX_KEYS_PER_CLAIM,
            MAX_SCAN_PER_KEY,
        )
        return [_item(flat) for flat in reply]

    async def extend(self, owner: str, queue_ids: Sequence[str], lease_until: float) -> int:
        if not queue_ids:
            return 0
        return int(await self._call("extend", owner, _num(lease_until), *queue_ids))

    async def finish(self, finished: Sequence[Finished], now: float) -> list[str]:
        if not finished:
            return []
        args: list[Any] = [_num(now), math.ceil(self.retention_seconds)]
        for f in finished:
            args += [f.queue_id, f.state.value, f.topic, f.message_key, f.envelope]
        return [qid.decode() for qid in await self._call("finish", *args)]

    async def retry(self, owner: str, retries: Sequence[Retry], now: float) -> list[str]:
        if not retries:
            return []
        args: list[Any] = [_num(now), owner]
        for r in retries:
            args += [
                r.queue_id,
                _num(r.available_at),
                r.hint,
                int(r.count_attempt),
                r.error,
                r.spent.prompt_tokens,
                r.spent.completion_tokens,
                _num(r.spent.cost),
            ]
        return [qid.decode() for qid in await self._call("retry", *args)]

    async def recover_leases(self, now: float) -> int:
        return int(await self._call("recover", _num(now)))

    async def claim_expired(
        self, owner: str, now: float, lease_until: float, limit: int
    ) -> list[QueuedItem]:
        reply = await self._call("claim_expired", _num(now), owner, _num(lease_until), limit)
        return [_item(flat) for flat in reply]

    async def claim_outbox(self, now: float, visible_until: float, limit: int) -> list[OutboxEntry]:
        reply = await self._call("claim_outbox", _num(now), _num(visible_until), limit)
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
            raise QueueUnavailable(f"Redis queue (delete_outbox): {exc}") from exc

    async def get(self, queue_id: str) -> QueuedItem | None:
        try:
            fields = await self._r.hgetall(f"{self.prefix}:item:{queue_id}")
        except RedisError as exc:
            raise QueueUnavailable(f"Redis queue (get): {exc}") from exc
        if not fields:
            return None
        return _item([cast(bytes, x) for pair in fields.items() for x in pair])

    async def depth(self, now: float) -> Depth:
        p = self.prefix
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.hmget(f"{p}:stats", "queued", "processing", "bytes")
                pipe.zcount(f"{p}:delayed", f"({_num(now)}", "+inf")
                pipe.zcard(f"{p}:outbox")
                stats, delayed, outbox = await pipe.execute()
        except RedisError as exc:
            raise QueueUnavailable(f"Redis queue (depth): {exc}") from exc
        queued, processing, size = (int(x or 0) for x in stats)
        return Depth(queued, int(delayed), processing, size, int(outbox))

    async def purge(self, before: float) -> int:
        """Terminal records expire by themselves in Redis (``record_retention_seconds``)."""
        return 0

    async def close(self) -> None:
        await self._r.aclose()
