// The SSE transport: a WebSocket look-alike over `GET /sse` (server-sent
// events, receiving) and `POST /rooms/{room}/messages` and `/events`
// (sending), for networks that block WebSocket upgrades. ChatClient drives it
// exactly like a WebSocket (onopen, onmessage, onclose, send, close), so acks,
// the offline queue, recovery with `since`, dedupe by id and client_id all
// stay in one place. Each HTTP answer comes back as the frame `/ws` would
// have sent: 201 as an `ack`, a 4xx/5xx as an `error` with the request's
// client_id, 204 as nothing. Requests go out one at a time, in send order
// (the gateway keeps the order a connection sends in; parallel requests
// would not).
//
// Receiving uses the browser's EventSource; where there is none (Node), a
// small fetch-based reader with the same behaviour (it resumes with
// `Last-Event-ID`).

/** Frames the gateway answers with an `ack` (sent to `/messages` or `/events`). */
const HTTP_PATHS = { message: "messages" };

/** The `/sse` URL of a `/ws` URL (same query: room, token, session, since, epoch). */
export function sseUrl(wsUrl) {
  const url = new URL(wsUrl);
  url.protocol = url.protocol === "wss:" ? "https:" : url.protocol === "ws:" ? "http:" : url.protocol;
  url.pathname = url.pathname.replace(/\/ws$/, "/sse");
  return url;
}

/** A WebSocket-shaped connection over SSE + HTTP. */
export class SseSocket {
  /**
   * @param {string} wsUrl the URL ChatClient built for `/ws`
   * @param {{EventSource?: any, fetch?: Function}} [opts]
   */
  constructor(wsUrl, opts = {}) {
    this.url = sseUrl(wsUrl);
    const q = this.url.searchParams;
    this.room = q.get("room");
    this.token = q.get("token") || undefined;
    this.session = q.get("session") || undefined;
    this.username = q.get("username") || undefined;
    this.fetch = opts.fetch || globalThis.fetch.bind(globalThis);
    this.closed = false;
    this.chain = Promise.resolve();
    const ES = opts.EventSource || globalThis.EventSource || FetchEventSource;
    this.es = new ES(this.url.toString(), ES === FetchEventSource ? { fetch: this.fetch } : undefined);
    this.everOpen = false;
    this.es.onopen = () => {
      if (this.closed) return;
      // A reconnect of the EventSource itself (Last-Event-ID) is not a new open.
      if (this.everOpen) return;
      this.everOpen = true;
      this.onopen?.({});
    };
    this.es.onmessage = (e) => {
      if (this.closed) return;
      this.noteSession(e.data);
      this.onmessage?.({ data: e.data });
    };
    this.es.onerror = () => {
      // CONNECTING: the EventSource reconnects by itself with Last-Event-ID.
      // CLOSED (a refusal) or never opened: the client decides what is next.
      if (this.closed || (this.everOpen && this.es.readyState !== 2)) return;
      this.fail(1006, "event stream failed");
    };
  }

  /** Keeps the anonymous session the stream gives, for the HTTP requests. */
  noteSession(text) {
    if (!text.includes('"type":"session"')) return;
    try { this.session = JSON.parse(text).data.session || this.session; } catch { /* ignore */ }
  }

  fail(code, reason) {
    if (this.closed) return;
    this.closed = true;
    try { this.es.close(); } catch { /* ignore */ }
    this.onclose?.({ code, reason });
  }

  close(code = 1000, reason = "") {
    if (this.closed) return;
    this.closed = true;
    try { this.es.close(); } catch { /* ignore */ }
    queueMicrotask(() => this.onclose?.({ code, reason }));
  }

  /** Sends one client frame over HTTP, after the ones sent before it. @param {string} text */
  send(text) {
    if (this.closed) throw new Error("send on a closed connection");
    const frame = JSON.parse(text);
    if (frame.type === "refresh") {
      // No connection token to replace: later requests carry the new one.
      this.token = frame.data?.token || this.token;
      return;
    }
    this.chain = this.chain.then(() => this.post(frame)).catch(() => {});
  }

  /** @param {{type: string, data?: any}} frame */
  async post(frame) {
    const clientId = frame.data?.client_id;
    const path = HTTP_PATHS[frame.type] || "events";
    const url = new URL(`/rooms/${encodeURIComponent(this.room)}/${path}`, this.url);
    if (this.token) url.searchParams.set("token", this.token);
    else {
      if (this.session) url.searchParams.set("session", this.session);
      if (this.username) url.searchParams.set("username", this.username);
    }
    const body = path === "messages" ? frame.data : frame;
    let res;
    let answer;
    try {
      res = await this.fetch(url.toString(), {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      answer = res.status === 204 ? null : await res.json().catch(() => null);
    } catch (e) {
      return this.deliver({ type: "error", data: { code: "unavailable", message: String(e), client_id: clientId } });
    }
    if (this.closed || answer === null) return undefined;
    if (path === "messages") {
      if (res.status === 201) {
        return this.deliver({ type: "ack", data: { client_id: clientId, id: answer.id, timestamp: answer.timestamp } });
      }
      const data = answer.error || { code: "unavailable", message: `HTTP ${res.status}` };
      return this.deliver({ type: "error", data: { ...data, client_id: clientId } });
    }
    if (answer.type === "error" && clientId && !answer.data?.client_id) {
      answer.data = { ...answer.data, client_id: clientId };
    }
    return this.deliver(answer);
  }

  deliver(frame) {
    if (!this.closed) this.onmessage?.({ data: JSON.stringify(frame) });
  }
}

/**
 * A minimal EventSource over fetch (Node has none): `data:` lines, `id:`,
 * comments ignored, reconnect with `Last-Event-ID` after a dropped stream;
 * a non-200 answer closes it for good (as the standard says).
 */
export class FetchEventSource {
  constructor(url, opts = {}) {
    this.url = url;
    this.fetch = opts.fetch || globalThis.fetch.bind(globalThis);
    this.readyState = 0;
    this.lastEventId = "";
    this.abort = new AbortController();
    this.run();
  }

  close() {
    this.readyState = 2;
    this.abort.abort();
  }

  async run() {
    while (this.readyState !== 2) {
      let res;
      try {
        const headers = { accept: "text/event-stream" };
        if (this.lastEventId) headers["last-event-id"] = this.lastEventId;
        res = await this.fetch(this.url, { headers, signal: this.abort.signal });
      } catch {
        if (this.readyState === 2) return;
        this.readyState = 0;
        this.onerror?.({});
        await new Promise((r) => setTimeout(r, 1000));
        continue;
      }
      if (res.status !== 200) {
        this.readyState = 2;
        this.onerror?.({ status: res.status });
        return;
      }
      this.readyState = 1;
      this.onopen?.({});
      try {
        await this.read(res.body);
      } catch { /* dropped */ }
      if (this.readyState === 2) return;
      this.readyState = 0;
      this.onerror?.({});
      await new Promise((r) => setTimeout(r, 1000));
    }
  }

  async read(body) {
    const decoder = new TextDecoder();
    let buf = "";
    let data = [];
    let id;
    for await (const chunk of body) {
      buf += decoder.decode(chunk, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl).replace(/\r$/, "");
        buf = buf.slice(nl + 1);
        if (line === "") {
          if (id !== undefined) this.lastEventId = id;
          if (data.length && this.readyState === 1) this.onmessage?.({ data: data.join("\n"), lastEventId: this.lastEventId });
          data = [];
          id = undefined;
        } else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        else if (line.startsWith("id:")) id = line.slice(3).trim();
      }
    }
  }
}
