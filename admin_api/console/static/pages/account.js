// My account (password, sign-out everywhere) and, for admins, the people and machine keys that reach Eva.
// Users and keys are admin-only API endpoints, so the sections exist only for admins.

import { api, get, post, patch, del } from "../lib/api.js";
import { button, field, h, replace, select, showErrors, table, toast, when } from "../lib/dom.js";

const ROLES = [["viewer", "viewer: reads everything"], ["designer", "designer: agents, knowledge, flows, routes"],
  ["admin", "admin: everything, users, trunks, calls"]];

export async function render(main, ctx) {
  const page = h("section.page", h("h1", "Account"));
  main.append(page);
  page.append(passwordCard(ctx));
  if (ctx.me.kind === "user" && ctx.can("admin")) {
    const users = h("div.card", { "aria-labelledby": "users-title" });
    const keys = h("div.card", { "aria-labelledby": "keys-title" });
    page.append(users, keys);
    await Promise.all([drawUsers(users, ctx), drawKeys(keys)]);
  }
}

function passwordCard(ctx) {
  const current = h("input", { name: "current_password", type: "password", autocomplete: "current-password", required: true });
  const next = h("input", { name: "new_password", type: "password", autocomplete: "new-password", required: true, minlength: 8 });
  const form = h("form.card.narrow", { "aria-labelledby": "password-title" },
    h("h2#password-title", `Password of ${ctx.me.name} (${ctx.me.role})`),
    field("Current password", current), field("New password", next, "At least 8 characters. Every session of yours ends."),
    h("div.inline", h("button.primary", { type: "submit" }, "Change password"),
      button("Sign out everywhere", async () => {
        await post("/auth/logout", { everywhere: true });
        await api("POST", "/console/logout", {}).catch(() => null);
        location.hash = "#/login";
        location.reload();
      })));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await post("/auth/password", { current_password: current.value, new_password: next.value });
      toast("Password changed: sign in with the new one.", "ok");
      await api("POST", "/console/logout", {}).catch(() => null);
      location.hash = "#/login";
      location.reload();
    } catch (error) {
      showErrors(form, error);
    }
  });
  return form;
}

async function drawUsers(card, ctx) {
  const users = await get("/users");
  const username = h("input", { name: "username", required: true, minlength: 3, maxlength: 80, autocomplete: "off" });
  const password = h("input", { name: "password", type: "password", required: true, minlength: 8, autocomplete: "new-password" });
  const role = select("role", ROLES, "viewer");
  const form = h("form", { "aria-label": "Add a user" },
    h("div.inline", field("User name", username), field("Password", password), field("Role", role),
      h("button.primary", { type: "submit" }, "Add user")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await post("/users", { username: username.value, password: password.value, role: role.value });
      toast(`User ${username.value} added.`, "ok");
      await drawUsers(card, ctx);
    } catch (error) {
      showErrors(form, error);
    }
  });
  const change = async (user, changes, done) => {
    try {
      await patch(`/users/${user.id}`, changes);
      toast(done, "ok");
    } catch (error) {
      toast(error.message, "error");
    }
    await drawUsers(card, ctx);
  };
  replace(card, h("h2#users-title", "Users"), table([
    { label: "User", value: (u) => u.username },
    { label: "Role", value: (u) => {
      // A pending account (open signup) waits for a role: it is shown as such, and any choice grants one.
      const choices = ROLES.map(([v]) => [v, v]);
      const control = select("role", u.role === "pending" ? [["pending", "pending: choose a role"], ...choices] : choices,
        u.role);
      control.setAttribute("aria-label", `Role of ${u.username}`);
      control.addEventListener("change", () => change(u, { role: control.value }, `${u.username} is now ${control.value}.`));
      return control;
    } },
    { label: "Status", value: (u) => (u.role === "pending" ? h("span.badge.warn", "waiting for a role")
      : h(`span.badge.${u.active ? "ok" : "bad"}`, u.active ? "active" : "disabled")) },
    { label: "Since", value: (u) => when(u.created_at) },
    { label: "Actions", value: (u) => u.id === ctx.me.id ? h("span.hint", "you") : h("div.inline",
      button(u.active ? "Disable" : "Enable", () => change(u, { active: !u.active },
        `${u.username} ${u.active ? "disabled" : "enabled"}.`)),
      button("Delete", async () => {
        if (!confirm(`Delete the user ${u.username}?`)) return;
        try { await del(`/users/${u.id}`); toast(`${u.username} deleted.`, "ok"); } catch (e) { toast(e.message, "error"); }
        await drawUsers(card, ctx);
      }, { kind: "danger" })) },
  ], users, { empty: "No users." }), form);
}

async function drawKeys(card) {
  const keys = await get("/apikeys");
  const name = h("input", { name: "name", required: true, maxlength: 120, autocomplete: "off" });
  const role = select("role", [["viewer", "viewer"], ["designer", "designer"], ["admin", "admin"],
    ["chat", "chat: only the chat endpoints (a website)"]], "viewer");
  const days = h("input", { name: "expires_in_days", type: "number", min: 1, max: 3650, placeholder: "never" });
  const shown = h("div", { "aria-live": "polite" });
  const form = h("form", { "aria-label": "Create an API key" },
    h("div.inline", field("Name", name), field("Role", role), field("Expires after (days)", days),
      h("button.primary", { type: "submit" }, "Create key")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const made = await post("/apikeys", { name: name.value, role: role.value,
        expires_in_days: days.value ? Number(days.value) : null });
      await drawKeys(card);
      card.append(h("div.card.key-once", h("p", h("strong", "Copy the key now: "), "it is shown only this once."),
        h("code.secret", made.key)));
    } catch (error) {
      showErrors(form, error);
    }
  });
  replace(card, h("h2#keys-title", "API keys"), table([
    { label: "Name", value: (k) => k.name },
    { label: "Key", value: (k) => h("code", `${k.prefix}…`) },
    { label: "Role", value: (k) => k.role },
    { label: "Last used", value: (k) => when(k.last_used_at) },
    { label: "Expires", value: (k) => (k.expires_at ? when(k.expires_at) : "never") },
    { label: "", value: (k) => button("Revoke", async () => {
      if (!confirm(`Revoke the key ${k.name}? Programs using it stop working.`)) return;
      try { await del(`/apikeys/${k.id}`); toast(`${k.name} revoked.`, "ok"); } catch (e) { toast(e.message, "error"); }
      await drawKeys(card);
    }, { kind: "danger" }) },
  ], keys, { empty: "No API keys." }), form, shown);
}
