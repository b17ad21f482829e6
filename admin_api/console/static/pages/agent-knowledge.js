// The agent page's knowledge: its documents (status, chunks, size, date), an upload with a progress bar, each
// document still being indexed re-read every POLL_MS until it is ready or failed, reindex and delete (designers
// and admins, as the API allows), and a search box showing the chunks the agent would retrieve, with scores.

import { api, del, get, post } from "../lib/api.js";
import { button, bytes, clearErrors, field, h, replace, showErrors, toast, when } from "../lib/dom.js";

const POLL_MS = 1500;
const PAGE = 50;
const ACCEPT = ".pdf,.docx,.txt,.text,.md,.markdown,.rst,.csv,.log,.html,.htm";
const UNFINISHED = new Set(["pending", "processing"]);

export function knowledgePanel(agent, ctx) {
  const designer = ctx.can("designer");
  const rows = new Map(); // document id → its <tr>
  const watching = new Set();
  let timer = null;
  let stopped = false;
  let offset = 0;

  const body = h("tbody");
  const summary = h("p.hint", { "aria-live": "polite" });
  const empty = h("p.empty", "No documents yet.");
  const list = h("div.table-wrap", h("table.documents",
    h("thead", h("tr", ["Document", "Status", "Chunks", "Size", "Uploaded", designer ? "Actions" : null]
      .filter(Boolean).map((label) => h("th", { scope: "col", class: ["Chunks", "Size"].includes(label) ? "num" : null }, label)))),
    body));
  const pager = h("div.pager");

  async function load() {
    const page = await get("/knowledge/documents", { agent_id: agent.id, limit: PAGE, offset });
    rows.clear();
    replace(body, page.items.map((doc) => row(doc)));
    list.hidden = !page.items.length;
    empty.hidden = Boolean(page.items.length);
    summary.textContent = `${page.total} ${page.total === 1 ? "document" : "documents"}`;
    replace(pager, page.total > PAGE ? [
      button("Newer", async () => { offset = Math.max(0, offset - PAGE); await load(); }, { disabled: offset === 0 }),
      h("span", `${offset + 1}–${offset + page.items.length} of ${page.total}`),
      button("Older", async () => { offset += PAGE; await load(); }, { disabled: offset + PAGE >= page.total }),
    ] : []);
    for (const doc of page.items) if (UNFINISHED.has(doc.status)) watch(doc.id);
  }

  function row(doc) {
    const tr = h("tr", { dataset: { document: String(doc.id) } });
    rows.set(doc.id, tr);
    fill(tr, doc);
    return tr;
  }

  function fill(tr, doc) {
    const cells = [
      h("td", h("span.doc-title", doc.title || doc.filename), doc.title ? h("div.hint", doc.filename) : null),
      h("td.doc-status", statusOf(doc)),
      h("td.num.doc-chunks", String(doc.chunk_count)),
      h("td.num", bytes(doc.size_bytes)),
      h("td", when(doc.created_at)),
    ];
    if (designer) {
      cells.push(h("td.doc-actions",
        button("Reindex", () => reindex(doc), { "aria-label": `Reindex ${doc.title || doc.filename}`,
          disabled: UNFINISHED.has(doc.status) }),
        button("Delete", () => remove(doc), { kind: "danger", "aria-label": `Delete ${doc.title || doc.filename}` })));
    }
    replace(tr, cells);
  }

  function update(doc) {
    const tr = rows.get(doc.id);
    if (tr) fill(tr, doc);
  }

  function watch(id) {
    watching.add(id);
    if (!timer && !stopped) timer = setTimeout(poll, POLL_MS);
  }

  async function poll() {
    timer = null;
    await Promise.all([...watching].map(async (id) => {
      try {
        const doc = await get(`/knowledge/documents/${id}`);
        update(doc);
        if (!UNFINISHED.has(doc.status)) {
          watching.delete(id);
          if (doc.status === "ready") toast(`${doc.title || doc.filename} is indexed: ${chunks(doc.chunk_count)}.`, "ok");
          else toast(`${doc.title || doc.filename} could not be indexed: ${doc.error}`, "error");
        }
      } catch (error) {
        watching.delete(id); // deleted meanwhile, or no longer readable: stop asking
        if (error.status !== 404) toast(error.message, "error");
      }
    }));
    if (watching.size && !stopped) timer = setTimeout(poll, POLL_MS);
  }

  async function reindex(doc) {
    try {
      const again = await post(`/knowledge/${doc.id}/reindex`);
      update(again);
      watch(again.id);
    } catch (error) {
      toast(error.message, "error");
    }
  }

  async function remove(doc) {
    if (!window.confirm(`Delete “${doc.title || doc.filename}” and its chunks from ${agent.name}'s knowledge?`)) return;
    try {
      await del(`/knowledge/documents/${doc.id}`);
      watching.delete(doc.id);
      toast(`${doc.title || doc.filename} deleted.`, "ok");
      await load();
    } catch (error) {
      toast(error.message, "error");
    }
  }

  const node = h("div.knowledge",
    h("div.card", { "aria-labelledby": "documents-title" },
      h("h2#documents-title", "Documents"), summary,
      designer ? uploadForm(agent, async (doc) => { offset = 0; await load(); watch(doc.id); }) : null,
      empty, list, pager),
    searchCard(agent));
  load().catch((error) => { summary.textContent = ""; empty.hidden = false; empty.textContent = error.message; });
  return { node, cleanup: () => { stopped = true; clearTimeout(timer); } };
}

