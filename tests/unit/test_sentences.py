"""Sentence splitter: speak the first sentence as soon as it exists, never split abbreviations or decimals."""

from __future__ import annotations

from voicebot.pipeline.sentences import SentenceSplitter


def feed(text: str, step: int = 3, splitter: SentenceSplitter | None = None) -> list[str]:
    splitter = splitter or SentenceSplitter()
    out: list[str] = []
    for i in range(0, len(text), step):
        out += splitter.push(text[i:i + step])
    return out + splitter.flush()


def test_sentences_come_out_as_soon_as_complete() -> None:
    splitter = SentenceSplitter()
    assert splitter.push("Hello there") == []
    assert splitter.push(". How are") == ["Hello there."]
    assert splitter.push(" you? I") == ["How are you?"]
    assert splitter.flush() == ["I"]


def test_abbreviations_initials_and_decimals_do_not_split() -> None:
    text = "Dr. Smith charges $3.50 per call, e.g. for J. Doe. Call us at 9 a.m. tomorrow!"
    no_clause_cut = SentenceSplitter(first_clause_min_chars=1000)
    assert feed(text, splitter=no_clause_cut) == ["Dr. Smith charges $3.50 per call, e.g. for J. Doe.",
                                                  "Call us at 9 a.m. tomorrow!"]


def test_long_first_sentence_is_cut_at_a_clause_for_a_fast_start() -> None:
    text = "We are open from nine in the morning, until six in the evening on weekdays. Thanks."
    out = feed(text)
    assert out[0] == "We are open from nine in the morning,"
    assert out[1:] == ["until six in the evening on weekdays.", "Thanks."]


def test_later_sentences_are_not_cut_at_commas() -> None:
    text = "Yes. We deliver to Madrid, Barcelona, Valencia and Seville every single day of the week."
    assert feed(text) == ["Yes.", "We deliver to Madrid, Barcelona, Valencia and Seville every single day of the week."]


def test_runaway_text_without_punctuation_is_cut_at_a_space() -> None:
    text = "word " * 100
    out = feed(text, step=7)
    assert all(len(s) <= 220 for s in out)
    assert " ".join(out).split() == text.split()


def test_whitespace_and_empty_input() -> None:
    assert feed("   \n ") == []
    assert feed("Hi!\n\nBye.") == ["Hi!", "Bye."]


def test_no_is_a_word_unless_a_number_follows() -> None:
    assert feed("The answer is no. We are closed.") == ["The answer is no.", "We are closed."]
    assert feed("Ask for No. 5 please. Thanks.") == ["Ask for No. 5 please.", "Thanks."]
