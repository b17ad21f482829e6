// Telephony: the SIP trunks with their live state (re-read every 30 s while the screen is open) and history of state
// changes, and the dialplan files with the validator's messages at the offending line.  Trunks are changed by
// admins only (POST/PATCH/DELETE /sip/trunks); dialplans by designers and admins (PUT/DELETE /dialplans).  Routes
// (number → agent or flow) are on the Flows screen.  Without a connected Asterisk the status endpoint answers
// "offline" (or 502/503): the screen says so and keeps working.

import { ApiError, get, post, patch, put, del } from "../lib/api.js";
import { button, clearErrors, field, h, replace, select, showErrors, table, toast, when } from "../lib/dom.js";

const STATE_BADGE = { up: "ok", down: "bad", rejected: "bad", registering: "warn", unknown: "warn", disabled: "" };
const REFRESH_MS = 30000;

export async function render(main, ctx) {
  const trunksCard = h("section.card.trunks", { "aria-labelledby": "trunks-title" });
  const historyCard = h("section.card.trunk-history", { "aria-labelledby": "history-title", hidden: true });
  const dialplansCard = h("section.card.dialplans", { "aria-labelledby": "dialplans-title" });
  main.append(h("section.page.telephony",
    h("div.page-head", h("h1", "Telephony")),
    h("p.hint", "Numbers are sent to agents and flows by the routes on the ", h("a", { href: "#/flows" }, "Flows"), " screen."),
    trunksCard, historyCard, dialplansCard));
  const trunks = new TrunkList(trunksCard, historyCard, ctx);
  await Promise.all([trunks.load(), drawDialplans(dialplansCard, ctx)]);
  const timer = setInterval(() => trunks.refreshStatuses(), REFRESH_MS);
  return () => clearInterval(timer);
}

class TrunkList {
  constructor(card, historyCard, ctx) {
    this.card = card;
    this.historyCard = historyCard;
    this.ctx = ctx;
    this.cells = new Map();
    this.notice = h("p.hint.asterisk-notice", { "aria-live": "polite" });
  }

  async load() {
    const trunks = await get("/sip/trunks");
    const admin = this.ctx.can("admin");
    this.cells = new Map(trunks.map((t) => [t.id, h("div.trunk-status", h("span.hint", "reading…"))]));
    const form = admin ? trunkForm(() => this.load()) : null;
    const columns = [
      { label: "Trunk", value: (t) => h("div", h("strong.trunk-name", t.name), h("div.hint", h("code", t.endpoint))) },
      { label: "Provider", value: (t) => `${t.host}:${t.port} (${t.transport})` },
      { label: "Numbers", value: (t) => (t.dids.length ? t.dids.join(", ") : h("span.hint", "none")) },
      { label: "Registers", value: (t) => (t.registration ? "yes" : "no") },
      { label: "Status", value: (t) => this.cells.get(t.id) },
      { label: "Actions", value: (t) => h("div.inline",
        h("button", { type: "button", "aria-label": `History of ${t.name}`, onclick: () => this.history(t, 0) }, "History"),
        admin ? h("button", { type: "button", "aria-label": `Edit trunk ${t.name}`, onclick: () => form.edit(t) }, "Edit") : null,
        admin ? button("Delete", async () => {
          if (!confirm(`Delete the trunk ${t.name}? Calls through it stop.`)) return;
          try { await del(`/sip/trunks/${t.id}`); toast(`Trunk ${t.name} deleted.`, "ok"); } catch (e) { toast(e.message, "error"); }
          await this.load();
        }, { kind: "danger", "aria-label": `Delete trunk ${t.name}` }) : null) },
    ];
    replace(this.card, h("h2#trunks-title", "SIP trunks"), this.notice,
      table(columns, trunks, { empty: admin ? "No trunks yet: add the provider's details below." : "No trunks yet." }),
      form ? form.el : null);
    await this.refreshStatuses();
  }

  async refreshStatuses() {
    let offline = false;
    await Promise.all([...this.cells].map(async ([id, cell]) => {
      try {
        const s = await get(`/sip/trunks/${id}/status`);
        if (s.asterisk === "offline") offline = true;
        replace(cell,
          h(`span.badge${STATE_BADGE[s.state] ? `.${STATE_BADGE[s.state]}` : ""}`, s.state),
          s.since ? h("span.hint", ` since ${when(s.since)}`) : null,
          h("div.hint", s.state_detail),
          s.monitored ? h("div.hint", `${s.active_calls} calls now, ${s.calls_today} today`) : null,
          s.registration ? h("div.hint", `registration: ${s.registration}`) : null);
      } catch (error) {
        const down = error instanceof ApiError && [502, 503].includes(error.status);
        offline = offline || down;
        replace(cell, h(`span.badge.${down ? "warn" : "bad"}`, down ? "Asterisk not connected" : "status unavailable"),
          h("div.hint", error.message));
      }
    }));
    this.notice.textContent = offline
      ? "Asterisk not connected: trunk states cannot be read now; changes apply when it starts."
      : "";
  }

