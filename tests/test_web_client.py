"""The bundled web client at ``/``, driven in Debian's headless Chromium by Playwright.

Every test runs a real ``twistd -n chatservice`` and real pages, and asserts what a
user sees: text on the page, its state, its roles and labels. Playwright's sync API
is used in plain (non-Twisted) tests; the server is a separate process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import jwt
import pytest
from browser import CHROMIUM, CHROMIUM_ARGS, Twistd, free_port
from playwright.sync_api import (
    Browser,
    Dialog,
    Locator,
    Page,
    Playwright,
    Route,
    WebSocket,
    expect,
    sync_playwright,
)
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

REPORTS = Path(__file__).resolve().parent.parent / "reports"

expect.set_options(timeout=10_000)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/test installs it (apt-get install chromium)")
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture
def start_server(twistd: Path, tmp_path: Path) -> Iterator[Callable[..., Twistd]]:
    """Start twistd with these options (and a database in tmp_path unless given)."""
    started: list[Twistd] = []

    def start(*args: str, port: int | None = None) -> Twistd:
        if "--database" not in args:
            args = ("--database", str(tmp_path / "chat.sqlite3"), *args)
        server = Twistd(twistd, tmp_path, *args, port=port)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(start_server: Callable[..., Twistd]) -> Twistd:
    return start_server()


class Pages:
    """Opens pages, each in its own browser context (its own user); fails on page errors."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.contexts: list[Any] = []
        self.errors: list[str] = []

    def open(
        self, url: str, *, before: Callable[[Page], None] | None = None, **context_options: Any
    ) -> Page:
        """A new page at `url`; `before(page)` runs before it loads (to listen from the start)."""
        context = self.browser.new_context(**context_options)
        self.contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("dialog", self._dialog)
        if before is not None:
            before(page)
        page.goto(url)
        return page

    def _dialog(self, dialog: Dialog) -> None:
        """A page's alert() etc.: a failure (the page must never run user input)."""
        self.errors.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def pages(browser: Browser) -> Iterator[Pages]:
    opened = Pages(browser)
    yield opened
    opened.close()
    assert opened.errors == []


def enter_chat(page: Page, name: str) -> None:
    """Keyboard only: the name box has the focus; type, Enter, and the lobby opens."""
    expect(page.get_by_role("status")).to_have_text("Connected")
    expect(page.get_by_label("Your name", exact=True)).to_be_focused()
    page.keyboard.type(name)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="#lobby")).to_be_visible()
    expect(message_box(page)).to_be_focused()


def message_box(page: Page) -> Locator:
    """The message box of the room shown (#room) or direct conversation (@name)."""
    return page.get_by_role("textbox", name=re.compile(r"^Message [#@]"))


def say(page: Page, text: str) -> None:
    box = message_box(page)
    box.fill(text)
    box.press("Enter")
    expect(box).to_have_value("")


def log(page: Page, room: str) -> Locator:
    """The message list of `room`, also while another room is shown."""
    return page.get_by_role("log", name=f"Messages in #{room}", include_hidden=True)


def said(page: Page, room: str, text: str) -> Locator:
    """The messages in `room` whose text is exactly `text`."""
    return log(page, room).locator(".msg .text").filter(has_text=re.compile(f"^{re.escape(text)}$"))


def members(page: Page) -> Locator:
    return page.get_by_role("complementary").get_by_role("listitem")


def join_room(page: Page, room: str) -> None:
    box = page.get_by_label("Join or create a room")
    box.fill(room)
    box.press("Enter")
    expect(page.get_by_role("heading", name=f"#{room}")).to_be_visible()


def room_button(page: Page, room: str) -> Locator:
    return page.get_by_role("navigation", name="Rooms").get_by_role(
        "button", name=re.compile(f"^#{re.escape(room)}\\b")
    )


# A Python client, as another user would connect from a script.


def ws_chat(port: int) -> ClientConnection:
    return connect(
        f"ws://127.0.0.1:{port}/chat", subprotocols=[Subprotocol("chat.v1.json")], open_timeout=10
    )


def ws_send(ws: ClientConnection, kind: str, **payload: Any) -> None:
    ws.send(json.dumps({"type": kind, "payload": payload}))


def ws_until(ws: ClientConnection, kind: str, **match: Any) -> dict[str, Any]:
    while True:
        event = json.loads(ws.recv(timeout=10))
        payload: dict[str, Any] = event["payload"]
        if event["type"] == kind and all(payload.get(k) == v for k, v in match.items()):
            return payload


def ws_join(ws: ClientConnection, username: str, room: str = "lobby") -> None:
    ws_send(ws, "chat-join", username=username, room=room)
    ws_until(ws, "chat-join", username=username, room=room)


def ws_say(ws: ClientConnection, room: str, text: str) -> None:
    """Say `text` and wait until it is stored and delivered."""
    ws_send(ws, "chat-message", room=room, message=text)
    ws_until(ws, "chat-message", room=room, message=text)


# The tests.


def test_two_pages_chat_in_two_rooms(server: Twistd, pages: Pages) -> None:
    alice = pages.open(server.url)
    bob = pages.open(server.url)
    enter_chat(alice, "alice")
    enter_chat(bob, "bob")

    say(alice, "hello from alice")
    expect(said(bob, "lobby", "hello from alice")).to_have_count(1)
    message = log(bob, "lobby").locator(".msg").filter(has_text="hello from alice")
    expect(message).to_contain_text("alice")
    expect(message.locator("time")).to_have_text(re.compile(r"\d{1,2}[:.]\d{2}"))
    # Your own messages are marked as yours; others' are not.
    own = log(alice, "lobby").locator(".msg").filter(has_text="hello from alice")
    expect(own).to_contain_text("alice (you)")
    expect(message).not_to_contain_text("(you)")

    join_room(alice, "dev")
    join_room(bob, "dev")
    say(bob, "in dev only")
    expect(said(alice, "dev", "in dev only")).to_have_count(1)
    expect(said(alice, "lobby", "in dev only")).to_have_count(0)

    # A message in the room not shown counts as unread; switching shows it.
    room_button(bob, "lobby").click()
    expect(bob.get_by_role("heading", name="#lobby")).to_be_visible()
    expect(log(bob, "dev")).to_be_hidden()
    say(alice, "dev news")
    expect(room_button(bob, "dev")).to_have_accessible_name("#dev, 1 unread")
    room_button(bob, "dev").click()
    expect(said(bob, "dev", "dev news")).to_be_visible()
    expect(room_button(bob, "dev")).to_have_accessible_name("#dev")

    # Back in the lobby, both rooms keep their own conversation.
    room_button(alice, "lobby").click()
    say(alice, "back in the lobby")
    room_button(bob, "lobby").click()
    expect(said(bob, "lobby", "back in the lobby")).to_be_visible()
    expect(said(bob, "lobby", "back in the lobby")).to_have_count(1)
    expect(said(bob, "dev", "back in the lobby")).to_have_count(0)
    expect(said(bob, "lobby", "hello from alice")).to_have_count(1)


