"""The decision layer: who gets a person, when the call ends (pure functions, no model)."""

from __future__ import annotations

import pytest

from voicebot.agent.decisions import decide, offer_after_unknown
from voicebot.llm.base import ChatMessage

TARGETS = {"front desk": "200", "workshop": "201"}


@pytest.mark.parametrize("text", [
    "Put me through to a person, please.", "I want to talk to a real person", "Can I speak to someone?",
    "can i speak to someone at the front desk about my bill?", "Operator!", "Connect me with a human.",
    "I'd like to talk to a representative", "I need to speak with somebody", "Transfer me to the workshop",
    "The caller pressed the keys 0 on the phone keypad. (DTMF: 0)", "Could I talk to the manager?",
    "Let me through to a person, please.",  # how Whisper tiny.en heard "Put me through ..." on a real call
])
def test_requests_for_a_person_transfer(text: str) -> None:
    decision = decide(text, [], TARGETS)
    assert decision is not None and decision.action == "transfer", text
    assert decision.target == ("workshop" if "workshop" in text else "front desk")


@pytest.mark.parametrize("text", [
    "What are your opening hours?", "How much does a person pay for a rental?", "Do you repair bikes?",
    "The caller pressed the keys 1 0 on the phone keypad. (DTMF: 10)", "Who am I speaking to?",
])
def test_questions_are_left_to_the_model(text: str) -> None:
    assert decide(text, [], TARGETS) is None


def test_yes_to_the_agents_offer_transfers_and_no_does_not() -> None:
    memory = [ChatMessage("user", "Do you sell cars?"),
              ChatMessage("assistant", "I am sorry, I do not know that. Would you like me to put you through "
                                       "to a colleague?")]
    for yes in ("Yes please.", "Sure", "yeah, go ahead"):
        decision = decide(yes, memory, TARGETS)
        assert decision is not None and decision.action == "transfer" and decision.target == "front desk"
    assert decide("No, thanks.", memory, TARGETS) is None
    assert decide("Yes please.", [ChatMessage("assistant", "We open at 9.")], TARGETS) is None


def test_no_targets_no_transfer() -> None:
    assert decide("Put me through to a person", [], {}) is None


@pytest.mark.parametrize("text", ["Thanks, goodbye!", "That's all, bye.", "OK bye bye", "Have a nice day."])
def test_goodbye_hangs_up(text: str) -> None:
    decision = decide(text, [], TARGETS)
    assert decision is not None and decision.action == "hang_up"


def test_goodbye_with_a_question_does_not_hang_up() -> None:
    assert decide("Before I say goodbye, when do you open?", [], TARGETS) is None


def test_offer_after_unknown() -> None:
    assert offer_after_unknown("I am sorry, I do not know that.", TARGETS).startswith("Would you like")
    assert offer_after_unknown("I don't know. Shall I put you through to a colleague?", TARGETS) == ""
    assert offer_after_unknown("We open at 9.", TARGETS) == ""
    assert offer_after_unknown("I do not know that.", {}) == ""


def test_grounding_guard_stops_an_invented_price_and_keeps_known_facts() -> None:
    from voicebot.agent.decisions import UNKNOWN_REPLY, GroundingGuard

    knowledge = ["A sourdough loaf costs 6 dollars. Cakes must be ordered two days ahead. Open 7 am to noon."]
    guard = GroundingGuard(knowledge, ["How much is a baguette?"])
    said = [*guard.push("A baguette "), *guard.push("costs 10 dollars. Anything"), *guard.push(" else?"),
            *guard.finish()]
    assert said == [UNKNOWN_REPLY] and guard.tripped and guard.spoken == UNKNOWN_REPLY
    ok = GroundingGuard(knowledge, [])
    said = [*ok.push("A loaf costs 6 dollars. Order 2 days ahead, "), *ok.push("we open at 7 until 12."),
            *ok.finish()]
    assert "".join(said) == "A loaf costs 6 dollars. Order 2 days ahead, we open at 7 until 12."
    assert not ok.tripped


BAKERY_HOURS = "Tuesday to Saturday we are open from 6 am to 2 pm. On Sunday we are open from 7 am to noon. " \
               "On Monday we are closed."


