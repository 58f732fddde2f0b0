// The SSE fallback: after two WebSockets that never open (or with
// transport: "sse"), the client receives over an EventSource and sends over
// HTTP, behind the same API; it probes the WebSocket again later.
import { test, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { ChatClient, ChatError, FetchEventSource } from "../index.js";
import { sseUrl } from "../sse.js";
import { FakeSocket, FakeTimers, msg, tick } from "./fake.js";

/** An EventSource the test drives. */
class FakeEventSource {
  static all = [];
  static get last() { return FakeEventSource.all[FakeEventSource.all.length - 1]; }
  constructor(url) { this.url = new URL(url); this.readyState = 0; FakeEventSource.all.push(this); }
  close() { this.readyState = 2; }
  open() { this.readyState = 1; this.onopen?.({}); }
  frame(type, data) { this.onmessage?.({ data: JSON.stringify({ type, data }) }); }
  fail(readyState) { this.readyState = readyState; this.onerror?.({}); }
}

/** A fetch that records requests and answers from a queue of `[status, body]`. */
function fakeFetch() {
  const f = async (url, init) => {
    const req = { url: new URL(url), init, body: init?.body ? JSON.parse(init.body) : undefined };
    f.requests.push(req);
    const [status, body] = f.answers.shift() ?? [204, null];
    return { status, json: async () => body };
  };
  f.requests = [];
  f.answers = [];
  return f;
}

let timers;
let fetch;
beforeEach(() => {
  FakeSocket.all = [];
  FakeEventSource.all = [];
  timers = new FakeTimers();
  fetch = fakeFetch();
});

function client(extra = {}) {
  return new ChatClient({
    url: "ws://gw1/ws", room: "r", username: "ana",
    WebSocket: FakeSocket, EventSource: FakeEventSource, fetch,
    timers, random: () => 0.5, ...extra,
  });
}

const settle = async () => { for (let i = 0; i < 5; i++) await tick(); };

test("the /sse URL keeps the query of the /ws one", () => {
  const u = sseUrl("wss://chat.example/ws?room=r&since=4&epoch=e");
  assert.equal(u.toString(), "https://chat.example/sse?room=r&since=4&epoch=e");
});

test("falls back to SSE after two WebSockets fail to open, and sends over HTTP", async () => {
  const c = client();
  const transports = [];
  c.on("transport", (t) => transports.push(t.transport));
  const opened = c.connect();
  await tick();
  FakeSocket.last.drop(1006); // refused upgrade #1
  timers.fireAll();
  await tick();
  assert.equal(FakeEventSource.all.length, 0, "one failure is not enough");
  FakeSocket.last.drop(1006); // #2
  await tick();
  assert.deepEqual(transports, ["sse"]);
  const es = FakeEventSource.last;
  assert.equal(es.url.pathname, "/sse");
  assert.equal(es.url.searchParams.get("room"), "r");
  es.open();
  await opened;
  assert.equal(c.transport, "sse");
  es.frame("history", { room: "r", epoch: "e1", messages: [msg(1, "a")], latest_seq: 1 });
  es.frame("session", { user_id: "anon-1", session: "anon-1.sig" });

  fetch.answers.push([201, { id: "m2", timestamp: "t", client_id: null }]);
  const sent = c.send("hi");
  await settle();
  const [req] = fetch.requests;
  assert.equal(req.url.pathname, "/rooms/r/messages");
  assert.equal(req.url.searchParams.get("session"), "anon-1.sig", "the stream's session authenticates the POST");
  assert.equal(req.body.message, "hi");
  const ack = await sent;
  assert.equal(ack.id, "m2");
  assert.equal(ack.client_id, req.body.client_id, "the ack is matched to its request");
  // The live copy comes over the stream; the store holds it once.
  es.frame("message", msg(2, "hi", { client_id: req.body.client_id }));
  es.frame("message", msg(2, "hi"));
  assert.deepEqual(c.store.messages().map((m) => m.seq), [1, 2]);
});

test("transport: sse goes straight to SSE; errors and 204s map to /ws answers", async () => {
  const c = client({ transport: "sse" });
  c.connect();
  await tick();
  assert.equal(FakeSocket.all.length, 0);
  FakeEventSource.last.open();
  await tick();
  fetch.answers.push([403, { type: "error", data: { code: "forbidden", message: "not yours" } }]);
  const edit = assert.rejects(c.edit("m1", "x"), (e) => e instanceof ChatError && e.code === "forbidden");
  await settle();
  await edit;
  assert.equal(fetch.requests[0].url.pathname, "/rooms/r/events");
  assert.equal(fetch.requests[0].body.type, "edit");
  fetch.answers.push([429, { error: { code: "rate_limited", message: "slow down" } }]);
  await assert.rejects(c.send("too fast"), (e) => e.code === "rate_limited");
  fetch.answers.push([204, null]);
  assert.equal(c.typing(true), true);
  fetch.answers.push([200, { type: "presence", data: { room: "r", count: 1, users: [] } }]);
  const who = c.presence();
  await settle();
  assert.equal((await who).count, 1);
});

test("requests go out one at a time, in send order", async () => {
  const c = client({ transport: "sse" });
  c.connect();
  await tick();
  FakeEventSource.last.open();
  await tick();
  let release;
  const gate = new Promise((r) => { release = r; });
  const order = [];
  const slow = async (url, init) => {
    const body = JSON.parse(init.body);
    order.push(`start ${body.message}`);
    if (body.message === "one") await gate;
    order.push(`end ${body.message}`);
    return { status: 201, json: async () => ({ id: body.message, timestamp: "t", client_id: body.client_id }) };
  };
  c.opts.fetch = slow;
  c.reconnect();
  await tick();
  FakeEventSource.last.open();
  await tick();
  const a = c.send("one");
  const b = c.send("two");
  await settle();
  assert.deepEqual(order, ["start one"]);
  release();
  await Promise.all([a, b]);
  assert.deepEqual(order, ["start one", "end one", "start two", "end two"]);
});

test("a dropped stream reconnects with since; a probe brings the WebSocket back", async () => {
  const c = client({ wsRetryMs: 1000 });
  c.connect();
  await tick();
  FakeSocket.last.drop(1006);
  timers.fireAll();
  await tick();
  FakeSocket.last.drop(1006);
  await tick();
  FakeEventSource.last.open();
  await tick();
  FakeEventSource.last.frame("history", { room: "r", epoch: "e1", messages: [msg(1, "a"), msg(2, "b")], latest_seq: 2 });
  // The EventSource reconnecting by itself (Last-Event-ID) is not a drop.
  FakeEventSource.last.fail(0);
  assert.equal(c.state, "open");
  // Closed for good: the client reconnects with since and epoch.
  FakeEventSource.last.fail(2);
  assert.equal(c.state, "reconnecting");
  const sockets = FakeSocket.all.length;
  // Fire the backoff timer and the WebSocket probe together.
  timers.fireAll();
  await tick();
  const es2 = FakeEventSource.last;
  assert.equal(es2.url.searchParams.get("since"), "2");
  assert.equal(es2.url.searchParams.get("epoch"), "e1");
  es2.open();
  await tick();
  const probe = FakeSocket.all[sockets];
  assert.ok(probe, "a WebSocket probe was opened");
  probe.open();
  await tick();
  assert.equal(c.transport, "ws");
  assert.equal(es2.readyState, 2, "the SSE stream is closed");
  const ws = FakeSocket.last;
  assert.notEqual(ws, probe);
  assert.equal(ws.url.pathname, "/ws");
  assert.equal(ws.url.searchParams.get("since"), "2");
});

test("FetchEventSource parses ids and data, skips comments, resumes with Last-Event-ID", async () => {
  const enc = new TextEncoder();
  const calls = [];
  const streams = [
    [": keepalive\n\n", "id: 7\ndata: {\"type\":\"message\",\"data\":{\"seq\":7}}\n\n", "data: {\"type\":\"ack\"}\n\n"],
    ["data: {\"type\":\"history\",\"data\":{}}\n\n"],
  ];
  const fetchStream = async (url, init) => {
    calls.push(init.headers["last-event-id"]);
    const parts = streams.shift() ?? [];
    return {
      status: parts.length ? 200 : 403,
      body: (async function* gen() { for (const p of parts) yield enc.encode(p); })(),
    };
  };
  const es = new FetchEventSource("http://gw/sse?room=r", { fetch: fetchStream });
  const got = [];
  es.onmessage = (e) => got.push([JSON.parse(e.data).type, es.lastEventId]);
  let closed;
  const done = new Promise((r) => { closed = r; });
  es.onerror = () => { if (es.readyState === 2) closed(); };
  await done;
  assert.deepEqual(got, [["message", "7"], ["ack", "7"], ["history", "7"]]);
  assert.deepEqual(calls, [undefined, "7", "7"]);
});
