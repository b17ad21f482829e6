// One agent: its persona and settings (a form for designers and admins, read-only for viewers), activate or
// deactivate, delete, a test chat that streams the reply, and the agent's knowledge documents.  `#/agents/new`
// is the empty form, filled with the API's own defaults (AgentCreate in the OpenAPI document).  The sections are
// tabs; the open one is kept in the address (`#/agents/3?tab=knowledge`) so a reload or a link returns to it.

import { del, get, patch, post } from "../lib/api.js";
import { button, clearErrors, field, h, select, showErrors, toast } from "../lib/dom.js";
import { chatPanel } from "./agent-chat.js";
import { knowledgePanel } from "./agent-knowledge.js";

const TEXT = { type: "text", autocomplete: "off", spellcheck: "false" };

export async function render(main, ctx) {
  const creating = ctx.params[0] === "new";
  const designer = ctx.can("designer");
  if (creating && !designer) {
    main.append(h("section.page", h("h1", "New agent"), h("p", "Your role cannot create agents.")));
    return undefined;
  }
  const [agent, flows, models] = await Promise.all([
    creating ? defaults() : get(`/agents/${ctx.params[0]}`),
    get("/flows").catch(() => []),
    get("/agents/base-models").catch(() => null), // no model backend here: the field is free text
  ]);
  const page = h("section.page.agent");
  main.append(page);
  if (creating) {
    page.append(h("p.back", h("a", { href: "#/agents" }, "← Agents")), h("h1", "New agent"),
      settingsForm(agent, { creating, designer, flows, models, ctx }));
    return undefined;
  }
  return agentPage(page, agent, { designer, flows, models, ctx });
}

/** AgentCreate's defaults as the API declares them, so a new agent starts exactly as POST /agents would make it. */
async function defaults() {
  const spec = await get("/openapi.json");
  const properties = spec.components.schemas.AgentCreate.properties;
  const agent = { languages: [], transfer_targets: {}, flow_triggers: {} };
  for (const [name, schema] of Object.entries(properties)) {
    if ("default" in schema) agent[name] = schema.default;
  }
  return { name: "", ...agent };
}

function agentPage(page, agent, options) {
  const { designer, ctx } = options;
  const title = h("h1", agent.name);
  const state = h("span.badge");
  const toggle = designer ? button("", async () => {
    const verb = agent.active ? "deactivate" : "activate";
    try {
      Object.assign(agent, await post(`/agents/${agent.id}/${verb}`));
      drawState();
      toast(agent.active ? `${agent.name} takes calls and messages again.` : `${agent.name} takes no new calls or messages.`, "ok");
    } catch (error) {
      toast(error.message, "error");
    }
  }) : null;
  const remove = designer ? button("Delete", async () => {
    if (!window.confirm(`Delete the agent “${agent.name}”? This cannot be undone.`)) return;
    try {
      await del(`/agents/${agent.id}`);
      toast(`Agent ${agent.name} deleted.`, "ok");
      ctx.navigate("/agents");
    } catch (error) {
      toast(error.message, "error"); // e.g. routes or knowledge documents still use it
    }
  }, { kind: "danger" }) : null;
  function drawState() {
    title.textContent = agent.name;
    document.title = `${agent.name} · Eva`;
    state.className = `badge ${agent.active ? "ok" : "warn"}`;
    state.textContent = agent.active ? "active" : "inactive";
    if (toggle) toggle.textContent = agent.active ? "Deactivate" : "Activate";
  }
  drawState();
  page.append(h("p.back", h("a", { href: "#/agents" }, "← Agents")),
    h("div.page-head", title, h("span", { "aria-live": "polite" }, state), h("div.actions", toggle, remove)));

  const sections = [
    { key: "settings", label: "Settings", build: () => ({
      node: settingsForm(agent, { ...options, creating: false, saved: drawState }) }) },
    designer ? { key: "chat", label: "Test chat", build: () => chatPanel(agent) } : null,
    { key: "knowledge", label: "Knowledge", build: () => knowledgePanel(agent, ctx) },
  ].filter(Boolean);
  return tabs(page, sections, ctx.query.get("tab"), (key) => {
    history.replaceState(null, "", `#/agents/${agent.id}${key === "settings" ? "" : `?tab=${key}`}`);
  });
}