@pytest.mark.parametrize(("reply", "said"), [
    ("Yes, we are open on Monday.", "No. On Monday we are closed."),  # heard on the exam, twice
    ("We are open from 6 am to 2 pm. Anything else?", "No. On Monday we are closed."),
    ("I am sorry, I do not know that. Would you like me to put you through?", "On Monday we are closed."),
    ("No, on Monday we are closed.", "No, on Monday we are closed."),  # right: untouched
    ("Sorry, we are not open on Monday.", "Sorry, we are not open on Monday."),
])
def test_a_reply_saying_a_closed_day_is_open_is_corrected_from_the_knowledge(reply: str, said: str) -> None:
    from voicebot.agent.decisions import GroundingGuard
    from voicebot.agent.followups import closed_day_line

    line = closed_day_line("Are you open on Monday?", [], [BAKERY_HOURS])
    assert line == "On Monday we are closed."
    guard = GroundingGuard([BAKERY_HOURS], ["Are you open on Monday?"], closed_line=line)
    assert "".join([*guard.push(reply), *guard.finish()]) == said


def test_an_open_day_or_a_question_about_no_day_has_no_closed_line() -> None:
    from voicebot.agent.followups import closed_day_line

    assert closed_day_line("Are you open on Friday?", [], [BAKERY_HOURS]) == ""
    assert closed_day_line("Do you sell bread?", [], [BAKERY_HOURS]) == ""
    # A follow-up pointing back to the day counts as asking about it.
    history = [ChatMessage("user", "What about Monday?"), ChatMessage("assistant", "Let me check.")]
    assert closed_day_line("Are you open that day?", history, [BAKERY_HOURS]) == "On Monday we are closed."


# ---------------------------------------------------------------------------------------------- Spanish
SPANISH_TARGETS = {"recepción": "800", "taller": "801"}


@pytest.mark.parametrize("text", [
    "Quiero hablar con una persona.", "¿Puedo hablar con alguien?", "Pásame con recepción, por favor.",
    "Póngame con el taller.", "Operador.", "Necesito hablar con un agente", "quisiera hablar con el encargado",
    "Comuníqueme con una persona real, por favor",
])
def test_spanish_requests_for_a_person_transfer(text: str) -> None:
    decision = decide(text, [], SPANISH_TARGETS)
    assert decision is not None and decision.action == "transfer", text
    assert decision.target == ("taller" if "taller" in text else "recepción")


@pytest.mark.parametrize("text", [
    "¿A qué hora abren los sábados?", "¿Cuánto cuesta para una persona?", "¿Reparan bicicletas eléctricas?",
    "¿Con quién hablo?", "¿Abren el domingo?",
])
def test_spanish_questions_are_left_to_the_model(text: str) -> None:
    assert decide(text, [], SPANISH_TARGETS) is None, text


def test_spanish_yes_to_the_offer_transfers_and_no_hangs_nothing_up() -> None:
    offer = [ChatMessage("assistant", "Lo siento, no lo sé. ¿Quiere que le pase con un compañero?")]
    for yes in ("Sí, por favor.", "Vale.", "Claro", "De acuerdo"):
        decision = decide(yes, offer, SPANISH_TARGETS)
        assert decision is not None and decision.action == "transfer", yes
    assert decide("No, gracias. ¿Y el precio?", offer, SPANISH_TARGETS) is None


@pytest.mark.parametrize("text", ["Adiós.", "Gracias, hasta luego.", "Eso es todo, gracias.", "Nada más, adiós"])
def test_spanish_goodbye_hangs_up(text: str) -> None:
    decision = decide(text, [], SPANISH_TARGETS)
    assert decision is not None and decision.action == "hang_up", text


def test_spanish_goodbye_with_a_question_does_not_hang_up() -> None:
    assert decide("Adiós... ¿abren mañana?", [], SPANISH_TARGETS) is None


def test_spanish_unknown_gets_the_offer_in_spanish() -> None:
    offer = "¿Quiere que le pase con un compañero?"
    assert offer_after_unknown("Lo siento, no lo sé.", SPANISH_TARGETS, offer) == offer
    assert offer_after_unknown("No tengo esa información.", SPANISH_TARGETS, offer) == offer
    assert offer_after_unknown("Lo siento, no lo sé. ¿Quiere que le pase con recepción?", SPANISH_TARGETS,
                               offer) == ""  # it offered already
    assert offer_after_unknown("Abrimos a las 10.", SPANISH_TARGETS, offer) == ""


