"""KV-state snapshots of llama.cpp, so each prompt token is evaluated once (per agent prefix, per call).

Prompt evaluation is the embedded model's bottleneck (≈130 tokens/s on 2 cores for a 0.5B model): an agent's
system block (persona, instructions, knowledge, tools: hundreds of tokens) must not be evaluated again for
every turn or every call.  llama-cpp-python already skips the longest common prefix of the new prompt and
what its context holds, but its one context holds one sequence: a call to another agent, or another call
of the same agent, overwrites it.  So after evaluating a prompt we keep a snapshot of sequence 0's KV state
(``llama_state_seq_get_data``, ≈12 KiB per token for Qwen2.5 0.5B) with the tokens it covers; before the
next prompt we restore the snapshot sharing the longest prefix with it, when that beats what the context
already holds.  Snapshots whose tokens are a prefix of a newer one are dropped (the newer one covers them);
agent prefixes are pinned so a busy day of calls never evicts them; the rest are evicted least recently used
past a byte budget.

Only the model's worker thread touches a cache (llama.cpp contexts are not thread-safe).
"""

from __future__ import annotations

import ctypes
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    tokens: tuple[int, ...]
    data: bytes
    pinned: bool = False


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def snapshot_sequence(llama: Any) -> tuple[tuple[int, ...], bytes] | None:
    """(the tokens the context holds, sequence 0's KV state for them), or None when empty or refused."""
    import llama_cpp

    n = int(llama.n_tokens)
    if n == 0:
        return None
    ctx = llama._ctx.ctx
    size = int(llama_cpp.llama_state_seq_get_size(ctx, 0))
    buffer = (ctypes.c_uint8 * size)()
    written = int(llama_cpp.llama_state_seq_get_data(ctx, buffer, size, 0))
    if written <= 0 or written > size:
        log.warning("could not snapshot the KV state (%d of %d bytes)", written, size)
        return None
    return tuple(int(t) for t in llama.input_ids[:n]), bytes(buffer)[:written]


def restore_sequence(llama: Any, tokens: Sequence[int], data: bytes) -> None:
    """Make the context hold exactly ``tokens`` (KV state ``data``), ready to evaluate more."""
    import llama_cpp

    llama._ctx.kv_cache_clear()
    buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
    if int(llama_cpp.llama_state_seq_set_data(llama._ctx.ctx, buffer, len(data), 0)) == 0:
        llama.reset()
        raise RuntimeError("llama.cpp refused a KV-state snapshot")
    n = len(tokens)
    llama.input_ids[:n] = tokens
    llama.n_tokens = n
    llama._requires_eval = True  # the logits of the last token are not part of the snapshot


class PrefixCache:
    """Snapshots for one ``llama_cpp.Llama`` instance (see the module docstring)."""

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._snapshots: OrderedDict[tuple[int, ...], Snapshot] = OrderedDict()
        self.restores = 0

    @property
    def bytes(self) -> int:
        return sum(len(s.data) for s in self._snapshots.values())

    def __len__(self) -> int:
        return len(self._snapshots)

    def best(self, tokens: Sequence[int]) -> tuple[Snapshot | None, int]:
        """The snapshot sharing the longest prefix with ``tokens`` and that length.  A snapshot is usable
        only when all its tokens are a prefix of ``tokens`` (its KV state covers exactly those)."""
        best: Snapshot | None = None
        for snapshot in self._snapshots.values():
            size = len(snapshot.tokens)
            if size <= len(tokens) and (best is None or size > len(best.tokens)) \
                    and tuple(tokens[:size]) == snapshot.tokens:
                best = snapshot
        return best, (len(best.tokens) if best else 0)

    def save(self, llama: Any, *, pinned: bool = False) -> Snapshot | None:
        """Snapshot the context's current sequence (``llama.input_ids[:n_tokens]``)."""

        n = int(llama.n_tokens)
        if n == 0:
            return None
        tokens = tuple(int(t) for t in llama.input_ids[:n])
        existing = self._snapshots.get(tokens)
        if existing is not None:
            self._snapshots.move_to_end(tokens)
            if pinned and not existing.pinned:
                self._snapshots[tokens] = Snapshot(tokens, existing.data, True)
            return existing
        taken = snapshot_sequence(llama)
        if taken is None:
            return None
        snapshot = Snapshot(tokens, taken[1], pinned)
        # An unpinned snapshot that is a prefix of this one is covered by it.
        for key in [k for k, s in self._snapshots.items()
                    if not s.pinned and len(k) < len(tokens) and tokens[:len(k)] == k]:
            del self._snapshots[key]
        self._snapshots[tokens] = snapshot
        self._evict()
        return snapshot

    def restore(self, llama: Any, snapshot: Snapshot) -> None:
        """Make the context hold exactly ``snapshot``'s tokens (its KV state), ready to evaluate more."""
        restore_sequence(llama, snapshot.tokens, snapshot.data)
        self._snapshots.move_to_end(snapshot.tokens)
        self.restores += 1

    def _evict(self) -> None:
        """Least recently used first, conversations before agent prefixes (which go only when the pinned
        ones alone exceed the budget: many agents on a small machine)."""
        total = self.bytes
        for pinned in (False, True):
            for key in list(self._snapshots):
                if total <= self.max_bytes:
                    return
                snapshot = self._snapshots[key]
                if snapshot.pinned != pinned:
                    continue
                total -= len(snapshot.data)
                del self._snapshots[key]