  async history(trunk, offset) {
    const page = await get(`/sip/trunks/${trunk.id}/history`, { limit: 20, offset });
    const pager = h("div.pager",
      offset > 0 ? h("button", { type: "button", onclick: () => this.history(trunk, Math.max(0, offset - 20)) }, "Newer") : null,
      page.total ? h("span.hint", `${offset + 1}–${offset + page.items.length} of ${page.total}`) : null,
      offset + page.items.length < page.total
        ? h("button", { type: "button", onclick: () => this.history(trunk, offset + 20) }, "Older") : null);
    this.historyCard.hidden = false;
    replace(this.historyCard, h("h2#history-title", `History of ${trunk.name}`),
      table([
        { label: "When", value: (e) => when(e.at) },
        { label: "Change", value: (e) => h("span", e.previous || "—", " → ",
          h(`span.badge${STATE_BADGE[e.state] ? `.${STATE_BADGE[e.state]}` : ""}`, e.state)) },
        { label: "Detail", value: (e) => e.detail },
      ], page.items, { empty: "No state changes recorded yet." }),
      pager,
      h("button.link", { type: "button", onclick: () => { this.historyCard.hidden = true; } }, "Close history"));
    this.historyCard.scrollIntoView({ block: "nearest" });
  }
}

/** Add a trunk or change the one being edited (admins). */
function trunkForm(reload) {
  const input = (name, attrs = {}) => h("input", { name, autocomplete: "off", ...attrs });
  const controls = {
    name: input("name", { required: true, maxlength: 40, placeholder: "provider" }),
    host: input("host", { required: true, maxlength: 253, placeholder: "sip.provider.example" }),
    port: input("port", { type: "number", min: 1, max: 65535, value: "5060" }),
    transport: select("transport", [["udp", "UDP"], ["tcp", "TCP"]], "udp"),
    username: input("username", { maxlength: 128 }),
    password: input("password", { type: "password", maxlength: 256, autocomplete: "new-password" }),
    codecs: input("codecs", { value: "ulaw, alaw" }),
    dids: input("dids", { placeholder: "+34910000000, +34910000001" }),
    from_user: input("from_user", { maxlength: 128 }),
    from_domain: input("from_domain", { maxlength: 253 }),
  };
  const checks = {
    registration: h("input", { type: "checkbox", name: "registration" }),
    verified_caller_id: h("input", { type: "checkbox", name: "verified_caller_id" }),
    enabled: h("input", { type: "checkbox", name: "enabled", checked: true }),
  };
  const passwordHint = h("span", "Never shown again.");
  const title = h("h3", "Add a trunk");
  const submit = h("button.primary", { type: "submit" }, "Add trunk");
  const cancel = h("button", { type: "button", hidden: true }, "Cancel");
  const el = h("form.trunk-form", { "aria-label": "Trunk" }, title,
    h("div.grid.form-grid",
      field("Name", controls.name, "Lower case letters, digits, _ and -."), field("Host", controls.host),
      field("Port", controls.port), field("Transport", controls.transport),
      field("User name", controls.username), field("Password", controls.password, passwordHint),
      field("Codecs", controls.codecs, "Comma separated: ulaw, alaw, g722, opus…"),
      field("Numbers (DIDs)", controls.dids, "Comma separated."),
      field("From user", controls.from_user), field("From domain", controls.from_domain)),
    h("div.inline",
      h("label.check", checks.registration, "Register with the provider"),
      h("label.check", checks.verified_caller_id, "Provider attests caller numbers"),
      h("label.check", checks.enabled, "Enabled")),
    h("div.inline.form-actions", submit, cancel));
  let editing = null;
  const list = (text) => text.split(/[\s,]+/).filter(Boolean);
  cancel.addEventListener("click", () => {
    editing = null;
    el.reset();
    controls.name.readOnly = false;
    title.textContent = "Add a trunk";
    submit.textContent = "Add trunk";
    passwordHint.textContent = "Never shown again.";
    cancel.hidden = true;
    clearErrors(el);
  });
  el.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {
      host: controls.host.value.trim(), port: Number(controls.port.value || 5060), transport: controls.transport.value,
      username: controls.username.value, codecs: list(controls.codecs.value), dids: list(controls.dids.value),
      from_user: controls.from_user.value, from_domain: controls.from_domain.value.trim(),
      registration: checks.registration.checked, verified_caller_id: checks.verified_caller_id.checked,
      enabled: checks.enabled.checked,
    };
    if (controls.password.value || !editing) body.password = controls.password.value;
    try {
      if (editing) await patch(`/sip/trunks/${editing.id}`, body);
      else await post("/sip/trunks", { name: controls.name.value.trim(), ...body });
      toast(editing ? `Trunk ${editing.name} changed.` : `Trunk ${controls.name.value} added.`, "ok");
      await reload();
    } catch (error) {
      showErrors(el, error);
    }
  });
  const edit = (trunk) => {
    editing = trunk;
    for (const [key, control] of Object.entries(controls)) {
      const value = trunk[key];
      control.value = Array.isArray(value) ? value.join(", ") : value ?? "";
    }
    controls.password.value = "";
    controls.name.readOnly = true;
    for (const [key, control] of Object.entries(checks)) control.checked = Boolean(trunk[key]);
    title.textContent = `Change the trunk ${trunk.name}`;
    submit.textContent = "Save trunk";
    passwordHint.textContent = trunk.has_password ? "Leave empty to keep the stored password." : "None stored.";
    cancel.hidden = false;
    clearErrors(el);
    controls.host.focus();
  };
  return { el, edit };
}

