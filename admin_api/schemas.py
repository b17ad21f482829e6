"""Request and response bodies of the admin API (pydantic).  The OpenAPI document is generated from these.

Request models forbid unknown fields and bound every string, list and number, so nothing oversized or
out of range reaches the database.  Partial-update models declare their fields non-nullable with no default
in the schema: leaving a field out keeps it, sending ``null`` is a 422.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from models.base import as_utc
from voicebot.flows.spec import Step, StepId

MAX_DB_INT = 2**63 - 1
MAX_OFFSET = 1_000_000_000

Id = Annotated[int, Field(ge=1, le=MAX_DB_INT)]
Slug = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")]
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EmailAddress = Annotated[str, StringConstraints(pattern=rf"^{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})+$",
                                                max_length=254)]
"""A plain address (dot-atom local part, host name): nothing that could break a header or an SMTP command."""
Did = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+*#_.-]{1,64}$")]
TransferName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,39}$")]
Extension = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9*#+][A-Za-z0-9*#+_.-]{0,39}$")]
"""A plain dialplan extension in ``eva-inbound`` (no pattern: it cannot start with ``_``)."""
TransferTargets = Annotated[dict[TransferName, Extension], Field(max_length=50)]
TriggerPhrase = Annotated[str, StringConstraints(min_length=1, max_length=100)]
FlowTriggers = Annotated[dict[Slug, Annotated[list[TriggerPhrase], Field(min_length=1, max_length=20)]],
                         Field(max_length=20)]
"""Flow name → phrases that start it when a message contains one (``{"booking": ["book", "appointment"]}``)."""
PhoneNumber = Annotated[str, StringConstraints(pattern=r"^\+?[0-9*#]{1,32}$")]
RoleName = Literal["admin", "designer", "viewer", "pending"]
"""``pending``: signed up (open signup), no access until an admin grants a role."""
KeyRoleName = Literal["admin", "designer", "viewer", "chat"]
Text200 = Annotated[str, StringConstraints(max_length=200)]
Text2000 = Annotated[str, StringConstraints(max_length=2000)]
LANGUAGE_TAG = r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})?$"
"""A BCP-47 language tag as agents use it: ``en``, ``es``, ``es-MX``, ``pt_BR``."""


Timestamp = Annotated[datetime, AfterValidator(as_utc)]
"""A datetime in a response: always with its UTC offset."""


def _drop_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def optional(**constraints: Any) -> Any:
    """A PATCH field: may be omitted (unchanged), may not be null."""
    return Field(default=None, json_schema_extra=_drop_default, **constraints)


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Output(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorDetail(Output):
    code: str
    """Stable, machine-readable (e.g. ``invalid_input``, ``token_reused``, ``asterisk_rejected``)."""
    message: str
    field: str | None
    """The input the error is about (dotted path into the body), or null."""


class ErrorBody(Output):
    error: ErrorDetail


class Pagination(Input):
    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)


# ------------------------------ auth and users ----------------------------------------------------
class LoginRequest(Input):
    username: str = Field(min_length=1, max_length=80)
    password: str = Field(min_length=1, max_length=1024)


class RefreshRequest(Input):
    refresh_token: str = Field(min_length=1, max_length=4096)


class LogoutRequest(Input):
    refresh_token: str | None = Field(default=None, min_length=1, max_length=4096)
    everywhere: bool = False
    """End every session of this user, not just this login."""


class PasswordChange(Input):
    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=8, max_length=1024)


class SignupRequest(Input):
    username: str = Field(min_length=3, max_length=80)
    password: str = Field(min_length=8, max_length=1024)


class MeOut(Output):
    kind: Literal["user", "api_key"]
    id: int
    name: str
    role: RoleName


class TokenOut(Output):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int
    """Seconds until the access token expires."""
    refresh_expires_in: int
    user: MeOut


class UserOut(Output):
    id: int
    username: str
    role: RoleName
    active: bool
    created_at: Timestamp
    updated_at: Timestamp


class UserCreate(Input):
    username: str = Field(min_length=3, max_length=80)
    password: str = Field(min_length=8, max_length=1024)
    role: RoleName = "viewer"


class UserUpdate(Input):
    role: RoleName = optional()
    active: bool = optional()
    password: str = optional(min_length=8, max_length=1024)


class ApiKeyCreate(Input):
    name: str = Field(min_length=1, max_length=120)
    role: KeyRoleName = "viewer"
    """``chat``: only the chat endpoints (a website backend's key)."""
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)
    """The key stops working after this many days (default: never).  It also stops when its owner (the
    caller) is deactivated, deleted or loses the key's role."""


