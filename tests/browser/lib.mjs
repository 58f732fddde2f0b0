// What the browser scripts share: headless Chromium, the `PHASE` report the
// Rust tests read, and the demo page's helpers (send through the composer,
// read the message list, wait with a deadline). Imported by demo-chat.mjs,
// sse-chat.mjs and ws-roundtrip.mjs.
import { chromium } from "playwright-core";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** The default deadline of a wait, in milliseconds. */
export const WAIT = 20_000;

/** Headless Chromium ($CHROMIUM, else /usr/bin/chromium) in a fresh profile. */
export function launch(tag) {
  return chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), `chat-${tag}-`)), {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
}

/** One `PHASE <name> <json>` line for the Rust test to assert on. */
export const report = (name, data) => console.log(`PHASE ${name} ${JSON.stringify(data)}`);

/** Type and send through the page's composer (Enter), as a user does. */
export async function say(p, text) {
  await p.fill("#composer-input", text);
  await p.press("#composer-input", "Enter");
}

/** The messages the page shows, top to bottom. */
export async function list(p) {
  return p.$$eval("#messages > li", (lis) => lis.map((li) => ({
    seq: Number(li.dataset.seq), id: li.dataset.id,
    author: li.querySelector(".author").textContent, text: li.querySelector(".text").textContent,
  })));
}

/** Waits until the page shows at least `n` messages. */
export async function waitCount(p, n, timeout = WAIT) {
  await waitFor(p, `${n} messages`, (n) => document.querySelectorAll("#messages > li").length >= n, n, timeout);
}

/** Waits until `fn(arg)` holds in the page; fails saying `what` at the deadline. */
export async function waitFor(p, what, fn, arg, timeout = WAIT) {
  try {
    return await p.waitForFunction(fn, arg, { timeout, polling: 20 });
  } catch (e) {
    throw new Error(`waiting for ${what}: ${e.message}`);
  }
}

/** A condition that may never hold (a server feature missing): its value, or null. */
export async function tryWait(p, fn, timeout = 8_000) {
  try {
    return await (await p.waitForFunction(fn, null, { timeout, polling: 20 })).jsonValue();
  } catch {
    return null;
  }
}
