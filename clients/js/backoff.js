// Reconnect delays: exponential backoff with full jitter (a random delay
// between 0 and the exponential cap), so clients cut off together by one
// draining gateway do not all come back in the same instant. A gateway that
// refuses a connection for overload (close 1013 "overloaded: retry after N
// s") is honoured: the delay is at least N seconds, then jittered over a
// window at least as wide, so a crowd refused together comes back spread.

/**
 * @typedef {object} BackoffOptions
 * @property {number} [initialMs=250] Cap of the first retry's delay.
 * @property {number} [maxMs=10000] Largest cap.
 * @property {number} [factor=2] Growth of the cap per attempt.
 */

/**
 * The delay before reconnect attempt `attempt` (0 for the first retry).
 * @param {number} attempt
 * @param {BackoffOptions} [opts]
 * @param {() => number} [random=Math.random] A source of [0, 1).
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, opts = {}, random = Math.random) {
  return Math.floor(random() * backoffCap(attempt, opts));
}

/**
 * The exponential cap of attempt `attempt`'s delay.
 * @param {number} attempt
 * @param {BackoffOptions} [opts]
 * @returns {number} milliseconds
 */
function backoffCap(attempt, opts = {}) {
  const initial = opts.initialMs ?? 250;
  const max = opts.maxMs ?? 10_000;
  const factor = opts.factor ?? 2;
  return Math.min(max, initial * Math.pow(factor, Math.min(attempt, 30)));
}

/**
 * The server's retry hint in a close reason (`overloaded: retry after N s`,
 * sent with close code 1013), in milliseconds; `undefined` when there is none.
 * @param {string | undefined} reason
 * @returns {number | undefined}
 */
export function retryHintMs(reason) {
  const m = /retry after (\d+) s/.exec(reason ?? "");
  return m ? Number(m[1]) * 1000 : undefined;
}

/**
 * The delay before reconnect attempt `attempt` after the server asked to
 * wait `hintMs`: the hint, plus full jitter over the hint or the backoff
 * cap, whichever is wider.
 * @param {number} hintMs
 * @param {number} attempt
 * @param {BackoffOptions} [opts]
 * @param {() => number} [random=Math.random] A source of [0, 1).
 * @returns {number} milliseconds
 */
export function hintedDelay(hintMs, attempt, opts = {}, random = Math.random) {
  return hintMs + Math.floor(random() * Math.max(hintMs, backoffCap(attempt, opts)));
}
