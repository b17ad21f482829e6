// One campaign (#/campaigns/<id>): its status with the controls the API allows from it (start and resume place
// calls that cost money: admins; pause and cancel: designers and admins), its progress, and its analytics: the
// headline numbers, the audience per state, outcomes, attempts per day, the A/B arms side by side with the
// comparison's p-values, and the ROI when the campaign has prices.

import { get, post } from "../lib/api.js";
import { button, h, table, toast, when } from "../lib/dom.js";
import { barChart, columnChart, stackedBars } from "../lib/charts.js";
import { STATUS_BADGE, progressBar, progressOf } from "./campaigns.js";

// [action, label, least role, statuses it applies to] as POST /campaigns/{id}/<action> declares them.
const CONTROLS = [
  ["start", "Start", "admin", ["draft"]],
  ["resume", "Resume", "admin", ["paused"]],
  ["pause", "Pause", "designer", ["running"]],
  ["cancel", "Cancel campaign", "designer", ["draft", "running", "paused"]],
];
const STATES = ["reached", "exhausted", "dnc", "calling", "pending"]; // excluded: a note on "Contacts"

const percent = (rate) => (rate === null || rate === undefined ? "—" : `${(rate * 100).toFixed(1)}%`);
const money = (v) => (v === null || v === undefined ? "—" : v.toFixed(2));

export async function render(main, ctx) {
  const id = ctx.params[0];
  const [campaign, stats, agents] = await Promise.all([get(`/campaigns/${id}`), get(`/campaigns/${id}/analytics`),
    get("/agents")]);
  const agent = agents.find((a) => a.id === campaign.agent_id);
  const actions = h("div.actions");
  for (const [action, label, role, from] of CONTROLS) {
    if (!from.includes(campaign.status) || !ctx.can(role)) continue;
    actions.append(button(label, async () => {
      if (action === "cancel" && !confirm(`Cancel ${campaign.name} for good? Nobody more is contacted.`)) return;
      if (action === "start" && !confirm(`Start ${campaign.name}? Eva begins contacting its audience.`)) return;
      try {
        const changed = await post(`/campaigns/${id}/${action}`);
        toast(`${changed.name} is ${changed.status}.`, "ok");
        ctx.navigate(`/campaigns/${id}`);
      } catch (error) { toast(error.message, "error"); }
    }, { kind: action === "cancel" ? "danger" : action === "pause" ? "" : "primary" }));
  }
  actions.append(h("a.button-link", { href: `/api/v1/campaigns/${id}/analytics.csv`, download: `${campaign.name}-attempts.csv` },
    "Attempts as CSV"));

  main.append(h("section.page.campaign",
    h("div.page-head", h("h1", `Campaign ${campaign.name}`),
      h(`span.badge.campaign-status${STATUS_BADGE[campaign.status] ? `.${STATUS_BADGE[campaign.status]}` : ""}`, campaign.status),
      actions),
    campaign.status_reason ? h("p.hint.status-reason", campaign.status_reason) : null,
    campaign.description ? h("p", campaign.description) : null,
    h("p.hint", [`${campaign.channel} campaign`, agent ? `agent ${agent.name}` : null,
      campaign.flow ? `flow ${campaign.flow}` : null, `zone ${campaign.timezone}`,
      campaign.started_at ? `started ${when(campaign.started_at)}` : "not started",
      campaign.finished_at ? `finished ${when(campaign.finished_at)}` : null].filter(Boolean).join(" · "), " · ",
    h("a", { href: "#/campaigns" }, "all campaigns")),
    h("section.card", { "aria-labelledby": "progress-title" }, h("h2#progress-title", "Progress"),
      progressBar(progressOf(stats.entries_by_state), `Progress of ${campaign.name}`)),
    h("div.grid.campaign-stats", { "aria-label": "Results" },
      stat("Contacts", stats.contacts, stats.excluded ? `${stats.excluded} outside the segment` : ""),
      stat("Attempts", stats.attempts, stats.pending_attempts ? `${stats.pending_attempts} in progress` : ""),
      stat("Reached", stats.reached, `reach rate ${percent(stats.reach_rate)}`),
      stat("Conversions", stats.conversions, `conversion rate ${percent(stats.conversion_rate)}`),
      stat("Average answered", stats.average_answered_seconds === null ? "—" : `${Math.round(stats.average_answered_seconds)} s`, "per answered attempt")),
    h("div.campaign-charts",
      h("div.card", stackedBars("Audience by state", STATES,
        [{ label: "contacts", values: STATES.map((s) => stats.entries_by_state[s] || 0) }], { empty: "No audience yet." })),
      h("div.card", barChart("Outcomes of the attempts",
        Object.entries(stats.outcomes).filter(([, n]) => n > 0).sort((a, b) => b[1] - a[1]).map(([label, value]) => ({ label: label.replaceAll("_", " "), value })),
        { empty: "No attempt has ended yet." })),
      h("div.card.wide", stats.per_day.length
        ? columnChart("Attempts per day", stats.per_day.map((d) => d.day.slice(5)), [
          { name: "reached", values: stats.per_day.map((d) => d.reached) },
          { name: "not reached", values: stats.per_day.map((d) => Math.max(0, d.attempts - d.reached)) }])
        : h("p.empty", "No attempts per day yet."))),
    arms(stats),
    // The API always answers an ROI; it means something only once the campaign has prices (rules.roi).
    stats.roi && (stats.roi.cost_per_attempt || stats.roi.cost_per_minute || stats.roi.value_per_conversion)
      ? roi(stats.roi) : null));
}

