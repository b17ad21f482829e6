// The agent page's test chat: a message goes to POST /agents/{id}/chat/stream and the reply shows as its
// Server-Sent Events arrive: `session` (the chat session it opened, continued by the next message), `delta`
// (reply text), `tool` (a tool the model called), `done` (the stored reply, its sources and timings) or `error`.
// EventSource cannot POST, so the stream is read from fetch's body; Stop aborts the request, which cancels the
// generation on the server (what was written is stored, marked cancelled).

import { api, ApiError } from "../lib/api.js";
import { button, field, h, ms, replace } from "../lib/dom.js";

export function chatPanel(agent) {
  let sessionId = null;
  let running = null; // the AbortController of the reply being streamed
  const log = h("div.chat-log", { role: "log", "aria-live": "polite", "aria-label": "Test conversation" },
    h("p.empty", "Write a message: the agent answers as it would a chat visitor."));
  const status = h("p.hint.chat-status", { role: "status" });
  const message = h("textarea", { name: "message", rows: 2, maxlength: 4000, required: true });
  const send = h("button.primary", { type: "submit" }, "Send");
  const stop = h("button", { type: "button", disabled: true, onclick: () => running && running.abort() }, "Stop");
  const restart = button("New conversation", async () => {
    if (running) running.abort();
    sessionId = null;
    replace(log, h("p.empty", "A new conversation starts with the next message."));
    status.textContent = "";
  });
  const form = h("form.chat-form", { "aria-label": "Send a test message" },
    field("Message", message, "Enter sends; Shift+Enter starts a new line."),
    h("div.inline", send, stop, restart));
  message.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); form.requestSubmit(); }
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = message.value.trim();
    if (!text || running) return;
    message.value = "";
    log.querySelector(".empty")?.remove();
    log.append(h("div.bubble.user", h("span.who", "You"), h("p", text)));
    const reply = bubble(agent.name);
    log.append(reply.node);
    running = new AbortController();
    send.disabled = true;
    stop.disabled = false;
    log.setAttribute("aria-busy", "true");
    status.textContent = `${agent.name} is answering…`;
    let ended = false;
    try {
      await converse(agent.id, { message: text, ...(sessionId ? { session_id: sessionId } : {}) }, running.signal, {
        session: (data) => { sessionId = data.session_id; },
        delta: (data) => reply.add(data.text),
        tool: (data) => reply.tool(data),
        done: (data) => { ended = true; reply.done(data); },
        error: (data) => { ended = true; reply.fail(data.error ? data.error.message : "the reply failed"); },
      });
      if (!ended) reply.fail("The connection closed before the reply was complete.");
      status.textContent = "";
    } catch (error) {
      if (error.name === "AbortError") {
        reply.note("Stopped: what was written so far is kept in the conversation.");
        status.textContent = "Stopped.";
      } else {
        reply.fail(error.message);
        status.textContent = "";
      }
    } finally {
      running = null;
      send.disabled = false;
      stop.disabled = true;
      log.removeAttribute("aria-busy");
      reply.node.scrollIntoView({ block: "nearest" });
    }
  });
  const node = h("div.card.chat", { "aria-labelledby": "chat-title" },
    h("h2#chat-title", "Test chat"),
    h("p.hint", "Uses the agent's persona, knowledge and flows; each conversation is stored as a chat session."),
    log, status, form);
  return { node, cleanup: () => { if (running) running.abort(); } };
}

/** The agent's reply as it grows: its text, the tools it called, then its sources and timings. */
function bubble(name) {
  const text = h("p.text");
  const tools = h("ul.tools");
  const meta = h("div.meta");
  const node = h("div.bubble.agent", h("span.who", name), text, tools, meta);
  return {
    node,
    add(piece) { text.textContent += piece; },
    tool(call) { tools.append(h("li", "Called ", h("code", call.name), ` ${JSON.stringify(call.arguments)}`)); },
    note(words) { meta.append(h("p.hint", words)); },
    fail(words) { node.classList.add("failed"); meta.append(h("p.form-error", words)); },
    done(reply) {
      text.textContent = reply.reply; // the stored text (the fallback message when the model failed)
      if (reply.fallback) meta.append(h("p.form-error", `The model failed (${reply.error}): this is the agent's fallback message.`));
      else if (reply.error) meta.append(h("p.form-error", `The reply stopped early (${reply.error}).`));
      if (reply.flow) meta.append(h("p.hint", `Answered by the flow ${reply.flow}.`));
      if (reply.sources.length) {
        meta.append(h("ul.sources", { "aria-label": "Sources" }, reply.sources.map((s) => h("li",
          s.title || `document ${s.document_id}`, s.page ? `, page ${s.page}` : "",
          s.similarity !== null && s.similarity !== undefined ? h("span.score", ` ${s.similarity.toFixed(2)}`) : null))));
      }
      const t = reply.timings;
      const parts = [["first token", t.llm_first_token_ms], ["total", t.total_ms]].filter(([, v]) => typeof v === "number");
      if (parts.length) meta.append(h("p.hint.timings", parts.map(([label, v]) => `${label} ${ms(v)}`).join(" · ")));
    },
  };
}

/** POST the message and hand each SSE event to `on[name](data)`; the API's JSON refusals throw ApiError. */
async function converse(agentId, body, signal, on) {
  const response = await api("POST", `/agents/${agentId}/chat/stream`, body, { raw: true, signal });
  const type = response.headers.get("Content-Type") || "";
  if (!response.ok || !type.startsWith("text/event-stream")) {
    let error = null;
    try { error = (await response.json()).error; } catch { /* not JSON */ }
    throw new ApiError(response.status, error?.code ?? "http_error", error?.message ?? `${response.status} ${response.statusText}`,
      error?.field ?? null);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value, { stream: !done }).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = parseEvent(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (event && on[event.name]) on[event.name](event.data);
    }
    if (done) return;
  }
}

/** One SSE block ("event: x" and "data: {json}" lines; ":" lines are keep-alive comments) → {name, data}. */
function parseEvent(block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const key = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (key === "event") name = value;
    else if (key === "data") data.push(value);
  }
  if (!data.length) return null;
  try { return { name, data: JSON.parse(data.join("\n")) }; } catch { return null; }
}
