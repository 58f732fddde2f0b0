// A chat-service client with no dependencies: works in browsers and in
// Node >= 22 (built-in WebSocket). It keeps one room's messages in a
// MessageStore, reconnects by itself (jittered exponential backoff, across a
// list of gateways) and recovers with `since`/`epoch`, refreshes JWTs, and
// turns `send()` into a promise settled by the `ack` or `error` frame.
//
// See README.md in this directory, and the service README's "Protocol".

import { backoffDelay, hintedDelay, retryHintMs } from "./backoff.js";
import { EVENT_TYPES, MessageStore } from "./store.js";
import { SseSocket } from "./sse.js";

export { MessageStore } from "./store.js";
export { backoffDelay, hintedDelay, retryHintMs } from "./backoff.js";
export { SseSocket, FetchEventSource } from "./sse.js";

/** @typedef {import("./store.js").ChatMessage} ChatMessage */
/** @typedef {import("./store.js").RoomEvent} RoomEvent */
/** @typedef {"idle"|"connecting"|"open"|"reconnecting"|"closed"} ConnState */

/**
 * @typedef {object} ChatClientOptions
 * @property {string|string[]} url WebSocket endpoint(s), e.g. `wss://chat.example.com/ws`.
 *   With several, a drop moves the client to the next one (a draining gateway's 1001).
 * @property {string} room
 * @property {string} [username] Display name (auth off; with auth on the token's name is used).
 * @property {string} [token] A JWT for auth-on deployments.
 * @property {string} [session] An anonymous session (auth off) to resume: keeps the
 *   server-issued `user_id`. Default: the one kept in `sessionStorage` (browsers), if any.
 * @property {{getItem: Function, setItem: Function}|null} [sessionStore] Where the
 *   anonymous session is kept between page loads (default: `sessionStorage` when present;
 *   `null` keeps it in memory only).
 * @property {() => Promise<string>|string} [getToken] Returns a fresh JWT: called before
 *   the token expires (then sent as a `refresh` frame) and after a 4001 close.
 * @property {number} [refreshLeadMs=30000] How long before `exp` to refresh.
 * @property {number} [queueLimit=32] Most unacknowledged requests held (sent or queued offline).
 * @property {import("./backoff.js").BackoffOptions} [backoff]
 * @property {number} [requestTimeoutMs=5000] Deadline of a `presence()` answer.
 * @property {number} [connectTimeoutMs=10000] A socket not open by then is closed and retried.
 * @property {any} [WebSocket] A WebSocket constructor (default: the global one).
 * @property {"auto"|"ws"|"sse"} [transport="auto"] `auto`: WebSocket, and after it fails
 *   to open twice in a row, server-sent events plus HTTP requests (`sse.js`), trying the
 *   WebSocket again every `wsRetryMs`. `ws` / `sse`: that transport only.
 * @property {number} [wsRetryMs=60000] How often an `auto` client on SSE probes the WebSocket.
 * @property {any} [EventSource] An EventSource constructor (default: the global one, else
 *   a fetch-based reader).
 * @property {Function} [fetch] The fetch function of the SSE transport.
 * @property {{setTimeout: Function, clearTimeout: Function}} [timers]
 * @property {() => number} [random] Source of [0, 1) for the jitter.
 */

/** An `error` frame (or a local failure) as an exception with its `code`. */
export class ChatError extends Error {
  /** @param {string} code @param {string} [message] @param {object} [data] */
  constructor(code, message, data) {
    super(message || code);
    this.name = "ChatError";
    this.code = code;
    this.data = data;
  }
}

/** Gateways forward one `typing` frame per connection per second; a little more is safe. */
const TYPING_INTERVAL_MS = 1050;

/** Resends of a request answered `unavailable` before its promise rejects. */
const UNAVAILABLE_RETRIES = 3;

/** Close codes after which reconnecting cannot help. */
const FATAL_CLOSES = new Map([[4003, "banned"]]);

