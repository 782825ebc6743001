"""The bundled web client at ``/``, driven in Debian's headless Chromium by Playwright.

Every test runs a real ``twistd -n chatservice`` and real pages, and asserts what a
user sees: text on the page, its state, its roles and labels. Playwright's sync API
is used in plain (non-Twisted) tests; the server is a separate process.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from browser import CHROMIUM, CHROMIUM_ARGS, Twistd
from playwright.sync_api import Browser, Dialog, Locator, Page, Playwright, expect, sync_playwright
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

    def start(*args: str) -> Twistd:
        if "--database" not in args:
            args = ("--database", str(tmp_path / "chat.sqlite3"), *args)
        server = Twistd(twistd, tmp_path, *args)
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

    def open(self, url: str, **context_options: Any) -> Page:
        context = self.browser.new_context(**context_options)
        self.contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("dialog", self._dialog)
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
    return page.get_by_role("textbox", name=re.compile(r"^Message #"))


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
