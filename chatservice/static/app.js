// The chat page: renders what ChatClient (client.js) reports and turns the user's
// input into its commands. Every user-supplied string goes into the DOM as text
// (textContent / text nodes), never as HTML.
import { ChatClient, LOBBY } from "./client.js";

const $ = (id) => document.getElementById(id);
const ROOM_NAME = /^[A-Za-z0-9._-]{1,64}$/;
const TYPING_EVERY_MS = 2500;

const ERROR_TITLES = {
  "username-taken": "That name is taken",
  "bad-username": "That name can't be used",
  "bad-room": "That room name can't be used",
  "too-long": "Message too long",
  "rate-limited": "You are sending too fast",
  "not-joined": "You are not in that room",
  "server-error": "The server could not keep up",
  unavailable: "The chat cannot reach its storage; try again in a moment",
};

let current = null; // the room shown
let pendingShow = null; // a room the user just asked to join: show it once joined
const views = new Map(); // room -> {log, list, button, unread}
let lastTypingSent = 0;
let lastSent = null; // {room, text}: put back in the box if the server refuses it
let maxLength = 2000;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function localTime(iso) {
  const date = iso ? new Date(iso) : new Date();
  const valid = !Number.isNaN(date.getTime());
  const text = valid ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
  const time = el("time", "when", text);
  if (valid) {
    time.dateTime = date.toISOString();
    time.title = date.toLocaleString();
  }
  return time;
}

// Rooms and their message logs.

function viewOf(room) {
  let view = views.get(room);
  if (view) return view;
  const log = el("section", "log");
  log.setAttribute("role", "log");
  log.setAttribute("aria-live", "polite");
  log.setAttribute("aria-label", `Messages in #${room}`);
  log.tabIndex = 0; // scrollable by keyboard
  log.hidden = true;
  const list = el("ol", "messages");
  log.append(list);
  $("logs").append(log);

  const item = el("li");
  const button = el("button", "room");
  button.type = "button";
  const name = el("span", "room-name", `#${room}`);
  const badge = el("span", "badge");
  badge.hidden = true;
  button.append(name, badge);
  button.addEventListener("click", () => show(room, { focus: true }));
  item.append(button);
  $("room-list").append(item);

  view = { log, list, item, button, badge, unread: 0 };
  views.set(room, view);
  return view;
}

function show(room, { focus = false } = {}) {
  if (!views.has(room)) return;
  current = room;
  for (const [name, view] of views) {
    const here = name === room;
    view.log.hidden = !here;
    if (here) view.button.setAttribute("aria-current", "true");
    else view.button.removeAttribute("aria-current");
  }
  const view = views.get(room);
  view.unread = 0;
  renderBadge(room);
  $("room-title").textContent = `#${room}`;
  $("message-label").textContent = `Message #${room}`;
  $("empty").hidden = true;
  $("leave").hidden = false;
  $("composer").hidden = false;
  renderUsers(room);
  renderTyping(room, [...(client.rooms.get(room)?.typing.keys() ?? [])]);
  scrollToEnd(view, true);
  updateComposer();
  if (focus) $("message-input").focus();
}

function renderBadge(room) {
  const view = views.get(room);
  view.badge.hidden = view.unread === 0;
  view.badge.textContent = view.unread > 99 ? "99+" : String(view.unread);
  view.button.setAttribute(
    "aria-label",
    view.unread ? `#${room}, ${view.unread} unread` : `#${room}`,
  );
}

function nearEnd(view) {
  const log = view.log;
  return log.scrollHeight - log.scrollTop - log.clientHeight < 80;
}

function scrollToEnd(view, force = false) {
  if (force || nearEnd(view)) view.log.scrollTop = view.log.scrollHeight;
}

function append(room, node, { count = false } = {}) {
  const view = viewOf(room);
  const stick = nearEnd(view);
  view.list.append(node);
  if (stick) view.log.scrollTop = view.log.scrollHeight;
  if (count && room !== current) {
    view.unread += 1;
    renderBadge(room);
  }
}

