// The coordinator's REST API, same origin only. The bearer token lives in this tab's sessionStorage and
// travels only in the Authorization header: never in a URL, never logged.

const KEY = "mfcpl.token";
const ROLE = "mfcpl.role";

export const token = {
  get: () => sessionStorage.getItem(KEY),
  set: (value) => { sessionStorage.setItem(KEY, value); sessionStorage.removeItem(ROLE); },
  clear: () => { sessionStorage.removeItem(KEY); sessionStorage.removeItem(ROLE); },
};

// What this token was seen to be allowed: "operator" (can list and, until a 403 says otherwise, steer),
// "reader" (lists, but a steering call answered 403: a viewer token), "client" (one federation only).
export const role = {
  get: () => sessionStorage.getItem(ROLE),
  set: (value) => sessionStorage.setItem(ROLE, value),
};

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.code = problem?.code;
  }
}

function headers(extra = {}) {
  const value = token.get();
  return value ? { Authorization: `Bearer ${value}`, ...extra } : extra;
}

async function raise(response) {
  let problem = null;
  try { problem = await response.json(); } catch { /* not JSON */ }
  throw new ApiError(response.status, problem);
}

export async function get(path, { signal } = {}) {
  const response = await fetch(`/v1${path}`, { headers: headers({ Accept: "application/json" }), signal,
                                               cache: "no-store", credentials: "omit" });
  if (!response.ok) await raise(response);
  return response.json();
}

export async function post(path) {
  const response = await fetch(`/v1${path}`, { method: "POST", headers: headers(), credentials: "omit" });
  if (!response.ok) await raise(response);
  return response.json();
}

// Downloads need the Authorization header, so a plain link cannot do: fetch the bytes, hand them to the
// browser as an object URL, revoke it once the save started.
export async function download(path, filename) {
  const response = await fetch(`/v1${path}`, { headers: headers(), credentials: "omit" });
  if (!response.ok) await raise(response);
  const url = URL.createObjectURL(await response.blob());
  const link = Object.assign(document.createElement("a"), { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

// Server-sent events over fetch (an EventSource cannot send the Authorization header). Calls onEvent(type,
// event) for each event; reconnects after the server's `retry:` delay (or on a dropped connection) with
// Last-Event-ID, so nothing is missed or repeated. Resolves when the stream ends for good (the federation
// finished) or stop() was called. onState(true|false) reports whether the stream is connected.
export function streamEvents(fid, { after = 0, onEvent, onState = () => {} }) {
  const controller = new AbortController();
  let lastId = after;
  let retryMs = 2000;
  let stopped = false;

  async function once() {
    const h = headers({ Accept: "text/event-stream" });
    if (lastId > 0) h["Last-Event-ID"] = String(lastId);
    const response = await fetch(`/v1/federations/${encodeURIComponent(fid)}/events?follow=true`,
                                 { headers: h, signal: controller.signal, cache: "no-store", credentials: "omit" });
    if (!response.ok) await raise(response);
    onState(true);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let block = { data: [], type: "message", id: null };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let newline;
      while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + (buffer.startsWith("\r\n", newline) ? 2 : 1));
        if (line === "") {  // end of one event
          if (block.id !== null) lastId = Number(block.id);
          if (block.data.length) {
            let parsed = null;
            try { parsed = JSON.parse(block.data.join("\n")); } catch { /* not JSON */ }
            onEvent(block.type, parsed);
          }
          block = { data: [], type: "message", id: null };
          continue;
        }
        if (line.startsWith(":")) continue;  // a comment (keep-alive)
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") block.data.push(text);
        else if (field === "event") block.type = text;
        else if (field === "id" && /^\d+$/.test(text)) block.id = text;
        else if (field === "retry" && /^\d+$/.test(text)) retryMs = Number(text);
      }
    }
  }

  const done = (async () => {
    while (!stopped) {
      try {
        await once();
        // The server ends the stream when the federation is finished (or it shuts down): one more try
        // tells them apart, and answers at once with nothing new in the first case.
      } catch (error) {
        if (stopped) break;
        if (error instanceof ApiError && [401, 403, 404].includes(error.status)) { onState(false); throw error; }
      }
      onState(false);
      if (stopped) break;
      await new Promise((resolve) => setTimeout(resolve, retryMs));
    }
  })();

  return { stop() { stopped = true; controller.abort(); }, done, get lastId() { return lastId; } };
}
