// Calls: the call history, newest first, filtered by agent, direction, outcome, caller, number dialled and
// date (the filters live in the address, #/calls?agent_id=3&page=2, so a reload or a shared link keeps them),
// paged, each row a link to the call.  The list re-reads itself when a call starts, is answered or ends.
// Also exports the small helpers the dashboard and the call page share (outcome badge, duration, agent names).

import { get } from "../lib/api.js";
import { field, h, pageLinks, replace, seconds, select, table, when } from "../lib/dom.js";
import { debounce, onEvent } from "../lib/events.js";

const PAGE_SIZE = 25;
export const OUTCOMES = ["active", "completed", "caller_hangup", "transferred", "continued", "failed", "no_route",
  "busy", "max_duration", "shutdown"];
const GOOD = new Set(["completed", "caller_hangup", "transferred", "continued"]);
const BAD = new Set(["failed", "no_route", "busy", "shutdown"]);

/** The outcome as a coloured badge ("active" while the call is up). */
export function outcomeBadge(outcome) {
  const kind = GOOD.has(outcome) ? ".ok" : BAD.has(outcome) ? ".bad" : ".warn";
  return h(`span.badge${kind}`, String(outcome || "—").replace(/_/g, " "));
}

const utc = (iso) => new Date(/Z|[+-]\d\d:?\d\d$/.test(iso) ? iso : `${iso}Z`);

/** Seconds between two API timestamps (the second one defaults to now: a call still going on). */
export function elapsed(from, to = null) {
  if (!from) return null;
  return Math.max(0, ((to ? utc(to) : new Date()) - utc(from)) / 1000);
}

export const callDuration = (call) => (call.answered_at ? seconds(elapsed(call.answered_at, call.ended_at)) : "—");

/** id → name of every agent (one request; a deleted agent shows as "agent N"). */
export async function agentNames() {
  const agents = await get("/agents");
  return new Map(agents.map((a) => [a.id, a.name]));
}

export const agentName = (names, id) => (id === null || id === undefined ? "—" : names.get(id) || `agent ${id}`);

/** The start of the local day `date` (YYYY-MM-DD) as an ISO instant, optionally some days later. */
function dayStart(date, plusDays = 0) {
  const [y, m, d] = date.split("-").map(Number);
  return new Date(y, m - 1, d + plusDays).toISOString();
}

// Filters as they appear in the address, and how each becomes an API query parameter.
const FILTERS = ["agent_id", "direction", "outcome", "caller", "did", "from", "to"];

function apiQuery(query) {
  const out = { limit: PAGE_SIZE, offset: (Math.max(1, Number(query.get("page")) || 1) - 1) * PAGE_SIZE };
  for (const name of ["agent_id", "direction", "outcome", "caller", "did"]) {
    if (query.get(name)) out[name] = query.get(name);
  }
  if (query.get("from")) out.since = dayStart(query.get("from"));
  if (query.get("to")) out.until = dayStart(query.get("to"), 1);
  return out;
}

function filterForm(ctx, names) {
  const q = ctx.query;
  const text = (name, type = "text", attrs = {}) => h("input", { name, type, value: q.get(name) || "", ...attrs });
  const form = h("form.filters", { "aria-label": "Filter calls" },
    field("Agent", select("agent_id", [["", "Any agent"], ...[...names].map(([id, name]) => [id, name])], q.get("agent_id"))),
    field("Direction", select("direction", [["", "Both"], ["inbound", "Inbound"], ["outbound", "Outbound"]], q.get("direction"))),
    field("Outcome", select("outcome", [["", "Any outcome"], ...OUTCOMES.map((o) => [o, o.replace(/_/g, " ")])], q.get("outcome"))),
    field("Caller number starts with", text("caller", "search", { maxlength: 64, autocomplete: "off" })),
    field("Number dialled", text("did", "search", { maxlength: 64, autocomplete: "off" })),
    field("From", text("from", "date")),
    field("To", text("to", "date")),
    h("div.filter-buttons",
      h("button.primary", { type: "submit" }, "Filter"),
      h("button", { type: "button", onclick: () => ctx.navigate("/calls") }, "Clear")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const params = new URLSearchParams();
    for (const name of FILTERS) {
      const value = String(form.elements[name].value || "").trim();
      if (value) params.set(name, value);
    }
    const search = params.toString();
    ctx.navigate(search ? `/calls?${search}` : "/calls");
  });
  return form;
}

function pageHref(ctx, page) {
  const params = new URLSearchParams(ctx.query);
  if (page > 1) params.set("page", String(page)); else params.delete("page");
  const search = params.toString();
  return `#/calls${search ? `?${search}` : ""}`;
}

export async function render(main, ctx) {
  const names = await agentNames();
  const summary = h("p.hint.calls-summary", { "aria-live": "polite" });
  const results = h("div.calls-results");
  const pager = h("div.calls-pages");
  main.append(h("section.page.calls",
    h("div.page-head", h("h1", "Calls")),
    filterForm(ctx, names), summary, results, pager));

  let stopped = false;
  const load = async () => {
    const query = apiQuery(ctx.query);
    let page;
    try {
      page = await get("/calls", query);
    } catch (error) {
      if (stopped) return;
      replace(summary);
      replace(results, h("p.form-error", { role: "alert" }, error.message));
      replace(pager);
      return;
    }
    if (stopped) return;
    const first = page.total ? page.offset + 1 : 0;
    const last = page.offset + page.items.length;
    replace(summary, page.total === 1 ? "1 call" : `${first}–${last} of ${page.total} calls`);
    replace(results, table([
      { label: "Started", value: (c) => h("a", { href: `#/calls/${c.id}` }, when(c.started_at)) },
      { label: "Direction", value: (c) => c.direction },
      { label: "Caller", value: (c) => c.caller || "—" },
      { label: "Dialled", value: (c) => c.did || "—" },
      { label: "Agent", value: (c) => agentName(names, c.agent_id) },
      { label: "Duration", value: (c) => callDuration(c), class: "num" },
      { label: "Outcome", value: (c) => outcomeBadge(c.outcome) },
      { label: "Recording", value: (c) => (c.has_recording ? "yes" : "—") },
    ], page.items, { empty: FILTERS.some((f) => ctx.query.get(f)) ? "No call matches these filters." : "No calls yet." }));
    const current = Math.floor(page.offset / PAGE_SIZE) + 1;
    replace(pager, pageLinks(current, page.total, PAGE_SIZE, (n) => pageHref(ctx, n)));
  };
  await load();
  const refresh = debounce(load, 1000);
  const unsubscribe = onEvent((event) => { if (event.kind === "resync" || event.kind.startsWith("call.")) refresh(); });
  return () => { stopped = true; unsubscribe(); };
}
