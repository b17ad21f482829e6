// Agents: every agent with its language, state, model and voice, each a link to its page.  "New agent" is there
// only for the roles POST /agents allows (designer and admin).

import { get } from "../lib/api.js";
import { h, table, when } from "../lib/dom.js";

export async function render(main, ctx) {
  const agents = await get("/agents");
  const actions = h("div.actions");
  if (ctx.can("designer")) {
    actions.append(h("button.primary", { type: "button", onclick: () => ctx.navigate("/agents/new") }, "New agent"));
  }
  const active = agents.filter((a) => a.active).length;
  main.append(h("section.page.agents",
    h("div.page-head", h("h1", "Agents"), actions),
    h("p.hint.agents-count", { "aria-live": "polite" },
      `${agents.length} ${agents.length === 1 ? "agent" : "agents"}, ${active} active`),
    table([
      { label: "Name", value: (a) => h("div", h("a.agent-name", { href: `#/agents/${a.id}` }, a.name),
        a.description ? h("div.hint", a.description) : null) },
      { label: "Language", value: (a) => [a.language, ...a.languages].join(", ") },
      { label: "State", value: (a) => h(`span.badge.${a.active ? "ok" : "warn"}`, a.active ? "active" : "inactive") },
      { label: "Model", value: (a) => a.llm_model || h("span.hint", "backend default") },
      { label: "Voice", value: (a) => a.voice || h("span.hint", `default for ${a.language}`) },
      { label: "Changed", value: (a) => when(a.updated_at) },
    ], agents, {
      empty: ctx.can("designer") ? "No agents yet: make the first one with “New agent”." : "No agents yet.",
    })));
}
