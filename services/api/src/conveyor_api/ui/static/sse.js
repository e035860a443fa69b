// Server-Sent Events over fetch(): EventSource cannot send an Authorization
// header. Parses the event stream format (event:, data:, id:, retry:,
// comments), and reconnects with exponential backoff and jitter.

import { ApiError } from "./api.js";

const FIRST_DELAY_MS = 1000;
const MAX_DELAY_MS = 30000;

/** Reads `body` and calls `dispatch(name, data, lastEventId)` for each event. */
export async function readEvents(body, dispatch, signal) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let name = "";
  let data = [];
  let lastEventId = "";
  const onLine = (line) => {
    if (line === "") {
      if (data.length) dispatch(name || "message", data.join("\n"), lastEventId);
      name = "";
      data = [];
      return;
    }
    if (line.startsWith(":")) return; // a comment: keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") name = value;
    else if (field === "data") data.push(value);
    else if (field === "id" && !value.includes("\0")) lastEventId = value;
  };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      const lines = buffer.split("\n");
      buffer = lines.pop();
      for (const line of lines) onLine(line.endsWith("\r") ? line.slice(0, -1) : line);
      if (signal?.aborted) return;
    }
  } finally {
    reader.releaseLock();
  }
}

/**
 * One stream, kept open until `close()` or until an event named in `finalEvents`
 * arrives. `onState(state, detail)` reports "open", "retrying" (with the error
 * and the delay), "ended" and "failed" (an error that retrying cannot fix).
 */
export class EventStream {
  #abort = null;
  #closed = false;

  constructor(url, { headers, onEvent, onState, finalEvents = ["end"] }) {
    this.url = url;
    this.headers = headers;
    this.onEvent = onEvent;
    this.onState = onState;
    this.finalEvents = new Set(finalEvents);
  }

  start() {
    this.#run();
    return this;
  }

  close() {
    this.#closed = true;
    this.#abort?.abort();
  }

  async #run() {
    let attempt = 0;
    while (!this.#closed) {
      this.#abort = new AbortController();
      let error = null;
      let finished = false;
      try {
        const response = await fetch(this.url, {
          headers: { Accept: "text/event-stream", ...this.headers() },
          signal: this.#abort.signal,
          cache: "no-store",
        });
        if (!response.ok) throw await ApiError.from(response);
        attempt = 0;
        this.onState("open");
        await readEvents(
          response.body,
          (name, data, id) => {
            if (this.#closed) return;
            const parsed = JSON.parse(data);
            if (name === "error") error = new ApiError(parsed.status ?? 0, parsed);
            if (this.finalEvents.has(name)) finished = true;
            this.onEvent(name, parsed, id);
          },
          this.#abort.signal,
        );
      } catch (err) {
        if (this.#closed) return;
        error = err instanceof ApiError ? err : ApiError.unreachable(err);
      }
      if (this.#closed) return;
      if (finished) {
        this.onState("ended");
        return;
      }
      if (error && [400, 401, 403, 404, 422].includes(error.status)) {
        this.onState("failed", { error }); // the same request would fail again
        return;
      }
      const backoffMs = Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** attempt);
      const delayMs = Math.max((error?.retryAfterS ?? 0) * 1000, backoffMs * (0.5 + Math.random() / 2));
      attempt += 1;
      this.onState("retrying", { error, delayMs });
      await new Promise((resolve) => setTimeout(resolve, delayMs));
    }
  }
}