/** ARIA tabs (arrow keys move between them); each panel is built the first time it opens and kept after. */
function tabs(page, sections, wanted, onChange) {
  const list = h("div.tabs", { role: "tablist", "aria-label": "Agent sections" });
  const cleanups = [];
  const built = new Map();
  const buttons = sections.map((section, index) => {
    const tab = h("button.tab", {
      type: "button", role: "tab", id: `tab-${section.key}`, "aria-controls": `panel-${section.key}`,
      onclick: () => open(section.key, true),
      onkeydown: (event) => {
        const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
        if (!step) return;
        event.preventDefault();
        const next = sections[(index + step + sections.length) % sections.length];
        open(next.key, true);
        document.getElementById(`tab-${next.key}`).focus();
      },
    }, section.label);
    return tab;
  });
  list.append(...buttons);
  const panels = h("div.tab-panels");
  page.append(list, panels);

  function open(key, chosen) {
    for (const [index, section] of sections.entries()) {
      const selected = section.key === key;
      buttons[index].setAttribute("aria-selected", String(selected));
      buttons[index].tabIndex = selected ? 0 : -1;
      if (selected && !built.has(key)) {
        const { node, cleanup } = section.build();
        const panel = h("div.tab-panel", { role: "tabpanel", id: `panel-${key}`, "aria-labelledby": `tab-${key}` }, node);
        built.set(key, panel);
        panels.append(panel);
        if (cleanup) cleanups.push(cleanup);
      }
      if (built.has(section.key)) built.get(section.key).hidden = !selected;
    }
    if (chosen) onChange(key);
  }
  open(sections.some((s) => s.key === wanted) ? wanted : sections[0].key, false);
  return () => { for (const cleanup of cleanups) cleanup(); };
}

