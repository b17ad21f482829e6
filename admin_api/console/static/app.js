// The console's shell: who is signed in, the menu their role allows, and a hash router that loads one screen
// module at a time.  Each screen (pages/*.js) exports `render(main, ctx)` and may return a cleanup function
// (closing its live-event listener, stopping audio) that runs when the user leaves it.

import { api, ApiError, whenSignedOut } from "./lib/api.js";
import { h, replace, toast } from "./lib/dom.js";
import { onStatus } from "./lib/events.js";

const RANK = { pending: 0, viewer: 1, designer: 2, admin: 3 };

const ROUTES = [
  // [pattern, module, least role, menu label]
  [/^\/dashboard$/, "dashboard", "viewer", "Dashboard"],
  [/^\/calls$/, "calls", "viewer", "Calls"],
  [/^\/calls\/(\d+)$/, "call", "viewer"],
  [/^\/agents$/, "agents", "viewer", "Agents"],
  [/^\/agents\/(new|\d+)$/, "agent", "viewer"],
  [/^\/flows$/, "flows", "viewer", "Flows"],
  [/^\/flows\/(new|\d+)$/, "flow", "viewer"],
  [/^\/telephony$/, "telephony", "viewer", "Telephony"],
  [/^\/conversations$/, "conversations", "viewer", "Conversations"],
  [/^\/conversations\/(\d+)$/, "conversation", "viewer"],
  [/^\/campaigns$/, "campaigns", "viewer", "Campaigns"],
  [/^\/campaigns\/(\d+)$/, "campaign", "viewer"],
  [/^\/account$/, "account", "pending", "Account"],
  [/^\/login$/, "login", null],
  [/^\/setup$/, "setup", null],
];

const state = { me: null, cleanup: null, renderId: 0 };
const main = document.getElementById("main");
const live = h("span.live", { title: "Live updates" });
onStatus((status) => { live.dataset.state = status; live.textContent = status === "live" ? "● live" : ""; });

/** True when the signed-in user holds at least `role` (what the API will allow; the screens hide the rest). */
export function can(role) {
  return Boolean(state.me) && (RANK[state.me.role] ?? -1) >= (RANK[role] ?? 99);
}

export function navigate(path) {
  if (location.hash === `#${path}`) route();
  else location.hash = `#${path}`;
}

export function signedIn(me) {
  state.me = me;
  drawChrome();
}

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/dashboard";
  const [path, search = ""] = raw.split("?");
  return { path, query: new URLSearchParams(search) };
}

function drawChrome() {
  const top = document.getElementById("top");
  const nav = document.getElementById("nav");
  const who = document.getElementById("who");
  if (!state.me) { top.hidden = true; return; }
  top.hidden = false;
  const current = parseHash().path;
  replace(nav, h("ul", ROUTES.filter((r) => r[3] && can(r[2])).map(([, module, , label]) => {
    const href = `#/${module}`;
    const active = current === `/${module}` || current.startsWith(`/${module.replace(/s$/, "")}`);
    return h("li", h("a", { href, "aria-current": active ? "page" : false }, label));
  })));
  replace(who, live, h("span.user", `${state.me.name} · ${state.me.role}`),
    h("button.link", { type: "button", onclick: signOut }, "Sign out"));
}

async function signOut() {
  try { await api("POST", "/console/logout", {}); } catch { /* already gone */ }
  state.me = null;
  drawChrome();
  navigate("/login");
}

async function whoAmI() {
  try {
    return await api("GET", "/auth/me");
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return null;
    throw error;
  }
}

async function route() {
  const id = ++state.renderId;
  if (state.cleanup) { try { state.cleanup(); } catch { /* a screen's cleanup must not block the next */ } }
  state.cleanup = null;
  const { path, query } = parseHash();
  const match = ROUTES.map((r) => [r, r[0].exec(path)]).find(([, m]) => m);
  if (!match) { navigate("/dashboard"); return; }
  const [[, module, role], groups] = match;
  if (role !== null && !state.me) {
    const needed = await api("GET", "/console/setup").then((s) => s.needed).catch(() => false);
    if (id !== state.renderId) return;
    navigate(needed ? "/setup" : `/login?next=${encodeURIComponent(path)}`);
    return;
  }
  if (role !== null && !can(role)) {
    replace(main, h("section.page", h("h1", "Not available"),
      h("p", state.me.role === "pending"
        ? "Your account is waiting for an admin to give it a role."
        : "Your role does not include this screen.")));
    return;
  }
  drawChrome();
  replace(main, h("p.loading", "Loading…"));
  try {
    const page = await import(`./pages/${module}.js`);
    if (id !== state.renderId) return;
    replace(main);
    const ctx = { me: state.me, params: groups.slice(1), query, can, navigate, signedIn };
    const cleanup = await page.render(main, ctx);
    if (id !== state.renderId) { if (typeof cleanup === "function") cleanup(); return; }
    state.cleanup = typeof cleanup === "function" ? cleanup : null;
    const heading = main.querySelector("h1");
    document.title = heading ? `${heading.textContent} · Eva` : "Eva console";
    main.focus({ preventScroll: true });
  } catch (error) {
    if (id !== state.renderId) return;
    console.error(error);
    replace(main, h("section.page", h("h1", "Something went wrong"),
      h("p.form-error", error instanceof ApiError ? error.message : String(error)),
      h("button", { type: "button", onclick: () => route() }, "Try again")));
  }
}

whenSignedOut(() => {
  if (!state.me) return;
  state.me = null;
  drawChrome();
  toast("Your session ended: sign in again.", "error");
  navigate("/login");
});

document.getElementById("menu-toggle").addEventListener("click", (event) => {
  const nav = document.getElementById("nav");
  const open = nav.classList.toggle("open");
  event.currentTarget.setAttribute("aria-expanded", String(open));
});
window.addEventListener("hashchange", () => { document.getElementById("nav").classList.remove("open"); route(); });

(async () => {
  try {
    state.me = await whoAmI();
  } catch (error) {
    replace(main, h("section.page", h("h1", "Eva is not answering"), h("p", String(error.message || error))));
    return;
  }
  drawChrome();
  route();
})();
