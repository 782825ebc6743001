// Load generator for the broadcast benchmark (bench/broadcast_bench.py runs it).
//
// Speaks the JSON dialect of /chat (subprotocol chat.v1.json, docs/protocol.md)
// over the minimal WebSocket client in _wsclient.mjs (why not `ws`: see there),
// and reads the bulk of the frames, chat-messages to members that do not send
// (in latency mode, to every member), without JSON.parse: their id and send
// time are read from the bytes (see CHAT_MESSAGE); anything else is parsed as
// JSON.  Connections are spread over
// source addresses 127.0.X.Y, at most --per-address on each (chatservice limits
// connections per client address), and opened a few at a time (the server's
// listen backlog is small).  A member counts as joined when the server's
// chat-users for its room, or its chat-join event for its own name, comes back
// to it (chatservice sends no single joins in rooms over --large-room members;
// the reference sends no chat-users).
//
// --deflate=SHARE (0 to 1, default 0): that share of the members, spread evenly
// over subscribers and senders, offer permessage-deflate as Chromium does and
// decode what comes compressed (see _wsclient.mjs).  --message-size=N (default
// 0): senders pad their text to about N characters with chat as people write
// it, so that messages are long enough to be compressed.
//
// --mode throughput: --subscribers members plus --senders members join the room
// "bench".  Each sender runs a closed loop: it sends a chat-message whose text
// starts with its send time (performance.now(), in ms), waits until that
// message comes back to itself, and sends the next, never faster than --rate
// messages per second (so chatservice's rate limit is never hit).  Every
// member, senders included, counts the chat-messages it receives and their
// latency from send to receive.  After --warmup seconds it measures for
// --duration seconds, then stops sending, waits until every member has
// received every message sent (or DRAIN_TIMEOUT_MS passes; what is missing
// then counts as errors) and prints one JSON object on stdout:
//
//   {"members", "senders", "join_s", "deliveries", "deliveries_per_s",
//    "room_messages", "room_messages_per_s", "p50_ms", "p99_ms",
//    "errors", "error_kinds", "cpu_share", "deflate_members", "message_bytes",
//    "wire_bytes", "wire_bytes_per_delivery", "compressed_frames"}
//
// deliveries are chat-messages received by any member inside the window;
// wire_bytes are all bytes received by all members inside the window (frames
// of every kind, headers included), compressed_frames the frames among them
// that came compressed; deflate_members the members whose offer the server
// took; message_bytes the length of the senders' texts (the last one sent);
// room_messages are senders' messages back at their sender inside the window;
// cpu_share is this process's user + system CPU time over the window's wall
// time, as a fraction of one core.  The window's start and end are announced
// on stderr (MEASURING, MEASURED) so that the driver can sample the server's
// CPU time over the same window.  If stdin closes before the end (the driver
// went away), it exits with status 3.
//
// --mode latency: --subscribers members plus --senders members join the room
// "bench", as in throughput mode, but the senders run an open loop: together
// they send --total-rate chat-messages per second on a fixed schedule (message
// n is due at start + n / total-rate, sent by sender n mod --senders, so each
// sender sends total-rate / senders a second, evenly spaced), whether or not
// earlier ones have come back.  A message's text starts with the time it was
// actually sent (performance.now(), in ms; senders and receivers are this one
// process, so one clock).  Every member, senders included, records the
// latency of every chat-message it receives; the latencies reported are those
// of every delivery of the messages sent inside the window, however late they
// come (measured by send time, so the window's edges cut no message off).
// After --warmup seconds it measures for --duration seconds, stops sending,
// drains as in throughput mode (DRAIN_TIMEOUT_MS; deliveries still missing
// then are errors), and prints one JSON object on stdout:
//
//   {"members", "senders", "join_s", "rate_per_s", "sender_rate_per_s",
//    "offered", "offered_per_s", "deliveries", "deliveries_per_s",
//    "room_messages_delivered_per_s", "latency_samples", "expected_samples",
//    "p50_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms",
//    "first_delivery_p50_ms", "first_delivery_p99_ms", "last_delivery_p50_ms",
//    "last_delivery_p99_ms", "deliveries_missing", "send_lag_p99_ms",
//    "send_lag_max_ms", "errors", "error_kinds", "cpu_share",
//    "deflate_members", "message_bytes"}
//
// offered are the messages sent inside the window; deliveries the
// chat-messages received by any member inside the window (whenever sent),
// room_messages_delivered_per_s deliveries_per_s / members; latency_samples the
// deliveries of the messages offered (expected_samples: offered x members);
// p50/p99/p999/max/mean_ms their latency from send to receive (nearest rank);
// first_delivery_* and last_delivery_* the same per message (by the server's
// id) of its first and its last delivery: the server's time until it starts
// sending a message (queueing included), and until every member has it;
// deliveries_missing the deliveries of all messages sent (warmup included)
// that never came, summed over the members (each one also counted in errors);
// send_lag_*_ms how late the sends of the window were on their schedule (the
// timer's granularity, about 1 ms, plus whatever kept this process busy: if it
// grows, the load generator is falling behind).  The window is announced on
// stderr (MEASURING, MEASURED) as in throughput mode; stdin closing before the
// end exits with status 3.
//
// --mode memory: --connections members join rooms of --room-size members each
// ("idle-0", "idle-1", ...) and stay idle.  Once all have joined it writes
// JOINED on stderr and holds them open until its stdin closes (the driver has
// sampled the server's memory by then); then it prints
//
//   {"connections", "join_s", "errors", "error_kinds"}
//
// Exit status: 0 when the run completed (errors are reported, not fatal),
// 2 for bad arguments or when the members could not all connect and join,
// 3 when stdin closed before the end of a throughput or latency run.

