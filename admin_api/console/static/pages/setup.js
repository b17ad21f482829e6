// First run: while no admin exists, the one-time token `eva run` printed creates the first admin here.

import { api } from "../lib/api.js";
import { field, h, showErrors } from "../lib/dom.js";

export async function render(main, ctx) {
  const state = await api("GET", "/console/setup");
  if (!state.needed) { ctx.navigate(ctx.me ? "/dashboard" : "/login"); return; }
  const token = h("input", { name: "token", required: true, autocomplete: "off", value: ctx.query.get("token") || "" });
  const username = h("input", { name: "username", required: true, minlength: 3, maxlength: 80, autocomplete: "username" });
  const password = h("input", { name: "password", type: "password", required: true, minlength: 8, autocomplete: "new-password" });
  const submit = h("button.primary", { type: "submit" }, "Create the admin");
  const form = h("form.card.narrow", { "aria-labelledby": "setup-title" },
    h("h1#setup-title", "Welcome to Eva"),
    h("p", "No admin exists yet. Create the first one with the setup token that ", h("code", "eva run"),
      " printed in its terminal (it works once)."),
    field("Setup token", token), field("Admin user name", username),
    field("Password", password, "At least 8 characters."), submit);
  // The token must not linger in the address bar or the history once it has been read.
  if (ctx.query.get("token")) history.replaceState(null, "", "#/setup");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    try {
      const session = await api("POST", "/console/setup",
        { token: token.value.trim(), username: username.value, password: password.value });
      ctx.signedIn(session.user);
      ctx.navigate("/dashboard");
    } catch (error) {
      showErrors(form, error);
    } finally {
      submit.disabled = false;
    }
  });
  main.append(h("section.page.center", form));
  (token.value ? username : token).focus();
}
