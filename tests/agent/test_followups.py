"""Follow-up questions are made explicit for the model (voicebot.agent.followups), and only when they point back."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicebot.agent.followups import MAX_CHARS, resolve_followup
from voicebot.llm.base import ChatMessage


def after(question: str, answer: str, follow_up: str) -> str:
    return resolve_followup(follow_up, [ChatMessage("user", question), ChatMessage("assistant", answer)])


@pytest.mark.parametrize(("question", "answer", "follow_up", "expected"), [
    ("When do you open on Saturday?", "On Saturday we open at 9 am.", "And when do you close that day?",
     "And when do you close on Saturday?"),
    ("What time do you open on Sunday?", "We open at 8 am.", "And when do you close then?",
     "And when do you close on Sunday?"),
    ("When are you open on Friday?", "Monday to Friday from 8 to 6.", "And what time do you close on that day?",
     "And what time do you close on Friday?"),
    # The day is in Eva's answer, not the caller's question.
    ("When is your gluten-free bread baked?", "It is baked on Tuesdays.", "What time do you open on that day?",
     "What time do you open on Tuesday?"),
    ("Do you sell croissants?", "Yes, we do.", "How much does one cost?", "How much does one croissant cost?"),
    ("Do you treat rabbits?", "Yes, we treat rabbits.", "How much is a check-up for one?",
     "How much is a check-up for one rabbit?"),
    ("How much is a birthday cake?", "A birthday cake costs 30 dollars.", "How many days ahead must I order it?",
     "How many days ahead must I order the birthday cake?"),
    ("Do you sell pastries?", "Yes.", "Can I order them online?", "Can I order the pastries online?"),
    # the day the thing was asked for is not part of the thing
    ("Can I order a cake on Friday?", "Yes.", "Can I pick it up the same day?", "Can I pick the cake up on Friday?"),
    ("Can I book an appointment for Saturday?", "Yes.", "Can I cancel it later?",
     "Can I cancel the appointment later?"),
])
def test_a_follow_up_names_what_it_points_back_to(question: str, answer: str, follow_up: str, expected: str) -> None:
    assert after(question, answer, follow_up) == expected


@pytest.mark.parametrize(("question", "answer", "follow_up"), [
    ("How much is a rabies vaccination?", "It costs 30 dollars.", "And nail clipping?"),  # nothing points back
    ("When do you open on Saturday?", "At 9.", "And on Sunday?"),  # names its own day
    ("Hello.", "Hello, how can I help?", "When do you close that day?"),  # no day to point back to
    ("Do you sell croissants?", "Yes.", "Is anyone there?"),
    ("Do you sell croissants?", "Yes.", "Do you close at one on Saturday?"),  # "one" is a time
    ("Do you sell croissants?", "Yes.", "How much are croissants?"),  # already named
    # "it" is the repair, not the e-bike (a CI run caught "how long does the e-bike take?")
    ("Do you repair e-bikes?", "Yes, we do.", "And how long does it take?"),
    ("Do you treat rabbits?", "Yes.", "Is it expensive?"),
    ("Is it open?", "Yes.", "How much does one cost?"),  # no thing in the question before
    ("What is it like?", "Nice.", "Is it good?"),
    ("Do you sell bread?", "Yes.", "Is it fresh and is it cheap?"),  # two "it": which one is not for us to guess
])
def test_a_question_that_stands_alone_is_left_alone(question: str, answer: str, follow_up: str) -> None:
    assert after(question, answer, follow_up) == follow_up


def test_the_first_question_of_a_call_is_left_alone() -> None:
    assert resolve_followup("How much does one cost?", []) == "How much does one cost?"


@settings(max_examples=300, deadline=None)
@given(question=st.text(max_size=2000), previous=st.text(max_size=2000), answer=st.text(max_size=2000))
def test_any_text_is_resolved_without_error_and_stays_bounded(question: str, previous: str, answer: str) -> None:
    out = resolve_followup(question, [ChatMessage("user", previous), ChatMessage("assistant", answer)])
    assert out == question or (len(question) <= MAX_CHARS and len(out) <= len(question) + 120)


BAKERY = """# Golden Crust Bakery
## Opening hours
Tuesday to Saturday we are open from 6 am to 2 pm.
On Sunday we are open from 7 am to noon.
On Monday we are closed.
## Products
Gluten-free bread is baked on Fridays only.
"""


@pytest.mark.parametrize(("question", "lines"), [
    ("What time do you open on Friday?", ["Tuesday to Saturday we are open from 6 am to 2 pm."]),  # in a range
    ("Are you open on Monday?", ["On Monday we are closed."]),
    ("And when do you close on Sunday?", ["On Sunday we are open from 7 am to noon."]),
    ("Do you sell bread?", []),  # no day
    ("Are you open on Monday or Tuesday?", []),  # two days: no single note
])
def test_a_question_about_one_day_gets_that_days_opening_lines(question: str, lines: list[str]) -> None:
    from voicebot.agent.followups import day_lines

    assert day_lines(question, [BAKERY]) == lines


def test_the_weekend_covers_saturday_and_sunday() -> None:
    from voicebot.agent.followups import day_lines

    weekend = ["We are closed at the weekend."]
    assert day_lines("Are you open on Saturday?", weekend) == weekend


def test_earlier_turns_are_rebuilt_as_the_model_saw_them_so_the_prompt_only_grows() -> None:
    from voicebot.agent.followups import NOTE_PREFIX, prompt_turns

    first = prompt_turns([], "When do you open on Saturday?", [BAKERY], day_notes=True)
    assert [m.role for m in first] == ["system", "user"] and first[0].content.startswith(NOTE_PREFIX)
    memory = [ChatMessage("user", "When do you open on Saturday?"), ChatMessage("assistant", "At 6 am.")]
    second = prompt_turns(memory, "And when do you close that day?", [BAKERY], day_notes=True)
    assert second[:2] == first  # last turn's prompt is this turn's prefix: evaluated once
    assert second[2] == ChatMessage("assistant", "At 6 am.")
    assert second[-1] == ChatMessage("user", "And when do you close on Saturday?")
    assert second[-2].content == NOTE_PREFIX + "Tuesday to Saturday we are open from 6 am to 2 pm."


@pytest.mark.parametrize(("question", "answer", "follow_up"), [
    # "then" meaning "in that case", not a time
    ("Are you open on Sunday?", "No, we are closed on Sunday.", "What should I do then?"),
    ("Are you open on Sunday?", "No, we are closed on Sunday.", "Okay, bye then."),
    # a range or an exception names no single day: "on Tuesday and Saturday" would misstate it
    ("When is the bakery open?", "Tuesday to Saturday from 6 to 2.", "And what time do you close then?"),
    ("When are you open?", "Every day except Monday.", "What time do you open that day?"),
    # "one" before a noun is a number
    ("Do you treat rabbits?", "Yes.", "Hold on one moment."),
    ("Do you sell croissants?", "Yes.", "I would like to order one dozen."),
    ("Do you sell croissants?", "Yes.", "Can I come in one week?"),
    ("Do you sell croissants?", "Yes.", "How much is each one?"),  # "each one" already names one of them
    # "it" that points at nothing, or at a topic the question names itself
    ("Can I book an appointment?", "Yes, what is your name?", "It is John."),
    ("Can I book an appointment?", "Yes.", "Is it possible to pay by card?"),
    ("Do you sell croissants?", "Yes.", "And bread, is it fresh?"),
    ("Do you sell croissants?", "Yes.", "Could you tell them I called?"),  # "them": the staff
])
def test_a_word_that_does_not_point_back_is_not_rewritten(question: str, answer: str, follow_up: str) -> None:
    assert after(question, answer, follow_up) == follow_up


def test_a_pronoun_opening_the_question_is_named_with_a_capital() -> None:
    assert after("Do you sell birthday cakes?", "Yes.", "It must be ordered ahead?") == \
        "The birthday cake must be ordered ahead?"


def test_the_first_questions_note_stays_out_of_the_cached_system_block() -> None:
    from voicebot.agent.followups import NOTE_PREFIX, prompt_turns
    from voicebot.llm.chatml import build_chat_prompt
    from voicebot.llm.embedded import _split_messages

    head = [ChatMessage("system", "You are Mia."), ChatMessage("system", "Speak briefly.")]
    first = [*head, *prompt_turns([], "When do you open on Saturday?", [BAKERY], day_notes=True)]
    assert first[2].content.startswith(NOTE_PREFIX)  # the note comes right after persona and guidance
    warm = build_chat_prompt(head, [BAKERY], [])  # what warm_up pins for the agent
    prompt = build_chat_prompt(first, [BAKERY], [])
    assert prompt.prefix == warm.prefix
    assert prompt.conversation.index(NOTE_PREFIX) < prompt.conversation.index("When do you open on Saturday?")
    assert _split_messages(first)[0] == "You are Mia. Speak briefly."


def test_by_default_the_prompt_carries_no_day_note() -> None:
    """Day notes are off (measured over calls: no better answers, ≈ 25 prompt tokens each)."""
    from voicebot.agent.followups import prompt_turns

    turns = prompt_turns([], "When do you open on Saturday?", [BAKERY])
    assert [m.role for m in turns] == ["user"]
