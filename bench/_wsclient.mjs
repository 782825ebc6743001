// A minimal WebSocket client (RFC 6455) for broadcast_loadgen.mjs.
//
// The broadcast load generator receives every message once per member: about a
// thousand frames for each one the server sends.  With `ws`, the per-frame
// work (a Buffer per frame, a stream write, an event, a string) cost more CPU
// than chatservice spent sending the frame, so the load generator and not the
// server was the bottleneck.  This client hands each text frame to its handler
// as (buffer, start, end), in place, with nothing allocated per frame.
//
// What it does: the opening handshake (subprotocol and Sec-WebSocket-Accept
// checked), masked frames to the server, unfragmented text frames from it,
// pongs to pings, and the close handshake when the server closes.  What it does
// not: fragmented or binary messages (a protocol error here: the servers
// measured send neither), UTF-8 validation (the servers are trusted),
// compressing what it sends (allowed: RSV1 is per message).
//
// permessage-deflate (RFC 7692), when asked to: it offers what Chromium offers
// (`permessage-deflate; client_max_window_bits`) and inflates frames with RSV1
// set.  With `server_no_context_takeover` in the server's answer every message
// stands alone, and the same compressed bytes decode to the same text: a
// decoded message is kept (by its compressed bytes) and reused.  A
// browser decodes each message once on its own machine; this one process
// stands for a thousand of them, and must stay faster than the server it
// measures.  Without it (the server keeps its context), each connection
// inflates every message itself, its last 32 KiB of output as the dictionary.

import { createHash, randomBytes, randomFillSync } from "node:crypto";
import net from "node:net";
import zlib from "node:zlib";

const ACCEPT_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const MAX_RESPONSE_HEAD = 16 * 1024;
const OPCODE_TEXT = 0x1;
const OPCODE_CLOSE = 0x8;
const OPCODE_PING = 0x9;
const OPCODE_PONG = 0xa;
const FIN = 0x80;
const RSV1 = 0x40;
const RSV23 = 0x30;
const MASKED = 0x80;
const DEFLATE_OFFER = "permessage-deflate; client_max_window_bits";
/** What RFC 7692 7.2.2 has the receiver append before inflating. */
const SYNC_TAIL = Buffer.from([0x00, 0x00, 0xff, 0xff]);
const WINDOW = 32 * 1024;
/** Decoded messages kept, by their compressed bytes (server_no_context_takeover only):
 * more than the messages in flight at once, each on its way to every member. */
const DECODED_KEPT = 4096;
const decoded = new Map();
/** A message ends without a final block (RFC 7692 7.2.1): no Z_FINISH. */
const INFLATE = { finishFlush: zlib.constants.Z_SYNC_FLUSH };

/**
 * A number for the compressed payload buffer[start, end): cheap to compute and
 * to look up (a string of the bytes was not); an entry found by it is compared
 * byte for byte before it is used.
 */
function frameKey(buffer, start, end) {
  const n = end - start;
  if (n < 8) return n;
  const middle = start + ((n >> 1) & ~3);
  return (Math.imul(n, 0x9e3779b1) ^ buffer.readInt32LE(start) ^
    Math.imul(buffer.readInt32LE(middle), 31) ^ buffer.readInt32LE(end - 4)) | 0;
}

/** Counts over all clients of this process. */
export const totals = { wireBytes: 0, compressedFrames: 0, counting: false };
/** Close code for a connection closed without a close frame (RFC 6455, 7.4.1). */
export const ABNORMAL_CLOSURE = 1006;

/**
 * One client connection.  `handler` gets:
 *   onOpen()                     the handshake succeeded
 *   onText(buffer, start, end)   a text message: buffer[start, end), valid
 *                                only during the call
 *   onClose(code, reason)        once, when the connection is over: the
 *                                server's close code, or ABNORMAL_CLOSURE and
 *                                what went wrong
 * With `deflate`, it offers permessage-deflate; `this.deflate` then says
 * whether the server took it.
 */
