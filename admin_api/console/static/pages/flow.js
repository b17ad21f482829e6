// The flow editor (#/flows/new, #/flows/<id>): name, description, agent and state as form fields, the steps as
// pretty-printed JSON in a code editor, and beside it an outline of the flow (each step a card with what it says,
// does and where it goes next), redrawn as the JSON is typed.  On Save the API's flow checks answer with the field
// of the offending step (`steps.2.next`, `steps.0`): the message is shown on that step's card, which is
// highlighted, and above the editor.  Viewers see the same screen read-only; Save and Delete exist only for the
// roles PATCH/POST/DELETE /flows allow (designer and admin).

import { get, post, patch, del } from "../lib/api.js";
import { button, clearErrors, field, h, replace, select, showErrors, toast, when } from "../lib/dom.js";

const TEMPLATE = {
  start_step: "welcome",
  steps: [
    { id: "welcome", say: "Hello, this is Eva. How can I help?", next: "goodbye" },
    { id: "goodbye", say: "Thank you for calling. Goodbye.", end: "completed" },
  ],
};
const KINDS = ["collect", "action", "ask_agent", "agent", "end"];

export async function render(main, ctx) {
  const isNew = ctx.params[0] === "new";
  const writable = ctx.can("designer");
  const [flow, agents] = await Promise.all([isNew ? null : get(`/flows/${ctx.params[0]}`), get("/agents")]);
  const definition = flow ? { start_step: flow.start_step, steps: flow.steps } : TEMPLATE;

  const name = h("input", { name: "name", required: true, maxlength: 80, autocomplete: "off", value: flow ? flow.name : "",
    readonly: !writable });
  const description = h("input", { name: "description", maxlength: 2000, autocomplete: "off",
    value: flow ? flow.description : "", readonly: !writable });
  const agent = select("agent_id", [["", "none (the route's agent)"], ...agents.map((a) => [a.id, a.name])],
    flow ? flow.agent_id : "");
  agent.disabled = !writable;
  const enabled = h("input", { type: "checkbox", name: "enabled", checked: flow ? flow.enabled : true, disabled: !writable });
  const code = h("textarea.code.flow-json", { name: "definition", spellcheck: "false", readonly: !writable,
    value: JSON.stringify(definition, null, 2) });
  const editorError = h("p.form-error.editor-error", { role: "alert", hidden: true });
  const outline = h("ol.flow-outline", { "aria-label": "Steps of the flow" });
  const summary = h("p.hint.outline-summary", { "aria-live": "polite" });

  const form = h("form.flow-form#flow-form", { "aria-label": "Flow", novalidate: true },
    h("div.card",
      h("div.grid.flow-meta", field("Name", name, "Letters, digits, . _ -; campaigns name flows by it."),
        field("Description", description), field("Agent", agent, "Answers ask_agent and agent steps."),
        h("div.field", h("label.check", enabled, "Enabled"))),
    ),
    h("div.flow-designer",
      h("div.card.flow-editor",
        h("h2", "Definition"),
        editorError,
        field("Steps (JSON)", code, "start_step and steps: each step has an id, says something, does at most one of "
          + "collect, action, ask_agent, agent or end, then goes to next (or the first branch whose condition holds)."),
      ),
      h("div.card.flow-view", h("h2", "Outline"), summary, outline)));

  const actions = h("div.actions");
  const title = h("h1", isNew ? "New flow" : `Flow ${flow.name}`);
  main.append(h("section.page.flow", h("div.page-head", title, actions),
    flow ? h("p.hint", `Changed ${when(flow.updated_at)} · `, h("a", { href: "#/flows" }, "all flows")) : null,
    writable ? null : h("p.hint.read-only", "Read only: your role can look at flows, not change them."),
    form));

  // The outline follows the editor; a save's error stays on its card until the JSON is edited again.
  let typing = null;
  const redraw = () => drawOutline(outline, summary, code.value);
  code.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(redraw, 250); });
  redraw();

  if (writable) {
    actions.append(h("button.primary", { type: "submit", form: "flow-form" }, isNew ? "Create flow" : "Save flow"));
    if (!isNew) {
      actions.append(button("Delete", async () => {
        if (!confirm(`Delete the flow ${flow.name}? Its runs stay in the conversations' history.`)) return;
        try {
          await del(`/flows/${flow.id}`);
          toast(`Flow ${flow.name} deleted.`, "ok");
          ctx.navigate("/flows");
        } catch (error) { toast(error.message, "error"); }
      }, { kind: "danger" }));
    }
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      clearErrors(form);
      code.removeAttribute("aria-invalid");
      clearTimeout(typing);
      const parsed = drawOutline(outline, summary, code.value);
      if (parsed.error) { showEditorError(editorError, code, parsed.error); return; }
      const body = { name: name.value.trim(), description: description.value,
        agent_id: agent.value ? Number(agent.value) : null, enabled: enabled.checked, ...parsed.value };
      try {
        const saved = isNew ? await post("/flows", body) : await patch(`/flows/${flow.id}`, body);
        toast(`Flow ${saved.name} saved.`, "ok");
        if (isNew) { ctx.navigate(`/flows/${saved.id}`); return; }
        code.value = JSON.stringify({ start_step: saved.start_step, steps: saved.steps }, null, 2);
        title.textContent = `Flow ${saved.name}`;
        redraw();
      } catch (error) {
        showSaveError(form, outline, editorError, code, error);
      }
    });
  }
  return () => clearTimeout(typing);
}

