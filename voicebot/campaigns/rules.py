"""What a campaign is configured with, validated: calling windows per weekday, pacing, retries by outcome, A/B arms
and the circuit breaker; and the campaign's status transitions.

The rules are stored as one JSON document (``Campaign.rules``) and read back through :class:`CampaignRules`, so
the scheduler only ever sees rules that passed these checks.  Windows are local times in the *contact's* zone
(``HH:MM-HH:MM``; an end at or before the start runs past midnight into the next day, and belongs to the day it
starts on; ``24:00`` may end a window).
"""

from __future__ import annotations

import functools
import zoneinfo
from datetime import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from voicebot.campaigns.segments import Segment
from voicebot.errors import Conflict, InvalidInput

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
"""Index = ``datetime.weekday()``."""
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WindowText = Annotated[str, StringConstraints(pattern=r"^([01]\d|2[0-3]):[0-5]\d-(([01]\d|2[0-3]):[0-5]\d|24:00)$")]
RetryOutcome = Literal["busy", "no_answer", "failed", "voicemail"]
OUTCOMES = ("answered", "busy", "no_answer", "failed", "voicemail", "dnc_skipped", "sent", "uncertain")
"""Every way an attempt ends (``sent``/``uncertain``: a WhatsApp or e-mail campaign's message went out, or may
have: a timeout, a crash during the send; an uncertain attempt is never sent again automatically)."""
REACHED = frozenset({"answered", "sent"})
"""Outcomes that count as the contact reached (a call answered, a campaign message accepted for delivery)."""
CHANNELS = ("voice", "whatsapp", "email")
STATUSES = ("draft", "running", "paused", "cancelled", "completed")
MAX_ATTEMPTS = 10
"""No rule may try one contact more often than this."""
DEFAULT_WINDOWS: dict[Weekday, list[str]] = {"mon": ["09:00-18:00"], "tue": ["09:00-18:00"], "wed": ["09:00-18:00"],
                                             "thu": ["09:00-18:00"], "fri": ["09:00-18:00"]}
"""Weekdays, office hours: what a campaign gets when no windows are given (never "any time")."""


@functools.cache
def known_zones() -> frozenset[str]:
    """IANA zone names this system knows (read once: it walks the zone database)."""
    return frozenset(zoneinfo.available_timezones())


def zone(name: str) -> zoneinfo.ZoneInfo:
    """The zone of an IANA name; InvalidInput for anything else.  Checked against the list of known names first, so a
    hostile value (``../../etc/passwd``) never becomes a file path inside zoneinfo."""
    if name not in known_zones():
        raise InvalidInput(f"{name[:64]!r} is not an IANA time zone (e.g. Europe/Madrid)", field="timezone")
    return zoneinfo.ZoneInfo(name)


def parse_window(text: str) -> tuple[time, time | None]:
    """``"22:00-02:00"`` → (22:00, 02:00); an end of ``24:00`` is None (the end of the day)."""
    start, end = text.split("-")
    begin = time(int(start[:2]), int(start[3:]))
    finish = None if end == "24:00" else time(int(end[:2]), int(end[3:]))
    return begin, finish


class Rules(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Pacing(Rules):
    max_concurrent: int = Field(default=1, ge=1, le=500)
    """Calls of this campaign in progress at once."""
    max_per_minute: int = Field(default=10, ge=1, le=600)
    """New attempts started in any 60 seconds."""
    reserve_inbound: int = Field(default=0, ge=0, le=500)
    """Channels kept free for callers: the campaign starts nothing that would leave fewer than this many of the
    system's channels idle (when the dialer knows its channel capacity)."""


class RetryRule(Rules):
    max_attempts: int = Field(ge=1, le=MAX_ATTEMPTS)
    """Attempts in all (the first included) after which an entry whose latest attempt ended so is given up."""
    interval_minutes: int = Field(ge=1, le=7 * 24 * 60)


class Arm(Rules):
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,16}$")]
    agent_id: int | None = Field(default=None, ge=1)
    flow: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")] | None = None
    weight: int = Field(default=50, ge=1, le=100)


class Breaker(Rules):
    """Pause the campaign when too many recent attempts failed (a dead trunk must not burn the whole list)."""

    enabled: bool = True
    window_seconds: int = Field(default=120, ge=10, le=3600)
    min_attempts: int = Field(default=5, ge=1, le=1000)
    failure_ratio: float = Field(default=0.5, gt=0.0, le=1.0)


VariableName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,64}$")]


class WhatsAppTemplate(Rules):
    """The approved template a WhatsApp campaign sends (the Cloud API allows nothing else to a contact who has not
    written in the last 24 hours)."""

    name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,512}$")]
    language: Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}(_[A-Z]{2,4})?$")] = "en"
    parameters: list[VariableName] = Field(default_factory=list, max_length=20)
    """The contact variables (import columns, or ``name``) that fill the body's ``{{1}}``, ``{{2}}``... in order."""