export class ChatClient {
  /** @param {ChatClientOptions} opts */
  constructor(opts) {
    if (!opts || !opts.url || !opts.room) throw new TypeError("ChatClient needs url and room");
    this.urls = Array.isArray(opts.url) ? opts.url.slice() : [opts.url];
    this.room = opts.room;
    this.username = opts.username;
    this.token = opts.token;
    this.opts = opts;
    this.sessionStore = opts.sessionStore !== undefined ? opts.sessionStore : defaultSessionStore();
    /** The anonymous session (auth off): sent as `session=` on every (re)connect. */
    this.session = opts.session ?? readSession(this.sessionStore);
    /** This client's `user_id` once the server said it (auth off: `anon-…`). */
    this.userId = undefined;
    this.store = new MessageStore();
    /** @type {ConnState} */
    this.state = "idle";
    this.WS = opts.WebSocket || globalThis.WebSocket;
    this.timers = opts.timers || globalThis;
    this.urlIndex = 0;
    this.attempt = 0;
    /** @type {Map<string, {frame: string, resolve: Function, reject: Function, retries?: number, inflight?: number}>} in send order */
    this.pending = new Map();
    /** After an `unavailable` refusal: the client_id the resend starts from, and its timer. */
    this.resendFrom = null;
    this.resendTimer = null;
    /** @type {Map<string, Set<Function>>} */
    this.listeners = new Map();
    this.ws = null;
    this.hist = null;
    this.presenceWaiters = [];
    this.needFreshToken = false;
    this.retryTimer = null;
    this.refreshTimer = null;
    this.stopped = false;
    this.opened = null;
    /** Whether the SSE transport is in use (option, or after failed WebSockets). */
    this.useSse = opts.transport === "sse";
    /** WebSockets that failed to open in a row (`auto` falls back at 2). */
    this.wsFailures = 0;
    this.probeTimer = null;
    this.probe = null;
  }

  /** The transport in use: `"ws"` or `"sse"`. */
  get transport() {
    return this.useSse ? "sse" : "ws";
  }

  // ---- events ------------------------------------------------------------

  /**
   * Listen to `message` (a message new to the store), `update` (one was edited,
   * deleted or reacted to), `change` (the store changed), `history`, `reset`,
   * `presence`, `join`, `leave`, `typing`, `read`, `state` and `error`.
   * @param {string} type @param {(data: any) => void} fn
   * @returns {() => void} removes the listener
   */
  on(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(fn);
    return () => this.listeners.get(type)?.delete(fn);
  }

  /** @param {string} type @param {any} data */
  emit(type, data) {
    for (const fn of this.listeners.get(type) || []) {
      try { fn(data); } catch (e) { queueMicrotask(() => { throw e; }); }
    }
  }

  // ---- connection --------------------------------------------------------

  /** Connect; resolves once the first connection is open. @returns {Promise<void>} */
  connect() {
    if (!this.opened) {
      this.opened = new Promise((resolve, reject) => { this.openWaiter = { resolve, reject }; });
      this.opened.catch(() => {});
      this.stopped = false;
      this.openSocket();
    }
    return this.opened;
  }

  /** Close for good: pending requests are rejected with `closed`. */
  close() {
    this.stopped = true;
    this.clearTimers();
    const ws = this.ws;
    this.ws = null;
    if (ws) try { ws.close(1000, "bye"); } catch { /* already closed */ }
    const err = new ChatError("closed", "client closed");
    this.failAll(err);
    this.openWaiter?.reject(err); // no effect once the first open resolved it
    this.setState("closed");
  }

  /** Drop the current socket and reconnect now (e.g. after a network change). */
  reconnect() {
    if (this.stopped) return;
    const ws = this.ws;
    if (ws) {
      this.ws = null;
      try { ws.close(1000, "reconnect"); } catch { /* ignore */ }
    }
    this.timers.clearTimeout(this.retryTimer);
    this.openSocket();
  }

  /** @param {ConnState} state @param {object} [info] */
  setState(state, info = {}) {
    if (this.state === state && state !== "reconnecting") return;
    this.state = state;
    this.emit("state", { state, ...info });
  }

