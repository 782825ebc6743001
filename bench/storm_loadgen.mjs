// Load generator for the join-storm benchmark (bench/storm_bench.py runs it).
//
// Speaks the JSON dialect of /chat (chat.v1.json, docs/protocol.md) over the
// minimal client in _wsclient.mjs.  Connections are spread over source
// addresses 127.0.X.Y, at most --per-address on each (chatservice limits
// connections per client address).
//
// First --speakers members join the measured room ("storm", or "storm-0" with
// --room-size) one after another.  Then the storm: --connections members
// connect and join at once, at most --in-flight handshakes-and-joins
// outstanding at a time (a reconnect storm after a deploy is every client at
// once; the kernel's listen backlog and the in-flight bound are what pace it).
// Members join "storm", or rooms of --room-size ("storm-0", "storm-1", ...).  A
// member has joined when the server's chat-users for its room has come (in a
// large room there is no chat-join of its own).  While the storm runs, every
// speaker sends a chat-message every 1/--speaker-rate s whose text starts with
// its send time (performance.now(), ms); every speaker receives every
// speaker's message, and the latency from send to receive is recorded.  Once
// all have joined the speakers stop, and every message sent must reach every
// speaker within DRAIN_MS (what does not counts as errors).
//
// With --reconnect, a second storm follows: every storm member drops its
// connection (as in a network blip) and connects again at once, joining with
// `since` (the id of the last chat-message it received in its room).  It has
// rejoined when chat-users has come; its chat-history must say recovered:
// true and hold nothing older than `since` (else an error).
//
// Each storm is announced on stderr ("loadgen: storm NAME start" and "...
// end") so that the driver can read the server's CPU time over it.  At the
// end one JSON object goes to stdout:
//
//   {"speakers", "storms": [{"name", "connections", "join_s", "bytes_received",
//     "speaker_messages", "p50_ms", "p99_ms", "max_ms", "errors",
//     "error_kinds", "loadgen_cpu_share"}, ...]}
//
// bytes_received: all bytes the members received during the storm (frames of
// every kind, headers included).  Exit status: 0 when it ran (errors are
// reported, not fatal), 2 for bad arguments or when a storm did not finish
// within STORM_TIMEOUT_MS.

import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { cpuSeconds, quantile, round3, sleep } from "./_common.mjs";
import { Client, totals } from "./_wsclient.mjs";

const SUBPROTOCOL = "chat.v1.json";
/** For one storm to be over: every member joined. */
const STORM_TIMEOUT_MS = 180_000;
/** For the speakers' last messages to reach every speaker. */
const DRAIN_MS = 5_000;

const CHAT_USERS = Buffer.from('{"type":"chat-users","payload":{"room":"');
const CHAT_HISTORY = Buffer.from('{"type":"chat-history"');
const CHAT_MESSAGE = Buffer.from('{"type":"chat-message","payload":{"id":');
const CHAT_ERROR = Buffer.from('{"type":"chat-error"');
const MESSAGE_KEY = Buffer.from('"message":"');
const HISTORY_ID = Buffer.from('{"id":');

function options() {
  const { values } = parseArgs({
    options: {
      url: { type: "string" },
      connections: { type: "string", default: "10000" },
      "room-size": { type: "string", default: "0" },
      "in-flight": { type: "string", default: "500" },
      speakers: { type: "string", default: "10" },
      "speaker-rate": { type: "string", default: "1" },
      "per-address": { type: "string", default: "90" },
      reconnect: { type: "boolean", default: false },
    },
  });
  const opts = {
    url: values.url,
    connections: Number(values.connections),
    roomSize: Number(values["room-size"]),
    inFlight: Number(values["in-flight"]),
    speakers: Number(values.speakers),
    speakerRate: Number(values["speaker-rate"]),
    perAddress: Number(values["per-address"]),
    reconnect: values.reconnect,
  };
  const bad = [];
  const isCount = (x, min) => Number.isInteger(x) && x >= min;
  if (!opts.url) bad.push("--url is required");
  for (const [name, min] of [["connections", 1], ["room-size", 0], ["in-flight", 1], ["speakers", 1], ["per-address", 1]]) {
    const key = name.replace(/-(.)/, (_, c) => c.toUpperCase());
    if (!isCount(opts[key], min)) bad.push(`--${name} must be an integer >= ${min}`);
  }
  if (!(opts.speakerRate > 0)) bad.push("--speaker-rate must be > 0");
  if (bad.length) {
    process.stderr.write(`loadgen: ${bad.join("; ")}\n`);
    process.exit(2);
  }
  return opts;
}

