"""Sentence splitter: turns a stream of LLM text deltas into speakable sentences as early as possible.

The first sentence is what the caller waits for, so it may also be cut at a clause boundary (comma, colon,
semicolon, dash) once it is long enough; later sentences are cut only at sentence ends.  Abbreviations and
decimal numbers ("Dr.", "3.5") do not end a sentence.  Pure: no I/O.
"""

from __future__ import annotations

import re

_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "approx",
                  "mt", "ave", "dept", "inc", "ltd", "co", "a.m", "p.m", "u.s"}
_END = re.compile(r"[.!?…]+[\"')\]]*(?=\s)")
_CLAUSE = re.compile(r"[,;:—–]\s")
_SPACE = re.compile(r"\s+")


class SentenceSplitter:
    def __init__(self, first_clause_min_chars: int = 30, max_chars: int = 220) -> None:
        self.first_clause_min_chars = first_clause_min_chars
        self.max_chars = max_chars
        self._buffer = ""
        self.emitted = 0

    def push(self, text: str) -> list[str]:
        """Add a delta; return the sentences that are now complete."""
        self._buffer += text
        out: list[str] = []
        while True:
            sentence = self._take()
            if sentence is None:
                break
            if sentence:
                out.append(sentence)
                self.emitted += 1
        return out

    def flush(self) -> list[str]:
        """End of the reply: whatever is left is the last sentence."""
        rest = _clean(self._buffer)
        self._buffer = ""
        if rest and any(ch.isalnum() for ch in rest):
            self.emitted += 1
            return [rest]
        return []

    def _take(self) -> str | None:
        buf = self._buffer
        for match in _END.finditer(buf):
            end = match.end()
            word = buf[:match.start()].rsplit(None, 1)[-1].lower() if buf[:match.start()].strip() else ""
            # "No. 5", "item 3. 4 more": a number follows, so the period is not a sentence end.
            number_like = match.group().startswith(".") and (word == "no" or word[-1:].isdigit())
            if number_like and not buf[end:].strip():
                return None  # what follows decides: wait for the next delta
            numbered = number_like and buf[end:end + 2].strip()[:1].isdigit()
            if match.group().startswith(".") and (word in _ABBREVIATIONS or numbered):
                continue
            if len(word) == 1 and word.isalpha() and match.group() == ".":
                continue  # an initial: "J. Smith"
            self._buffer = buf[end:]
            return _clean(buf[:end])
        if self.emitted == 0 and len(buf) >= self.first_clause_min_chars:
            clauses = [m for m in _CLAUSE.finditer(buf) if m.start() >= self.first_clause_min_chars]
            if clauses:
                cut = clauses[0].end()
                self._buffer = buf[cut:]
                return _clean(buf[:cut])
        if len(buf) > self.max_chars:
            cut = buf.rfind(" ", 0, self.max_chars)
            cut = cut if cut > 0 else self.max_chars
            self._buffer = buf[cut:]
            return _clean(buf[:cut])
        return None


def _clean(text: str) -> str:
    return _SPACE.sub(" ", text).strip()
