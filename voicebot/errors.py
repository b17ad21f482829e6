"""One error hierarchy for all of Eva.

Every error carries a stable, machine-readable ``code`` (used in HTTP error bodies, logs and metrics) and a
human message.  Subsystems subclass the area error that fits them; callers catch by area.  Always chain the
original cause with ``raise ... from``.
"""

from __future__ import annotations


class EvaError(Exception):
    """Base of every error Eva raises on purpose."""

    code: str = "eva_error"
    http_status: int = 500

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.field = field

    def to_dict(self) -> dict[str, str]:
        body = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


class ConfigError(EvaError):
    code = "config_invalid"


class SetupError(EvaError):
    code = "setup_failed"


class AsteriskError(EvaError):
    """Asterisk could not be started, stopped, reached or reconfigured."""

    code = "asterisk_error"
    http_status = 502


class AriError(AsteriskError):
    code = "ari_error"


class AmiError(AsteriskError):
    code = "ami_error"


class SipCallError(EvaError):
    """A call placed by Eva's own SIP caller failed."""

    code = "sip_call_failed"


class MediaError(EvaError):
    code = "media_error"


class TransferRefused(EvaError):
    """A call transfer the agent asked for is not allowed (not on the agent's list, a loop, too many)."""

    code = "transfer_refused"
    http_status = 422

    def __init__(self, message: str, *, code: str | None = None, options: tuple[str, ...] = ()) -> None:
        super().__init__(message, code=code, field="target")
        self.options = options
        """The names the call may be transferred to instead."""


class SpeechError(EvaError):
    """Base for speech-to-text and text-to-speech failures."""

    code = "speech_error"
    http_status = 503  # a speech engine (a model, a voice) that cannot work: the service, not the request


class SttError(SpeechError):
    code = "stt_failed"


class TtsError(SpeechError):
    code = "tts_failed"


class LlmError(EvaError):
    code = "llm_error"
    http_status = 502


class LlmUnavailable(LlmError):
    code = "llm_unavailable"
    http_status = 503


class LlmModelMissing(LlmError):
    """The LLM server is up but does not have the requested model (e.g. not pulled into Ollama)."""

    code = "llm_model_missing"
    http_status = 503


class LlmTimeout(LlmError):
    """The LLM did not answer (or stalled mid-reply) within its timeout."""

    code = "llm_timeout"
    http_status = 504


class AnalysisError(LlmError):
    """The model's analysis of a message could not be read (not the JSON asked for)."""

    code = "analysis_unreadable"


class KnowledgeError(EvaError):
    code = "knowledge_error"


class DocumentError(KnowledgeError):
    """A document could not be ingested (corrupt, empty, encrypted, too large, unsupported)."""

    code = "document_invalid"
    http_status = 422


class EmbeddingError(KnowledgeError):
    """The embedding model could not be loaded or reached (local model missing, Ollama down or too slow)."""

    code = "embedding_failed"
    http_status = 502


class ChannelError(EvaError):
    code = "channel_error"
    http_status = 502


class WhatsAppError(ChannelError):
    """The WhatsApp Cloud API failed or refused a request.  ``graph_code`` is Meta's error code (e.g. 131047:
    the 24-hour window is closed), ``upstream_status`` the HTTP status it answered with, ``retryable`` whether
    the same request may succeed later (rate limits, outages), ``maybe_delivered`` whether the request reached
    WhatsApp and may have been delivered although no answer proves it (a timeout, a dropped connection): sending
    it again could message the customer twice, so it is never retried automatically."""

    code = "whatsapp_error"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None,
                 graph_code: int | None = None, upstream_status: int | None = None,
                 retryable: bool = False, maybe_delivered: bool = False) -> None:
        super().__init__(message, code=code, field=field)
        self.graph_code = graph_code
        self.upstream_status = upstream_status
        self.retryable = retryable and not maybe_delivered
        self.maybe_delivered = maybe_delivered


class EmailError(ChannelError):
    """The mail server (IMAP in, SMTP out) could not be reached, refused the login or the message."""

    code = "email_error"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None,
                 retryable: bool = True) -> None:
        super().__init__(message, code=code, field=field)
        self.retryable = retryable


class EmailRecipientRefused(EmailError):
    """The mail server refused the recipient address: the address is wrong, not the server (422)."""

    code = "smtp_recipient_refused"
    http_status = 422

    def __init__(self, message: str, *, code: str | None = None, field: str | None = "to") -> None:
        super().__init__(message, code=code, field=field, retryable=False)


class NotFound(EvaError):
    code = "not_found"
    http_status = 404


class Conflict(EvaError):
    code = "conflict"
    http_status = 409


class InvalidInput(EvaError):
    code = "invalid_input"
    http_status = 422


class AuthError(EvaError):
    code = "unauthorized"
    http_status = 401


class Forbidden(EvaError):
    code = "forbidden"
    http_status = 403


class OutboundDialForbidden(Forbidden):
    """A dialplan change by a non-admin could place outbound calls (Dial to a trunk or URI, Transfer)."""

    code = "outbound_dial_admin_only"


# --- HTTP-facing errors (admin API); each maps to one status code -------------------------------------------
class BadRequest(EvaError):
    """The request itself is malformed (not JSON, not multipart, missing body)."""

    code = "bad_request"
    http_status = 400


class TokenReused(AuthError):
    """A refresh token was presented twice: the whole token family is revoked (likely theft)."""

    code = "token_reused"


class PayloadTooLarge(EvaError):
    code = "payload_too_large"
    http_status = 413


class UnsupportedMediaType(EvaError):
    code = "unsupported_media_type"
    http_status = 415


class RateLimited(EvaError):
    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, *, retry_after: float, code: str | None = None,
                 field: str | None = None) -> None:
        super().__init__(message, code=code, field=field)
        self.retry_after = retry_after


class Unavailable(EvaError):
    """A subsystem this request needs is not configured or not reachable right now."""

    code = "unavailable"
    http_status = 503


class AsteriskRejected(AsteriskError):
    """Asterisk refused a configuration we rendered (it was rolled back; the previous one is live)."""

    code = "asterisk_rejected"
    http_status = 422
