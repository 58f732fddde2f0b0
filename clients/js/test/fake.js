// Test doubles: a WebSocket the test drives by hand, and timers the test fires.

export class FakeSocket {
  /** @type {FakeSocket[]} every socket created, newest last */
  static all = [];
  static get last() { return FakeSocket.all[FakeSocket.all.length - 1]; }

  constructor(url) {
    this.url = new URL(url);
    this.sent = [];
    this.closed = null;
    FakeSocket.all.push(this);
  }
  send(text) {
    if (this.closed) throw new Error("send on a closed socket");
    this.sent.push(JSON.parse(text));
  }
  close(code = 1000, reason = "") {
    this.closed = { code, reason };
  }
  // ---- driven by the test ----
  open() { this.onopen?.({}); }
  frame(type, data) { this.onmessage?.({ data: JSON.stringify({ type, data }) }); }
  drop(code = 1006, reason = "") {
    this.closed = { code, reason };
    this.onclose?.({ code, reason });
  }
  sentOf(type) { return this.sent.filter((f) => f.type === type); }
}

export class FakeTimers {
  constructor() { this.next = 1; this.queue = new Map(); }
  setTimeout = (fn, ms) => { const id = this.next++; this.queue.set(id, { fn, ms }); return id; };
  clearTimeout = (id) => { this.queue.delete(id); };
  /** Run every due timer now, regardless of its delay; returns their delays. */
  fireAll() {
    const due = [...this.queue.entries()];
    this.queue.clear();
    for (const [, t] of due) t.fn();
    return due.map(([, t]) => t.ms);
  }
  get size() { return this.queue.size; }
}

/** A message record as the server sends it. */
export function msg(seq, text, extra = {}) {
  return { id: `m${seq}`, room: "r", message: text, username: "ana", timestamp: "2026-11-27T00:00:00.000Z", seq, ...extra };
}

/** Let queued promise callbacks run. */
export const tick = () => new Promise((r) => setImmediate(r));
