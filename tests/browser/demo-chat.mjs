// The demo page (served by the gateway at /) in headless Chromium: two pages
// on two gateways chat through the JS client. Driven by tests/tests/demo_page.rs.
//
// Usage: node demo-chat.mjs <http-base-gw1> <http-base-gw2> <screenshot-dir>
// Prints `PHASE <name> <json>` lines for the Rust test to assert on, and on a
// failed wait `FAIL <what> <json>` (then exits 1). Before the drain phase it
// prints `PHASE drain-ready {"port":..}` and expects the test to SIGTERM the
// gateway on that port. Every wait has a deadline; nothing sleeps and hopes.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { launch, list, report, say, tryWait, waitCount, waitFor } from "./lib.mjs";

const [base1, base2, shotDir] = process.argv.slice(2);
if (!base1 || !base2 || !shotDir) {
  console.error("usage: node demo-chat.mjs <http-base-1> <http-base-2> <screenshot-dir>");
  process.exit(2);
}
mkdirSync(shotDir, { recursive: true });
const ws = (base) => base.replace(/^http/, "ws") + "/ws";
const room = "demo-" + Math.random().toString(36).slice(2, 8);

const browser = await launch("demo");
const timer = setTimeout(() => { console.error("demo-chat timed out"); process.exit(1); }, 240_000);

// A network cut the page cannot tell from a real one: while `__net.down`, new
// WebSockets and EventSources go to a closed port (they fail, 1006), fetch
// fails, and the cut closes the open WebSockets.
await browser.addInitScript(() => {
  const Native = window.WebSocket;
  const net = { down: false, sockets: new Set() };
  window.__net = net;
  window.WebSocket = class extends Native {
    constructor(url, protocols) {
      super(net.down ? String(url).replace(/^(wss?:\/\/)[^/]+/, "$1127.0.0.1:9") : url, protocols);
      net.sockets.add(this);
      this.addEventListener("close", () => net.sockets.delete(this));
    }
  };
  // The cut is not only of WebSockets: the client's SSE fallback (EventSource
  // and fetch) finds the network down as well.
  const NativeEventSource = window.EventSource;
  window.EventSource = class extends NativeEventSource {
    constructor(url, init) {
      const u = String(new URL(url, location.href));
      super(net.down ? u.replace(/^(https?:\/\/)[^/]+/, "$1127.0.0.1:9") : u, init);
    }
  };
  const nativeFetch = window.fetch.bind(window);
  window.fetch = (input, init) =>
    net.down ? Promise.reject(new TypeError("Failed to fetch (network cut)")) : nativeFetch(input, init);
  window.__cut = () => { net.down = true; for (const s of net.sockets) s.close(4000, "network cut"); };
  window.__restore = () => { net.down = false; };
  // Every connection state the client went through, for the assertions.
  window.__states = [];
  const hook = setInterval(() => {
    const c = window.chatDemo?.client;
    if (!c || c.__hooked) return;
    c.__hooked = true;
    c.on("state", (s) => window.__states.push({ ...s, url: c.urls[c.urlIndex % c.urls.length] }));
  }, 5);
  window.addEventListener("unload", () => clearInterval(hook));
});