def test_grounding_guard_in_spanish_replaces_an_invented_price_with_the_spanish_apology() -> None:
    from voicebot.agent.decisions import GroundingGuard

    guard = GroundingGuard(["Reparar un pinchazo cuesta 12 euros. Abrimos a las nueve."], ["¿Precio?"],
                           unknown_reply="Lo siento, no lo sé.", language="es")
    assert guard.push("Reparar un pinchazo cuesta doce euros. ") == ["Reparar un pinchazo cuesta doce euros. "]
    assert guard.push("Abrimos a las 9. ") == ["Abrimos a las 9. "]  # "nueve" in the knowledge is 9
    assert guard.push("Un casco cuesta 30 euros.") + guard.finish() == ["Lo siento, no lo sé."]
    assert guard.reason == "number"


def test_english_replies_are_not_checked_with_spanish_number_words() -> None:
    from voicebot.agent.decisions import GroundingGuard

    english = GroundingGuard(["We open at 9 every day."], ["When do you open?"])
    assert english.push("Once you arrive, ring the bell. ") == ["Once you arrive, ring the bell. "]
    assert not english.tripped
    spanish = GroundingGuard(["Abrimos a las 9."], ["¿Cuándo abren?"], language="es", unknown_reply="No lo sé.")
    assert spanish.push("Abrimos a las once. ") == ["No lo sé."]  # "once" is 11 in Spanish: not in the knowledge


def test_no_se_preocupe_is_not_i_do_not_know() -> None:
    assert offer_after_unknown("No se preocupe, abrimos a las 9.", SPANISH_TARGETS, "¿Le paso?") == ""
    assert offer_after_unknown("No sé a qué hora abrimos.", SPANISH_TARGETS, "¿Le paso?") == "¿Le paso?"


GARAGE = """# Quick Fix Garage

We repair cars and motorbikes; we do not repair lorries or buses.
An oil change costs 60 dollars.
Tyre fitting costs 20 dollars per tyre.
Booked cars must be dropped off before 9 am.
"""


@pytest.mark.parametrize(("question", "history", "line"), [
    ("Do you repair buses?", [], "We repair cars and motorbikes; we do not repair lorries or buses."),
    ("How much is an oil change?", [], "An oil change costs 60 dollars."),
    ("Do you repair cars?", [], "We repair cars and motorbikes; we do not repair lorries or buses."),
    ("When must booked cars be dropped off?", [], "Booked cars must be dropped off before 9 am."),
    # A follow-up is resolved first ("one" is the tyre fitting asked about).
    ("And how much does it cost?", [ChatMessage("user", "Do you offer tyre fitting?"),
                                     ChatMessage("assistant", "Yes, we do.")],
     "Tyre fitting costs 20 dollars per tyre."),
])
def test_the_one_knowledge_line_naming_everything_asked_is_the_known_answer(
        question: str, history: list[ChatMessage], line: str) -> None:
    from voicebot.agent.followups import answer_line

    assert answer_line(question, history, [GARAGE]) == line


@pytest.mark.parametrize("question", [
    "Do you sell car insurance?",  # "car" is there, "insurance" is not: not answered by the knowledge
    "What is the name of your mechanic?",
    "How much does it cost?",  # nothing asked about: every line would do
])
def test_no_line_is_claimed_when_the_knowledge_does_not_name_everything_asked(question: str) -> None:
    from voicebot.agent.followups import answer_line

    assert answer_line(question, [], [GARAGE]) == ""
    # Two lines naming the same things: ambiguous, nothing claimed.
    spare = GARAGE + "\nA spare tyre costs 80 dollars per tyre.\n"
    assert answer_line("How much does it cost per tyre?", [], [spare]) == ""


