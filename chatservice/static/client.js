// The /chat connection and its state, without any DOM: one ChatClient per page.
//
// It speaks the JSON dialect (chat.v1.json, docs/protocol.md) to the host that
// served the page, reconnects by itself with exponential backoff and jitter, and
// on reconnect re-joins its rooms with `since` (the last message id seen in each
// room), so nothing said meanwhile is missed. Messages are deduplicated by id per
// room, so nothing is shown twice either. The UI (app.js) only gets callbacks.
//
// With a token (a signed identity, docs/protocol.md "Identity") the first frame of
// every connection is `chat-auth`; the rooms are joined once the server says who
// we are, and the token is renewed from the welcome's `auth.refresh_url` before it
// expires. Without one, nothing of that happens: the client is a guest, as before.

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

/**
 * When to renew a token that expires in `remaining` ms: a minute before, or at 80%
 * of what is left when that is later (a short-lived token).
 */
export function refreshDelay(remaining) {
  return Math.max(0, Math.max(remaining - 60000, remaining * 0.8));
}

/** Closes after which trying again by ourselves would only be refused again. */
const FINAL_CLOSE = /^(kicked by|banned by|token expired|authentication required)/i;

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
    this.identified = new Set(); // names here known to be identified users
    this.direct = null; // a direct conversation: the other person's name
    this.away = false; // a direct conversation the server could not give back yet
    this.retries = 0; // ... asked again this many times
    this.retryTimer = null;
  }

  /** What a chat-join for this room says (a direct conversation names the person). */
  joinPayload(username) {
    const payload = this.direct ? { username, with: this.direct } : { username, room: this.name };
    if (this.synced) payload.since = this.lastId;
    return payload;
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
   *   error(payload), authenticated(payload, {first}), authFailed(payload, {initial}),
   *   token(token), direct(room, name, {asked, opened}), deleted(room, id, payload),
   *   moderated(payload), closed(reason), away(room, name)
   * @param {object} options `token`: a signed identity to send first on every connection.
   */
  constructor(
    ui,
    { url = chatUrl(), initialDelay = 1000, maxDelay = 30000, token = null } = {},
  ) {
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
    this.token = token || null; // kept in memory; sent as the first frame
    this.auth = null; // the welcome's `auth` ({mode, refresh_url?}) when the server has it on
    this.authState = "none"; // none | pending (chat-auth sent) | ok, for this connection
    this.identity = null; // the last chat-authenticated payload
    this.refreshTimer = null;
    this.privateRooms = new Set(); // rooms the server refused as private
    this.asked = new Set(); // names we asked for a direct conversation with (lower case)
    this.pending = []; // joins sent and not answered yet: {room} or {with}
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
    this.authState = "none";
    this.renewed = false; // renewed an expired token once on this connection
    socket.addEventListener("open", () => {
      if (this.socket !== socket || !this.token) return;
      // Before anything else: who we are (never in the URL, where logs would keep it).
      this.authState = "pending";
      this._send("chat-auth", { token: this.token });
    });
    socket.addEventListener("message", (event) => this._receive(event.data));
    socket.addEventListener("close", (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.pending = [];
      this.asked.clear();
      for (const room of this.rooms.values()) {
        room.joined = false;
        room.typing.clear();
        clearTimeout(room.retryTimer);
        room.away = false;
        room.retries = 0;
      }
      const why = event.reason ? `closed by the server: ${event.reason}` : "";
      if (event.code === 1008 && FINAL_CLOSE.test(event.reason)) {
        // Kicked, banned or no longer signed in: coming back by ourselves would only
        // be refused again. The user may try again (retryNow).
        this._stop(why);
        this.ui.closed?.(event.reason);
        return;
      }
      this._scheduleRetry(why);
    });
  }

  /** Try again now instead of waiting for the backoff timer. */
  retryNow() {
    if (this.state === "offline") this.connect();
  }

  _stop(reason) {
    this.retryAt = null;
    this._setState("offline", reason);
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
    for (const room of this.rooms.values()) this._sendJoin(room.joinPayload(name));
  }

  _sendJoin(payload) {
    if (!this._send("chat-join", payload)) return false;
    this.pending.push(payload.with ? { with: payload.with } : { room: payload.room });
    return true;
  }

  join(name) {
    if (!this.rooms.has(name)) this.rooms.set(name, new Room(name));
    return this._sendJoin({ username: this.username, room: name });
  }

  /** The direct conversation with `name`, if we have it: its room name. */
  directWith(name) {
    const wanted = name.toLowerCase();
    for (const room of this.rooms.values()) {
      if (room.direct && room.direct.toLowerCase() === wanted) return room.name;
    }
    return null;
  }

  /** Open (or reopen) a direct conversation with an identified user. */
  openDirect(name) {
    this.asked.add(name.toLowerCase());
    return this._sendJoin({ username: this.username, with: name });
  }

  /** Signed in as an admin (moderator actions are offered). */
  get admin() {
    return this.identity?.admin === true;
  }

  /** Whether `room` is private: a direct conversation, or refused to us as private once. */
  isPrivate(name) {
    return Boolean(this.rooms.get(name)?.direct) || this.privateRooms.has(name);
  }

  // Moderation (admins only; the server refuses others with `forbidden`).

  kick(username, reason = "") {
    return this._send("chat-kick", reason ? { username, reason } : { username });
  }

  ban(username, { room, duration, reason = "" } = {}) {
    return this._send("chat-ban", this._moderation(username, room, duration, reason));
  }

  mute(username, { room, duration, reason = "" } = {}) {
    return this._send("chat-mute", this._moderation(username, room, duration, reason));
  }

  _moderation(username, room, duration, reason) {
    const payload = { username };
    if (room) payload.room = room;
    if (duration != null) payload.duration = duration;
    if (reason) payload.reason = reason;
    return payload;
  }

  deleteMessage(room, id) {
    return this._send("chat-delete", { room, id });
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
      "chat-authenticated": () => this._authenticated(p),
      "chat-direct": () => this._direct(p),
      "chat-delete": () => this._deleted(p),
      "chat-moderated": () => this.ui.moderated?.(p),
    }[event.type];
    handler?.();
  }

  _welcome(p) {
    this.limits = p.limits ?? {};
    this.auth = p.auth ?? null;
    this.attempt = 0;
    const reconnect = this.connected;
    this.connected = true;
    this._setState("online");
    this.ui.welcome?.(p, { reconnect });
    if (this.authState === "pending" && !this.auth) {
      // The server does not do identities: the token is of no use here.
      const reason = "this server does not use sign-in tokens";
      this._dropToken({ code: "auth-off", reason, type: "chat-auth" });
    }
    // Signed in: the rooms are joined once the server has said who we are.
    if (this.authState === "pending") return;
    if (this.username || (this.wanted && this.rooms.size)) {
      // Our name is free again on a new connection (the old one is gone).
      this.wanted = this.username ?? this.wanted;
      this.username = null;
      this._joinAll();
    }
  }

  _dropToken(p) {
    const initial = this.identity === null;
    this.token = null;
    this.authState = "none";
    clearTimeout(this.refreshTimer);
    this.ui.authFailed?.(p, { initial });
  }

  _authenticated(p) {
    const first = this.authState !== "ok";
    this.authState = "ok";
    this.identity = p;
    this._scheduleRefresh(p.expires);
    if (!first) {
      this.ui.authenticated?.(p, { first: false });
      return;
    }
    // The name is the token's: it is ours as soon as the server says so.
    const renamed = this.username !== p.username;
    this.username = p.username;
    this.wanted = p.username;
    this.ui.authenticated?.(p, { first: true });
    if (renamed) this.ui.named?.(p.username);
    if (this.rooms.size === 0) this.rooms.set(LOBBY, new Room(LOBBY));
    this._joinAll();
  }

  _scheduleRefresh(expires) {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
    const url = this.auth?.refresh_url;
    const at = expires ? Date.parse(expires) : NaN;
    if (!url || Number.isNaN(at)) return;
    // setTimeout takes at most 2^31-1 ms (24.8 days).
    const delay = Math.min(refreshDelay(at - Date.now()), 2 ** 31 - 1);
    this.refreshTimer = setTimeout(() => this._refresh(at), delay);
  }

  /** Renew before `expiresAt` (ms); on failure say so and try again while there is time. */
  async _refresh(expiresAt) {
    try {
      await this._renew();
    } catch (error) {
      this.ui.error?.({ code: "token-refresh", reason: error.message });
      const left = expiresAt - Date.now();
      if (left > 5000) {
        const again = Math.min(15000, left / 2);
        this.refreshTimer = setTimeout(() => this._refresh(expiresAt), again);
      }
    }
  }

  /**
   * A fresh token from the refresh URL (the site's session cookie says who we are),
   * sent at once (when offline: on the next connection, as its first frame).
   */
  async _renew() {
    const url = this.auth?.refresh_url;
    if (!url || !this.token) throw new Error("no refresh URL");
    const headers = { Accept: "application/json" };
    const response = await fetch(url, { credentials: "include", headers });
    if (!response.ok) throw new Error(`the refresh URL answered ${response.status}`);
    const body = await response.json();
    if (typeof body?.token !== "string" || !body.token) throw new Error("no token in the answer");
    this.token = body.token;
    this.ui.token?.(body.token);
    this._send("chat-auth", { token: body.token });
  }

  _direct(p) {
    if (!p.room || !p.with) return;
    const key = p.with.toLowerCase();
    const asked = this.asked.delete(key);
    this.pending = this.pending.filter((j) => !(j.with && j.with.toLowerCase() === key));
    let room = this.rooms.get(p.room);
    const known = room !== undefined;
    if (!room) {
      room = new Room(p.room);
      this.rooms.set(p.room, room);
    }
    room.direct = p.with;
    // (`resumed`: one of ours, told at sign-in: no news, nobody to announce.)
    this.ui.direct?.(p.room, p.with, { asked, opened: !asked && !known && !p.resumed });
    // The other person opened it: join it too, or what they write never comes.
    if (!asked && !known) this._sendJoin({ username: this.username, with: p.with });
  }

  /**
   * A direct conversation the server could not give back (the other person is not
   * known to it right now, e.g. after a restart, until they come back): asked for
   * again when they show up, and now and then (15 s, doubling, at most 5 minutes).
   */
  _away(room) {
    room.away = true;
    clearTimeout(room.retryTimer);
    const delay = Math.min(300000, 15000 * 2 ** room.retries);
    room.retries += 1;
    room.retryTimer = setTimeout(() => this._rejoinDirect(room.direct), delay);
  }

  _rejoinDirect(name) {
    const key = this.directWith(name ?? "");
    const room = key && this.rooms.get(key);
    if (!room || !room.away || room.joined || !this.online) return;
    const other = room.direct.toLowerCase();
    if (this.pending.some((j) => j.with && j.with.toLowerCase() === other)) return;
    clearTimeout(room.retryTimer);
    this._sendJoin(room.joinPayload(this.username));
  }

  _deleted(p) {
    if (!this.rooms.has(p.room)) return;
    this.ui.deleted?.(p.room, p.id, p);
  }

  _history(p) {
    this.pending = this.pending.filter((j) => j.room !== p.room);
    const back = this.rooms.get(p.room);
    if (back?.away) {
      clearTimeout(back.retryTimer);
      back.away = false;
      back.retries = 0;
    }
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
    const identified = p.identified ?? [];
    if (p.after != null) {
      if (p.after !== room.next) return; // an answer we no longer wait for
      room.users = sortNames([...new Set([...room.users, ...names])]);
      for (const name of identified) room.identified.add(name);
    } else {
      room.users = sortNames(names);
      room.identified = new Set(identified);
    }
    for (const name of identified) this._rejoinDirect(name);
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
    if (kind === "join" && p.user) {
      room.identified.add(p.username);
      this._rejoinDirect(p.username);
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
    for (const name of left) room.identified.delete(name);
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
    room.identified.delete(p.username);
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

  /** The join a `chat-error` for a chat-join answers: the oldest one not answered. */
  _refusedJoin(p) {
    let index = -1;
    if (p.room) index = this.pending.findIndex((j) => j.room === p.room);
    else if (p.with) index = this.pending.findIndex((j) => j.with === p.with);
    // Without a name in the error: what the code is about (a person, or a room).
    else if (p.code === "no-such-user" || p.code === "bad-payload") {
      index = this.pending.findIndex((j) => j.with);
    } else index = this.pending.findIndex((j) => j.room);
    if (index < 0) index = 0;
    const [join] = this.pending.splice(index, 1);
    return join ?? (p.room ? { room: p.room } : {});
  }

  _error(p) {
    const code = String(p.code ?? "");
    if (code.startsWith("token-") || code === "auth-required" || p.type === "chat-auth") {
      if (this.authState === "pending") {
        if (code === "token-expired" && this.auth?.refresh_url && !this.renewed) {
          // Expired while we were away (asleep, offline): a fresh one, then the rooms.
          this.renewed = true;
          this._renew().catch(() => {
            if (this.authState === "pending") this._dropToken(p);
          });
          return;
        }
        this._dropToken(p); // refused: the page says why; no rooms joined with it
        return;
      }
      if (p.type !== "chat-join" || this.username !== null) {
        this.ui.error?.({ ...p, auth: true });
        return;
      }
    }
    if (p.type === "chat-join") {
      const join = this._refusedJoin(p);
      if (join.with) {
        this.asked.delete(join.with.toLowerCase());
        const known = this.directWith(join.with);
        const room = known && this.rooms.get(known);
        if (room && room.synced && code === "no-such-user") {
          // A conversation we had: kept, and asked for again when they are back.
          const first = !room.away;
          this._away(room);
          if (first) this.ui.away?.(room.name, room.direct);
          return;
        }
        if (room && !room.synced) this.rooms.delete(known);
        this.ui.error?.({ ...p, with: join.with });
        return;
      }
      if (code === "forbidden" && join.room) {
        // Refused: a private room without a grant (or a ban from it, which is no lock).
        const locked = !/\bbanned\b/i.test(p.reason ?? "");
        if (locked) this.privateRooms.add(join.room);
        const room = this.rooms.get(join.room);
        if (room && !room.joined) {
          if (room.synced) this._forget(join.room);
          else this.rooms.delete(join.room);
        }
        this.ui.error?.({ ...p, room: join.room, private: locked });
        return;
      }
    }
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
