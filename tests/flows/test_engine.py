"""The flow engine as a pure state machine: no sockets, no models, no clock."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voicebot.errors import InvalidInput
from voicebot.flows.engine import (
    MAX_HOPS,
    Act,
    Advance,
    AgentTurn,
    AskAgent,
    Ended,
    Extract,
    FlowEngine,
    FlowState,
    Listen,
)
from voicebot.flows.spec import FlowSpec, check_flow, parse_flow

TODAY = date(2026, 12, 1)
EXAMPLES = Path(__file__).resolve().parents[2] / "voicebot" / "flows" / "examples"


def example(name: str) -> FlowSpec:
    data = json.loads((EXAMPLES / f"{name}.json").read_text())
    spec = parse_flow(data["start_step"], data["steps"])
    check_flow(spec)
    return spec


def roundtrip(advance: Advance) -> FlowState:
    """What the runner does between inputs: store the state as JSON and load it back."""
    return FlowState.from_json(json.loads(json.dumps(advance.state.to_json())))


def test_dtmf_menu_then_booking_collects_every_variable() -> None:
    engine = FlowEngine(example("main-menu"))
    adv = engine.start({"caller": "+15550001"})
    assert "press 1" in adv.says()[0] and isinstance(adv.outputs[-1], Listen)
    adv = engine.answer(roundtrip(adv), "", dtmf="2", today=TODAY)
    assert adv.state.step == "name" and adv.state.variables["choice"] == "booking"
    adv = engine.answer(roundtrip(adv), "Yes hi, this is Maria Lopez calling about my cat.", today=TODAY)
    assert adv.state.waiting == "extract"  # a name in free speech: the LLM reads it
    adv = engine.extracted(roundtrip(adv), "Maria Lopez", today=TODAY)
    assert adv.says() == ["Thank you, Maria Lopez. Which day would you like to come in?"]
    adv = engine.answer(roundtrip(adv), "Next Friday, please.", today=TODAY)
    assert adv.state.variables["date"] == "2026-12-04"
    adv = engine.answer(roundtrip(adv), "", dtmf="5551234567", today=TODAY)
    assert adv.state.step == "confirm"
    assert "I have Maria Lopez, on 2026-12-04, phone 5551234567" in adv.says()[0]  # a message: as stored
    # On a call the values are said as a sentence says them; the variables stay ISO / plain digits.
    on_call = roundtrip(adv)
    on_call.variables["channel"] = "voice"
    assert "I have Maria Lopez, on December 4, 2026, phone 5 5 5 1 2 3 4 5 6 7" in engine.no_input(on_call).says()[0]
    assert adv.state.variables["phone"] == "5551234567"
    adv = engine.answer(roundtrip(adv), "Yes, that's right.", today=TODAY)
    assert adv.state.ended and adv.state.result == "booked"
    ended = adv.outputs[-1]
    assert isinstance(ended, Ended)
    assert ended.variables["name"] == "Maria Lopez" and ended.variables["phone"] == "5551234567"


def test_speech_menu_choice_and_ask_agent() -> None:
    engine = FlowEngine(example("main-menu"))
    adv = engine.answer(engine.start().state, "What are your opening hours?", today=TODAY)
    assert adv.state.waiting == "ask_agent" and adv.outputs == [AskAgent("What are your opening hours?")]
    adv = engine.agent_done(adv.state)
    assert adv.state.step == "anything-else"
    adv = engine.answer(adv.state, "Yes.", today=TODAY)
    assert adv.state.step == "menu"


def test_invalid_input_reprompts_then_falls_back() -> None:
    engine = FlowEngine(example("main-menu"))
    state = engine.start().state
    adv = engine.answer(state, "bananas", today=TODAY)
    assert adv.state.step == "menu" and adv.state.retries == 1
    assert adv.says()[0].startswith("Sorry, that is not one of the options. Welcome to")
    adv = engine.no_input(adv.state)
    assert adv.state.retries == 2 and adv.says()[0].startswith("Sorry, I didn't hear anything.")
    adv = engine.answer(adv.state, "", dtmf="7", today=TODAY)
    assert adv.state.step == "operator" and adv.state.waiting == "action"
    act = adv.outputs[-1]
    assert isinstance(act, Act) and act.action.type == "transfer" and act.action.target == "front desk"
    done = engine.action_done(adv.state, ok=True)
    assert done.state.ended and done.state.result == "transferred"


def test_failed_transfer_goes_to_its_fallback() -> None:
    engine = FlowEngine(example("main-menu"))
    adv = engine.answer(engine.start().state, "", dtmf="0", today=TODAY)
    done = engine.action_done(adv.state, ok=False)
    assert done.state.ended and done.state.result == "completed" and "Goodbye" in done.says()[0]


def test_llm_extraction_is_validated_like_any_answer() -> None:
    engine = FlowEngine(example("main-menu"))
    state = engine.answer(engine.start().state, "", dtmf="2", today=TODAY).state
    state = engine.answer(state, "Sam", today=TODAY).state
    state = engine.extracted(state, None, today=TODAY).state  # no LLM answer: the words as said
    assert state.variables["name"] == "Sam"
    adv = engine.answer(state, "hmm, whenever suits the doctor best", today=TODAY)
    assert adv.state.waiting == "extract" and isinstance(adv.outputs[0], Extract)
    bad = engine.extracted(adv.state, "the moon", today=TODAY)
    assert bad.state.step == "date" and bad.state.retries == 1
    good = engine.extracted(adv.state, "December 24th", today=TODAY)
    assert good.state.variables["date"] == "2026-12-24" and good.state.step == "phone"


def test_agent_handover_and_exit_phrase() -> None:
    engine = FlowEngine(example("lead-qualification"))
    state = engine.start().state
    for text in ["A CRM for our clinic", "twelve people", "this quarter", "ana at example dot com"]:
        state = engine.answer(state, text, today=TODAY).state
    assert state.variables == {"need": "A CRM for our clinic", "team_size": "12", "timeline": "quarter",
                               "email": "ana@example.com", "last_input": "ana at example dot com"}
    assert state.step == "agent"
    adv = engine.answer(state, "Do you integrate with Google Calendar?", today=TODAY)
    assert adv.outputs == [AgentTurn("Do you integrate with Google Calendar?")] and adv.state.waiting == "agent"
    adv = engine.agent_done(adv.state)
    assert adv.state.waiting == "input" and adv.state.step == "agent"
    adv = engine.answer(adv.state, "No, that's all, bye!", today=TODAY)
    assert adv.state.ended and adv.state.result == "qualified"


def test_inputs_while_not_waiting_are_ignored() -> None:
    engine = FlowEngine(example("main-menu"))
    adv = engine.answer(engine.start().state, "", dtmf="1", today=TODAY)
    assert adv.state.waiting == "ask_agent"
    again = engine.answer(adv.state, "", dtmf="2", today=TODAY)
    assert again.outputs == [] and again.state == adv.state


def test_a_value_with_braces_is_not_interpreted() -> None:
    spec = parse_flow("a", [
        {"id": "a", "say": "Name?", "collect": {"var": "name"}, "next": "b"},
        {"id": "b", "say": "Hello {name}.", "end": "done"}])
    engine = FlowEngine(spec)
    adv = engine.answer(engine.start().state, "{caller.__class__} {0}", today=TODAY)
    assert adv.says() == ["Hello {caller.__class__} {0}."]


# ------------------------------------------------------------------ validation
def refused(steps: list[dict[str, object]], start: str = "a") -> str:
    with pytest.raises(InvalidInput) as info:
        check_flow(parse_flow(start, steps))
    return str(info.value.message)


def test_a_branch_on_a_variable_not_collected_on_every_path_is_refused() -> None:
    message = refused([
        {"id": "a", "say": "Sales or support?", "collect": {"var": "dept", "type": "choice",
                                                            "choices": {"sales": ["1"], "support": ["2"]}},
         "branches": [{"when": {"var": "dept", "equals": "sales"}, "next": "ask"}], "next": "check"},
        {"id": "ask", "say": "Your order number?", "collect": {"var": "order"}, "next": "check"},
        {"id": "check", "say": "Thanks", "branches": [{"when": {"var": "order", "is_set": True}, "next": "end"}],
         "next": "end"},
        {"id": "end", "end": "done"}])
    assert "'order'" in message and "every path" in message


def test_a_text_using_an_uncollected_variable_is_refused() -> None:
    assert "'name'" in refused([{"id": "a", "say": "Hello {name}", "end": "x"}])


def test_unreachable_steps_are_reported() -> None:
    message = refused([{"id": "a", "say": "hi", "end": "x"}, {"id": "lost", "say": "never", "end": "y"}])
    assert "never reached" in message and "lost" in message


def test_a_loop_that_never_waits_is_refused() -> None:
    message = refused([{"id": "a", "say": "one", "next": "b"}, {"id": "b", "say": "two", "next": "a"},
                       {"id": "c", "say": "?", "collect": {"var": "x"}, "next": "a", "fallback": "d"},
                       {"id": "d", "end": "x"}], start="c")
    assert "loop without ever waiting" in message


def test_a_missing_prompt_is_refused() -> None:
    spec = parse_flow("a", [{"id": "a", "prompt": "no-such-sound", "say": "hi", "end": "x"}])
    with pytest.raises(InvalidInput, match="no recorded prompt"):
        check_flow(spec, prompt_exists=lambda name: name == "eva-operator")


def test_schema_errors_name_the_field() -> None:
    with pytest.raises(InvalidInput) as info:
        parse_flow("a", [{"id": "a", "collect": {"var": "x", "type": "regex", "pattern": "("}}])
    assert info.value.field == "steps.0.collect"
    with pytest.raises(InvalidInput, match="does one thing"):
        parse_flow("a", [{"id": "a", "collect": {"var": "x"}, "end": "x"}])


# ------------------------------------------------------------------ properties
KEYS = st.sampled_from(list("0123456789*#"))
EVENT = st.one_of(
    st.tuples(st.just("text"), st.text(max_size=40)),
    st.tuples(st.just("text"), st.sampled_from(["yes", "no", "book", "hours", "person", "tomorrow",
                                                "five five five one two three four", "a@b.co", "3"])),
    st.tuples(st.just("dtmf"), st.text(KEYS, min_size=1, max_size=6)),
    st.tuples(st.just("none"), st.just("")),
    st.tuples(st.just("extract"), st.one_of(st.none(), st.text(max_size=20))),
    st.tuples(st.just("action"), st.booleans().map(str)),
    st.tuples(st.just("agent"), st.just("")),
)


def feed(engine: FlowEngine, state: FlowState, event: tuple[str, str | None]) -> Advance:
    kind, value = event
    if kind == "text":
        return engine.answer(state, value or "", today=TODAY)
    if kind == "dtmf":
        return engine.answer(state, "", dtmf=value, today=TODAY)
    if kind == "none":
        return engine.no_input(state)
    if kind == "extract":
        return engine.extracted(state, value, today=TODAY)
    if kind == "action":
        return engine.action_done(state, ok=value == "True")
    return engine.agent_done(state)


def respond_to(engine: FlowEngine, adv: Advance) -> Advance:
    """What a well-behaved runner does: answer whatever the engine is waiting on that is not the caller."""
    for _ in range(MAX_HOPS):
        state = adv.state
        if state.waiting == "action":
            adv = engine.action_done(state, ok=True)
        elif state.waiting in ("ask_agent", "agent"):
            adv = engine.agent_done(state)
        elif state.waiting == "extract":
            adv = engine.extracted(state, None, today=TODAY)
        else:
            return adv
    raise AssertionError("the runner's side never settles")


@pytest.mark.parametrize("name", ["main-menu", "lead-qualification"])
@settings(max_examples=300, deadline=None)
@given(events=st.lists(EVENT, max_size=40))
def test_any_inputs_leave_the_run_waiting_or_ended(name: str, events: list[tuple[str, str | None]]) -> None:
    engine = FlowEngine(example(name))
    state = engine.start({"caller": "+1555"}).state
    for event in events:
        adv = feed(engine, state, event)
        state = adv.state
        assert state.waiting in ("input", "extract", "action", "agent", "ask_agent", "ended")
        assert state.retries <= engine.spec.step(state.step).max_retries
        if state.waiting == "input":
            step = engine.spec.step(state.step)
            assert step.collect is not None or step.agent is not None  # never waiting on a step that cannot listen
        if state.ended:
            assert any(isinstance(o, Ended) for o in adv.outputs)
            break


@pytest.mark.parametrize("name", ["main-menu", "lead-qualification"])
def test_a_silent_caller_always_reaches_an_end(name: str) -> None:
    """No input at all, forever: retries and fallbacks must end the run (never a stuck state)."""
    engine = FlowEngine(example(name))
    adv = respond_to(engine, engine.start())
    for _ in range(200):
        if adv.state.ended:
            break
        adv = respond_to(engine, engine.no_input(adv.state))
    assert adv.state.ended


@st.composite
def random_flows(draw: st.DrawFn) -> FlowSpec:
    n = draw(st.integers(min_value=1, max_value=8))
    ids = [f"s{i}" for i in range(n)]
    steps: list[dict[str, object]] = []
    for position, i in enumerate(ids):
        last = position == n - 1
        kind = "end" if last else draw(st.sampled_from(["say", "collect", "choice", "action", "agent", "ask"]))
        target = st.sampled_from(ids)
        step: dict[str, object] = {"id": i, "say": f"step {i}"}
        if kind == "collect":
            step["collect"] = {"var": f"v_{i}", "type": draw(st.sampled_from(["text", "number", "date", "phone"])),
                               "required": draw(st.booleans()), "extract": draw(st.booleans())}
            step["max_retries"] = draw(st.integers(0, 3))
        elif kind == "choice":
            step["collect"] = {"var": f"v_{i}", "type": "choice", "choices": {"a": ["1", "alpha"], "b": ["2"]}}
            step["branches"] = [{"when": {"var": f"v_{i}", "equals": "a"}, "next": draw(target)}]
        elif kind == "end":
            step["end"] = "done"
        elif kind == "action":
            step["action"] = draw(st.sampled_from([{"type": "hang_up"}, {"type": "set", "values": {"x": "1"}},
                                                   {"type": "webhook", "url": "http://127.0.0.1:9/x"}]))
        elif kind == "agent":
            step["agent"] = {"max_turns": draw(st.integers(1, 3))}
        elif kind == "ask":
            step["ask_agent"] = "question"
        if kind != "end":
            # A chain keeps every step reachable; branches and fallbacks jump anywhere.
            step["next"] = ids[position + 1] if draw(st.integers(0, 3)) else draw(target)
            if draw(st.booleans()):
                step["fallback"] = draw(target)
        steps.append(step)
    spec = parse_flow("s0", steps)
    try:
        check_flow(spec)
    except InvalidInput:
        from hypothesis import assume

        assume(False)
    return spec


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(spec=random_flows(), events=st.lists(EVENT, max_size=30), data=st.data())
def test_every_valid_flow_is_never_stuck(spec: FlowSpec, events: list[tuple[str, str | None]],
                                         data: st.DataObject) -> None:
    engine = FlowEngine(spec)
    adv = engine.start()
    for event in events:
        adv = feed(engine, adv.state, event)
        if adv.state.ended:
            return
    # Whatever state the inputs left it in, a silent caller and a runner answering its side end the run.
    adv = respond_to(engine, adv)
    for _ in range(400):
        if adv.state.ended:
            return
        adv = respond_to(engine, engine.no_input(adv.state))
        if not adv.state.ended and data.draw(st.booleans()):
            adv = respond_to(engine, engine.answer(adv.state, "", dtmf="*", today=TODAY))
    # A flow may legitimately loop forever through steps that wait (a menu the caller never leaves) -- but
    # then it must be waiting for the caller, never for something that will not come.
    assert adv.state.waiting == "input"


def test_agent_triggers_pick_the_longest_phrase() -> None:
    from voicebot.flows.triggers import trigger_for

    triggers = {"booking": ["book", "appointment"], "cancel": ["cancel my booking", "cancel"]}
    assert trigger_for(triggers, "I'd like to book a visit.") == "booking"
    assert trigger_for(triggers, "Please cancel my booking!") == "cancel"
    assert trigger_for(triggers, "What are your opening hours?") is None
    assert trigger_for(triggers, "Do you have a bookshelf?") is None  # whole words only


def test_a_catastrophic_pattern_cannot_freeze_the_engine() -> None:
    """A designer's pattern that backtracks exponentially fails the answer within its time budget."""
    spec = parse_flow("a", [
        {"id": "a", "say": "Code?", "collect": {"var": "code", "type": "regex", "pattern": "(a|aa)+$"},
         "max_retries": 0, "fallback": "b", "next": "b"},
        {"id": "b", "say": "ok", "branches": [{"when": {"var": "last_input", "matches": "(x|xx)+y"}, "next": "c"}],
         "end": None, "next": "c"},
        {"id": "c", "end": "done"}])
    engine = FlowEngine(spec)
    adv = engine.answer(engine.start().state, "a" * 400 + "b", today=TODAY)
    assert adv.state.ended and "code" not in adv.state.variables  # no match -> fallback -> end
    adv = engine.answer(engine.start().state, "aaaa", today=TODAY)
    assert adv.state.variables["code"] == "aaaa"


