"""What a flow is: a graph of steps, written by hand in JSON or YAML, checked before it is saved.

A step does, in order: say something (``say`` text, or a recorded ``prompt`` on calls), then at most one of
``collect`` (ask for a value), ``action`` (transfer, hang up, webhook, send a message, set variables),
``ask_agent`` (the agent answers one question from its knowledge), ``agent`` (free conversation with the
agent until the caller asks to go back) or ``end`` (finish with a result), and then goes on: the first
``branches`` entry whose condition holds, else ``next``.  A step with neither ``next`` nor ``end`` finishes the
flow with the result ``completed``.  Shaped after Rasa CALM's collect/branch steps (simple to write by hand) and
pipecat-flows' nodes (the agent and actions as steps), without making every edge an LLM decision: on a phone
line the deterministic path must work even when the model fumbles.

Example::

    {"name": "front-desk", "start_step": "menu", "steps": [
      {"id": "menu", "say": "For opening hours press 1 or say hours. For the front desk press 0.",
       "collect": {"var": "choice", "type": "choice",
                   "choices": {"hours": ["1", "opening hours"], "operator": ["0", "person", "front desk"]},
                   "dtmf": {"max_digits": 1}},
       "branches": [{"when": {"var": "choice", "equals": "hours"}, "next": "hours"}],
       "next": "operator"},
      {"id": "hours", "ask_agent": "What are the opening hours?", "next": "menu"},
      {"id": "operator", "action": {"type": "transfer", "target": "front desk"}}]}

:func:`check_flow` adds what a schema cannot say: ids unique and every reference known; every variable used
in a branch or a text is collected (or set) on *every* path before it (a campaign contact's ``contact_<column>``
variables excepted: the campaign sets them, see :data:`CONTACT_PREFIX`); no step unreachable; no loop that never
waits for the caller; every recorded prompt exists; the flow can end.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal

import regex
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from voicebot.errors import InvalidInput

StepId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
VarName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
PromptName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,79}$")]
Phrase = Annotated[str, StringConstraints(min_length=1, max_length=100)]
Text = Annotated[str, StringConstraints(max_length=2000)]
ResultName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,40}$")]

MAX_STEPS = 200
MAX_CHAIN = 48
"""Steps that may run one after another without waiting for the caller (the engine's per-input limit is higher)."""
BUILTIN_VARS = frozenset({"caller", "channel", "did", "last_input"})
"""Variables every run has from the start (the caller's number or address, the channel, the DID)."""
CONTACT_PREFIX = "contact_"
"""``contact_<column>`` variables are a campaign contact's (``contact_name`` and the contact list's columns), set
when a campaign call's flow starts (:mod:`voicebot.pipeline.variables`).  The check counts them as available at
every step, since no step collects them: on any other conversation they are empty (a text says nothing for them,
``is_set`` is false).  A step may still collect or set one; from then on the flow's value is the one it reads."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DtmfInput(_Spec):
    """How keys are read on a call for this step (speech is accepted at the same time)."""

    max_digits: int = Field(default=16, ge=1, le=32)
    """The answer is complete after this many keys (1 for a menu: no waiting for a timeout)."""
    terminator: Literal["#", "*", ""] = "#"
    timeout_ms: int = Field(default=3000, ge=500, le=30000)
    """Inter-digit timeout: the keys so far are the answer after this long without a key."""


CollectType = Literal["text", "number", "digits", "date", "phone", "email", "regex", "choice", "yes_no"]


class Collect(_Spec):
    var: VarName
    type: CollectType = "text"
    required: bool = True
    """Not required: no input stores an empty value and goes on."""
    choices: dict[Phrase, list[Phrase]] | None = Field(default=None, max_length=50)
    """For ``choice``: value -> synonyms (words or DTMF keys) the caller may say or press for it."""
    pattern: Annotated[str, StringConstraints(min_length=1, max_length=500)] | None = None
    """For ``regex``: a Python regular expression the whole (normalised) answer must match."""
    min: float | None = None
    max: float | None = None
    """For ``number``: the accepted range."""
    min_length: int | None = Field(default=None, ge=0, le=1000)
    max_length: int | None = Field(default=None, ge=1, le=1000)
    extract: bool = False
    """Let the LLM pull the value out of free speech ("my number is five five five...") when the parser alone
    does not find it; what the LLM returns is validated like any answer."""
    description: Text = ""
    """What the value is, for the LLM extraction ("the caller's phone number")."""
    dtmf: DtmfInput | None = None
    timeout_ms: int = Field(default=6000, ge=1000, le=60000)
    """No input after this long (calls: from the end of the prompt) counts as no input."""

    @model_validator(mode="after")
    def _needs(self) -> Collect:
        if self.type == "choice" and not self.choices:
            raise ValueError("a choice collect needs choices")
        if self.type == "regex":
            if not self.pattern:
                raise ValueError("a regex collect needs a pattern")
            try:
                regex.compile(self.pattern)  # the engine matches with the regex module (it has timeouts)
            except regex.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from exc
        if self.min_length is not None and self.max_length is not None and self.min_length > self.max_length:
            raise ValueError("min_length is greater than max_length")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min is greater than max")
        return self


class Condition(_Spec):
    var: VarName
    equals: Phrase | None = None
    not_equals: Phrase | None = None
    one_of: list[Phrase] | None = Field(default=None, max_length=50)
    matches: Annotated[str, StringConstraints(min_length=1, max_length=500)] | None = None
    is_set: bool | None = None
    """True: the variable has a non-empty value; false: it is empty or missing."""

    @model_validator(mode="after")
    def _one_test(self) -> Condition:
        tests = [t for t in (self.equals, self.not_equals, self.one_of, self.matches, self.is_set) if t is not None]
        if len(tests) != 1:
            raise ValueError("a condition has exactly one of equals, not_equals, one_of, matches, is_set")
        if self.matches is not None:
            try:
                regex.compile(self.matches)
            except regex.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from exc
        return self


class Branch(_Spec):
    when: Condition
    next: StepId


class Action(_Spec):
    type: Literal["transfer", "hang_up", "webhook", "send_message", "set"]
    target: Annotated[str, StringConstraints(min_length=1, max_length=40)] | None = None
    """transfer: one of the agent's transfer target names (or its extension)."""
    url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s]{1,2000}$")] | None = None
    """webhook: POSTed JSON ``{flow, step, channel, variables}``; a JSON object answer's keys become variables."""
    timeout_s: float = Field(default=5.0, gt=0, le=30)
    store_as: VarName | None = None
    """webhook: keep the answer's field ``value`` (or the HTTP status) in this variable."""
    channel: Literal["whatsapp", "email"] | None = None
    """send_message: the channel to send on (to the caller's verified number/address)."""
    to: Annotated[str, StringConstraints(min_length=1, max_length=320)] | None = None
    """send_message: the recipient; a ``{var}`` is filled in (default: the caller)."""
    text: Text | None = None
    """send_message: the message, with ``{var}`` filled in."""
    values: dict[VarName, Annotated[str, StringConstraints(max_length=500)]] | None = Field(default=None,
                                                                                            max_length=50)
    """set: variables to set (``{var}`` filled in)."""

    @model_validator(mode="after")
    def _needs(self) -> Action:
        need = {"transfer": ("target",), "webhook": ("url",), "send_message": ("channel", "text"),
                "set": ("values",)}.get(self.type, ())
        for name in need:
            if getattr(self, name) is None:
                raise ValueError(f"a {self.type} action needs {name}")
        return self