import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { MEASURED, MEASURING, cpuSeconds, quantile, round3, sleep } from "./_common.mjs";
import { Client, totals } from "./_wsclient.mjs";

const JOINED = "loadgen: joined";
const SUBPROTOCOL = "chat.v1.json";
const ROOM = "bench";
/** Connections being opened and joined at once. */
const CONCURRENCY = 32;
/** For all members to connect and join. */
const JOIN_TIMEOUT_MS = 120_000;
/** For every message sent to reach every member once sending has stopped. */
const DRAIN_TIMEOUT_MS = 5_000;

/** Parse and check the command line; exits with status 2 on a bad one. */
function options() {
  const { values } = parseArgs({
    options: {
      url: { type: "string" },
      mode: { type: "string", default: "throughput" },
      subscribers: { type: "string", default: "1000" },
      senders: { type: "string", default: "256" },
      rate: { type: "string", default: "8" },
      "total-rate": { type: "string", default: "100" },
      warmup: { type: "string", default: "3" },
      duration: { type: "string", default: "10" },
      connections: { type: "string", default: "10000" },
      "room-size": { type: "string", default: "100" },
      "per-address": { type: "string", default: "90" },
      deflate: { type: "string", default: "0" },
      "message-size": { type: "string", default: "0" },
    },
  });
  const opts = {
    url: values.url,
    mode: values.mode,
    subscribers: Number(values.subscribers),
    senders: Number(values.senders),
    rate: Number(values.rate),
    totalRate: Number(values["total-rate"]),
    warmup: Number(values.warmup),
    duration: Number(values.duration),
    connections: Number(values.connections),
    roomSize: Number(values["room-size"]),
    perAddress: Number(values["per-address"]),
    deflate: Number(values.deflate),
    messageSize: Number(values["message-size"]),
  };
  const bad = [];
  const isCount = (x, min) => Number.isInteger(x) && x >= min;
  if (!opts.url) bad.push("--url is required");
  if (!["throughput", "latency", "memory"].includes(opts.mode)) {
    bad.push("--mode must be throughput, latency or memory");
  }
  if (!isCount(opts.subscribers, 0)) bad.push("--subscribers must be an integer >= 0");
  for (const name of ["senders", "connections", "room-size", "per-address"]) {
    const key = name.replace(/-(.)/, (_, c) => c.toUpperCase());
    if (!isCount(opts[key], 1)) bad.push(`--${name} must be a positive integer`);
  }
  if (!(opts.rate > 0)) bad.push("--rate must be > 0");
  if (!(opts.totalRate > 0)) bad.push("--total-rate must be > 0");
  if (!(opts.warmup >= 0)) bad.push("--warmup must be >= 0");
  if (!(opts.duration > 0)) bad.push("--duration must be > 0");
  if (!(opts.deflate >= 0 && opts.deflate <= 1)) bad.push("--deflate must be from 0 to 1");
  if (!isCount(opts.messageSize, 0)) bad.push("--message-size must be an integer >= 0");
  if (bad.length) {
    process.stderr.write(`loadgen: ${bad.join("; ")}\n`);
    process.exit(2);
  }
  return opts;
}

