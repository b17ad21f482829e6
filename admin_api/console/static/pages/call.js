// One call: who called whom, when, how it ended; the recording with a marker per turn (a button that plays
// from there); the transcript turn by turn (what the caller said, what Eva meant to say and, when the caller
// interrupted, what was actually heard); each turn's stage timings as a chart; the variables its flows
// collected; the tools the agent called (transfers among them).  While the call is up, new turns and its end
// arrive as live events and the page re-reads the call.

import { ApiError, get } from "../lib/api.js";
import { stackedBars } from "../lib/charts.js";
import { h, ms, replace, table, when } from "../lib/dom.js";
import { debounce, onEvent } from "../lib/events.js";
import { agentName, agentNames, callDuration, elapsed, outcomeBadge } from "./calls.js";

// The turn row's stage times are milliseconds after the caller stopped speaking, each later than the last.
const STAGES = [
  ["stt_done_ms", "STT"], ["llm_first_token_ms", "LLM first token"], ["first_sentence_ready_ms", "First sentence"],
  ["tts_first_audio_ms", "TTS first audio"], ["first_frame_out_ms", "First frame out"],
];
const TRANSFER_TOOLS = new Set(["transfer_call"]);

const clock = (s) => `${Math.floor(s / 60)}:${String(Math.floor(s % 60)).padStart(2, "0")}`;

/** Where each turn starts in the recording (seconds after the answer): the greeting at once, a reply when the
 * caller stopped speaking; null when the turn has no time to place it by. */
function offsetOf(call, turn) {
  if (!call.answered_at) return null;
  if (turn.speech_end) return elapsed(call.answered_at, turn.speech_end);
  return turn.kind === "greeting" ? 0 : null;
}

function facts(call, names) {
  const rows = [
    ["Direction", call.direction],
    ["Caller", call.caller || "—"],
    ["Number dialled", call.did || "—"],
    ["Agent", call.agent_id ? h("a", { href: `#/agents/${call.agent_id}` }, agentName(names, call.agent_id)) : "—"],
    ["Started", when(call.started_at)],
    ["Answered", call.answered_at ? when(call.answered_at) : "not answered"],
    ["Ended", call.ended_at ? when(call.ended_at) : "still going on"],
    ["Duration", callDuration(call)],
    ["Outcome", outcomeBadge(call.outcome)],
    ["Hang-up cause", call.hangup_cause || "—"],
    ["Conversation", call.conversation_id ? h("a", { href: `#/conversations/${call.conversation_id}` }, `#${call.conversation_id}`) : "—"],
  ];
  return h("dl.facts", rows.map(([term, value]) => h("div", h("dt", term), h("dd", value))));
}

/** The audio player and a track of turn markers that seek it; returns {node, seekTo, stop}. */
function player(call) {
  const audio = h("audio", { controls: true, preload: "metadata", src: `/api/v1/calls/${call.id}/recording` });
  const track = h("div.turn-track", { role: "group", "aria-label": "Turns in the recording" });
  const note = h("p.hint");
  let markers = [];
  const seekTo = (offset) => {
    audio.currentTime = offset;
    audio.play().catch(() => { /* the user pressed nothing yet, or the file is gone: the player shows it */ });
  };
  const place = (turns) => {
    const duration = Number.isFinite(audio.duration) ? audio.duration : null;
    markers = turns.map((turn) => ({ turn, offset: offsetOf(call, turn) }))
      .filter((m) => m.offset !== null && (duration === null || m.offset <= duration));
    replace(track, markers.map(({ turn, offset }) => {
      const tick = h("button.turn-tick", {
        type: "button", dataset: { index: String(turn.index), offset: offset.toFixed(2) },
        "aria-label": `Play turn ${turn.index + 1} (${turn.kind}) from ${clock(offset)}`, onclick: () => seekTo(offset),
      }, String(turn.index + 1));
      if (duration) tick.style.left = `${(offset / duration) * 100}%`;
      return tick;
    }));
    track.classList.toggle("placed", Boolean(duration));
    replace(note, markers.length ? "Each numbered marker plays the recording from that turn." : "");
  };
  audio.addEventListener("error", () => replace(note, "The recording could not be loaded."));
  audio.addEventListener("timeupdate", () => {
    const now = audio.currentTime;
    const current = markers.filter((m) => m.offset <= now).pop();
    for (const tick of track.children) tick.classList.toggle("current", current && tick.dataset.index === String(current.turn.index));
  });
  let turnsSeen = [];
  audio.addEventListener("loadedmetadata", () => place(turnsSeen));
  return {
    node: h("div.player", audio, track, note),
    update: (turns) => { turnsSeen = turns; place(turns); },
    seekTo,
    reload: () => { if (audio.paused) audio.load(); },
    stop: () => audio.pause(),
  };
}

function transcript(call, turns, seekTo) {
  if (!turns.length) return h("p.empty", call.ended_at ? "No turns were recorded." : "No turns yet.");
  return h("ol.transcript", turns.map((turn) => {
    const offset = call.has_recording ? offsetOf(call, turn) : null;
    const heard = turn.interrupted ? turn.spoken_text : "";
    return h("li.turn", { dataset: { index: String(turn.index) } },
      h("div.turn-head",
        h("h3", `Turn ${turn.index + 1}`), h("span.badge", turn.kind),
        turn.interrupted ? h("span.badge.warn", "interrupted") : null,
        offset !== null ? h("button.link", { type: "button", onclick: () => seekTo(offset), "aria-label": `Play turn ${turn.index + 1} from ${clock(offset)}` }, `▶ ${clock(offset)}`) : null,
        turn.first_frame_out_ms !== null ? h("span.hint", `voice-to-voice ${ms(turn.first_frame_out_ms)}`) : null),
      turn.user_text ? h("p.said.caller", h("strong", "Caller: "), turn.user_text) : null,
      turn.bot_text ? h("p.said.eva", h("strong", "Eva: "), turn.bot_text) : null,
      turn.interrupted ? h("p.said.heard", h("strong", "Heard before the interruption: "), heard || h("em", "nothing")) : null);
  }));
}

