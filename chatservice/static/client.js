// The /chat connection and its state, without any DOM: one ChatClient per page.
//
// It speaks the JSON dialect (chat.v1.json, docs/protocol.md) to the host that
// served the page, reconnects by itself with exponential backoff and jitter, and
// on reconnect re-joins its rooms with `since` (the last message id seen in each
// room), so nothing said meanwhile is missed. Messages are deduplicated by id per
// room, so nothing is shown twice either. The UI (app.js) only gets callbacks.

export const LOBBY = "lobby";

/** The /chat URL on the host and port this page came from, ws: or wss: to match. */
export function chatUrl(loc = window.location) {
  const scheme = loc.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${loc.host}/chat`;
}

/**
 * Delay before reconnect attempt `attempt` (0-based): exponential from `initial`,
 * capped at `max`, with +/-25% jitter so that many clients don't return at once.
 */
export function backoffDelay(attempt, { initial = 1000, max = 30000, random = Math.random } = {}) {
  const base = Math.min(max, initial * 2 ** attempt);
  return Math.round(base * (0.75 + 0.5 * random()));
}

/** Names as people sort them: "alice", "Bob", "carol". */
function sortNames(names) {
  return [...names].sort((a, b) => a.localeCompare(b, undefined, { sensitivity: "base" }));
}

class Room {
  constructor(name) {
    this.name = name;
    this.lastId = 0; // the highest message id seen here: `since` on reconnect
    this.seen = new Set(); // ids already shown: nothing twice
    this.users = []; // names known here, sorted; all of them when `complete`
    this.count = 0; // members, as the server last said
    this.complete = true; // `users` holds every member
    this.next = null; // the cursor for the next page of names, if any
    this.large = false; // over the server's --large-room: presence comes as counts
    this.typing = new Map(); // username -> time (ms) the indicator expires
    this.joined = false; // the server confirmed the join on this connection
    this.synced = false; // had its history once: later joins pass `since`
  }

  /** The messages not seen before, remembered as seen from now on. */
  fresh(messages) {
    const out = [];
    for (const message of messages) {
      if (typeof message.id !== "number" || this.seen.has(message.id)) continue;
      this.seen.add(message.id);
      if (message.id > this.lastId) this.lastId = message.id;
      out.push(message);
    }
    if (this.seen.size > 5000) {
      // Ids only grow: the oldest ones will not come again after lastId is passed.
      const keep = [...this.seen].sort((a, b) => a - b).slice(-2500);
      this.seen = new Set(keep);
    }
    return out;
  }
}

export class ChatClient {
  /**
   * @param {object} ui callbacks, all optional: status(state), welcome(payload),
   *   named(username), joined(room), history(room, messages, {recovered, rejoin, reset}),
   *   message(room, message), users(room, users, {count, complete, large}),
 *   presence(kind, payload),
   *   typing(room, names), left(room), renamed(old, new), notice(payload),
   *   error(payload)
   */
  constructor(ui, { url = chatUrl(), initialDelay = 1000, maxDelay = 30000 } = {}) {
    this.ui = ui;
    this.url = url;
    this.initialDelay = initialDelay;
    this.maxDelay = maxDelay;
    this.socket = null;
    this.attempt = 0;
    this.retryTimer = null;
    this.retryAt = null;
    this.state = "idle"; // connecting | online | offline
    this.limits = {};
    this.username = null; // the name the server accepted
    this.wanted = null; // the name asked for, not yet accepted
    this.rooms = new Map(); // name -> Room, in join order
    this.connected = false; // had at least one welcome: the next one is a reconnect
    this.typingTimer = setInterval(() => this._expireTyping(), 1000);
  }

  // Connection.

  connect() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.retryAt = null;
    if (this.socket) return;
    this._setState("connecting");
    let socket;
    try {
      socket = new WebSocket(this.url, "chat.v1.json");
    } catch (error) {
      this._scheduleRetry(`cannot connect: ${error.message}`);
      return;
    }
    this.socket = socket;
    socket.addEventListener("message", (event) => this._receive(event.data));
    socket.addEventListener("close", (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      for (const room of this.rooms.values()) {
        room.joined = false;
        room.typing.clear();
      }
      const why = event.reason ? `closed by the server: ${event.reason}` : "";
      this._scheduleRetry(why);
    });
  }

  /** Try again now instead of waiting for the backoff timer. */
  retryNow() {
    if (this.state === "offline") this.connect();
  }

  _scheduleRetry(reason) {
    const delay = backoffDelay(this.attempt, { initial: this.initialDelay, max: this.maxDelay });
    this.attempt += 1;
    this.retryAt = Date.now() + delay;
    this.retryTimer = setTimeout(() => this.connect(), delay);
    this._setState("offline", reason);
  }

  _setState(state, reason = "") {
    this.state = state;
    this.ui.status?.(state, { reason, retryAt: this.retryAt, attempt: this.attempt });
  }

  get online() {
    return this.state === "online";
  }

  _send(type, payload) {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return false;
    this.socket.send(JSON.stringify({ type, payload }));
    return true;
  }

  // Commands from the UI.

  /** Choose a name and join the lobby (or, on reconnect, every room joined before). */
  start(username) {
    this.wanted = username.trim();
    if (this.rooms.size === 0) this.rooms.set(LOBBY, new Room(LOBBY));
    this._joinAll();
  }

  _joinAll() {
    const name = this.username ?? this.wanted;
    if (!name) return;
    for (const room of this.rooms.values()) {
      const payload = { username: name, room: room.name };
      if (room.synced) payload.since = room.lastId;
      this._send("chat-join", payload);
    }
  }

  join(name) {
    if (!this.rooms.has(name)) this.rooms.set(name, new Room(name));
    return this._send("chat-join", { username: this.username, room: name });
  }

  leave(name) {
    const room = this.rooms.get(name);
    if (!room) return;
    if (!room.joined || !this._send("chat-leave", { room: name })) this._forget(name);
  }

  say(room, text) {
    return this._send("chat-message", { room, message: text });
  }

  typing(room) {
    return this._send("chat-typing", { room });
  }

  rename(username) {
    return this._send("chat-nick", { username: username.trim() });
  }

  /**
   * Ask for more of a room's member names: the next page, or the list again from
   * the start when what we have went stale (a large room's presence events carry
   * counts, not every name).
   */
  moreUsers(name) {
    const room = this.rooms.get(name);
    if (!room || room.complete) return false;
    return this._send("chat-users", room.next ? { room: name, after: room.next } : { room: name });
  }

  _forget(name) {
    this.rooms.delete(name);
    this.ui.left?.(name);
  }

  // Events from the server.

  _receive(data) {
    let event;
    try {
      event = JSON.parse(data);
    } catch {
      return;
    }
    const p = event.payload ?? {};
    const handler = {
      "chat-welcome": () => this._welcome(p),
      "chat-history": () => this._history(p),
      "chat-users": () => this._users(p),
      "chat-join": () => this._presence("join", p),
      "chat-leave": () => this._leaveEvent(p),
      "chat-presence": () => this._crowd(p),
      "chat-message": () => this._message(p),
      "chat-typing": () => this._typing(p),
      "chat-nick": () => this._nick(p),
      "chat-notice": () => this.ui.notice?.(p),
      "chat-error": () => this._error(p),
    }[event.type];
    handler?.();
  }

  _welcome(p) {
    this.limits = p.limits ?? {};
    this.attempt = 0;
    const reconnect = this.connected;
    this.connected = true;
    this._setState("online");
    this.ui.welcome?.(p, { reconnect });
    if (this.username || (this.wanted && this.rooms.size)) {
      // Our name is free again on a new connection (the old one is gone).
      this.wanted = this.username ?? this.wanted;
      this.username = null;
      this._joinAll();
    }
  }

  _history(p) {
    if (this.username === null && this.wanted !== null) {
      this.username = this.wanted;
      this.ui.named?.(this.username);
    }
    let room = this.rooms.get(p.room);
    if (!room) {
      room = new Room(p.room);
      this.rooms.set(p.room, room);
    }
    const rejoin = room.synced;
    room.joined = true;
    room.synced = true;
    if (!rejoin) this.ui.joined?.(p.room);
    const messages = p.messages ?? [];
    const recovered = p.recovered === true;
    // Not recovered, and ids went backwards (or nothing is left): the server lost
    // its history (e.g. --database :memory:), so its ids start again. Forget ours.
    const newest = Math.max(0, ...messages.map((m) => m.id));
    const reset = rejoin && !recovered && newest < room.lastId;
    if (reset) {
      room.seen.clear();
      room.lastId = 0;
    }
    const fresh = room.fresh(messages);
    this.ui.history?.(p.room, fresh, { recovered, rejoin, reset });
  }

  _users(p) {
    const room = this.rooms.get(p.room);
    if (!room) return;
    const names = p.users ?? [];
    if (p.after != null) {
      if (p.after !== room.next) return; // an answer we no longer wait for
      room.users = sortNames([...new Set([...room.users, ...names])]);
    } else {
      room.users = sortNames(names);
    }
    room.count = p.count ?? room.users.length;
    room.next = p.next ?? null;
    room.complete = room.next === null && room.users.length >= room.count;
    if (!room.complete) room.large = true;
    this._showUsers(room);
  }

  _showUsers(room) {
    const { count, complete, large } = room;
    this.ui.users?.(room.name, room.users, { count, complete, large });
  }

  _presence(kind, p) {
    const room = this.rooms.get(p.room);
    if (!room) return;
    room.large = false;
    if (kind === "join" && !room.users.includes(p.username)) {
      room.users = sortNames([...room.users, p.username]);
      room.count += 1;
    }
    this._showUsers(room);
    if (p.username !== this.username) this.ui.presence?.(kind, p);
  }

  /** A large room's gathered presence: the count, and names as far as they go. */
  _crowd(p) {
    const room = this.rooms.get(p.room);
    if (!room) return;
    room.large = true;
    room.count = p.count ?? room.count;
    const joined = p.joined ?? [];
    const left = new Set(p.left ?? []);
    let users = room.users;
    for (const { old, new: name } of p.renamed ?? []) {
      users = users.map((u) => (u === old ? name : u));
      if (room.typing.delete(old)) this._showTyping(room);
    }
    users = users.filter((u) => !left.has(u));
    // A partial list is the first pages: a newcomer may sort anywhere in it.
    if (room.complete) users = [...users, ...joined.filter((u) => !users.includes(u))];
    room.users = sortNames(users);
    const exact = (p.joins ?? 0) === joined.length && (p.leaves ?? 0) === left.size;
    room.complete = room.complete && exact && room.users.length === room.count;
    for (const name of left) room.typing.delete(name);
    this._showUsers(room);
  }

  _leaveEvent(p) {
    const room = this.rooms.get(p.room);
    if (!room) return;
    if (p.username === this.username) {
      this._forget(p.room);
      return;
    }
    room.large = false;
    room.users = room.users.filter((u) => u !== p.username);
    room.count = Math.max(0, room.count - 1);
    room.typing.delete(p.username);
    this._showUsers(room);
    this._showTyping(room);
    this.ui.presence?.("leave", p);
  }

  _message(p) {
    const room = this.rooms.get(p.room);
    if (!room) return;
    const [message] = room.fresh([p]);
    if (!message) return;
    if (room.typing.delete(message.username)) this._showTyping(room);
    this.ui.message?.(p.room, message);
  }

  _typing(p) {
    const room = this.rooms.get(p.room);
    if (!room || p.username === this.username) return;
    room.typing.set(p.username, Date.now() + 4000);
    this._showTyping(room);
  }

  _expireTyping() {
    const now = Date.now();
    for (const room of this.rooms.values()) {
      let changed = false;
      for (const [name, until] of room.typing) {
        if (until <= now) changed = room.typing.delete(name) || changed;
      }
      if (changed) this._showTyping(room);
    }
  }

  _showTyping(room) {
    this.ui.typing?.(room.name, [...room.typing.keys()].sort());
  }

  _nick(p) {
    const mine = p.old === this.username;
    if (mine) {
      this.username = p.new;
      this.wanted = p.new;
    }
    for (const room of this.rooms.values()) {
      if (!room.users.includes(p.old)) continue;
      room.users = sortNames(room.users.map((u) => (u === p.old ? p.new : u)));
      this._showUsers(room);
      if (room.typing.delete(p.old)) this._showTyping(room);
    }
    this.ui.renamed?.(p.old, p.new, { mine, rooms: p.rooms ?? [] });
  }

  _error(p) {
    if (p.type === "chat-join" && this.username === null) {
      // The first join was refused (name taken or invalid): nothing is joined.
      this.wanted = null;
      this.ui.error?.({ ...p, naming: true });
      return;
    }
    if (p.type === "chat-join" && p.code === "bad-room") {
      for (const [name, room] of this.rooms) if (!room.synced) this.rooms.delete(name);
    }
    this.ui.error?.(p);
  }
}
