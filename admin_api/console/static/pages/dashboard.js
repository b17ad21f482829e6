import { h } from "../lib/dom.js";

export async function render(main) {
  main.append(h("section.page", h("h1", "Dashboard")));
}