def test_member_list_and_typing_indicator_are_live(server: Twistd, pages: Pages) -> None:
    alice = pages.open(server.url)
    bob = pages.open(server.url)
    enter_chat(alice, "alice")
    expect(members(alice)).to_have_text(["alice (you)"])
    enter_chat(bob, "bob")
    expect(members(alice)).to_have_text(["alice (you)", "bob"])
    expect(members(bob)).to_have_text(["alice", "bob (you)"])
    expect(log(alice, "lobby")).to_contain_text("bob joined #lobby.")

    message_box(bob).press_sequentially("typing something", delay=20)
    expect(alice.get_by_text("bob is typing…")).to_be_visible()
    expect(bob.get_by_text("bob is typing…")).to_have_count(0)
    message_box(bob).press("Enter")
    expect(said(alice, "lobby", "typing something")).to_have_count(1)
    # The message ends the indicator.
    expect(alice.get_by_text("bob is typing…")).to_have_count(0)

    # Rename, keyboard only: the dialog, type, Enter.
    bob.get_by_role("button", name="Change name").click()
    dialog = bob.get_by_role("dialog", name="Change your name")
    expect(dialog.get_by_label("New name")).to_be_focused()
    bob.keyboard.type("robert")
    bob.keyboard.press("Enter")
    expect(dialog).to_be_hidden()
    expect(members(alice)).to_have_text(["alice (you)", "robert"])
    expect(log(alice, "lobby")).to_contain_text("bob is now known as robert.")
    expect(bob.get_by_role("banner")).to_contain_text("You are robert")

    # Leaving a room: the others see it go.
    bob.get_by_role("button", name="Leave room").click()
    expect(members(alice)).to_have_text(["alice (you)"])
    expect(log(alice, "lobby")).to_contain_text("robert left #lobby.")
    expect(log(bob, "lobby")).to_have_count(0)
    expect(bob.get_by_text("You are not in any room.")).to_be_visible()


def test_a_large_room_shows_its_count_and_the_list_on_demand(
    start_server: Callable[..., Twistd], pages: Pages
) -> None:
    server = start_server(
        "--large-room", "3", "--presence-interval", "0.2", "--max-connections-per-address", "200"
    )  # fmt: skip
    watcher = pages.open(server.url)
    enter_chat(watcher, "watcher")

    def heading(page: Page) -> Locator:
        return page.get_by_role("complementary").get_by_role("heading")

    with ExitStack() as crowd:
        sockets = [crowd.enter_context(ws_chat(server.port)) for _ in range(104)]
        for i, ws in enumerate(sockets):
            ws_send(ws, "chat-join", username=f"user{i:03d}", room="lobby")
        for ws in sockets:
            ws_until(ws, "chat-users", room="lobby")
        expect(heading(watcher)).to_have_text("105 people here")
        # The names only when asked: the watcher has them all if the changes it saw
        # named everybody (at most 50 names per event), else it asks page by page.
        expect(members(watcher)).to_have_count(0)
        watcher.get_by_role("button", name="Show who is here").click()
        expect(members(watcher).nth(99)).to_be_visible()
        more = watcher.get_by_role("button", name="Show more")
        if more.is_visible():
            more.click()
        expect(members(watcher)).to_have_count(105)
        expect(more).to_be_hidden()

        # A newcomer gets the count and the first 100 names; more a page at a time.
        late = pages.open(server.url)
        enter_chat(late, "late")
        expect(heading(late)).to_have_text("106 people here")
        late.get_by_role("button", name="Show who is here").click()
        expect(members(late)).to_have_count(100)
        expect(members(late).first).to_have_text("late (you)")
        late.get_by_role("button", name="Show more").click()
        expect(members(late)).to_have_count(106)
        expect(members(late).last).to_have_text("watcher")
        expect(late.get_by_role("button", name="Show more")).to_be_hidden()
        # No line per person joining in the log of a large room.
        expect(heading(watcher)).to_have_text("106 people here")
        expect(log(watcher, "lobby")).not_to_contain_text("late joined")
        expect(log(watcher, "lobby")).not_to_contain_text("user050 joined")

        for ws in sockets[:50]:
            ws.close()
        expect(heading(watcher)).to_have_text("56 people here")
        expect(heading(late)).to_have_text("56 people here")
        expect(members(watcher)).to_have_count(56)
        expect(members(watcher).filter(has_text="user000")).to_have_count(0)


def test_errors_are_shown_in_words(start_server: Callable[..., Twistd], pages: Pages) -> None:
    # Three frames at once, then (practically) none: the join takes one.
    server = start_server("--rate", "0.001", "--burst", "3")
    alice = pages.open(server.url)
    enter_chat(alice, "alice")
    taken = pages.open(server.url)
    expect(taken.get_by_role("status")).to_have_text("Connected")
    taken.get_by_label("Your name", exact=True).fill("Alice")
    taken.get_by_role("button", name="Join the chat").click()
    expect(taken.get_by_role("alert")).to_have_text("'Alice' is taken. Please choose another name.")
    expect(taken.get_by_label("Your name", exact=True)).to_be_focused()
    # Pick another name: in.
    taken.keyboard.type("alice2")
    taken.keyboard.press("Enter")
    expect(taken.get_by_role("heading", name="#lobby")).to_be_visible()
    expect(members(alice)).to_have_text(["alice (you)", "alice2"])

    # Flooding: the server drops what is over the rate, and the page says so.
    for i in range(3):
        say(alice, f"flood {i}")
    expect(alice.get_by_role("alert")).to_contain_text("You are sending too fast")
    expect(alice.get_by_role("alert")).to_contain_text("this one was dropped")


