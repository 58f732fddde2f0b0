// The JS client in Node (its built-in WebSocket) against real gateways:
// two clients on two gateways exchange messages, an edit and a reaction; one
// client's socket drops while the other sends, and after its reconnect (with
// `since`) it holds every message exactly once, in the same order.
//
// Usage: node node-client.mjs <ws-url-gateway-1> <ws-url-gateway-2>
// Prints `OK <json>` and exits 0, or prints the failure and exits 1.
import { ChatClient } from "../../clients/js/index.js";

const [url1, url2] = process.argv.slice(2);
const room = "node-" + Math.random().toString(36).slice(2, 8);
const deadline = setTimeout(() => { console.error("node-client timed out"); process.exit(1); }, 60_000);

/** Wait until `f()` is truthy (polling with a deadline); returns its value. */
async function until(what, f, ms = 20_000) {
  const t0 = Date.now();
  for (;;) {
    const v = f();
    if (v) return v;
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
const texts = (c) => c.store.messages().map((m) => m.message ?? "<deleted>");

try {
  const ana = new ChatClient({ url: url1, room, username: "ana" });
  const bo = new ChatClient({ url: [url2, url1], room, username: "bo", backoff: { initialMs: 200, maxMs: 1000 } });
  const boStates = [];
  bo.on("state", (s) => boStates.push(s.state));
  await Promise.all([ana.connect(), bo.connect()]);

  const ack = await ana.send("one");
  await until("bo sees one", () => bo.store.get(ack.id));
  await ana.edit(ack.id, "one (edited)");
  await bo.react(ack.id, "👍");
  await until("both see the edit and the reaction", () =>
    [ana, bo].every((c) => c.store.get(ack.id)?.message === "one (edited)" && c.store.get(ack.id)?.reactions?.["👍"] === 1));

  // Bo's socket drops (as if the network went away); ana sends meanwhile.
  const lastSeqBefore = bo.store.lastSeq;
  bo.ws.close(4000, "simulated drop");
  await until("bo reconnecting", () => bo.state === "reconnecting");
  for (const t of ["two", "three", "four"]) await ana.send(t);
  const queued = bo.send("from bo, queued while offline");
  await until("bo back", () => bo.state === "open");
  await queued;
  await until("both hold five messages", () => [ana, bo].every((c) => c.store.messages().length === 5));
  const result = { ana: texts(ana), bo: texts(bo), seqs: bo.store.messages().map((m) => m.seq), lastSeqBefore, boStates };
  if (JSON.stringify(result.ana) !== JSON.stringify(result.bo)) throw new Error("different order: " + JSON.stringify(result));
  ana.close();
  bo.close();
  console.log("OK " + JSON.stringify(result));
} catch (e) {
  console.log("FAIL " + (e.stack || e));
  process.exitCode = 1;
} finally {
  clearTimeout(deadline);
}
