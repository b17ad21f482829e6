"""Pure codecs of the WhatsApp Cloud API: the webhook payloads Meta POSTs to us, the Graph API send-message
request and its answers, the webhook signature and the subscription handshake.  No I/O here.

Webhook shape (``object`` is always ``whatsapp_business_account``)::

    {"object": "whatsapp_business_account",
     "entry": [{"id": "<WABA id>",
                "changes": [{"field": "messages",
                             "value": {"messaging_product": "whatsapp",
                                       "metadata": {"display_phone_number": "...", "phone_number_id": "..."},
                                       "contacts": [{"profile": {"name": "..."}, "wa_id": "..."}],
                                       "messages": [{"from": "...", "id": "wamid...", "timestamp": "...",
                                                     "type": "text", "text": {"body": "..."}}],
                                       "statuses": [{"id": "wamid...", "status": "delivered", ...}],
                                       "errors": [{"code": 130429, "title": "...", ...}]}}]}]}

Meta signs the exact request body with the app secret: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from voicebot.errors import AuthError, BadRequest, Forbidden, InvalidInput, WhatsAppError

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 4096
"""The Cloud API's limit on a text message body."""
SIGNATURE_HEADER = "X-Hub-Signature-256"

Disposition = Literal["answer", "decline", "ignore"]
"""What a channel does with an inbound message: answer its text, answer politely that only text is read,
or nothing (reactions, system notices)."""

_DECLINED_TYPES = frozenset({"image", "audio", "video", "document", "sticker", "location", "contacts", "order",
                             "unsupported", "unknown"})
_IGNORED_TYPES = frozenset({"reaction", "system", "request_welcome", "ephemeral"})


@dataclass(frozen=True)
class WaError:
    """An error Meta reports in a webhook (``value.errors``, ``statuses[].errors``, ``messages[].errors``)."""

    code: int | None
    title: str
    details: str = ""

    @classmethod
    def parse(cls, raw: Any) -> WaError:
        data = raw if isinstance(raw, Mapping) else {}
        code = data.get("code")
        details = data.get("error_data", {}).get("details", "") if isinstance(data.get("error_data"), Mapping) else ""
        return cls(code if isinstance(code, int) else None, _text(data.get("title") or data.get("message") or ""),
                   _text(details or ""))


@dataclass(frozen=True)
class WaMessage:
    """One message a WhatsApp user sent to the business number."""

    wamid: str
    wa_id: str
    """The sender (``from``): the user's international number in digits."""
    kind: str
    """The Cloud API message ``type`` (text, image, button, interactive, reaction, ...)."""
    text: str
    """The text to answer: the body of a text message, the title of a tapped button or list row; else ''."""
    timestamp: int
    profile_name: str = ""
    phone_number_id: str = ""
    """The business number it was sent to."""
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def disposition(self) -> Disposition:
        if self.kind in _IGNORED_TYPES:
            return "ignore"
        if self.text.strip():
            return "answer"
        if self.kind in ("text", "button", "interactive"):
            return "ignore"  # nothing to answer (an empty body, an interactive event without a title)
        return "decline"


@dataclass(frozen=True)
class WaStatus:
    """A delivery receipt for a message the business sent."""

    wamid: str
    status: str
    """sent | delivered | read | failed | deleted"""
    recipient_id: str
    timestamp: int
    phone_number_id: str = ""
    errors: tuple[WaError, ...] = ()
    callback_data: str = ""
    """``biz_opaque_callback_data`` of the send this receipt is about (what the sender put there)."""


@dataclass(frozen=True)
class WebhookBatch:
    """Everything one webhook POST carried."""

    messages: tuple[WaMessage, ...] = ()
    statuses: tuple[WaStatus, ...] = ()
    errors: tuple[WaError, ...] = ()
    skipped: int = 0
    """Changes of other webhook fields and malformed message objects (logged, not processed)."""


@dataclass(frozen=True)
class SentMessage:
    """The Graph API's answer to a send: the new message's id and the recipient's WhatsApp id."""

    wamid: str
    wa_id: str
    input: str