const opts = options();

// Shared state of the run.
const state = {
  measuring: false, // inside the measured window
  stopping: false, // window over: send nothing more
  sent: 0, // chat-messages sent by all senders, the whole run
  deliveries: 0, // chat-messages received by any member inside the window
  roomMessages: 0, // senders' own messages back at their sender inside the window
  latenciesMs: [], // send to receive, of every delivery inside the window (latency mode: `samples`)
  errors: 0,
  errorKinds: {}, // errors by kind: "chat-error rate-limited", "close 1008", ...
  messageBytes: 0, // length of the last text a sender sent
  // --mode latency only:
  windowStart: Number.POSITIVE_INFINITY, // the window, by send time (performance.now())
  windowEnd: Number.POSITIVE_INFINITY,
  offered: 0, // messages sent inside the window
  sendLagsMs: [], // how late each send of the window was on its schedule
  spreads: new Map(), // message id: [its first delivery's latency, its last's]
};
const LATENCY = opts.mode === "latency";

/**
 * The latencies of a latency run, in a Float64Array allocated once for all
 * that the run should record: growing a JS array of millions by push copies it
 * now and then, which stalled this process (its receive times) for 10-20 ms.
 */
class Samples {
  constructor(capacity) {
    this.values = new Float64Array(capacity);
    this.length = 0;
  }

  add(value) {
    if (this.length === this.values.length) {
      const values = new Float64Array(Math.max(1024, this.values.length * 2));
      values.set(this.values);
      this.values = values;
    }
    this.values[this.length++] = value;
  }

  /** The values, sorted (in place). */
  sorted() {
    return this.values.subarray(0, this.length).sort();
  }
}
/** Room for every delivery of the window's messages, 5 % to spare, up to SAMPLES_KEPT_AT_ONCE
 * (then it grows); empty outside latency mode. */
const SAMPLES_KEPT_AT_ONCE = 2 ** 25;
const samples = new Samples(
  LATENCY
    ? Math.min(
        SAMPLES_KEPT_AT_ONCE,
        Math.ceil(opts.totalRate * opts.duration * 1.05 + 10) * (opts.subscribers + opts.senders),
      )
    : 0,
);

/** Count `count` errors of `kind`. */
function error(kind, count = 1) {
  state.errors += count;
  state.errorKinds[kind] = (state.errorKinds[kind] ?? 0) + count;
}

// A chat-message frame as both servers encode it: compact JSON, "type"
// first, "id" first in the payload, the text after it.
const CHAT_MESSAGE = Buffer.from('{"type":"chat-message","payload":{"id":');
const MESSAGE_KEY = Buffer.from('"message":"');
const DIGIT_0 = 0x30;
const DOT = 0x2e;

/** Whether buffer[start, end) starts with the bytes of `prefix`. */
function startsWith(buffer, start, end, prefix) {
  return end - start >= prefix.length && buffer.compare(prefix, 0, prefix.length, start, start + prefix.length) === 0;
}

/** Whether byte `at` of `buffer` is before `end` and a decimal digit. */
function isDigit(buffer, at, end) {
  return at < end && buffer[at] >= DIGIT_0 && buffer[at] <= DIGIT_0 + 9;
}

/**
 * The unsigned decimal number (digits, maybe a dot and more digits) at
 * buffer[at, end); NaN if it does not start with a digit.  Several times
 * cheaper than JSON.parse, which is what makes the fast path fast.
 */
