// Live events from /api/v1/console/events (Server-Sent Events): one connection per tab, shared by the screens.
// Events carry ids and states only (call.started, call.answered, call.turn, call.ended, message.stored); a screen
// that hears one re-reads what it shows through the API.  When the stream ends with the session ("expired") or
// drops, the session is renewed and the stream reopened, with a growing pause so a down server is not hammered.

import { renew, sessionGeneration } from "./api.js";

const listeners = new Set();
let source = null;
let retry = 1000;
let timer = null;
const statusListeners = new Set();

function setStatus(state) { for (const fn of statusListeners) fn(state); }

function open() {
  clearTimeout(timer);
  if (source) source.close();
  source = new EventSource("/api/v1/console/events");
  const opened = sessionGeneration();
  source.addEventListener("ready", () => { retry = 1000; setStatus("live"); });
  source.addEventListener("eva", (message) => {
    let event;
    try { event = JSON.parse(message.data); } catch { return; }
    for (const fn of listeners) fn(event);
  });
  const reopen = async () => {
    source.close();
    source = null;
    setStatus("reconnecting");
    if (!listeners.size) return;
    try { if (sessionGeneration() === opened) await renew(); } catch { /* signed out, or the server is away: try again later */ }
    timer = setTimeout(() => { if (listeners.size) open(); }, retry);
    retry = Math.min(retry * 2, 30000);
  };
  source.addEventListener("expired", reopen);
  source.onerror = reopen;
}

/** Hear every live event until the returned function is called. */
export function onEvent(handler) {
  listeners.add(handler);
  if (!source) open();
  return () => {
    listeners.delete(handler);
    if (!listeners.size && source) { source.close(); source = null; setStatus("off"); }
  };
}

/** "live" / "reconnecting" / "off", for a small indicator. */
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
