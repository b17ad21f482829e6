// Flows and routes: every conversation flow (a link to its editor), and the routes that send a dialled number
// (DID or extension) to an agent or a flow.  "New flow" and the route form, edit and delete buttons exist only for
// the roles POST /flows and POST/PATCH/DELETE /routes allow (designer and admin).

import { get, post, patch, del } from "../lib/api.js";
import { button, clearErrors, field, h, replace, select, showErrors, table, toast, when } from "../lib/dom.js";

export async function render(main, ctx) {
  const [flows, agents, routes] = await Promise.all([get("/flows"), get("/agents"), get("/routes")]);
  const agentName = new Map(agents.map((a) => [a.id, a.name]));
  const actions = h("div.actions");
  if (ctx.can("designer")) {
    actions.append(h("button.primary", { type: "button", onclick: () => ctx.navigate("/flows/new") }, "New flow"));
  }
  const routesCard = h("section.card.routes", { "aria-labelledby": "routes-title" });
  main.append(h("section.page.flows",
    h("div.page-head", h("h1", "Flows"), actions),
    h("p.hint.flows-count", { "aria-live": "polite" }, `${flows.length} ${flows.length === 1 ? "flow" : "flows"}`),
    table([
      { label: "Name", value: (f) => h("div", h("a.flow-name", { href: `#/flows/${f.id}` }, f.name),
        f.description ? h("div.hint", f.description) : null) },
      { label: "Steps", class: "num", value: (f) => String(f.steps.length) },
      { label: "Starts at", value: (f) => h("code", f.start_step) },
      { label: "Agent", value: (f) => (f.agent_id ? agentName.get(f.agent_id) || `#${f.agent_id}` : h("span.hint", "none")) },
      { label: "State", value: (f) => h(`span.badge.${f.enabled ? "ok" : "warn"}`, f.enabled ? "enabled" : "disabled") },
      { label: "Changed", value: (f) => when(f.updated_at) },
    ], flows, {
      empty: ctx.can("designer") ? "No flows yet: write the first one with “New flow”." : "No flows yet.",
    }),
    routesCard));
  drawRoutes(routesCard, ctx, { routes, flows, agents });
}

/** The routes table and, for designers, the form that adds a route or changes the one being edited. */
function drawRoutes(card, ctx, data) {
  const { routes, flows, agents } = data;
  const flowName = new Map(flows.map((f) => [f.id, f.name]));
  const agentName = new Map(agents.map((a) => [a.id, a.name]));
  const reload = async () => {
    const fresh = await get("/routes");
    drawRoutes(card, ctx, { ...data, routes: fresh });
  };
  const target = (r) => (r.flow_id
    ? h("span", "flow ", h("a", { href: `#/flows/${r.flow_id}` }, flowName.get(r.flow_id) || `#${r.flow_id}`))
    : h("span", "agent ", h("a", { href: `#/agents/${r.agent_id}` }, agentName.get(r.agent_id) || `#${r.agent_id}`)));
  const form = ctx.can("designer") ? routeForm(flows, agents, reload) : null;
  const columns = [
    { label: "Number", value: (r) => h("code.route-did", r.did) },
    { label: "Goes to", value: target },
    { label: "Description", value: (r) => r.description || "" },
    { label: "State", value: (r) => h(`span.badge.${r.enabled ? "ok" : "warn"}`, r.enabled ? "enabled" : "disabled") },
  ];
  if (form) {
    columns.push({ label: "Actions", value: (r) => h("div.inline",
      h("button", { type: "button", "aria-label": `Edit route ${r.did}`, onclick: () => form.edit(r) }, "Edit"),
      button("Delete", async () => {
        if (!confirm(`Delete the route for ${r.did}? Calls to it are no longer answered by Eva.`)) return;
        try { await del(`/routes/${r.id}`); toast(`Route ${r.did} deleted.`, "ok"); } catch (e) { toast(e.message, "error"); }
        await reload();
      }, { kind: "danger", "aria-label": `Delete route ${r.did}` })) });
  }
  replace(card, h("h2#routes-title", "Routes"),
    h("p.hint", "A call to a number (or a message to a channel address) is answered by the agent or flow its route names."),
    table(columns, routes, { empty: "No routes: calls to unknown numbers are refused." }),
    form ? form.el : null);
}

function routeForm(flows, agents, reload) {
  const did = h("input", { name: "did", required: true, maxlength: 64, autocomplete: "off", placeholder: "+34910000000 or 100" });
  const targets = [["", "choose…"], ...agents.map((a) => [`agent:${a.id}`, `agent ${a.name}`]),
    ...flows.map((f) => [`flow:${f.id}`, `flow ${f.name}`])];
  const goes = select("target", targets, "");
  goes.required = true;
  const description = h("input", { name: "description", maxlength: 500, autocomplete: "off" });
  const enabled = h("input", { type: "checkbox", name: "enabled", checked: true });
  const title = h("h3", "Add a route");
  const submit = h("button.primary", { type: "submit" }, "Add route");
  const cancel = h("button", { type: "button", hidden: true }, "Cancel");
  const el = h("form.route-form", { "aria-label": "Route" }, title,
    h("div.inline", field("Number", did), field("Goes to", goes), field("Description", description),
      h("label.check", enabled, "Enabled"), submit, cancel));
  let editing = null;
  const reset = () => {
    editing = null;
    el.reset();
    enabled.checked = true;
    title.textContent = "Add a route";
    submit.textContent = "Add route";
    cancel.hidden = true;
    clearErrors(el);
  };
  cancel.addEventListener("click", reset);
  el.addEventListener("submit", async (event) => {
    event.preventDefault();
    const [kind, id] = goes.value.split(":");
    const body = { did: did.value.trim(), description: description.value, enabled: enabled.checked,
      agent_id: kind === "agent" ? Number(id) : null, flow_id: kind === "flow" ? Number(id) : null };
    try {
      if (editing) await patch(`/routes/${editing.id}`, body);
      else await post("/routes", body);
      toast(editing ? `Route ${body.did} changed.` : `Route ${body.did} added.`, "ok");
      await reload();
    } catch (error) {
      // The API names agent_id or flow_id when the target is wrong: both are the one "Goes to" control.
      showErrors(el, error && /^(agent|flow)_id/.test(error.field || "") ? Object.assign(error, { field: "target" }) : error);
    }
  });
  const edit = (route) => {
    editing = route;
    did.value = route.did;
    goes.value = route.flow_id ? `flow:${route.flow_id}` : `agent:${route.agent_id}`;
    description.value = route.description;
    enabled.checked = route.enabled;
    title.textContent = `Change the route for ${route.did}`;
    submit.textContent = "Save route";
    cancel.hidden = false;
    clearErrors(el);
    did.focus();
  };
  return { el, edit };
}
