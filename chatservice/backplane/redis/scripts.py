"""The Lua scripts: each runs whole in Redis, or not at all, while no other command runs.

Each one says above it what its KEYS and ARGV are.  The key and channel names
come from `chatservice.backplane.redis.keys.Keys`, except the two that `REAP`
builds itself from the prefixes it is given.  Instances of every version
share these keys: what a script reads and writes is part of the layout.
"""

# KEYS: ids, log, marks, channel, rooms.  ARGV: keep, room, the message's JSON
# object without its opening brace (the script puts the id in front).
STORE = """
local id = redis.call('INCR', KEYS[1])
local keep = tonumber(ARGV[1])
local payload = '{"id":' .. id .. ',' .. ARGV[3]
redis.call('HSET', KEYS[3], 'newest', id)
if keep > 0 then
  redis.call('XADD', KEYS[2], id .. '-0', 'm', payload)
  redis.call('SADD', KEYS[5], ARGV[2])
  local over = redis.call('XLEN', KEYS[2]) - keep
  if over > 0 then
    local dropped = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', over)
    local last = dropped[#dropped][1]
    redis.call('XTRIM', KEYS[2], 'MAXLEN', keep)
    redis.call('HSET', KEYS[3], 'pruned', string.match(last, '^%d+'))
  end
else
  redis.call('HSET', KEYS[3], 'pruned', id)
end
redis.call('PUBLISH', KEYS[4], payload)
return id
"""

# KEYS: log, marks.  ARGV: since, limit.  Returns {recovered, entries}, as
# `History.since` decides.
SINCE = """
local marks = redis.call('HMGET', KEYS[2], 'newest', 'pruned')
local newest = tonumber(marks[1]) or 0
local pruned = tonumber(marks[2]) or 0
local since = tonumber(ARGV[1])
if since < 0 or since > newest or since < pruned then
  return {0, redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ARGV[2])}
end
return {1, redis.call('XRANGE', KEYS[1], (since + 1) .. '-0', '+')}
"""

# KEYS: log, marks, members.  ARGV: after.  Returns {newest, pruned, entries
# after `after` (all of them if newest < after: Redis lost its data and counts
# again), members}.
BACKFILL = """
local marks = redis.call('HMGET', KEYS[2], 'newest', 'pruned')
local newest = tonumber(marks[1]) or 0
local after = tonumber(ARGV[1])
if newest < after then after = 0 end
return {newest, tonumber(marks[2]) or 0,
        redis.call('XRANGE', KEYS[1], (after + 1) .. '-0', '+'),
        redis.call('HGETALL', KEYS[3])}
"""


# KEYS: marks, members.  Returns {newest, members hash as a flat list}.
WATCH = """
local newest = tonumber(redis.call('HGET', KEYS[1], 'newest')) or 0
return {newest, redis.call('HGETALL', KEYS[2])}
"""

# KEYS: members, channel, the instance's rooms.  ARGV: member, name, event,
# room, "1" to publish even if the member was there already.
JOIN = """
local added = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[4])
if added == 1 or ARGV[5] == '1' then redis.call('PUBLISH', KEYS[2], ARGV[3]) end
return added
"""

# KEYS: members, channel.  ARGV: member, event.
LEAVE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then redis.call('PUBLISH', KEYS[2], ARGV[2]) end
return 0
"""

# KEYS: members, channel.  ARGV: member, new name, event.
RENAME = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('PUBLISH', KEYS[2], ARGV[3])
end
return 0
"""

# KEYS: names, the instance's names.  ARGV: folded name, member.  1 if taken.
CLAIM = """
local holder = redis.call('HGET', KEYS[1], ARGV[1])
if holder and holder ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""

# KEYS: names.  ARGV: folded name, "user:<id>".  0 if another user has it;
# else it is (now) that user's, for good: 1, or the member of the guest that
# held it and lost it.
CLAIM_USER = """
local holder = redis.call('HGET', KEYS[1], ARGV[1])
if holder and holder ~= ARGV[2] and string.sub(holder, 1, 5) == 'user:' then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if holder and holder ~= ARGV[2] then return holder end
return 1
"""

# KEYS: log, channel.  ARGV: id, event.  1 if the message was kept.
DELETE = """
local n = redis.call('XDEL', KEYS[1], ARGV[1] .. '-0')
if n > 0 then redis.call('PUBLISH', KEYS[2], ARGV[2]) end
return n
"""

# KEYS: names.  ARGV: folded name, member.
RELEASE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""

# KEYS: instances, alive.  ARGV: id, ttl in ms.  1 if the instance was not
# in the set (new, or taken for dead meanwhile).
HEARTBEAT = """
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
return redis.call('SADD', KEYS[1], ARGV[1])
"""

# KEYS: instances, its alive key, its rooms, its names, names.  ARGV: its id,
# the key prefix, the channel prefix.  Takes a dead instance's members out of every room (with a
# leave event each) and gives back its names; 1 if this call did it.
REAP = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then return 0 end
local mine = ARGV[1] .. ':'
for _, room in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local members = ARGV[2] .. 'room:' .. room .. ':members'
  local channel = ARGV[3] .. 'room:' .. room
  local all = redis.call('HGETALL', members)
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, #mine) == mine then
      redis.call('HDEL', members, all[i])
      redis.call('PUBLISH', channel, cjson.encode(
        {event = 'leave', room = room, member = all[i], name = all[i + 1]}))
    end
  end
end
for _, folded in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  local holder = redis.call('HGET', KEYS[5], folded)
  if holder and string.sub(holder, 1, #mine) == mine then
    redis.call('HDEL', KEYS[5], folded)
  end
end
redis.call('DEL', KEYS[3], KEYS[4])
return 1
"""
