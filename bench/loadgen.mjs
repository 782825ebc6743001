// Load generator for the echo benchmark (bench/echo_bench.py runs it).
//
// Opens N WebSocket connections to an echo endpoint; each runs a strict
// request/response loop: send one text message, wait for its echo, check it,
// send the next.  After --warmup seconds it measures for --duration seconds:
// echoes received in that window, their round-trip times, and this process's
// own CPU time.  Then it closes the connections and prints one JSON object on
// stdout:
//
//   {"messages", "messages_per_s", "p50_ms", "p99_ms", "errors", "cpu_share"}
//
// cpu_share is user + system CPU time over wall time in the window, as a
// fraction of one core.  The start and end of the window are announced on
// stderr with the lines MEASURING and MEASURED below, so that the driver can
// sample the server's CPU time over the same window.
//
// Exit status: 0 when the run completed (errors are reported, not fatal),
// 2 for bad arguments or when the connections could not all be opened.

import { parseArgs } from "node:util";
import WebSocket from "ws";
import { MEASURED, MEASURING, cpuSeconds, quantile, round3, sleep } from "./_common.mjs";

const CONNECT_TIMEOUT_MS = 10_000;
const CLOSE_TIMEOUT_MS = 2_000;

/** Parse and check the command line; exits with status 2 on a bad one. */
function options() {
  const { values } = parseArgs({
    options: {
      url: { type: "string" },
      connections: { type: "string", default: "50" },
      size: { type: "string", default: "32" },
      warmup: { type: "string", default: "2" },
      duration: { type: "string", default: "10" },
    },
  });
  const opts = {
    url: values.url,
    connections: Number(values.connections),
    size: Number(values.size),
    warmup: Number(values.warmup),
    duration: Number(values.duration),
  };
  const bad = [];
  if (!opts.url) bad.push("--url is required");
  if (!Number.isInteger(opts.connections) || opts.connections < 1) bad.push("--connections must be a positive integer");
  if (!Number.isInteger(opts.size) || opts.size < 1) bad.push("--size must be a positive integer");
  if (!(opts.warmup >= 0)) bad.push("--warmup must be >= 0");
  if (!(opts.duration > 0)) bad.push("--duration must be > 0");
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
  messages: 0, // echoes received inside the window
  errors: 0, // mismatched echoes, socket errors, unexpected closes
  latenciesMs: [], // round trip of each echo received inside the window
};

/**
 * One connection's request/response loop.  The payload is `size` ASCII bytes
 * carrying a per-message sequence number, so an echo of the wrong message is
 * caught too.  Resolves once the socket has closed.
 */
function runConnection(ws) {
  const out = Buffer.alloc(opts.size, "x");
  const digits = Math.min(opts.size, 12);
  let seq = 0;
  let sentAt = 0n;
  let active = true;

  const send = () => {
    seq += 1;
    out.write(String(seq % 10 ** digits).padStart(digits, "0"), out.length - digits, "latin1");
    sentAt = process.hrtime.bigint();
    // A Buffer sent as text: ws copies it while masking, so `out` stays ours.
    ws.send(out, { binary: false });
  };

  const fail = () => {
    if (active) state.errors += 1;
    active = false;
  };

  ws.on("message", (data, isBinary) => {
    const now = process.hrtime.bigint();
    if (!active) return;
    if (isBinary || !out.equals(data)) {
      fail();
      ws.terminate();
      return;
    }
    if (state.measuring) {
      state.messages += 1;
      state.latenciesMs.push(Number(now - sentAt) / 1e6);
    }
    if (state.stopping) {
      active = false;
      ws.close(1000);
      return;
    }
    send();
  });
  ws.on("error", fail);

  return new Promise((resolve) => {
    ws.on("close", () => {
      if (!state.stopping) fail();
      resolve();
    });
    send();
  });
}

/** Open one connection; resolves with the open socket, rejects on failure. */
function connect() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(opts.url, { perMessageDeflate: false });
    ws.once("open", () => resolve(ws));
    ws.once("error", reject);
  });
}

async function main() {
  const connecting = Promise.all(Array.from({ length: opts.connections }, connect));
  const timeout = sleep(CONNECT_TIMEOUT_MS).then(() => {
    throw new Error(`could not open ${opts.connections} connections within ${CONNECT_TIMEOUT_MS} ms`);
  });
  let sockets;
  try {
    sockets = await Promise.race([connecting, timeout]);
  } catch (err) {
    process.stderr.write(`loadgen: ${opts.url}: ${err.message}\n`);
    process.exit(2);
  }

  const closed = Promise.all(sockets.map(runConnection));

  await sleep(opts.warmup * 1000);
  process.stderr.write(`${MEASURING}\n`);
  const start = process.hrtime.bigint();
  const cpuStart = cpuSeconds();
  state.measuring = true;

  await sleep(opts.duration * 1000);
  state.measuring = false;
  state.stopping = true;
  const wall = Number(process.hrtime.bigint() - start) / 1e9;
  const cpu = cpuSeconds() - cpuStart;
  process.stderr.write(`${MEASURED}\n`);

  // Every connection closes after its in-flight echo; a stuck one is cut off.
  await Promise.race([closed, sleep(CLOSE_TIMEOUT_MS)]);
  for (const ws of sockets) {
    if (ws.readyState !== WebSocket.CLOSED) ws.terminate();
  }

  const sorted = Float64Array.from(state.latenciesMs).sort();
  const result = {
    messages: state.messages,
    messages_per_s: Math.round((state.messages / wall) * 10) / 10,
    p50_ms: round3(quantile(sorted, 0.5)),
    p99_ms: round3(quantile(sorted, 0.99)),
    errors: state.errors,
    cpu_share: Math.round((cpu / wall) * 1000) / 1000,
  };
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exit(0);
}

main();
