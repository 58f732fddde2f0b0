// Reconnect delays: exponential backoff with full jitter (a random delay
// between 0 and the exponential cap), so clients cut off together by one
// draining gateway do not all come back in the same instant.

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
  const initial = opts.initialMs ?? 250;
  const max = opts.maxMs ?? 10_000;
  const factor = opts.factor ?? 2;
  const cap = Math.min(max, initial * Math.pow(factor, Math.min(attempt, 30)));
  return Math.floor(random() * cap);
}
