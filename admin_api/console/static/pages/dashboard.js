// Dashboard: the last seven days at a glance, from GET /analytics (calls today and this week, answered vs
// failed, voice-to-voice latency, barge-ins, busiest agents, volume per channel), the recent failed calls, and
// the calls up in Asterisk right now (with "Hang up" for admins).  It listens to the live events and re-reads
// the numbers (at most once a second) when a call starts, changes or ends, or a message is stored.

import { get, post } from "../lib/api.js";
import { barChart, columnChart } from "../lib/charts.js";
import { button, h, ms, replace, seconds, table, toast, when } from "../lib/dom.js";
import { debounce, onEvent } from "../lib/events.js";
import { agentName, agentNames, outcomeBadge } from "./calls.js";

const DAYS = 7;
const CHANNELS = [["voice", "Voice calls"], ["whatsapp", "WhatsApp"], ["email", "E-mail"], ["chat", "Chat"]];
const dayLabel = new Intl.DateTimeFormat(undefined, { weekday: "short", day: "numeric", timeZone: "UTC" });

function localMidnight(daysAgo = 0) {
  const now = new Date();
  return new Date(now.getFullYear(), now.getMonth(), now.getDate() - daysAgo);
}

const sum = (rows, key) => rows.reduce((total, row) => total + (row[key] || 0), 0);

/** The window's headline numbers from the per-day-and-agent rows (the average pools exactly by turns timed). */
function headline(week, today) {
  const calls = week.calls;
  const timed = sum(calls, "turns_timed");
  const avg = timed ? calls.reduce((t, c) => t + (c.voice_to_voice_avg_ms || 0) * c.turns_timed, 0) / timed : null;
  const p95s = calls.map((c) => c.voice_to_voice_p95_ms).filter((v) => v !== null && v !== undefined);
  const answered = sum(calls, "answered");
  const total = week.totals.calls;
  return [
    ["calls-today", "Calls today", String(today.totals.calls)],
    ["calls-week", `Calls, last ${DAYS} days`, String(total)],
    ["answered", total ? `Answered (${Math.round((answered / total) * 100)} %)` : "Answered", String(answered)],
    ["failed", "Failed", String(sum(calls, "failed"))],
    ["latency-avg", "Voice-to-voice, average", ms(avg)],
    ["latency-p95", p95s.length > 1 ? "Voice-to-voice p95 (worst day)" : "Voice-to-voice p95", ms(p95s.length ? Math.max(...p95s) : null)],
    ["barge-ins", "Barge-ins", String(sum(calls, "barge_ins"))],
    ["transferred", "Transferred", String(sum(calls, "transferred"))],
  ];
}

function perDay(week) {
  const days = [];
  for (let i = DAYS - 1; i >= 0; i--) {
    const start = new Date(Date.now() - i * 86400000);
    days.push(start.toISOString().slice(0, 10));
  }
  const of = (day, key) => sum(week.calls.filter((c) => c.day === day), key);
  return columnChart(`Calls per day (UTC), last ${DAYS} days`,
    days.map((day) => dayLabel.format(new Date(`${day}T12:00:00Z`))), [
      { name: "Answered", values: days.map((day) => of(day, "answered")) },
      { name: "Not answered", values: days.map((day) => of(day, "calls") - of(day, "answered")) },
    ]);
}

function busiest(week, names) {
  const counts = new Map();
  const add = (id, n) => { if (n) counts.set(id ?? null, (counts.get(id ?? null) || 0) + n); };
  for (const c of week.calls) add(c.agent_id, c.calls);
  for (const c of week.channels) if (c.channel !== "voice") add(c.agent_id, c.conversations);
  const items = [...counts].sort((a, b) => b[1] - a[1]).slice(0, 5)
    .map(([id, value]) => ({ label: id === null ? "no agent" : agentName(names, id), value }));
  return barChart("Busiest agents (calls and conversations)", items, { empty: "No calls or conversations yet." });
}

function channels(week) {
  const items = CHANNELS.map(([key, label]) => ({
    label,
    value: key === "voice" ? week.totals.calls : sum(week.channels.filter((c) => c.channel === key), "conversations"),
  }));
  return barChart("Volume per channel (calls; conversations)", items, { empty: "Nothing on any channel yet." });
}