class AgentHandover(_Spec):
    """Free conversation with the flow's agent (its persona and knowledge), then back to the flow."""

    max_turns: int = Field(default=6, ge=1, le=50)
    exit_phrases: list[Phrase] = Field(default_factory=lambda: ["main menu", "go back"], max_length=20)
    exit_dtmf: Literal["*", "#", "0", "9", ""] = "*"

    @model_validator(mode="after")
    def _phrases(self) -> AgentHandover:
        for phrase in self.exit_phrases:
            if not re.search(r"[A-Za-z0-9]", phrase):
                raise ValueError(f"exit phrase {phrase!r} has no word in it (it would match every turn)")
        return self


class Step(_Spec):
    id: StepId
    say: Text = ""
    """What Eva says on entering the step (``{var}`` filled in).  On a collect step it is the question, said
    again on a re-prompt."""
    prompt: PromptName | None = None
    """Calls: a recorded prompt (a sound Eva knows) played instead of synthesizing ``say``."""
    collect: Collect | None = None
    action: Action | None = None
    ask_agent: Text | None = None
    agent: AgentHandover | None = None
    end: ResultName | None = None
    """Finish the flow with this result.  ``continue``: a call goes back to the dialplan with EVA_RESULT and
    EVA_VAR_* set; ``hangup``: the call is hung up; anything else is stored and the call is hung up."""
    branches: list[Branch] = Field(default_factory=list, max_length=50)
    next: StepId | None = None
    no_input: Text | None = None
    """Said before the re-prompt when nothing was heard; none: "Sorry, I didn't hear anything." in the language of
    the flow's agent (the message catalog, voicebot.i18n)."""
    no_match: Text | None = None
    """Said before the re-prompt when the answer did not fit; none: the catalog's "Sorry, I didn't understand
    that." in the agent's language."""
    max_retries: int = Field(default=2, ge=0, le=10)
    """Re-prompts after no input or an invalid answer; then ``fallback``."""
    fallback: StepId | None = None
    """Where to go after ``max_retries`` (or when an action fails); none: the flow ends with ``failed``."""

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        # The first stored flows used ``message`` and ``next_step``: keep reading them.
        if isinstance(data, dict):
            data = dict(data)
            if "message" in data and "say" not in data:
                data["say"] = data.pop("message")
            if "next_step" in data and "next" not in data:
                data["next"] = data.pop("next_step")
        return data

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        kinds = [k for k in ("collect", "action", "ask_agent", "agent", "end") if getattr(self, k) is not None]
        if len(kinds) > 1:
            raise ValueError(f"a step does one thing; this one has {' and '.join(kinds)}")
        if self.end is not None and (self.next is not None or self.branches):
            raise ValueError("an end step goes nowhere: drop next/branches")
        if not self.say and self.prompt is None and not kinds and self.next is None and not self.branches:
            raise ValueError("an empty step: give it say, a prompt, something to do or a next step")
        return self

    @property
    def kind(self) -> str:
        for k in ("collect", "action", "ask_agent", "agent", "end"):
            if getattr(self, k) is not None:
                return k
        return "say"

    @property
    def waits(self) -> bool:
        """The step waits for the caller (so a loop through it is not a busy loop)."""
        return self.collect is not None or self.agent is not None

    def successors(self) -> list[str]:
        out = [b.next for b in self.branches]
        if self.next is not None:
            out.append(self.next)
        if self.fallback is not None:
            out.append(self.fallback)
        return out

    def ends_here(self) -> bool:
        """The flow can finish at this step (an end, a hang-up or transfer, or nowhere to go)."""
        return (self.end is not None or self.next is None
                or (self.action is not None and self.action.type in ("transfer", "hang_up")))


