"""The Lua scripts the Redis store runs: each is one atomic step on the server.

Why scripts: the staleness check and the write must be one atomic step, or two workers (say,
the old and new owner of a partition during a rebalance) could interleave and let an older
state win. Ordering is by (event time, events applied), so a late or replayed event never
overwrites newer state, and an equal one rewrites the same record harmlessly. The segment-size
counters move only when a write is accepted, so they always match the records.

Keys and arguments (``stream.store.keys`` for the key layout):

- ``WRITE``: the writes of any number of customers of one counter shard, in order. KEYS the
  shard's sizes, members, changes, flows and examples hashes (``Keys.shard_keys``), then each
  customer's record (one hash slot, as a script's keys must be on a Redis Cluster); ARGV
  changes kept, examples kept, then ``WRITE_ARGS`` per customer, in the records' order:
  event_ts, applied, cluster id or ``-``, value (``record_value``), segments JSON,
  evaluated_at, customer id (``write_args``). Returns a list: 1 for each record written, else
  0. One call per shard and batch rather than per customer: the worker's client side of a
  batch's writes cost 92 µs per customer with a call each, 55 µs with a call per shard
  (``docs/decisions/0001``). Records never expire: the counters must always match them.
  An accepted write that changes the customer's segments (against the stored header line,
  so a replayed write changes nothing and counts nothing twice) moves the members counters,
  adds to the flows totals, updates the examples and puts one entry in front of the
  customer's changes (a field of the changes hash: far less memory than a key of its own).
- ``FORGET``: KEYS record, then the customer's shard's sizes, members, changes, flows and
  examples (``Keys.script_keys``); ARGV customer id. Deletes the record and the changes, takes
  the customer out of the counters (an exit in the flows) and the examples. Returns 1 if
  there was a record, else 0.
- ``WATERMARK``: KEYS watermark; ARGV an event time. Returns the newest event time seen.
"""

from __future__ import annotations

__all__ = ["FORGET", "WATERMARK", "WRITE", "WRITE_ARGS"]

# The record scripts' helpers. A record's header line: (event ts, applied, cluster, members
# JSON), all nil when there is no record.
_HELPERS = """
local function read_current(rk)
  local cur = redis.call('GET', rk)
  if not cur then return nil end
  local a, b, c, d = string.match(cur, '^(%d+) (%d+) (%S+) ([^\\n]*)\\n')
  return tonumber(a), tonumber(b), c, d
end
-- A customer's changes: the changes hash maps the customer id to their entries, newest first,
-- one a line, at most ``keep``.
local function push_change(hk, id, entry, keep)
  local prev = redis.call('HGET', hk, id)
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
  redis.call('HSET', hk, id, entry)
end
-- Example members: the examples hash maps a segment to a JSON list of a few of the shard's
-- members.
local function add_example(hk, m, id, keep)
  local raw = redis.call('HGET', hk, m)
  local ids = raw and cjson.decode(raw) or {}
  if #ids < keep then
    ids[#ids + 1] = id
    redis.call('HSET', hk, m, cjson.encode(ids))
  end
end
local function drop_example(hk, m, id)
  local raw = redis.call('HGET', hk, m)
  if not raw then return end
  local ids, kept = cjson.decode(raw), {}
  for _, x in ipairs(ids) do if x ~= id then kept[#kept + 1] = x end end
  if #kept == 0 then redis.call('HDEL', hk, m)
  elseif #kept < #ids then redis.call('HSET', hk, m, cjson.encode(kept)) end
end
"""

#: Arguments of one customer's write in ``WRITE``'s ARGV, after its two shared ones.
WRITE_ARGS = 7

WRITE = (
    _HELPERS
    + """
local sizes, members, changes, flows, examples = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local kept, examples_kept = tonumber(ARGV[1]), tonumber(ARGV[2])
local function write(rk, ts_text, n_text, seg, value, segs, at, id)
  local ts, n = tonumber(ts_text), tonumber(n_text)
  local cts, cn, cseg, cm = read_current(rk)
  if cts and (ts < cts or (ts == cts and n < cn)) then return 0 end
  redis.call('SET', rk, value)
  if cseg ~= seg then
    if cseg then redis.call('HINCRBY', sizes, cseg, -1) end
    redis.call('HINCRBY', sizes, seg, 1)
  end
  if cm ~= segs then
    local old, new, gone, came, moves = {}, {}, {}, {}, {}
    if cm then for _, m in ipairs(cjson.decode(cm)) do old[m] = true end end
    for _, m in ipairs(cjson.decode(segs)) do new[m] = true end
    for m in pairs(old) do if not new[m] then gone[#gone + 1] = m end end
    for m in pairs(new) do if not old[m] then came[#came + 1] = m end end
    table.sort(gone)
    table.sort(came)
    for _, m in ipairs(gone) do
      redis.call('HINCRBY', members, m, -1)
      redis.call('HINCRBY', flows, 'out:' .. m, 1)
      drop_example(examples, m, id)
      moves[#moves + 1] = '-' .. m
    end
    for _, m in ipairs(came) do
      redis.call('HINCRBY', members, m, 1)
      redis.call('HINCRBY', flows, 'in:' .. m, 1)
      add_example(examples, m, id, examples_kept)
      moves[#moves + 1] = '+' .. m
    end
    if #moves > 0 and kept > 0 then
      push_change(changes, id, at .. ' ' .. n_text .. ' ' .. cjson.encode(moves), kept)
    elseif #moves > 0 then  -- none kept: lines kept under an earlier setting go at the next change
      redis.call('HDEL', changes, id)
    end
  end
  return 1
end
local out = {}
for i = 6, #KEYS do
  local a = 2 + (i - 6) * WRITE_ARGS
  out[#out + 1] = write(KEYS[i], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4],
    ARGV[a + 5], ARGV[a + 6], ARGV[a + 7])
end
return out
"""
).replace("WRITE_ARGS", str(WRITE_ARGS))

# Erases one customer's record and takes them out of the size counters.
FORGET = (
    _HELPERS
    + """
local cts, cn, cseg, cm = read_current(KEYS[1])
if not cseg then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HINCRBY', KEYS[2], cseg, -1)
if cm then
  for _, m in ipairs(cjson.decode(cm)) do
    redis.call('HINCRBY', KEYS[3], m, -1)
    redis.call('HINCRBY', KEYS[5], 'out:' .. m, 1)
    drop_example(KEYS[6], m, ARGV[1])
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
