// roomcast client: an ES module with no dependencies and no build step.
// Import it from a roomcast node (`import { RoomcastClient } from "/client.js"`)
// or copy it into your frontend.
//
//   const chat = new RoomcastClient({ room, user, username, token });
//   chat.addEventListener("message", (e) => render(e.detail));
//   chat.addEventListener("state", (e) => showState(e.detail.state));
//   chat.connect();
//   await chat.send("hello");          // resolves once stored and published
//
// What it guarantees across reconnects: it resumes with `since` = the last
// offset it saw (0 included: a room that was empty), so nothing is missed,
// and it drops any message at or below that offset, so nothing is shown
// twice. A send that is not acknowledged (the connection dropped, or the
// server could not tell whether it was stored) is sent again with the same
// `client_id` until it is, and the server never stores it twice.

/** Connection states, in the `state` event and `client.state`. */
export const State = Object.freeze({
  CONNECTING: "connecting",
  CONNECTED: "connected",
  RECONNECTING: "reconnecting",
  OFFLINE: "offline",
});

/** Close codes after which retrying cannot help (bad token, forbidden, not found). */
const FATAL = new Set([4001, 4003, 4004, 4009]);
/** Close codes that mean "reconnect now, elsewhere" (node draining / going away). */
const RIGHT_AWAY = new Set([1001, 1012]);
/** Error codes after which a send is tried again (same client_id): the
 *  message was not stored (`unavailable`), or may have been
 *  (`outcome_unknown`); a retry stores it once either way. */
const RETRY_SEND = new Set(["unavailable", "outcome_unknown"]);

/** Error for a send that failed; `code` is the server's error code when it gave one. */
export class SendError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "SendError";
    this.code = code;
  }
}

function defaultBase() {
  if (typeof location === "undefined") return "ws://localhost:8000";
  return (location.protocol === "https:" ? "wss://" : "ws://") + location.host;
}

export class RoomcastClient extends EventTarget {
  /**
   * @param {object} o
   * @param {string} o.room            room id
   * @param {string} [o.user]          user id (omit with a token: the token's subject is used)
   * @param {string} [o.token]         JWT, sent as `?token=`
   * @param {string} [o.username]      display name when the user has none
   * @param {string} [o.url]           ws(s)://host of a node or load balancer (default: this page's host)
   * @param {number} [o.since]         resume after this offset (e.g. the last one in history you rendered)
   * @param {object} [o.backoff]       { initial: 250, max: 10000, factor: 2, jitter: 0.5 } (ms)
   * @param {(info: {code: number, reason: string, attempt: number}) => boolean} [o.shouldReconnect]
   *                                   return false to stop reconnecting
   * @param {number} [o.ackTimeout]    ms before an unacknowledged send rejects (10000); until then
   *                                   it is retried with the same client_id
   * @param {number} [o.typingInterval] ms between `typing: true` frames while typing (2000)
   * @param {number} [o.typingIdle]    ms of no typing after which `typing: false` is sent (3000)
   * @param {number} [o.pingInterval]  ms between keep-alive pings (20000)
   * @param {number} [o.pongTimeout]   ms to wait for the pong before the connection counts as dead (10000)
   */
  constructor(o) {
    super();
    if (!o || !o.room) throw new TypeError("room is required");
    if (!o.user && !o.token) throw new TypeError("user or token is required");
    this.room = o.room;
    this.user = o.user ?? null;
    this.token = o.token ?? null;
    this.username = o.username ?? null;
    this.base = (o.url ?? defaultBase()).replace(/\/$/, "");
    this.backoff = { initial: 250, max: 10000, factor: 2, jitter: 0.5, ...(o.backoff ?? {}) };
    this.shouldReconnect = o.shouldReconnect ?? (() => true);
    this.ackTimeout = o.ackTimeout ?? 10000;
    this.typingInterval = o.typingInterval ?? 2000;
    this.typingIdle = o.typingIdle ?? 3000;
    this.pingInterval = o.pingInterval ?? 20000;
    this.pongTimeout = o.pongTimeout ?? 10000;
    /** The last message offset seen; reconnects resume after it. */
    this.lastOffset = o.since ?? 0;
    /** Whether to ask for `since` (given, or connected once: a position to resume from). */
    this._resume = o.since !== undefined;
    this.epoch = null;
    this.nodeId = null;
    this.state = State.OFFLINE;
    /** Users online in the room: user_id → username. */
    this.users = new Map();
    this._ws = null;
    this._attempt = 0;
    this._stopped = true;
    this._retry = null;
    this._pending = new Map(); // client_id → { resolve, reject, timer, frame, ws, error, retry }
    this._seq = 0;
    this._typingSentAt = 0;
    this._typingIdleTimer = null;
    this._pingTimer = null;
    this._pongDeadline = null;
  }

