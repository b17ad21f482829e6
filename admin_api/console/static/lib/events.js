// Live events from /api/v1/console/events (Server-Sent Events), shared by the screens of a tab.
// Events carry ids and states only (call.started, call.answered, call.turn, call.ended, message.stored); a screen
// that hears one re-reads what it shows through the API.  A screen also hears {kind: "resync"} when it may have
// missed events (the stream dropped, the tab was hidden, or the server says this tab fell behind): it refetches.
// A hidden tab closes its stream (browsers allow only six connections to one server, and a stream holds one),
// and reopens it when shown.  When the stream ends with the session ("expired") or drops, the session is renewed
// and the stream reopened, with a growing pause so a server that is away is not hammered.

import { renew, sessionGeneration } from "./api.js";

const listeners = new Set();
const statusListeners = new Set();
let source = null;
let retry = 1000;
let timer = null;
let missed = false; // events may have passed while no stream was open: tell the screens at the next "ready"

function setStatus(state) { for (const fn of statusListeners) fn(state); }
function tell(event) { for (const fn of [...listeners]) fn(event); }

function close(state) {
  clearTimeout(timer);
  if (source) { source.close(); source = null; }
  setStatus(state);
}

function open() {
  close("connecting");
  if (document.hidden || !listeners.size) return;
  const stream = new EventSource("/api/v1/console/events");
  source = stream;
  const opened = sessionGeneration();
  stream.addEventListener("ready", () => {
    retry = 1000;
    setStatus("live");
    if (missed) { missed = false; tell({ kind: "resync" }); }
  });
  stream.addEventListener("lagged", () => tell({ kind: "resync" }));
  stream.addEventListener("eva", (message) => {
    let event;
    try { event = JSON.parse(message.data); } catch { return; }
    tell(event);
  });
  const reopen = async () => {
    if (source !== stream) return; // already replaced or closed
    close("reconnecting");
    missed = true;
    if (!listeners.size) return;
    try { if (sessionGeneration() === opened) await renew(); } catch { /* signed out, or the server is away: try again later */ }
    timer = setTimeout(() => { if (listeners.size && !source) open(); }, retry);
    retry = Math.min(retry * 2, 30000);
  };
  stream.addEventListener("expired", reopen);
  stream.onerror = reopen;
}

document.addEventListener("visibilitychange", () => {
  if (document.hidden) {
    if (source) { close("paused"); missed = true; }
  } else if (listeners.size && !source) {
    open();
  }
});

/** Hear every live event until the returned function is called. */
export function onEvent(handler) {
  listeners.add(handler);
  if (!source) open();
  return () => {
    listeners.delete(handler);
    if (!listeners.size) { close("off"); missed = false; }
  };
}

/** "live" / "reconnecting" / "paused" / "off", for a small indicator. */
export function onStatus(handler) {
  statusListeners.add(handler);
  return () => statusListeners.delete(handler);
}

/** Run `fn` at most once per `wait` ms however many events arrive (a busy minute is one refetch a second). */
export function debounce(fn, wait = 1000) {
  let pending = null;
  return (...args) => {
    if (pending) return;
    pending = setTimeout(() => { pending = null; fn(...args); }, wait);
  };
}
