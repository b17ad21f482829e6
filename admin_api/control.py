"""What the admin API needs from the voice side to see and steer live calls.

The voice loop (ARI) implements :class:`CallControl` and hands it to ``create_app``; ``admin_api.ami`` has an
AMI implementation (:class:`admin_api.ami.AmiCallControl`) used when no other one is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class LiveCall:
    """One channel up in Asterisk right now."""

    channel_id: str
    """Asterisk's uniqueid (ARI channel id); ``models.Call.channel_id`` holds the same value."""
    channel: str
    """Channel name, e.g. ``PJSIP/carrier-00000001``."""
    state: str
    """Asterisk channel state: Down, Ring, Ringing, Up, Busy, ..."""
    caller: str
    did: str
    duration_s: float


@dataclass(frozen=True)
class OriginateRequest:
    """Place a call from ``agent`` to ``number`` through the pjsip ``endpoint`` (a trunk)."""

    agent_id: int
    agent_name: str
    number: str
    endpoint: str
    caller_id: str = ""
    timeout_s: float = 30.0

    @property
    def dial_string(self) -> str:
        return f"PJSIP/{self.number}@{self.endpoint}"


@runtime_checkable
class CallControl(Protocol):
    async def live_calls(self) -> list[LiveCall]:
        """Every channel Asterisk has up now."""
        ...

    async def hangup(self, channel_id: str) -> None:
        """Hang the channel up; raises ``NotFound`` when it is not (or no longer) up."""
        ...

    async def originate(self, request: OriginateRequest) -> str:
        """Start an outbound call handled by the agent; returns the new channel id at once (the call rings on
        asynchronously; its ``models.Call`` row appears when the voice loop picks it up)."""
        ...
