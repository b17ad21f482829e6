// The console's only way to the server: same-origin fetch with the session cookie, the CSRF header on every
// unsafe request, one shared renewal when the access cookie runs out, and the API's JSON errors as ApiError.

export class ApiError extends Error {
  constructor(status, code, message, field = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

const SAFE = new Set(["GET", "HEAD"]);
// 401s that mean "the session ran out" (renew and retry), unlike a wrong current password, which is an answer.
const SESSION_CODES = new Set(["unauthorized", "token_expired", "token_invalid", "token_revoked", "csrf_failed"]);
let renewing = null;
let generation = 0; // bumped by each renewal: a 401 to a request sent before it needs only a retry
let onSignedOut = () => {};

/** Called when the session is gone for good (the page shows the sign-in form). */
export function whenSignedOut(handler) { onSignedOut = handler; }

function csrf() {
  const match = document.cookie.match(/(?:^|;\s*)eva_csrf=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

async function errorOf(response) {
  let body = null;
  try { body = await response.json(); } catch { /* not JSON: a proxy's page */ }
  const e = body && body.error;
  if (e) return new ApiError(response.status, e.code, e.message, e.field);
  return new ApiError(response.status, "http_error", `${response.status} ${response.statusText}`);
}

/** How many renewals this page has made (a caller that saw a 401 before the latest one needs none). */
export function sessionGeneration() { return generation; }

/** Renew the session once for everyone waiting.  Tabs share the cookies, and a refresh cookie spent twice is
 * taken for theft (the server ends the whole login), so tabs take turns: a Web Lock where the browser has one
 * (HTTPS, localhost), else a short lease in localStorage (it holds a random id, never a token).  A tab that gets
 * its turn after another tab renewed sees the new CSRF cookie and does not renew again. */
export function renew() {
  if (!renewing) {
    const before = csrf();
    const run = async () => {
      if (csrf() !== before) return null; // renewed by another tab while this one waited
      const response = await fetch("/api/v1/console/refresh", {
        method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrf() },
      });
      if (!response.ok) throw await errorOf(response);
      return response.json();
    };
    const locked = navigator.locks ? navigator.locks.request("eva-console-refresh", run) : leased(run);
    renewing = locked.then((session) => { generation += 1; return session; }).finally(() => { renewing = null; });
  }
  return renewing;
}

const LEASE = "eva-console-renewing";
const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

function leaseHolder() {
  try { return JSON.parse(localStorage.getItem(LEASE) || "null"); } catch { return null; }
}

/** Run `task` while holding the renewal lease (taken, then confirmed after a pause no other tab overwrote it). */
async function leased(task) {
  const me = `${Date.now()}-${Math.random().toString(36).slice(2)}`;
  for (let tries = 0; tries < 50; tries += 1) {
    const held = leaseHolder();
    if (!held || held.until < Date.now()) {
      try { localStorage.setItem(LEASE, JSON.stringify({ id: me, until: Date.now() + 5000 })); } catch { return task(); }
      await sleep(40 + Math.random() * 40);
      if (leaseHolder()?.id === me) {
        try { return await task(); } finally { if (leaseHolder()?.id === me) localStorage.removeItem(LEASE); }
      }
    }
    await sleep(100);
  }
  return task();
}

/**
 * api("GET", "/agents") → parsed JSON (or null for 204).  `body`: an object (sent as JSON), FormData, or Blob.
 * Options: {raw: true} returns the Response; {signal}; {query: {k: v}}; {onProgress} (uploads, via XHR).
 */
export async function api(method, path, body = undefined, options = {}) {
  const url = new URL(`/api/v1${path}`, location.origin);
  for (const [key, value] of Object.entries(options.query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, String(value));
  }
  const attempt = async () => {
    const headers = { Accept: "application/json" };
    if (!SAFE.has(method)) headers["X-CSRF-Token"] = csrf();
    let payload = body;
    if (body !== undefined && !(body instanceof FormData) && !(body instanceof Blob)) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    }
    if (options.onProgress && payload !== undefined) return upload(method, url, payload, headers, options.onProgress);
    return fetch(url, { method, headers, body: payload, credentials: "same-origin", signal: options.signal });
  };
  const sentWith = generation;
  let response = await attempt();
  if (response.status === 401 && !path.startsWith("/console/") && SESSION_CODES.has((await errorOf(response.clone())).code)) {
    try {
      if (generation === sentWith) await renew();
    } catch (error) {
      onSignedOut(error);
      throw error;
    }
    response = await attempt();
    if (response.status === 401) { const error = await errorOf(response); onSignedOut(error); throw error; }
  }
  if (options.raw) return response;
  if (!response.ok) throw await errorOf(response);
  if (response.status === 204) return null;
  const type = response.headers.get("Content-Type") || "";
  return type.includes("json") ? response.json() : response.text();
}

/** fetch cannot report upload progress: XHR can, and answers in a Response so callers see one shape. */
function upload(method, url, payload, headers, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, url);
    for (const [key, value] of Object.entries(headers)) xhr.setRequestHeader(key, value);
    xhr.upload.onprogress = (event) => { if (event.lengthComputable) onProgress(event.loaded / event.total); };
    xhr.onload = () => resolve(new Response(xhr.status === 204 ? null : xhr.responseText, {
      status: xhr.status, statusText: xhr.statusText,
      headers: { "Content-Type": xhr.getResponseHeader("Content-Type") || "" },
    }));
    xhr.onerror = () => reject(new ApiError(0, "network_error", "the upload did not reach the server"));
    xhr.send(payload);
  });
}

/** GET a list endpoint's page: {items, total, ...} as the API pages them. */
export const get = (path, query) => api("GET", path, undefined, { query });
export const post = (path, body) => api("POST", path, body ?? {});
export const put = (path, body) => api("PUT", path, body);
export const patch = (path, body) => api("PATCH", path, body);
export const del = (path) => api("DELETE", path);