def test_message_length_limit_comes_from_the_server(
    start_server: Callable[..., Twistd], pages: Pages
) -> None:
    server = start_server("--max-text-length", "20")
    page = pages.open(server.url)
    enter_chat(page, "alice")
    counter = page.locator("#counter")
    expect(counter).to_have_text("0 / 20")
    message_box(page).press_sequentially("x" * 25)
    expect(message_box(page)).to_have_value("x" * 20)
    expect(counter).to_have_text("20 / 20")


def test_markup_in_messages_and_names_is_shown_as_text(server: Twistd, pages: Pages) -> None:
    page = pages.open(server.url)
    enter_chat(page, "alice")
    name = "<img src=x onerror=alert(1)>"
    text = '<img src=x onerror=alert(2)><script>alert(3)</script><b>"bold"</b>'
    with ws_chat(server.port) as mallory:
        ws_join(mallory, name)
        expect(members(page)).to_have_text([name, "alice (you)"])
        ws_send(mallory, "chat-typing", room="lobby")
        expect(page.get_by_text(f"{name} is typing…")).to_be_visible()
        ws_say(mallory, "lobby", text)
        expect(said(page, "lobby", text)).to_have_count(1)
        message = log(page, "lobby").locator(".msg").filter(has_text=text)
        expect(message.locator(".author")).to_have_text(name)
    # No element came from the user's strings (and no alert: see `pages`).
    assert page.locator("img, script:not([src]), b:has-text('bold')").count() == 0


#: Opens the page's own WebSocket to /chat next to the web client, joins the
#: lobby, and keeps every frame's text (in `window.tap`).
TAP = """(url) => new Promise((resolve, reject) => {
  const ws = new WebSocket(url, "chat.v1.json");
  window.tap = { ws, texts: [] };
  ws.onopen = () => ws.send(JSON.stringify(
    { type: "chat-join", payload: { username: "tap", room: "lobby" } }));
  ws.onerror = () => reject(new Error("WebSocket error"));
  ws.onmessage = (event) => {
    window.tap.texts.push(event.data);
    if (JSON.parse(event.data).type === "chat-users") resolve(ws.extensions);
  };
})"""


def test_chromium_decodes_compressed_messages_and_history_byte_exact(
    server: Twistd, pages: Pages
) -> None:
    alice = pages.open(server.url)
    enter_chat(alice, "alice")
    extensions = alice.evaluate(TAP, f"ws://127.0.0.1:{server.port}/chat")
    # Chromium offers permessage-deflate; /chat takes it without server context.
    assert extensions == "permessage-deflate; server_no_context_takeover"
    prose = (
        "Thanks everyone for joining the call today. As discussed, the release goes out "
        "on Thursday once the last two reviews are in; ping me if you are blocked. "
    )
    texts = [
        "short and plain",
        (prose * 3).strip(),
        ("héllo wörld ✓ 日本語のテキスト 🎉 " * 20).strip(),
        (prose * 20)[:1999] + "!",
        (prose * 3).strip(),
    ]
    with (
        ws_chat(server.port) as bob,
        connect(
            f"ws://127.0.0.1:{server.port}/chat",
            subprotocols=[Subprotocol("chat.v1.json")],
            compression=None,
            open_timeout=10,
        ) as carol,
    ):
        ws_join(bob, "bob")
        ws_join(carol, "carol")
        for text in texts:
            ws_say(bob, "lobby", text)
        plain = []
        while len(plain) < len(texts):
            raw = carol.recv(timeout=10)
            assert isinstance(raw, str)
            if json.loads(raw)["type"] == "chat-message":
                plain.append(raw)
    for text in texts:
        expect(said(alice, "lobby", text)).to_have_count(texts.count(text))
    # What Chromium decoded is, byte for byte, what the uncompressed client got.
    decoded = alice.evaluate("window.tap.texts")
    assert [raw for raw in decoded if json.loads(raw)["type"] == "chat-message"] == plain

    # A newcomer's join history (compressed: the largest frame) shows each once.
    dave = pages.open(server.url)
    enter_chat(dave, "dave")
    for text in texts:
        expect(said(dave, "lobby", text)).to_have_count(texts.count(text))


def restart_while_offline(page: Page, server: Twistd, meanwhile: Callable[[], None]) -> None:
    """Restart the server; run `meanwhile` before the page can be back; let it come back.

    The page is held back as if its network were down until `meanwhile` is done,
    so what it says can only reach the page through the history it asks for.
    """
    status = page.get_by_role("status")
    server.stop()
    expect(status).to_contain_text("Disconnected")
    expect(status).to_contain_text(re.compile(r"Retrying in \d+ s"))
    expect(message_box(page)).to_have_attribute("placeholder", re.compile("Offline"))
    page.context.set_offline(True)
    try:
        server.start()
        meanwhile()
        expect(status).to_contain_text("Disconnected")
    finally:
        page.context.set_offline(False)
    # It reconnects by itself and re-joins its rooms.
    expect(status).to_have_text("Connected", timeout=20_000)


