// Small pure helpers for what the page shows: states, times, masked payloads.

export const TERMINAL_STATES = new Set(["complete", "dead", "cancelled"]);

export function stateLabel(state) {
  return state.replace("_", " ");
}

export function shortId(id) {
  return id.length > 12 ? `${id.slice(0, 8)}…` : id;
}

export function time(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

/** Seconds between two ISO times, or null when either is missing. */
export function secondsBetween(fromIso, toIso) {
  if (!fromIso || !toIso) return null;
  return (new Date(toIso) - new Date(fromIso)) / 1000;
}

export function seconds(value) {
  if (value === null || value === undefined) return "—";
  if (value < 10) return `${value.toFixed(2)} s`;
  if (value < 120) return `${value.toFixed(1)} s`;
  return `${Math.round(value / 60)} min`;
}

/** The value with every key containing one of `words` masked, at any depth. */
export function masked(value, words) {
  if (Array.isArray(value)) return value.map((v) => masked(v, words));
  if (value && typeof value === "object") {
    return Object.fromEntries(
      Object.entries(value).map(([key, v]) => {
        const secret = words.some((word) => key.toLowerCase().includes(word));
        return [key, secret ? "***" : masked(v, words)];
      }),
    );
  }
  return value;
}

export function pretty(value) {
  return JSON.stringify(value, null, 2);
}
