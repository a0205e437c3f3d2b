"""The Redis job table's Lua scripts: every change to a job is one script, so it is atomic.

Key layout and meanings are in :mod:`cjllm.provider.redis_jobs`. ``ARGV[1]`` is always the
key prefix; :data:`JOB_SCRIPTS` maps each verb to its script (the queue's ``TO_READY`` and
``stat`` helpers from :mod:`cjllm.provider.redis_scripts` are prepended to every one).
"""

from __future__ import annotations

from cjllm.provider.redis_scripts import TO_READY

_LANE_GROUPS = """
local P, now = ARGV[1], ARGV[2]
for _, qid in ipairs(redis.call('ZRANGEBYSCORE', P..':delayed', '-inf', now)) do
  redis.call('ZREM', P..':delayed', qid)
  local f = redis.call('HMGET', P..':item:'..qid, 'state', 'key', 'enq')
  if f[1] == 'queued' then to_ready(P, qid, f[2], f[3]) end
end
local groups, order = {}, {}
for _, key in ipairs(redis.call('SMEMBERS', P..':keys')) do
  if string.sub(key, 1, #ARGV[3]) == ARGV[3] then
    local rk = P..':ready:'..key
    local n = redis.call('ZCARD', rk)
    if n > 0 then
      local g = string.sub(key, 1, #key - 65)
      local first = redis.call('ZRANGE', rk, 0, 0, 'WITHSCORES')[2]
      local last = redis.call('ZRANGE', rk, -1, -1, 'WITHSCORES')[2]
      local s = groups[g]
      if s == nil then
        s = {0, first, last}
        groups[g] = s
        order[#order + 1] = g
      end
      s[1] = s[1] + n
      if tonumber(first) < tonumber(s[2]) then s[2] = first end
      if tonumber(last) > tonumber(s[3]) then s[3] = last end
    end
  end
end
local out = {}
for _, g in ipairs(order) do
  local s = groups[g]
  out[#out + 1] = {g, s[1], s[2], s[3]}
end
return out
"""

_LANE_ITEMS = """
local P, now, limit, avail_only, prefix = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]),
  ARGV[4] == '1', ARGV[5]
local out = {}
local function add(qid)
  local ik = P..':item:'..qid
  local f = redis.call('HMGET', ik, 'state', 'exp', 'key')
  if f[1] == 'queued' and string.sub(f[3], 1, #prefix) == prefix
      and (not avail_only or tonumber(f[2]) > now) then
    out[#out + 1] = redis.call('HGETALL', ik)
  end
end
for _, key in ipairs(redis.call('SMEMBERS', P..':keys')) do
  if string.sub(key, 1, #prefix) == prefix then
    for _, qid in ipairs(redis.call('ZRANGE', P..':ready:'..key, 0, limit - 1)) do add(qid) end
  end
end
if not avail_only then
  for _, qid in ipairs(redis.call('ZRANGE', P..':delayed', 0, -1)) do add(qid) end
end
return out
"""

_RECORD = """
local P, now, owner, hold, jid = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local i = 6
local fields = {}
for j = 1, tonumber(ARGV[i]) do fields[j] = ARGV[i + j] end
i = i + 1 + #fields
local lines = {}
for j = 1, tonumber(ARGV[i]) do
  local cid, k = ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 2
  local ids = {}
  for m = 1, k do ids[m] = ARGV[i + m] end
  i = i + k
  lines[j] = {cid, ids}
end
i = i + 1
for _, line in ipairs(lines) do
  for _, qid in ipairs(line[2]) do
    local f = redis.call('HMGET', P..':item:'..qid, 'state', 'key', 'exp')
    if f[1] ~= 'queued' or tonumber(f[3]) <= now
        or not redis.call('ZSCORE', P..':ready:'..f[2], qid) then
      return 0
    end
  end
end
local n = 0
for _, line in ipairs(lines) do
  for _, qid in ipairs(line[2]) do
    local ik = P..':item:'..qid
    redis.call('ZREM', P..':ready:'..redis.call('HGET', ik, 'key'), qid)
    redis.call('HSET', ik, 'state', 'processing', 'owner', owner, 'lease', hold,
      'bundle', line[1], 'updated', ARGV[2])
    redis.call('ZADD', P..':leases', hold, qid)
    n = n + 1
  end
  redis.call('RPUSH', P..':job:'..jid..':lines', line[1]..' '..table.concat(line[2], ','))
end
stat(P, 'queued', -n); stat(P, 'processing', n)
redis.call('HSET', P..':job:'..jid, unpack(fields))
redis.call('ZADD', P..':jobs:due', ARGV[2], jid)
redis.call('ZADD', P..':jobs:all', ARGV[2], jid)
for m = i, #ARGV do redis.call('SADD', P..':jobs:cj:'..ARGV[m], jid) end
return 1
"""

