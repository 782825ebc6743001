"""The backplane of several instances: Redis (or Valkey, the same protocol).

The promises are `chatservice.backplane.roles`'; this is how Redis keeps them.
Every key and channel is listed in `chatservice.backplane.redis.keys`; the
layout, the scripts' semantics and the JSON are shared by every instance on
one Redis, of whatever version.

One script (`scripts.STORE`) numbers, keeps, trims and publishes a message, so Redis
does all of it or none, and publishes in id order: every instance's
subscriber connection receives a room's messages in that order.  The
instance that stored a message passes it on when its subscription brings it,
like every other instance, not when the script answers (`log`).

Pub/sub forgets what a disconnected subscriber missed, so the messages of
watched rooms are counted by id (`subscriptions._Watch.last`): when the subscriber
connection comes back, each watched room's stream is read from there
(backfill) and messages that come live meanwhile wait, so the listener gets
each message once and in order, as if the connection never dropped (as far
as the stream still keeps them: ``--history``) (`subscriptions`).

Presence: each instance keeps its members in the rooms' member hashes and
its names in the names hash, and publishes what they do on the room's
channel (JSON objects with an ``event``; messages have an ``id``: `codec`).  It
refreshes its ``instance:<id>`` key every ttl/3; every instance also looks
for instances whose key expired and takes their members out (`scripts.REAP`, one
script, so only one instance publishes their leaves).  An instance that
comes back (its connection to Redis dropped, or it was taken for dead) puts
its members and names back, and re-reads the members of its rooms
(`presence`, `names`).

Announcements and orders go to the other instances on one channel; the
orders in force are kept in a hash for the instances that start later
(`control`).

Commands go over one connection (Twisted-native txredisapi, with hiredis
parsing; chosen by bench/redis_clients_bench.py), the subscription over a
second; both reconnect by themselves with backoff.  While either is down,
`store` and the reads fail at once with `Unavailable` (`connection`).

The modules, along the data flow: `address` (the ``--redis`` URL), `keys`,
`scripts` (Lua), `codec` (JSON), `connection` (both connections, one
object), `subscriptions` (watched rooms), then one per role: `log`,
`presence`, `names`, `control`; `backplane` composes them as
`RedisBackplane`.
"""

from chatservice.backplane.redis.address import RedisAddress, parse_redis_url
from chatservice.backplane.redis.backplane import RedisBackplane

__all__ = ["RedisAddress", "RedisBackplane", "parse_redis_url"]