class FlowSpec(_Spec):
    start_step: StepId
    steps: list[Step] = Field(min_length=1, max_length=MAX_STEPS)

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)


def parse_flow(start_step: str, steps: list[dict[str, Any]]) -> FlowSpec:
    """The flow from stored/posted JSON, or InvalidInput naming the field (``steps.3.collect.pattern``)."""
    try:
        return FlowSpec.model_validate({"start_step": start_step, "steps": steps})
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise InvalidInput(f"{where}: {error['msg']}", field=where) from None


_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]{0,63})\}")


def text_vars(text: str) -> set[str]:
    """The ``{var}`` names a text uses."""
    return set(_FIELD.findall(text))


def fill(text: str, variables: dict[str, str]) -> str:
    """``{var}`` replaced by its value (missing: empty).  Nothing else is interpreted: a value containing
    braces stays as it is, and no attribute or index lookups exist (unlike ``str.format``)."""
    return _FIELD.sub(lambda m: str(variables.get(m.group(1), "")), text)


def check_flow(spec: FlowSpec, *, prompt_exists: Callable[[str], bool] | None = None) -> None:
    """Raise InvalidInput (with the offending field path) unless the flow is sound as a graph."""
    index: dict[str, int] = {}
    for position, step in enumerate(spec.steps):
        if step.id in index:
            raise InvalidInput(f"step id {step.id!r} is used twice", field=f"steps.{position}.id")
        index[step.id] = position
    if spec.start_step not in index:
        raise InvalidInput(f"start_step {spec.start_step!r} is not a step of this flow", field="start_step")
    for position, step in enumerate(spec.steps):
        refs = [(f"branches.{i}.next", b.next) for i, b in enumerate(step.branches)]
        refs += [(name, getattr(step, name)) for name in ("next", "fallback") if getattr(step, name) is not None]
        for name, target in refs:
            if target not in index:
                raise InvalidInput(f"step {step.id!r}: {name} points at unknown step {target!r}",
                                   field=f"steps.{position}.{name}")
        if step.prompt is not None and prompt_exists is not None and not prompt_exists(step.prompt):
            raise InvalidInput(f"step {step.id!r}: there is no recorded prompt {step.prompt!r}",
                               field=f"steps.{position}.prompt")
    reachable = _reachable(spec, index)
    unreachable = [s.id for s in spec.steps if s.id not in reachable]
    if unreachable:
        raise InvalidInput(f"steps never reached from {spec.start_step!r}: {', '.join(unreachable)}",
                           field=f"steps.{index[unreachable[0]]}.id")
    if not any(spec.steps[index[s]].ends_here() for s in reachable):
        raise InvalidInput("the flow never ends: no reachable step ends it", field="steps")
    _check_busy_loops(spec, index)
    _check_chains(spec, index)
    _check_targets(spec)
    _check_variables(spec, index)