function numberAt(buffer, at, end) {
  if (!isDigit(buffer, at, end)) return Number.NaN;
  let value = 0;
  for (; isDigit(buffer, at, end); at++) value = value * 10 + (buffer[at] - DIGIT_0);
  if (buffer[at] === DOT && at < end) {
    let scale = 1;
    for (at++; isDigit(buffer, at, end); at++) {
      scale /= 10;
      value += (buffer[at] - DIGIT_0) * scale;
    }
  }
  return value;
}

/** The source address of the `index`th connection: 127.0.1.1, 127.0.1.2, ... */
function sourceAddress(index) {
  const n = Math.floor(index / opts.perAddress);
  return `127.0.${1 + Math.floor(n / 254)}.${1 + (n % 254)}`;
}

/** Whether the `index`th member offers permessage-deflate: opts.deflate of them, evenly. */
function offersDeflate(index) {
  return Math.floor((index + 1) * opts.deflate) > Math.floor(index * opts.deflate);
}

// Chat as people write it, for --message-size: lines in a fixed pseudo-random order.
const CHAT_LINES = [
  "did anyone else get the 502s on staging around 9?",
  "yes, the deploy restarted the workers one by one and nginx had no upstream for a bit",
  "ok thanks, I'll add a health check to the rollout",
  "give me 10 min, finishing a review",
  "can someone look at PR 4312? it's blocking the release",
  "left two comments, otherwise good to go",
  "the customer call moved to 3pm, same link",
  "has anyone seen the flaky test in the payments suite again",
  "it's the clock one, it fails when the run crosses midnight UTC",
  "heads up: the office wifi is being replaced on friday, bring a cable if you need one",
  "where are the slides from yesterday's demo?",
  "quick question: do we still support the v1 API or can I remove the adapter?",
  "we promised six months after the v2 launch, so until march",
  "the dashboard shows p99 latency up since the last release, investigating",
  "looks like the cache hit rate dropped, the key format changed",
  "fix is in review, should be out within the hour",
  "reminder: retro at 4, add your notes to the board before then",
  "is the build broken or is it just me?",
];
let chatSeed = 12345;

/** About `length` characters of chat (a new pseudo-random mix each call). */
function chatText(length) {
  let text = "";
  while (text.length < length) {
    chatSeed = (chatSeed * 1103515245 + 12345) % 2147483648;
    text += `${CHAT_LINES[chatSeed % CHAT_LINES.length]} `;
  }
  return text.slice(0, length).trim();
}

/** One connection, joined to one room under its own name; the Client's handler. */
class Member {
  constructor(index, username, room) {
    this.username = username;
    this.room = room;
    this.sender = null; // a Sender if this member sends
    this.received = 0; // chat-messages received, the whole run
    this.lastId = 0; // id of the last chat-message received
    this.onJoined = null; // while joining: resolves join()
    this.onJoinFailed = null; // while joining: rejects join()
    // Several URLs (comma-separated): instances of one service; members take turns.
    const urls = opts.url.split(",");
    const url = urls[index % urls.length];
    this.client = new Client(url, SUBPROTOCOL, sourceAddress(index), this, offersDeflate(index));
  }

  joined() {
    if (!this.onJoined) return;
    const joined = this.onJoined;
    this.onJoined = this.onJoinFailed = null;
    joined();
  }

  /** Resolves once joined; rejects if the connection fails or the join is refused first. */
  join() {
    return new Promise((resolve, reject) => {
      this.onJoined = resolve;
      this.onJoinFailed = (why) => {
        this.onJoined = this.onJoinFailed = null;
        this.client.terminate();
        reject(new Error(`${this.username}: ${why}`));
      };
    });
  }

  send(type, payload) {
    this.client.sendText(JSON.stringify({ type, payload }));
  }

  onOpen() {
    this.send("chat-join", { username: this.username, room: this.room });
  }

  onClose(code, reason) {
    if (this.onJoinFailed) this.onJoinFailed(`closed before joining: ${code} ${reason}`);
    else error(`close ${code} ${reason}`.trim());
  }