@settings(max_examples=500, deadline=None)
@given(text=st.text(max_size=2000), keys=st.one_of(st.none(), st.text(KEYS, min_size=1, max_size=40)))
def test_the_parsers_take_any_caller_input(text: str, keys: str | None) -> None:
    """Hostile speech or keys: every parser answers (a value or a problem), never raises, never grows."""
    from voicebot.flows.spec import Collect
    from voicebot.flows.values import parse

    kinds = ["text", "number", "digits", "date", "phone", "email", "yes_no"]
    collects = [Collect(var="v", type=k) for k in kinds]  # type: ignore[arg-type]
    collects.append(Collect(var="v", type="choice", choices={"a": ["1", "alpha"], "b": ["two words"]}))
    collects.append(Collect(var="v", type="regex", pattern=r"[0-9]{4}"))
    for collect in collects:
        for language in ("en", "es"):  # a Spanish flow reads more number and date words
            parsed = parse(collect, text, dtmf=keys, today=TODAY, language=language)
            assert parsed.ok or parsed.problem in ("no_input", "no_match")
            assert parsed.value is None or len(parsed.value) <= 500


SPANISH_WORDS = ["treinta", "y", "uno", "de", "enero", "mañana", "pasado", "mil", "ciento", "quinientos", "cero",
                 "veintidós", "el", "la", "sí", "no", "arroba", "punto", "2026", "31", "once", "dos", "may"]


@settings(max_examples=300, deadline=None)
@given(words=st.lists(st.sampled_from(SPANISH_WORDS), max_size=400))
def test_spanish_number_and_date_words_in_any_order_never_break_a_parser(words: list[str]) -> None:
    """Long runs of the words the Spanish rules act on ("treinta y treinta y de de enero ..."): a value or a
    problem, never an exception or an impossible date."""
    from voicebot.flows.spec import Collect
    from voicebot.flows.values import parse

    text = " ".join(words)
    for kind in ("number", "digits", "date", "phone", "email", "yes_no"):
        parsed = parse(Collect(var="v", type=kind), text, today=TODAY, language="es")
        assert parsed.ok or parsed.problem in ("no_input", "no_match")
        assert parsed.value is None or len(parsed.value) <= 500
