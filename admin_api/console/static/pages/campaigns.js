// Campaigns: every outbound campaign, newest first, filtered by status (`#/campaigns?status=running`), with its
// channel, status and progress (how much of its audience is done: reached, out of attempts, or on a do-not-call
// list); each is a link to its analytics and controls.

import { get } from "../lib/api.js";
import { h, pageLinks, select, table, when } from "../lib/dom.js";

const PAGE = 25;
const STATUSES = [["", "every status"], ["draft", "draft"], ["running", "running"], ["paused", "paused"],
  ["completed", "completed"], ["cancelled", "cancelled"]];
export const STATUS_BADGE = { draft: "", running: "ok", paused: "warn", completed: "ok", cancelled: "bad" };
const DONE = ["reached", "exhausted", "dnc"];

/** {done, total} of an audience per state (excluded entries are never contacted: not part of the total). */
export function progressOf(byState) {
  const counts = byState || {};
  const total = Object.entries(counts).filter(([state]) => state !== "excluded").reduce((n, [, v]) => n + v, 0);
  const done = DONE.reduce((n, state) => n + (counts[state] || 0), 0);
  return { done, total };
}

/** A labelled progress bar (its width set from script: the CSP forbids style attributes). */
export function progressBar({ done, total }, label) {
  const percent = total ? Math.round((done / total) * 100) : 0;
  const fill = h("div.progress-fill");
  fill.style.width = `${percent}%`;
  return h("div.progress-wrap",
    h("div.progress", { role: "progressbar", "aria-label": label, "aria-valuemin": "0", "aria-valuemax": "100",
      "aria-valuenow": String(percent) }, fill),
    h("span.progress-text", total ? `${done} of ${total} (${percent}%)` : "no audience"));
}

export async function render(main, ctx) {
  const status = ctx.query.get("status") || "";
  const page = Math.max(1, Number(ctx.query.get("page")) || 1);
  const filter = select("status", STATUSES, status);
  filter.id = "campaign-status";
  filter.addEventListener("change", () => ctx.navigate(filter.value ? `/campaigns?status=${filter.value}` : "/campaigns"));
  const result = await get("/campaigns", { status, limit: PAGE, offset: (page - 1) * PAGE });
  const to = (n) => `#/campaigns?${new URLSearchParams({ ...(status ? { status } : {}), page: String(n) })}`;
  main.append(h("section.page.campaigns",
    h("div.page-head", h("h1", "Campaigns")),
    h("div.filters", h("div.field", h("label", { for: filter.id }, "Status"), filter)),
    h("p.hint.campaign-count", `${result.total} ${result.total === 1 ? "campaign" : "campaigns"}`),
    table([
      { label: "Campaign", value: (c) => h("div", h("a.campaign-name", { href: `#/campaigns/${c.id}` }, c.name),
        c.description ? h("div.hint", c.description) : null) },
      { label: "Channel", value: (c) => c.channel },
      { label: "Status", value: (c) => h("div", h(`span.badge${STATUS_BADGE[c.status] ? `.${STATUS_BADGE[c.status]}` : ""}`, c.status),
        c.status_reason ? h("div.hint", c.status_reason) : null) },
      { label: "Progress", value: (c) => progressBar(progressOf(c.contacts), `Progress of ${c.name}`) },
      { label: "Started", value: (c) => when(c.started_at) },
      { label: "Created", value: (c) => when(c.created_at) },
    ], result.items, { empty: status ? `No ${status} campaigns.` : "No campaigns yet (create them with the API or eva campaign create)." }),
    pageLinks(page, result.total, PAGE, to)));
}