def test_page_reconnects_after_a_restart_and_shows_what_it_missed_once(
    start_server: Callable[..., Twistd], pages: Pages
) -> None:
    # More missed messages than a join without `since` would get (50).
    server = start_server("--rate", "1000", "--burst", "1000")
    page = pages.open(server.url)
    enter_chat(page, "alice")
    join_room(page, "dev")
    with ws_chat(server.port) as bob:
        ws_join(bob, "bob")
        ws_join(bob, "bob", room="dev")
        ws_say(bob, "lobby", "before the restart")
        ws_say(bob, "dev", "dev before the restart")
    expect(said(page, "dev", "dev before the restart")).to_have_count(1)
    expect(said(page, "lobby", "before the restart")).to_have_count(1)

    away = [f"while you were away {i}" for i in range(60)]

    def meanwhile() -> None:
        with ws_chat(server.port) as bob:
            ws_join(bob, "bob")
            ws_join(bob, "bob", room="dev")
            for text in away:
                ws_say(bob, "lobby", text)
            ws_say(bob, "dev", "dev while you were away")

    restart_while_offline(page, server, meanwhile)
    expect(log(page, "dev")).to_contain_text("Reconnected: 1 new message while you were away.")
    expect(log(page, "lobby")).to_contain_text("Reconnected: 60 new messages while you were away.")
    with ws_chat(server.port) as bob:
        ws_join(bob, "bob")
        ws_say(bob, "lobby", "after the reconnect")
    expect(said(page, "lobby", "after the reconnect")).to_have_count(1)
    expect(log(page, "lobby").locator(".msg .text")).to_have_text(
        ["before the restart", *away, "after the reconnect"]
    )
    expect(log(page, "dev").locator(".msg .text")).to_have_text(
        ["dev before the restart", "dev while you were away"]
    )
    expect(page.get_by_text("could not be recovered")).to_have_count(0)
    # Sending works again.
    room_button(page, "lobby").click()
    say(page, "I am back")
    expect(said(page, "lobby", "I am back")).to_have_count(1)


def test_a_server_that_lost_its_history_is_not_mistaken_for_repeats(
    start_server: Callable[..., Twistd], pages: Pages
) -> None:
    # In memory: after the restart the ids start again at 1.
    server = start_server("--database", ":memory:")
    page = pages.open(server.url)
    enter_chat(page, "alice")
    say(page, "first")
    say(page, "second")
    expect(log(page, "lobby").locator(".msg .text")).to_have_text(["first", "second"])

    def meanwhile() -> None:
        with ws_chat(server.port) as bob:
            ws_join(bob, "bob")
            ws_say(bob, "lobby", "new first")

    restart_while_offline(page, server, meanwhile)
    expect(log(page, "lobby")).to_contain_text("older messages are gone")
    say(page, "new second")
    expect(log(page, "lobby").locator(".msg .text")).to_have_text(
        ["first", "second", "new first", "new second"]
    )


def test_client_shows_each_message_once_whatever_the_server_repeats(
    server: Twistd, pages: Pages
) -> None:
    """ChatClient (client.js) alone, fed events as a server could send them."""
    page = pages.open(server.url)
    shown = page.evaluate(
        """async () => {
            const { ChatClient } = await import("/client.js");
            const shown = [];
            const ui = {
                history: (room, messages) => shown.push(...messages.map((m) => m.message)),
                message: (room, m) => shown.push(m.message),
            };
            const client = new ChatClient(ui, { url: "ws://127.0.0.1:9/none" });
            const m = (id, message) => ({ id, room: "lobby", username: "bob", message });
            const feed = (type, payload) => client._receive(JSON.stringify({ type, payload }));
            client.wanted = "alice";
            feed("chat-history", { room: "lobby", messages: [m(1, "a"), m(2, "b")] });
            feed("chat-message", m(2, "b"));  // in flight while joining
            feed("chat-message", m(3, "c"));
            // A reconnect that could not recover: the latest ones again.
            feed("chat-history", { room: "lobby", messages: [m(2, "b"), m(3, "c"), m(4, "d")],
                                   recovered: false });
            feed("chat-message", m(4, "d"));
            feed("chat-message", m(5, "e"));
            clearInterval(client.typingTimer);
            return { shown, since: client.rooms.get("lobby").lastId };
        }"""
    )
    assert shown == {"shown": ["a", "b", "c", "d", "e"], "since": 5}


def test_page_reconnects_on_its_own_timer_and_misses_nothing(server: Twistd, pages: Pages) -> None:
    """The plain restart: no help from the test; whatever the timing, each message once."""
    page = pages.open(server.url)
    enter_chat(page, "alice")
    say(page, "said before")
    server.stop()
    status = page.get_by_role("status")
    expect(status).to_contain_text("Disconnected")
    server.start()
    with ws_chat(server.port) as bob:
        ws_join(bob, "bob")
        ws_say(bob, "lobby", "said while the page was away")
        # No event, no click: the backoff timer brings the page back.
        expect(status).to_have_text("Connected", timeout=20_000)
        expect(members(page)).to_have_text(["alice (you)", "bob"])
        ws_say(bob, "lobby", "said after")
    texts = log(page, "lobby").locator(".msg .text")
    expect(texts).to_have_text(["said before", "said while the page was away", "said after"])


def test_reconnect_delays_grow_exponentially_with_jitter(server: Twistd, pages: Pages) -> None:
    page = pages.open(server.url)
    delays = page.evaluate(
        """async () => {
            const { backoffDelay } = await import("/client.js");
            const at = (random) => [0, 1, 2, 3, 4, 5, 10].map(
                (attempt) => backoffDelay(attempt, { random: () => random }));
            return [at(0), at(0.5), at(1)];
        }"""
    )
    low, middle, high = delays
    assert middle == [1000, 2000, 4000, 8000, 16000, 30000, 30000]
    assert low == [750, 1500, 3000, 6000, 12000, 22500, 22500]
    assert high == [1250, 2500, 5000, 10000, 20000, 37500, 37500]


def test_echo_tester_is_kept_at_echo_html(server: Twistd, pages: Pages) -> None:
    chat = pages.open(server.url)
    chat.get_by_role("link", name="Echo tester").click()
    expect(chat).to_have_url(f"{server.url}echo.html")
    chat.get_by_role("button", name="Connect", exact=True).click()
    expect(chat.get_by_role("status")).to_have_text("connected")
    chat.get_by_label("Message", exact=True).fill("hello echo")
    chat.get_by_label("Message", exact=True).press("Enter")
    expect(chat.get_by_text("received: hello echo")).to_be_visible()


