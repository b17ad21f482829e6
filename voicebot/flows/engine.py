"""The flow engine: a pure state machine.  ``FlowState`` + one input -> new ``FlowState`` + outputs.

No I/O, no clock, no asyncio: the runner (:mod:`voicebot.flows.runner`) feeds it what happened (the caller's
words or keys, no input, an LLM extraction, an action's outcome, the agent's turn) and carries out what it
asks (say this, listen like that, run this action, ask the agent).  Every call returns a state that is either
waiting for one thing or ended, so a run can be stored after every step and resumed by another process.

Invariants (property-tested): whatever inputs arrive, a run never gets stuck -- every ``feed`` ends waiting for
input/an extraction/an action/the agent, or ended; a step never re-prompts more than ``max_retries`` times
before its fallback; at most ``MAX_HOPS`` steps run without waiting (a guard behind the validator's check
that no loop skips waiting).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any, Literal

from voicebot.flows import values
from voicebot.flows.spec import Action, Collect, Condition, FlowSpec, Step, fill
from voicebot.i18n import phrase

MAX_HOPS = 64
MAX_VALUE = 500
MAX_SENDS_PER_RUN = 3
"""``send_message`` actions one run may carry out: a flow that loops over "send to the address you type" must
not turn Eva into a relay for a hostile contact's spam.  Further sends fail (the step's fallback)."""

Waiting = Literal["input", "extract", "action", "agent", "ask_agent", "ended"]


@dataclass
class FlowState:
    step: str
    waiting: Waiting = "input"
    variables: dict[str, str] = field(default_factory=dict)
    retries: int = 0
    agent_turns: int = 0
    result: str | None = None
    steps_run: int = 0
    pending_text: str = ""
    """The caller's answer being extracted by the LLM (waiting == "extract")."""
    sends: int = 0
    """``send_message`` actions carried out so far (at most MAX_SENDS_PER_RUN)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FlowState:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    @property
    def ended(self) -> bool:
        return self.waiting == "ended"


# ------------------------------------------------------------------ outputs
@dataclass(frozen=True)
class Say:
    text: str
    prompt: str | None = None


@dataclass(frozen=True)
class Listen:
    """Wait for the caller's answer to ``collect`` (on calls: speech and, if set, DTMF as configured)."""

    step: str
    collect: Collect


@dataclass(frozen=True)
class Extract:
    """Ask the LLM for the value of ``collect`` in ``text``; feed the answer with :meth:`FlowEngine.extracted`."""

    collect: Collect
    text: str


@dataclass(frozen=True)
class Act:
    """Run ``action`` (texts filled in); feed its outcome with :meth:`FlowEngine.action_done`."""

    action: Action
    text: str = ""
    to: str = ""
    values: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AskAgent:
    """The agent answers ``question`` from its knowledge; feed :meth:`FlowEngine.agent_done` afterwards."""

    question: str


@dataclass(frozen=True)
class AgentTurn:
    """Hand the caller's ``text`` to the agent and say its reply; feed :meth:`FlowEngine.agent_done` afterwards."""

    text: str


@dataclass(frozen=True)
class Ended:
    result: str
    variables: dict[str, str]


HANDOVER_LISTEN = Collect(var="last_input", type="text", required=False)
"""What an ``agent`` step listens for: anything (the agent answers it), silence moves on."""

Output = Say | Listen | Extract | Act | AskAgent | AgentTurn | Ended


@dataclass
class Advance:
    state: FlowState
    outputs: list[Output]

    def says(self) -> list[str]:
        return [o.text for o in self.outputs if isinstance(o, Say) and o.text]