  async openSocket() {
    this.retryTimer = null;
    if (this.stopped) return;
    this.setState(this.state === "idle" ? "connecting" : "reconnecting", { attempt: this.attempt });
    if (this.opts.getToken && (this.needFreshToken || !this.token)) {
      try {
        this.token = await this.opts.getToken();
        this.needFreshToken = false;
      } catch (e) {
        this.emit("error", new ChatError("token_refresh_failed", String(e)));
        return this.retryLater();
      }
      if (this.stopped) return;
    }
    let ws;
    try {
      ws = this.useSse
        ? new SseSocket(this.buildUrl(), { EventSource: this.opts.EventSource, fetch: this.opts.fetch })
        : new this.WS(this.buildUrl());
    } catch (e) {
      this.emit("error", new ChatError("connect_failed", String(e)));
      // Counted like a socket that closed before opening (the fallback rule).
      return this.onClose(1006, "connect failed");
    }
    this.ws = ws;
    this.hist = null;
    // A socket that does not open in time (a black-holed address) is given up.
    const giveUp = (reason) => {
      if (ws !== this.ws || this.state === "open") return;
      try { ws.close(); } catch { /* not open yet */ }
      this.onClose(1006, reason);
    };
    this.connectTimer = this.timers.setTimeout(() => giveUp("connect timeout"),
      this.opts.connectTimeoutMs ?? 10_000);
    ws.onopen = () => { if (ws === this.ws) this.onOpen(); };
    ws.onmessage = (e) => { if (ws === this.ws) this.onFrame(e.data); };
    ws.onclose = (e) => { if (ws === this.ws) this.onClose(e.code, e.reason); };
    // A failed handshake: browsers follow with a close event, Node 20's
    // experimental WebSocket does not, so it counts as the close itself.
    ws.onerror = () => giveUp("connect failed");
  }

  buildUrl() {
    const url = new URL(this.urls[this.urlIndex % this.urls.length]);
    url.searchParams.set("room", this.room);
    if (this.token) url.searchParams.set("token", this.token);
    else {
      if (this.username) url.searchParams.set("username", this.username);
      if (this.session) url.searchParams.set("session", this.session);
    }
    if (this.store.lastSeq > 0) {
      url.searchParams.set("since", String(this.store.lastSeq));
      if (this.store.epoch !== undefined) url.searchParams.set("epoch", this.store.epoch);
    }
    return url.toString();
  }

  onOpen() {
    this.timers.clearTimeout(this.connectTimer);
    this.attempt = 0;
    if (!this.useSse) this.wsFailures = 0;
    this.setState("open", { url: this.urls[this.urlIndex % this.urls.length], transport: this.transport });
    this.openWaiter?.resolve();
    this.scheduleRefresh();
    // Resend everything not acknowledged, in order and with the same client_id:
    // the gateway acks a repeat of a stored message with its original id.
    this.cancelResend();
    for (const p of this.pending.values()) {
      p.inflight = 0; // the old socket's answers will never come
      this.transmit(p);
    }
  }

  /** @param {number} code @param {string} reason */
  onClose(code, reason) {
    const neverOpened = this.state !== "open";
    this.ws = null;
    this.timers.clearTimeout(this.connectTimer);
    this.hist = null;
    this.timers.clearTimeout(this.refreshTimer);
    if (this.stopped) return;
    if (FATAL_CLOSES.has(code) || (code === 4001 && !this.opts.getToken)) {
      const err = new ChatError(FATAL_CLOSES.get(code) || "token_expired", reason);
      this.stopped = true;
      this.emit("error", err);
      this.failAll(err);
      this.openWaiter?.reject(err);
      this.setState("closed", { code, reason });
      return;
    }
    if (code === 4001) this.needFreshToken = true;
    if (neverOpened && !this.useSse && (this.opts.transport ?? "auto") === "auto") {
      this.wsFailures++;
      if (this.wsFailures >= 2) {
        // WebSockets do not get through (a proxy, a carrier): SSE + HTTP,
        // with the same recovery, until a probe finds them working again.
        this.useSse = true;
        this.attempt = 0;
        this.emit("transport", { transport: "sse" });
        this.scheduleWsProbe();
        return this.openSocket();
      }
    }
    this.urlIndex = (this.urlIndex + 1) % this.urls.length;
    this.retryLater({ code, reason });
  }

  /** @param {object} [info] */
  retryLater(info = {}) {
    if (this.stopped) return;
    // A gateway refusing for overload (1013) says how long to stay away.
    const hint = info.code === 1013 ? retryHintMs(info.reason) : undefined;
    const delayMs = hint === undefined
      ? backoffDelay(this.attempt, this.opts.backoff, this.opts.random)
      : hintedDelay(hint, this.attempt, this.opts.backoff, this.opts.random);
    this.attempt++;
    this.setState("reconnecting", { ...info, attempt: this.attempt, delayMs });
    this.retryTimer = this.timers.setTimeout(() => this.openSocket(), delayMs);
  }

