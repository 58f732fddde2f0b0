// Real browser clients against running gateways: headless Chromium opens two
// WebSockets (one per gateway), exchanges a message, sends a bad frame, then
// waits for the server to close one socket and reports the close code.
//
// Usage: node ws-roundtrip.mjs <ws-url-gateway-1> <ws-url-gateway-2>
// Prints one JSON line `PHASE1 {...}` once the exchange is done, then waits
// (bounded) for the first socket's close and prints `PHASE2 {"code":..}`.
import { launch } from "./lib.mjs";

const [url1, url2] = process.argv.slice(2);
if (!url1 || !url2) {
  console.error("usage: node ws-roundtrip.mjs <ws-url-1> <ws-url-2>");
  process.exit(2);
}
const browser = await launch("chromium");
const timer = setTimeout(() => { console.error("timed out"); process.exit(1); }, 60_000);
try {
  const page = await browser.newPage();
  const phase1 = await page.evaluate(async ([u1, u2]) => {
    const open = (u) => new Promise((resolve, reject) => {
      const ws = new WebSocket(u);
      const frames = [];
      ws.onmessage = (e) => frames.push(JSON.parse(e.data));
      ws.onopen = () => resolve({ ws, frames });
      ws.onerror = () => reject(new Error("websocket error " + u));
    });
    const until = (f, ms = 15000) => new Promise((resolve, reject) => {
      const t0 = Date.now();
      const iv = setInterval(() => {
        const v = f();
        if (v) { clearInterval(iv); resolve(v); }
        else if (Date.now() - t0 > ms) { clearInterval(iv); reject(new Error("condition timed out")); }
      }, 10);
    });
    const a = await open(u1);
    const b = await open(u2);
    const historyA = await until(() => a.frames.find((f) => f.type === "history"));
    await until(() => b.frames.find((f) => f.type === "history"));
    a.ws.send(JSON.stringify({ type: "message", data: { room: "browser", message: "héllo 👋", client_id: "br1" } }));
    const ack = await until(() => a.frames.find((f) => f.type === "ack"));
    const delivered = await until(() => b.frames.find((f) => f.type === "message"));
    a.ws.send("not json");
    const error = await until(() => a.frames.find((f) => f.type === "error"));
    window.__closed = new Promise((resolve) => { a.ws.onclose = (e) => resolve({ code: e.code, reason: e.reason }); });
    return { history: historyA, ack, delivered, error };
  }, [url1, url2]);
  console.log("PHASE1 " + JSON.stringify(phase1));
  const phase2 = await page.evaluate(() => window.__closed);
  console.log("PHASE2 " + JSON.stringify(phase2));
} finally {
  clearTimeout(timer);
  await browser.close();
}