# ---------------------------------------------------------------------------------------------- webhooks
def parse_webhook_body(body: bytes) -> WebhookBatch:
    """Decode and parse a webhook POST body.  BadRequest for bytes that are not JSON, InvalidInput for JSON that
    is not a WhatsApp Business Account notification."""
    try:
        # NaN/Infinity are not JSON (RFC 8259) and PostgreSQL's json type refuses them when the payload is stored.
        payload = json.loads(body, parse_constant=_not_json)
    except RecursionError as exc:  # nesting deeper than the interpreter's limit (about 1000 levels)
        raise BadRequest("the webhook body is nested too deeply", code="malformed_json") from exc
    except ValueError as exc:  # not UTF-8, not JSON, or an integer of more than 4300 digits
        raise BadRequest("the webhook body is not valid JSON", code="malformed_json") from exc
    return parse_webhook(payload)


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def parse_webhook(payload: Any) -> WebhookBatch:
    """The messages, statuses and errors of a decoded webhook payload.

    The envelope (``object`` and the ``entry`` list) must be right, else InvalidInput; inside it, nothing
    malformed spoils the rest (a broken entry, change or message is skipped and logged, so the well-formed
    messages of the same delivery are never refused with it).  Changes of other fields (``account_update``,
    template reviews, ...) are counted in ``skipped``."""
    if not isinstance(payload, Mapping) or payload.get("object") != "whatsapp_business_account":
        raise InvalidInput("not a WhatsApp Business Account webhook (object must be 'whatsapp_business_account')",
                           field="object")
    entries = payload.get("entry")
    if not isinstance(entries, list):
        raise InvalidInput("entry must be a list", field="entry")
    messages: list[WaMessage] = []
    statuses: list[WaStatus] = []
    errors: list[WaError] = []
    skipped = 0
    for entry in entries:
        changes = entry.get("changes") if isinstance(entry, Mapping) else None
        if not isinstance(changes, list):
            log.warning("skipping a WhatsApp webhook entry without a changes list")
            skipped += 1
            continue
        for change in changes:
            if not isinstance(change, Mapping) or not isinstance(change.get("value"), Mapping):
                log.warning("skipping a WhatsApp webhook change without a value object")
                skipped += 1
                continue
            if change.get("field") != "messages":
                skipped += 1
                continue
            value: Mapping[str, Any] = change["value"]
            metadata: Mapping[str, Any] = value["metadata"] if isinstance(value.get("metadata"), Mapping) else {}
            phone_number_id = _text(metadata.get("phone_number_id", ""))
            names = _profile_names(value.get("contacts"))
            for raw in _list(value.get("messages")):
                message = _parse_message(raw, names, phone_number_id)
                if message is None:
                    skipped += 1
                else:
                    messages.append(message)
            for raw in _list(value.get("statuses")):
                status = _parse_status(raw, phone_number_id)
                if status is None:
                    skipped += 1
                else:
                    statuses.append(status)
            errors.extend(WaError.parse(e) for e in _list(value.get("errors")))
    return WebhookBatch(tuple(messages), tuple(statuses), tuple(errors), skipped)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _profile_names(contacts: Any) -> dict[str, str]:
    names: dict[str, str] = {}
    for contact in _list(contacts):
        if isinstance(contact, Mapping) and isinstance(contact.get("wa_id"), str):
            profile = contact.get("profile")
            name = profile.get("name") if isinstance(profile, Mapping) else None
            names[contact["wa_id"]] = _clean(name) if isinstance(name, str) else ""
    return names


def _timestamp(raw: Any) -> int:
    try:
        return int(raw)
    except (TypeError, ValueError, OverflowError):  # OverflowError: JSON's Infinity
        return 0


_WAMID = re.compile(r"[\x21-\x7e]{1,255}")
"""A message id: printable ASCII without spaces (Meta's are ``wamid.`` and base64), at most the column's 255."""


def _clean(value: str) -> str:
    """``value`` storable in any text column: lone surrogates (JSON allows ``\\ud800``, UTF-8 does not) become
    ``?`` and NUL characters (PostgreSQL text refuses them) U+FFFD."""
    return value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