  /** While on SSE (`auto`), tries a WebSocket every `wsRetryMs`; one that opens brings the client back to it. */
  scheduleWsProbe() {
    this.timers.clearTimeout(this.probeTimer);
    this.probeTimer = this.timers.setTimeout(() => {
      this.probeTimer = null;
      if (this.stopped || !this.useSse) return;
      let probe;
      try { probe = new this.WS(this.buildUrl()); } catch { return this.scheduleWsProbe(); }
      this.probe = probe;
      let settled = false;
      const failed = () => {
        if (settled) return;
        settled = true;
        this.probe = null;
        if (!this.stopped) this.scheduleWsProbe();
      };
      probe.onopen = () => {
        if (settled) return;
        settled = true;
        this.probe = null;
        try { probe.close(1000, "probe"); } catch { /* ignore */ }
        if (this.stopped) return;
        this.useSse = false;
        this.wsFailures = 0;
        this.emit("transport", { transport: "ws" });
        this.reconnect();
      };
      probe.onerror = failed;
      probe.onclose = failed;
    }, this.opts.wsRetryMs ?? 60_000);
  }

  clearTimers() {
    this.timers.clearTimeout(this.probeTimer);
    if (this.probe) try { this.probe.close(); } catch { /* not open */ }
    this.probe = this.probeTimer = null;
    this.cancelResend();
    this.timers.clearTimeout(this.retryTimer);
    this.timers.clearTimeout(this.refreshTimer);
    this.timers.clearTimeout(this.typingTimer);
    this.timers.clearTimeout(this.connectTimer);
    this.retryTimer = this.refreshTimer = this.typingTimer = this.connectTimer = null;
  }

  /** @param {Error} err */
  failAll(err) {
    this.cancelResend();
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    for (const w of this.presenceWaiters.splice(0)) w.reject(err);
  }

  // ---- token refresh -----------------------------------------------------

  scheduleRefresh() {
    this.timers.clearTimeout(this.refreshTimer);
    const exp = jwtExp(this.token);
    if (!exp || !this.opts.getToken) return;
    const lead = this.opts.refreshLeadMs ?? 30_000;
    const delay = Math.max(0, exp * 1000 - Date.now() - lead);
    this.refreshTimer = this.timers.setTimeout(async () => {
      try {
        const token = await this.opts.getToken();
        this.token = token;
        this.sendRaw({ type: "refresh", data: { token } });
        this.scheduleRefresh();
      } catch (e) {
        this.emit("error", new ChatError("token_refresh_failed", String(e)));
      }
    }, delay);
  }

  // ---- inbound -----------------------------------------------------------

  /** @param {string} text */
  onFrame(text) {
    let frame;
    try { frame = JSON.parse(text); } catch { return; }
    const data = frame && frame.data;
    const type = frame && frame.type;
    // Room events (edit, delete, reaction) update a message in the store.
    if (EVENT_TYPES.has(type)) return this.applyChanges([this.store.applyEvent({ ...data, type })]);
    switch (type) {
      case "history": return this.onHistory(data || {});
      case "message": return this.applyChanges([this.store.applyMessage(data)]);
      case "ack": return this.settle(data, null);
      case "error": {
        const err = new ChatError(data?.code || "unknown", data?.message, data);
        if (data?.client_id && this.pending.has(data.client_id)) return this.settle(data, err);
        return this.emit("error", err);
      }
      case "session":
        // Auth off: the server-issued identity; kept so a reconnect (or a
        // reload, via sessionStorage) stays the same user.
        this.session = data?.session;
        this.userId = data?.user_id;
        writeSession(this.sessionStore, this.session);
        return this.emit("session", data);
      case "presence":
        this.presenceWaiters.shift()?.resolve(data);
        return this.emit("presence", data);
      case "typing":
        // Over SSE the gateway cannot tell this client's stream from others.
        if (this.useSse && this.userId && data?.user_id === this.userId) return undefined;
        return this.emit(type, data);
      case "join":
      case "leave":
      case "read":
        return this.emit(type, data);
      default:
        return undefined; // unknown types are ignored (forward compatibility)
    }
  }

  /** Split answers (`more: true`) are assembled, then applied at once. @param {any} data */
  onHistory(data) {
    if (!this.hist) this.hist = { messages: [], reset: undefined, truncated: false, epoch: undefined };
    const h = this.hist;
    h.messages.push(...(data.messages || []));
    h.reset = h.reset || data.reset;
    h.truncated = h.truncated || data.truncated === true;
    if (data.epoch !== undefined) h.epoch = data.epoch;
    if (data.more) return;
    this.hist = null;
    const changes = this.store.applyHistory(h);
    if (h.reset) this.emit("reset", { reason: h.reset });
    this.emit("history", { messages: h.messages, truncated: h.truncated, reset: h.reset, epoch: h.epoch });
    this.applyChanges(changes, Boolean(h.reset));
  }