  onText(buffer, start, end) {
    const now = performance.now();
    // The fast path, for the bulk of the frames: a chat-message to a member
    // that does not send (a sender must see the username too).
    if (!this.sender && startsWith(buffer, start, end, CHAT_MESSAGE)) {
      const id = numberAt(buffer, start + CHAT_MESSAGE.length, end);
      const text = buffer.indexOf(MESSAGE_KEY, start + CHAT_MESSAGE.length);
      const sentAt = text < 0 ? Number.NaN : numberAt(buffer, text + MESSAGE_KEY.length, end);
      if (!Number.isNaN(id) && !Number.isNaN(sentAt)) {
        this.onChatMessage(id, sentAt, now);
        return;
      }
    }
    let frame;
    try {
      frame = JSON.parse(buffer.toString("utf8", start, end));
    } catch {
      error("bad json");
      return;
    }
    const payload = frame.payload;
    switch (frame.type) {
      case "chat-message":
        this.onChatMessage(payload.id, Number.parseFloat(payload.message), now);
        if (this.sender && payload.username === this.username) this.sender.onOwnMessage(payload.message);
        break;
      case "chat-join":
        if (payload.username === this.username && payload.room === this.room) this.joined();
        break;
      case "chat-users":
        if (payload.room === this.room) this.joined();
        break;
      case "chat-error":
        if (this.onJoinFailed) this.onJoinFailed(`join refused: chat-error ${payload.code}`);
        else error(`chat-error ${payload.code}`);
        break;
      default: // welcome, history, users, others joining or leaving
    }
  }

  /** A chat-message with `id`, sent at `sentAt` (the number its text starts with), came at `now`. */
  onChatMessage(id, sentAt, now) {
    this.received += 1;
    if (id <= this.lastId) error("chat-message out of order");
    this.lastId = id;
    if (LATENCY) {
      // Deliveries by receive time; latencies of the messages sent inside the window.
      if (state.measuring) state.deliveries += 1;
      if (sentAt >= state.windowStart && sentAt < state.windowEnd) {
        const latency = now - sentAt;
        samples.add(latency);
        const spread = state.spreads.get(id);
        if (spread === undefined) state.spreads.set(id, [latency, latency]);
        else if (latency < spread[0]) spread[0] = latency;
        else if (latency > spread[1]) spread[1] = latency;
      }
    } else if (state.measuring) {
      state.deliveries += 1;
      state.latenciesMs.push(now - sentAt);
    }
  }
}

/** A member's closed send loop, at most opts.rate messages per second. */
class Sender {
  constructor(member) {
    this.member = member;
    this.seq = 0;
    this.sentAt = 0;
    member.sender = this;
  }

  send() {
    if (state.stopping) return;
    this.seq += 1;
    this.sentAt = performance.now();
    const padding = opts.messageSize ? ` ${chatText(Math.max(1, opts.messageSize - 40))}` : "";
    const message = `${this.sentAt.toFixed(3)} ${this.member.username}${padding} ${this.seq}`;
    state.messageBytes = Buffer.byteLength(message);
    this.member.send("chat-message", { room: ROOM, message });
    state.sent += 1;
  }

  /** Its own message came back: count it and send the next one, in time. */
  onOwnMessage(text) {
    if (!text.endsWith(` ${this.seq}`)) {
      error("sender got back another message than it sent last");
      return;
    }
    if (state.measuring) state.roomMessages += 1;
    const wait = this.sentAt + 1000 / opts.rate - performance.now();
    if (wait > 0) setTimeout(() => this.send(), wait);
    else this.send();
  }
}

/**
 * Connect and join every member of `specs` ([username, room] pairs),
 * CONCURRENCY at a time.  Exits with status 2 if one fails or it takes longer
 * than JOIN_TIMEOUT_MS.  Resolves with the members and the seconds it took.
 */
async function joinAll(specs) {
  const start = performance.now();
  const members = new Array(specs.length);
  let next = 0;
  let joined = 0;
  const worker = async () => {
    while (next < specs.length) {
      const index = next++;
      members[index] = new Member(index, ...specs[index]);
      await members[index].join();
      joined += 1;
    }
  };
  const timeout = sleep(JOIN_TIMEOUT_MS).then(() => {
    throw new Error(`only ${joined} of ${specs.length} members joined within ${JOIN_TIMEOUT_MS} ms`);
  });
  try {
    await Promise.race([Promise.all(Array.from({ length: CONCURRENCY }, worker)), timeout]);
  } catch (err) {
    process.stderr.write(`loadgen: ${opts.url}: ${err.message}\n`);
    process.exit(2);
  }
  return { members, joinSeconds: (performance.now() - start) / 1000 };
}