  /** Opens the connection (and keeps it open until `stop()`). */
  connect() {
    this._stopped = false;
    if (!this._ws) this._open(this._attempt > 0 ? State.RECONNECTING : State.CONNECTING);
    return this;
  }

  /** Closes the connection and stops reconnecting. Pending sends reject. */
  stop() {
    this._stopped = true;
    clearTimeout(this._retry);
    this._stopTimers();
    if (this._ws) this._ws.close(1000, "client stopped");
    this._ws = null;
    this._failPending(new SendError("stopped", "client stopped"));
    this._setState(State.OFFLINE);
  }

  /**
   * Sends a message. Resolves with `{ id, offset }` once the server stored and
   * published it (its `ack`, or the message itself seen after a reconnect);
   * rejects with a SendError on an `error` frame for it or after `ackTimeout`.
   * Sent while reconnecting, it goes out as soon as the connection is back.
   */
  send(content, clientId = this._nextId()) {
    return new Promise((resolve, reject) => {
      const p = { resolve, reject, frame: { type: "message", content, client_id: clientId }, ws: null, error: null, retry: 0 };
      p.timer = setTimeout(() => {
        this._pending.delete(clientId);
        clearTimeout(p.retryTimer);
        reject(p.error ?? new SendError("timeout", "no acknowledgement in time; the message may have been stored"));
      }, this.ackTimeout);
      this._pending.set(clientId, p);
      this._sendPending(p);
    });
  }

  /**
   * Reports typing. Call it on every keystroke with `true` (it is throttled to
   * one frame per `typingInterval`, and `false` follows after `typingIdle` of
   * silence), and with `false` when the input is cleared or sent.
   */
  typing(isTyping = true) {
    clearTimeout(this._typingIdleTimer);
    const now = Date.now();
    if (isTyping) {
      if (now - this._typingSentAt >= this.typingInterval) {
        this._typingSentAt = now;
        this._sendNow({ type: "typing", is_typing: true });
      }
      this._typingIdleTimer = setTimeout(() => this.typing(false), this.typingIdle);
    } else if (this._typingSentAt) {
      this._typingSentAt = 0;
      this._sendNow({ type: "typing", is_typing: false });
    }
  }

  // ---- internals ----

  _nextId() {
    this._seq += 1;
    const rand = Math.random().toString(36).slice(2, 8);
    return `${this.user ?? "t"}-${Date.now().toString(36)}-${this._seq}-${rand}`;
  }

  _url() {
    const q = new URLSearchParams();
    if (this.token) q.set("token", this.token);
    if (this.username) q.set("username", this.username);
    if (this._resume) q.set("since", String(this.lastOffset));
    const room = encodeURIComponent(this.room);
    const path = this.user
      ? `/ws/${room}/${encodeURIComponent(this.user)}`
      : `/api/v1/chats/${room}/ws`;
    const qs = q.toString();
    return `${this.base}${path}${qs ? "?" + qs : ""}`;
  }