def test_an_i_do_not_know_is_replaced_by_the_known_line_and_only_then() -> None:
    from voicebot.agent.decisions import GroundingGuard

    line = "We repair cars and motorbikes; we do not repair lorries or buses."
    guard = GroundingGuard([GARAGE], ["Do you repair buses?"], known_line=line)
    said = "".join([*guard.push("I am sorry, I do not know that. Would you like me to put "), *guard.push("you "),
                    *guard.push("through?"), *guard.finish()])
    assert said == line and guard.reason == "known_line"
    # A real answer is left alone.
    guard = GroundingGuard([GARAGE], ["Do you repair buses?"], known_line=line)
    assert "".join([*guard.push("No, we do not repair buses. "), *guard.finish()]) == "No, we do not repair buses. "
    assert not guard.tripped
    # Without a known line an "I do not know" stays.
    guard = GroundingGuard([GARAGE], ["Do you sell car insurance?"])
    assert "".join([*guard.push("I am sorry, I do not know that."), *guard.finish()]) == \
        "I am sorry, I do not know that."


VET_HOURS = """Monday to Friday we are open from 8 am to 7 pm.
On Saturday we are open from 9 am to 1 pm.
On Sunday we are closed.
"""


@pytest.mark.parametrize(("reply", "said"), [
    ("We are closed on Sunday.", "On Saturday we are open from 9 am to 1 pm."),  # heard on the exam
    ("Monday to Friday we close at 7 pm. Anything else?", "On Saturday we are open from 9 am to 1 pm."),
    ("I am sorry, I do not know that.", "On Saturday we are open from 9 am to 1 pm."),  # the lines are there
    ("On Saturday we are closed for emergencies.", "On Saturday we are open from 9 am to 1 pm."),  # heard too
    ("On Saturday we are open from 7 am to noon.", "On Saturday we are open from 9 am to 1 pm."),  # wrong hours
    ("On Saturday we close at 1 pm.", "On Saturday we close at 1 pm."),  # right: untouched
    ("We close at 1 pm.", "We close at 1 pm."),  # no day named: untouched
    ("At the weekend we close at 1 pm.", "At the weekend we close at 1 pm."),  # the weekend holds Saturday
])
def test_a_first_sentence_about_another_day_is_replaced_by_the_asked_days_lines(reply: str, said: str) -> None:
    from voicebot.agent.decisions import GroundingGuard
    from voicebot.agent.followups import asked_day_lines, asks_hours

    history = [ChatMessage("user", "When do you open on Saturday?"),
               ChatMessage("assistant", "On Saturday we open at 9 am.")]
    day = asked_day_lines("And when do you close that day?", history, [VET_HOURS])
    assert day == ("saturday", "On Saturday we are open from 9 am to 1 pm.")
    guard = GroundingGuard([VET_HOURS], [], day=day, hours=asks_hours("And when do you close that day?", history))
    assert "".join([*guard.push(reply), *guard.finish()]) == said
    assert guard.tripped == (said != reply)


def test_a_question_about_no_day_or_several_days_has_no_day_lines() -> None:
    from voicebot.agent.followups import asked_day_lines

    assert asked_day_lines("When do you close?", [], [VET_HOURS]) == ("", "")
    assert asked_day_lines("Are you open on Saturday or Sunday?", [], [VET_HOURS]) == ("", "")
    assert asked_day_lines("Are you open on Saturday?", [], ["We sell cakes."]) == ("", "")


def test_a_first_sentence_about_something_else_is_replaced_by_the_known_line() -> None:
    """Asked "how much does one cost?" after "do you offer tyre fitting?", a reply pricing the oil change
    answers another question: the line naming the tyre fitting is said instead.  A reply that speaks of
    what was asked, in any words, is the model's."""
    from voicebot.agent.decisions import GroundingGuard
    from voicebot.agent.followups import answer_line, topic_words

    history = [ChatMessage("user", "Do you offer tyre fitting?"), ChatMessage("assistant", "Yes, we do.")]
    question = "And how much does it cost?"
    line, topic = answer_line(question, history, [GARAGE]), topic_words(question, history)
    assert line == "Tyre fitting costs 20 dollars per tyre." and topic == {"tyr", "fitting"}  # stemmed
    guard = GroundingGuard([GARAGE], [question], known_line=line, topic=topic)
    assert "".join([*guard.push("An oil change costs 60 dollars. "), *guard.finish()]) == line
    guard = GroundingGuard([GARAGE], [question], known_line=line, topic=topic)
    assert "".join([*guard.push("Fitting costs 20 dollars a tyre."), *guard.finish()]) == \
        "Fitting costs 20 dollars a tyre."