@pytest.mark.parametrize(
    ("name", "viewport", "scheme"),
    [
        ("web-desktop", {"width": 1280, "height": 800}, "light"),
        ("web-phone", {"width": 390, "height": 844}, "light"),
        ("web-phone-dark", {"width": 390, "height": 844}, "dark"),
    ],
)
def test_screenshot_of_the_main_view(
    server: Twistd, pages: Pages, name: str, viewport: dict[str, int], scheme: str
) -> None:
    page = pages.open(server.url, viewport=viewport, color_scheme=scheme)
    enter_chat(page, "alice")
    join_room(page, "random")
    room_button(page, "lobby").click()
    with ws_chat(server.port) as bob:
        ws_join(bob, "bob")
        ws_say(bob, "lobby", "Hi alice! Did the deploy go through?")
        say(page, "It did: the new page is live. Come over to #random later.")
        ws_say(
            bob,
            "lobby",
            "Nice. A longer message to see how text wraps inside a bubble when it does not "
            "fit on one line, which happens a lot on a phone.",
        )
        ws_send(bob, "chat-typing", room="lobby")
        expect(page.get_by_text("bob is typing…")).to_be_visible()
        # Everything a user needs is on screen, nothing sticks out sideways.
        for target in [
            message_box(page),
            page.get_by_role("button", name="Send"),
            room_button(page, "random"),
            page.get_by_role("status"),
        ]:
            expect(target).to_be_in_viewport()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= viewport["width"]
        REPORTS.mkdir(exist_ok=True)
        page.screenshot(path=str(REPORTS / f"{name}.png"))


# Identities (sign-in links), private rooms, direct messages, moderation
# (docs/protocol.md "Identity").

#: The service's HS256 secret in these tests (32 bytes or more: no weak-key warning).
SECRET = "web-client-test-secret-0123456789abcdef"


def sign(
    sub: str,
    name: str,
    *,
    admin: bool = False,
    rooms: tuple[str, ...] = (),
    ttl: float = 600,
    exp: int | None = None,
    secret: str = SECRET,
) -> str:
    """A token as the site the users signed in to would issue it (`exp`, or now + `ttl`)."""
    claims: dict[str, Any] = {"sub": sub, "name": name, "admin": admin}
    claims["exp"] = exp if exp is not None else int(time.time() + ttl)
    if rooms:
        claims["rooms"] = list(rooms)
    return jwt.encode(claims, secret, algorithm="HS256")


@pytest.fixture
def auth_server(start_server: Callable[..., Twistd]) -> Twistd:
    return start_server("--auth", "optional", "--auth-secret", SECRET, "--private-room", "staff-*")


def server_log(server: Twistd) -> str:
    """Everything the server wrote (every start)."""
    return "".join(
        path.read_text(errors="replace")
        for path in sorted(server.cwd.glob(f"twistd-{server.port}-*.log"))
    )


def signed_in(page: Page, name: str) -> None:
    """A sign-in link: no name asked, the lobby opens, the top bar says who you are."""
    expect(page.get_by_role("status")).to_have_text("Connected")
    expect(page.get_by_role("heading", name="#lobby")).to_be_visible()
    expect(page.get_by_label("Your name", exact=True)).to_be_hidden()
    banner = page.get_by_role("banner")
    expect(banner).to_contain_text(f"You are {name}")
    expect(banner.get_by_role("img", name="identified user")).to_be_visible()
    expect(banner.get_by_role("button", name="Change name")).to_be_hidden()


def member(page: Page, name: str) -> Locator:
    """The member list's entry for `name` (with " (you)" for yourself)."""
    return members(page).filter(has_text=re.compile(f"^{re.escape(name)}\\b"))


def member_actions(page: Page, name: str) -> Locator:
    """Open what you can do with member `name`: a group of buttons."""
    page.get_by_role("complementary").get_by_role("button", name=name, exact=True).click()
    group = page.get_by_role("group", name=f"Actions for {name}")
    expect(group).to_be_visible()
    return group


def conversation_button(page: Page, name: str) -> Locator:
    """The direct conversation with `name` in the list of rooms."""
    return page.get_by_role("navigation", name="Rooms").get_by_role(
        "button", name=re.compile(f"^@{re.escape(name)}\\b")
    )


def dm_log(page: Page, name: str) -> Locator:
    return page.get_by_role("log", name=f"Messages with @{name}", include_hidden=True)


def dm_said(page: Page, name: str, text: str) -> Locator:
    return (
        dm_log(page, name).locator(".msg .text").filter(has_text=re.compile(f"^{re.escape(text)}$"))
    )


def test_a_sign_in_link_identifies_the_user_and_leaves_the_address_bar(
    auth_server: Twistd, pages: Pages
) -> None:
    server = auth_server
    alice_token = sign("u1", "alice", admin=True)
    bob_token = sign("u2", "bob")
    sent: list[str] = []
    sockets: list[str] = []

    def listen(page: Page) -> None:
        def opened(ws: WebSocket) -> None:
            sockets.append(ws.url)
            ws.on("framesent", lambda payload: sent.append(str(payload)))

        page.on("websocket", opened)

    alice = pages.open(f"{server.url}#token={alice_token}", before=listen)
    signed_in(alice, "alice")
    # The token left the address bar (path kept), and no URL the page opened has it.
    expect(alice).to_have_url(server.url)
    assert alice_token not in alice.evaluate("location.href")
    assert sockets == [f"ws://127.0.0.1:{server.port}/chat"]
    # It went as the connection's first frame, before any join.
    first = json.loads(sent[0])
    assert first == {"type": "chat-auth", "payload": {"token": alice_token}}
    assert json.loads(sent[1])["type"] == "chat-join"
    # An admin is told so.
    expect(alice.get_by_role("banner").get_by_text("admin", exact=True)).to_be_visible()
    expect(member(alice, "alice")).to_have_text("alice✓ (you)")
    expect(member(alice, "alice").get_by_role("img", name="identified user")).to_be_visible()

    bob = pages.open(f"{server.url}#token={bob_token}")
    signed_in(bob, "bob")
    expect(bob.get_by_role("banner").get_by_text("admin", exact=True)).to_be_hidden()
    guest = pages.open(server.url)
    enter_chat(guest, "mallory")

    # Identified users are marked in the member lists, guests are not.
    for page in (alice, bob, guest):
        expect(members(page)).to_have_count(3)
        expect(member(page, "alice").get_by_role("img", name="identified user")).to_be_visible()
        expect(member(page, "bob").get_by_role("img", name="identified user")).to_be_visible()
        expect(member(page, "mallory").get_by_role("img", name="identified user")).to_have_count(0)

    # ... and in messages.
    say(alice, "hello from the signed-in alice")
    say(guest, "hello from a guest")
    for page in (bob, guest):
        signed = (
            log(page, "lobby").locator(".msg").filter(has_text="hello from the signed-in alice")
        )
        expect(signed.locator(".author")).to_have_text("alice")
        expect(signed.get_by_role("img", name="identified user")).to_be_visible()
        expect(signed.get_by_role("img", name="identified user")).to_have_attribute(
            "title", "identified user"
        )
        anonymous = log(page, "lobby").locator(".msg").filter(has_text="hello from a guest")
        expect(anonymous.locator(".author")).to_have_text("mallory")
        expect(anonymous.get_by_role("img", name="identified user")).to_have_count(0)

    # A reload in the same tab keeps the sign-in (the token is in this tab's sessionStorage).
    bob.reload()
    signed_in(bob, "bob")
    expect(bob).to_have_url(server.url)
    expect(said(bob, "lobby", "hello from the signed-in alice")).to_have_count(1)
    # A new tab (another session) does not have it: a guest again.
    other = pages.open(server.url)
    expect(other.get_by_role("status")).to_have_text("Connected")
    expect(other.get_by_label("Your name", exact=True)).to_be_visible()

    text = server_log(server)
    assert "chatservice listening" in text
    for token in (alice_token, bob_token):
        assert token not in text
        assert token.split(".")[2] not in text  # not even its signature