/** Parse the editor's JSON and draw one card per step; returns {value} or {error: message}. */
function drawOutline(outline, summary, text) {
  let value;
  try {
    value = JSON.parse(text);
  } catch (error) {
    replace(outline);
    summary.textContent = "The outline appears once the JSON is valid.";
    return { error: `The definition is not valid JSON: ${error.message}` };
  }
  if (!value || typeof value !== "object" || Array.isArray(value) || !Array.isArray(value.steps)) {
    replace(outline);
    summary.textContent = "";
    return { error: "The definition is an object with start_step and a list of steps." };
  }
  const ids = new Set(value.steps.map((s) => s && s.id));
  replace(outline, value.steps.map((step, index) => stepCard(step, index, value.start_step, ids)));
  summary.textContent = `${value.steps.length} ${value.steps.length === 1 ? "step" : "steps"}, starting at ${value.start_step ?? "?"}.`;
  const extra = Object.keys(value).filter((k) => k !== "start_step" && k !== "steps");
  if (extra.length) {
    return { error: `The definition holds start_step and steps only (name, description and agent are the fields `
      + `above); remove ${extra.join(", ")}.` };
  }
  return { value };
}

function stepCard(step, index, start, ids) {
  const safe = step && typeof step === "object" ? step : {};
  const id = typeof safe.id === "string" ? safe.id : `step ${index + 1}`;
  const kind = KINDS.find((k) => safe[k] !== undefined && safe[k] !== null) || "say";
  const goes = (label, target) => h("li", label, " → ",
    h(`code${ids.has(target) ? "" : ".unknown"}`, String(target)), ids.has(target) ? null : h("span.badge.bad", "unknown step"));
  const transitions = [
    ...(Array.isArray(safe.branches) ? safe.branches : []).map((b) => goes(`if ${condition(b && b.when)}`, b && b.next)),
    safe.next !== undefined && safe.next !== null ? goes(Array.isArray(safe.branches) && safe.branches.length ? "otherwise" : "next", safe.next) : null,
    safe.fallback ? goes("on failure", safe.fallback) : null,
    safe.end ? h("li", "ends with ", h("code", String(safe.end))) : null,
  ].filter(Boolean);
  if (!transitions.length && kind !== "end") transitions.push(h("li.hint", "ends (completed)"));
  return h("li.step-card", { dataset: { index: String(index), step: id }, "aria-labelledby": `step-${index}-title` },
    h("div.step-head",
      h("h3", { id: `step-${index}-title` }, id),
      h("span.badge", kind.replace("_", " ")),
      safe.id === start ? h("span.badge.ok", "start") : null),
    safe.say ? h("p.step-say", `“${safe.say}”`) : null,
    safe.prompt ? h("p.hint", `plays the recording ${safe.prompt}`) : null,
    detail(kind, safe),
    h("ul.transitions", { "aria-label": `Where ${id} goes` }, transitions),
    h("p.step-error", { role: "alert", hidden: true }));
}

function condition(when) {
  if (!when || typeof when !== "object") return "?";
  const test = ["equals", "not_equals", "one_of", "matches", "is_set"].find((t) => when[t] !== undefined);
  if (!test) return String(when.var);
  const value = Array.isArray(when[test]) ? when[test].join(" / ") : String(when[test]);
  return `${when.var} ${test.replace("_", " ")} ${value}`;
}

function detail(kind, step) {
  const value = step[kind];
  if (kind === "collect" && value) return h("p.hint", `asks for ${value.var} (${value.type || "text"})`);
  if (kind === "action" && value) return h("p.hint", `${value.type}${value.target ? ` to ${value.target}` : ""}${value.url ? ` ${value.url}` : ""}`);
  if (kind === "ask_agent") return h("p.hint", `asks the agent: ${value}`);
  if (kind === "agent") return h("p.hint", "talks freely with the agent, then comes back");
  return null;
}

/** The API's answer at its place: a step's field on its card, the form's fields at the field, the rest above
 * the editor. */
function showSaveError(form, outline, editorError, code, error) {
  const match = /^steps\.(\d+)(?:\.|$)/.exec(error.field || "");
  const card = match ? outline.querySelector(`.step-card[data-index="${match[1]}"]`) : null;
  if (card) {
    const slot = card.querySelector(".step-error");
    card.classList.add("invalid");
    slot.hidden = false;
    slot.textContent = error.message;
    const named = error.message.includes(`'${card.dataset.step}'`);
    showEditorError(editorError, code, named ? error.message : `Step ${card.dataset.step}: ${error.message}`, card.dataset.step);
    card.scrollIntoView({ block: "nearest" });
    return;
  }
  if (["name", "description", "agent_id", "enabled"].includes(String(error.field || "").split(".")[0])) {
    showErrors(form, error);
    return;
  }
  showEditorError(editorError, code, error.message);
}

/** A message above the editor; with a step id, the caret goes to that step's "id" in the JSON. */
function showEditorError(slot, code, message, stepId = null) {
  slot.hidden = false;
  slot.textContent = message;
  code.setAttribute("aria-invalid", "true");
  if (stepId !== null) {
    const at = new RegExp(`"id"\\s*:\\s*${JSON.stringify(stepId).replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}`).exec(code.value);
    if (at) code.setSelectionRange(at.index, at.index + at[0].length);
  }
}
