"""The Lua scripts: each runs whole in Redis, or not at all, while no other command runs.

Each one says above it what its KEYS and ARGV are.  The key and channel names
come from `chatservice.backplane.redis.keys.Keys`, except the two that `REAP`
builds itself from the prefixes it is given.  Instances of every version
share these keys: what a script reads and writes is part of the layout.
"""

# KEYS: ids, log, marks, channel, rooms, and with webhooks the outbox.
# ARGV: keep, room, the message's JSON object without its opening brace (the
# script puts the id in front), and with webhooks the event's JSON up to its
# data (`chatservice.backplane.outbox.body_prefix`): the message is told to
# the application in the write that keeps it.
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
if KEYS[6] then redis.call('XADD', KEYS[6], '*', 'e', ARGV[4] .. payload .. '}') end
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

# KEYS: log, channel, and with webhooks the outbox.  ARGV: id, event, and
# with webhooks the application's event.  1 if the message was kept.
DELETE = """
local n = redis.call('XDEL', KEYS[1], ARGV[1] .. '-0')
if n > 0 then
  redis.call('PUBLISH', KEYS[2], ARGV[2])
  if KEYS[3] then redis.call('XADD', KEYS[3], '*', 'e', ARGV[3]) end
end
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


# -- webhooks (chatservice.backplane.redis.outbox) ---------------------------
#
# Who is where, for the application, over every instance: the person's key
# (``user:<id>`` or ``guest:<name casefolded>``) counted per room and over all
# rooms; the connections of each instance in its ``present`` hash, so that
# the instance that reaps a dead one takes them out too.  The events go into
# the outbox stream in the write that changes the counts.
#
# Every script below starts with ATTENDANCE.  KEYS: outbox, online, going,
# who, then the script's own.  ARGV: the time (ISO 8601), now in ms, the
# offline delay in ms, the event types kept (space-separated), the people
# keys' start (``<prefix>hooks:room:``), then the script's own.
ATTENDANCE = """
local function emit(kind, data)
  if string.find(' ' .. ARGV[4] .. ' ', ' ' .. kind .. ' ', 1, true) then
    redis.call('XADD', KEYS[1], '*', 'e', '{"type":"' .. kind .. '","time":"' .. ARGV[1]
      .. '","data":' .. cjson.encode(data) .. '}')
  end
end
local function person(who, room)
  return {room = room, user = who.user or cjson.null, name = who.name}
end
local function arrive(present, field, key, whojson, room)
  if redis.call('HSETNX', present, field, key .. '\\31' .. whojson) == 0 then return end
  local who = cjson.decode(whojson)
  if redis.call('HINCRBY', KEYS[2], key, 1) == 1 then
    redis.call('HSET', KEYS[4], key, whojson)
    if redis.call('ZREM', KEYS[3], key) == 0 then emit('user.online', person(who)) end
  end
  if redis.call('HINCRBY', ARGV[5] .. room .. ':people', key, 1) == 1 then
    emit('room.entered', person(who, room))
  end
end
local function depart(present, field)
  local value = redis.call('HGET', present, field)
  if not value then return end
  redis.call('HDEL', present, field)
  local sep = string.find(value, '\\31', 1, true)
  local key = string.sub(value, 1, sep - 1)
  local who = cjson.decode(string.sub(value, sep + 1))
  local room = string.sub(field, string.find(field, '\\31', 1, true) + 1)
  local people = ARGV[5] .. room .. ':people'
  if redis.call('HINCRBY', people, key, -1) <= 0 then
    redis.call('HDEL', people, key)
    emit('room.left', person(who, room))
  end
  if redis.call('HINCRBY', KEYS[2], key, -1) <= 0 then
    redis.call('HDEL', KEYS[2], key)
    redis.call('ZADD', KEYS[3], tonumber(ARGV[2]) + tonumber(ARGV[3]), key)
  end
end
"""

# KEYS[5]: this instance's present hash.  ARGV[6..]: field ("<connection>\31<room>"),
# the person's key, their JSON ({"user", "name"}), the room.
ARRIVE = (
    ATTENDANCE
    + """
