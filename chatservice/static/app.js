// The chat page: renders what ChatClient (client.js) reports and turns the user's
// input into its commands. Every user-supplied string goes into the DOM as text
// (textContent / text nodes), never as HTML.
//
// A sign-in link (`/#token=...`) makes the page an identified user's: the token is
// taken out of the address bar at once and kept in this tab's sessionStorage only
// (a reload keeps it; another tab or a new session does not), and never put in a URL.
import { ChatClient, LOBBY } from "./client.js";

const $ = (id) => document.getElementById(id);
const ROOM_NAME = /^[A-Za-z0-9._-]{1,64}$/;
const TYPING_EVERY_MS = 2500;
const TOKEN_KEY = "chatservice.token";
const BAN_SECONDS = 3600; // "Ban from room": an hour
const MUTE_SECONDS = 600; // "Mute": ten minutes

const ERROR_TITLES = {
  "username-taken": "That name is taken",
  "bad-username": "That name can't be used",
  "bad-room": "That room name can't be used",
  "too-long": "Message too long",
  "rate-limited": "You are sending too fast",
  "not-joined": "You are not in that room",
  "server-error": "The server could not keep up",
  unavailable: "The chat cannot reach its storage; try again in a moment",
  forbidden: "Not allowed",
  "no-such-user": "No such user",
  muted: "You are muted",
  "name-fixed": "Your name comes from your sign-in and can't be changed",
  "already-guest": "You already joined as a guest",
  "auth-required": "This chat needs you to sign in",
  "auth-off": "Sign-in is not used here",
  "token-expired": "Your sign-in has expired",
  "token-not-yet-valid": "Your sign-in is not valid yet",
  "token-invalid": "Your sign-in is not valid",
  "token-claims": "Your sign-in is not valid",
  "token-wrong-audience": "Your sign-in is for another service",
  "token-wrong-issuer": "Your sign-in comes from an issuer this chat does not trust",
  "token-other-user": "That sign-in is for another user",
  "token-refresh": "Your sign-in could not be renewed",
};

/**
 * The token of a sign-in link (`#token=...`), taken out of the address bar at once
 * (path and query stay); or the one this tab had before a reload.
 */
function takeToken() {
  let token = null;
  const fragment = window.location.hash.replace(/^#/, "");
  const parts = fragment ? fragment.split("&") : [];
  const found = parts.find((part) => part.startsWith("token="));
  if (found !== undefined) {
    try {
      token = decodeURIComponent(found.slice("token=".length)) || null;
    } catch {
      token = null;
    }
    const rest = parts.filter((part) => !part.startsWith("token=")).join("&");
    const { pathname, search } = window.location;
    const clean = `${pathname}${search}${rest ? `#${rest}` : ""}`;
    window.history.replaceState(window.history.state, "", clean);
  }
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else token = sessionStorage.getItem(TOKEN_KEY);
  } catch {
    // No storage: the token lives in memory only (a reload forgets it).
  }
  return token;
}

function keepToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // ignored: memory only
  }
}

const startToken = takeToken();

let current = null; // the room shown
let pendingShow = null; // a room the user just asked to join: show it once joined
const views = new Map(); // room -> {log, list, button, unread}
let lastTypingSent = 0;
let lastSent = null; // {room, text}: put back in the box if the server refuses it
let maxLength = 2000;
let openMember = null; // "room\nname": the member whose actions are shown
let moderationReason = ""; // typed in the open member's "Reason" box

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** How a room is named to people: "#dev", or "@bob" for a direct conversation. */
function roomLabel(room) {
  const other = client.rooms.get(room)?.direct;
  return other ? `@${other}` : `#${room}`;
}

/** ✓ next to a name the server vouches for (a signed identity). */
function identifiedMark() {
  const mark = el("span", "verified", "✓");
  mark.setAttribute("role", "img");
  mark.setAttribute("aria-label", "identified user");
  mark.title = "identified user";
  return mark;
}