def _check_targets(spec: FlowSpec) -> None:
    """Built-in variables are Eva's (the caller's identity, the channel): a flow may read them, never write."""
    for position, step in enumerate(spec.steps):
        for name in sorted(_defines(step) & BUILTIN_VARS):
            where = "collect.var" if step.collect is not None else "action"
            raise InvalidInput(f"step {step.id!r} may not set {name!r}: it is a built-in variable "
                               f"({', '.join(sorted(BUILTIN_VARS))})", field=f"steps.{position}.{where}")


def _check_chains(spec: FlowSpec, index: dict[str, int]) -> None:
    """The longest run of steps without waiting for the caller (loops are refused already, so the steps that do
    not wait form a DAG) stays within MAX_CHAIN."""
    longest: dict[str, int] = {}

    def length(node: str) -> int:
        if node in longest:
            return longest[node]
        step = spec.steps[index[node]]
        if step.waits:
            longest[node] = 1
            return 1
        longest[node] = 1  # guards recursion; real loops were refused by _check_busy_loops
        best = 1 + max((length(n) for n in step.successors()), default=0)
        longest[node] = best
        return best

    for step in spec.steps:
        if not step.waits and length(step.id) > MAX_CHAIN:
            raise InvalidInput(f"from step {step.id!r} more than {MAX_CHAIN} steps run without waiting for the "
                               "caller: split the flow or let a step ask something",
                               field=f"steps.{index[step.id]}.next")