def test_a_refused_sign_in_link_is_explained_and_a_guest_may_go_on(
    auth_server: Twistd, pages: Pages
) -> None:
    server = auth_server
    expired = sign("u1", "alice", ttl=-3600)
    page = pages.open(f"{server.url}#token={expired}")
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Your sign-in has expired")
    expect(alert).to_contain_text("You can still join as a guest")
    expect(page).to_have_url(server.url)
    enter_chat(page, "visitor")
    expect(page.get_by_role("banner").get_by_role("img", name="identified user")).to_be_hidden()

    forged = sign("u1", "alice", admin=True, secret="not-the-service-secret-0123456789abcdef")
    page = pages.open(f"{server.url}#token={forged}")
    expect(page.get_by_role("alert")).to_contain_text("Your sign-in is not valid")
    expect(page.get_by_label("Your name", exact=True)).to_be_focused()
    # Refused tokens are forgotten: a reload asks for a name, with no error.
    page.reload()
    expect(page.get_by_role("status")).to_have_text("Connected")
    expect(page.get_by_label("Your name", exact=True)).to_be_focused()
    expect(page.get_by_role("alert")).to_have_count(0)
    text = server_log(server)
    assert expired not in text
    assert forged not in text


def test_private_rooms_and_direct_messages(auth_server: Twistd, pages: Pages) -> None:
    server = auth_server
    alice_token = sign("u1", "alice", admin=True)
    bob_token = sign("u2", "bob")
    alice = pages.open(f"{server.url}#token={alice_token}")
    signed_in(alice, "alice")
    bob = pages.open(f"{server.url}#token={bob_token}")
    signed_in(bob, "bob")
    guest = pages.open(server.url)
    enter_chat(guest, "mallory")

    # A guest asking for a private room is refused, and the page says so, with a lock.
    box = guest.get_by_label("Join or create a room")
    box.fill("staff-x")
    box.press("Enter")
    rooms = guest.get_by_role("navigation", name="Rooms")
    expect(rooms.get_by_role("alert")).to_contain_text("#staff-x")
    expect(rooms.get_by_role("alert")).to_contain_text("can't join")
    expect(rooms.get_by_role("alert").get_by_role("img", name="private room")).to_be_visible()
    expect(room_button(guest, "staff-x")).to_have_count(0)
    expect(guest.get_by_role("heading", name="#lobby")).to_be_visible()
    # An admin may go in.
    join_room(alice, "staff-x")
    room_button(alice, "lobby").click()

    # A guest has nobody to write to privately: names are plain text.
    expect(guest.get_by_role("complementary").get_by_role("button", name="alice")).to_have_count(0)
    # You do not write to yourself.
    expect(alice.get_by_role("complementary").get_by_role("button", name="alice")).to_have_count(0)

    # alice writes to bob privately: a conversation "@bob" with a lock.
    member_actions(alice, "bob").get_by_role("button", name="Message bob privately").click()
    expect(alice.get_by_role("heading", name="@bob")).to_be_visible()
    expect(
        alice.get_by_role("heading", name="@bob").get_by_role("img", name="private room")
    ).to_be_visible()
    expect(conversation_button(alice, "bob")).to_have_accessible_name("@bob, private room")
    expect(message_box(alice)).to_have_accessible_name("Message @bob")
    expect(message_box(alice)).to_have_attribute("placeholder", "Write to @bob")
    expect(message_box(alice)).to_be_focused()
    say(alice, "just between us")
    expect(dm_said(alice, "bob", "just between us")).to_have_count(1)

    # bob's page opens it by itself, says so, and has the message.
    expect(log(bob, "lobby")).to_contain_text("alice started a private conversation with you")
    expect(conversation_button(bob, "alice")).to_have_accessible_name(
        re.compile(r"^@alice, private room")
    )
    expect(conversation_button(bob, "alice").get_by_title("private room")).to_be_visible()
    conversation_button(bob, "alice").click()
    expect(bob.get_by_role("heading", name="@alice")).to_be_visible()
    expect(dm_said(bob, "alice", "just between us")).to_have_count(1)
    expect(dm_said(bob, "alice", "just between us")).to_be_visible()
    say(bob, "agreed, quietly")
    expect(dm_said(alice, "bob", "agreed, quietly")).to_have_count(1)
    # Not in the lobby of anyone.
    expect(said(alice, "lobby", "just between us")).to_have_count(0)
    expect(said(bob, "lobby", "agreed, quietly")).to_have_count(0)

    # The guest never sees any of it (what is said after it in the lobby, yes).
    room_button(alice, "lobby").click()
    say(alice, "back in the lobby")
    expect(said(guest, "lobby", "back in the lobby")).to_have_count(1)
    assert guest.get_by_text("just between us").count() == 0
    assert guest.get_by_text("agreed, quietly").count() == 0
    expect(conversation_button(guest, "alice")).to_have_count(0)
    expect(conversation_button(guest, "bob")).to_have_count(0)

    # Clicking bob again shows the same conversation, not a second one.
    member_actions(alice, "bob").get_by_role("button", name="Message bob privately").click()
    expect(alice.get_by_role("heading", name="@bob")).to_be_visible()
    expect(conversation_button(alice, "bob")).to_have_count(1)


