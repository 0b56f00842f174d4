// roomcast multiplexed session: one socket for every room a user is in, an
// ES module with no dependencies (`import { RoomcastSession } from "/session.js"`).
//
//   const s = new RoomcastSession({ token });          // or { user, username } with auth off
//   s.addEventListener("message", (e) => render(e.detail.room_id, e.detail));
//   s.addEventListener("user_message", (e) => notify(e.detail.data));   // sent to this user
//   s.addEventListener("status", (e) => markOnline(e.detail.user_id, e.detail.online));
//   s.connect();
//   await s.subscribe("general");
//   await s.send("general", "hello");                  // resolves once stored and published
//   s.watch(["bob", "carol"]);
//
// Across reconnects each room resumes with its own `since` (the last offset
// seen in it), watched users are watched again, and unacknowledged sends go
// again with the same `client_id` (the server never stores one twice).

import { SendError, State } from "./client.js";

const FATAL = new Set([4001, 4003, 4004, 4009]);
const RIGHT_AWAY = new Set([1001, 1012, 4010]);
const RETRY_SEND = new Set(["unavailable", "outcome_unknown"]);

function defaultBase() {
  if (typeof location === "undefined") return "ws://localhost:8000";
  return (location.protocol === "https:" ? "wss://" : "ws://") + location.host;
}

export class RoomcastSession extends EventTarget {
  /**
   * @param {object} o
   * @param {string} [o.token]     JWT (`?token=`); its subject is the user
   * @param {string} [o.user]      user id, with auth off
   * @param {string} [o.username]  display name, with auth off
   * @param {string} [o.url]       ws(s)://host of a node or load balancer (default: this page's host)
   * @param {object} [o.backoff]   { initial: 250, max: 10000, factor: 2, jitter: 0.5 } (ms)
   * @param {number} [o.ackTimeout] ms before an unacknowledged send rejects (10000)
   */
  constructor(o) {
    super();
    if (!o || (!o.user && !o.token)) throw new TypeError("user or token is required");
    this.user = o.user ?? null;
    this.token = o.token ?? null;
    this.username = o.username ?? null;
    this.base = (o.url ?? defaultBase()).replace(/\/$/, "");
    this.backoff = { initial: 250, max: 10000, factor: 2, jitter: 0.5, ...(o.backoff ?? {}) };
    this.ackTimeout = o.ackTimeout ?? 10000;
    this.state = State.OFFLINE;
    this.nodeId = null;
    /** Rooms: room_id → { lastOffset, epoch, resume, users: Map(user_id → username), unread }. */
    this.rooms = new Map();
    /** Users whose status is followed: user_id → online (or null before the first status). */
    this.watched = new Map();
    this._ws = null;
    this._attempt = 0;
    this._stopped = true;
    this._retry = null;
    this._pending = new Map(); // client_id → { resolve, reject, timer, frame, ws, error, retry }
    this._waiting = new Map(); // room_id → [{ resolve, reject }] for subscribe()
    this._seq = 0;
  }

  connect() {
    this._stopped = false;
    if (!this._ws) this._open(this._attempt > 0 ? State.RECONNECTING : State.CONNECTING);
    return this;
  }

  stop() {
    this._stopped = true;
    clearTimeout(this._retry);
    if (this._ws) this._ws.close(1000, "client stopped");
    this._ws = null;
    for (const id of [...this._pending.keys()]) this._settle(id, new SendError("stopped", "client stopped"));
    this._setState(State.OFFLINE);
  }

  /** Joins a room (kept across reconnects). Resolves with the `subscribed` frame. */
  subscribe(room, { since } = {}) {
    if (!this.rooms.has(room)) {
      this.rooms.set(room, { lastOffset: since ?? 0, epoch: null, resume: since !== undefined, users: new Map(), unread: 0 });
    }
    const done = new Promise((resolve, reject) => {
      const list = this._waiting.get(room) ?? [];
      list.push({ resolve, reject });
      this._waiting.set(room, list);
    });
    this._sendNow(this._subscribeFrame(room));
    return done;
  }

  unsubscribe(room) {
    this.rooms.delete(room);
    this._sendNow({ type: "unsubscribe", room_id: room });
  }

  /** Sends a message to a subscribed room. Resolves with `{ id, offset }` once stored and published. */
  send(room, content, clientId = this._nextId()) {
    return new Promise((resolve, reject) => {
      const p = { resolve, reject, frame: { type: "message", room_id: room, content, client_id: clientId }, ws: null, error: null, retry: 0 };
      p.timer = setTimeout(() => {
        this._pending.delete(clientId);
        clearTimeout(p.retryTimer);
        reject(p.error ?? new SendError("timeout", "no acknowledgement in time; the message may have been stored"));
      }, this.ackTimeout);
      this._pending.set(clientId, p);
      this._sendPending(p);
    });
  }

  typing(room, isTyping = true) {
    this._sendNow({ type: "typing", room_id: room, is_typing: isTyping });
  }

  /** Follows these users' online status (`status` events; kept across reconnects). */
  watch(userIds) {
    const fresh = userIds.filter((u) => !this.watched.has(u));
    fresh.forEach((u) => this.watched.set(u, null));
    if (fresh.length) this._sendNow({ type: "watch", user_ids: fresh });
  }

  unwatch(userIds) {
    userIds.forEach((u) => this.watched.delete(u));
    this._sendNow({ type: "unwatch", user_ids: userIds });
  }

  /** Replaces the token (before it expires) without reconnecting. */
  refresh(token) {
    this.token = token;
    this._sendNow({ type: "refresh", token });
  }

  // ---- internals ----

  _subscribeFrame(room) {
    const r = this.rooms.get(room);
    const f = { type: "subscribe", room_id: room };
    if (r && r.resume) f.since = String(r.lastOffset);
    return f;
  }