def _reachable(spec: FlowSpec, index: dict[str, int]) -> set[str]:
    seen: set[str] = set()
    todo = [spec.start_step]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(spec.steps[index[current]].successors())
    return seen


def _check_busy_loops(spec: FlowSpec, index: dict[str, int]) -> None:
    """A cycle of steps none of which waits for the caller would run forever: refuse it."""
    busy = {s.id for s in spec.steps if not s.waits}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in spec.steps[index[node]].successors():
            if nxt not in busy:
                continue
            if state.get(nxt) == 1:
                loop = [*path[path.index(nxt):], nxt] if nxt in path else [node, nxt]
                raise InvalidInput(f"steps {' -> '.join(loop)} loop without ever waiting for the caller",
                                   field=f"steps.{index[nxt]}.next")
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for step_id in busy:
        if step_id not in state:
            visit(step_id, [step_id])


def _defines(step: Step) -> set[str]:
    if step.collect is not None:
        return {step.collect.var}
    if step.action is not None:
        if step.action.type == "set" and step.action.values:
            return set(step.action.values)
        if step.action.type == "webhook" and step.action.store_as:
            return {step.action.store_as}
    return set()


def _uses(step: Step) -> list[tuple[str, str]]:
    """(variable, where) for every variable the step reads."""
    uses = [(b.when.var, f"branches.{i}.when.var") for i, b in enumerate(step.branches)]
    texts: list[tuple[str, str]] = [("say", step.say), ("ask_agent", step.ask_agent or ""),
                                    ("no_input", step.no_input or ""), ("no_match", step.no_match or "")]
    if step.action is not None:
        texts += [("action.text", step.action.text or ""), ("action.to", step.action.to or "")]
        texts += [(f"action.values.{k}", v) for k, v in (step.action.values or {}).items()]
    for where, text in texts:
        uses += [(name, where) for name in sorted(text_vars(text))]
    return uses


def _check_variables(spec: FlowSpec, index: dict[str, int]) -> None:
    """Must-be-defined analysis: a variable is available at a step only if every path from the start to it
    collected or set it (a forward data-flow problem solved to its fixed point with set intersection)."""
    everything = set(BUILTIN_VARS)
    for s in spec.steps:
        everything |= _defines(s)
    available: dict[str, set[str]] = {s.id: set(everything) for s in spec.steps}
    available[spec.start_step] = set(BUILTIN_VARS)
    preds: dict[str, list[str]] = {s.id: [] for s in spec.steps}
    for s in spec.steps:
        for nxt in _edges(s):
            preds[nxt].append(s.id)
    changed = True
    while changed:
        changed = False
        for s in spec.steps:
            incoming = [_out(spec.steps[index[p]], available[p], nxt=s.id) for p in preds[s.id]]
            new = set(BUILTIN_VARS) if s.id == spec.start_step else (
                set.intersection(*incoming) if incoming else set(BUILTIN_VARS))
            if new != available[s.id]:
                available[s.id] = new
                changed = True
    for position, s in enumerate(spec.steps):
        for name, where in _uses(s):
            if name in available[s.id] or name.startswith(CONTACT_PREFIX):
                continue
            # Branch conditions and texts are evaluated after the step itself collected its variable.
            if where.startswith("branches.") and name in _defines(s):
                continue
            raise InvalidInput(f"step {s.id!r} uses variable {name!r}, which is not collected on every path "
                               "before it", field=f"steps.{position}.{where}")


def _edges(step: Step) -> Iterable[str]:
    return step.successors()


def _out(step: Step, before: set[str], *, nxt: str) -> set[str]:
    """Variables available after ``step`` along the edge to ``nxt``: a fallback edge (the step failed) adds
    nothing; any other edge adds what the step defines."""
    defined = before | _defines(step)
    if step.fallback == nxt and nxt not in [b.next for b in step.branches] and nxt != step.next:
        return set(before)
    return defined