/** Resolves when stdin closes. */
function stdinClosed() {
  return new Promise((resolve) => {
    process.stdin.on("end", resolve);
    process.stdin.resume();
  });
}

/** Print the result and exit: the kernel closes every connection. */
function finish(result) {
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exit(0);
}

/** The members of the room "bench": --subscribers then --senders. */
function roomSpecs() {
  return [
    ...Array.from({ length: opts.subscribers }, (_, i) => [`sub-${i}`, ROOM]),
    ...Array.from({ length: opts.senders }, (_, i) => [`send-${i}`, ROOM]),
  ];
}

/** Wait until every member has every message sent (or DRAIN_TIMEOUT_MS); the rest are errors.
 * Returns the deliveries missing, over all members. */
async function drain(members) {
  const drained = () => members.every((member) => member.received >= state.sent);
  const deadline = performance.now() + DRAIN_TIMEOUT_MS;
  while (!drained() && performance.now() < deadline) await sleep(50);
  let missing = 0;
  for (const member of members) {
    if (member.received < state.sent) {
      missing += state.sent - member.received;
      error("chat-message missing", state.sent - member.received);
    }
  }
  return missing;
}

async function throughput() {
  stdinClosed().then(() => {
    process.stderr.write("loadgen: stdin closed before the end: aborting\n");
    process.exit(3);
  });
  const { members, joinSeconds } = await joinAll(roomSpecs());
  const senders = members.slice(opts.subscribers).map((member) => new Sender(member));
  for (const sender of senders) sender.send();

  await sleep(opts.warmup * 1000);
  process.stderr.write(`${MEASURING}\n`);
  const start = performance.now();
  const cpuStart = cpuSeconds();
  state.measuring = true;
  totals.counting = true;

  await sleep(opts.duration * 1000);
  state.measuring = false;
  totals.counting = false;
  state.stopping = true;
  const wall = (performance.now() - start) / 1000;
  const cpu = cpuSeconds() - cpuStart;
  process.stderr.write(`${MEASURED}\n`);

  await drain(members);

  const sorted = Float64Array.from(state.latenciesMs).sort();
  finish({
    members: members.length,
    senders: senders.length,
    join_s: round3(joinSeconds),
    deliveries: state.deliveries,
    deliveries_per_s: Math.round((state.deliveries / wall) * 10) / 10,
    room_messages: state.roomMessages,
    room_messages_per_s: Math.round((state.roomMessages / wall) * 10) / 10,
    p50_ms: round3(quantile(sorted, 0.5)),
    p99_ms: round3(quantile(sorted, 0.99)),
    errors: state.errors,
    error_kinds: state.errorKinds,
    cpu_share: Math.round((cpu / wall) * 1000) / 1000,
    deflate_members: members.filter((member) => member.client.deflate).length,
    message_bytes: state.messageBytes,
    wire_bytes: totals.wireBytes,
    wire_bytes_per_delivery: state.deliveries ? round3(totals.wireBytes / state.deliveries) : null,
    compressed_frames: totals.compressedFrames,
  });
}

/**
 * Open loop: opts.totalRate messages a second on a fixed schedule, round robin
 * over `senders` (members, which then keep the fast path: nothing they receive
 * needs their username).  Until state.stopping.
 */
