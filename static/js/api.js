// REST and server-sent-events client shared by every page module.

const TERMINAL = new Set(["completed", "failed", "cancelled", "diverged"]);

export function isTerminal(status) {
  return TERMINAL.has(status);
}

// FastAPI errors come as {"detail": "Run 17 not found"} or {"detail": [{loc, msg}, ...]}.
export function errorText(body, fallback) {
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}`).join("; ");
  }
  return fallback;
}

export class ApiError extends Error {
  constructor(status, body) {
    super(errorText(body, `HTTP ${status}`));
    this.status = status;
    this.body = body;
  }
}

// the token this page was served with (templates/base.html): the server wants it on every write
const csrfToken = document.querySelector('meta[name="csrf-token"]')?.content ?? "";

async function send(url, options) {
  const headers = { Accept: "application/json", "X-CSRF-Token": csrfToken, ...(options.headers ?? {}) };
  const response = await fetch(url, { ...options, headers });
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = { detail: text };
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

export const getJSON = (url) => send(url, { method: "GET" });

export const postJSON = (url, payload = {}) =>
  send(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload) });

export const postForm = (url, formData) => send(url, { method: "POST", body: formData });

// any method, with a JSON body when `payload` is given (PATCH, DELETE)
export const sendJSON = (method, url, payload) =>
  send(url, payload === undefined
    ? { method }
    : { method, headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload) });

export async function getHTML(url) {
  const response = await fetch(url, { headers: { Accept: "text/html" } });
  if (!response.ok) throw new Error(`HTTP ${response.status} for ${url}`);
  return response.text();
}

// Follow a run's event stream. Every event carries an id (its position in the run's statistics,
// evaluations, warnings and status); a reconnect resumes after the last id received, so it gets exactly
// what it missed. EventSource's own reconnects send that id too, but it gives up on an HTTP error (a
// restarting server), so reconnects are ours, with the id as `last_event_id`.
export function followRun(eventsUrl, sinceStep, handlers) {
  let lastStep = sinceStep;
  let lastEventId = "";
  let source = null;
  let stopped = false;
  const parse = (fn) => (event) => {
    lastEventId = event.lastEventId || lastEventId;
    fn(JSON.parse(event.data));
  };

  function open() {
    const url = new URL(eventsUrl, window.location.href);
    if (lastEventId) url.searchParams.set("last_event_id", lastEventId);
    else url.searchParams.set("since_step", String(lastStep));
    source = new EventSource(url);
    source.addEventListener("stats", parse((stats) => {
      if (stats.last_step > lastStep) lastStep = stats.last_step;
      handlers.stats?.(stats);
    }));
    source.addEventListener("eval", parse((record) => handlers.eval?.(record)));
    source.addEventListener("warning", parse((warning) => handlers.warning?.(warning)));
    source.addEventListener("status", parse((status) => {
      handlers.status?.(status);
      if (isTerminal(status.status)) stop();
    }));
    source.onerror = () => {
      if (stopped) return;
      source.close();
      setTimeout(() => stopped || open(), 2000);
    };
  }

  function stop() {
    stopped = true;
    source?.close();
  }

  open();
  return { stop, lastStep: () => lastStep, lastEventId: () => lastEventId };
}
