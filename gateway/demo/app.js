// The demo page: one room through the JS client (served at /client/index.js).
// URL parameters: room, name (join at once when both are set) and gateways
// (comma list of WebSocket URLs to fail over between; default: this gateway),
// transport (`auto`, the default: WebSocket, falling back to server-sent
// events + HTTP when WebSockets are blocked; `ws`; `sse`).
import { ChatClient } from "../client/index.js";

const $ = (id) => document.getElementById(id);
const els = {
  join: $("join"), room: $("join-room"), name: $("join-name"), title: $("room-title"),
  banner: $("banner"), list: $("messages"), older: $("older"), typing: $("typing"),
  composer: $("composer"), input: $("composer-input"), error: $("error"),
  people: $("people"), count: $("people-count"), template: $("message-template"),
};
const EMOJI = ["👍", "❤️", "😂", "🎉"];
const params = new URLSearchParams(location.search);
const ownGateway = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`;
// `?gateways=` may name only this page's own origin or the ones the operator
// lists in DEMO_GATEWAYS (served in the chat-gateways meta tag): a link
// cannot point the page, and the session it holds, at someone else's server.
// Entries are origins, or `scheme://host:*` for any port of a host (as in CSP).
const allowedOrigins = [new URL(ownGateway).origin,
  ...(document.querySelector('meta[name="chat-gateways"]')?.content || "").split(",").map((s) => s.trim()).filter(Boolean)];
const allowed = (g) => {
  let u;
  try { u = new URL(g); } catch { return false; }
  return allowedOrigins.some((o) => o === u.origin || (o.endsWith(":*") && o.slice(0, -2) === `${u.protocol}//${u.hostname}`));
};
const asked = (params.get("gateways") || "").split(",").map((s) => s.trim()).filter(Boolean);
const gateways = asked.filter(allowed);
const refusedGateways = asked.filter((g) => !gateways.includes(g));
if (!gateways.length) gateways.push(ownGateway);

/** @type {ChatClient|null} */
let client = null;
let me = "";
const typers = new Map(); // username → timer that clears it
const reads = new Map(); // username → seq
let people = [];
let typingSentAt = 0;
let typingStop = null;
let lastReadSent = 0;

els.name.value = params.get("name") || localStorage.getItem("chat-demo-name") || "";
els.room.value = params.get("room") || els.room.value;
els.join.addEventListener("submit", (e) => { e.preventDefault(); join(els.room.value.trim(), els.name.value.trim()); });
if (params.get("room") && params.get("name")) join(els.room.value, els.name.value);

function join(room, name) {
  if (!room || !name) return;
  client?.close();
  me = name;
  localStorage.setItem("chat-demo-name", name);
  els.list.replaceChildren();
  people = [];
  reads.clear();
  renderPeople();
  els.title.textContent = `#${room}`;
  document.title = `#${room} — Chat demo`;
  const transport = ["ws", "sse"].includes(params.get("transport")) ? params.get("transport") : "auto";
  const c = new ChatClient({ url: gateways, room, username: name, transport, backoff: { initialMs: 300, maxMs: 5000 } });
  client = c;
  window.chatDemo = { client: c };
  c.on("state", (s) => c === client && onState(s));
  c.on("message", (m) => { renderMessage(m); stopTyping(m.username); markRead(); });
  c.on("update", ({ message }) => renderMessage(message));
  c.on("reset", () => { els.list.replaceChildren(); for (const m of c.store.messages()) renderMessage(m); });
  c.on("history", (h) => { els.older.hidden = !c.store.messages().length || c.store.messages()[0].seq <= 1; if (h.truncated) showError("Some messages were too old to recover."); });
  c.on("presence", (p) => { people = p.users || []; renderPeople(); });
  c.on("join", (j) => { if (!people.some((u) => u.username === j.username)) people.push({ username: j.username, connections: 1 }); renderPeople(); });
  c.on("leave", (l) => { people = people.filter((u) => u.username !== l.username); stopTyping(l.username); renderPeople(); });
  c.on("typing", (t) => (t.active ? startTyping(t.username) : stopTyping(t.username)));
  c.on("read", (r) => { reads.set(r.username, r.seq); renderPeople(); });
  c.on("error", (e) => { if (e.code !== "unknown_type") showError(`${e.code}: ${e.message}`); });
  c.connect();
  els.input.disabled = false;
  els.composer.querySelector("button").disabled = false;
  els.input.focus();
}