const opts = options();
const measuredRoom = opts.roomSize ? "storm-0" : "storm";

/** The storm being measured: its counters. */
let storm = null;

function newStorm(name) {
  return { name, errors: 0, errorKinds: {}, latenciesMs: [], sent: 0 };
}

function error(kind) {
  storm.errors += 1;
  storm.errorKinds[kind] = (storm.errorKinds[kind] ?? 0) + 1;
}

function startsWith(buffer, start, end, prefix) {
  return end - start >= prefix.length && buffer.compare(prefix, 0, prefix.length, start, start + prefix.length) === 0;
}

/** The unsigned integer at buffer[at, end), or NaN. */
function integerAt(buffer, at, end) {
  let value = Number.NaN;
  for (; at < end && buffer[at] >= 0x30 && buffer[at] <= 0x39; at++) {
    value = (Number.isNaN(value) ? 0 : value * 10) + (buffer[at] - 0x30);
  }
  return value;
}

function sourceAddress(index) {
  const n = Math.floor(index / opts.perAddress);
  return `127.0.${1 + Math.floor(n / 254)}.${1 + (n % 254)}`;
}

/** One connection of one member; `onJoined` runs once its chat-users came. */
class Member {
  constructor(index, username, room, since = null) {
    this.index = index;
    this.username = username;
    this.room = room;
    this.since = since;
    this.lastId = since ?? 0;
    this.joined = false;
    this.onJoined = null;
    this.speaker = null; // a Speaker if this member speaks
    this.client = new Client(opts.url, SUBPROTOCOL, sourceAddress(index), this);
  }

  join() {
    return new Promise((resolve) => {
      this.onJoined = resolve;
    });
  }

  send(type, payload) {
    this.client.sendText(JSON.stringify({ type, payload }));
  }

  onOpen() {
    const payload = { username: this.username, room: this.room };
    if (this.since !== null) payload.since = this.since;
    this.send("chat-join", payload);
  }

  onClose(code, reason) {
    if (this.dropped) return;
    if (!this.joined) {
      error(`closed before joining: ${code} ${reason}`.trim());
      this.done();
    } else {
      error(`close ${code} ${reason}`.trim());
    }
  }

  done() {
    const joined = this.onJoined;
    this.onJoined = null;
    joined?.();
  }

  onText(buffer, start, end) {
    if (startsWith(buffer, start, end, CHAT_MESSAGE)) {
      const id = integerAt(buffer, start + CHAT_MESSAGE.length, end);
      if (id > this.lastId) this.lastId = id;
      if (this.speaker) {
        const text = buffer.indexOf(MESSAGE_KEY, start);
        const sentAt = Number.parseFloat(buffer.toString("latin1", text + MESSAGE_KEY.length, text + MESSAGE_KEY.length + 20));
        this.speaker.received(sentAt, performance.now());
      }
      return;
    }
    if (!this.joined && startsWith(buffer, start, end, CHAT_HISTORY)) {
      if (this.since !== null) {
        const history = JSON.parse(buffer.toString("utf8", start, end)).payload;
        if (history.recovered !== true) error("chat-history not recovered");
        if (history.messages.some((m) => m.id <= this.since)) error("chat-history older than since");
      }
      // Its messages are oldest first: the last id in it is the newest this member saw.
      const last = buffer.lastIndexOf(HISTORY_ID, end);
      if (last >= start) {
        const id = integerAt(buffer, last + HISTORY_ID.length, end);
        if (id > this.lastId) this.lastId = id;
      }
      return;
    }
    if (!this.joined && startsWith(buffer, start, end, CHAT_USERS)) {
      const room = buffer.toString("utf8", start + CHAT_USERS.length, start + CHAT_USERS.length + this.room.length + 1);
      if (room === `${this.room}"`) {
        this.joined = true;
        this.done();
      }
      return;
    }
    if (startsWith(buffer, start, end, CHAT_ERROR)) {
      error(`chat-error ${JSON.parse(buffer.toString("utf8", start, end)).payload.code}`);
      if (!this.joined) this.done();
    }
    // Anything else (welcome, presence, joins and leaves of small rooms) is not measured.
  }
}

/** A speaker's send loop, and what it receives of all speakers. */
class Speaker {
  constructor(member) {
    this.member = member;
    this.timer = null;
    member.speaker = this;
  }