arrive(KEYS[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
return 0
"""
)

# KEYS[5]: this instance's present hash.  ARGV[6]: the field.
DEPART = (
    ATTENDANCE
    + """
depart(KEYS[5], ARGV[6])
return 0
"""
)

# KEYS[5]: an instance's present hash.  ARGV[6..]: what is there now, as
# ARRIVE's arguments four by four.  Everything else in the hash departs (all
# of it for an instance that died: no arguments).
RESYNC = (
    ATTENDANCE
    + """
local now = {}
for i = 6, #ARGV, 4 do now[ARGV[i]] = true end
for _, field in ipairs(redis.call('HKEYS', KEYS[5])) do
  if not now[field] then depart(KEYS[5], field) end
end
for i = 6, #ARGV, 4 do arrive(KEYS[5], ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]) end
return 0
"""
)

# The people whose grace period is over go offline (unless they are back).
OFFLINE = (
    ATTENDANCE
    + """
for _, key in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[2], 'LIMIT', 0, 100)) do
  redis.call('ZREM', KEYS[3], key)
  if not redis.call('HGET', KEYS[2], key) then
    local whojson = redis.call('HGET', KEYS[4], key)
    redis.call('HDEL', KEYS[4], key)
    if whojson then emit('user.offline', person(cjson.decode(whojson))) end
  end
end
return 0
"""
)

# KEYS: outbox, poster.  ARGV: the event JSON.  A moderation action.
RECORD = """
redis.call('XADD', KEYS[1], '*', 'e', ARGV[1])
return 0
"""

# KEYS: outbox, poster (the lease).  ARGV: this instance, the lease in ms,
# the idle ms after which another's taken events are this one's, how many.
# Returns {1, entries} to the instance that sends (the lease is its: renewed),
# {0} to the others.  Its own taken and unacknowledged events first, then the
# new ones: never newer ones while another's are not claimable yet (a room's
# events stay in order).
TAKE = """
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return {0} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 0 then return {1, {}} end
redis.pcall('XGROUP', 'CREATE', KEYS[1], 'webhooks', '0')
local function others()
  local summary = redis.call('XPENDING', KEYS[1], 'webhooks')
  if summary[1] == 0 or not summary[4] then return false end
  for _, c in ipairs(summary[4]) do
    if c[1] ~= ARGV[1] and tonumber(c[2]) > 0 then return true end
  end
  return false
end
if others() then
  redis.call('XAUTOCLAIM', KEYS[1], 'webhooks', ARGV[1], ARGV[3], '0-0', 'COUNT', 1000, 'JUSTID')
  if others() then return {1, {}} end
end
local limit = tonumber(ARGV[4])
local got = {}
local mine = redis.call('XREADGROUP', 'GROUP', 'webhooks', ARGV[1], 'COUNT', limit,
  'STREAMS', KEYS[1], '0')
if mine and mine[1] then for _, e in ipairs(mine[1][2]) do table.insert(got, e) end end
if #got < limit then
  local new = redis.call('XREADGROUP', 'GROUP', 'webhooks', ARGV[1], 'COUNT', limit - #got,
    'STREAMS', KEYS[1], '>')
  if new and new[1] then for _, e in ipairs(new[1][2]) do table.insert(got, e) end end
end
return {1, got}
"""

# KEYS: outbox, poster.  ARGV: this instance, the lease in ms.  Keeps the lease.
RENEW = """
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
return 0
"""

# KEYS: outbox, poster.  ARGV: this instance.  Gives the lease back (at a
# graceful stop), so that another instance sends at once.
RELEASE_LEASE = """
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 0
"""

# KEYS: outbox.  ARGV: entry ids.  Acknowledged: gone from the stream.
DONE = """
redis.call('XACK', KEYS[1], 'webhooks', unpack(ARGV))
redis.call('XDEL', KEYS[1], unpack(ARGV))
return 0
"""

# KEYS: outbox.  Returns {events waiting, the oldest's id or ''}.
BACKLOG = """
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
return {redis.call('XLEN', KEYS[1]), first[1] and first[1][1] or ''}
"""
