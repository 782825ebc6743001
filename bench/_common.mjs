// What the load generators (loadgen.mjs, broadcast_loadgen.mjs) share.

/** Lines on stderr at the start and end of the measured window (see _common.py). */
export const MEASURING = "loadgen: measuring";
export const MEASURED = "loadgen: measured";

/** The value at quantile q (0..1) of an ascending array, nearest rank; null if empty. */
export function quantile(sorted, q) {
  if (sorted.length === 0) return null;
  const rank = Math.max(1, Math.ceil(q * sorted.length));
  return sorted[rank - 1];
}

/** Round to 3 decimals (microseconds, for values in ms). */
export function round3(x) {
  return x === null ? null : Math.round(x * 1000) / 1000;
}

/** CPU seconds (user + system) this process has used so far. */
export function cpuSeconds() {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1e6;
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