function stageChart(turns) {
  const timed = turns.filter((t) => STAGES.some(([key]) => t[key] !== null));
  const rows = timed.map((turn) => {
    let before = 0;
    const values = STAGES.map(([key]) => {
      const at = turn[key];
      if (at === null) return null;
      const length = Math.max(0, at - before);
      before = Math.max(before, at);
      return length;
    });
    return { label: `Turn ${turn.index + 1}`, values, cells: STAGES.map(([key]) => ms(turn[key])) };
  });
  return stackedBars("Stage timings per turn (ms after the caller stopped speaking)", STAGES.map(([, name]) => name),
    rows, { format: (v) => `${Math.round(v)} ms`, empty: "No timed turns yet.", labelWidth: 15,
      head: STAGES.map(([, name]) => `${name} (done at)`) });
}

function flowRuns(runs) {
  if (!runs.length) return h("p.empty", "No flow ran in this call.");
  return runs.map((run) => h("div.flow-run",
    h("h3", run.flow_id ? h("a", { href: `#/flows/${run.flow_id}` }, run.flow_name) : run.flow_name),
    h("p.hint", `${run.status} · step ${run.step || "—"}${run.result ? ` · result ${run.result}` : ""}`),
    table([
      { label: "Variable", value: ([name]) => h("code", name) },
      { label: "Value", value: ([, value]) => value },
    ], Object.entries(run.variables), { empty: "No variables collected." })));
}

async function toolCalls(call) {
  if (!call.conversation_id) return h("p.empty", "No tools were called.");
  const page = await get(`/conversations/${call.conversation_id}/messages`, { limit: 500 });
  const calls = page.items.flatMap((m) => (m.tool_calls || []).map((tool) => ({ at: m.created_at, tool })));
  return table([
    { label: "When", value: (c) => when(c.at) },
    { label: "Tool", value: (c) => h("span", h("code", c.tool.name || "?"),
      TRANSFER_TOOLS.has(c.tool.name) ? h("span.badge.warn", "transfer") : null) },
    { label: "Arguments", value: (c) => h("code.args", JSON.stringify(c.tool.arguments || {})) },
  ], calls, { empty: "No tools were called." });
}

export async function render(main, ctx) {
  const id = Number(ctx.params[0]);
  const [names, first] = await Promise.all([agentNames(), get(`/calls/${id}`)]);
  const head = h("div.page-head", h("h1", `Call ${id}`), h("div.actions", h("a", { href: "#/calls" }, "All calls")));
  const status = h("p.hint.call-status", { "aria-live": "polite" });
  const factsBox = h("div");
  const recordingBox = h("section.card", { "aria-labelledby": "call-rec-h" }, h("h2#call-rec-h", "Recording"));
  const turnsBox = h("div");
  const chartBox = h("div");
  const flowsBox = h("div");
  const toolsBox = h("div");
  main.append(h("section.page.call", head, status,
    h("section.card", { "aria-labelledby": "call-facts-h" }, h("h2#call-facts-h", "Call"), factsBox),
    recordingBox,
    h("section.card", { "aria-labelledby": "call-turns-h" }, h("h2#call-turns-h", "Transcript"), turnsBox),
    h("section.card", { "aria-labelledby": "call-stages-h" }, h("h2#call-stages-h", "Stage timings"), chartBox),
    h("section.card", { "aria-labelledby": "call-flows-h" }, h("h2#call-flows-h", "Flow variables"), flowsBox),
    h("section.card", { "aria-labelledby": "call-tools-h" }, h("h2#call-tools-h", "Tool calls and transfers"), toolsBox)));

  let audio = null;
  let stopped = false;
  const draw = async (call) => {
    replace(status, call.ended_at ? "" : "This call is still going on: new turns appear as they happen.");
    replace(factsBox, facts(call, names));
    if (call.has_recording && !audio) {
      audio = player(call);
      recordingBox.append(audio.node);
    } else if (!call.has_recording) {
      replace(recordingBox, h("h2#call-rec-h", "Recording"), h("p.empty", "This call has no recording."));
    }
    if (audio) audio.update(call.turns);
    const seek = audio ? audio.seekTo : () => {};
    replace(turnsBox, transcript(call, call.turns, seek));
    replace(chartBox, stageChart(call.turns));
    replace(flowsBox, flowRuns(call.flow_runs));
    try {
      const tools = await toolCalls(call);
      if (!stopped) replace(toolsBox, tools);
    } catch (error) {
      if (!stopped) replace(toolsBox, h("p.form-error", error.message));
    }
  };
  await draw(first);
  let ended = Boolean(first.ended_at);
  let conversation = first.conversation_id;
  const reload = debounce(async () => {
    try {
      const call = await get(`/calls/${id}`);
      if (stopped) return;
      await draw(call);
      conversation = call.conversation_id;
      if (call.ended_at && !ended && audio) audio.reload();  // the finished file has its full length
      ended = Boolean(call.ended_at);
    } catch (error) {
      if (!stopped) replace(status, error instanceof ApiError ? error.message : String(error));
    }
  }, 1000);
  const unsubscribe = onEvent((event) => {
    if (event.kind === "resync" || (event.kind.startsWith("call.") && event.call_id === id)
        || (event.kind === "message.stored" && conversation && event.conversation_id === conversation)) reload();
  });
  return () => { stopped = true; unsubscribe(); if (audio) audio.stop(); };
}