def _text(value: Any) -> str:
    """A scalar JSON value as clean text; '' for objects and lists (never ``str()`` of a structure, whose size
    and depth the sender chooses)."""
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, bool | int | float):
        return str(value)
    return ""


def _message_text(raw: Mapping[str, Any], kind: str) -> str:
    part = raw.get(kind)
    if not isinstance(part, Mapping):
        return ""
    if kind == "text":
        body = part.get("body")
    elif kind == "button":  # a quick-reply button of a template message
        body = part.get("text")
    elif kind == "interactive":  # a reply button or a list row the user tapped
        reply = part.get("button_reply") or part.get("list_reply")
        body = reply.get("title") if isinstance(reply, Mapping) else None
    else:
        body = None
    return _clean(body) if isinstance(body, str) else ""


def _parse_message(raw: Any, names: Mapping[str, str], phone_number_id: str) -> WaMessage | None:
    if not isinstance(raw, Mapping):
        log.warning("skipping a WhatsApp message that is not an object")
        return None
    wamid, sender, kind = raw.get("id"), raw.get("from"), raw.get("type")
    if not (isinstance(wamid, str) and wamid and isinstance(sender, str) and sender and isinstance(kind, str)):
        log.warning("skipping a WhatsApp message without id, from or type")
        return None
    if not _WAMID.fullmatch(wamid):
        log.warning("skipping a WhatsApp message whose id is not printable ASCII of at most 255 characters")
        return None
    for error in _list(raw.get("errors")):  # type "unsupported" carries why
        parsed = WaError.parse(error)
        log.info("WhatsApp message %s of type %s came with error %s: %s", wamid, kind, parsed.code, parsed.title)
    return WaMessage(wamid=wamid, wa_id=_clean(sender), kind=_clean(kind), text=_message_text(raw, kind),
                     timestamp=_timestamp(raw.get("timestamp")), profile_name=names.get(sender, ""),
                     phone_number_id=phone_number_id, raw=dict(raw))


def _parse_status(raw: Any, phone_number_id: str) -> WaStatus | None:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("id"), str) or not isinstance(raw.get("status"), str):
        log.warning("skipping a WhatsApp status without id or status")
        return None
    return WaStatus(wamid=_clean(raw["id"]), status=_clean(raw["status"]), recipient_id=_text(raw.get("recipient_id")),
                    timestamp=_timestamp(raw.get("timestamp")), phone_number_id=phone_number_id,
                    errors=tuple(WaError.parse(e) for e in _list(raw.get("errors"))),
                    callback_data=_text(raw.get("biz_opaque_callback_data"))[:512])


# ---------------------------------------------------------------------------------------------- signature
def signature(app_secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends for ``body``."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(app_secret: str, body: bytes, header: str | None) -> None:
    """Raise AuthError (401) when the header is missing, Forbidden (403) when it does not match ``body``."""
    if not app_secret:
        raise ValueError("verify_signature needs the app secret")
    if not header:
        raise AuthError(f"the {SIGNATURE_HEADER} header is missing", code="signature_missing",
                        field=SIGNATURE_HEADER)
    if not hmac.compare_digest(header.strip().encode(), signature(app_secret, body).encode()):
        raise Forbidden(f"the {SIGNATURE_HEADER} signature does not match the body", code="signature_invalid",
                        field=SIGNATURE_HEADER)


def verify_subscription(mode: str, token: str, challenge: str, expected_token: str) -> str:
    """The webhook verification handshake: the challenge to echo when Meta's request is genuine."""
    if mode != "subscribe":
        raise Forbidden("hub.mode must be 'subscribe'", code="verification_failed", field="hub.mode")
    if not expected_token or not hmac.compare_digest(token.encode(), expected_token.encode()):
        raise Forbidden("hub.verify_token does not match", code="verification_failed", field="hub.verify_token")
    if not challenge:
        raise InvalidInput("hub.challenge is empty", field="hub.challenge")
    return challenge


# ---------------------------------------------------------------------------------------------- sending
def build_text_message(to: str, body: str, *, preview_url: bool = False,
                       reply_to: str | None = None) -> dict[str, Any]:
    """The JSON of ``POST /{phone_number_id}/messages`` for a text message (``reply_to``: quote that wamid)."""
    if not body.strip():
        raise InvalidInput("the message text is empty", field="text")
    if len(body) > MAX_TEXT_CHARS:
        raise InvalidInput(f"a WhatsApp text is at most {MAX_TEXT_CHARS} characters", field="text")
    payload: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "text",
        "text": {"preview_url": preview_url, "body": body},
    }
    if reply_to:
        payload["context"] = {"message_id": reply_to}
    return payload


