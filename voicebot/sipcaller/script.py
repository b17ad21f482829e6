"""What a scripted call does (timed actions) and what came of it.  Plain data, JSON round-trippable."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

ActionKind = Literal["play", "dtmf", "hangup", "wait"]


@dataclass(frozen=True)
class Action:
    """One step.  ``at`` is seconds after the call is answered (media up).

    ``play``: stream ``path`` (a WAV file) into the call.  ``dtmf``: send ``digits`` (RFC 4733).
    ``hangup``: end the call.  ``wait``: nothing; only keeps the script going until ``at``.

    With ``when_quiet`` the step waits for the far end instead of a guessed time: it is done at the first moment
    after ``at`` (and after the steps before it) when the far end has been heard and then stayed quiet for
    ``when_quiet`` seconds -- "ask once the greeting is over", "hang up once the reply is over".

    With ``when_heard`` the step is done once the far end, after this caller's own plays have ended, has been
    speaking for ``when_heard`` seconds without a pause longer than a breath -- "talk over the reply one second
    into it", wherever the reply falls on a loaded machine.
    """

    kind: ActionKind
    at: float = 0.0
    path: str = ""
    digits: str = ""
    when_quiet: float = 0.0
    when_heard: float = 0.0


def schedule(actions: tuple[Action, ...]) -> list[tuple[int, Action]]:
    """The order the steps are done in: by ``at``, except that a ``when_quiet`` (or ``when_heard``) step comes after
    every step listed
    before it.  (A plain sort by ``at`` put a ``when_quiet`` hang-up, ``at`` 0, before the timed plays listed ahead
    of it: the call ended after the greeting and the far end never heard them.)"""
    keyed: list[tuple[float, int, Action]] = []
    latest = 0.0
    for index, action in enumerate(actions):
        latest = max(latest, action.at)
        keyed.append((latest if action.when_quiet > 0 or action.when_heard > 0 else action.at, index, action))
    return [(index, action) for _key, index, action in sorted(keyed, key=lambda item: (item[0], item[1]))]


@dataclass(frozen=True)
class CallScript:
    uri: str
    """Full SIP URI to call, e.g. ``sip:100@127.0.0.1:5060``."""
    actions: tuple[Action, ...] = ()
    record_path: str = ""
    timeout: float = 30.0
    """Hang up this many seconds after the call is answered (or give up ringing)."""
    bind_ip: str = "127.0.0.1"
    bind_port: int = 5070
    from_user: str = "caller"
    clock_rate: int = 16000
    no_vad: bool = True
    """Keep sending RTP in silence (pjsua's VAD would otherwise pause the stream)."""
    answer: bool = False
    """Be the callee instead: listen on ``bind_ip:bind_port`` for one call (``uri`` is not dialled), answer it
    and run the actions; ``timeout`` bounds the wait for the call and, again, the call once answered."""
    refuse: dict[str, int] = field(default_factory=dict)
    """Callee: numbers (the user part Eva dials) not answered but given this final status instead (486 busy, 503
    unavailable, ...), or 180: it rings until the caller gives up.  Each such call is listed in ``events`` as
    ``{"kind": "incoming", "number": ..., "status": ..., "at": <seconds since start>}``."""
    calls: int = 0
    """Callee: keep listening (after the answered call, if any) until this many calls came in and ended, or the
    timeout; 0: the first answered call ends it."""
    answer_briefly: dict[str, float] = field(default_factory=dict)
    """Callee: numbers answered (200 OK) -- any number of them at once -- and hung up this many seconds later, with no
    actions (those are for the one call not listed here): people who pick up and hang up, for campaign tests with
    many answered calls through one trunk.  Listed in ``events`` like ``refuse`` (``"status": 200``); each counts
    towards ``calls``.  One callee holds at most 4 calls at once (ringing, answered or the scripted one): the
    pjsua2 wheel is built with ``PJSUA_MAX_CALLS`` 4, above which pjsua itself answers 486 (a false "busy")."""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CallScript:
        data: dict[str, Any] = json.loads(text)
        data["actions"] = tuple(Action(**a) for a in data.get("actions", ()))
        return cls(**data)


@dataclass
class CallResult:
    connected: bool = False
    status_code: int = 0
    """Final SIP status of the INVITE (200 when answered; 401/403/404/486/... when refused)."""
    reason: str = ""
    duration: float = 0.0
    """Seconds from answer to disconnect."""
    record_path: str = ""
    record_offset: float = 0.0
    """Seconds after answer at which the recording's first sample was taken."""
    events: list[dict[str, Any]] = field(default_factory=list)
    """What the caller did and when (seconds after answer): ``{"kind": "play", "at": 1.0, "end": 3.2}``."""
    remote_hangup: bool = False
    error: str = ""
    remote_uri: str = ""
    """The other party as SIP saw it (for a callee: who called, the From header)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CallResult:
        return cls(**json.loads(text))