  /** @param {Array<import("./store.js").Change|null>} changes @param {boolean} [force] */
  applyChanges(changes, force = false) {
    let any = force;
    for (const c of changes) {
      if (!c) continue;
      any = true;
      this.emit(c.kind, c.kind === "message" ? c.message : { message: c.message, event: c.event });
    }
    if (any) this.emit("change", this.store);
  }

  /** @param {any} data @param {ChatError|null} err */
  settle(data, err) {
    const id = data && data.client_id;
    const p = this.pending.get(id);
    if (!p) return;
    p.inflight = Math.max(0, (p.inflight ?? 1) - 1);
    if (err) {
      // A newer copy of this request is on its way: its answer decides.
      if (p.inflight > 0) return;
      if (err.code === "unavailable") return this.onUnavailable(id, p, err);
    }
    this.pending.delete(id);
    if (err) p.reject(err);
    else p.resolve(data);
  }

  /**
   * `unavailable`: not stored (Redis down, backlog full, replicas slow). The
   * gateway then refuses every later request of this connection until this
   * client_id comes back (DESIGN.md, "Send order after a refusal"), so after
   * one backoff everything pending from this request on is resent, in its
   * original order and with the same client_ids: the messages are stored in
   * sending order, each once. Gives up after a few rounds.
   * @param {string} id @param {any} p @param {ChatError} err
   */
  onUnavailable(id, p, err) {
    // Already part of a scheduled resend that starts before it.
    if (this.resendTimer !== null && this.isBefore(this.resendFrom, id)) return;
    if ((p.retries ?? 0) >= UNAVAILABLE_RETRIES) {
      this.pending.delete(id);
      p.reject(err);
      // The gateway would wait for this client_id forever: a new connection
      // starts with no refusal behind it (and resends the rest in order).
      if (this.resendFrom === id || this.resendTimer === null) {
        this.cancelResend();
        if (this.pending.size > 0) this.reconnect();
      }
      return;
    }
    p.retries = (p.retries ?? 0) + 1;
    this.cancelResend();
    this.resendFrom = id;
    const delay = backoffDelay(p.retries, { initialMs: 500, maxMs: 5000 }, this.opts.random);
    this.resendTimer = this.timers.setTimeout(() => this.resendPending(), delay);
  }

  /** Sends every pending request from `resendFrom` on, in send order. */
  resendPending() {
    const from = this.resendFrom;
    this.resendTimer = this.resendFrom = null;
    let on = false;
    for (const [id, p] of this.pending) {
      on ||= id === from;
      if (on) this.transmit(p);
    }
  }

  cancelResend() {
    this.timers.clearTimeout(this.resendTimer);
    this.resendTimer = this.resendFrom = null;
  }

  /** Whether pending request `a` was sent before `b` (or is `b`). @param {string} a @param {string} b */
  isBefore(a, b) {
    for (const id of this.pending.keys()) {
      if (id === a) return true;
      if (id === b) return false;
    }
    return false;
  }

  /** Sends one pending request, counting the copies awaiting an answer. @param {any} p */
  transmit(p) {
    if (this.sendText(p.frame)) p.inflight = (p.inflight ?? 0) + 1;
  }

  // ---- outbound ----------------------------------------------------------

  /** @param {object} frame @returns {boolean} whether it went out */
  sendRaw(frame) {
    return this.sendText(JSON.stringify(frame));
  }

  /** An already serialized frame. @param {string} text @returns {boolean} whether it went out */
  sendText(text) {
    if (!this.ws || this.state !== "open") return false;
    this.ws.send(text);
    return true;
  }

  /**
   * An acknowledged request: queued while offline (bounded), resent after a
   * reconnect with the same `client_id`, settled by its `ack` or `error`.
   * @param {string} type @param {object} data
   * @returns {Promise<{client_id: string, id: string, timestamp?: string}>}
   */
  request(type, data) {
    if (this.stopped) return Promise.reject(new ChatError("closed", "client closed"));
    const queueLimit = this.opts.queueLimit ?? 32;
    if (this.pending.size >= queueLimit) {
      return Promise.reject(new ChatError("queue_full", `more than ${queueLimit} requests waiting`));
    }
    const client_id = newClientId();
    const frame = JSON.stringify({ type, data: { room: this.room, ...data, client_id } });
    return new Promise((resolve, reject) => {
      const p = { frame, resolve, reject, inflight: 0 };
      this.pending.set(client_id, p);
      // While a resend is scheduled the gateway would refuse it: it goes
      // out with that resend, behind the requests sent before it.
      if (this.resendTimer === null) this.transmit(p);
    });
  }

