"""Rate-limit buckets in Redis, shared by every worker process on the queue's Redis.

The same arithmetic as :class:`cjllm.provider.rate_limits.BucketState`, run as one Lua
script per operation so that reserving, correcting, syncing and pausing are atomic across
processes, on Redis's own clock (``TIME``) so that hosts need not agree on the time. One
hash per key (``{prefix}:ratelimit:{key}``: ``at``, ``paused``, a level and a known limit
per budget), expiring an hour after its last use. The limits a process has learned are
recorded with each sync, so a process that has not yet had an answer of its own paces by
them too; a budget nobody knows is left untouched.
"""

from __future__ import annotations

from collections.abc import Mapping

from redis.asyncio import Redis
from redis.exceptions import RedisError

from cjllm.provider.limiter import LimiterUnavailable
from cjllm.provider.queue import Queue
from cjllm.provider.rate_limits import BUDGETS, Buckets, Limits, MemoryBuckets, Need

IDLE_EXPIRY_SECONDS = 3600

_SCRIPT = """
local op, period, arg = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local names = {'requests', 'input_tokens', 'output_tokens', 'tokens'}
local state = redis.call('HMGET', KEYS[1], 'at', 'paused', unpack(names))
local known = redis.call('HMGET', KEYS[1], 'limit:requests', 'limit:input_tokens',
  'limit:output_tokens', 'limit:tokens')
local at = tonumber(state[1]) or now
local elapsed = math.max(0, now - at)
local paused = tonumber(state[2]) or 0
local levels, limits, amounts = {}, {}, {}
for i = 1, 4 do
  limits[i] = tonumber(ARGV[2 + 2 * i]) or tonumber(known[i])
  amounts[i] = tonumber(ARGV[3 + 2 * i])
  levels[i] = tonumber(state[2 + i])
  if limits[i] then
    levels[i] = math.min(limits[i], (levels[i] or limits[i]) + elapsed * limits[i] / period)
  end
end
local granted, result = 1, 0
if op == 'reserve' then
  result = math.max(0, paused - now)
  for i = 1, 4 do
    if limits[i] then
      local wanted = math.min(amounts[i] or 0, limits[i])
      if wanted > levels[i] then
        result = math.max(result, (wanted - levels[i]) * period / limits[i])
      end
    end
  end
  if result > arg then
    granted = 0
  else
    for i = 1, 4 do
      if limits[i] then levels[i] = levels[i] - (amounts[i] or 0) end
    end
  end
elseif op == 'adjust' then
  for i = 1, 4 do
    if limits[i] then levels[i] = math.min(limits[i], levels[i] + (amounts[i] or 0)) end
  end
elseif op == 'sync' then
  for i = 1, 4 do
    if limits[i] and amounts[i] then levels[i] = math.min(levels[i], amounts[i]) end
    if limits[i] then redis.call('HSET', KEYS[1], 'limit:' .. names[i], limits[i]) end
  end
elseif op == 'pause' then
  paused = math.max(paused, now + arg)
  result = paused - now
end
local fields = {'at', tostring(math.max(at, now)), 'paused', tostring(paused)}
for i = 1, 4 do
  if levels[i] then
    table.insert(fields, names[i])
    table.insert(fields, tostring(levels[i]))
  end
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[12]))
return {granted, tostring(result)}
"""


class RedisBuckets:
    """:class:`cjllm.provider.rate_limits.Buckets` kept in Redis."""

    def __init__(self, client: Redis, prefix: str = "cjllm", period: float = 60.0) -> None:
        self.prefix = prefix
        self.period = period
        self._script = client.register_script(_SCRIPT)

    async def _run(
        self,
        op: str,
        key: str,
        limits: Limits,
        amounts: Mapping[str, float | int],
        arg: float = 0.0,
    ) -> tuple[bool, float]:
        args: list[str | float | int] = [op, self.period, arg]
        for budget in BUDGETS:
            limit = limits.of(budget)
            amount = amounts.get(budget)
            args += ["" if limit is None else limit, "" if amount is None else amount]
        args.append(IDLE_EXPIRY_SECONDS)
        try:
            granted, value = await self._script(keys=[f"{self.prefix}:ratelimit:{key}"], args=args)
        except RedisError as exc:
            raise LimiterUnavailable(f"Redis rate-limit buckets ({op}): {exc}") from exc
        return bool(int(granted)), float(value)

    async def reserve(
        self, key: str, limits: Limits, need: Need, max_wait: float
    ) -> tuple[bool, float]:
        return await self._run("reserve", key, limits, {b: need.of(b) for b in BUDGETS}, max_wait)

    async def adjust(self, key: str, limits: Limits, deltas: Mapping[str, float]) -> None:
        await self._run("adjust", key, limits, deltas)

    async def sync(self, key: str, limits: Limits, remaining: Mapping[str, int]) -> None:
        await self._run("sync", key, limits, remaining)

    async def pause(self, key: str, limits: Limits, seconds: float) -> float:
        _, left = await self._run("pause", key, limits, {}, seconds)
        return left


def buckets_for(queue: Queue, period: float) -> Buckets:
    """Shared in the queue's Redis when the queue is Redis; this process's otherwise."""
    from cjllm.provider.redis_queue import RedisQueue

    if isinstance(queue, RedisQueue):
        return RedisBuckets(queue.client, queue.prefix, period)
    return MemoryBuckets(period)