export class Client {
  constructor(url, protocol, localAddress, handler, deflate = false) {
    const { hostname, port, pathname } = new URL(url);
    this.handler = handler;
    this.protocol = protocol;
    this.key = randomBytes(16).toString("base64");
    this.open = false;
    this.closed = false;
    this.pending = null; // bytes received but not handled yet
    this.offersDeflate = deflate;
    this.deflate = false; // negotiated
    this.sharedFrames = false; // server_no_context_takeover: messages stand alone
    this.inflateWindow = null; // the server keeps its context: our last output
    this.socket = net.connect({ host: hostname, port: Number(port), localAddress });
    this.socket.setNoDelay(true);
    this.socket.on("connect", () => {
      this.socket.write(
        `GET ${pathname} HTTP/1.1\r\nHost: ${hostname}:${port}\r\nUpgrade: websocket\r\n` +
          `Connection: Upgrade\r\nSec-WebSocket-Key: ${this.key}\r\nSec-WebSocket-Version: 13\r\n` +
          `Sec-WebSocket-Protocol: ${protocol}\r\n` +
          (deflate ? `Sec-WebSocket-Extensions: ${DEFLATE_OFFER}\r\n` : "") +
          "\r\n",
      );
    });
    this.socket.on("data", (chunk) => {
      if (totals.counting) totals.wireBytes += chunk.length;
      if (this.open) this.onData(chunk);
      else this.onHandshakeData(chunk);
    });
    this.socket.on("error", (err) => this.closeWith(ABNORMAL_CLOSURE, err.message));
    this.socket.on("close", () => this.closeWith(ABNORMAL_CLOSURE, "connection lost"));
  }

  /** Send `text` as one text message. */
  sendText(text) {
    this.sendFrame(OPCODE_TEXT, Buffer.from(text));
  }

  /** Drop the connection at once. */
  terminate() {
    this.socket.destroy();
  }

  /** Send one frame, masked as a client must (RFC 6455, 5.3). */
  sendFrame(opcode, payload) {
    const length = payload.length;
    const header = length < 126 ? 2 : length < 65536 ? 4 : 10;
    const frame = Buffer.allocUnsafe(header + 4 + length);
    frame[0] = FIN | opcode;
    if (length < 126) {
      frame[1] = MASKED | length;
    } else if (length < 65536) {
      frame[1] = MASKED | 126;
      frame.writeUInt16BE(length, 2);
    } else {
      frame[1] = MASKED | 127;
      frame.writeBigUInt64BE(BigInt(length), 2);
    }
    randomFillSync(frame, header, 4);
    for (let i = 0; i < length; i++) frame[header + 4 + i] = payload[i] ^ frame[header + (i & 3)];
    this.socket.write(frame);
  }

  onHandshakeData(chunk) {
    const received = this.pending ? Buffer.concat([this.pending, chunk]) : chunk;
    const headEnd = received.indexOf("\r\n\r\n");
    if (headEnd < 0) {
      this.pending = received;
      if (received.length > MAX_RESPONSE_HEAD) this.fail("handshake: response head too long");
      return;
    }
    this.pending = null;
    const [status, ...lines] = received.toString("latin1", 0, headEnd).split("\r\n");
    const headers = new Map(
      lines.map((line) => {
        const colon = line.indexOf(":");
        return [line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim()];
      }),
    );
    const accept = createHash("sha1").update(this.key + ACCEPT_GUID).digest("base64");
    if (!status.startsWith("HTTP/1.1 101 ")) {
      this.fail(`handshake: ${status}`);
    } else if (headers.get("sec-websocket-accept") !== accept) {
      this.fail("handshake: wrong Sec-WebSocket-Accept");
    } else if (headers.get("sec-websocket-protocol") !== this.protocol) {
      this.fail(`handshake: subprotocol ${JSON.stringify(headers.get("sec-websocket-protocol"))}`);
    } else if (!this.acceptExtensions(headers.get("sec-websocket-extensions"))) {
      this.fail(`handshake: extensions ${JSON.stringify(headers.get("sec-websocket-extensions"))}`);
    } else {
      this.open = true;
      this.handler.onOpen();
      if (received.length > headEnd + 4) this.onData(received.subarray(headEnd + 4));
    }
  }