@pytest.mark.parametrize(("question", "reply", "unheard", "invented"), [
    # The garage never names insurance or windscreens: a "yes" or a price for them is invented.
    ("Do you sell insurance?", "Yes, we sell insurance.", True, True),
    ("Do you sell car insurance?", "Yes, we do.", True, True),  # "car" is named, "insurance" is not
    ("How much is a windscreen?", "A windscreen costs 60 dollars.", True, True),  # 60: the oil change's price
    ("How much is a windscreen?", "I am sorry, I do not know that.", True, False),
    # What the knowledge names is the model's to answer, and so is any question of another shape.
    ("How much is an oil change?", "An oil change costs 60 dollars.", False, False),
    ("Do you repair motorbikes?", "Yes, we repair motorbikes.", False, False),
    ("My name is Ana.", "Nice to meet you, Ana.", False, False),
    ("Are you open on Friday?", "Yes, we are open on Friday.", False, False),
    ("Where are you located?", "We are on Mill Street.", False, False),
])
def test_a_claim_about_what_the_knowledge_never_names_is_unknown(question: str, reply: str, unheard: bool,
                                                                 invented: bool) -> None:
    from voicebot.agent.decisions import UNKNOWN_REPLY, GroundingGuard
    from voicebot.agent.followups import topic_words, unheard_of

    assert unheard_of(question, [], [GARAGE]) == unheard
    guard = GroundingGuard([GARAGE], [question], topic=topic_words(question, []), unheard=unheard)
    out = "".join([*guard.push(reply), *guard.finish()])
    assert out == (UNKNOWN_REPLY if invented else reply)
    assert guard.tripped == invented


@pytest.mark.parametrize(("one", "other"), [("cakes", "cake"), ("baked", "bake"), ("closes", "closed"),
                                             ("berries", "berry"), ("cookies", "cookie"), ("horses", "horse"),
                                             ("ordered", "order"), ("buses", "bus")])
def test_singular_plural_and_past_stem_alike_and_a_stem_stems_to_itself(one: str, other: str) -> None:
    from voicebot.agent.followups import _stem

    assert _stem(one) == _stem(other)
    assert _stem(_stem(one)) == _stem(one)


def test_a_price_question_is_answered_only_by_a_line_with_a_number() -> None:
    from voicebot.agent.followups import answer_line

    knowledge = ["Birthday cakes must be ordered ahead.\nWe bake cakes every morning."]
    assert answer_line("How much is a birthday cake?", [], knowledge) == ""
    assert answer_line("Can I order a birthday cake?", [], knowledge) == "Birthday cakes must be ordered ahead."


@pytest.mark.parametrize("heard", ["How much is a check-up?", "How much is a checkup?", "How much is a check up?"])
def test_a_hyphenated_word_matches_however_speech_recognition_wrote_it(heard: str) -> None:
    from voicebot.agent.followups import answer_line

    knowledge = ["A general check-up costs 45 dollars.\nA rabies vaccination costs 30 dollars."]
    assert answer_line(heard, [], knowledge) == "A general check-up costs 45 dollars."


def test_the_guard_lets_a_sentence_go_with_its_space_so_the_voice_loop_can_speak_it() -> None:
    """The voice loop speaks a sentence once whitespace follows its mark; the guard must not keep that space
    back (it held the first sentence until the second one ended)."""
    from voicebot.agent.decisions import GroundingGuard
    from voicebot.pipeline.sentences import SentenceSplitter

    guard = GroundingGuard(["We close at 2 pm."], [])
    splitter = SentenceSplitter()
    assert guard.push("We close at 2 pm.") == []  # "9." may still become "9.50"
    released = guard.push(" On")
    assert released == ["We close at 2 pm. "]
    assert [s for piece in released for s in splitter.push(piece)] == ["We close at 2 pm."]
    assert guard.push(" Sunday we are closed.") == []
    assert guard.finish() == ["On Sunday we are closed."]
