"""The Redis queue's Lua scripts: every state change is one script, so it is atomic in Redis.

Key layout and meanings are in :mod:`cjllm.provider.redis_queue`. ``ARGV[1]`` is always the
key prefix; :data:`SCRIPTS` maps each verb to its script (``TO_READY``, the ``to_ready``,
``stat`` and ``fields`` helpers, is prepended to every one).
"""

from __future__ import annotations

TO_READY = """
local function to_ready(P, qid, key, enq)
  redis.call('ZADD', P..':ready:'..key, enq, qid)
  redis.call('SADD', P..':keys', key)
end
local function stat(P, field, n)
  redis.call('HINCRBY', P..':stats', field, n)
end
local function fields(ik)  -- an item record in the order of redis_queue.ITEM_FIELDS
  return redis.call('HMGET', ik, 'qid', 'cid', 'key', 'hint', 'tokens', 'budget', 'payload',
    'state', 'attempts', 'enq', 'avail', 'exp', 'updated', 'owner', 'lease', 'bundle', 'err',
    'pt', 'ct', 'cost')
end
"""

_ENQUEUE = """
local P, max_items, max_bytes, out = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), {}
local st = redis.call('HMGET', P..':stats', 'items', 'bytes')
local items, bytes = tonumber(st[1] or '0'), tonumber(st[2] or '0')
for i = 4, #ARGV, 9 do
  local qid, cid, key, payload = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 6]
  local enq, exp, size = ARGV[i + 7], ARGV[i + 8], #payload
  local known = redis.call('GET', P..':cid:'..cid)
  if known then out[#out + 1] = {'known', known}
  elseif items + 1 > max_items then out[#out + 1] = {'full', 'items', tostring(items)}
  elseif bytes + size > max_bytes then out[#out + 1] = {'full', 'bytes', tostring(bytes)}
  else
    redis.call('HSET', P..':item:'..qid, 'qid', qid, 'cid', cid, 'key', key,
      'hint', ARGV[i + 3], 'tokens', ARGV[i + 4], 'budget', ARGV[i + 5], 'payload', payload,
      'bytes', size, 'state', 'queued', 'attempts', 0, 'enq', enq, 'avail', enq, 'exp', exp,
      'updated', enq, 'pt', 0, 'ct', 0, 'cost', 0)
    redis.call('SET', P..':cid:'..cid, qid)
    to_ready(P, qid, key, enq)
    redis.call('ZADD', P..':ttl', exp, qid)
    items, bytes = items + 1, bytes + size
    stat(P, 'items', 1); stat(P, 'bytes', size); stat(P, 'queued', 1)
    out[#out + 1] = {'created', qid}
  end
end
return out
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
  elseif string.sub(key, 1, 6) ~= 'batch:' then  -- the batch lane goes to jobs
    heads[#heads + 1] = {key, tonumber(h[2])}
  end
end
table.sort(heads, function(a, b) return a[2] < b[2] end)
for i = 1, math.min(#heads, max_keys) do
  local key = heads[i][1]
  local picked, size, budget, used, head_enq, full, due = {}, nil, 0, 0, 0, false, false
  for _, qid in ipairs(redis.call('ZRANGE', P..':ready:'..key, 0, max_scan - 1)) do
    local f = redis.call('HMGET', P..':item:'..qid, 'hint', 'tokens', 'budget', 'enq', 'exp',
      'avail')
    local hint, tokens = tonumber(f[1]), tonumber(f[2])
    local requeued = tonumber(f[6]) > tonumber(f[4])
    if tonumber(f[5]) > now then
      if size == nil then
        size, budget, used, head_enq = hint, tonumber(f[3]), tokens, tonumber(f[4])
        picked[1] = qid
        full, due = #picked >= size, requeued
      elseif hint >= size then
        if used + tokens > budget then
          full = true
        else
          picked[#picked + 1] = qid
          used = used + tokens
          full, due = #picked >= size, due or requeued
        end
      end
      if full then break end
    end
  end
  if size ~= nil and (full or due or now - head_enq >= linger) then
    local out = {}
    for j, qid in ipairs(picked) do
      redis.call('ZREM', P..':ready:'..key, qid)
      redis.call('HSET', P..':item:'..qid, 'state', 'processing', 'owner', owner,
        'lease', lease, 'bundle', bundle, 'updated', ARGV[2])
      redis.call('ZADD', P..':leases', lease, qid)
      out[j] = fields(P..':item:'..qid)
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
local P, now, cutoff, n = ARGV[1], ARGV[2], ARGV[3], 0
for _, qid in ipairs(redis.call('ZRANGEBYSCORE', P..':leases', '-inf', cutoff)) do
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
    out[#out + 1] = fields(ik)
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

_DEAD_LETTER_OUTBOX = """
local P, now = ARGV[1], ARGV[2]
for i = 3, #ARGV, 2 do
  local oid = ARGV[i]
  if redis.call('ZREM', P..':outbox', oid) == 1 then
    redis.call('HSET', P..':ob:'..oid, 'reason', ARGV[i + 1], 'dead_at', now)
    redis.call('ZADD', P..':outbox:dead', now, oid)
  end
end
return 0
"""

SCRIPTS = {
    "enqueue": _ENQUEUE,
    "claim": _CLAIM,
    "extend": _EXTEND,
    "finish": _FINISH,
    "retry": _RETRY,
    "recover": _RECOVER,
    "claim_expired": _CLAIM_EXPIRED,
    "claim_outbox": _CLAIM_OUTBOX,
    "dead_letter_outbox": _DEAD_LETTER_OUTBOX,
}