class ApiKeyOut(Output):
    id: int
    name: str
    prefix: str
    role: KeyRoleName | Literal["pending"]
    owner_id: int | None
    """The user who made it (null: made on the host with ``eva apikey create``)."""
    expires_at: Timestamp | None
    created_at: Timestamp
    last_used_at: Timestamp | None
    revoked: bool


class ApiKeyCreated(ApiKeyOut):
    key: str
    """The key itself: shown this once, stored only as a hash."""


# ------------------------------ agents ------------------------------------------------------------
class AgentCreate(Input):
    name: Slug
    description: Text2000 = ""
    persona: str = Field(default="You are a helpful, concise phone assistant.", max_length=20000)
    language: str = Field(default="en", pattern=LANGUAGE_TAG)
    languages: list[Annotated[str, Field(pattern=LANGUAGE_TAG)]] = Field(default_factory=list, max_length=8)
    """Further languages for text messages (each answered in the one it is written in)."""
    voice: Text200 = ""
    llm_model: Text200 = ""
    temperature: float = Field(default=0.3, ge=0.0, le=2.0)
    max_tokens: int = Field(default=160, ge=1, le=8192)
    greeting: Text2000 = "Hello, this is Eva. How can I help you?"
    fallback_message: str = Field(
        default="I'm sorry, I'm having trouble answering right now. Could you say that again?",
        max_length=2000,
    )
    transfer_targets: TransferTargets = Field(default_factory=dict)
    """Where calls may be transferred: name → extension (e.g. ``{"sales": "201"}``); nothing else is."""
    start_flow: Slug | None = None
    """The flow every new conversation with this agent starts in (by name; null: none)."""
    flow_triggers: FlowTriggers = Field(default_factory=dict)
    email_signature: Text2000 = ""
    """Closes the agent's e-mail replies (plain text)."""
    email_address: EmailAddress | None = None
    """Mail to this address is answered by this agent, from it (null: the agent gets mail only as
    ``EVA_EMAIL_AGENT``)."""
    learn_from_media: bool = False
    """Documents contacts send this agent (PDF, DOCX, text) are offered to its knowledge base (off: they are only
    kept and listed)."""
    active: bool = True


class AgentUpdate(Input):
    name: Slug = optional()
    description: Text2000 = optional()
    persona: str = optional(max_length=20000)
    language: str = optional(pattern=LANGUAGE_TAG)
    languages: list[Annotated[str, Field(pattern=LANGUAGE_TAG)]] = optional(max_length=8)
    voice: Text200 = optional()
    llm_model: Text200 = optional()
    temperature: float = optional(ge=0.0, le=2.0)
    max_tokens: int = optional(ge=1, le=8192)
    greeting: Text2000 = optional()
    fallback_message: Text2000 = optional()
    transfer_targets: TransferTargets = optional()
    start_flow: Slug | None = None
    """A flow name, or null to start none (leaving it out keeps it)."""
    flow_triggers: FlowTriggers = optional()
    email_signature: Text2000 = optional()
    email_address: EmailAddress | None = None
    """An address, or null for none (leaving it out keeps it)."""
    learn_from_media: bool = optional()
    active: bool = optional()


class AgentOut(Output):
    id: int
    name: str
    description: str
    persona: str
    language: str
    languages: list[str]
    voice: str
    llm_model: str
    temperature: float
    max_tokens: int
    greeting: str
    fallback_message: str
    transfer_targets: dict[str, str]
    start_flow: str | None
    flow_triggers: dict[str, list[str]]
    email_signature: str
    email_address: str | None = None
    learn_from_media: bool = False
    active: bool
    created_at: Timestamp
    updated_at: Timestamp


class AgentTestRequest(Input):
    message: str = Field(min_length=1, max_length=4000)


class SourceOut(Output):
    document_id: int
    title: str
    page: int | None = None
    similarity: float | None = None


class AgentTestOut(Output):
    reply: str
    sources: list[SourceOut]
    timings: dict[str, float]
    """Milliseconds per stage (retrieval, first token, total ...)."""


class BaseModelsOut(Output):
    backend: str
    default_model: str
    models: list[str]