function lockMark() {
  const mark = el("span", "lock", "🔒");
  mark.setAttribute("role", "img");
  mark.setAttribute("aria-label", "private room");
  mark.title = "private room";
  return mark;
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
  const other = client.rooms.get(room)?.direct;
  log.setAttribute("aria-label", other ? `Messages with @${other}` : `Messages in #${room}`);
  log.tabIndex = 0; // scrollable by keyboard
  log.hidden = true;
  const list = el("ol", "messages");
  log.append(list);
  $("logs").append(log);

  const item = el("li");
  const button = el("button", "room");
  button.type = "button";
  const name = el("span", "room-name", roomLabel(room));
  const lock = lockMark();
  lock.hidden = true;
  const badge = el("span", "badge");
  badge.hidden = true;
  button.append(name, lock, badge);
  button.addEventListener("click", () => show(room, { focus: true }));
  item.append(button);
  $("room-list").append(item);

  view = { log, list, item, button, name, lock, badge, unread: 0 };
  views.set(room, view);
  renderBadge(room);
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
  const lock = client.isPrivate(room) ? [" ", lockMark()] : [];
  $("room-title").replaceChildren(roomLabel(room), ...lock);
  $("message-label").textContent = `Message ${roomLabel(room)}`;
  $("empty").hidden = true;
  $("leave").hidden = false;
  $("leave").textContent = client.rooms.get(room)?.direct ? "Leave conversation" : "Leave room";
  $("composer").hidden = false;
  renderUsers(room);
  renderTyping(room, [...(client.rooms.get(room)?.typing.keys() ?? [])]);
  scrollToEnd(view, true);
  updateComposer();
  if (focus) $("message-input").focus();
}

function renderBadge(room) {
  const view = views.get(room);
  const label = roomLabel(room);
  const locked = client.isPrivate(room);
  view.name.textContent = label;
  view.lock.hidden = !locked;
  view.badge.hidden = view.unread === 0;
  view.badge.textContent = view.unread > 99 ? "99+" : String(view.unread);
  const parts = [label];
  if (locked) parts.push("private room");
  if (view.unread) parts.push(`${view.unread} unread`);
  view.button.setAttribute("aria-label", parts.join(", "));
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

function messageItem(room, message) {
  const mine = message.username === client.username;
  const item = el("li", mine ? "msg own" : "msg");
  item.dataset.id = String(message.id);
  const head = el("p", "meta");
  const author = el("span", "author", message.username);
  head.append(author);
  if (message.user) head.append(identifiedMark());
  if (mine) head.append(el("span", "you", " (you)"));
  head.append(" ", localTime(message.time));
  if (client.admin && typeof message.id === "number") {
    const remove = el("button", "delete link", "Delete");
    remove.type = "button";
    remove.setAttribute("aria-label", `Delete message from ${message.username}`);
    remove.addEventListener("click", () => {
      if (!client.deleteMessage(room, message.id)) {
        showAlert("Not connected: the message was not deleted.");
      }
    });
    head.append(" ", remove);
  }
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
  // The list is drawn again on every change: keep the focus where it was.
  const active = document.activeElement;
  const focused = list.contains(active) ? active.dataset.focus : undefined;
  list.replaceChildren(...(shown ? users : []).map((name) => memberItem(room, state, name)));
  if (focused) {
    const nodes = [...list.querySelectorAll("[data-focus]")];
    const again = nodes.find((node) => node.dataset.focus === focused);
    again?.focus();
  }
  const toggle = $("members-toggle");
  toggle.hidden = !large;
  toggle.textContent = shown ? "Hide list" : "Show who is here";
  toggle.setAttribute("aria-expanded", String(shown));
  $("members-more").hidden = !(large && shown && state && !state.complete);
}

/**
 * A member: their name (✓ when identified); a button opening what you can do with
 * them (write privately; as a moderator: kick, ban, mute) when there is anything.
 */
function memberItem(room, state, name) {
  const mine = name === client.username;
  const identified = state?.identified.has(name) ?? false;
  const direct = Boolean(state?.direct);
  const canWrite = !mine && !direct && identified && client.identity !== null;
  const canModerate = !mine && client.admin;
  const item = el("li", mine ? "member own" : "member");
  const key = `${room}\n${name}`;
  const open = openMember === key;
  if (canWrite || canModerate) {
    const button = el("button", "member-name link", name);
    button.type = "button";
    button.dataset.focus = `member\n${name}`;
    button.setAttribute("aria-expanded", String(open));
    button.addEventListener("click", () => {
      openMember = openMember === key ? null : key;
      moderationReason = "";
      renderUsers(room);
    });
    item.append(button);
  } else item.append(name);
  if (identified) item.append(identifiedMark());
  if (mine) item.append(el("span", "you", " (you)"));
  if (open && (canWrite || canModerate)) {
    item.append(memberActions(room, name, { canWrite, canModerate, direct }));
  }
  return item;
}

function actionButton(text, onClick, className = "") {
  const button = el("button", className, text);
  button.type = "button";
  button.dataset.focus = `action\n${text}`;
  button.addEventListener("click", onClick);
  return button;
}

/** Close the open member's actions; the focus goes back to their name (or the message box). */
function closeMemberActions(room, name) {
  openMember = null;
  moderationReason = "";
  renderUsers(room);
  const nodes = [...$("member-list").querySelectorAll("[data-focus]")];
  const back = nodes.find((node) => node.dataset.focus === `member\n${name}`);
  (back ?? $("message-input")).focus();
}

function memberActions(room, name, { canWrite, canModerate, direct }) {
  const box = el("div", "member-actions");
  box.setAttribute("role", "group");
  box.setAttribute("aria-label", `Actions for ${name}`);
  box.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") return;
    event.preventDefault();
    closeMemberActions(room, name);
  });
  const done = (sent) => {
    if (!sent) {
      showAlert("Not connected: nothing was done. Try again once reconnected.");
      return;
    }
    closeMemberActions(room, name);
  };
  if (canWrite) box.append(actionButton(`Message ${name} privately`, () => openDirect(name)));
  if (canModerate) {
    const label = el("label", "reason", `Reason (optional)`);
    const input = el("input");
    input.maxLength = 200;
    input.autocomplete = "off";
    input.value = moderationReason;
    input.dataset.focus = "reason";
    input.addEventListener("input", () => {
      moderationReason = input.value;
    });
    label.append(input);
    box.append(label);
    const reason = () => moderationReason.trim();
    box.append(actionButton(`Kick ${name}`, () => done(client.kick(name, reason())), "danger"));
    if (!direct) {
      const ban = `Ban ${name} from #${room} for 1 hour`;
      const mute = `Mute ${name} in #${room} for 10 minutes`;
      const opts = (duration) => ({ room, duration, reason: reason() });
      box.append(actionButton(ban, () => done(client.ban(name, opts(BAN_SECONDS))), "danger"));
      box.append(actionButton(mute, () => done(client.mute(name, opts(MUTE_SECONDS)))));
    }
  }
  return box;
}