class FlowEngine:
    def __init__(self, spec: FlowSpec, name: str = "", language: str = "en") -> None:
        self.spec = spec
        self.name = name
        self.language = language
        """The flow's agent's language: the default no-input / no-match apologies are said in it."""
        self._steps = {s.id: s for s in spec.steps}
        self._kinds = {s.collect.var: s.collect.type for s in spec.steps if s.collect is not None}
        """What each collected variable is, so a sentence says it as spoken (a date, a phone number)."""

    def say_text(self, text: str, variables: dict[str, str]) -> str:
        """``text`` with ``{var}`` filled; on a call as a sentence says it: "el {dia}" -> "el 5 de diciembre de
        2026", a phone number digit by digit (the variable itself stays ISO, for branches, webhooks and the
        dialplan; a written message shows the value as stored)."""
        if variables.get("channel") != "voice":
            return fill(text, variables)
        spoken = {k: values.spoken_value(v, self._kinds.get(k, ""), self.language) for k, v in variables.items()}
        return fill(text, spoken)

    # ------------------------------------------------------------------ inputs
    def start(self, variables: dict[str, str] | None = None) -> Advance:
        state = FlowState(step=self.spec.start_step, variables=dict(variables or {}))
        out: list[Output] = []
        self._enter(state, self.spec.start_step, out, hops=0)
        return Advance(state, out)

    def answer(self, state: FlowState, text: str, *, dtmf: str | None = None, today: date) -> Advance:
        """The caller said ``text`` (or pressed ``dtmf``) while the run waits for input."""
        state = _copy(state)
        out: list[Output] = []
        if state.waiting != "input":
            return Advance(state, out)  # not waiting for the caller (ended, or an action in flight): ignore
        step = self._steps[state.step]
        if step.collect is None and step.agent is None:
            # The designer changed this step under a live run (it no longer asks anything): end, never guess.
            self._finish(state, "flow_changed", out)
            return Advance(state, out)
        state.variables["last_input"] = (dtmf or text or "")[:MAX_VALUE]
        if step.agent is not None:
            self._agent_input(state, step, text, dtmf, out)
            return Advance(state, out)
        assert step.collect is not None
        parsed = values.parse(step.collect, text, dtmf=dtmf, today=today, language=self.language)
        # Free text has no parser that could fail, so with ``extract`` the LLM always reads it (a name out of
        # "yes hi, this is Maria calling about my dog"); typed values only when their parser found nothing.
        wants_llm = step.collect.extract and not dtmf and text.strip() and (
            step.collect.type == "text" or parsed.problem == "no_match")
        if parsed.ok and not wants_llm:
            assert parsed.value is not None
            self._collected(state, step, parsed.value, out)
        elif wants_llm:
            state.waiting, state.pending_text = "extract", text[: values.MAX_INPUT]
            out.append(Extract(step.collect, state.pending_text))
        else:
            self._retry(state, step, parsed.problem, out)
        return Advance(state, out)

    def no_input(self, state: FlowState) -> Advance:
        """The caller said nothing within the step's timeout."""
        state = _copy(state)
        out: list[Output] = []
        if state.waiting != "input":
            return Advance(state, out)
        step = self._steps[state.step]
        if step.agent is not None:
            self._route(state, step, out, hops=0)
        elif step.collect is None:
            self._finish(state, "flow_changed", out)
        else:
            self._retry(state, step, "no_input", out)
        return Advance(state, out)

    def extracted(self, state: FlowState, value: str | None, *, today: date) -> Advance:
        """The LLM's reading of the pending answer (None: it found nothing).  Validated like any answer."""
        state = _copy(state)
        out: list[Output] = []
        if state.waiting != "extract":
            return Advance(state, out)
        step = self._steps[state.step]
        if step.collect is None:
            self._finish(state, "flow_changed", out)
            return Advance(state, out)
        pending, state.pending_text, state.waiting = state.pending_text, "", "input"
        parsed = values.parse(step.collect, value or "", today=today, language=self.language) if value \
            else values.Parsed(None, "no_match")
        if not parsed.ok and step.collect.type == "text":
            # The LLM failed us: the words as said.
            parsed = values.parse(step.collect, pending, today=today, language=self.language)
        if parsed.ok:
            assert parsed.value is not None
            self._collected(state, step, parsed.value, out)
        else:
            self._retry(state, step, "no_match", out)
        return Advance(state, out)

    def action_done(self, state: FlowState, ok: bool, variables: dict[str, str] | None = None) -> Advance:
        """The action of the current step finished (``ok`` false: it failed -> fallback)."""
        state = _copy(state)
        out: list[Output] = []
        if state.waiting != "action":
            return Advance(state, out)
        step = self._steps[state.step]
        for name, value in (variables or {}).items():
            state.variables[name] = str(value)[:MAX_VALUE]
        state.waiting = "input"
        if step.action is not None and step.action.type == "send_message" and ok:
            state.sends += 1
        if not ok:
            self._go(state, step.fallback, out, result="failed")
        elif step.action is not None and step.action.type in ("transfer", "hang_up"):
            self._finish(state, "transferred" if step.action.type == "transfer" else "hangup", out)
        else:
            self._route(state, step, out, hops=0)
        return Advance(state, out)

    def agent_done(self, state: FlowState) -> Advance:
        """The agent answered (an ``ask_agent`` question, or one turn of an ``agent`` handover)."""
        state = _copy(state)
        out: list[Output] = []
        step = self._steps[state.step]
        if state.waiting == "ask_agent":
            state.waiting = "input"
            self._route(state, step, out, hops=0)
        elif state.waiting == "agent":
            state.waiting = "input"
            if step.agent is None or state.agent_turns >= step.agent.max_turns:
                self._route(state, step, out, hops=0)
            else:
                out.append(Listen(step.id, HANDOVER_LISTEN))  # the next turn (or silence) is heard as before
        return Advance(state, out)

    # ------------------------------------------------------------------ moves
    def _enter(self, state: FlowState, step_id: str, out: list[Output], *, hops: int) -> None:
        if hops >= MAX_HOPS:
            self._finish(state, "failed", out)  # the validator refuses such loops; never spin regardless
            return
        step = self._steps[step_id]
        state.step, state.retries, state.agent_turns, state.waiting = step_id, 0, 0, "input"
        state.steps_run += 1
        if step.say or step.prompt:
            out.append(Say(self.say_text(step.say, state.variables), step.prompt))
        if step.collect is not None:
            out.append(Listen(step.id, step.collect))
        elif step.agent is not None:
            out.append(Listen(step.id, HANDOVER_LISTEN))
        elif step.action is not None and step.action.type == "send_message" and state.sends >= MAX_SENDS_PER_RUN:
            self._go(state, step.fallback, out, result="failed")
        elif step.action is not None:
            state.waiting = "action"
            a = step.action
            out.append(Act(a, text=fill(a.text or "", state.variables), to=fill(a.to or "", state.variables),
                           values={k: fill(v, state.variables)[:MAX_VALUE] for k, v in (a.values or {}).items()}))
        elif step.ask_agent is not None:
            state.waiting = "ask_agent"
            out.append(AskAgent(fill(step.ask_agent, state.variables)))
        elif step.end is not None:
            self._finish(state, step.end, out)
        else:
            self._route(state, step, out, hops=hops)

    def _route(self, state: FlowState, step: Step, out: list[Output], *, hops: int) -> None:
        for branch in step.branches:
            if holds(branch.when, state.variables):
                self._enter(state, branch.next, out, hops=hops + 1)
                return
        if step.next is not None:
            self._enter(state, step.next, out, hops=hops + 1)
        else:
            self._finish(state, "completed", out)

    def _go(self, state: FlowState, target: str | None, out: list[Output], *, result: str) -> None:
        if target is None:
            self._finish(state, result, out)
        else:
            self._enter(state, target, out, hops=1)

    def _collected(self, state: FlowState, step: Step, value: str, out: list[Output]) -> None:
        assert step.collect is not None
        state.variables[step.collect.var] = value[:MAX_VALUE]
        self._route(state, step, out, hops=0)

    def _retry(self, state: FlowState, step: Step, problem: str, out: list[Output]) -> None:
        assert step.collect is not None
        if problem == "no_input" and not step.collect.required:
            state.variables[step.collect.var] = ""
            self._route(state, step, out, hops=0)
            return
        if state.retries >= step.max_retries:
            if step.fallback is None:
                self._finish(state, "failed", out)
            else:
                self._enter(state, step.fallback, out, hops=1)
            return
        state.retries += 1
        designed = step.no_input if problem == "no_input" else step.no_match
        if designed is None:
            designed = phrase("flow_no_input" if problem == "no_input" else "flow_no_match", self.language)
        sorry = self.say_text(designed, state.variables)
        question = self.say_text(step.say, state.variables)
        out.append(Say(" ".join(t for t in (sorry, question) if t), step.prompt if not sorry else None))
        out.append(Listen(step.id, step.collect))

    def _agent_input(self, state: FlowState, step: Step, text: str, dtmf: str | None, out: list[Output]) -> None:
        assert step.agent is not None
        said = f" {' '.join(values.words(text))} "
        phrases = [" ".join(values.words(p)) for p in step.agent.exit_phrases]
        if (dtmf and step.agent.exit_dtmf and step.agent.exit_dtmf in dtmf) or any(
                p and f" {p} " in said for p in phrases):
            self._route(state, step, out, hops=0)
            return
        if dtmf and not text:
            out.append(Listen(step.id, HANDOVER_LISTEN))
            return
        state.agent_turns += 1
        state.waiting = "agent"
        out.append(AgentTurn(text[: values.MAX_INPUT]))

    def _finish(self, state: FlowState, result: str, out: list[Output]) -> None:
        state.waiting, state.result = "ended", result
        out.append(Ended(result, dict(state.variables)))


def holds(condition: Condition, variables: dict[str, str]) -> bool:
    value = variables.get(condition.var, "")
    if condition.equals is not None:
        return value.lower() == condition.equals.lower()
    if condition.not_equals is not None:
        return value.lower() != condition.not_equals.lower()
    if condition.one_of is not None:
        return value.lower() in {v.lower() for v in condition.one_of}
    if condition.matches is not None:
        return values.designer_match(condition.matches, value[:MAX_VALUE])
    return bool(value) == bool(condition.is_set)


def _copy(state: FlowState) -> FlowState:
    return FlowState.from_json(state.to_json())