# ------------------------------ routes ------------------------------------------------------------
class RouteCreate(Input):
    did: Did
    agent_id: Id | None = None
    flow_id: Id | None = None
    description: str = Field(default="", max_length=500)
    enabled: bool = True


class RouteUpdate(Input):
    did: Did = optional()
    agent_id: Id | None = optional()
    flow_id: Id | None = optional()
    description: str = optional(max_length=500)
    enabled: bool = optional()


class RouteOut(Output):
    id: int
    did: str
    agent_id: int | None
    flow_id: int | None
    description: str
    enabled: bool
    created_at: Timestamp


# ------------------------------ knowledge ---------------------------------------------------------
class UploadForm(BaseModel):
    """multipart/form-data fields of ``POST /knowledge/upload`` (documentation only; parsed by hand)."""

    agent_id: Id
    file: bytes
    title: str = Field(default="", max_length=500)
    description: str = Field(default="", max_length=2000)


class DocumentQuery(Pagination):
    agent_id: Id | None = None
    status: Literal["pending", "processing", "ready", "failed"] | None = None


class DocumentOut(Output):
    id: int
    agent_id: int
    title: str
    description: str
    filename: str
    mime_type: str
    size_bytes: int
    sha256: str
    status: str
    error: str
    error_code: str
    """Stable code of a failure (e.g. document_too_complex, document_corrupt); empty unless failed."""
    progress: float
    chunk_count: int
    created_at: Timestamp
    updated_at: Timestamp


class DocumentPage(Output):
    items: list[DocumentOut]
    total: int
    limit: int
    offset: int


class SearchRequest(Input):
    agent_id: Id
    query: str = Field(min_length=1, max_length=2000)
    limit: int = Field(default=5, ge=1, le=50)
    threshold: float = Field(default=0.0, ge=-1.0, le=1.0)


class SearchHitOut(Output):
    chunk_id: str
    document_id: int
    title: str
    page: int | None
    ordinal: int
    text: str
    similarity: float


class StatsQuery(Input):
    agent_id: Id | None = None


class StatsOut(Output):
    documents: int
    by_status: dict[str, int]
    chunks: int
    bytes: int
    avg_chunks_per_document: float


# ------------------------------ calls -------------------------------------------------------------
CallOutcome = Literal["active", "completed", "caller_hangup", "transferred", "continued", "failed", "no_route",
                      "busy", "max_duration", "shutdown"]


class CallQuery(Pagination):
    agent_id: Id | None = None
    caller: str | None = Field(default=None, min_length=1, max_length=64)
    did: str | None = Field(default=None, min_length=1, max_length=64)
    outcome: CallOutcome | None = None
    direction: Literal["inbound", "outbound"] | None = None
    since: datetime | None = None
    """Calls that started at or after this time (ISO 8601)."""
    until: datetime | None = None
    """Calls that started before this time."""


class CallOut(Output):
    id: int
    channel_id: str
    direction: str
    caller: str
    did: str
    agent_id: int | None
    conversation_id: int | None
    started_at: Timestamp
    answered_at: Timestamp | None
    ended_at: Timestamp | None
    outcome: str
    hangup_cause: str
    has_recording: bool
    worker: str


class CallPage(Output):
    items: list[CallOut]
    total: int
    limit: int
    offset: int


class CallTurnOut(Output):
    id: int
    index: int
    kind: str
    user_text: str
    bot_text: str
    spoken_text: str
    interrupted: bool
    speech_end: Timestamp | None
    stt_done_ms: float | None
    llm_first_token_ms: float | None
    first_sentence_ready_ms: float | None
    tts_first_audio_ms: float | None
    first_frame_out_ms: float | None
    created_at: Timestamp


class CallDetail(CallOut):
    turns: list[CallTurnOut]
    flow_runs: list[FlowRunOut] = []
    """The flows this call ran, with the variables they collected."""


class LiveCallOut(Output):
    channel_id: str
    channel: str
    state: str
    caller: str
    did: str
    duration_s: float
    call_id: int | None
    """The ``calls`` row of this channel, once the voice loop has written it."""


class OutgoingCall(Input):
    agent_id: Id
    number: PhoneNumber
    trunk_id: Id | None = None
    """Trunk to dial through; omitted → the local carrier endpoint."""
    caller_id: str = Field(default="", max_length=64, pattern=r"^[A-Za-z0-9 +()._-]*$")
    timeout_s: float = Field(default=30.0, ge=5.0, le=120.0)


