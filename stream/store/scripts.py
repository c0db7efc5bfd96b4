"""The Lua scripts the Redis store runs: each is one atomic step on the server.

Why scripts: the staleness check and the write must be one atomic step, or two workers (say,
the old and new owner of a partition during a rebalance) could interleave and let an older
state win. Ordering is by (event time, events applied), so a late or replayed event never
overwrites newer state, and an equal one rewrites the same record harmlessly. The segment-size
counters move only when a write is accepted, so they always match the records.

Keys and arguments (``stream.store.keys`` for the key layout):

- ``WRITE``: KEYS record, the customer's shard of sizes, of members, of changes, of flows and
  of examples (``Keys.script_keys``: one hash slot, as a script's
  keys must be on a Redis Cluster); ARGV event_ts, applied, cluster id or ``-``, value
  (``record_value``), segments JSON, evaluated_at, customer id, changes kept, examples kept.
  Returns 1 if written, else 0. Records never expire: the counters must always match them.
  An accepted write that changes the customer's segments (against the stored header line,
  so a replayed write changes nothing and counts nothing twice) moves the members counters,
  adds to the flows totals, updates the examples and puts one entry in front of the
  customer's changes (a field of the changes hash: far less memory than a key of its own).
- ``FORGET``: the same KEYS; ARGV customer id. Deletes the record and the changes, takes
  the customer out of the counters (an exit in the flows) and the examples. Returns 1 if
  there was a record, else 0.
- ``WATERMARK``: KEYS watermark; ARGV an event time. Returns the newest event time seen.
"""

from __future__ import annotations

__all__ = ["FORGET", "WATERMARK", "WRITE"]

# Both record scripts start by reading the stored record's header line (all nil when none).
_READ_CURRENT = """
local cts, cn, cseg, cm
local cur = redis.call('GET', KEYS[1])
if cur then
  local a, b, c, d = string.match(cur, '^(%d+) (%d+) (%S+) ([^\\n]*)\\n')
  cts, cn, cseg, cm = tonumber(a), tonumber(b), c, d
end
-- A customer's changes: KEYS[4] maps the customer id to their entries, newest first, one a
-- line, at most ``keep``.
local function push_change(id, entry, keep)
  local prev = redis.call('HGET', KEYS[4], id)
  if prev and keep > 1 then
    local pos, n = 0, 0
    while n < keep - 1 do
      pos = string.find(prev, '\\n', pos + 1, true)
      if not pos then break end
      n = n + 1
    end
    if pos then prev = string.sub(prev, 1, pos - 1) end
    entry = entry .. '\\n' .. prev
  end
  redis.call('HSET', KEYS[4], id, entry)
end
-- Example members: KEYS[6] maps a segment to a JSON list of a few of the shard's members.
local function add_example(m, id, keep)
  local raw = redis.call('HGET', KEYS[6], m)
  local ids = raw and cjson.decode(raw) or {}
  if #ids < keep then
    ids[#ids + 1] = id
    redis.call('HSET', KEYS[6], m, cjson.encode(ids))
  end
end
local function drop_example(m, id)
  local raw = redis.call('HGET', KEYS[6], m)
  if not raw then return end
  local ids, kept = cjson.decode(raw), {}
  for _, x in ipairs(ids) do if x ~= id then kept[#kept + 1] = x end end
  if #kept == 0 then redis.call('HDEL', KEYS[6], m)
  elseif #kept < #ids then redis.call('HSET', KEYS[6], m, cjson.encode(kept)) end
end
"""

WRITE = (
    _READ_CURRENT
    + """
local ts, n = tonumber(ARGV[1]), tonumber(ARGV[2])
if cts and (ts < cts or (ts == cts and n < cn)) then return 0 end
redis.call('SET', KEYS[1], ARGV[4])
if cseg ~= ARGV[3] then
  if cseg then redis.call('HINCRBY', KEYS[2], cseg, -1) end
  redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
end
if cm ~= ARGV[5] then
  local old, new, gone, came, moves = {}, {}, {}, {}, {}
  if cm then for _, m in ipairs(cjson.decode(cm)) do old[m] = true end end
  for _, m in ipairs(cjson.decode(ARGV[5])) do new[m] = true end
  for m in pairs(old) do if not new[m] then gone[#gone + 1] = m end end
  for m in pairs(new) do if not old[m] then came[#came + 1] = m end end
  table.sort(gone)
  table.sort(came)
  for _, m in ipairs(gone) do
    redis.call('HINCRBY', KEYS[3], m, -1)
    redis.call('HINCRBY', KEYS[5], 'out:' .. m, 1)
    drop_example(m, ARGV[7])
    moves[#moves + 1] = '-' .. m
  end
  for _, m in ipairs(came) do
    redis.call('HINCRBY', KEYS[3], m, 1)
    redis.call('HINCRBY', KEYS[5], 'in:' .. m, 1)
    add_example(m, ARGV[7], tonumber(ARGV[9]))
    moves[#moves + 1] = '+' .. m
  end
  if #moves > 0 and tonumber(ARGV[8]) > 0 then
    push_change(ARGV[7], ARGV[6] .. ' ' .. ARGV[2] .. ' ' .. cjson.encode(moves), tonumber(ARGV[8]))
  end
end
return 1
"""
)

# Erases one customer's record and takes them out of the size counters.
FORGET = (
    _READ_CURRENT
    + """
if not cseg then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HINCRBY', KEYS[2], cseg, -1)
if cm then
  for _, m in ipairs(cjson.decode(cm)) do
    redis.call('HINCRBY', KEYS[3], m, -1)
    redis.call('HINCRBY', KEYS[5], 'out:' .. m, 1)
    drop_example(m, ARGV[1])
  end
end
return 1
"""
)

# Keeps the newest event time any worker applied, so size snapshots of several workers share
# one event-time clock.
WATERMARK = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local mine = tonumber(ARGV[1])
if mine > cur then redis.call('SET', KEYS[1], ARGV[1]); return mine end
return cur
"""
