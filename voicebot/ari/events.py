"""Typed ARI events.  Pure parsing of the JSON Asterisk sends on the events websocket."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_STASIS_ARGS = 16
"""Stasis arguments looked at (the packaged dialplan passes one or two)."""
MAX_STASIS_ARG_CHARS = 256
"""Characters of one Stasis argument looked at."""

STASIS_GOSUB = "eva-stasis"
"""The dialplan context that hands calls to one of Eva's workers (``asterisk/config/extensions.conf``)."""


def stasis_location(channel: dict[str, Any]) -> tuple[str, list[str]]:
    """(ARI application, Stasis arguments) of a channel in ``Stasis()``, from the dialplan location in its JSON;
    ('', []) when it is not in Stasis."""
    dialplan = channel.get("dialplan") or {}
    if str(dialplan.get("app_name", "")).lower() != "stasis":
        return "", []
    app, *arguments = str(dialplan.get("app_data", "")).split(",")
    return app.strip(), arguments


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
        exten, context = str(dialplan.get("exten", "")), str(dialplan.get("context", ""))
        if context == STASIS_GOSUB:
            # Inside Gosub(eva-stasis,s,1(did=...)) the extension is "s": the number is the Stasis did= argument.
            exten = next((a.removeprefix("did=") for a in stasis_location(data)[1] if a.startswith("did=")), exten)
        return cls(id=str(data.get("id", "")), name=str(data.get("name", "")), state=str(data.get("state", "")),
                   caller_number=str(caller.get("number", "")), caller_name=str(caller.get("name", "")),
                   exten=exten, context=context)

    @property
    def endpoint(self) -> str:
        """The PJSIP endpoint the channel belongs to (``PJSIP/trunk-acme-0000002a`` → ``trunk-acme``), or ''
        for other technologies.  Asterisk names the channel; neither the caller nor the dialplan can."""
        tech, sep, rest = self.name.partition("/")
        if tech != "PJSIP" or not sep:
            return ""
        endpoint, dash, sequence = rest.rpartition("-")
        if not dash or not endpoint or not sequence or any(c not in "0123456789abcdef" for c in sequence):
            return ""
        return endpoint

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
        """``Stasis(app,did=100,agent=demo)`` → ``{"did": "100", "agent": "demo"}``; bare words map to ''.

        The arguments are untrusted: a dialplan that passes an unfiltered ``${EXTEN}`` lets the caller append
        ``,key=value`` pairs.  So the *first* occurrence of a key wins (what the dialplan author wrote comes
        before anything a caller appends), keys are lower-cased, and at most ``MAX_STASIS_ARGS`` arguments of
        ``MAX_STASIS_ARG_CHARS`` characters are looked at.  Which keys Eva honours, and from which channels, is
        :mod:`voicebot.voiceapp`'s business (``agent``/``direction`` only from Eva's own originate)."""
        parsed: dict[str, str] = {}
        for arg in self.args[:MAX_STASIS_ARGS]:
            key, sep, value = arg[:MAX_STASIS_ARG_CHARS].partition("=")
            key = key.strip().lower()
            if key and key not in parsed:
                parsed[key] = value.strip() if sep else ""
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
