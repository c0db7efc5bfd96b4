"""The Lua scripts the Redis store runs: each is one atomic step on the server.

Why scripts: the staleness check and the write must be one atomic step, or two workers (say,
the old and new owner of a partition during a rebalance) could interleave and let an older
state win. Ordering is by (event time, events applied), so a late or replayed event never
overwrites newer state, and an equal one rewrites the same record harmlessly. The segment-size
counters move only when a write is accepted, so they always match the records.

Keys and arguments (``stream.store.keys`` for the key layout):

- ``WRITE``: KEYS record, the customer's shard of sizes, of members (``Keys.script_keys``: one
  hash slot, as a script's keys must be on a Redis Cluster); ARGV event_ts, applied, cluster
  id or ``-``, value (``record_value``), segments JSON. Returns 1 if written, else 0. Records
  never expire: the counters must always match them.
- ``FORGET``: KEYS record, sizes shard, members shard. Returns 1 if there was a record, else 0.
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
  local old, new = {}, {}
  if cm then for _, m in ipairs(cjson.decode(cm)) do old[m] = true end end
  for _, m in ipairs(cjson.decode(ARGV[5])) do new[m] = true end
  for m in pairs(old) do if not new[m] then redis.call('HINCRBY', KEYS[3], m, -1) end end
  for m in pairs(new) do if not old[m] then redis.call('HINCRBY', KEYS[3], m, 1) end end
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
redis.call('HINCRBY', KEYS[2], cseg, -1)
if cm then
  for _, m in ipairs(cjson.decode(cm)) do redis.call('HINCRBY', KEYS[3], m, -1) end
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
