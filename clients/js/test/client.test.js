import { test, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { ChatClient, ChatError, jwtExp } from "../index.js";
import { FakeSocket, FakeTimers, msg, tick } from "./fake.js";

let timers;
beforeEach(() => {
  FakeSocket.all = [];
  timers = new FakeTimers();
});

function client(extra = {}) {
  return new ChatClient({
    url: "ws://gw1/ws", room: "r", username: "ana",
    WebSocket: FakeSocket, timers, random: () => 0.5, ...extra,
  });
}

/** A client whose first socket is open and has had its join history. */
async function joined(extra = {}, history = [msg(1, "a"), msg(2, "b")]) {
  const c = client(extra);
  const states = [];
  c.on("state", (s) => states.push(s.state));
  const opened = c.connect();
  await tick();
  FakeSocket.last.open();
  await opened;
  FakeSocket.last.frame("history", { room: "r", epoch: "e1", messages: history, latest_seq: 2 });
  return { c, states };
}

function token(expSecondsFromNow, sub = "u1") {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${b64({ alg: "HS256" })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + expSecondsFromNow })}.sig`;
}

test("connects with room and username, then reports open", async () => {
  const { c, states } = await joined();
  const url = FakeSocket.last.url;
  assert.equal(url.searchParams.get("room"), "r");
  assert.equal(url.searchParams.get("username"), "ana");
  assert.equal(url.searchParams.get("since"), null, "a first join asks for no since");
  assert.deepEqual(states, ["connecting", "open"]);
  assert.deepEqual(c.store.messages().map((m) => m.seq), [1, 2]);
});

test("send resolves on its ack and rejects on an error with its code", async () => {
  const { c } = await joined();
  const ok = c.send("hi");
  const bad = c.send("x".repeat(10));
  const [f1, f2] = FakeSocket.last.sentOf("message");
  assert.equal(f1.data.message, "hi");
  assert.equal(f1.data.room, "r");
  assert.notEqual(f1.data.client_id, f2.data.client_id);
  FakeSocket.last.frame("ack", { client_id: f1.data.client_id, id: "m3" });
  FakeSocket.last.frame("error", { code: "message_too_long", message: "too long", client_id: f2.data.client_id });
  assert.deepEqual(await ok, { client_id: f1.data.client_id, id: "m3" });
  await assert.rejects(bad, (e) => e instanceof ChatError && e.code === "message_too_long");
});

test("offline sends queue (bounded) and go out after reconnect with the same client_id", async () => {
  const { c, states } = await joined({ queueLimit: 3 });
  const first = c.send("sent before the drop");
  const sentBefore = FakeSocket.last.sentOf("message")[0];
  FakeSocket.last.drop(1006);
  assert.equal(c.state, "reconnecting");
  const queued = c.send("typed while offline");
  c.send("another").catch(() => {});
  await assert.rejects(c.send("one too many"), (e) => e.code === "queue_full");
  assert.equal(FakeSocket.all.length, 1, "no socket until the backoff timer fires");
  timers.fireAll();
  await tick();
  const s2 = FakeSocket.last;
  assert.equal(FakeSocket.all.length, 2);
  s2.open();
  const resent = s2.sentOf("message");
  assert.deepEqual(resent.map((f) => f.data.message), ["sent before the drop", "typed while offline", "another"]);
  assert.equal(resent[0].data.client_id, sentBefore.data.client_id, "resend keeps its client_id");
  s2.frame("ack", { client_id: resent[0].data.client_id, id: "m3" });
  s2.frame("ack", { client_id: resent[1].data.client_id, id: "m4" });
  assert.equal((await first).id, "m3");
  assert.equal((await queued).id, "m4");
  assert.deepEqual(states, ["connecting", "open", "reconnecting", "reconnecting", "open"]);
});

test("reconnect passes since and epoch; repeats are dropped; truncated is reported", async () => {
  const { c } = await joined();
  const seen = [];
  c.on("message", (m) => seen.push(m.seq));
  const histories = [];
  c.on("history", (h) => histories.push(h));
  FakeSocket.last.frame("message", msg(3, "c"));
  FakeSocket.last.drop(1006);
  timers.fireAll();
  await tick();
  const s2 = FakeSocket.last;
  assert.equal(s2.url.searchParams.get("since"), "3");
  assert.equal(s2.url.searchParams.get("epoch"), "e1");
  s2.open();
  s2.frame("history", { room: "r", epoch: "e1", truncated: true, messages: [msg(3, "c"), msg(4, "d")] });
  s2.frame("message", msg(4, "d"));
  s2.frame("message", msg(5, "e"));
  assert.deepEqual(seen, [3, 4, 5], "each message once, in order");
  assert.equal(histories.at(-1).truncated, true);
});

test("a reset history replaces the store", async () => {
  const { c } = await joined();
  let resets = 0;
  c.on("reset", () => resets++);
  FakeSocket.last.drop(1006);
  timers.fireAll();
  await tick();
  FakeSocket.last.open();
  FakeSocket.last.frame("history", { room: "r", epoch: "e2", reset: "epoch_changed", messages: [msg(1, "new")] });
  assert.equal(resets, 1);
  assert.deepEqual(c.store.messages().map((m) => m.message), ["new"]);
  assert.equal(c.store.epoch, "e2");
});

test("split history frames are assembled in order before they are applied", async () => {
  const c = client();
  c.connect();
  await tick();
  FakeSocket.last.open();
  let changes = 0;
  c.on("change", () => changes++);
  FakeSocket.last.frame("history", { room: "r", epoch: "e", more: true, messages: [msg(1, "a"), msg(2, "b")] });
  assert.equal(c.store.messages().length, 0, "nothing applied before the last part");
  FakeSocket.last.frame("history", { room: "r", epoch: "e", messages: [msg(3, "c"), { type: "edit", id: "m1", message: "A", seq: 4 }] });
  assert.deepEqual(c.store.messages().map((m) => m.message), ["A", "b", "c"]);
  assert.equal(changes, 1);
});

test("live edit, delete and reaction frames update the store and emit update", async () => {
  const { c } = await joined();
  const updates = [];
  c.on("update", (u) => updates.push(u.event.type));
  const s = FakeSocket.last;
  s.frame("edit", { room: "r", id: "m1", message: "a!", edited_at: "t", username: "ana", seq: 3 });
  s.frame("reaction", { room: "r", id: "m2", emoji: "👍", op: "add", count: 1, username: "bo", seq: 4 });
  s.frame("delete", { room: "r", id: "m2", username: "ana", seq: 5 });
  s.frame("edit", { room: "r", id: "m1", message: "repeat", seq: 3 });
  assert.deepEqual(updates, ["edit", "reaction", "delete"]);
  assert.equal(c.store.get("m1").message, "a!");
  assert.equal(c.store.get("m2").deleted, true);
});

test("edit, delete and react are acked requests with the DESIGN frames", async () => {
  const { c } = await joined();
  const p = [c.edit("m1", "new"), c.delete("m2"), c.react("m1", "🎉", "remove")];
  const s = FakeSocket.last;
  const [e, d, r] = s.sent;
  assert.deepEqual({ ...e.data, client_id: 0 }, { room: "r", id: "m1", message: "new", client_id: 0 });
  assert.equal(d.type, "delete");
  assert.deepEqual({ type: r.type, emoji: r.data.emoji, op: r.data.op }, { type: "react", emoji: "🎉", op: "remove" });
  s.frame("ack", { client_id: e.data.client_id, id: "ev1" });
  s.frame("error", { code: "forbidden", client_id: d.data.client_id });
  s.frame("ack", { client_id: r.data.client_id, id: "ev2" });
  assert.equal((await p[0]).id, "ev1");
  await assert.rejects(p[1], (err) => err.code === "forbidden");
  assert.equal((await p[2]).id, "ev2");
});

test("typing, read and presence use the DESIGN frames; live presence frames are events", async () => {
  const { c } = await joined();
  const s = FakeSocket.last;
  const got = {};
  for (const t of ["join", "leave", "typing", "read", "presence"]) c.on(t, (d) => { got[t] = d; });
  assert.equal(c.typing(true), true);
  assert.equal(c.read(2), true);
  const pres = c.presence();
  assert.deepEqual(s.sent, [
    { type: "typing", data: { active: true } },
    { type: "read", data: { seq: 2 } },
    { type: "presence" },
  ]);
  const users = [{ username: "ana", user_id: null, connections: 1 }];
  s.frame("presence", { room: "r", count: 1, users });
  assert.deepEqual((await pres).users, users);
  s.frame("join", { room: "r", username: "bo", user_id: null, timestamp: "t" });
  s.frame("leave", { room: "r", username: "bo", user_id: null, timestamp: "t" });
  s.frame("typing", { room: "r", username: "bo", user_id: null, active: true });
  s.frame("read", { room: "r", username: "bo", user_id: null, seq: 2 });
  assert.equal(got.join.username, "bo");
  assert.equal(got.leave.username, "bo");
  assert.equal(got.typing.active, true);
  assert.equal(got.read.seq, 2);
  assert.equal(got.presence.count, 1);
  s.drop(1006);
  assert.equal(c.typing(true), false, "typing is not queued offline");
  await assert.rejects(c.presence(), (e) => e.code === "offline");
});

test("a presence request without an answer times out", async () => {
  const { c } = await joined();
  const p = c.presence();
  timers.fireAll();
  await assert.rejects(p, (e) => e.code === "timeout");
});

test("a 1001 drain moves to the next gateway and keeps since", async () => {
  const { c } = await joined({ url: ["ws://gw1/ws", "ws://gw2/ws"] });
  assert.equal(FakeSocket.last.url.host, "gw1");
  FakeSocket.last.drop(1001, "server shutting down; reconnect");
  assert.equal(c.state, "reconnecting");
  timers.fireAll();
  await tick();
  assert.equal(FakeSocket.last.url.host, "gw2");
  assert.equal(FakeSocket.last.url.searchParams.get("since"), "2");
});

test("backoff grows while connecting fails, and resets once open", async () => {
  const delays = [];
  // WebSocket only: `auto` would move to SSE after two failures (sse.test.js).
  const c = client({ transport: "ws", backoff: { initialMs: 100, maxMs: 1000 } });
  c.on("state", (s) => { if (s.delayMs !== undefined) delays.push(s.delayMs); });
  c.connect();
  for (let i = 0; i < 6; i++) {
    await tick();
    FakeSocket.last.drop(1006);
    timers.fireAll();
  }
  assert.deepEqual(delays, [50, 100, 200, 400, 500, 500]);
  await tick();
  FakeSocket.last.open();
  FakeSocket.last.drop(1006);
  assert.equal(delays.at(-1), 50);
});

test("an overload close (1013) waits the hinted time plus jitter, never less", async () => {
  const delays = [];
  const { c } = await joined({ backoff: { initialMs: 100, maxMs: 1000 } });
  c.on("state", (s) => { if (s.delayMs !== undefined) delays.push(s.delayMs); });
  FakeSocket.last.drop(1013, "overloaded: retry after 2 s");
  // 2 s, plus half (random 0.5) of a window as wide as the hint.
  assert.deepEqual(delays, [3000]);
  timers.fireAll();
  await tick();
  // A slow consumer's 1013 carries no hint: the usual backoff.
  FakeSocket.last.open();
  FakeSocket.last.drop(1013, "slow consumer: outbound queue full");
  assert.deepEqual(delays, [3000, 50]);
});

test("the token is refreshed before it expires, and after a 4001 close", async () => {
  let n = 0;
  const getToken = async () => token(3600, "u1") + (n++ ? "" : "");
  const { c } = await joined({ username: undefined, token: token(10), getToken, refreshLeadMs: 30_000 });
  const s = FakeSocket.last;
  assert.ok(s.url.searchParams.get("token"));
  assert.equal(s.url.searchParams.get("username"), null);
  assert.equal(timers.size, 1, "refresh timer armed");
  assert.deepEqual(timers.fireAll(), [0], "already inside the lead time");
  await tick();
  const [refresh] = s.sentOf("refresh");
  assert.equal(jwtExp(refresh.data.token) > Date.now() / 1000 + 3000, true);
  s.drop(4001, "token expired");
  timers.fireAll();
  await tick();
  assert.equal(n, 2, "a fresh token for the reconnect");
  assert.equal(FakeSocket.last.url.searchParams.get("token"), c.token);
});

test("4001 without getToken and 4003 banned close for good and reject pending", async () => {
  for (const code of [4001, 4003]) {
    FakeSocket.all = [];
    const { c, states } = await joined();
    const p = c.send("x");
    FakeSocket.last.drop(code);
    await assert.rejects(p, (e) => e.code === (code === 4003 ? "banned" : "token_expired"));
    assert.equal(states.at(-1), "closed");
    assert.equal(timers.size, 0, "no reconnect");
  }
});

test("close() stops reconnecting and rejects what is pending", async () => {
  const { c } = await joined();
  const p = c.send("x");
  c.close();
  await assert.rejects(p, (e) => e.code === "closed");
  assert.equal(FakeSocket.last.closed.code, 1000);
  assert.equal(c.state, "closed");
  assert.equal(timers.size, 0);
});

test("typing frames within a second are held, and the latest state goes out", async () => {
  const { c } = await joined();
  const s = FakeSocket.last;
  assert.equal(c.typing(true), true);
  assert.equal(c.typing(false), true, "accepted, held");
  assert.equal(c.typing(true), true);
  assert.equal(c.typing(false), true);
  assert.deepEqual(s.sentOf("typing").map((f) => f.data.active), [true]);
  assert.equal(timers.size, 1, "one timer for the held state");
  c.typingSentAt -= 2000; // the second has passed
  timers.fireAll();
  assert.deepEqual(s.sentOf("typing").map((f) => f.data.active), [true, false]);
});

test("an unavailable answer is retried with the same client_id, then rejected", async () => {
  const { c } = await joined();
  const s = FakeSocket.last;
  const p = c.send("x");
  const id = s.sentOf("message")[0].data.client_id;
  for (let i = 0; i < 3; i++) {
    s.frame("error", { code: "unavailable", message: "redis down", client_id: id });
    assert.equal(timers.size, 1, "a resend is scheduled");
    timers.fireAll();
  }
  const sent = s.sentOf("message");
  assert.equal(sent.length, 4);
  assert.ok(sent.every((f) => f.data.client_id === id));
  s.frame("error", { code: "unavailable", message: "redis down", client_id: id });
  await assert.rejects(p, (e) => e.code === "unavailable");
  assert.equal(c.pending.size, 0);
});

test("a handshake that errors without a close, or never opens, is retried", async () => {
  // WebSocket only: `auto` would move to SSE after two failures (sse.test.js).
  const c = client({ transport: "ws" });
  c.connect();
  await tick();
  FakeSocket.last.onerror({}); // Node 20's WebSocket: an error and no close event
  assert.equal(c.state, "reconnecting");
  timers.fireAll();
  await tick();
  assert.equal(FakeSocket.all.length, 2);
  const hanging = FakeSocket.last;
  timers.fireAll(); // the connect timeout, with the socket still not open
  assert.equal(hanging.closed?.code, 1000);
  assert.equal(c.state, "reconnecting");
  timers.fireAll();
  await tick();
  FakeSocket.last.open();
  assert.equal(c.state, "open");
  assert.equal(FakeSocket.all.length, 3);
});

test("keeps the anonymous session and sends it on every reconnect", async () => {
  const kept = new Map();
  const store = { getItem: (k) => kept.get(k), setItem: (k, v) => kept.set(k, v) };
  const { c } = await joined({ sessionStore: store });
  assert.equal(FakeSocket.last.url.searchParams.get("session"), null, "none yet");
  const seen = [];
  c.on("session", (s) => seen.push(s));
  FakeSocket.last.frame("session", { user_id: "anon-1", session: "anon-1.sig" });
  assert.equal(c.userId, "anon-1");
  assert.deepEqual(seen, [{ user_id: "anon-1", session: "anon-1.sig" }]);
  assert.equal(kept.get("chat-session"), "anon-1.sig", "kept for a reload");
  FakeSocket.last.drop(1006, "gone");
  timers.fireAll();
  await tick();
  assert.equal(FakeSocket.last.url.searchParams.get("session"), "anon-1.sig");
  // A new client (a reloaded page) starts with the stored session.
  const again = client({ sessionStore: store });
  again.connect();
  await tick();
  assert.equal(FakeSocket.last.url.searchParams.get("session"), "anon-1.sig");
  // With a token, no session is sent.
  const authed = client({ sessionStore: store, token: token(600) });
  authed.connect();
  await tick();
  assert.equal(FakeSocket.last.url.searchParams.get("session"), null);
});

test("after an unavailable refusal, pending requests are resent in their order after one backoff", async () => {
  const { c } = await joined();
  const s = FakeSocket.last;
  const sends = ["a", "b", "c", "d"].map((t) => c.send(t));
  const ids = s.sentOf("message").map((f) => f.data.client_id);
  s.frame("ack", { client_id: ids[0], id: "m3" });
  // b is refused; the gateway then refuses c and d too (send-order rule).
  s.frame("error", { code: "unavailable", message: "redis down", client_id: ids[1] });
  assert.equal(timers.size, 1, "one resend is scheduled");
  s.frame("error", { code: "unavailable", message: "after failure", client_id: ids[2] });
  assert.equal(timers.size, 1, "refusals behind it join that resend");
  // A send while the resend waits goes out with it, behind the others.
  const late = c.send("e");
  assert.equal(s.sentOf("message").length, 4, "e waits for the resend");
  timers.fireAll();
  // d's refusal of the first round arrives after the resend: it is stale.
  s.frame("error", { code: "unavailable", message: "after failure", client_id: ids[3] });
  assert.equal(timers.size, 0, "a stale refusal schedules nothing");
  const resent = s.sentOf("message").slice(4).map((f) => f.data.message);
  assert.deepEqual(resent, ["b", "c", "d", "e"], "resent from the refused one on, in order");
  const resentIds = s.sentOf("message").slice(4).map((f) => f.data.client_id);
  assert.deepEqual(resentIds.slice(0, 3), ids.slice(1), "with the same client_ids");
  for (const [i, id] of resentIds.entries()) s.frame("ack", { client_id: id, id: `m${4 + i}` });
  assert.deepEqual((await Promise.all([...sends, late])).map((a) => a.id), ["m3", "m4", "m5", "m6", "m7"]);
  assert.equal(c.pending.size, 0);
});

test("giving up on a refused request reconnects, and the rest is resent in order", async () => {
  const { c } = await joined();
  const s = FakeSocket.last;
  const first = c.send("a");
  const second = c.send("b");
  const [a, b] = s.sentOf("message").map((f) => f.data.client_id);
  for (let i = 0; i < 3; i++) {
    s.frame("error", { code: "unavailable", message: "redis down", client_id: a });
    s.frame("error", { code: "unavailable", message: "after failure", client_id: b });
    timers.fireAll();
  }
  s.frame("error", { code: "unavailable", message: "redis down", client_id: a });
  await assert.rejects(first, (e) => e.code === "unavailable");
  assert.ok(s.closed, "the refused connection is given up");
  const s2 = FakeSocket.last;
  assert.notEqual(s2, s);
  s2.open();
  assert.deepEqual(s2.sentOf("message").map((f) => f.data.client_id), [b]);
  s2.frame("ack", { client_id: b, id: "m3" });
  assert.equal((await second).id, "m3");
});
