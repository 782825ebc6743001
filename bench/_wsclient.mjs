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
// not: extensions (it offers none), fragmented or binary messages (a protocol
// error here: the servers measured send neither), UTF-8 validation (the servers
// are trusted).

import { createHash, randomBytes, randomFillSync } from "node:crypto";
import net from "node:net";

const ACCEPT_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const MAX_RESPONSE_HEAD = 16 * 1024;
const OPCODE_TEXT = 0x1;
const OPCODE_CLOSE = 0x8;
const OPCODE_PING = 0x9;
const OPCODE_PONG = 0xa;
const FIN = 0x80;
const MASKED = 0x80;
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
 */
export class Client {
  constructor(url, protocol, localAddress, handler) {
    const { hostname, port, pathname } = new URL(url);
    this.handler = handler;
    this.protocol = protocol;
    this.key = randomBytes(16).toString("base64");
    this.open = false;
    this.closed = false;
    this.pending = null; // bytes received but not handled yet
    this.socket = net.connect({ host: hostname, port: Number(port), localAddress });
    this.socket.setNoDelay(true);
    this.socket.on("connect", () => {
      this.socket.write(
        `GET ${pathname} HTTP/1.1\r\nHost: ${hostname}:${port}\r\nUpgrade: websocket\r\n` +
          `Connection: Upgrade\r\nSec-WebSocket-Key: ${this.key}\r\nSec-WebSocket-Version: 13\r\n` +
          `Sec-WebSocket-Protocol: ${protocol}\r\n\r\n`,
      );
    });
    this.socket.on("data", (chunk) => (this.open ? this.onData(chunk) : this.onHandshakeData(chunk)));
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
    } else {
      this.open = true;
      this.handler.onOpen();
      if (received.length > headEnd + 4) this.onData(received.subarray(headEnd + 4));
    }
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
    if (!(first & FIN) || opcode === 0) {
      this.fail("unsupported: fragmented message");
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