function stat(label, value, note) {
  return h("div.stat", h("div.value", String(value)), h("div.label", label), note ? h("div.hint", note) : null);
}

function arms(stats) {
  if (!stats.per_arm.length) return null;
  const c = stats.comparison;
  const compare = (name, r) => h("li", `${name}: ${c.b} − ${c.a} = `,
    h("strong", r.difference === null ? "—" : `${r.difference > 0 ? "+" : ""}${(r.difference * 100).toFixed(1)} points`),
    ` (p = ${r.p_value === null ? "—" : r.p_value.toFixed(3)}, `, r.significant ? h("strong", "significant") : "not significant", ")");
  return h("section.card.arms", { "aria-labelledby": "arms-title" }, h("h2#arms-title", "A/B arms"),
    table([
      { label: "Arm", value: (a) => h("strong", a.arm || "(single)") },
      { label: "Contacts", class: "num", value: (a) => String(a.contacts) },
      { label: "Attempts", class: "num", value: (a) => String(a.attempts) },
      { label: "Reached", class: "num", value: (a) => String(a.reached) },
      { label: "Reach rate", class: "num", value: (a) => percent(a.reach_rate) },
      { label: "Converted", class: "num", value: (a) => String(a.converted) },
      { label: "Conversion rate", class: "num", value: (a) => percent(a.conversion_rate) },
    ], stats.per_arm),
    c ? h("ul.comparison", { "aria-label": "Comparison" }, compare("Reach", c.reached), compare("Conversion", c.conversion)) : null,
    c ? h("p.hint", "Two-sided two-proportion z-test per contact; rough with fewer than about 5 successes and 5 failures per arm.") : null);
}

function roi(r) {
  return h("section.card.roi", { "aria-labelledby": "roi-title" }, h("h2#roi-title", "Return on investment"),
    h("div.grid",
      stat("Cost", money(r.cost), `${money(r.cost_per_attempt)} per attempt, ${money(r.cost_per_minute)} per minute`),
      stat("Value", money(r.value), `${money(r.value_per_conversion)} per conversion`),
      stat("Net", money(r.net), `${Math.round(r.answered_minutes)} answered minutes`),
      stat("ROI", r.roi === null ? "—" : `${(r.roi * 100).toFixed(0)}%`, r.cost_per_conversion === null ? ""
        : `${money(r.cost_per_conversion)} per conversion`)));
}