function messageItem(message) {
  const mine = message.username === client.username;
  const item = el("li", mine ? "msg own" : "msg");
  item.dataset.id = String(message.id);
  const head = el("p", "meta");
  const author = el("span", "author", message.username);
  head.append(author);
  if (mine) head.append(el("span", "you", " (you)"));
  head.append(" ", localTime(message.time));
  const text = el("p", "text", message.message);
  item.append(head, text);
  return item;
}

function systemLine(room, text, kind = "event", time = undefined) {
  const item = el("li", `sys ${kind}`);
  item.append(localTime(time), " ", el("span", "", text));
  append(room, item);
}

// Members and typing.

// A large room (over the server's --large-room) shows its count, and its names
// only when asked: a page at a time, as the server sends them.
const membersShown = new Set(); // large rooms whose member list was asked for

function renderUsers(room) {
  if (room !== current) return;
  const state = client.rooms.get(room);
  const users = state?.users ?? [];
  const count = state?.count || users.length;
  const large = state?.large ?? false;
  const shown = !large || membersShown.has(room);
  $("members-title").textContent = large
    ? `${count} ${count === 1 ? "person" : "people"} here`
    : `In this room (${users.length})`;
  const list = $("member-list");
  list.hidden = !shown;
  list.replaceChildren(
    ...(shown ? users : []).map((name) => {
      const item = el("li", name === client.username ? "member own" : "member", name);
      if (name === client.username) item.append(el("span", "you", " (you)"));
      return item;
    }),
  );
  const toggle = $("members-toggle");
  toggle.hidden = !large;
  toggle.textContent = shown ? "Hide list" : "Show who is here";
  toggle.setAttribute("aria-expanded", String(shown));
  $("members-more").hidden = !(large && shown && state && !state.complete);
}

$("members-toggle").addEventListener("click", () => {
  if (current === null) return;
  if (membersShown.has(current)) membersShown.delete(current);
  else {
    membersShown.add(current);
    const state = client.rooms.get(current);
    // What we have may be stale: the list again from the start.
    if (state && !state.complete && !state.next) client.moreUsers(current);
  }
  renderUsers(current);
});

$("members-more").addEventListener("click", () => {
  if (current !== null) client.moreUsers(current);
});

function renderTyping(room, names) {
  if (room !== current) return;
  let text = "";
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else if (names.length > 2) text = "Several people are typing…";
  $("typing").textContent = text;
}

// Status, errors, composer.

let countdown = null;

function renderStatus(state, { reason = "", retryAt = null } = {}) {
  clearInterval(countdown);
  const status = $("status");
  status.dataset.state = state;
  $("retry").hidden = state !== "offline";
  const text = $("status-text");
  if (state === "online") text.textContent = "Connected";
  else if (state === "connecting") {
    text.textContent = client.connected ? "Reconnecting…" : "Connecting…";
  } else {
    const tick = () => {
      const seconds = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
      const why = reason ? ` (${reason})` : "";
      text.textContent = `Disconnected${why}. Retrying in ${seconds} s…`;
    };
    tick();
    countdown = setInterval(tick, 1000);
  }
  updateComposer();
}

function showAlert(text) {
  $("alert-text").textContent = text;
  $("alert").hidden = false;
}

function hideAlert() {
  $("alert").hidden = true;
  $("alert-text").textContent = "";
}

function errorText(p) {
  const reason = p.reason ? `${p.reason[0].toUpperCase()}${p.reason.slice(1)}` : "";
  // The server's reason says it well enough for a name that is taken ('bob' is taken).
  if (p.code === "username-taken" && reason) return `${reason}.`;
  const title = ERROR_TITLES[p.code] ?? "The server refused that";
  return reason ? `${title}: ${p.reason}.` : `${title}.`;
}

function updateComposer() {
  const input = $("message-input");
  const joined = current !== null && client.rooms.get(current)?.joined;
  const ready = client.online && joined;
  $("send").disabled = !ready;
  input.placeholder = ready
    ? `Write to #${current}`
    : client.online
      ? "Joining…"
      : "Offline: you can send again once reconnected";
  $("leave").disabled = current === null;
  for (const form of [$("join-form")]) {
    for (const control of form.elements) control.disabled = !client.online;
  }
  updateCounter();
}