_TAKE = """
local P, now, owner, lease, out = ARGV[1], ARGV[2], ARGV[3], ARGV[4], {}
for i = 5, #ARGV do
  local qid = ARGV[i]
  local ik = P..':item:'..qid
  local f = redis.call('HMGET', ik, 'state', 'key')
  if f[1] == 'queued' then
    redis.call('ZREM', P..':ready:'..f[2], qid)
    redis.call('ZREM', P..':delayed', qid)
    redis.call('HSET', ik, 'state', 'processing', 'owner', owner, 'lease', lease, 'updated', now)
    redis.call('ZADD', P..':leases', lease, qid)
    stat(P, 'queued', -1); stat(P, 'processing', 1)
    out[#out + 1] = redis.call('HGETALL', ik)
  end
end
return out
"""

_CLAIM_JOBS = """
local P, now, owner, lease, limit, out = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4],
  tonumber(ARGV[5]), {}
for _, jid in ipairs(redis.call('ZRANGEBYSCORE', P..':jobs:due', '-inf', ARGV[2],
    'LIMIT', 0, 1000)) do
  if #out >= limit then break end
  local jk = P..':job:'..jid
  local f = redis.call('HMGET', jk, 'lease_owner', 'lease_until', 'state')
  if f[3] ~= 'settled' and (not f[1] or f[1] == '' or tonumber(f[2]) <= now) then
    redis.call('HSET', jk, 'lease_owner', owner, 'lease_until', lease)
    out[#out + 1] = redis.call('HGETALL', jk)
  end
end
return out
"""

_UPDATE = """
local P, jid, owner, release = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1'
local jk = P..':job:'..jid
if redis.call('HGET', jk, 'lease_owner') ~= owner then return 0 end
local due, state = nil, nil
for i = 5, #ARGV, 2 do
  local name, value = ARGV[i], ARGV[i + 1]
  redis.call('HSET', jk, name, value)
  if name == 'next_check_at' then due = value end
  if name == 'state' then state = value end
  if name == 'vendor_id' and value ~= '' then redis.call('HSET', P..':jobs:vendor', value, jid) end
  if name == 'excluded' then
    for _, vid in ipairs(cjson.decode(value)) do redis.call('HSET', P..':jobs:vendor', vid, jid) end
  end
end
if release then redis.call('HSET', jk, 'lease_owner', '', 'lease_until', '') end
if state == 'settled' then redis.call('ZREM', P..':jobs:due', jid)
elseif due then redis.call('ZADD', P..':jobs:due', due, jid) end
return 1
"""

_REQUEST_CANCEL = """
local P, now = ARGV[1], ARGV[2]
for i = 3, #ARGV do
  local jid = ARGV[i]
  local jk = P..':job:'..jid
  local st = redis.call('HGET', jk, 'state')
  if st == 'recorded' or st == 'submitted' then
    redis.call('HSET', jk, 'cancel_requested', '1')
    local due = redis.call('ZSCORE', P..':jobs:due', jid)
    if not due or tonumber(due) > tonumber(now) then
      redis.call('ZADD', P..':jobs:due', now, jid)
      redis.call('HSET', jk, 'next_check_at', now)
    end
  end
end
return 1
"""

_RELEASE = """
local P, owner, n = ARGV[1], ARGV[2], 0
for _, jid in ipairs(redis.call('ZRANGE', P..':jobs:due', 0, -1)) do
  local jk = P..':job:'..jid
  local held = redis.call('HGET', jk, 'lease_owner')
  if held and held ~= '' and (owner == '' or held == owner) then
    redis.call('HSET', jk, 'lease_owner', '', 'lease_until', '')
    n = n + 1
  end
end
return n
"""

_PURGE = """
local P, before, n = ARGV[1], tonumber(ARGV[2]), 0
for _, jid in ipairs(redis.call('ZRANGE', P..':jobs:all', 0, -1)) do
  local jk = P..':job:'..jid
  local f = redis.call('HMGET', jk, 'state', 'settled_at', 'cj_batch_ids', 'vendor_id', 'excluded')
  if f[1] == 'settled' and f[2] and f[2] ~= '' and tonumber(f[2]) < before then
    for _, cj in ipairs(cjson.decode(f[3])) do redis.call('SREM', P..':jobs:cj:'..cj, jid) end
    if f[4] and f[4] ~= '' then redis.call('HDEL', P..':jobs:vendor', f[4]) end
    for _, vid in ipairs(cjson.decode(f[5])) do redis.call('HDEL', P..':jobs:vendor', vid) end
    redis.call('DEL', jk, jk..':lines')
    redis.call('ZREM', P..':jobs:all', jid)
    n = n + 1
  end
end
return n
"""


JOB_SCRIPTS = {
    "lane_groups": TO_READY + _LANE_GROUPS,
    "lane_items": TO_READY + _LANE_ITEMS,
    "record": TO_READY + _RECORD,
    "take": TO_READY + _TAKE,
    "claim": TO_READY + _CLAIM_JOBS,
    "update": TO_READY + _UPDATE,
    "request_cancel": TO_READY + _REQUEST_CANCEL,
    "release": TO_READY + _RELEASE,
    "purge": TO_READY + _PURGE,
}
