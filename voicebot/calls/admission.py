"""Admission control: how many calls this worker carries at once, and who is turned away.

Every stage of a call (Whisper, llama.cpp, Piper) runs on this machine's cores, shared by all its calls, so past
some number of calls each added caller makes every call slower (``bench/capacity.py`` measures where).  The
worker therefore admits calls up to its capacity; an inbound caller beyond it hears a short busy prompt and is
hung up within a second, and the calls in progress keep their latency.

Calls Eva placed itself (campaign calls) are not turned away when the callee answers: the dialer starts a call
only while a slot is free (:attr:`Admission.free`), and hanging up on someone we just rang would be worse than a
slower reply.  So the count can pass the capacity by the campaign calls that were ringing when it filled.

Pure state, no I/O: the voice app feeds it on the event loop (one thread, so "check and take a slot" cannot
race).  Slots are keyed (by the call's session key), so releasing twice or releasing a refused call is harmless.
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable
from pathlib import Path

from voicebot.errors import ConfigError

CALLS_PER_CORE = 2
"""The default capacity per CPU core, from ``bench/capacity.py`` on a 2-core machine with the embedded models
(the README's capacity table): every turn was answered up to 8 calls and the media clock kept its pace, but the
replies queue at the LLM; at 4 calls the slowest reply took 4.8 s (2.8 × a single call's median), at 6 it took
7.3 s.  Two per core keeps the slowest reply under 5 s."""


def usable_cores(cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a container limited to
    2 CPUs on a 32-core host has 2, not 32)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, _, period = cgroup_cpu_max.read_text(encoding="ascii").partition(" ")
        if quota.strip() != "max" and int(period) > 0:
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 quota here
        pass
    return max(1, cores)


def default_capacity(cpus: int | None = None) -> int:
    """The capacity when ``EVA_MAX_CALLS`` is not set: :data:`CALLS_PER_CORE` per core this process may use."""
    return max(1, usable_cores() if cpus is None else cpus) * CALLS_PER_CORE


class Admission:
    """The worker's call slots (see the module docstring)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ConfigError("EVA_MAX_CALLS must be at least 1 (0 picks a default from the CPU count)",
                              field="max_calls")
        self.capacity = capacity
        self._held: set[Hashable] = set()
        self.admitted = 0
        """Calls admitted since start (inbound and outbound)."""
        self.refused = 0
        """Inbound callers turned away since start because every slot was taken."""

    @property
    def active(self) -> int:
        """Calls holding a slot now."""
        return len(self._held)

    @property
    def free(self) -> int:
        """Slots a new call may take now (0 when full or over, never negative)."""
        return max(0, self.capacity - len(self._held))

    def admit(self, key: Hashable, *, placed_by_eva: bool = False) -> bool:
        """Take a slot for the call ``key``: True when it may go on.  An inbound call is refused when every slot
        is taken; a call Eva placed is always admitted (its slot was free when it was dialled)."""
        if key in self._held:
            return True
        if not placed_by_eva and len(self._held) >= self.capacity:
            self.refused += 1
            return False
        self._held.add(key)
        self.admitted += 1
        return True

    def release(self, key: Hashable) -> None:
        """Give the call's slot back (idempotent; a refused call holds none)."""
        self._held.discard(key)

    def snapshot(self) -> dict[str, int]:
        return {"active": self.active, "capacity": self.capacity, "admitted": self.admitted,
                "refused": self.refused}