def test_an_admin_deletes_messages_kicks_and_mutes(auth_server: Twistd, pages: Pages) -> None:
    server = auth_server
    alice = pages.open(f"{server.url}#token={sign('u1', 'alice', admin=True)}")
    signed_in(alice, "alice")
    bob = pages.open(f"{server.url}#token={sign('u2', 'bob')}")
    signed_in(bob, "bob")
    guest = pages.open(server.url)
    enter_chat(guest, "mallory")

    say(bob, "a message to be deleted")
    say(bob, "a message that stays")
    for page in (alice, guest):
        expect(said(page, "lobby", "a message that stays")).to_have_count(1)
    # Only an admin gets Delete buttons.
    expect(
        log(bob, "lobby").get_by_role("button", name=re.compile("^Delete message"))
    ).to_have_count(0)
    expect(
        log(guest, "lobby").get_by_role("button", name=re.compile("^Delete message"))
    ).to_have_count(0)
    doomed = log(alice, "lobby").locator(".msg").filter(has_text="a message to be deleted")
    doomed.get_by_role("button", name="Delete message from bob").click()
    expect(log(alice, "lobby")).to_contain_text("Done: the message was deleted.")
    for page in (alice, bob, guest):
        expect(said(page, "lobby", "a message to be deleted")).to_have_count(0)
        expect(said(page, "lobby", "a message that stays")).to_have_count(1)

    # Muting bob: his messages are refused, with the reason.
    actions = member_actions(alice, "bob")
    actions.get_by_label("Reason (optional)").fill("cool down")
    actions.get_by_role("button", name="Mute bob in #lobby for 10 minutes").click()
    expect(alice.get_by_role("group", name="Actions for bob")).to_have_count(0)
    expect(log(alice, "lobby")).to_contain_text(
        re.compile(r"Done: bob is muted in #lobby until \d")
    )
    box = message_box(bob)
    box.fill("can I still talk?")
    box.press("Enter")
    expect(bob.get_by_role("alert")).to_contain_text("You are muted")
    expect(box).to_have_value("can I still talk?")  # not lost
    expect(said(alice, "lobby", "can I still talk?")).to_have_count(0)

    # Kicking the guest: disconnected, told why, and not coming back by itself.
    actions = member_actions(alice, "mallory")
    actions.get_by_label("Reason (optional)").fill("spamming")
    actions.get_by_role("button", name="Kick mallory").click()
    expect(log(alice, "lobby")).to_contain_text("Done: mallory was disconnected.")
    expect(member(alice, "mallory")).to_have_count(0)
    status = guest.get_by_role("status")
    expect(status).to_contain_text("Disconnected")
    expect(status).to_contain_text("kicked by")
    expect(status).to_contain_text("spamming")
    expect(guest.get_by_role("alert")).to_contain_text("You were disconnected: kicked by")
    reconnect = guest.get_by_role("button", name="Reconnect")
    expect(reconnect).to_be_visible()
    guest.wait_for_timeout(2500)  # longer than the first retry would wait
    expect(status).to_contain_text("Disconnected")
    expect(member(alice, "mallory")).to_have_count(0)
    # Guests have no moderator actions; neither do identified users who are not admins.
    expect(bob.get_by_role("button", name=re.compile("^Kick"))).to_have_count(0)
    member_actions(bob, "alice")
    expect(bob.get_by_role("button", name=re.compile("^(Kick|Ban|Mute)"))).to_have_count(0)


def test_a_token_is_renewed_from_the_refresh_url_before_it_expires(
    start_server: Callable[..., Twistd], pages: Pages
) -> None:
    port = free_port()
    refresh_url = f"http://127.0.0.1:{port}/auth/refresh"
    server = start_server(
        "--auth", "optional", "--auth-secret", SECRET, "--auth-leeway", "1",
        "--auth-refresh-url", refresh_url, port=port,
    )  # fmt: skip
    # Renewed at 80% of a short life (a minute before a long one's end).
    expires = int(time.time()) + 8
    short = sign("u1", "alice", exp=expires)
    fresh = sign("u1", "alice", ttl=600)
    asked: list[dict[str, str]] = []

    def refresh(route: Route) -> None:
        asked.append(route.request.headers)
        route.fulfill(
            status=200, content_type="application/json", body=json.dumps({"token": fresh})
        )

    def before(page: Page) -> None:
        page.context.add_cookies([{"name": "session", "value": "s1", "url": server.url}])
        page.route(refresh_url, refresh)

    page = pages.open(f"{server.url}#token={short}", before=before)
    signed_in(page, "alice")
    # The server would close at exp + 1 s without a fresh token: it is renewed before.
    expect(page.get_by_role("status")).to_have_text("Connected")
    page.wait_for_timeout(max(0.0, expires + 2.5 - time.time()) * 1000)
    assert len(asked) == 1
    assert "session=s1" in asked[0].get("cookie", "")
    expect(page.get_by_role("status")).to_have_text("Connected")
    say(page, "still signed in")
    expect(said(page, "lobby", "still signed in")).to_have_count(1)
    # This tab keeps the fresh one for a reload.
    assert page.evaluate("sessionStorage.getItem('chatservice.token')") == fresh
    text = server_log(server)
    assert short not in text
    assert fresh not in text