class OutgoingCallOut(Output):
    channel_id: str
    status: Literal["originating"] = "originating"


# ------------------------------ SIP trunks --------------------------------------------------------
Hostname = Annotated[
    str,
    StringConstraints(
        min_length=1,
        max_length=253,
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?){0,20}$",
    ),
]
SipUser = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.!~*'()&=+$,-]{0,128}$")]
Codec = Literal["ulaw", "alaw", "g722", "g729", "gsm", "opus", "slin", "slin16"]


class TrunkCreate(Input):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")
    host: Hostname
    """Provider host name or IPv4 address."""
    port: int = Field(default=5060, ge=1, le=65535)
    transport: Literal["udp", "tcp"] = "udp"
    username: SipUser = ""
    password: str = Field(default="", max_length=256, pattern=r"^[^\x00-\x1f\x7f]*$")
    """Write-only: stored for Asterisk, never returned."""
    registration: bool = False
    codecs: list[Codec] = Field(default=["ulaw", "alaw"], min_length=1, max_length=8)
    dids: list[Did] = Field(default_factory=list, max_length=200)
    from_user: SipUser = ""
    from_domain: Hostname | Literal[""] = ""
    verified_caller_id: bool = False
    """The provider attests caller numbers: callers are recognised (memory across calls and channels)."""
    enabled: bool = True


class TrunkUpdate(Input):
    host: Hostname = optional()
    port: int = optional(ge=1, le=65535)
    transport: Literal["udp", "tcp"] = optional()
    username: SipUser = optional()
    password: str = optional(max_length=256, pattern=r"^[^\x00-\x1f\x7f]*$")
    registration: bool = optional()
    codecs: list[Codec] = optional(min_length=1, max_length=8)
    dids: list[Did] = optional(max_length=200)
    from_user: SipUser = optional()
    from_domain: Hostname | Literal[""] = optional()
    verified_caller_id: bool = optional()
    enabled: bool = optional()


class TrunkOut(Output):
    id: int
    name: str
    endpoint: str
    """The pjsip endpoint Asterisk knows this trunk as (dial ``PJSIP/<number>@<endpoint>``)."""
    host: str
    port: int
    transport: str
    username: str
    has_password: bool
    registration: bool
    codecs: list[str]
    dids: list[str]
    from_user: str
    from_domain: str
    verified_caller_id: bool
    enabled: bool
    created_at: Timestamp
    updated_at: Timestamp


class TrunkStateEventOut(Output):
    id: int
    trunk_id: int
    state: str
    previous: str
    detail: str
    at: Timestamp


class TrunkStatusOut(Output):
    trunk_id: int
    endpoint: str
    asterisk: Literal["live", "offline"]
    """offline: this API does not control an Asterisk; config applies at its next start."""
    endpoint_found: bool
    endpoint_state: str
    """Asterisk's DeviceState of the endpoint (Not in use, Unavailable, In use, ...)."""
    contacts: list[dict[str, str]]
    registration: str | None
    """Outbound registration status (Registered, Unregistered, Rejected, ...); null when not registering."""
    state: Literal["up", "down", "rejected", "registering", "unknown", "disabled"]
    """From the trunk monitor (AMI events and a periodic re-read): up (answers qualify, registered if it
    registers), down (qualify unanswered, or not loaded), rejected (registration refused), registering, unknown
    (not read yet, or Asterisk unreachable), disabled."""
    state_detail: str
    since: Timestamp | None
    """When the trunk entered its state (null: never recorded)."""
    monitored: bool
    """False when this API runs without Asterisk: state is then unknown and the call counts are 0."""
    active_calls: int
    """Channels on the trunk now (either direction)."""
    calls_today: int
    """Channels Asterisk created on the trunk since 00:00 UTC (either direction, answered or not), counted from
    ``calls_counted_since`` (Eva's start, when that was later)."""
    calls_counted_since: Timestamp | None
    recent_changes: list[TrunkStateEventOut]
    """The last state changes, newest first (all of them: ``/history``)."""


class TrunkHistoryPage(Output):
    items: list[TrunkStateEventOut]
    total: int
    limit: int
    offset: int


# ------------------------------ conversations -----------------------------------------------------
class ConversationQuery(Pagination):
    channel: Literal["voice", "whatsapp", "email", "chat"] | None = None
    agent_id: Id | None = None
    contact_id: Id | None = None


