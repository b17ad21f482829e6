// Conversations of every channel (WhatsApp, e-mail, web chat, voice), newest activity first, filtered by channel
// (`#/conversations?channel=whatsapp&page=2`), each a link to its thread.  A stored message anywhere re-reads the
// page (at most once a second), so a new conversation or reply shows up without reloading.

import { get } from "../lib/api.js";
import { h, pageLinks, replace, select, table, when } from "../lib/dom.js";
import { debounce, onEvent } from "../lib/events.js";

const PAGE = 25;
export const CHANNELS = [["", "every channel"], ["whatsapp", "WhatsApp"], ["email", "E-mail"], ["chat", "Web chat"],
  ["voice", "Voice"]];

/** A contact's best label: name, else the address the channel knows them by. */
export function contactLabel(contact) {
  if (!contact) return "unknown contact";
  return contact.name || contact.whatsapp_id || contact.phone || contact.email || `contact #${contact.id}`;
}

/** The contacts of these ids, fetched once each (a missing one is left out). */
export async function contactsOf(ids) {
  const unique = [...new Set(ids.filter((id) => id !== null && id !== undefined))];
  const found = await Promise.all(unique.map((id) => get(`/contacts/${id}`).catch(() => null)));
  return new Map(found.filter(Boolean).map((c) => [c.id, c]));
}

export async function render(main, ctx) {
  const channel = ctx.query.get("channel") || "";
  const page = Math.max(1, Number(ctx.query.get("page")) || 1);
  const agents = await get("/agents");
  const agentName = new Map(agents.map((a) => [a.id, a.name]));
  const filter = select("channel", CHANNELS, channel);
  filter.id = "conversation-channel";
  filter.addEventListener("change", () => ctx.navigate(filter.value ? `/conversations?channel=${filter.value}` : "/conversations"));
  const list = h("div.conversation-list", { "aria-live": "polite" });
  main.append(h("section.page.conversations",
    h("div.page-head", h("h1", "Conversations")),
    h("div.filters", h("div.field", h("label", { for: filter.id }, "Channel"), filter)),
    list));

  const load = async () => {
    const result = await get("/conversations", { channel, limit: PAGE, offset: (page - 1) * PAGE });
    const contacts = await contactsOf(result.items.map((c) => c.contact_id));
    const to = (n) => `#/conversations?${new URLSearchParams({ ...(channel ? { channel } : {}), page: String(n) })}`;
    replace(list,
      h("p.hint.conversation-count", `${result.total} ${result.total === 1 ? "conversation" : "conversations"}`),
      table([
        { label: "Contact", value: (c) => h("a.conversation-link", { href: `#/conversations/${c.id}` },
          c.contact_id ? contactLabel(contacts.get(c.contact_id)) : c.external_id || `conversation #${c.id}`) },
        { label: "Channel", value: (c) => h("span.badge", c.channel) },
        { label: "Agent", value: (c) => (c.agent_id ? agentName.get(c.agent_id) || `#${c.agent_id}` : "—") },
        { label: "Category", value: (c) => c.category || "—" },
        { label: "Attention", value: (c) => (c.needs_human ? h("span.badge.warn", "needs a person") : "") },
        { label: "Started", value: (c) => when(c.started_at) },
        { label: "Last activity", value: (c) => when(c.updated_at) },
      ], result.items, { empty: channel ? "No conversations on this channel yet." : "No conversations yet." }),
      pageLinks(page, result.total, PAGE, to));
  };
  await load();
  let stopped = false; // a refetch still pending when the user leaves must not run
  const refresh = debounce(() => { if (!stopped) load().catch(() => null); }, 1000);
  const unsubscribe = onEvent((event) => { if (event.kind === "resync" || event.kind === "message.stored") refresh(); });
  return () => { stopped = true; unsubscribe(); };
}
