"""Large rooms: gathered presence, bounded user lists, cheap reconnect storms.

Driven without a reactor or sockets; a Clock drives the presence interval.
"""

from __future__ import annotations

import itertools

import pytest
from members import Client, Prepare, joined
from twisted.internet.task import Clock

from chatservice.backplane.history import History
from chatservice.backplane.local import LocalBackplane
from chatservice.chat.hub import Hub
from chatservice.chat.messages import TEXT, Join, Leave, Nick, Say, Typing, Users
from chatservice.chat.messages import ProtocolError as Refused
from chatservice.chat.presence import Changes, Roster

#: Rooms with more members than this are large, in these tests.
LARGE = 3
INTERVAL = 0.5


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1_790_000_000.0)
    return clock


@pytest.fixture
def hub(history: History, clock: Clock, prepare: Prepare) -> Hub:
    return Hub(
        LocalBackplane(history),
        clock,
        prepare,
        server="s",
        large_room=LARGE,
        presence_interval=INTERVAL,
    )


def fill(hub: Hub, names: list[str], room: str = "big") -> list[Client]:
    return [joined(hub, 100 + i, name, room)[0] for i, name in enumerate(names)]


def kinds(client: Client) -> list[str]:
    return [e[0] for e in client.seen() if isinstance(e, tuple)]


# The parts, alone.


def test_roster_pages_names_case_insensitively() -> None:
    roster = Roster()
    for name in ["bob", "Alice", "carol", "dave", "Eve"]:
        roster.add(name)
    assert roster.all() == ["Alice", "bob", "carol", "dave", "Eve"]
    assert roster.page(None, 2) == (["Alice", "bob"], "bob")
    assert roster.page("bob", 2) == (["carol", "dave"], "dave")
    assert roster.page("dave", 2) == (["Eve"], None)
    assert roster.page("BOB", 10) == (["carol", "dave", "Eve"], None)  # a cursor ignores case
    roster.rename("bob", "Zed")
    roster.remove("carol")
    roster.remove("nobody")
    assert roster.all() == ["Alice", "dave", "Eve", "Zed"]


def test_changes_are_net_and_capped() -> None:
    changes = Changes()
    assert not changes
    changes.join("a")
    changes.leave("a")  # joined and left: nothing to tell
    changes.leave("b")
    changes.join("b")  # left and came back: nothing either
    assert not changes
    changes.join("c")
    changes.rename("c", "c2")  # joined and renamed: the others only see c2
    changes.rename("old", "new")
    for i in range(60):
        changes.join(f"n{i:02d}")
    payload = changes.payload("big", 70, "t")
    assert payload["joins"] == 61 and len(payload["joined"]) == 50
    assert payload["joined"][:3] == ["c2", "n00", "n01"]
    assert payload["renamed"] == [{"old": "old", "new": "new"}]
    assert payload["leaves"] == 0 and payload["left"] == []
    assert payload["count"] == 70


# Small rooms keep today's behaviour.


def test_a_small_room_sends_single_joins_and_leaves_and_no_presence(hub: Hub, clock: Clock) -> None:
    a, b, c = fill(hub, ["a", "b", "c"])
    assert [p["username"] for p in a.got("chat-join")] == ["a", "b", "c"]
    hub.disconnect(c)
    clock.advance(10)
    assert [p["username"] for p in a.got("chat-leave")] == ["c"]
    assert a.got("chat-presence") == []
    assert b.got("chat-users")[-1] == {"room": "big", "users": ["a", "b"], "count": 2}


# Large rooms.


def test_joins_to_a_large_room_come_as_one_presence_event_per_interval(
    hub: Hub, clock: Clock
) -> None:
    first = fill(hub, ["a", "b", "c"])
    for client in first:
        client.reset()
    later = fill(hub, ["d", "e", "f"])  # the room is large from d on
    everyone = first + later
    for client in everyone:
        assert client.got("chat-join") == []
        assert client.got("chat-presence") == []
    clock.advance(INTERVAL - 0.01)
    assert first[0].got("chat-presence") == []
    clock.advance(0.01)
    for client in everyone:
        [payload] = client.got("chat-presence")
        assert payload["count"] == 6
        assert payload["joins"] == 3 and payload["joined"] == ["d", "e", "f"]
        assert payload["leaves"] == 0 and payload["left"] == [] and payload["renamed"] == []
    # Nothing changed: nothing sent.
    clock.advance(10)
    assert len(first[0].got("chat-presence")) == 1