function sendOnSchedule(senders) {
  const interval = 1000 / opts.totalRate;
  const start = performance.now();
  let n = 0; // the next message's number: due at start + n * interval
  const padding = () => (opts.messageSize ? ` ${chatText(Math.max(1, opts.messageSize - 40))}` : "");
  const tick = () => {
    if (state.stopping) return;
    // Everything due by now (several after a busy spell: no send is skipped).
    for (let due = start + n * interval; due <= performance.now(); due = start + n * interval) {
      const member = senders[n % senders.length];
      n += 1;
      const sentAt = performance.now();
      const message = `${sentAt.toFixed(3)} ${member.username}${padding()} ${n}`;
      member.send("chat-message", { room: ROOM, message });
      state.sent += 1;
      state.messageBytes = Buffer.byteLength(message);
      if (sentAt >= state.windowStart && sentAt < state.windowEnd) {
        state.offered += 1;
        state.sendLagsMs.push(sentAt - due);
      }
    }
    setTimeout(tick, Math.max(0, start + n * interval - performance.now()));
  };
  tick();
}

async function latency() {
  stdinClosed().then(() => {
    process.stderr.write("loadgen: stdin closed before the end: aborting\n");
    process.exit(3);
  });
  const { members, joinSeconds } = await joinAll(roomSpecs());
  sendOnSchedule(members.slice(opts.subscribers));

  await sleep(opts.warmup * 1000);
  process.stderr.write(`${MEASURING}\n`);
  const cpuStart = cpuSeconds();
  state.windowStart = performance.now();
  state.measuring = true;

  await sleep(opts.duration * 1000);
  state.windowEnd = performance.now();
  state.measuring = false;
  state.stopping = true;
  const wall = (state.windowEnd - state.windowStart) / 1000;
  const cpu = cpuSeconds() - cpuStart;
  process.stderr.write(`${MEASURED}\n`);

  const missing = await drain(members);
  const sorted = samples.sorted();
  const lags = Float64Array.from(state.sendLagsMs).sort();
  const spreads = [...state.spreads.values()];
  const firsts = Float64Array.from(spreads, (spread) => spread[0]).sort();
  const lasts = Float64Array.from(spreads, (spread) => spread[1]).sort();
  const perSecond = (count) => Math.round((count / wall) * 10) / 10;
  const deliveriesPerS = perSecond(state.deliveries);
  finish({
    members: members.length,
    senders: opts.senders,
    join_s: round3(joinSeconds),
    rate_per_s: opts.totalRate,
    sender_rate_per_s: round3(opts.totalRate / opts.senders),
    offered: state.offered,
    offered_per_s: perSecond(state.offered),
    deliveries: state.deliveries,
    deliveries_per_s: deliveriesPerS,
    room_messages_delivered_per_s: Math.round((deliveriesPerS / members.length) * 10) / 10,
    latency_samples: sorted.length,
    expected_samples: state.offered * members.length,
    p50_ms: round3(quantile(sorted, 0.5)),
    p99_ms: round3(quantile(sorted, 0.99)),
    p999_ms: round3(quantile(sorted, 0.999)),
    max_ms: round3(sorted.length ? sorted[sorted.length - 1] : null),
    mean_ms: round3(sorted.length ? sorted.reduce((a, b) => a + b, 0) / sorted.length : null),
    first_delivery_p50_ms: round3(quantile(firsts, 0.5)),
    first_delivery_p99_ms: round3(quantile(firsts, 0.99)),
    last_delivery_p50_ms: round3(quantile(lasts, 0.5)),
    last_delivery_p99_ms: round3(quantile(lasts, 0.99)),
    deliveries_missing: missing,
    send_lag_p99_ms: round3(quantile(lags, 0.99)),
    send_lag_max_ms: round3(lags.length ? lags[lags.length - 1] : null),
    errors: state.errors,
    error_kinds: state.errorKinds,
    cpu_share: Math.round((cpu / wall) * 1000) / 1000,
    deflate_members: members.filter((member) => member.client.deflate).length,
    message_bytes: state.messageBytes,
  });
}

async function memory() {
  const released = stdinClosed();
  const specs = Array.from({ length: opts.connections }, (_, i) => [
    `idle-${i}`,
    `idle-${Math.floor(i / opts.roomSize)}`,
  ]);
  const { members, joinSeconds } = await joinAll(specs);
  process.stderr.write(`${JOINED}\n`);
  await released;
  finish({
    connections: members.length,
    join_s: round3(joinSeconds),
    errors: state.errors,
    error_kinds: state.errorKinds,
  });
}

if (opts.mode === "throughput") throughput();
else if (opts.mode === "latency") latency();
else memory();
