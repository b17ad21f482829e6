"""Sentence-aware chunking: size limit, overlap, page attribution, deduplication, no text lost."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rag.chunking import check_sizes, chunk_pages, chunk_text, content_hash, split_sentences
from rag.extract import Page
from voicebot.errors import ConfigError

SENTENCES = [f"Sentence number {i} says that item {i} costs {i * 3} dollars." for i in range(40)]


def test_sentences_split_and_pdf_lines_joined() -> None:
    text = "The shop opens at nine.\nIt closes\nat six! Really? Yes.\n\n- first item\n- second item"
    assert split_sentences(text) == ["The shop opens at nine.", "It closes at six!", "Really?", "Yes.",
                                     "- first item", "- second item"]


def test_chunks_respect_size_and_keep_sentences_whole() -> None:
    chunks = chunk_text(" ".join(SENTENCES), 200, 60)
    assert len(chunks) > 5
    for chunk in chunks:
        assert len(chunk) <= 200
        # Every chunk is made of whole sentences (start capitalised, end with a period).
        assert chunk.startswith("Sentence number") and chunk.endswith("dollars.")


def test_overlap_repeats_the_previous_chunks_last_sentence() -> None:
    chunks = chunk_text(" ".join(SENTENCES), 200, 60)
    for previous, current in itertools.pairwise(chunks):
        last_sentence = re.findall(r"Sentence number \d+ [^.]*\.", previous)[-1]
        assert current.startswith(last_sentence)


def test_no_overlap_when_zero() -> None:
    chunks = chunk_text(" ".join(SENTENCES), 200, 0)
    joined = " ".join(chunks)
    assert joined == " ".join(SENTENCES)


def test_long_sentence_is_cut_at_words_with_overlap() -> None:
    words = [f"word{i}" for i in range(200)]
    chunks = chunk_text(" ".join(words), 100, 30)
    assert all(len(chunk) <= 100 for chunk in chunks)
    seen = [w for chunk in chunks for w in chunk.split()]
    assert set(seen) == set(words)
    # Consecutive pieces share words (the overlap).
    assert set(chunks[0].split()) & set(chunks[1].split())


def test_giant_token_is_hard_split() -> None:
    chunks = chunk_text("x" * 950, 100, 20)
    assert all(len(chunk) <= 100 for chunk in chunks)
    assert "".join(chunk.replace(" ", "") for chunk in chunks).count("x") >= 950


def test_pages_and_ordinals() -> None:
    pages = [Page(1, " ".join(SENTENCES[:10])), Page(2, " ".join(SENTENCES[10:20])), Page(3, "Short page.")]
    chunks = chunk_pages(pages, 200, 40)
    assert [chunk.ordinal for chunk in chunks] == list(range(len(chunks)))
    assert {chunk.page for chunk in chunks} == {1, 2, 3}
    # Chunks never cross pages.
    for chunk in chunks:
        numbers = {int(n) for n in re.findall(r"Sentence number (\d+)", chunk.text)}
        if chunk.page == 1:
            assert numbers <= set(range(10))
        elif chunk.page == 2:
            assert numbers <= set(range(10, 20))


def test_duplicate_chunks_dropped_within_a_document() -> None:
    boilerplate = "Company confidential. Do not distribute."
    pages = [Page(n, boilerplate) for n in range(1, 6)] + [Page(6, "Actual content here.")]
    chunks = chunk_pages(pages, 200, 20)
    assert [chunk.text for chunk in chunks] == [boilerplate, "Actual content here."]
    assert chunks[0].text_hash == content_hash("company   CONFIDENTIAL. do not distribute.")
    assert len({chunk.text_hash for chunk in chunks}) == len(chunks)


@pytest.mark.parametrize(("size", "overlap"), [(10, 0), (49, 5), (200, 101), (200, -1)])
def test_bad_sizes_refused(size: int, overlap: int) -> None:
    with pytest.raises(ConfigError):
        check_sizes(size, overlap)


_WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789éü", min_size=1, max_size=30)
_SENTENCE = st.lists(_WORD, min_size=1, max_size=25).map(" ".join) \
    .flatmap(lambda s: st.sampled_from([".", "!", "?", "", ","]).map(lambda end: s + end))


@settings(max_examples=150, deadline=None)
@given(sentences=st.lists(_SENTENCE, min_size=1, max_size=40),
       paragraph_breaks=st.lists(st.booleans(), min_size=40, max_size=40),
       size=st.integers(min_value=50, max_value=600), overlap_ratio=st.floats(min_value=0.0, max_value=0.5))
def test_property_every_word_kept_and_size_respected(sentences: list[str], paragraph_breaks: list[bool],
                                                     size: int, overlap_ratio: float) -> None:
    overlap = int(size * overlap_ratio)
    text = "".join(s + ("\n\n" if brk else " ") for s, brk in zip(sentences, paragraph_breaks, strict=False))
    chunks = chunk_text(text, size, overlap)
    assert all(0 < len(chunk) <= size for chunk in chunks)
    # No text is lost: every word appears in some chunk (hard splits may cut a >size word into pieces).
    chunk_words = " ".join(chunks)
    for word in text.split():
        assert word in chunk_words or len(word) > size - overlap
