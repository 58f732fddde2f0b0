// The message store: a room's messages in `seq` order, kept in their current
// state by applying the room's ordered events (edit, delete, reaction).
//
// One rule covers the join history, `since` recovery, older pages and live
// frames: an item whose `seq` is above the highest one applied is new and is
// applied in order; an older item is only used to fill in a message the
// store does not hold yet (a page of older history). History already shows
// each message's current state, and applying its events again in `seq` order
// converges on that same state, so replaying is harmless.

/**
 * A message as the server sends it, in its current state.
 * @typedef {object} ChatMessage
 * @property {string} id UUID v7 assigned by the gateway.
 * @property {string} room
 * @property {number} seq Per-room sequence number.
 * @property {string} [message] Text; absent when deleted.
 * @property {string} [username]
 * @property {string|null} [user_id]
 * @property {string} [timestamp] RFC 3339 UTC.
 * @property {string} [edited_at]
 * @property {boolean} [deleted]
 * @property {Record<string, number>} [reactions] Emoji → count.
 * @property {string} [reply_to]
 * @property {Array<{url: string, name?: string, mime?: string, size?: number}>} [attachments]
 */

/**
 * A room event: `edit`, `delete` or `reaction`, with the fields of its frame.
 * @typedef {object} RoomEvent
 * @property {"edit"|"delete"|"reaction"} type
 * @property {string} id The target message's id.
 * @property {number} seq
 * @property {string} [message]
 * @property {string} [edited_at]
 * @property {string} [emoji]
 * @property {"add"|"remove"} [op]
 * @property {number} [count]
 * @property {string} [username]
 * @property {string|null} [user_id]
 */

/**
 * What one `apply*` call changed.
 * @typedef {object} Change
 * @property {"message"|"update"} kind `message`: a message was added; `update`: one changed.
 * @property {ChatMessage} message
 * @property {RoomEvent} [event] The event that caused an update.
 */

export const EVENT_TYPES = new Set(["edit", "delete", "reaction"]);

export class MessageStore {
  constructor() {
    /** @type {Map<string, ChatMessage>} */
    this.byId = new Map();
    /** @type {ChatMessage[]} kept sorted by `seq` */
    this.list = [];
    /** Highest `seq` applied (messages and events), 0 before any. */
    this.lastSeq = 0;
    /** @type {string|undefined} The room epoch `lastSeq` belongs to. */
    this.epoch = undefined;
    /**
     * Users seen reacting, per message and emoji (only from events this store
     * applied: history carries counts, not names).
     * @type {Map<string, Map<string, Set<string>>>}
     */
    this.reactors = new Map();
  }

  /** Messages oldest first (a copy). @returns {ChatMessage[]} */
  messages() {
    return this.list.slice();
  }

  /** @param {string} id @returns {ChatMessage|undefined} */
  get(id) {
    return this.byId.get(id);
  }

  /** Forget everything (an epoch reset). */
  clear() {
    this.byId.clear();
    this.list = [];
    this.lastSeq = 0;
    this.epoch = undefined;
    this.reactors.clear();
  }

  /**
   * Apply a complete (assembled) history answer.
   * @param {{messages?: Array<ChatMessage|RoomEvent>, epoch?: string, reset?: string}} data
   * @returns {Change[]}
   */
  applyHistory(data) {
    if (data.reset) this.clear();
    if (data.epoch !== undefined) this.epoch = data.epoch;
    const items = (data.messages || []).slice().sort((a, b) => a.seq - b.seq);
    const floor = this.oldestSeq();
    /** @type {Change[]} */
    const changes = [];
    for (const item of items) {
      const type = /** @type {any} */ (item).type;
      const change = type ? this.applyEvent(/** @type {RoomEvent} */ (item))
        : this.applyMessage(/** @type {ChatMessage} */ (item), floor);
      if (change) changes.push(change);
    }
    return changes;
  }

  /**
   * Apply one message (live or from history). Repeats are dropped.
   * @param {ChatMessage} msg
   * @param {number} [floor] Older messages than this one, not held yet, are
   *   filled in (a page of older history); default: the oldest held.
   * @returns {Change|null}
   */
  applyMessage(msg, floor = this.oldestSeq()) {
    if (typeof msg.seq !== "number" || this.byId.has(msg.id)) {
      this.bump(msg.seq);
      return null;
    }
    if (msg.seq <= this.lastSeq && !(msg.seq < floor)) return null;
    const copy = { ...msg };
    this.byId.set(copy.id, copy);
    this.insertSorted(copy);
    this.bump(msg.seq);
    return { kind: "message", message: copy };
  }

  /**
   * Apply one room event to its target. Events at or below `lastSeq` were
   * applied already, or are older than the state history showed.
   * @param {RoomEvent} ev
   * @returns {Change|null}
   */
  applyEvent(ev) {
    if (typeof ev.seq !== "number" || ev.seq <= this.lastSeq) return null;
    this.bump(ev.seq);
    const target = this.byId.get(ev.id);
    if (!target) return null;
    switch (ev.type) {
      case "edit":
        if (target.deleted) return null;
        target.message = ev.message;
        target.edited_at = ev.edited_at;
        break;
      case "delete":
        target.deleted = true;
        delete target.message;
        delete target.reactions;
        delete target.attachments;
        break;
      case "reaction": {
        if (!ev.emoji) return null;
        const reactions = { ...(target.reactions || {}) };
        if (typeof ev.count === "number") {
          if (ev.count > 0) reactions[ev.emoji] = ev.count;
          else delete reactions[ev.emoji];
        }
        if (Object.keys(reactions).length) target.reactions = reactions;
        else delete target.reactions;
        this.noteReactor(ev);
        break;
      }
      default:
        return null;
    }
    return { kind: "update", message: target, event: ev };
  }

  /**
   * Whether the user `who` is known to have reacted with `emoji` (from events seen).
   * @param {string} id @param {string} emoji @param {string} who
   */
  hasReacted(id, emoji, who) {
    return this.reactors.get(id)?.get(emoji)?.has(who) ?? false;
  }

  /** @param {RoomEvent} ev */
  noteReactor(ev) {
    const who = ev.user_id || ev.username;
    if (!who || !ev.emoji) return;
    let perMsg = this.reactors.get(ev.id);
    if (!perMsg) this.reactors.set(ev.id, (perMsg = new Map()));
    let users = perMsg.get(ev.emoji);
    if (!users) perMsg.set(ev.emoji, (users = new Set()));
    if (ev.op === "remove") users.delete(who);
    else users.add(who);
  }

  /** The oldest `seq` held (Infinity when empty). */
  oldestSeq() {
    return this.list.length ? this.list[0].seq : Infinity;
  }

  /** @param {number} seq */
  bump(seq) {
    if (typeof seq === "number" && seq > this.lastSeq) this.lastSeq = seq;
  }

  /** @param {ChatMessage} msg */
  insertSorted(msg) {
    let i = this.list.length;
    while (i > 0 && this.list[i - 1].seq > msg.seq) i--;
    this.list.splice(i, 0, msg);
  }
}