  start() {
    const speak = () => {
      storm.sent += 1;
      this.member.send("chat-message", { room: measuredRoom, message: `${performance.now().toFixed(3)} storm` });
    };
    speak(); // at once: even a short storm has its samples
    this.timer = setInterval(speak, 1000 / opts.speakerRate);
  }

  stop() {
    clearInterval(this.timer);
  }

  received(sentAt, now) {
    if (storm && !Number.isNaN(sentAt)) storm.latenciesMs.push(now - sentAt);
  }
}

/** Connect and join every spec ([index, username, room, since]), opts.inFlight at a time. */
async function joinAll(specs) {
  const members = new Array(specs.length);
  let next = 0;
  const worker = async () => {
    while (next < specs.length) {
      const at = next++;
      members[at] = new Member(...specs[at]);
      await members[at].join();
    }
  };
  const timeout = sleep(STORM_TIMEOUT_MS).then(() => {
    throw new Error(`a storm did not finish within ${STORM_TIMEOUT_MS / 1000} s`);
  });
  const workers = Array.from({ length: Math.min(opts.inFlight, specs.length) }, worker);
  try {
    await Promise.race([Promise.all(workers), timeout]);
  } catch (err) {
    process.stderr.write(`loadgen: ${opts.url}: ${err.message}\n`);
    process.exit(2);
  }
  return members;
}

/** Run one storm: `specs` join while the speakers speak.  Returns its result and members. */
async function runStorm(name, specs, speakers) {
  storm = newStorm(name);
  totals.wireBytes = 0;
  totals.counting = true;
  const cpuStart = cpuSeconds();
  const start = performance.now();
  process.stderr.write(`loadgen: storm ${name} start\n`);
  for (const speaker of speakers) speaker.start();
  const members = await joinAll(specs);
  const joinMs = performance.now() - start;
  process.stderr.write(`loadgen: storm ${name} end\n`);
  totals.counting = false;
  const bytes = totals.wireBytes;
  const cpu = cpuSeconds() - cpuStart;
  for (const speaker of speakers) speaker.stop();
  // Every message sent must reach every speaker.
  const expected = storm.sent * speakers.length;
  const deadline = performance.now() + DRAIN_MS;
  while (storm.latenciesMs.length < expected && performance.now() < deadline) await sleep(20);
  const missing = expected - storm.latenciesMs.length;
  for (let i = 0; i < missing; i++) error("speaker message not received");
  const latencies = storm.latenciesMs.sort((a, b) => a - b);
  const result = {
    name,
    connections: specs.length,
    join_s: round3(joinMs / 1000),
    bytes_received: bytes,
    bytes_per_connection: Math.round(bytes / specs.length),
    speaker_messages: storm.sent,
    p50_ms: round3(quantile(latencies, 0.5)),
    p99_ms: round3(quantile(latencies, 0.99)),
    max_ms: round3(latencies.at(-1) ?? null),
    errors: storm.errors,
    error_kinds: storm.errorKinds,
    loadgen_cpu_share: round3(cpu / (joinMs / 1000)),
  };
  storm = null;
  return { result, members };
}

async function main() {
  // The speakers, joined one by one before anything is measured.
  storm = newStorm("speakers");
  const speakers = [];
  for (let i = 0; i < opts.speakers; i++) {
    const [member] = await joinAll([[i, `speaker-${i}`, measuredRoom]]);
    speakers.push(new Speaker(member));
  }
  if (storm.errors) {
    process.stderr.write(`loadgen: the speakers could not join: ${JSON.stringify(storm.errorKinds)}\n`);
    process.exit(2);
  }
  const roomOf = (i) => (opts.roomSize ? `storm-${Math.floor(i / opts.roomSize)}` : "storm");
  const base = opts.speakers;
  const specs = Array.from({ length: opts.connections }, (_, i) => [base + i, `member-${i}`, roomOf(i)]);
  const storms = [];
  const first = await runStorm(opts.roomSize ? "rooms" : "one-room", specs, speakers);
  storms.push(first.result);
  if (opts.reconnect) {
    await sleep(1000); // the last presence events, as in a room that had settled
    for (const member of first.members) {
      member.dropped = true;
      member.client.terminate();
    }
    const again = first.members.map((m) => [m.index, m.username, m.room, m.lastId]);
    storms.push((await runStorm("reconnect", again, speakers)).result);
  }
  process.stdout.write(`${JSON.stringify({ speakers: opts.speakers, storms })}\n`);
  process.exit(0);
}

main();
