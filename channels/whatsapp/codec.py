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

A media message (``image``, ``video``, ``sticker``, ``document``, ``audio``) names its file by media id in the part of
its type (``{"id", "mime_type", "sha256", "caption", "filename"}``); :func:`parse_media` reads that part, trusting
nothing in it.  Outbound, :func:`build_template_message` and :func:`build_media_message` build the documented
``template`` and media send requests (https://developers.facebook.com/docs/whatsapp/cloud-api/reference/messages),
validated against the Cloud API's limits before anything is sent.
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

from voicebot.errors import (
    AuthError,
    BadRequest,
    Forbidden,
    InvalidInput,
    PayloadTooLarge,
    UnsupportedMediaType,
    WhatsAppError,
)

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 4096
"""The Cloud API's limit on a text message body."""
SIGNATURE_HEADER = "X-Hub-Signature-256"

Disposition = Literal["answer", "decline", "ignore"]
"""What a channel does with an inbound message: answer its text, answer without text to answer (the service
keeps and acknowledges files, transcribes voice notes, declines locations politely), or nothing (reactions,
system notices)."""

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


MEDIA_KINDS = ("image", "video", "sticker", "document", "audio")
"""Message types whose content is a file fetched by media id."""
_MEDIA_ID = re.compile(r"[0-9A-Za-z_.-]{1,128}")
MAX_CAPTION_CHARS = 1024
"""The Cloud API's limit on a media caption (inbound captions are cut there too)."""


@dataclass(frozen=True)
class WaMedia:
    """The file of a media message, as the webhook names it (nothing here is verified: the Graph API's media
    answer and the downloaded bytes are what count)."""

    kind: str
    media_id: str
    """'' when the webhook's id is missing or malformed (the file cannot be fetched)."""
    mime_type: str
    caption: str = ""
    filename: str = ""
    """The sender's file name (documents only); data, never a path."""


def parse_media(raw: Any, kind: str) -> WaMedia | None:
    """The media part of a message (``raw[kind]``) or None when ``kind`` is not a media type.  Never raises:
    whatever the part holds, the fields come back as bounded, clean text."""
    if kind not in MEDIA_KINDS:
        return None
    part = raw.get(kind) if isinstance(raw, Mapping) else None
    part = part if isinstance(part, Mapping) else {}
    media_id = part.get("id")
    media_id = media_id if isinstance(media_id, str) and _MEDIA_ID.fullmatch(media_id) else ""
    mime = _text(part.get("mime_type")).partition(";")[0].strip().lower()[:100]
    caption = part.get("caption") if kind in ("image", "video", "document") else None
    filename = part.get("filename") if kind == "document" else None
    return WaMedia(kind=kind, media_id=media_id, mime_type=mime,
                   caption=_clean(caption)[:MAX_CAPTION_CHARS].strip() if isinstance(caption, str) else "",
                   filename=_clean(filename)[:500] if isinstance(filename, str) else "")


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


TEMPLATE_NAME = re.compile(r"[a-z0-9_]{1,512}")
"""A message template's name as WhatsApp Manager allows it (lower-case letters, digits, underscores)."""
TEMPLATE_LANGUAGE = re.compile(r"[a-z]{2,3}(_[A-Z]{2,4})?")
"""A template language code (``en``, ``en_US``, ``pt_BR``, ``zh_Hant``-style tags are written ``zh_HK``)."""
MAX_TEMPLATE_PARAMETERS = 20
MAX_TEMPLATE_PARAMETER_CHARS = 1024
"""A template body is at most 1024 characters in all, so no single parameter needs more."""
_PARAMETER_FORBIDDEN = re.compile(r"[\n\t]| {5}")
"""What the Cloud API refuses in a body parameter (error 132018: new lines, tabs, more than 4 spaces in a row)."""

OUTBOUND_MEDIA: dict[str, tuple[frozenset[str], int]] = {
    "image": (frozenset({"image/jpeg", "image/png"}), 5 * 1024 * 1024),
    "audio": (frozenset({"audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg"}), 16 * 1024 * 1024),
    "document": (frozenset({
        "text/plain", "application/pdf", "application/msword", "application/vnd.ms-excel",
        "application/vnd.ms-powerpoint",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation"}), 100 * 1024 * 1024),
}
"""What may be uploaded and sent per message type: the supported types and sizes of the media reference
(https://developers.facebook.com/docs/whatsapp/cloud-api/reference/media#supported-media-types)."""
MAX_LINK_CHARS = 2000


def build_template_message(to: str, name: str, language: str, parameters: list[str] | tuple[str, ...] = ()
                           ) -> dict[str, Any]:
    """The JSON of a ``template`` message: an approved template by name and language, its body ``{{1}}``...
    filled from ``parameters`` in order.  InvalidInput (naming the field) for what the Cloud API would refuse."""
    if not TEMPLATE_NAME.fullmatch(name):
        raise InvalidInput("a template name is 1 to 512 lower-case letters, digits and underscores",
                           field="template.name")
    if not TEMPLATE_LANGUAGE.fullmatch(language):
        raise InvalidInput("a template language is a code such as 'en' or 'en_US'", field="template.language")
    if len(parameters) > MAX_TEMPLATE_PARAMETERS:
        raise InvalidInput(f"a template takes at most {MAX_TEMPLATE_PARAMETERS} parameters",
                           field="template.parameters")
    for index, value in enumerate(parameters):
        where = f"template.parameters.{index}"
        if not value.strip():
            raise InvalidInput("a template parameter is empty", field=where)
        if len(value) > MAX_TEMPLATE_PARAMETER_CHARS:
            raise InvalidInput(f"a template parameter is at most {MAX_TEMPLATE_PARAMETER_CHARS} characters",
                               field=where)
        if _PARAMETER_FORBIDDEN.search(value):
            raise InvalidInput("a template parameter may not hold new lines, tabs or more than 4 spaces in a row",
                               field=where)
    template: dict[str, Any] = {"name": name, "language": {"code": language}}
    if parameters:
        template["components"] = [{"type": "body",
                                   "parameters": [{"type": "text", "text": value} for value in parameters]}]
    return {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to, "type": "template",
            "template": template}


def check_link(link: str) -> str:
    """``link`` if it is an https URL WhatsApp can fetch (a host, no credentials, no spaces); else InvalidInput."""
    from urllib.parse import urlsplit

    try:
        url = urlsplit(link)
        url.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise InvalidInput("link is not a valid URL", field="link") from exc
    if (url.scheme != "https" or not url.hostname or url.username is not None or url.password is not None
            or len(link) > MAX_LINK_CHARS or any(ch.isspace() or ord(ch) < 32 for ch in link) or "\\" in link):
        raise InvalidInput(f"link must be an https URL of at most {MAX_LINK_CHARS} characters, without "
                           "credentials or spaces", field="link")
    return link


def build_media_message(to: str, kind: str, *, media_id: str | None = None, link: str | None = None,
                        caption: str = "", filename: str = "") -> dict[str, Any]:
    """The JSON of an ``image``, ``document`` or ``audio`` message: the file by uploaded media id or by https
    ``link``; a caption for images and documents, a file name for documents."""
    if kind not in OUTBOUND_MEDIA:
        raise InvalidInput(f"type must be one of {', '.join(sorted(OUTBOUND_MEDIA))}", field="type")
    if (media_id is None) == (link is None):
        raise InvalidInput("give either link or the uploaded file (content_base64), not both", field="link")
    media: dict[str, Any] = {}
    if media_id is not None:
        if not _MEDIA_ID.fullmatch(media_id):
            raise InvalidInput("the media id is malformed", field="media_id")
        media["id"] = media_id
    else:
        media["link"] = check_link(link or "")
    if caption.strip():
        if kind == "audio":
            raise InvalidInput("an audio message has no caption", field="caption")
        if len(caption) > MAX_CAPTION_CHARS:
            raise InvalidInput(f"a caption is at most {MAX_CAPTION_CHARS} characters", field="caption")
        media["caption"] = caption
    if filename and kind == "document":
        media["filename"] = filename
    return {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to, "type": kind, kind: media}


def check_upload(kind: str, content_type: str, size: int) -> str:
    """The bare, lower-case content type when ``size`` bytes of it may be sent as ``kind``; InvalidInput or
    PayloadTooLarge naming the field otherwise."""
    mime = content_type.partition(";")[0].strip().lower()
    types, limit = OUTBOUND_MEDIA.get(kind, (frozenset(), 0))
    if mime not in types:
        raise UnsupportedMediaType(f"a WhatsApp {kind} is one of {', '.join(sorted(types)) or 'nothing'}, not "
                                   f"{mime or 'no type'}", field="content_type")
    if size <= 0:
        raise InvalidInput("the file is empty", field="content_base64")
    if size > limit:
        raise PayloadTooLarge(f"a WhatsApp {kind} is at most {limit // (1024 * 1024)} MB", field="content_base64")
    return mime


def parse_upload_response(data: Any) -> str:
    """The media id of a successful upload (``{"id": "<media id>"}``); WhatsAppError without one."""
    media_id = data.get("id") if isinstance(data, Mapping) else None
    if not isinstance(media_id, str) or not _MEDIA_ID.fullmatch(media_id):
        raise WhatsAppError("the WhatsApp API answered the upload without a media id", code="whatsapp_bad_response")
    return media_id


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