let a, b;
try {
  a = await browser.newPage();
  await a.setViewportSize({ width: 1280, height: 800 });
  b = await browser.newPage();
  await b.setViewportSize({ width: 390, height: 844 });
  const pageErrors = [];
  for (const p of [a, b]) p.on("pageerror", (e) => pageErrors.push(String(e)));
  // What a fresh load logs in the console (a missing favicon would be a
  // 404 there), and any answer >= 400, until both pages are open: the
  // network cut and the drain below log connection errors on purpose.
  const loadErrors = [];
  const onConsole = (m) => { if (m.type() === "error") loadErrors.push(`console: ${m.text()}`); };
  const onResponse = (r) => { if (r.status() >= 400) loadErrors.push(`${r.status()} ${r.url()}`); };
  for (const p of [a, b]) { p.on("console", onConsole); p.on("response", onResponse); }

  // WebSocket only: this test is about the WebSocket's reconnects and its
  // drain close (1001); with `auto`, a cut long enough for two failed opens
  // moves the client to SSE (tests/browser/sse-chat.mjs covers that path).
  await a.goto(`${base1}/?room=${room}&name=ana&transport=ws&gateways=${ws(base1)},${ws(base2)}`);
  await b.goto(`${base2}/?room=${room}&name=bo&transport=ws&gateways=${ws(base2)},${ws(base1)}`);
  for (const p of [a, b]) await waitFor(p, "page is open", () => document.body.dataset.state === "open");
  for (const p of [a, b]) { p.off("console", onConsole); p.off("response", onResponse); }
  report("open", { a: await connectedUrl(a), b: await connectedUrl(b), title: await a.title(), loadErrors });

  // 1. Both pages send at once; both show one and the same order.
  const burst = async (p, prefix) => { for (let i = 1; i <= 5; i++) await say(p, `${prefix}${i}`); };
  await Promise.all([burst(a, "a"), burst(b, "b")]);
  await waitCount(a, 10);
  await waitCount(b, 10);
  report("order", { a: await list(a), b: await list(b) });

  // 2. Typing and presence (needs the server's typing/presence frames).
  await a.fill("#composer-input", "typing something");
  const typing = await tryWait(b, () => document.getElementById("typing").textContent);
  const people = await tryWait(b, () => document.querySelectorAll("#people li").length >= 2
    && [...document.querySelectorAll("#people li")].map((li) => li.textContent));
  if (typing) await b.screenshot({ path: join(shotDir, "demo-phone-typing.png") });
  report("presence", { typing, people });
  await a.fill("#composer-input", "");

  // 3. Edit and delete on one page, react on the other: both show it.
  const [first, second] = (await list(a)).filter((m) => m.text.startsWith("a"));
  await a.locator(`#msg-${first.id} .edit`).click();
  await a.fill(`#edit-${first.id}`, "a1 (edited)");
  await a.press(`#edit-${first.id}`, "Enter");
  await a.locator(`#msg-${second.id} .delete`).click();
  await b.locator(`#msg-${first.id} .reaction`).first().click();
  const edited = (p) => waitFor(p, "edit, delete and reaction shown", ([e, d]) => {
    const li = document.getElementById(`msg-${e}`);
    return li.querySelector(".text").textContent === "a1 (edited)"
      && li.querySelector(".edited").textContent === "(edited)"
      && li.querySelector(".reaction").textContent.includes("1")
      && document.getElementById(`msg-${d}`).querySelector(".text").textContent === "Message deleted";
  }, [first.id, second.id]);
  await edited(a);
  await edited(b);
  report("edit", {
    a: await list(a), b: await list(b),
    bHasEditButtonsOnA: await b.locator(`#msg-${first.id} .actions`).isVisible(),
  });
  // The screenshots: B starts typing so that A shows it (when the server relays typing).
  await b.fill("#composer-input", "Looks good!");
  await tryWait(a, () => document.getElementById("typing").textContent, 3_000);
  await a.screenshot({ path: join(shotDir, "demo-desktop.png") });
  await b.screenshot({ path: join(shotDir, "demo-phone.png") });
  await b.fill("#composer-input", "");

  // 4. Page A loses its network; B and A (queued) send meanwhile; A comes back
  // and shows each message exactly once, in order, after the reconnect banner.
  await a.evaluate(() => window.__cut());
  await waitFor(a, "reconnect banner", () => {
    const el = document.getElementById("banner");
    return !el.hidden && el.textContent.includes("Reconnecting");
  });
  const banner = await a.textContent("#banner");
  await a.screenshot({ path: join(shotDir, "demo-desktop-reconnecting.png") });
  for (let i = 1; i <= 3; i++) await say(b, `while-away-${i}`);
  await a.fill("#composer-input", "sent-offline");
  await a.press("#composer-input", "Enter");
  await waitCount(b, 13);
  const offlineStates = await a.evaluate(() => window.__states.length);
  await a.evaluate(() => window.__restore());
  await waitFor(a, "back open", (n) => document.body.dataset.state === "open" && window.__states.length > n, offlineStates);
  await waitCount(a, 14);
  await waitCount(b, 14);
  report("offline", { banner, a: await list(a), b: await list(b), states: await states(a) });

  // 5. A's gateway drains (the test sends SIGTERM): A moves to the other one
  // and misses nothing B sends meanwhile.
  const before = await a.evaluate(() => window.__states.length);
  const drained = await connectedUrl(a);
  report("drain-ready", { port: Number(new URL(drained).port) });
  await waitFor(a, "a 1001 close", (n) => window.__states.slice(n).some((s) => s.code === 1001), before, 30_000);
  for (let i = 1; i <= 4; i++) await say(b, `during-drain-${i}`);
  await waitFor(a, "open again", (n) => document.body.dataset.state === "open"
    && window.__states.slice(n).some((s) => s.state === "open"), before, 30_000);
  await waitCount(a, 18, 30_000);
  await waitCount(b, 18, 30_000);
  report("drain", { from: drained, to: await connectedUrl(a), a: await list(a), b: await list(b), states: await states(a) });
  report("errors", { pageErrors });
} catch (e) {
  const snap = {};
  for (const [k, p] of [["a", a], ["b", b]]) {
    try { snap[k] = { list: await list(p), states: await states(p), banner: await p.textContent("#banner") }; } catch { /* page gone */ }
  }
  console.log(`FAIL ${String(e.message || e).split("\n")[0]} ${JSON.stringify(snap)}`);
  process.exitCode = 1;
} finally {
  clearTimeout(timer);
  await browser.close();
}

// ---- helpers (the shared ones are in lib.mjs) -------------------------------

async function states(p) {
  return p.evaluate(() => window.__states.map((s) => ({ state: s.state, code: s.code, url: s.url })));
}

async function connectedUrl(p) {
  return p.evaluate(() => { const c = window.chatDemo.client; return c.urls[c.urlIndex % c.urls.length]; });
}