def test_at_most_one_presence_event_per_interval_during_a_stream_of_joins(
    hub: Hub, clock: Clock
) -> None:
    watcher, _ = joined(hub, 1, "watcher", "big")
    fill(hub, ["a", "b", "c"])
    times = []
    for i in range(40):
        joined(hub, 200 + i, f"j{i}", "big")
        before = len(watcher.got("chat-presence"))
        clock.advance(0.1)
        if len(watcher.got("chat-presence")) > before:
            times.append(clock.seconds())
    assert len(times) >= 6  # 4 s of joins
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= INTERVAL - 1e-6
    clock.advance(1)
    total = sum(p["joins"] for p in watcher.got("chat-presence"))
    assert total == 41  # c, then every j


def test_a_leave_from_a_large_room_tells_the_leaver_at_once_and_the_room_later(
    hub: Hub, clock: Clock
) -> None:
    a, b, c, d, e = fill(hub, ["a", "b", "c", "d", "e"])
    clock.advance(1)
    for client in (a, b, c, d, e):
        client.reset()
    hub.handle(hub.sessions[e], Leave())  # 4 left: still large
    assert [p["username"] for p in e.got("chat-leave")] == ["e"]
    assert a.got("chat-leave") == []
    clock.advance(INTERVAL)
    [payload] = a.got("chat-presence")
    assert (payload["count"], payload["left"], payload["leaves"]) == (4, ["e"], 1)
    assert e.got("chat-presence") == []  # no longer a member


def test_shrinking_back_to_small_sends_what_was_gathered_then_single_leaves(
    hub: Hub, clock: Clock
) -> None:
    a, _b, c, d, e = fill(hub, ["a", "b", "c", "d", "e"])
    clock.advance(1)
    a.reset()
    hub.disconnect(e)  # 4: large, gathered
    hub.disconnect(d)  # 3: small again: the gathered leave, then d's own chat-leave
    assert kinds(a) == ["chat-presence", "chat-leave"]
    assert a.got("chat-presence")[0]["left"] == ["e"]
    assert a.got("chat-leave")[0]["username"] == "d"
    hub.disconnect(c)
    assert [p["username"] for p in a.got("chat-leave")] == ["d", "c"]
    clock.advance(10)
    assert len(a.got("chat-presence")) == 1


def test_renames_and_typing_in_a_large_room(hub: Hub, clock: Clock) -> None:
    a, b, _c, _d = fill(hub, ["a", "b", "c", "d"])
    _small_only, s = joined(hub, 50, "s", "small")
    hub.handle(hub.sessions[a], Join(room="small"))
    clock.advance(1)
    for client in (a, b, _small_only):
        client.reset()

    hub.handle(hub.sessions[b], Typing())
    assert a.seen() == []

    hub.handle(hub.sessions[a], Nick(username="alpha"))
    # The renamed connection and its small room hear it at once; the large room later.
    assert a.got("chat-nick")[0]["new"] == "alpha"
    assert _small_only.got("chat-nick")[0]["new"] == "alpha"
    assert b.got("chat-nick") == []
    clock.advance(INTERVAL)
    [payload] = b.got("chat-presence")
    assert payload["renamed"] == [{"old": "a", "new": "alpha"}]
    assert hub.rooms["big"].usernames() == ["alpha", "b", "c", "d"]
    assert s.name == "s"


def test_a_room_emptied_before_its_presence_event_cancels_it(hub: Hub, clock: Clock) -> None:
    clients = fill(hub, ["a", "b", "c", "d", "e"])
    for client in clients:
        hub.disconnect(client)
    assert "big" not in hub.rooms
    assert clock.getDelayedCalls() == []


# The user list.