function onState({ state, attempt, delayMs, transport }) {
  document.body.dataset.state = state;
  if (transport) document.body.dataset.transport = transport;
  if (state === "reconnecting") {
    for (const name of [...typers.keys()]) stopTyping(name); // stale once cut off
    const wait = delayMs !== undefined ? ` in ${(delayMs / 1000).toFixed(1)} s` : "";
    showBanner(`Connection lost. Reconnecting${wait} (attempt ${attempt || 1})…`, "warn");
  } else if (state === "open") {
    if (!els.banner.hidden) showBanner("Back online.", "ok", 2000);
    client.presence().catch(() => {
      // A gateway without presence: show at least yourself.
      if (!people.length) { people = [{ username: me, connections: 1 }]; renderPeople(); }
    });
  } else if (state === "closed") {
    showBanner("Disconnected.", "warn");
  }
}

let bannerTimer = null;
function showBanner(text, kind, hideAfterMs) {
  clearTimeout(bannerTimer);
  els.banner.textContent = text;
  els.banner.dataset.kind = kind;
  els.banner.hidden = false;
  if (hideAfterMs) bannerTimer = setTimeout(() => { els.banner.hidden = true; }, hideAfterMs);
}

function showError(text) {
  els.error.textContent = text;
  setTimeout(() => { if (els.error.textContent === text) els.error.textContent = ""; }, 6000);
}

// ---- messages ------------------------------------------------------------

function renderMessage(m) {
  let li = document.getElementById(`msg-${m.id}`);
  if (!li) {
    li = els.template.content.firstElementChild.cloneNode(true);
    li.id = `msg-${m.id}`;
    li.dataset.id = m.id;
    li.dataset.seq = String(m.seq);
    const after = [...els.list.children].find((x) => Number(x.dataset.seq) > m.seq);
    els.list.insertBefore(li, after || null);
  }
  queueMicrotask(followNewest);
  if (li.dataset.editing) return; // refreshed when the edit form closes
  // The server's user id when it said one (sessions, tokens); the name otherwise.
  const mine = client?.userId && m.user_id ? m.user_id === client.userId : m.username === me;
  li.classList.toggle("mine", mine);
  li.classList.toggle("deleted", Boolean(m.deleted));
  li.querySelector(".author").textContent = m.deleted ? "" : m.username || "anonymous";
  const time = li.querySelector("time");
  time.dateTime = m.timestamp || "";
  time.textContent = m.timestamp ? new Date(m.timestamp).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
  li.querySelector(".edited").textContent = m.edited_at && !m.deleted ? "(edited)" : "";
  li.querySelector(".text").textContent = m.deleted ? "Message deleted" : m.message;
  renderReactions(li, m);
  const actions = li.querySelector(".actions");
  actions.hidden = !mine || Boolean(m.deleted);
  actions.querySelector(".edit").onclick = () => startEdit(li, m.id);
  actions.querySelector(".delete").onclick = () => {
    request(client.delete(m.id));
    els.input.focus(); // the button goes away with the message's text
  };
}

// Stay at the newest message unless the reader scrolled up.
let stickToBottom = true;
els.list.addEventListener("scroll", () => {
  stickToBottom = els.list.scrollHeight - els.list.scrollTop - els.list.clientHeight < 60;
});
function followNewest() {
  if (stickToBottom) els.list.scrollTop = els.list.scrollHeight;
}