function updateCounter() {
  const length = [...$("message-input").value].length;
  const counter = $("counter");
  counter.textContent = `${length} / ${maxLength}`;
  counter.classList.toggle("over", length > maxLength);
  counter.setAttribute("aria-label", `${length} of at most ${maxLength} characters`);
}

// The client and what it reports.

const client = new ChatClient({
  status: renderStatus,

  welcome(p) {
    const limits = p.limits ?? {};
    if (limits.max_text_length) {
      maxLength = limits.max_text_length;
      $("message-input").maxLength = maxLength;
    }
    if (limits.max_username_length) {
      for (const id of ["name-input", "rename-input"]) $(id).maxLength = limits.max_username_length;
    }
    if (limits.max_room_length) $("room-input").maxLength = limits.max_room_length;
    if (p.motd) {
      $("motd").textContent = p.motd;
      $("motd").hidden = false;
    }
    updateComposer();
  },

  named(username) {
    $("my-name").textContent = username;
    $("me").hidden = false;
    $("name-error").textContent = "";
    if (!$("welcome").hidden) {
      $("welcome").hidden = true;
      $("app").hidden = false;
      try {
        localStorage.setItem("chatservice.name", username);
      } catch {
        // Storage may be off; the name is only a convenience.
      }
    }
  },

  joined(room) {
    viewOf(room);
    if (current === null || pendingShow === room) show(room, { focus: true });
    if (pendingShow === room) pendingShow = null;
  },

  history(room, messages, { recovered, rejoin, reset }) {
    if (rejoin) {
      const n = messages.length;
      const missed = n === 0 ? "nothing new" : n === 1 ? "1 new message" : `${n} new messages`;
      systemLine(room, `Reconnected: ${missed} while you were away.`, "notice");
      if (reset) {
        const gone = "The server was restarted without its history: older messages are gone.";
        systemLine(room, gone, "warning");
      } else if (!recovered) {
        systemLine(
          room,
          "Some messages sent while you were away could not be recovered; the latest ones are shown.",
          "warning",
        );
      }
    }
    for (const message of messages) append(room, messageItem(message), { count: rejoin });
    if (!rejoin) {
      const others = room === LOBBY ? "Say hello!" : "Anything you write here goes to everyone in it.";
      systemLine(room, `You joined #${room}. ${others}`, "event");
    }
    if (room === current) updateComposer();
  },

  message(room, message) {
    append(room, messageItem(message), { count: true });
    if (message.username === client.username && lastSent?.text === message.message) lastSent = null;
  },

  users: (room) => renderUsers(room),

  presence(kind, p) {
    const verb = kind === "join" ? "joined" : "left";
    systemLine(p.room, `${p.username} ${verb} #${p.room}.`, "event", p.time);
  },

  typing: renderTyping,

  left(room) {
    const view = views.get(room);
    if (!view) return;
    view.log.remove();
    view.item.remove();
    views.delete(room);
    if (current === room) {
      current = null;
      const next = views.keys().next();
      if (!next.done) show(next.value, { focus: false });
      else {
        $("room-title").textContent = "No room";
        $("empty").hidden = false;
        $("leave").hidden = true;
        $("composer").hidden = true;
        $("typing").textContent = "";
        $("members-title").textContent = "In this room";
        $("member-list").replaceChildren();
        $("members-toggle").hidden = true;
        $("members-more").hidden = true;
        $("room-input").focus();
      }
    }
  },

  renamed(old, name, { mine, rooms }) {
    if (mine) {
      $("my-name").textContent = name;
      $("rename-dialog").close();
      try {
        localStorage.setItem("chatservice.name", name);
      } catch {
        // ignored, as above
      }
    }
    const text = mine ? `You are now known as ${name}.` : `${old} is now known as ${name}.`;
    for (const room of rooms) if (views.has(room)) systemLine(room, text, "event");
    if (mine && rooms.length === 0 && current !== null) systemLine(current, text, "event");
    if (current !== null) renderUsers(current);
  },

  notice(p) {
    const room = current ?? [...views.keys()][0];
    if (room) systemLine(room, `Notice from the server: ${p.message}`, "notice", p.time);
    else showAlert(`Notice from the server: ${p.message}`);
  },

  error(p) {
    const text = errorText(p);
    if (p.naming) {
      $("welcome").hidden = false;
      $("app").hidden = true;
      $("name-error").textContent = `${text} Please choose another name.`;
      $("name-input").setAttribute("aria-invalid", "true");
      $("name-input").focus();
      $("name-input").select();
      return;
    }
    if (p.type === "chat-nick" && $("rename-dialog").open) {
      $("rename-error").textContent = text;
      $("rename-input").focus();
      return;
    }
    if (p.type === "chat-join" && p.code === "bad-room") {
      $("join-error").textContent = text;
      $("room-input").focus();
      return;
    }
    if (p.type === "chat-message" && lastSent && $("message-input").value === "") {
      $("message-input").value = lastSent.text; // not lost: fix it and send again
      updateCounter();
    }
    showAlert(text);
  },
});

