"""Every key and channel name the Redis backplane uses, in one place.

Keys (``chatservice:`` is the default prefix)::

    chatservice:ids                  INCR counter: message ids, all rooms
    chatservice:rooms                set of the rooms with kept messages
    chatservice:room:<room>:log      stream: the kept messages, entry id "<id>-0"
    chatservice:room:<room>:marks    hash: newest (last id given), pruned (last dropped)
    chatservice:<db>:room:<room>     pub/sub channel: the room's messages and presence
    chatservice:room:<room>:members  hash: "<instance>:<connection>" -> name
                                     (identified users: name, \\x1f, user id)
    chatservice:names                hash: name.casefold() -> "<instance>:<connection>",
                                     or "user:<id>" for good (an identified user's)
    chatservice:<db>:notices         pub/sub channel: announcements (/broadcast)
                                     (channels are not per database, hence <db>)
    chatservice:orders               hash: moderators' orders in force (bans, mutes) -> JSON
    chatservice:user:<id>:directs    hash: a user's direct conversations, room -> other's name
    chatservice:instances            set of the instances' ids
    chatservice:instance:<id>        "alive", expiring `ttl` after its last heartbeat
    chatservice:instance:<id>:rooms  set: rooms it has had members in
    chatservice:instance:<id>:names  set: names it has claimed

With ``--webhook`` (`chatservice.backplane.redis.outbox`)::

    chatservice:hooks:outbox         stream: events for the application, field "e";
                                     consumer group "webhooks"
    chatservice:hooks:poster         the instance that sends them now (expires)
    chatservice:hooks:online         hash: person -> their connections' rooms
    chatservice:hooks:going          sorted set: person -> when they go offline (ms)
    chatservice:hooks:who            hash: person -> {"user", "name"}
    chatservice:hooks:room:<room>:people  hash: person -> their connections in it
    chatservice:instance:<id>:present     hash: "<connection>\\x1f<room>" ->
                                     person, \\x1f, {"user", "name"}

(A person is ``user:<id>``, or ``guest:<name casefolded>``.)

The layout is shared by every instance, of every version, on one Redis: it
does not change.  The `REAP` script (`chatservice.backplane.redis.scripts`)
builds a room's members key and channel itself, from `Keys.prefix` and
`Keys.channels`, as `Keys.members` and `Keys.channel` do.
"""

from __future__ import annotations


class Keys:
    """The key and channel names of one deployment: its prefix, on its database.

    Args:
        prefix: Put before every key and channel name.
        db: The database number (None: 0), in channel names.
    """

    __slots__ = ("channels", "ids", "instances", "names", "notices", "orders", "prefix", "rooms")

    def __init__(self, prefix: str, db: int | None) -> None:
        #: Before every key name.
        self.prefix = prefix
        # Pub/sub channels are not per database: theirs say which one.
        #: Before every channel name.
        self.channels = f"{prefix}{db or 0}:"
        #: The message ids' counter.
        self.ids = f"{prefix}ids"
        #: The set of the rooms with kept messages.
        self.rooms = f"{prefix}rooms"
        #: The names hash: who holds each name.
        self.names = f"{prefix}names"
        #: The orders in force, by key.
        self.orders = f"{prefix}orders"
        #: The set of the instances' ids.
        self.instances = f"{prefix}instances"
        #: The channel of announcements and orders.
        self.notices = f"{self.channels}notices"

    def log(self, room: str) -> str:
        """The stream of `room`'s kept messages."""
        return f"{self.prefix}room:{room}:log"

    def marks(self, room: str) -> str:
        """The hash of `room`'s newest and pruned ids."""
        return f"{self.prefix}room:{room}:marks"

    def members(self, room: str) -> str:
        """The hash of `room`'s members, over every instance."""
        return f"{self.prefix}room:{room}:members"

    def channel(self, room: str) -> str:
        """The channel of `room`'s messages and presence events."""
        return f"{self.channels}room:{room}"

    def instance(self, instance: str, what: str = "") -> str:
        """Instance `instance`'s key: its heartbeat, or (`what`) its ``rooms`` or ``names`` set."""
        return f"{self.prefix}instance:{instance}" + (f":{what}" if what else "")

    def hooks(self, what: str) -> str:
        """A webhook key: ``outbox``, ``poster``, ``online``, ``going``, ``who``, ``room:``."""
        return f"{self.prefix}hooks:{what}"

    def directs(self, user: str) -> str:
        """The hash of user `user`'s direct conversations."""
        return f"{self.prefix}user:{user}:directs"