function renderReactions(li, m) {
  const box = li.querySelector(".reactions");
  box.replaceChildren();
  if (m.deleted) return;
  for (const emoji of EMOJI) {
    const count = m.reactions?.[emoji] || 0;
    const mineReacted = client.store.hasReacted(m.id, emoji, me);
    const b = document.createElement("button");
    b.type = "button";
    b.className = "reaction";
    b.textContent = count ? `${emoji} ${count}` : emoji;
    b.setAttribute("aria-pressed", String(mineReacted));
    b.setAttribute("aria-label", `React with ${emoji}${count ? `, ${count} so far` : ""}`);
    b.onclick = () => request(client.react(m.id, emoji, mineReacted ? "remove" : "add"));
    box.append(b);
  }
}

function startEdit(li, id) {
  const m = client.store.get(id);
  if (!m || m.deleted) return;
  li.dataset.editing = "1";
  const form = document.createElement("form");
  form.className = "edit-form";
  const label = document.createElement("label");
  label.className = "visually-hidden";
  label.htmlFor = `edit-${id}`;
  label.textContent = "Edit message";
  const input = document.createElement("input");
  input.id = `edit-${id}`;
  input.value = m.message;
  input.maxLength = 4096;
  const save = Object.assign(document.createElement("button"), { type: "submit", textContent: "Save" });
  const cancel = Object.assign(document.createElement("button"), { type: "button", textContent: "Cancel" });
  form.append(label, input, save, cancel);
  const text = li.querySelector(".text");
  text.replaceChildren(form);
  const done = () => { delete li.dataset.editing; renderMessage(client.store.get(id)); li.querySelector(".edit").focus(); };
  cancel.onclick = done;
  input.onkeydown = (e) => { if (e.key === "Escape") done(); };
  form.onsubmit = (e) => {
    e.preventDefault();
    const value = input.value.trim();
    if (value && value !== m.message) request(client.edit(id, value));
    done();
  };
  input.focus();
  input.select();
}

function request(promise) {
  promise.catch((e) => showError(`${e.code || "error"}: ${e.message}`));
}

els.older.onclick = () => client?.loadOlder();

// ---- composer, typing and read receipts -----------------------------------

els.composer.addEventListener("submit", (e) => {
  e.preventDefault();
  const text = els.input.value.trim();
  if (!text || !client) return;
  els.input.value = "";
  request(client.send(text));
  sendTyping(false);
});
els.input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    els.composer.requestSubmit();
  }
});
els.input.addEventListener("input", () => {
  if (!els.input.value) return sendTyping(false);
  if (Date.now() - typingSentAt > 2000) sendTyping(true);
  clearTimeout(typingStop);
  typingStop = setTimeout(() => sendTyping(false), 3000);
});

function sendTyping(active) {
  if (!client) return;
  clearTimeout(typingStop);
  if (!active && !typingSentAt) return;
  typingSentAt = active ? Date.now() : 0;
  client.typing(active);
}

function startTyping(name) {
  if (!name || name === me) return;
  clearTimeout(typers.get(name));
  typers.set(name, setTimeout(() => stopTyping(name), 6000));
  renderTyping();
}
function stopTyping(name) {
  if (!typers.has(name)) return;
  clearTimeout(typers.get(name));
  typers.delete(name);
  renderTyping();
}
function renderTyping() {
  const names = [...typers.keys()];
  els.typing.textContent = !names.length ? ""
    : names.length === 1 ? `${names[0]} is typing…` : `${names.join(", ")} are typing…`;
}

function markRead() {
  const seq = client?.store.lastSeq || 0;
  if (document.visibilityState !== "visible" || seq <= lastReadSent) return;
  clearTimeout(markRead.timer);
  markRead.timer = setTimeout(() => { if (client?.read(seq)) lastReadSent = seq; }, 500);
}
document.addEventListener("visibilitychange", markRead);

function renderPeople() {
  els.count.textContent = people.length ? `(${people.length})` : "";
  els.people.replaceChildren(...people.map((u) => {
    const li = document.createElement("li");
    li.textContent = u.username + (u.username === me ? " (you)" : "");
    const seq = reads.get(u.username);
    if (seq) {
      const small = document.createElement("small");
      small.textContent = ` read up to #${seq}`;
      li.append(small);
    }
    return li;
  }));
}

if (refusedGateways.length) showError(`Ignored gateways outside this origin and DEMO_GATEWAYS: ${refusedGateways.join(", ")}`);