// ------------------------------ dialplans ---------------------------------------------------------
async function drawDialplans(card, ctx) {
  const plans = await get("/dialplans");
  const editor = h("div.dialplan-editor");
  const designer = ctx.can("designer");
  const open = async (name) => {
    const plan = name ? await get(`/dialplans/${name}`) : null;
    drawEditor(editor, plan, ctx, () => drawDialplans(card, ctx));
  };
  replace(card, h("h2#dialplans-title", "Dialplans"),
    table([
      { label: "File", value: (d) => h("code", `${d.name}.conf`) },
      { label: "Source", value: (d) => h(`span.badge${d.source === "packaged" ? "" : ".warn"}`, d.source) },
      { label: "Contexts", value: (d) => d.contexts.join(", ") },
      { label: "Size", class: "num", value: (d) => `${d.size} B` },
      { label: "", value: (d) => h("button", { type: "button", "aria-label": `Open ${d.name}`, onclick: () => open(d.name) },
        designer ? "Edit" : "View") },
    ], plans, { empty: "No dialplan files." }),
    designer ? h("div.inline", h("button", { type: "button", onclick: () => open(null) }, "New dialplan")) : null,
    editor);
}

function drawEditor(box, plan, ctx, reload) {
  const designer = ctx.can("designer");
  const name = h("input", { name: "name", required: true, maxlength: 64, autocomplete: "off", value: plan ? plan.name : "",
    readonly: Boolean(plan), pattern: "[a-z0-9][a-z0-9_\\-]{0,63}" });
  const content = h("textarea.code.dialplan-code", { name: "content", spellcheck: "false", readonly: !designer,
    value: plan ? plan.content : "[eva-custom]\nexten => 100,1,Answer()\n same => n,Hangup()\n" });
  const badLine = h("pre.error-line", { hidden: true });
  const form = h("form.card.dialplan-form", { "aria-label": "Dialplan" },
    h("h3", plan ? `${plan.name}.conf` : "New dialplan"),
    plan ? null : field("File name", name, "Lower case letters, digits, _ and - (saved as NAME.conf)."),
    field("Content", content, plan ? `Contexts: ${plan.contexts.join(", ") || "none"}` : ""),
    badLine);
  if (designer) {
    const actions = h("div.inline.form-actions", h("button.primary", { type: "submit" }, "Save dialplan"));
    if (plan && plan.source !== "packaged") {
      const label = plan.source === "override" ? "Revert to packaged" : "Delete dialplan";
      actions.append(button(label, async () => {
        if (!confirm(`${label}: ${plan.name}.conf?`)) return;
        try { await del(`/dialplans/${plan.name}`); toast(`${plan.name}.conf: done.`, "ok"); await reload(); } catch (e) { toast(e.message, "error"); }
      }, { kind: "danger" }));
    }
    form.append(actions);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      badLine.hidden = true;
      if (!/^[a-z0-9][a-z0-9_-]{0,63}$/.test(name.value.trim())) {
        showErrors(form, { field: "name", message: "Use lower case letters, digits, _ and - (up to 64), starting with a letter or digit." });
        return;
      }
      try {
        const saved = await put(`/dialplans/${name.value.trim()}`, { content: content.value });
        toast(saved.applied ? `${saved.name}.conf saved and loaded by Asterisk.`
          : `${saved.name}.conf saved; Asterisk is not connected, it loads the file when it starts.`, "ok");
        await reload();
      } catch (error) {
        showErrors(form, error);
        showLine(content, badLine, error);
      }
    });
  }
  form.append(h("button.link", { type: "button", onclick: () => replace(box) }, "Close"));
  replace(box, form);
  (plan ? content : name).focus();
}

/** "line 3: ..." from the validator: quote that line under the editor and select it in the text. */
function showLine(textarea, slot, error) {
  const match = /^line (\d+)\b/i.exec(error.message || "");
  if (!match) return;
  const number = Number(match[1]);
  const lines = textarea.value.split("\n");
  if (number < 1 || number > lines.length) return;
  const start = lines.slice(0, number - 1).reduce((n, l) => n + l.length + 1, 0);
  slot.hidden = false;
  slot.textContent = `${number} | ${lines[number - 1]}`;
  textarea.focus();
  textarea.setSelectionRange(start, start + lines[number - 1].length);
}