class ConversationOut(Output):
    id: int
    channel: str
    contact_id: int | None
    agent_id: int | None
    external_id: str
    needs_human: bool = False
    """E-mail triage set it aside for a person: no automatic answer goes out in it."""
    category: str | None = None
    """The category of its latest classified message."""
    started_at: Timestamp
    updated_at: Timestamp


class ConversationDetail(ConversationOut):
    flow_runs: list[FlowRunOut] = []
    """The flows this conversation ran, with the variables they collected."""


class ConversationPage(Output):
    items: list[ConversationOut]
    total: int
    limit: int
    offset: int


class MessageOut(Output):
    id: int
    conversation_id: int
    role: str
    text: str
    created_at: Timestamp
    prompt_tokens: int | None
    completion_tokens: int | None
    timings: dict[str, Any] | None
    citations: list[dict[str, Any]] | None
    tool_calls: list[dict[str, Any]] | None
    attachments: list[dict[str, Any]] | None = None
    """Files that came or went with it: name, content_type, size, sha256, and ``path`` when Eva kept the file
    (download it from ``/messages/{id}/attachments/{index}``)."""
    sentiment: str | None = None
    """positive | neutral | negative, once the contact's message was analysed."""
    category: str | None = None
    """The admin's category the message was put in, once analysed."""


class MessagePage(Output):
    items: list[MessageOut]
    total: int
    limit: int
    offset: int


# ------------------------------ dialplans ---------------------------------------------------------
class DialplanSummary(Output):
    name: str
    source: Literal["packaged", "override", "custom"]
    """packaged: as shipped; override: an edited copy of a shipped file; custom: created through the API."""
    size: int
    contexts: list[str]


class DialplanOut(DialplanSummary):
    content: str


class DialplanPut(Input):
    content: str = Field(min_length=1, max_length=262144)


class DialplanApplied(DialplanOut):
    applied: bool
    """True when Asterisk reloaded it; false when this API runs without a live Asterisk."""


# ------------------------------ flows -------------------------------------------------------------
# The step schema lives with the engine (voicebot.flows.spec): one definition for the API, the OpenAPI document
# and the runtime.
FlowStep = Step


class FlowCreate(Input):
    name: Slug
    description: Text2000 = ""
    agent_id: Id | None = None
    start_step: StepId
    steps: list[FlowStep] = Field(min_length=1, max_length=200)
    enabled: bool = True


class FlowUpdate(Input):
    name: Slug = optional()
    description: Text2000 = optional()
    agent_id: Id | None = optional()
    start_step: StepId = optional()
    steps: list[FlowStep] = optional(min_length=1, max_length=200)
    enabled: bool = optional()


class FlowOut(Output):
    id: int
    name: str
    description: str
    agent_id: int | None
    start_step: str
    steps: list[dict[str, Any]]
    enabled: bool
    created_at: Timestamp
    updated_at: Timestamp


class FlowRunOut(Output):
    """One run of a flow in a conversation or call: where it is and what it collected."""

    id: int
    flow_id: int | None
    """None once the flow was deleted."""
    flow_name: str
    channel: str
    conversation_id: int | None
    call_id: int | None
    contact_id: int | None
    status: str
    step: str
    result: str | None
    variables: dict[str, str]
    created_at: Timestamp
    updated_at: Timestamp


class FlowRunQuery(Pagination):
    status: Literal["active", "ended"] | None = None


class FlowRunPage(Output):
    items: list[FlowRunOut]
    total: int
    limit: int
    offset: int


# ------------------------------ health ------------------------------------------------------------
class HealthCheck(Output):
    name: str
    status: Literal["ok", "error", "unconfigured"]
    latency_ms: float | None
    detail: str = ""


class CallLoad(Output):
    active: int
    """Calls holding a slot now."""
    capacity: int
    """Calls this worker admits at once (``EVA_MAX_CALLS``); inbound callers beyond it hear the busy prompt."""
    refused: int
    """Inbound callers turned away since start because every slot was taken."""


class HealthOut(Output):
    status: Literal["ok", "degraded", "down"]
    version: str
    uptime_s: float
    checks: list[HealthCheck]
    calls: CallLoad | None = None
    """This worker's call load (only when it runs the voice app)."""


class LivenessOut(Output):
    status: Literal["ok"] = "ok"
    asterisk: Literal["running", "restarting", "down"] | None = None
    """The local Asterisk's state when Eva manages it (a crash shows here within seconds while it is restarted)."""