/** Show the direct conversation with `name`, opening it first if need be. */
function openDirect(name) {
  openMember = null;
  if (current !== null) renderUsers(current);
  const room = client.directWith(name);
  if (room && views.has(room)) {
    show(room, { focus: true });
    return;
  }
  if (!client.openDirect(name)) showAlert("Not connected: try again once reconnected.");
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
  $("retry").textContent = state === "offline" && retryAt === null ? "Reconnect" : "Retry now";
  const text = $("status-text");
  if (state === "online") text.textContent = "Connected";
  else if (state === "connecting") {
    text.textContent = client.connected ? "Reconnecting…" : "Connecting…";
  } else if (retryAt === null) {
    // Not trying again by itself (kicked, banned, signed out): the user decides.
    text.textContent = `Disconnected${reason ? ` (${reason})` : ""}.`;
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
  const signIn = String(p.code ?? "").startsWith("token-") ? "Your sign-in was refused" : undefined;
  const title = ERROR_TITLES[p.code] ?? signIn ?? "The server refused that";
  return reason ? `${title}: ${p.reason}.` : `${title}.`;
}

/** Who you are, in the top bar: the name, ✓ when identified, "admin" for moderators. */
function renderIdentity() {
  const identity = client.identity;
  $("my-mark").hidden = !identity;
  $("my-role").hidden = !identity?.admin;
  $("rename").hidden = Boolean(identity);
}

function showSigningIn(on) {
  $("signing-in").hidden = !on;
  $("name-form").hidden = on;
  $("welcome-title").textContent = on
    ? "Welcome! Signing you in…"
    : "Welcome! Pick a name to start chatting";
}

function updateComposer() {
  const input = $("message-input");
  const joined = current !== null && client.rooms.get(current)?.joined;
  const ready = client.online && joined;
  $("send").disabled = !ready;
  input.placeholder = ready
    ? `Write to ${roomLabel(current)}`
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
    $("auth-error").textContent = "";
    renderIdentity();
    if (!$("welcome").hidden) {
      $("welcome").hidden = true;
      $("app").hidden = false;
      if (client.identity) return; // the name is the sign-in's, not one to remember
      try {
        localStorage.setItem("chatservice.name", username);
      } catch {
        // Storage may be off; the name is only a convenience.
      }
    }
  },

  authenticated(p, { first }) {
    const wasAdmin = $("my-role").hidden === false;
    renderIdentity();
    $("auth-error").textContent = "";
    if (first) showSigningIn(false);
    if (wasAdmin !== Boolean(p.admin) && current !== null) renderUsers(current);
  },

  authFailed(p, { initial }) {
    keepToken(null);
    const text = errorText(p);
    renderIdentity();
    if (initial && !$("welcome").hidden) {
      showSigningIn(false);
      const required = client.auth?.mode === "required";
      $("name-form").hidden = required;
      $("auth-error").textContent = required
        ? `${text} Open the chat from a valid sign-in link.`
        : `${text} You can still join as a guest: pick a name.`;
      if (!required) $("name-input").focus();
      return;
    }
    showAlert(`${text} Open the chat again from your sign-in link.`);
  },

  token: keepToken,

  direct(room, name, { asked, opened }) {
    if (asked) {
      if (views.has(room)) show(room, { focus: true });
      else pendingShow = room; // shown as soon as it is joined
    }
    if (views.has(room)) renderBadge(room);
    if (opened && current !== null) {
      const text = `${name} started a private conversation with you: see @${name}.`;
      systemLine(current, text, "notice");
    }
  },

  away(room, name) {
    systemLine(room, `${name} is not back yet: the conversation goes on when they are.`, "warning");
    if (room === current) updateComposer();
  },

  deleted(room, id) {
    const view = views.get(room);
    if (!view) return;
    for (const item of view.list.querySelectorAll("li.msg")) {
      if (item.dataset.id === String(id)) item.remove();
    }
  },

  moderated(p) {
    const room = p.room && views.has(p.room) ? p.room : current;
    const clock = { hour: "2-digit", minute: "2-digit" };
    const until = p.until ? ` until ${new Date(p.until).toLocaleTimeString([], clock)}` : "";
    const where = p.room ? ` ${p.action === "ban" ? "from" : "in"} ${roomLabel(p.room)}` : "";
    const what = p.action === "ban" ? "banned" : "muted";
    // `until` null: a ban or mute of 0 seconds, which lifts it.
    const sanction = p.until === null
      ? `Done: ${p.username} is no longer ${what}${where}.`
      : `Done: ${p.username} is ${what}${where}${until}.`;
    const text = {
      kick: `Done: ${p.username} was disconnected.`,
      ban: sanction,
      mute: sanction,
      delete: "Done: the message was deleted.",
    }[p.action] ?? `Done: ${p.action}.`;
    if (room) systemLine(room, text, "notice");
    else showAlert(text);
  },

  closed(reason) {
    const text = `You were disconnected: ${reason}.`;
    if ($("app").hidden) $("auth-error").textContent = text;
    else showAlert(text);
  },

  joined(room) {
    viewOf(room);
    renderBadge(room);
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
    const other = client.rooms.get(room)?.direct;
    // A conversation someone else opened: what they wrote is new to you.
    const count = rejoin || (Boolean(other) && room !== current);
    for (const message of messages) append(room, messageItem(room, message), { count });
    if (!rejoin && other) {
      const text = `A private conversation with ${other}: only the two of you are in it.`;
      systemLine(room, text, "event");
    } else if (!rejoin) {
      const others = room === LOBBY ? "Say hello!" : "Anything you write here goes to everyone in it.";
      systemLine(room, `You joined #${room}. ${others}`, "event");
    }
    if (room === current) updateComposer();
  },

  message(room, message) {
    append(room, messageItem(room, message), { count: true });
    if (message.username === client.username && lastSent?.text === message.message) lastSent = null;
  },

  users: (room) => renderUsers(room),

  presence(kind, p) {
    const verb = kind === "join" ? "joined" : "left";
    const where = client.rooms.get(p.room)?.direct ? "the conversation" : `#${p.room}`;
    systemLine(p.room, `${p.username} ${verb} ${where}.`, "event", p.time);
  },

  typing: renderTyping,

  left(room) {
    if (pendingShow === room) pendingShow = null;
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
    if (p.type === "chat-join" && p.room && p.code === "forbidden") {
      if (pendingShow === p.room) pendingShow = null;
      const why = p.reason ? `${p.reason[0].toUpperCase()}${p.reason.slice(1)}` : "";
      // The server's reason may name the room already ("#staff-x is a private room").
      const refusal = why.includes(`#${p.room}`)
        ? `${why}: you can't join it.`
        : `You can't join #${p.room}${why ? `: ${p.reason}` : ""}.`;
      $("join-error").replaceChildren(...(p.private ? [lockMark(), " "] : []), refusal);
      if (!$("app").hidden) $("room-input").focus();
      return;
    }
    if (p.naming && p.code === "auth-required") {
      $("name-error").textContent = `${text} Open the chat from a sign-in link.`;
      return;
    }
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
}, { token: startToken });

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

$("retry").addEventListener("click", () => {
  hideAlert();
  client.retryNow();
});

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
if (startToken) showSigningIn(true);
else $("name-input").focus();
updateCounter();
client.connect();
window.addEventListener("online", () => client.retryNow());
