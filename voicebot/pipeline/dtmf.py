"""DTMF keys → caller turns: a pure state machine (no clock of its own, no asyncio).

Keys collect into a sequence that ends with the terminator key or after ``timeout_s`` without a key.  A
finished sequence becomes one caller turn -- but at most one turn per ``min_interval_s``: sequences that end
sooner (a ``1#1#1#...`` flood, each of which would start an LLM reply and store two messages) are merged into
the next turn, with the terminator kept as a separator, so nothing accepted is lost.  At most ``max_digits``
keys wait for one turn; more are refused.  Only real DTMF keys (0-9, *, #, A-D) are accepted: the digit comes
from an ARI event and is treated as untrusted text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KEYS = frozenset("0123456789*#ABCD")


@dataclass(frozen=True)
class DtmfStep:
    """What the caller of :class:`DtmfCollector` does next."""

    turn: str | None = None
    """Keys to hand to the agent now (one turn), or None."""
    flush_at: float | None = None
    """Call :meth:`DtmfCollector.flush` at this time (replaces any earlier request), or None for never."""
    refused: bool = False
    """The key was not accepted (not a DTMF key, or too many keys waiting)."""


class DtmfCollector:
    def __init__(self, *, terminator: str = "#", timeout_s: float = 2.0, min_interval_s: float = 1.0,
                 max_digits: int = 64) -> None:
        self.terminator = terminator if terminator in KEYS else ""
        self.timeout_s = timeout_s
        self.min_interval_s = min_interval_s
        self.max_digits = max_digits
        self.complete_at: int | None = None
        """A sequence of this many keys is complete at once (a flow's one-key menu waits for no timeout)."""
        self.digits = ""
        self._last_turn: float | None = None

    def press(self, digit: str, now: float) -> DtmfStep:
        """One key event at time ``now``."""
        if digit not in KEYS or len(self.digits) >= self.max_digits:
            return DtmfStep(flush_at=now + self.timeout_s if self.digits else None, refused=True)
        if self.terminator and digit == self.terminator:
            if self.digits and not self.digits.endswith(digit):
                self.digits += digit  # a separator, in case this sequence is merged with the next
            return self.flush(now)
        self.digits += digit
        if self.complete_at is not None and len(self.digits.replace(self.terminator or "\0", "")) >= self.complete_at:
            return self.flush(now)
        return DtmfStep(flush_at=now + self.timeout_s)

    def flush(self, now: float) -> DtmfStep:
        """The sequence ended (terminator or timeout): a turn now, or later if the last one is too recent."""
        if self._last_turn is not None and self.digits:
            due = self._last_turn + self.min_interval_s
            if now < due:
                return DtmfStep(flush_at=due)
        keys = self.digits.rstrip(self.terminator) if self.terminator else self.digits
        self.digits = ""
        if not keys:
            return DtmfStep()
        self._last_turn = now
        return DtmfStep(turn=keys)


def dtmf_turn_text(keys: str) -> str:
    """How a DTMF turn reads to the agent."""
    return f"The caller pressed the keys {' '.join(keys)} on the phone keypad. (DTMF: {keys})"


_TURN_KEYS = re.compile(r"\(DTMF: ([0-9*#A-D]{1,64})\)$")


def dtmf_turn_keys(text: str) -> str | None:
    """The keys of a turn :func:`dtmf_turn_text` made, or None for a turn that is not one (the caller spoke)."""
    found = _TURN_KEYS.search(text)
    return found.group(1) if found is not None else None