  _nextId() {
    this._seq += 1;
    return `${this.user ?? "t"}-${Date.now().toString(36)}-${this._seq}-${Math.random().toString(36).slice(2, 8)}`;
  }

  _url() {
    const q = new URLSearchParams();
    if (this.token) q.set("token", this.token);
    if (this.user && !this.token) q.set("user_id", this.user);
    if (this.username) q.set("username", this.username);
    return `${this.base}/ws?${q}`;
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
      return this._closed({ code: 1006, reason: String(err) });
    }
    this._ws = ws;
    ws.onmessage = (e) => {
      if (ws !== this._ws) return;
      try {
        this._frame(JSON.parse(e.data));
      } catch {}
    };
    ws.onclose = (e) => {
      if (ws !== this._ws) return;
      this._ws = null;
      this._closed(e);
    };
  }

  _sendPending(p) {
    if (this.state !== State.CONNECTED || !this._ws || p.ws === this._ws) return;
    p.ws = this._ws;
    this._ws.send(JSON.stringify(p.frame));
  }

  _sendNow(frame) {
    if (this.state === State.CONNECTED && this._ws) this._ws.send(JSON.stringify(frame));
  }

  _frame(f) {
    const room = f.room_id && this.rooms.get(f.room_id);
    switch (f.type) {
      case "connected":
        this.nodeId = f.node_id;
        this.user = this.user ?? f.user_id;
        this._attempt = 0;
        this._setState(State.CONNECTED, { nodeId: f.node_id });
        this._emit("connected", f);
        // Every room again, each from its own position; then the watched
        // users; then the sends that were never acknowledged.
        for (const r of this.rooms.keys()) this._ws.send(JSON.stringify(this._subscribeFrame(r)));
        if (this.watched.size) this._sendNow({ type: "watch", user_ids: [...this.watched.keys()] });
        for (const p of this._pending.values()) this._sendPending(p);
        break;
      case "subscribed": {
        if (!room) break;
        const reset = (room.epoch !== null && f.epoch !== room.epoch) || f.recovered === false;
        if (reset) {
          room.lastOffset = f.offset;
          this._emit("reset", { room_id: f.room_id, offset: f.offset, epoch: f.epoch });
        } else if (f.recovered === undefined) {
          room.lastOffset = f.offset;
        }
        room.epoch = f.epoch;
        room.resume = true;
        (this._waiting.get(f.room_id) ?? []).forEach((w) => w.resolve(f));
        this._waiting.delete(f.room_id);
        this._emit("subscribed", f);
        break;
      }
      case "presence":
        if (room) room.users = new Map(f.users.map((u) => [u.user_id, u.username]));
        this._emit("presence", f);
        break;
      case "message":
        if (!room || f.offset <= room.lastOffset) return;
        room.lastOffset = f.offset;
        if (f.user_id !== this.user) room.unread += 1;
        if (f.client_id && this._pending.has(f.client_id) && f.user_id === this.user) {
          this._settle(f.client_id, null, { id: f.id, offset: f.offset });
        }
        this._emit("message", f);
        break;
      case "ack":
        if (f.client_id) this._settle(f.client_id, null, { id: f.id, offset: f.offset });
        break;
      case "error": {
        const p = f.client_id && this._pending.get(f.client_id);
        if (p && RETRY_SEND.has(f.code)) {
          p.error = new SendError(f.code, f.message);
          p.ws = null;
          clearTimeout(p.retryTimer);
          p.retryTimer = setTimeout(() => this._pending.get(f.client_id) === p && this._sendPending(p), Math.min(2000, 250 * 2 ** p.retry++));
        } else if (p) {
          this._settle(f.client_id, new SendError(f.code, f.message));
        } else if (f.room_id && this._waiting.has(f.room_id)) {
          // The subscription was refused: the room is not kept.
          this.rooms.delete(f.room_id);
          this._waiting.get(f.room_id).forEach((w) => w.reject(new SendError(f.code, f.message)));
          this._waiting.delete(f.room_id);
        }
        this._emit("error", f);
        break;
      }
      case "user_joined":
        if (room) room.users.set(f.user_id, f.username);
        this._emit("joined", f);
        break;
      case "user_left":
        if (room) room.users.delete(f.user_id);
        this._emit("left", f);
        break;
      case "status":
        if (this.watched.has(f.user_id)) this.watched.set(f.user_id, f.online);
        this._emit("status", f);
        break;
      case "unsubscribed":
      case "typing":
      case "user_message":
      case "refreshed":
        if (f.type === "unsubscribed") this.rooms.delete(f.room_id);
        this._emit(f.type, f);
        break;
      default:
        break;
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

  _closed(e) {
    const code = e.code ?? 1006;
    const reason = e.reason ?? "";
    if (this._stopped) return this._setState(State.OFFLINE, { code, reason });
    if (FATAL.has(code)) {
      this._stopped = true;
      for (const id of [...this._pending.keys()]) this._settle(id, new SendError("closed", `closed ${code}: ${reason}`));
      this._emit("error", { code: `close_${code}`, message: reason || `closed with ${code}` });
      return this._setState(State.OFFLINE, { code, reason });
    }
    this._setState(State.RECONNECTING, { code, reason });
    const { initial, max, factor, jitter } = this.backoff;
    const delay = RIGHT_AWAY.has(code) && this._attempt === 0
      ? 0
      : Math.round(Math.min(max, initial * factor ** this._attempt) * (1 - jitter * Math.random()));
    this._attempt += 1;
    clearTimeout(this._retry);
    this._retry = setTimeout(() => !this._stopped && this._open(State.RECONNECTING), delay);
  }
}