class Roi(Rules):
    """What the admin says a campaign costs and earns, for the analytics' return on investment (per campaign:
    trunks differ in price, but one campaign dials on one trunk and its failover, so its own price is simpler)."""

    cost_per_minute: float = Field(default=0.0, ge=0.0, le=1_000_000.0)
    """Of answered calls (their duration)."""
    cost_per_attempt: float = Field(default=0.0, ge=0.0, le=1_000_000.0)
    """Of every attempt placed or message sent (do-not-call skips cost nothing)."""
    value_per_conversion: float = Field(default=0.0, ge=0.0, le=1_000_000_000.0)
    conversion_variable: VariableName | None = None
    """A conversion: an attempt whose conversation's flow collected this variable..."""
    conversion_value: Annotated[str, StringConstraints(max_length=200)] | None = None
    """...with this value (compared trimmed and case-insensitively; None: any non-empty value)."""


class Voicemail(Rules):
    """Answering-machine detection (Asterisk's ``AMD()``) on a voice campaign's answered calls."""

    message: Annotated[str, StringConstraints(max_length=500)] = ""
    """Said (synthesized in the agent's language) to a machine once its greeting has ended; '' hangs up without a
    message."""


class CampaignRules(Rules):
    windows: dict[Weekday, Annotated[list[WindowText], Field(max_length=4)]] = Field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_WINDOWS.items()}, min_length=1)
    """Local calling windows per weekday; a day left out is not called on."""
    pacing: Pacing = Field(default_factory=Pacing)
    retry: dict[RetryOutcome, RetryRule] = Field(default_factory=dict)
    """Outcomes left out are not retried."""
    arms: list[Arm] = Field(default_factory=list, max_length=2)
    """A/B test: up to two arms, each with its own agent or flow, assigned by weight (none: the campaign's own)."""
    breaker: Breaker = Field(default_factory=Breaker)
    trunk_ids: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list, max_length=8)
    """SIP trunks a voice campaign dials through, in order: when one fails (down, unreachable, congested) the same
    attempt goes at once to the next; busy and no answer never move on.  None: Eva's local carrier."""
    ring_timeout_s: int = Field(default=30, ge=5, le=120)
    """How long a call rings before the attempt ends as ``no_answer``."""
    caller_id: Annotated[str, StringConstraints(pattern=r"^\+?[0-9]{0,20}$")] = ""
    """The number presented to contacts ('' lets the trunk decide)."""
    opt_out_digit: Annotated[str, StringConstraints(pattern=r"^[0-9*#]$")] | None = None
    """A key the callee presses to be put on the do-not-call list (the agent's greeting should say so: "press 9
    to stop these calls"); the call then ends with a goodbye, as when they ask in words.  None: words only.  Never
    the agent's DTMF terminator (``#`` by default), which ends key input without a turn (checked on save)."""
    voicemail: Voicemail | None = None
    """Detect answering machines: a machine is left the message and the attempt ends ``voicemail``; a person goes
    on to the agent.  Detection listens to the first seconds of every answered call before the agent speaks, so it
    is off (None) unless asked for."""
    whatsapp_template: WhatsAppTemplate | None = None
    """What a WhatsApp campaign sends (required to start one)."""
    email_template: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")] | None = None
    """The name of the e-mail template (``/email/templates``) an e-mail campaign sends (required to start one)."""
    roi: Roi = Field(default_factory=Roi)
    segment: Segment = Field(default_factory=list)
    """Who of the imported audience is contacted: conditions on each entry's variables, all of which must hold
    (``voicebot.campaigns.segments``); the others are kept, as ``excluded``, and never contacted.  Empty: everyone."""

    @field_validator("windows")
    @classmethod
    def _windows(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for day, windows in value.items():
            for text in windows:
                start, end = parse_window(text)
                if end == start:
                    raise ValueError(f"{day}: the window {text} is empty")
        return value

    @model_validator(mode="after")
    def _arms(self) -> CampaignRules:
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise ValueError("arm names must differ")
        if len(self.arms) == 2 and any(arm.agent_id is None and arm.flow is None for arm in self.arms):
            raise ValueError("each A/B arm needs an agent_id or a flow")
        return self


def load_rules(data: dict[str, object] | None) -> CampaignRules:
    """Stored rules back as a model (they were validated on the way in)."""
    return CampaignRules.model_validate(data or {})


# ------------------------------ status transitions ------------------------------------------------
Action = Literal["start", "pause", "resume", "cancel", "complete", "trip"]
TRANSITIONS: dict[tuple[str, str], str] = {
    ("start", "draft"): "running",
    ("pause", "running"): "paused",
    ("resume", "paused"): "running",
    ("cancel", "draft"): "cancelled",
    ("cancel", "running"): "cancelled",
    ("cancel", "paused"): "cancelled",
    ("complete", "running"): "completed",
    ("trip", "running"): "paused",  # the circuit breaker: paused, so an admin can resume once the cause is fixed
}
EDITABLE = frozenset({"draft", "paused"})
"""Statuses in which the configuration may be replaced (never while dialling)."""
DELETABLE = frozenset({"draft", "cancelled", "completed"})


def transition(status: str, action: str) -> str:
    """The status ``action`` leads to from ``status``; Conflict (409, ``campaign_transition_invalid``) otherwise."""
    after = TRANSITIONS.get((action, status))
    if after is None:
        raise Conflict(f"a {status} campaign cannot {action}", code="campaign_transition_invalid", field="status")
    return after