// The user's input.

$("name-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const name = $("name-input").value.trim();
  if (!name) {
    $("name-error").textContent = "Please type a name first.";
    $("name-input").focus();
    return;
  }
  $("name-input").removeAttribute("aria-invalid");
  $("name-error").textContent = client.online
    ? ""
    : "Not connected yet: you will join as soon as the connection is up.";
  client.start(name); // joins now, or as soon as connected
});

$("join-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const room = $("room-input").value.trim().replace(/^#/, "");
  if (!ROOM_NAME.test(room)) {
    $("join-error").textContent =
      "Room names are 1 to 64 letters, digits, dots, dashes or underscores.";
    $("room-input").focus();
    return;
  }
  $("join-error").textContent = "";
  $("room-input").value = "";
  if (views.has(room)) show(room, { focus: true });
  else {
    pendingShow = room; // shown as soon as it is joined
    client.join(room);
  }
});

$("leave").addEventListener("click", () => {
  if (current !== null) client.leave(current);
});

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("message-input");
  const text = input.value.trim();
  if (!text || current === null) return;
  if ([...text].length > maxLength) {
    showAlert(`Message too long: at most ${maxLength} characters.`);
    return;
  }
  if (client.say(current, text)) {
    lastSent = { room: current, text };
    input.value = "";
    hideAlert();
    updateCounter();
  } else {
    showAlert("Not connected: your message was not sent. It is still in the box.");
  }
});

$("message-input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});

$("message-input").addEventListener("input", () => {
  updateCounter();
  const now = Date.now();
  if (current !== null && $("message-input").value && now - lastTypingSent > TYPING_EVERY_MS) {
    lastTypingSent = now;
    client.typing(current);
  }
});

$("alert-close").addEventListener("click", () => {
  hideAlert();
  $("message-input").focus();
});

$("retry").addEventListener("click", () => client.retryNow());

$("rename").addEventListener("click", () => {
  $("rename-input").value = client.username ?? "";
  $("rename-error").textContent = "";
  $("rename-dialog").showModal();
  $("rename-input").select();
});

$("rename-cancel").addEventListener("click", () => $("rename-dialog").close());

$("rename-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const name = $("rename-input").value.trim();
  if (!name) {
    $("rename-error").textContent = "Please type a name.";
    return;
  }
  if (name === client.username) {
    $("rename-dialog").close();
    return;
  }
  if (!client.rename(name)) $("rename-error").textContent = "Not connected; try again in a moment.";
});

$("rename-dialog").addEventListener("close", () => $("message-input").focus());

// Keyboard: Alt+ArrowUp / Alt+ArrowDown switch rooms from anywhere.
document.addEventListener("keydown", (event) => {
  if (!event.altKey || (event.key !== "ArrowUp" && event.key !== "ArrowDown")) return;
  const rooms = [...views.keys()];
  if (rooms.length < 2) return;
  event.preventDefault();
  const step = event.key === "ArrowUp" ? -1 : 1;
  const index = (rooms.indexOf(current) + step + rooms.length) % rooms.length;
  show(rooms[index], { focus: true });
});

try {
  $("name-input").value = localStorage.getItem("chatservice.name") ?? "";
} catch {
  // no storage: start empty
}
$("name-input").focus();
updateCounter();
client.connect();
window.addEventListener("online", () => client.retryNow());
