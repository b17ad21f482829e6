// Building the page without innerHTML: every text from the API goes in as a text node, so a caller's words, a
// document's name or an agent's persona can never become markup or script (the CSP would stop a script anyway).

/**
 * h("button.primary", {onclick, type: "button", "aria-label": "Save"}, "Save", child, [more children])
 * The tag may carry ".class" and "#id" parts.  Attribute values: on* functions become listeners, `false`/null
 * drop the attribute, `true` sets it empty; "dataset" takes an object.  Children: strings, numbers, nodes,
 * arrays, null/false (skipped).  Never accepts HTML.
 */
export function h(spec, attrs = {}, ...children) {
  if (attrs === null || typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs)) {
    children.unshift(attrs);
    attrs = {};
  }
  const [, tag = "div", rest = ""] = /^([a-z0-9-]*)(.*)$/i.exec(spec);
  const svg = ["svg", "g", "rect", "line", "polyline", "path", "circle", "text", "title", "tspan"].includes(tag);
  const el = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag || "div");
  for (const part of rest.match(/[.#][^.#]+/g) || []) {
    if (part[0] === ".") el.classList.add(part.slice(1));
    else el.id = part.slice(1);
  }
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "class") el.classList.add(...String(value).split(/\s+/).filter(Boolean));
    else if (key === "value" && "value" in el) {
      el.value = value;
      if ("defaultValue" in el) el.defaultValue = value; // form.reset() returns to it, not to empty
    } else if (key === "checked") { el.checked = Boolean(value); el.defaultChecked = Boolean(value); }
    else if (key === "selected") { el.selected = Boolean(value); el.defaultSelected = Boolean(value); }
    else if (key === "disabled") el.disabled = Boolean(value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace everything inside `el` with `children`. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/** A labelled form field: label + control (+ a slot for its error, filled by showErrors). */
export function field(label, control, hint = "") {
  const id = control.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  control.id = id;
  const error = h("p.field-error", { id: `${id}-error`, role: "alert", hidden: true });
  control.setAttribute("aria-describedby", `${id}-error`);
  return h("div.field", { dataset: { field: control.name || "" } },
    h("label", { for: id }, label), control, hint ? h("p.hint", hint) : null, error);
}

/** Show an ApiError next to the form field it names (or at the form's top), and focus that field. */
export function showErrors(form, error) {
  for (const slot of form.querySelectorAll(".field-error")) { slot.hidden = true; slot.textContent = ""; }
  for (const bad of form.querySelectorAll("[aria-invalid]")) bad.removeAttribute("aria-invalid");
  const name = error && error.field ? String(error.field).split(/[.[]/)[0] : "";
  const control = name ? form.querySelector(`[name="${CSS.escape(name)}"]`) : null;
  let slot = control ? form.querySelector(`#${CSS.escape(control.id)}-error`) : null;
  if (!slot) slot = form.querySelector(".form-error");
  if (!slot) { slot = h("p.form-error", { role: "alert" }); form.prepend(slot); }
  slot.hidden = false;
  slot.textContent = error ? error.message : "";
  if (control) { control.setAttribute("aria-invalid", "true"); control.focus(); }
}

export function clearErrors(form) {
  for (const slot of form.querySelectorAll(".field-error, .form-error")) { slot.hidden = true; slot.textContent = ""; }
  for (const bad of form.querySelectorAll("[aria-invalid]")) bad.removeAttribute("aria-invalid");
}

/** A short message at the bottom of the screen (read out by screen readers). */
export function toast(message, kind = "info") {
  const box = document.getElementById("toasts");
  const item = h(`div.toast.${kind}`, message);
  box.append(item);
  setTimeout(() => item.remove(), kind === "error" ? 8000 : 4000);
}

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

/** "3 Dec 2026, 06:40" from an ISO string (the API's UTC times are shown in the browser's zone). */
export function when(iso) {
  if (!iso) return "—";
  const date = new Date(/Z|[+-]\d\d:?\d\d$/.test(iso) ? iso : `${iso}Z`);
  return Number.isNaN(date.getTime()) ? String(iso) : dateFormat.format(date);
}

export function ms(value) {
  return value === null || value === undefined ? "—" : `${Math.round(value)} ms`;
}

export function seconds(value) {
  if (value === null || value === undefined) return "—";
  const s = Math.round(value);
  return s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}

/** "12.3 kB" from a byte count ("" when there is none). */
export function bytes(count) {
  if (typeof count !== "number") return "";
  if (count < 1024) return `${count} B`;
  return count < 1048576 ? `${(count / 1024).toFixed(1)} kB` : `${(count / 1048576).toFixed(1)} MB`;
}

/** Previous / "Page n of m" / Next links for a list paged in the address (`hrefOf(n)`: page n's link); nothing
 * when everything fits on page 1. */
export function pageLinks(page, total, perPage, hrefOf) {
  if (total <= perPage && page <= 1) return null;
  return h("nav.pager", { "aria-label": "Pages" },
    page > 1 ? h("a.button", { href: hrefOf(page - 1), rel: "prev" }, "Previous") : null,
    h("span.hint", `Page ${page} of ${Math.max(1, Math.ceil(total / perPage))}`),
    page * perPage < total ? h("a.button", { href: hrefOf(page + 1), rel: "next" }, "Next") : null);
}

/** A table from rows: columns = [{label, value: row => node|string, class?}]. */
export function table(columns, rows, { empty = "Nothing yet.", caption = "" } = {}) {
  if (!rows.length) return h("p.empty", empty);
  return h("div.table-wrap",
    h("table",
      caption ? h("caption", caption) : null,
      h("thead", h("tr", columns.map((c) => h("th", { scope: "col", class: c.class }, c.label)))),
      h("tbody", rows.map((row) => h("tr", columns.map((c) => h("td", { class: c.class }, c.value(row))))))));
}

/** A button that runs `action` once at a time, disabled while it runs. */
export function button(label, action, { kind = "", type = "button", ...attrs } = {}) {
  const el = h(`button${kind ? `.${kind}` : ""}`, { type, ...attrs }, label);
  el.addEventListener("click", async (event) => {
    if (el.disabled) return;
    el.disabled = true;
    try { await action(event); } finally { el.disabled = false; }
  });
  return el;
}

/** A <select> from [[value, label], ...]. */
export function select(name, options, current) {
  return h("select", { name },
    options.map(([value, label]) => h("option", { value: String(value), selected: String(value) === String(current ?? "") }, label)));
}
