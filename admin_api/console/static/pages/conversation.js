// One conversation's thread (#/conversations/<id>): who it is with, on which channel, the flows it ran with what
// they collected, and every message in order: who wrote it (the contact or Eva), when, its delivery state (sent,
// delivered, read, failed: WhatsApp's receipts), the sentiment and category the analysis gave it, and its
// attachments (a download link when Eva kept the file).  A message stored in this conversation re-reads the thread.

import { get } from "../lib/api.js";
import { bytes, h, replace, table, when } from "../lib/dom.js";
import { debounce, onEvent } from "../lib/events.js";
import { contactLabel, contactsOf } from "./conversations.js";

const MAX = 500; // the API's largest page: the thread shows the latest 500 messages
const AUTHOR = { user: "Contact", assistant: "Eva", system: "System", tool: "Tool" };
const DELIVERY = { sent: "", delivered: "ok", read: "ok", failed: "bad" };
const SENTIMENT = { positive: "ok", neutral: "", negative: "bad" };

export async function render(main, ctx) {
  const id = Number(ctx.params[0]);
  const [conversation, agents] = await Promise.all([get(`/conversations/${id}`), get("/agents")]);
  const contacts = await contactsOf([conversation.contact_id]);
  const contact = contacts.get(conversation.contact_id);
  const agent = agents.find((a) => a.id === conversation.agent_id);
  const who = conversation.contact_id ? contactLabel(contact) : conversation.external_id || `conversation ${id}`;
  const thread = h("ol.thread", { "aria-label": "Messages", "aria-live": "polite" });
  const count = h("p.hint.message-count");

  main.append(h("section.page.conversation",
    h("div.page-head", h("h1", `Conversation with ${who}`),
      h("div.actions", h("a", { href: `#/conversations?channel=${conversation.channel}` }, `All ${conversation.channel} conversations`))),
    h("div.grid.conversation-facts",
      fact("Channel", conversation.channel),
      fact("Contact", contact ? [contactLabel(contact), contact.email || contact.whatsapp_id || contact.phone || ""]
        .filter((v, i, all) => v && all.indexOf(v) === i).join(" · ") : "—"),
      fact("Agent", agent ? h("a", { href: `#/agents/${agent.id}` }, agent.name) : "—"),
      fact("Started", when(conversation.started_at)),
      fact("Category", conversation.category || "—"),
      conversation.needs_human ? fact("Attention", h("span.badge.warn", "needs a person: no automatic answer")) : null),
    conversation.flow_runs.length ? h("section.card", { "aria-labelledby": "runs-title" },
      h("h2#runs-title", "Flows run"),
      table([
        { label: "Flow", value: (r) => (r.flow_id ? h("a", { href: `#/flows/${r.flow_id}` }, r.flow_name) : r.flow_name) },
        { label: "Status", value: (r) => h(`span.badge${r.status === "active" ? ".ok" : ""}`, r.status) },
        { label: "Step", value: (r) => h("code", r.step) },
        { label: "Result", value: (r) => r.result || "—" },
        { label: "Collected", value: (r) => variables(r.variables) },
      ], conversation.flow_runs)) : null,
    h("section.card.thread-card", { "aria-labelledby": "thread-title" }, h("h2#thread-title", "Messages"), count, thread)));

  const load = async () => {
    let page = await get(`/conversations/${id}/messages`, { limit: MAX });
    if (page.total > MAX) page = await get(`/conversations/${id}/messages`, { limit: MAX, offset: page.total - MAX });
    count.textContent = page.total > MAX ? `The latest ${MAX} of ${page.total} messages.`
      : `${page.total} ${page.total === 1 ? "message" : "messages"}`;
    replace(thread, page.items.length ? page.items.map((m) => message(m, who)) : h("li.empty", "No messages yet."));
  };
  await load();
  let stopped = false; // a refetch still pending when the user leaves must not run
  const refresh = debounce(() => { if (!stopped) load().catch(() => null); }, 500);
  const unsubscribe = onEvent((event) => {
    if (event.kind === "resync" || (event.kind === "message.stored" && event.conversation_id === id)) refresh();
  });
  return () => { stopped = true; unsubscribe(); };
}

function fact(label, value) {
  return h("div.stat.fact", h("div.label", label), h("div.fact-value", value));
}

function variables(values) {
  const entries = Object.entries(values || {});
  if (!entries.length) return h("span.hint", "nothing");
  return h("dl.vars", entries.map(([k, v]) => [h("dt", k), h("dd", v)]));
}

function message(m, who) {
  const inbound = m.role === "user";
  const delivery = m.timings && typeof m.timings.delivery === "string" ? m.timings.delivery : null;
  return h(`li.message.${inbound ? "inbound" : "outbound"}.role-${m.role}`, { dataset: { id: String(m.id) } },
    h("div.message-head",
      h("strong.author", inbound ? who : AUTHOR[m.role] || m.role),
      h("span.hint", inbound ? " wrote " : " sent ", h("time", { datetime: m.created_at }, when(m.created_at)))),
    m.text ? h("p.message-text", m.text) : null,
    m.attachments && m.attachments.length ? h("ul.attachments", { "aria-label": "Attachments" },
      m.attachments.map((a, index) => h("li", a.path
        ? h("a", { href: `/api/v1/messages/${m.id}/attachments/${index}`, download: a.name || "" }, a.name || `file ${index + 1}`)
        : h("span", a.name || `file ${index + 1}`, h("span.hint", " (not kept)")),
      h("span.hint", ` ${a.content_type || ""} ${bytes(a.size)}`)))) : null,
    h("div.message-tags",
      delivery ? h(`span.badge.delivery${DELIVERY[delivery] ? `.${DELIVERY[delivery]}` : ""}`,
        delivery, m.timings.delivery_error ? ` (${m.timings.delivery_error})` : "") : null,
      m.sentiment ? h(`span.badge.sentiment${SENTIMENT[m.sentiment] ? `.${SENTIMENT[m.sentiment]}` : ""}`, m.sentiment) : null,
      m.category ? h("span.badge.category", m.category) : null));
}