  _setState(state, extra = {}) {
    if (this.state === state) return;
    this.state = state;
    this._emit("state", { state, ...extra });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _open(state) {
    this._setState(state);
    let ws;
    try {
      ws = new WebSocket(this._url());
    } catch (err) {
      this._closed({ code: 1006, reason: String(err) });
      return;
    }
    this._ws = ws;
    ws.onmessage = (e) => {
      if (ws !== this._ws) return;
      let frame;
      try {
        frame = JSON.parse(e.data);
      } catch {
        return;
      }
      this._frame(frame);
    };
    ws.onclose = (e) => {
      if (ws !== this._ws) return;
      this._ws = null;
      this._closed(e);
    };
  }

  /** Sends a pending message on the current connection, once per connection;
   *  one not sent now goes out when the connection is back. */
  _sendPending(p) {
    if (this.state !== State.CONNECTED || !this._ws || p.ws === this._ws) return;
    p.ws = this._ws;
    this._ws.send(JSON.stringify(p.frame));
  }

  _sendNow(frame) {
    if (this.state === State.CONNECTED && this._ws) this._ws.send(JSON.stringify(frame));
  }

  _frame(f) {
    switch (f.type) {
      case "connected": {
        const reset = (this.epoch !== null && f.epoch !== this.epoch) || f.recovered === false;
        if (reset) {
          // History was lost or no longer reaches back: offsets restart or
          // have a gap the server cannot fill. Tell the app to refetch.
          this.lastOffset = f.offset;
          this._emit("reset", { offset: f.offset, epoch: f.epoch });
        } else if (f.recovered === undefined) {
          // Connected without `since` (the first time): start at the room's
          // head. With `since`, the replay that follows moves it on.
          this.lastOffset = f.offset;
        }
        this.epoch = f.epoch;
        this._resume = true;
        this.nodeId = f.node_id;
        this._attempt = 0;
        this._setState(State.CONNECTED, { nodeId: f.node_id });
        this._emit("connected", f);
        // Unacknowledged sends go again, same client_id, in order: the server
        // answers one that was stored with its first ack.
        for (const p of this._pending.values()) this._sendPending(p);
        this._startPing();
        break;
      }
      case "presence":
        this.users = new Map(f.users.map((u) => [u.user_id, u.username]));
        this._emit("presence", f.users);
        break;
      case "message": {
        if (f.offset <= this.lastOffset) return; // seen already (replay overlap)
        this.lastOffset = f.offset;
        if (f.client_id && this._pending.has(f.client_id) && f.user_id === this.user) {
          // Our own message, seen (e.g. replayed after a reconnect ate its ack).
          this._settle(f.client_id, null, { id: f.id, offset: f.offset });
        }
        this._emit("message", f);
        break;
      }
      case "ack":
        if (f.client_id) this._settle(f.client_id, null, { id: f.id, offset: f.offset });
        this._emit("ack", f);
        break;
      case "error": {
        const p = f.client_id && this._pending.get(f.client_id);
        if (p && RETRY_SEND.has(f.code)) {
          // Not stored, or not known to be: try again shortly, until the ack
          // deadline (then it rejects with this error).
          p.error = new SendError(f.code, f.message);
          p.ws = null;
          clearTimeout(p.retryTimer);
          p.retryTimer = setTimeout(() => this._pending.get(f.client_id) === p && this._sendPending(p), Math.min(2000, 250 * 2 ** p.retry++));
        } else if (p) {
          this._settle(f.client_id, new SendError(f.code, f.message));
        }
        this._emit("error", f);
        break;
      }
      case "user_joined":
        this.users.set(f.user_id, f.username);
        this._emit("joined", f);
        break;
      case "user_left":
        this.users.delete(f.user_id);
        this._emit("left", f);
        break;
      case "typing":
        this._emit("typing", f);
        break;
      case "pong":
        this._pongDeadline && clearTimeout(this._pongDeadline);
        this._pongDeadline = null;
        break;
      default:
        break; // newer frame types: ignore
    }
  }

  _settle(clientId, err, value) {
    const p = this._pending.get(clientId);
    if (!p) return;
    this._pending.delete(clientId);
    clearTimeout(p.timer);
    clearTimeout(p.retryTimer);
    err ? p.reject(err) : p.resolve(value);
  }

  _failPending(err) {
    for (const id of [...this._pending.keys()]) this._settle(id, err);
  }

  _startPing() {
    this._stopTimers();
    this._pingTimer = setInterval(() => {
      if (!this._ws || this.state !== State.CONNECTED) return;
      this._ws.send('{"type":"ping"}');
      if (!this._pongDeadline) {
        // No pong in time: the connection is dead without having said so.
        this._pongDeadline = setTimeout(() => this._dead(), this.pongTimeout);
      }
    }, this.pingInterval);
  }

  /** The connection stopped answering: drop it and reconnect (a close
   *  handshake with a dead peer would never complete). */
  _dead() {
    const ws = this._ws;
    if (!ws) return;
    this._ws = null;
    try { ws.close(4000, "pong timeout"); } catch {}
    this._closed({ code: 1006, reason: "pong timeout" });
  }

  _stopTimers() {
    clearInterval(this._pingTimer);
    clearTimeout(this._pongDeadline);
    clearTimeout(this._typingIdleTimer);
    this._pingTimer = null;
    this._pongDeadline = null;
    this._typingSentAt = 0;
  }

  _closed(e) {
    this._stopTimers();
    const code = e.code ?? 1006;
    const reason = e.reason ?? "";
    if (this._stopped) return this._setState(State.OFFLINE, { code, reason });
    if (FATAL.has(code)) {
      // A bad token, a forbidden room, an unknown room or user: retrying the
      // same thing cannot help.
      this._stopped = true;
      this._failPending(new SendError("closed", `closed ${code}: ${reason}`));
      this._emit("error", { code: `close_${code}`, message: reason || `closed with ${code}` });
      return this._setState(State.OFFLINE, { code, reason });
    }
    if (!this.shouldReconnect({ code, reason, attempt: this._attempt })) {
      this._stopped = true;
      this._failPending(new SendError("closed", `closed ${code}: ${reason}`));
      return this._setState(State.OFFLINE, { code, reason });
    }
    this._setState(State.RECONNECTING, { code, reason });
    const delay = RIGHT_AWAY.has(code) && this._attempt === 0 ? 0 : this._delay();
    this._attempt += 1;
    clearTimeout(this._retry);
    this._retry = setTimeout(() => {
      if (!this._stopped) this._open(State.RECONNECTING);
    }, delay);
  }

  /** Exponential backoff, capped, with jitter so that a whole room does not reconnect in step. */
  _delay() {
    const { initial, max, factor, jitter } = this.backoff;
    const base = Math.min(max, initial * Math.pow(factor, this._attempt));
    return Math.round(base * (1 - jitter * Math.random()));
  }
}