function uploadForm(agent, uploaded) {
  const file = h("input", { type: "file", name: "file", accept: ACCEPT, required: true });
  const title = h("input", { name: "title", maxlength: 500, autocomplete: "off" });
  const description = h("input", { name: "description", maxlength: 2000, autocomplete: "off" });
  const progress = h("progress.upload-progress", { max: 1, value: 0, "aria-label": "Upload progress", hidden: true });
  const state = h("span.hint", { role: "status" });
  const submit = h("button.primary", { type: "submit" }, "Upload");
  const form = h("form.upload", { novalidate: true, "aria-label": "Upload a document" },
    h("p.form-error", { role: "alert", hidden: true }),
    h("div.inline",
      field("File", file, "PDF, DOCX, Markdown, HTML or plain text."),
      field("Title", title, "Empty: the file's name."),
      field("Description", description)),
    h("div.inline.upload-go", submit, progress, state));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    if (!file.files.length) { showErrors(form, { field: "file", message: "Choose a file to upload." }); return; }
    const data = new FormData();
    data.append("agent_id", String(agent.id));
    data.append("title", title.value.trim());
    data.append("description", description.value.trim());
    data.append("file", file.files[0]);
    submit.disabled = true;
    progress.hidden = false;
    progress.value = 0;
    state.textContent = `Uploading ${file.files[0].name}…`;
    try {
      const doc = await api("POST", "/knowledge/upload", data, { onProgress: (done) => { progress.value = done; } });
      progress.value = 1;
      state.textContent = `${doc.filename} uploaded.`;
      form.reset();
      await uploaded(doc);
    } catch (error) {
      state.textContent = "";
      showErrors(form, error);
    } finally {
      submit.disabled = false;
      progress.hidden = true;
    }
  });
  return form;
}

function searchCard(agent) {
  const query = h("input", { type: "search", name: "query", maxlength: 2000, autocomplete: "off" });
  const results = h("div.hits", { "aria-live": "polite" });
  const form = h("form.search", { novalidate: true, "aria-label": "Search the knowledge" },
    h("p.form-error", { role: "alert", hidden: true }),
    h("div.inline", field("Question", query), h("button.primary", { type: "submit" }, "Search")),
    h("p.hint", "What a caller might ask: the chunks the agent would retrieve, best first."));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const hits = await post("/knowledge/search", { agent_id: agent.id, query: query.value.trim(), limit: 5 });
      replace(results, hits.length ? h("ol.hit-list", hits.map((hit) => h("li.hit",
        h("div.hit-head",
          h("strong", hit.title || `document ${hit.document_id}`),
          h("span.hint", [hit.page ? `page ${hit.page}` : null, `chunk ${hit.ordinal + 1}`].filter(Boolean).join(" · ")),
          h("span.badge.score", { title: "Cosine similarity (1 is identical)" }, `score ${hit.similarity.toFixed(3)}`)),
        h("p.hit-text", hit.text)))) : h("p.empty", "Nothing in this agent's knowledge matches."));
    } catch (error) {
      replace(results);
      showErrors(form, error);
    } finally {
      button.disabled = false;
    }
  });
  return h("div.card", { "aria-labelledby": "search-title" }, h("h2#search-title", "Search"), form, results);
}

function chunks(count) {
  return `${count} ${count === 1 ? "chunk" : "chunks"}`;
}

function statusOf(doc) {
  if (doc.status === "ready") return h("span.badge.ok", "ready");
  if (doc.status === "failed") return [h("span.badge.bad", "failed"), doc.error ? h("div.hint", doc.error) : null];
  const percent = doc.status === "processing" ? ` ${Math.round(doc.progress * 100)} %` : "";
  return h("span.badge.warn", `${doc.status}${percent}`);
}