  /** Take the server's Sec-WebSocket-Extensions answer; false if it is not acceptable. */
  acceptExtensions(answer) {
    if (answer === undefined) return true;
    const [name, ...params] = answer.split(";").map((p) => p.trim());
    if (!this.offersDeflate || name !== "permessage-deflate") return false;
    this.deflate = true;
    for (const param of params) {
      const [key, value] = param.split("=").map((p) => p.trim());
      if (key === "server_no_context_takeover") this.sharedFrames = true;
      // client_*: we compress nothing; server_max_window_bits: our window is 15.
      else if (!["client_no_context_takeover", "client_max_window_bits", "server_max_window_bits"].includes(key))
        return false;
      if (key === "server_max_window_bits" && !(Number(value) >= 8 && Number(value) <= 15)) return false;
    }
    if (!this.sharedFrames) this.inflateWindow = Buffer.alloc(0);
    return true;
  }

  /** The text of a compressed message (its payload: buffer[start, end)). */
  inflate(buffer, start, end) {
    if (!this.sharedFrames) {
      const compressed = Buffer.concat([buffer.subarray(start, end), SYNC_TAIL]);
      const text = zlib.inflateRawSync(compressed, { ...INFLATE, dictionary: this.inflateWindow });
      const window = Buffer.concat([this.inflateWindow, text]);
      this.inflateWindow = window.subarray(Math.max(0, window.length - WINDOW));
      return text;
    }
    const length = end - start;
    const key = frameKey(buffer, start, end);
    const entry = decoded.get(key);
    if (entry !== undefined && entry.compressed.length === length &&
        buffer.compare(entry.compressed, 0, length, start, end) === 0) {
      return entry.text;
    }
    const compressed = Buffer.from(buffer.subarray(start, end));
    const text = zlib.inflateRawSync(Buffer.concat([compressed, SYNC_TAIL]), INFLATE);
    decoded.set(key, { compressed, text });
    if (decoded.size > DECODED_KEPT) decoded.delete(decoded.keys().next().value);
    return text;
  }

  /** Handle every complete frame in what has come; keep the rest for later. */
  onData(chunk) {
    const buffer = this.pending ? Buffer.concat([this.pending, chunk]) : chunk;
    let at = 0;
    while (!this.closed && buffer.length - at >= 2) {
      const first = buffer[at];
      const second = buffer[at + 1];
      let length = second & 0x7f;
      let header = 2;
      if (length === 126) {
        if (buffer.length - at < 4) break;
        length = buffer.readUInt16BE(at + 2);
        header = 4;
      } else if (length === 127) {
        if (buffer.length - at < 10) break;
        length = Number(buffer.readBigUInt64BE(at + 2));
        header = 10;
      }
      if (buffer.length - at < header + length) break;
      if (second & MASKED) {
        this.fail("protocol error: masked frame from the server");
        return;
      }
      this.onFrame(first, buffer, at + header, at + header + length);
      at += header + length;
    }
    this.pending = at < buffer.length ? buffer.subarray(at) : null;
  }

  onFrame(first, buffer, start, end) {
    const opcode = first & 0x0f;
    if (first & RSV23 || (first & RSV1 && (!this.deflate || opcode !== OPCODE_TEXT))) {
      this.fail(`protocol error: reserved bits ${first & 0x70} on opcode ${opcode}`);
    } else if (!(first & FIN) || opcode === 0) {
      this.fail("unsupported: fragmented message");
    } else if (opcode === OPCODE_TEXT && first & RSV1) {
      if (totals.counting) totals.compressedFrames += 1;
      let text;
      try {
        text = this.inflate(buffer, start, end);
      } catch (err) {
        this.fail(`inflate: ${err.message}`);
        return;
      }
      this.handler.onText(text, 0, text.length);
    } else if (opcode === OPCODE_TEXT) {
      this.handler.onText(buffer, start, end);
    } else if (opcode === OPCODE_PING) {
      this.sendFrame(OPCODE_PONG, buffer.subarray(start, end));
    } else if (opcode === OPCODE_CLOSE) {
      const code = end - start >= 2 ? buffer.readUInt16BE(start) : 1005;
      const reason = buffer.toString("utf8", Math.min(start + 2, end), end);
      this.sendFrame(OPCODE_CLOSE, buffer.subarray(start, Math.min(start + 2, end)));
      this.socket.end();
      this.closeWith(code, reason);
    } else if (opcode !== OPCODE_PONG) {
      this.fail(`unsupported: opcode ${opcode}`);
    }
  }

  fail(why) {
    this.terminate();
    this.closeWith(ABNORMAL_CLOSURE, why);
  }

  closeWith(code, reason) {
    if (this.closed) return;
    this.closed = true;
    this.handler.onClose(code, reason);
  }
}