function outcomes(week) {
  const calls = week.calls;
  const answered = sum(calls, "answered");
  return barChart("Answered vs failed", [
    { label: "Answered", value: answered },
    { label: "Not answered", value: sum(calls, "calls") - answered },
    { label: "Transferred", value: sum(calls, "transferred") },
    { label: "Failed", value: sum(calls, "failed") },
  ], { empty: "No calls yet." });
}

function liveTable(ctx, live, reload) {
  return table([
    { label: "Caller", value: (c) => (c.call_id ? h("a", { href: `#/calls/${c.call_id}` }, c.caller || "unknown") : c.caller || "unknown") },
    { label: "Dialled", value: (c) => c.did || "—" },
    { label: "State", value: (c) => c.state },
    { label: "Talking for", value: (c) => seconds(c.duration_s), class: "num" },
    ...(ctx.can("admin") ? [{
      label: "Actions",
      value: (c) => (c.call_id ? button("Hang up", async () => {
        try {
          await post(`/calls/${c.call_id}/hangup`);
          toast(`Hung up the call from ${c.caller || "an unknown caller"}.`, "ok");
        } catch (error) {
          toast(error.message, "error");
        }
        reload();
      }, { kind: "danger", "aria-label": `Hang up the call from ${c.caller || "an unknown caller"}` }) : "—"),
    }] : []),
  ], live, { empty: "Nobody is on the phone right now." });
}

export async function render(main, ctx) {
  const names = await agentNames();
  const stats = h("div.grid.dash-stats", { "aria-live": "polite" });
  const charts = h("div.dash-charts");
  const errors = h("div");
  const liveBox = h("div");
  const updated = h("p.hint.dash-updated");
  main.append(h("section.page.dashboard",
    h("div.page-head", h("h1", "Dashboard"), updated),
    stats, charts,
    h("section.card.dash-live", { "aria-labelledby": "dash-live-h" }, h("h2#dash-live-h", "Live calls"), liveBox),
    h("section.card.dash-errors", { "aria-labelledby": "dash-errors-h" }, h("h2#dash-errors-h", "Recent failed calls"), errors)));

  let stopped = false;
  const loadNumbers = async () => {
    const until = new Date().toISOString();
    const since = localMidnight(DAYS - 1).toISOString();
    const [week, today, failed] = await Promise.all([
      get("/analytics", { since, until }),
      get("/analytics", { since: localMidnight().toISOString(), until }),
      get("/calls", { outcome: "failed", since, limit: 5 }),
    ]);
    if (stopped) return;
    replace(stats, headline(week, today).map(([key, label, value]) =>
      h("div.stat", { dataset: { stat: key } }, h("div.value", value), h("div.label", label))));
    replace(charts, h("div.card", perDay(week)), h("div.card", outcomes(week)), h("div.card", busiest(week, names)),
      h("div.card", channels(week)));
    replace(errors, table([
      { label: "Started", value: (c) => h("a", { href: `#/calls/${c.id}` }, when(c.started_at)) },
      { label: "Caller", value: (c) => c.caller || "—" },
      { label: "Agent", value: (c) => agentName(names, c.agent_id) },
      { label: "Cause", value: (c) => c.hangup_cause || "—" },
      { label: "Outcome", value: (c) => outcomeBadge(c.outcome) },
    ], failed.items, { empty: `No failed calls in the last ${DAYS} days.` }));
    replace(updated, `Updated ${new Date().toLocaleTimeString()}`);
  };
  const loadLive = async () => {
    try {
      const live = await get("/calls/live");
      if (!stopped) replace(liveBox, liveTable(ctx, live, () => liveRefresh()));
    } catch (error) {
      if (!stopped) replace(liveBox, h("p.empty", `Live calls are not available: ${error.message}`));
    }
  };
  const loadAll = async () => {
    try {
      await loadNumbers();
    } catch (error) {
      if (!stopped) replace(stats, h("p.form-error", { role: "alert" }, `The numbers could not be read: ${error.message}`));
    }
  };
  await Promise.all([loadAll(), loadLive()]);
  const refresh = debounce(loadAll, 1000);
  const liveRefresh = debounce(loadLive, 1000);
  const unsubscribe = onEvent((event) => {
    if (event.kind === "resync" || event.kind.startsWith("call.")) { refresh(); liveRefresh(); }
    else if (event.kind === "message.stored") refresh();
  });
  return () => { stopped = true; unsubscribe(); };
}