// ------------------------------------------------------------------------------------------------ settings form
function settingsForm(agent, { creating, designer, flows, models, ctx, saved }) {
  const input = (name, attrs = {}) => h("input", { ...TEXT, name, value: agent[name] ?? "", ...attrs });
  const area = (name, rows, attrs = {}, text = agent[name] ?? "") => h("textarea", { name, rows, ...attrs }, text);
  const flowNames = flows.map((f) => f.name);
  if (agent.start_flow && !flowNames.includes(agent.start_flow)) flowNames.push(agent.start_flow);
  const modelList = models ? h("datalist#llm-models", models.models.map((m) => h("option", { value: m }))) : null;

  const fields = h("fieldset.settings", { disabled: !designer },
    h("div.settings-grid",
      h("section.settings-group", { "aria-labelledby": "group-persona" },
        h("h2#group-persona", "Persona"),
        field("Name", input("name", { maxlength: 80 }),
          "Letters, digits, “.”, “_” and “-”; it names the agent in routes, flows and the CLI."),
        field("Description", input("description", { maxlength: 2000 }), "For people: what this agent is for."),
        field("Persona (system prompt)", area("persona", 8, { maxlength: 20000 })),
        field("Greeting", area("greeting", 2, { maxlength: 2000 }), "The first thing said when a call is answered."),
        field("Fallback message", area("fallback_message", 2, { maxlength: 2000 }),
          "Said when the model fails to answer.")),
      h("section.settings-group", { "aria-labelledby": "group-voice" },
        h("h2#group-voice", "Language, voice and model"),
        h("div.pair",
          field("Language", input("language", { maxlength: 20 }), "Calls use it: en, es, pt-BR …"),
          field("Further languages", input("languages", { value: agent.languages.join(", ") }),
            "For text messages, comma-separated.")),
        field("Voice", input("voice", { maxlength: 200 }),
          "A Piper voice or espeak:<language>; empty: a voice for the language."),
        field("LLM model", input("llm_model", {
          maxlength: 200, list: modelList ? "llm-models" : null,
          placeholder: models ? models.default_model : "",
        }), models ? `Empty: ${models.backend}'s default (${models.default_model}).` : "Empty: the backend's default model."),
        modelList,
        h("div.pair",
          field("Temperature", input("temperature", { type: "number", step: "0.05", min: 0, max: 2, inputmode: "decimal" }),
            "0 to 2: higher is more varied."),
          field("Max tokens per reply", input("max_tokens", { type: "number", step: 1, min: 1, max: 8192 })))),
      h("section.settings-group", { "aria-labelledby": "group-flows" },
        h("h2#group-flows", "Flows and transfers"),
        field("Start flow", select("start_flow", [["", "None"], ...flowNames.map((n) => [n, n])], agent.start_flow ?? ""),
          "Every new conversation starts in this flow."),
        field("Flow triggers", area("flow_triggers", 3, { class: "mono" }, Object.entries(agent.flow_triggers)
          .map(([flow, phrases]) => `${flow}: ${phrases.join(", ")}`).join("\n")),
          "One flow a line: “booking: book, appointment” starts booking when a message says one of them."),
        field("Transfer targets", area("transfer_targets", 3, { class: "mono" }, Object.entries(agent.transfer_targets)
          .map(([name, extension]) => `${name} = ${extension}`).join("\n")),
          "One a line: “sales = 201”. Calls may be transferred only to these extensions.")),
      h("section.settings-group", { "aria-labelledby": "group-mail" },
        h("h2#group-mail", "E-mail and media"),
        field("E-mail address", input("email_address", { type: "email", maxlength: 254 }),
          "Mail to this address is answered by this agent; empty: none."),
        field("E-mail signature", area("email_signature", 2, { maxlength: 2000 })),
        checkField("learn_from_media", "Learn from documents contacts send", agent.learn_from_media,
          "PDF, DOCX and text files sent to this agent are added to its knowledge."),
        creating ? checkField("active", "Active as soon as it is saved", agent.active,
          "An inactive agent takes no calls or messages.") : null)));

  const form = h("form.card.agent-form", { novalidate: true, "aria-label": "Agent settings" },
    h("p.form-error", { role: "alert", hidden: true }), fields,
    designer ? h("div.form-actions", h("button.primary", { type: "submit" }, creating ? "Create agent" : "Save changes"))
      : h("p.hint", "Your role can read these settings, not change them."));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const submit = form.querySelector("button[type=submit]");
    submit.disabled = true;
    try {
      const body = collect(form, creating);
      if (creating) {
        const made = await post("/agents", body);
        toast(`Agent ${made.name} created.`, "ok");
        ctx.navigate(`/agents/${made.id}`);
        return;
      }
      Object.assign(agent, await patch(`/agents/${agent.id}`, body));
      clearErrors(form);
      saved();
      toast("Changes saved.", "ok");
    } catch (error) {
      showErrors(form, error);
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

function checkField(name, label, checked, hint) {
  const id = `f-${name}`;
  return h("div.field.check-field", { dataset: { field: name } },
    h("label.check", { for: id },
      h("input", { type: "checkbox", name, id, checked, "aria-describedby": `${id}-error` }), label),
    h("p.hint", hint),
    h("p.field-error", { id: `${id}-error`, role: "alert", hidden: true }));
}

/** A problem found before sending, shaped like the API's error so showErrors puts it at the field. */
class FormProblem extends Error {
  constructor(fieldName, message) { super(message); this.field = fieldName; }
}

function collect(form, creating) {
  const value = (name) => form.elements[name].value;
  const number = (name) => (value(name).trim() === "" ? null : Number(value(name)));
  const body = {
    name: value("name").trim(),
    description: value("description"),
    persona: value("persona"),
    greeting: value("greeting"),
    fallback_message: value("fallback_message"),
    language: value("language").trim(),
    languages: value("languages").split(",").map((l) => l.trim()).filter(Boolean),
    voice: value("voice").trim(),
    llm_model: value("llm_model").trim(),
    temperature: number("temperature"),
    max_tokens: number("max_tokens"),
    start_flow: value("start_flow") || null,
    flow_triggers: lines(value("flow_triggers"), ":", "flow_triggers", "flow: phrase, phrase",
      (phrases) => phrases.split(",").map((p) => p.trim()).filter(Boolean)),
    transfer_targets: lines(value("transfer_targets"), "=", "transfer_targets", "name = extension", (ext) => ext.trim()),
    email_address: value("email_address").trim() || null,
    email_signature: value("email_signature"),
    learn_from_media: form.elements.learn_from_media.checked,
  };
  if (creating) body.active = form.elements.active.checked;
  return body;
}

/** "key <sep> value" lines → {key: parse(value)}; a line without the separator is the user's mistake. */
function lines(text, separator, fieldName, shape, parse) {
  const result = {};
  for (const [index, line] of text.split("\n").entries()) {
    if (!line.trim()) continue;
    const at = line.indexOf(separator);
    if (at < 0) throw new FormProblem(fieldName, `line ${index + 1}: write it as “${shape}”`);
    result[line.slice(0, at).trim()] = parse(line.slice(at + 1));
  }
  return result;
}