def test_refresh_timing_and_a_conversation_someone_else_opened(
    server: Twistd, pages: Pages
) -> None:
    """ChatClient (client.js) alone: when it renews a token; what it sends for a DM."""
    page = pages.open(server.url)
    result = page.evaluate(
        """async () => {
            const { ChatClient, refreshDelay } = await import("/client.js");
            const delays = [3600e3, 300e3, 100e3, 10e3, 0].map(refreshDelay);
            const sent = [];
            const client = new ChatClient({}, { url: "ws://127.0.0.1:9/none" });
            client._send = (type, payload) => { sent.push({ type, payload }); return true; };
            const feed = (type, payload) => client._receive(JSON.stringify({ type, payload }));
            client.username = "bob";
            // bob is written to: he joins the conversation too, once.
            feed("chat-direct", { room: "dm.abc", with: "alice" });
            feed("chat-direct", { room: "dm.abc", with: "alice" });
            const hi = { id: 7, room: "dm.abc", username: "alice", message: "hi" };
            feed("chat-history", { room: "dm.abc", messages: [hi] });
            // After a reconnect he rejoins it with `since`, like a room.
            client._joinAll();
            // A refused private room is remembered as private.
            client.join("staff-x");
            feed("chat-error", { code: "forbidden", reason: "private room", type: "chat-join" });
            clearInterval(client.typingTimer);
            const has = client.rooms.has("staff-x");
            return { delays, sent, private: client.isPrivate("staff-x"), has };
        }"""
    )
    assert result["delays"] == [3540e3, 240e3, 80e3, 8e3, 0]
    assert result["sent"] == [
        {"type": "chat-join", "payload": {"username": "bob", "with": "alice"}},
        {"type": "chat-join", "payload": {"username": "bob", "with": "alice", "since": 7}},
        {"type": "chat-join", "payload": {"username": "bob", "room": "staff-x"}},
    ]
    assert result["private"] is True
    assert result["has"] is False


def test_signed_in_pages_come_back_after_a_restart_with_their_conversations(
    auth_server: Twistd, pages: Pages
) -> None:
    server = auth_server
    alice = pages.open(f"{server.url}#token={sign('u1', 'alice')}")
    signed_in(alice, "alice")
    bob = pages.open(f"{server.url}#token={sign('u2', 'bob')}")
    signed_in(bob, "bob")
    member_actions(alice, "bob").get_by_role("button", name="Message bob privately").click()
    say(alice, "before the restart")
    expect(conversation_button(bob, "alice")).to_be_visible()
    conversation_button(bob, "alice").click()
    expect(dm_said(bob, "alice", "before the restart")).to_be_visible()

    server.stop()
    for page in (alice, bob):
        expect(page.get_by_role("status")).to_contain_text("Disconnected")
    # alice comes back first: bob is not there yet when she asks for their conversation.
    bob.context.set_offline(True)
    try:
        server.start()
        expect(alice.get_by_role("status")).to_have_text("Connected", timeout=20_000)
        expect(alice.get_by_role("heading", name="@bob")).to_be_visible()
        alice.wait_for_timeout(500)
    finally:
        bob.context.set_offline(False)
    expect(bob.get_by_role("status")).to_have_text("Connected", timeout=20_000)
    # Signed in again (the token is sent again), back in the conversation with `since`.
    for page, other in ((alice, "bob"), (bob, "alice")):
        expect(dm_log(page, other)).to_contain_text("Reconnected: nothing new while you were away.")
        expect(
            page.get_by_role("banner").get_by_role("img", name="identified user")
        ).to_be_visible()
        expect(page.get_by_role("heading", name=f"@{other}")).to_be_visible()
    say(alice, "after the restart")
    say(bob, "still here")
    for page, other in ((alice, "bob"), (bob, "alice")):
        expect(dm_log(page, other).locator(".msg .text")).to_have_text(
            ["before the restart", "after the restart", "still here"]
        )
        expect(conversation_button(page, other)).to_have_count(1)


def test_a_chat_that_requires_sign_in_tells_a_guest_so(
    start_server: Callable[..., Twistd], pages: Pages
) -> None:
    server = start_server("--auth", "required", "--auth-secret", SECRET, "--auth-timeout", "30")
    guest = pages.open(server.url)
    expect(guest.get_by_role("status")).to_have_text("Connected")
    guest.get_by_label("Your name", exact=True).fill("visitor")
    guest.get_by_role("button", name="Join the chat").click()
    expect(guest.get_by_role("alert")).to_contain_text("This chat needs you to sign in")
    expect(guest.get_by_role("heading", name="#lobby")).to_be_hidden()
    # With a sign-in link, in.
    alice = pages.open(f"{server.url}#token={sign('u1', 'alice')}")
    signed_in(alice, "alice")
    say(alice, "members only")
    expect(said(alice, "lobby", "members only")).to_have_count(1)


def test_a_message_posted_in_the_web_client_reaches_the_operators_receiver_at_once(
    start_server: Callable[..., Twistd], pages: Pages, tmp_path: Path
) -> None:
    """The README's path for a newcomer: etc/webhooks/receiver.py hears what is said."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    port = free_port()
    printed = tmp_path / "receiver.out"
    receiver = Path(__file__).resolve().parent.parent / "etc" / "webhooks" / "receiver.py"
    with printed.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(receiver), str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "CHATSERVICE_WEBHOOK_SECRET": secret},
        )
    try:
        server = start_server("--webhook", f"http://127.0.0.1:{port}/", "--webhook-secret", secret)
        page = pages.open(server.url)
        enter_chat(page, "newcomer")
        said_at = time.monotonic()
        say(page, "hello, application")
        heard_at = None
        while time.monotonic() - said_at < 5:
            lines = printed.read_text().splitlines()
            created = [
                json.loads(line.split(" ", 1)[1])
                for line in lines
                if line.startswith("message.created ")
            ]
            if created:
                heard_at = time.monotonic()
                break
            time.sleep(0.01)
        assert heard_at is not None, printed.read_text()
        assert heard_at - said_at < 1.0
        assert created[0]["username"] == "newcomer"
        assert created[0]["message"] == "hello, application"
        assert created[0]["room"] == "lobby"
        assert any(line.startswith("room.entered ") for line in printed.read_text().splitlines())
    finally:
        process.terminate()
        process.wait(10)
