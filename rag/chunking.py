"""Sentence-aware chunking with overlap.

Text is split into paragraphs and sentences; sentences are packed greedily into chunks of at most
``chunk_size`` characters, and each chunk starts with the last whole sentences of the previous one (up to
``overlap`` characters) so that an answer straddling a boundary is still found whole in one chunk.  Chunks
never cross a page, so a PDF chunk's page number is exact.  Identical chunks within a document (boilerplate
repeated on every page, say) are kept once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from rag.extract import Page
from voicebot.errors import ConfigError

# A sentence ends at . ! ? … (optionally followed by closing quotes/brackets) and whitespace.
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+")
_LIST_ITEM = re.compile(r"^\s*([-*+•]|\d{1,3}[.)]|[A-Za-z][.)])\s+")


@dataclass(frozen=True)
class Chunk:
    ordinal: int
    page: int | None
    text: str
    text_hash: str


def content_hash(text: str) -> str:
    """Hash of a chunk's content, insensitive to whitespace and case (used for deduplication)."""
    normalised = " ".join(text.split()).casefold()
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()


def check_sizes(chunk_size: int, overlap: int) -> None:
    if chunk_size < 50:
        raise ConfigError("EVA_CHUNK_SIZE must be at least 50 characters", field="chunk_size")
    if overlap < 0 or overlap * 2 > chunk_size:
        raise ConfigError("EVA_CHUNK_OVERLAP must be between 0 and half of EVA_CHUNK_SIZE",
                          field="chunk_overlap")


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``; paragraph and list-item boundaries are sentence boundaries too."""
    sentences: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        # Lines inside a paragraph are joined (PDF extraction breaks lines mid-sentence), except list items,
        # which are separate statements.
        lines = [line.strip() for line in paragraph.split("\n") if line.strip()]
        blocks: list[str] = []
        for line in lines:
            if blocks and not _LIST_ITEM.match(line):
                blocks[-1] = f"{blocks[-1]} {line}"
            else:
                blocks.append(line)
        for block in blocks:
            sentences.extend(part.strip() for part in _SENTENCE_END.split(block) if part.strip())
    return sentences


def _split_long(sentence: str, limit: int) -> list[str]:
    """Cut a sentence longer than ``limit`` at word boundaries (or hard, for a single giant token)."""
    pieces: list[str] = []
    current = ""
    for whole in sentence.split():
        word = whole
        while len(word) > limit:
            if current:
                pieces.append(current)
                current = ""
            pieces.append(word[:limit])
            word = word[limit:]
        if not word:
            continue
        candidate = f"{current} {word}" if current else word
        if len(candidate) > limit:
            pieces.append(current)
            current = word
        else:
            current = candidate
    if current:
        pieces.append(current)
    return pieces


def _overlap_tail(sentences: list[str], overlap: int) -> list[str]:
    """The last whole sentences of a chunk that fit in ``overlap`` characters."""
    tail: list[str] = []
    size = 0
    for sentence in reversed(sentences):
        added = len(sentence) + (1 if tail else 0)
        if size + added > overlap:
            break
        tail.insert(0, sentence)
        size += added
    if not tail and sentences and overlap > 0:
        # The last sentence alone is longer than the overlap: carry its last words instead.
        words = sentences[-1].split()
        carried: list[str] = []
        for word in reversed(words):
            if sum(len(w) + 1 for w in carried) + len(word) > overlap:
                break
            carried.insert(0, word)
        if carried and len(carried) < len(words):
            tail = [" ".join(carried)]
    return tail


def chunk_text(text: str, chunk_size: int, overlap: int) -> list[str]:
    """Chunks of one page of text."""
    units: list[str] = []
    for sentence in split_sentences(text):
        # Pieces of an over-long sentence leave room for the overlap carried into the next chunk.
        pieces = _split_long(sentence, chunk_size - overlap) if len(sentence) > chunk_size else [sentence]
        units.extend(pieces)
    chunks: list[str] = []
    current: list[str] = []
    fresh = 0  # sentences in ``current`` that are not overlap carried from the previous chunk
    for unit in units:
        length = sum(len(s) for s in current) + len(current)  # with joining spaces
        if current and length + len(unit) > chunk_size:
            if fresh:
                chunks.append(" ".join(current))
                current = _overlap_tail(current, overlap)
            else:
                current = []
            # Carried overlap must never push the next chunk over the limit.
            while current and sum(len(s) for s in current) + len(current) + len(unit) > chunk_size:
                current.pop(0)
            fresh = 0
        current.append(unit)
        fresh += 1
    if current and fresh:
        chunks.append(" ".join(current))
    return chunks


def chunk_pages(pages: Iterable[Page], chunk_size: int, overlap: int) -> list[Chunk]:
    """Chunks of a whole document with ordinals, page numbers and content hashes; duplicates dropped."""
    check_sizes(chunk_size, overlap)
    seen: set[str] = set()
    chunks: list[Chunk] = []
    for page in pages:
        for text in chunk_text(page.text, chunk_size, overlap):
            digest = content_hash(text)
            if digest in seen:
                continue
            seen.add(digest)
            chunks.append(Chunk(ordinal=len(chunks), page=page.number, text=text, text_hash=digest))
    return chunks
