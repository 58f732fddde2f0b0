// The demo page in headless Chromium with WebSockets blocked on page A (as a
// proxy that breaks upgrades would): the JS client falls back to server-sent
// events + HTTP by itself and chats with page B (on a WebSocket) through the
// same page. Driven by tests/tests/sse_browser.rs.
//
// Usage: node sse-chat.mjs <http-base>
// Prints `PHASE <name> <json>` lines for the Rust test to assert on, and on a
// failed wait `FAIL <what> <json>` (then exits 1). Every wait has a deadline.
import { launch, list, report, say, tryWait, waitCount, waitFor } from "./lib.mjs";

const [base] = process.argv.slice(2);
if (!base) {
  console.error("usage: node sse-chat.mjs <http-base>");
  process.exit(2);
}
const room = "sse-" + Math.random().toString(36).slice(2, 8);

const browser = await launch("sse");
const timer = setTimeout(() => { console.error("sse-chat timed out"); process.exit(1); }, 180_000);

let a, b;
try {
  a = await browser.newPage();
  b = await browser.newPage();
  const pageErrors = [];
  for (const p of [a, b]) p.on("pageerror", (e) => pageErrors.push(String(e)));
  // Page A: every WebSocket goes to a closed port and fails, like an upgrade
  // a proxy refuses. Counted, so the test can see none ever opened.
  await a.addInitScript(() => {
    const Native = window.WebSocket;
    window.__ws = { attempts: 0, opened: 0 };
    window.WebSocket = class extends Native {
      constructor(url, protocols) {
        window.__ws.attempts++;
        super(String(url).replace(/^(wss?:\/\/)[^/]+/, "$1127.0.0.1:9"), protocols);
        this.addEventListener("open", () => window.__ws.opened++);
      }
    };
  });

  await a.goto(`${base}/?room=${room}&name=ana`);
  await b.goto(`${base}/?room=${room}&name=bo`);
  for (const p of [a, b]) await waitFor(p, "page is open", () => document.body.dataset.state === "open");
  report("open", {
    a: await a.evaluate(() => ({ transport: window.chatDemo.client.transport, ws: window.__ws })),
    b: await b.evaluate(() => window.chatDemo.client.transport),
  });

  // 1. Both send at once: both pages show the same six messages in one order.
  const burst = async (p, prefix) => { for (let i = 1; i <= 3; i++) await say(p, `${prefix}${i}`); };
  await Promise.all([burst(a, "a"), burst(b, "b")]);
  await waitCount(a, 6);
  await waitCount(b, 6);
  report("order", { a: await list(a), b: await list(b) });

  // 2. Typing both ways (A's goes over HTTP, B's arrives over SSE).
  await a.fill("#composer-input", "typing over http");
  const typingOnB = await tryWait(b, () => document.getElementById("typing").textContent);
  await a.fill("#composer-input", "");
  await b.fill("#composer-input", "typing over ws");
  const typingOnA = await tryWait(a, () => document.getElementById("typing").textContent);
  await b.fill("#composer-input", "");
  report("typing", { onA: typingOnA, onB: typingOnB });

  // 3. A edits its first message over HTTP; B sees the edit.
  const first = (await list(a)).find((m) => m.text === "a1");
  await a.locator(`#msg-${first.id} .edit`).click();
  await a.fill(`#edit-${first.id}`, "a1 (edited over http)");
  await a.press(`#edit-${first.id}`, "Enter");
  for (const p of [a, b]) {
    await waitFor(p, "edit shown", (id) => document.getElementById(`msg-${id}`)
      ?.querySelector(".text").textContent === "a1 (edited over http)", first.id);
  }
  report("edit", { a: await list(a), b: await list(b) });

  // 4. A's stream drops; B sends meanwhile; A recovers (since) with every
  // message once, in order.
  await a.evaluate(() => window.chatDemo.client.ws.fail(1006, "stream cut by the test"));
  for (let i = 1; i <= 3; i++) await say(b, `while-away-${i}`);
  await waitCount(b, 9);
  await waitFor(a, "open again", () => document.body.dataset.state === "open");
  await waitCount(a, 9);
  report("recovered", {
    a: await list(a), b: await list(b),
    ws: await a.evaluate(() => window.__ws),
    transport: await a.evaluate(() => window.chatDemo.client.transport),
  });
  report("errors", { pageErrors });
} catch (e) {
  const snap = {};
  for (const [k, p] of [["a", a], ["b", b]]) {
    try { snap[k] = { list: await list(p), state: await p.evaluate(() => document.body.dataset.state) }; } catch { /* gone */ }
  }
  console.log(`FAIL ${String(e.message || e).split("\n")[0]} ${JSON.stringify(snap)}`);
  process.exitCode = 1;
} finally {
  clearTimeout(timer);
  await browser.close();
}