def test_the_joiner_of_a_large_room_gets_the_count_and_the_first_page(
    history: History, clock: Clock, prepare: Prepare
) -> None:
    hub = Hub(
        LocalBackplane(history),
        clock,
        prepare,
        server="s",
        large_room=20,
        presence_interval=INTERVAL,
    )
    names = [f"user{i:03d}" for i in range(150)]
    clients = fill(hub, names)
    last = clients[-1]
    [users] = last.got("chat-users")
    assert users["count"] == 150
    assert users["users"] == names[:100]
    assert users["next"] == "user099"

    hub.handle(hub.sessions[last], Users(after=users["next"]))
    page = last.got("chat-users")[-1]
    assert page == {"room": "big", "users": names[100:], "count": 150, "after": "user099"}


def test_a_small_room_lists_everybody_even_past_a_page(hub: Hub, history: History) -> None:
    # The default threshold is 500: a room of 150 is small.
    default = Hub(LocalBackplane(history), Clock(), Prepare(), server="s")
    names = [f"user{i:03d}" for i in range(150)]
    clients = fill(default, names)
    [users] = clients[-1].got("chat-users")
    assert users["users"] == names and users["count"] == 150 and "next" not in users


def test_asking_for_users_needs_membership(hub: Hub) -> None:
    _client, session = joined(hub, 1, "a", "one")
    with pytest.raises(Refused) as refused:
        hub.handle(session, Users(room="other"))
    assert refused.value.code == "not-joined"


def test_text_clients_see_a_large_room_as_lines(hub: Hub, clock: Clock) -> None:
    term, t = joined(hub, 1, "term", "big", dialect=TEXT)
    fill(hub, ["a", "b", "c", "d"])
    clock.advance(1)
    assert term.broadcasts()[-1] == "* #big: 5 here; joined: c, d"
    hub.handle(t, Users())
    users = {"room": "big", "users": ["a", "b", "c", "d", "term"], "count": 5}
    assert term.seen()[-1] == ("chat-users", users)


# Reconnect storms.


def test_a_storm_into_a_large_room_costs_linear_presence_work(
    history: History, clock: Clock, prepare: Prepare
) -> None:
    hub = Hub(
        LocalBackplane(history),
        clock,
        prepare,
        server="s",
        large_room=50,
        presence_interval=INTERVAL,
    )
    clients = []
    for i in range(1000):
        clients.append(joined(hub, i, f"user{i}", "storm")[0])
        if i % 100 == 99:
            clock.advance(0.1)  # 1000 joins in one second
    clock.advance(1)
    delivered = sum(len(c.frames) for c in clients)
    # One room of 1000 with single joins would be ~500,000 chat-join deliveries.
    assert delivered < 10 * len(clients)
    assert clients[0].got("chat-presence")[-1]["count"] == 1000
    assert sum(p["joins"] for p in clients[0].got("chat-presence")) == 1000 - 50


def test_joiners_asking_for_the_same_history_share_one_encoding(hub: Hub) -> None:
    _speaker, s = joined(hub, 1, "speaker", "storm")
    for i in range(5):
        hub.handle(s, Say(message=f"m{i}"))
    [first] = _speaker.broadcasts("chat-message")[:1]
    first_id = first[1]["id"]

    joiners = [Client(10 + i) for i in range(20)]
    for i, client in enumerate(joiners):
        hub.handle(hub.connect(client), Join(room="storm", username=f"j{i}", since=first_id))
    histories = [c.got("chat-history")[0] for c in joiners]
    assert [m["message"] for m in histories[0]["messages"]] == ["m1", "m2", "m3", "m4"]
    assert histories[0]["recovered"] is True
    # One frame object, framed once, for all twenty.
    frames = [f for c in joiners for f in c.frames if f.startswith(b'{"type":"chat-history"')]
    assert len(frames) == 20 and all(f is frames[0] for f in frames)

    # A new message: the next joiner gets it in its history.
    hub.handle(s, Say(message="m5"))
    late = Client(99)
    hub.handle(hub.connect(late), Join(room="storm", username="late", since=first_id))
    assert [m["message"] for m in late.got("chat-history")[0]["messages"]][-1] == "m5"
