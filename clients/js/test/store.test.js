import { test } from "node:test";
import assert from "node:assert/strict";
import { MessageStore } from "../store.js";
import { backoffDelay } from "../backoff.js";
import { msg } from "./fake.js";

const texts = (s) => s.messages().map((m) => m.message ?? "<deleted>");

test("live messages are kept in seq order and repeats are dropped", () => {
  const s = new MessageStore();
  assert.ok(s.applyMessage(msg(1, "a")));
  assert.ok(s.applyMessage(msg(2, "b")));
  assert.equal(s.applyMessage(msg(2, "b")), null);
  assert.equal(s.applyMessage({ ...msg(1, "a"), id: "other" }), null, "seq at or below lastSeq");
  assert.deepEqual(texts(s), ["a", "b"]);
  assert.equal(s.lastSeq, 2);
});

test("edit, delete and reaction events change the message they name", () => {
  const s = new MessageStore();
  s.applyMessage(msg(1, "a"));
  s.applyMessage(msg(2, "b"));
  assert.equal(s.applyEvent({ type: "edit", id: "m1", message: "a2", edited_at: "t", seq: 3 }).kind, "update");
  s.applyEvent({ type: "reaction", id: "m2", emoji: "👍", op: "add", count: 1, username: "bo", seq: 4 });
  s.applyEvent({ type: "reaction", id: "m2", emoji: "👍", op: "add", count: 2, username: "cy", seq: 5 });
  assert.equal(s.applyEvent({ type: "edit", id: "m1", message: "stale", seq: 5 }), null, "repeat by seq");
  assert.deepEqual(s.get("m2").reactions, { "👍": 2 });
  assert.ok(s.hasReacted("m2", "👍", "bo"));
  s.applyEvent({ type: "reaction", id: "m2", emoji: "👍", op: "remove", count: 1, username: "bo", seq: 6 });
  assert.ok(!s.hasReacted("m2", "👍", "bo"));
  s.applyEvent({ type: "delete", id: "m2", seq: 7 });
  assert.deepEqual(texts(s), ["a2", "<deleted>"]);
  assert.equal(s.get("m1").edited_at, "t");
  assert.equal(s.get("m2").reactions, undefined);
  assert.equal(s.lastSeq, 7);
});

test("history with events inside converges on the current state", () => {
  const s = new MessageStore();
  // History shows m1 already edited and with its final reaction count; its
  // events follow in seq order and must not roll the state back.
  s.applyHistory({
    epoch: "e1",
    messages: [
      { ...msg(1, "final"), edited_at: "t2", reactions: { "🎉": 2 } },
      { type: "reaction", id: "m1", emoji: "🎉", op: "add", count: 1, username: "bo", seq: 2 },
      { type: "edit", id: "m1", message: "first edit", edited_at: "t1", seq: 3 },
      { type: "reaction", id: "m1", emoji: "🎉", op: "add", count: 2, username: "cy", seq: 4 },
      { type: "edit", id: "m1", message: "final", edited_at: "t2", seq: 5 },
      { type: "edit", id: "gone", message: "x", seq: 6 },
    ],
  });
  assert.deepEqual(texts(s), ["final"]);
  assert.deepEqual(s.get("m1").reactions, { "🎉": 2 });
  assert.equal(s.lastSeq, 6);
  assert.equal(s.epoch, "e1");
});

test("recovery history adds only what is new; an older page fills in before", () => {
  const s = new MessageStore();
  s.applyHistory({ epoch: "e", messages: [msg(5, "e"), msg(6, "f")] });
  const changes = s.applyHistory({ epoch: "e", messages: [msg(6, "f"), msg(7, "g")] });
  assert.deepEqual(changes.map((c) => c.message.seq), [7]);
  s.applyHistory({ messages: [msg(3, "c"), msg(4, "d")] });
  assert.deepEqual(texts(s), ["c", "d", "e", "f", "g"]);
  assert.equal(s.lastSeq, 7);
});

test("reset replaces the store", () => {
  const s = new MessageStore();
  s.applyHistory({ epoch: "old", messages: [msg(40, "x"), msg(41, "y")] });
  s.applyHistory({ epoch: "new", reset: "epoch_changed", messages: [msg(1, "fresh")] });
  assert.deepEqual(texts(s), ["fresh"]);
  assert.equal(s.epoch, "new");
  assert.equal(s.lastSeq, 1);
});

test("backoff grows exponentially with full jitter and a cap", () => {
  assert.equal(backoffDelay(0, {}, () => 0.999999), 249);
  assert.equal(backoffDelay(3, { initialMs: 100 }, () => 0.5), 400);
  assert.equal(backoffDelay(50, { initialMs: 100, maxMs: 5000 }, () => 0.5), 2500);
  assert.equal(backoffDelay(7, {}, () => 0), 0);
});