def parse_send_response(data: Any) -> SentMessage:
    """The message id of a successful send; WhatsAppError when the answer lacks it."""
    messages = data.get("messages") if isinstance(data, Mapping) else None
    first = messages[0] if isinstance(messages, list) and messages else None
    wamid = first.get("id") if isinstance(first, Mapping) else None
    if not isinstance(wamid, str) or not wamid:
        raise WhatsAppError("the WhatsApp API answered without a message id", code="whatsapp_bad_response")
    contacts = data.get("contacts")
    contact = contacts[0] if isinstance(contacts, list) and contacts and isinstance(contacts[0], Mapping) else {}
    return SentMessage(wamid=wamid, wa_id=str(contact.get("wa_id", "")), input=str(contact.get("input", "")))


# Graph error codes: https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes
_AUTH_CODES = frozenset({0, 190})
_PERMISSION_CODES = frozenset({3, 10, *range(200, 300)})
_RATE_CODES = frozenset({4, 80007, 130429, 131056})
_WINDOW_CODE = 131047


def parse_graph_error(status: int, data: Any) -> WhatsAppError:
    """A Graph API error answer (``{"error": {"message", "type", "code", "error_data": {"details"}, ...}}``) as
    our error, with a stable code by cause."""
    error = data.get("error") if isinstance(data, Mapping) else None
    error = error if isinstance(error, Mapping) else {}
    raw_code = error.get("code")
    graph_code = raw_code if isinstance(raw_code, int) else None
    message = str(error.get("message") or f"HTTP {status}")
    error_data = error.get("error_data")
    details = str(error_data.get("details", "")) if isinstance(error_data, Mapping) else ""
    text = f"WhatsApp API error {graph_code if graph_code is not None else status}: {message}"
    if details and details not in message:
        text += f" ({details})"
    if status == 429 or graph_code in _RATE_CODES:
        code, retryable = "whatsapp_rate_limited", True
    elif status >= 500:
        code, retryable = "whatsapp_unavailable", True
    elif status == 401 or graph_code in _AUTH_CODES:
        code, retryable = "whatsapp_auth_failed", False
    elif status == 403 or graph_code in _PERMISSION_CODES:
        code, retryable = "whatsapp_forbidden", False
    elif graph_code == _WINDOW_CODE:
        code, retryable = "whatsapp_window_closed", False
    else:
        code, retryable = "whatsapp_rejected", False
    return WhatsAppError(text, code=code, graph_code=graph_code, upstream_status=status, retryable=retryable)


_BREAKS = (re.compile(r"\n\s*\n"), re.compile(r"\n"), re.compile(r"(?<=[.!?])\s+"), re.compile(r"\s+"))


def split_text(text: str, limit: int = MAX_TEXT_CHARS) -> list[str]:
    """``text`` in pieces of at most ``limit`` characters, cut at the last paragraph, line, sentence or word
    break that fits (a hard cut only for a single overlong word)."""
    text = text.strip()
    pieces: list[str] = []
    while len(text) > limit:
        window = text[: limit + 1]
        cut = 0
        for pattern in _BREAKS:
            ends = [m.start() for m in pattern.finditer(window) if 0 < m.start() <= limit]
            if ends:
                cut = ends[-1]
                break
        if cut <= 0:
            cut = limit
        pieces.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    if text:
        pieces.append(text)
    return pieces
