"""Typed ARI events.  Pure parsing of the JSON Asterisk sends on the events websocket."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ChannelInfo:
    id: str
    name: str
    state: str
    caller_number: str
    caller_name: str
    exten: str
    context: str

    @classmethod
    def parse(cls, data: dict[str, Any]) -> ChannelInfo:
        caller = data.get("caller") or {}
        dialplan = data.get("dialplan") or {}
        return cls(id=str(data.get("id", "")), name=str(data.get("name", "")), state=str(data.get("state", "")),
                   caller_number=str(caller.get("number", "")), caller_name=str(caller.get("name", "")),
                   exten=str(dialplan.get("exten", "")), context=str(dialplan.get("context", "")))

    @property
    def is_media_channel(self) -> bool:
        """Channels Eva creates for media (ExternalMedia/UnicastRTP, WebSocket, Snoop) are not callers."""
        return self.name.startswith(("UnicastRTP/", "WebSocket/", "Snoop/", "AudioSocket/"))


@dataclass(frozen=True)
class AriEvent:
    type: str
    application: str = ""
    timestamp: str = ""
    channel: ChannelInfo | None = None
    args: tuple[str, ...] = ()
    digit: str = ""
    duration_ms: int = 0
    cause: int = 0
    cause_txt: str = ""
    playback_id: str = ""
    recording_name: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def channel_id(self) -> str:
        return self.channel.id if self.channel else ""

    def stasis_args(self) -> dict[str, str]:
        """``Stasis(app,did=100,agent=demo)`` → ``{"did": "100", "agent": "demo"}``; bare words map to ''."""
        parsed: dict[str, str] = {}
        for arg in self.args:
            key, sep, value = arg.partition("=")
            parsed[key.strip()] = value.strip() if sep else ""
        return parsed


def parse_event(data: dict[str, Any]) -> AriEvent:
    channel = data.get("channel")
    playback = data.get("playback") or {}
    recording = data.get("recording") or {}
    return AriEvent(
        type=str(data.get("type", "")),
        application=str(data.get("application", "")),
        timestamp=str(data.get("timestamp", "")),
        channel=ChannelInfo.parse(channel) if isinstance(channel, dict) else None,
        args=tuple(str(a) for a in data.get("args", ()) or ()),
        digit=str(data.get("digit", "")),
        duration_ms=int(data.get("duration_ms", 0) or 0),
        cause=int(data.get("cause", 0) or 0),
        cause_txt=str(data.get("cause_txt", "")),
        playback_id=str(playback.get("id", "")),
        recording_name=str(recording.get("name", "")),
        raw=data,
    )
