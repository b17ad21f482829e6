// Sign-in: the session lands in httpOnly cookies (admin_api/console/session.py); nothing is kept in storage.

import { api } from "../lib/api.js";
import { field, h, showErrors } from "../lib/dom.js";

export async function render(main, ctx) {
  if (ctx.me) { ctx.navigate("/dashboard"); return; }
  const username = h("input", { name: "username", autocomplete: "username", required: true, maxlength: 80 });
  const password = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const submit = h("button.primary", { type: "submit" }, "Sign in");
  const form = h("form.card.narrow", { "aria-labelledby": "login-title" },
    h("h1#login-title", "Sign in to Eva"),
    field("User name", username), field("Password", password), submit);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    try {
      const session = await api("POST", "/console/login", { username: username.value, password: password.value });
      ctx.signedIn(session.user);
      const back = ctx.query.get("next");
      ctx.navigate(back && back.startsWith("/") ? back : "/dashboard");
    } catch (error) {
      password.value = "";
      showErrors(form, error.code === "invalid_credentials" ? { message: error.message, field: "password" } : error);
    } finally {
      submit.disabled = false;
    }
  });
  main.append(h("section.page.center", form));
  username.focus();
}