  /**
   * Send a message. Resolves with the `ack` once it is stored.
   * @param {string} message
   * @param {{replyTo?: string, attachments?: object[]}} [extra]
   */
  send(message, extra = {}) {
    const data = { message };
    if (extra.replyTo) data.reply_to = extra.replyTo;
    if (extra.attachments) data.attachments = extra.attachments;
    return this.request("message", data);
  }

  /** Edit one of your messages. @param {string} id @param {string} message */
  edit(id, message) { return this.request("edit", { id, message }); }

  /** Delete one of your messages. @param {string} id */
  delete(id) { return this.request("delete", { id }); }

  /** Add or remove a reaction. @param {string} id @param {string} emoji @param {"add"|"remove"} [op] */
  react(id, emoji, op = "add") { return this.request("react", { id, emoji, op }); }

  /**
   * Tell the room you are typing, or stopped (not queued offline). Gateways
   * forward at most one `typing` frame per connection per second, so a call
   * within a second of the last frame is held and only the latest state is
   * sent when the second is up.
   * @param {boolean} active
   * @returns {boolean} false when offline
   */
  typing(active) {
    if (!this.ws || this.state !== "open") return false;
    this.typingState = Boolean(active);
    const wait = (this.typingSentAt ?? -Infinity) + TYPING_INTERVAL_MS - Date.now();
    if (wait > 0) {
      this.typingTimer ??= this.timers.setTimeout(() => {
        this.typingTimer = null;
        this.typing(this.typingState);
      }, wait);
      return true;
    }
    this.typingSentAt = Date.now();
    return this.sendRaw({ type: "typing", data: { active: this.typingState } });
  }

  /** Mark the room read up to `seq` (not queued offline). @param {number} seq */
  read(seq) { return this.sendRaw({ type: "read", data: { seq } }); }

  /** Ask for older history before the oldest message held. @param {number} [limit] */
  loadOlder(limit = 50) {
    const oldest = this.store.list[0]?.seq;
    const data = { limit };
    if (oldest) data.before_seq = oldest;
    return this.sendRaw({ type: "history", data });
  }

  /** Who is in the room: `{room, count, users: [{username, user_id, connections}]}`. */
  presence() {
    return new Promise((resolve, reject) => {
      if (!this.sendRaw({ type: "presence" })) return reject(new ChatError("offline", "not connected"));
      const timeoutMs = this.opts.requestTimeoutMs ?? 5000;
      const waiter = {
        resolve: (d) => { this.timers.clearTimeout(waiter.timer); resolve(d); },
        reject: (e) => { this.timers.clearTimeout(waiter.timer); reject(e); },
        timer: null,
      };
      waiter.timer = this.timers.setTimeout(() => {
        const i = this.presenceWaiters.indexOf(waiter);
        if (i >= 0) this.presenceWaiters.splice(i, 1);
        reject(new ChatError("timeout", "no presence answer"));
      }, timeoutMs);
      this.presenceWaiters.push(waiter);
    });
  }
}

/** A random `client_id` (crypto.getRandomValues also works on plain-http pages). */
export function newClientId() {
  const bytes = new Uint8Array(12);
  globalThis.crypto.getRandomValues(bytes);
  return "c" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The `exp` claim of a JWT, without verifying it (the server does). @param {string} [token] */
export function jwtExp(token) {
  if (!token) return undefined;
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
    return typeof json.exp === "number" ? json.exp : undefined;
  } catch {
    return undefined;
  }
}

/** Key of the anonymous session in `sessionStorage`. */
const SESSION_KEY = "chat-session";

function defaultSessionStore() {
  try { return globalThis.sessionStorage || null; } catch { return null; }
}

/** @param {{getItem: Function}|null} store */
function readSession(store) {
  try { return store?.getItem(SESSION_KEY) || undefined; } catch { return undefined; }
}

/** @param {{setItem: Function}|null} store @param {string|undefined} session */
function writeSession(store, session) {
  try { if (store && session) store.setItem(SESSION_KEY, session); } catch { /* private mode */ }
}
