"""A local HTTP server that speaks the WhatsApp Cloud API's send-message wire format (the Graph API is a SaaS
that cannot run here).

``POST /{version}/{phone_number_id}/messages`` with ``Authorization: Bearer <token>`` and the documented body
(``messaging_product: whatsapp``, ``recipient_type``, ``to``, ``type: text``, ``text: {preview_url, body}``)
answers ``{"messaging_product": "whatsapp", "contacts": [{"input", "wa_id"}], "messages": [{"id": "wamid..."}]}``.
What the real API refuses is refused here the same way: a wrong token (190, HTTP 401), a body that is not the
documented shape or a text over 4096 characters (100, HTTP 400), an unknown phone number id (100, HTTP 400).
A test can queue answers (:class:`Reply`): a documented Graph error JSON with its status, a ``Retry-After``,
a body that is not JSON, or a delay (to trip the client's timeout; a delayed success is recorded as sent before
the delay, as a real send that is answered late has reached the customer).  Every accepted message is in
``sent``.

Media (https://developers.facebook.com/docs/whatsapp/cloud-api/reference/media): ``GET /{version}/{media_id}``
answers ``{"messaging_product", "url", "mime_type", "sha256", "file_size", "id"}`` and ``GET url`` (same token)
the bytes; :meth:`FakeGraph.add_media` puts a file there (a real webhook then names its id).  ``POST
/{version}/{phone_number_id}/media`` takes an upload as the reference documents it (multipart/form-data with
``messaging_product=whatsapp``, ``type`` = the file's MIME type and the ``file`` part), refuses a type or size the
supported-media table does not allow, answers ``{"id": "<media id>"}`` and records it in ``uploads``.

Besides text messages, ``/messages`` accepts the documented ``template`` message (``template: {name, language:
{code}, components: [{type: body, parameters: [{type: text, text}]}]}``) and ``image``/``document``/``audio``/
``video``/``sticker`` messages (``{<type>: {id | link, caption?, filename?}}``: exactly one of ``id`` (of an upload
here) and an https ``link``, a caption only where the type has one, a file name only for documents).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web

DATA = Path(__file__).resolve().parent.parent / "data" / "whatsapp"
API_VERSION = "v21.0"


def graph_error(name: str) -> dict[str, Any]:
    """A documented Graph error body from tests/data/whatsapp (e.g. ``error_rate_limit``)."""
    data: dict[str, Any] = json.loads((DATA / f"{name}.json").read_text())
    return data


@dataclass
class Reply:
    """One scripted answer instead of the normal behaviour."""

    status: int = 200
    body: Any = None
    """JSON to answer (None with status 200: the normal success answer)."""
    raw: bytes | None = None
    """Bytes to answer instead of JSON (e.g. a proxy's HTML error page)."""
    retry_after: str | None = None
    delay: float = 0.0


@dataclass
class FakeGraph:
    phone_number_id: str = "106540352242922"
    token: str = "EAAtesttoken"
    replies: deque[Reply] = field(default_factory=deque)
    sent: list[dict[str, Any]] = field(default_factory=list)
    """Bodies of the messages accepted (status 200), in order."""
    requests: int = 0
    message_arrived: asyncio.Event = field(default_factory=asyncio.Event)
    media: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    """Media id → (bytes, mime type)."""
    media_downloads: int = 0
    uploads: list[dict[str, Any]] = field(default_factory=list)
    """Uploads accepted: ``{"messaging_product", "type", "filename", "content_type", "data", "id"}``."""
    media_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Media id → fields of its media answer to replace (``file_size``, ``mime_type``...): a lying answer."""
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None
    _port: int = 0

    @property
    def api_url(self) -> str:
        """What ``EVA_WHATSAPP_API_URL`` would be (the Graph base with its version)."""
        return f"http://127.0.0.1:{self._port}/{API_VERSION}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(f"/{API_VERSION}/{{phone_number_id}}/messages", self._messages)
        app.router.add_post(f"/{API_VERSION}/{{phone_number_id}}/media", self._upload)
        app.router.add_get(f"/{API_VERSION}/{{media_id}}", self._media_info)
        app.router.add_get("/whatsapp_business/attachments/{media_id}", self._media_bytes)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeGraph:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def add_media(self, data: bytes, mime_type: str, *, sha256: str | None = None, url: str | None = None,
                  **answer: Any) -> str:
        """Store a file as an inbound message's media; returns its media id.  ``url``: what the media answer
        says the file's address is (default: this server's download path); ``answer``: other fields of the media
        answer to replace (e.g. a ``file_size`` that lies)."""
        media_id = str(1_000_000_000_000_000 + next(self._ids))
        self.media[media_id] = (data, mime_type)
        if answer:
            self.media_overrides[media_id] = answer
        if sha256 is not None:
            self.media[f"{media_id}:sha256"] = (sha256.encode(), "")
        if url is not None:
            self.media[f"{media_id}:url"] = (url.encode(), "")
        return media_id

    async def _media_info(self, request: web.Request) -> web.StreamResponse:
        import hashlib

        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response(graph_error("error_token_expired"), status=401)
        media_id = request.match_info["media_id"]
        if media_id not in self.media:
            return _invalid_parameter(f"Unsupported get request. Object with ID '{media_id}' does not exist")
        data, mime = self.media[media_id]
        override = self.media.get(f"{media_id}:sha256")
        digest = override[0].decode() if override else hashlib.sha256(data).hexdigest()
        where = self.media.get(f"{media_id}:url")
        url = where[0].decode() if where else f"http://127.0.0.1:{self._port}/whatsapp_business/attachments/{media_id}"
        return web.json_response({"messaging_product": "whatsapp", "url": url, "mime_type": mime, "sha256": digest,
                                  "file_size": str(len(data)), "id": media_id,
                                  **self.media_overrides.get(media_id, {})})

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        """``POST /{phone_number_id}/media``: one multipart upload, checked as the media reference says."""
        self.requests += 1
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response(graph_error("error_token_expired"), status=401)
        if request.match_info["phone_number_id"] != self.phone_number_id:
            return _invalid_parameter("Unsupported post request: unknown phone number id")
        if request.content_type != "multipart/form-data":
            return _invalid_parameter("The upload must be multipart/form-data")
        fields: dict[str, str] = {}
        upload: dict[str, Any] | None = None
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader) or part.name is None:
                return _invalid_parameter("Unexpected part")
            if part.name == "file":
                upload = {"filename": part.filename or "", "content_type": part.headers.get("Content-Type", ""),
                          "data": bytes(await part.read())}
            else:
                fields[part.name] = await part.text()
        if fields.get("messaging_product") != "whatsapp":
            return _invalid_parameter("The parameter messaging_product is required and must be 'whatsapp'")
        if upload is None:
            return _invalid_parameter("The parameter file is required")
        unexpected = set(fields) - {"messaging_product", "type"}
        if unexpected:
            return _invalid_parameter(f"Unexpected parameters: {', '.join(sorted(unexpected))}")
        mime = upload["content_type"].split(";", 1)[0].strip().lower()
        if "type" in fields and fields["type"] != mime:
            return _invalid_parameter("The parameter type does not match the file's content type")
        limit = next((size for types, size in SUPPORTED_MEDIA.values() if mime in types), None)
        if limit is None:
            return _invalid_parameter(f"Param file must be a file with one of the supported types, not {mime}")
        if not upload["data"] or len(upload["data"]) > limit:
            return _invalid_parameter(f"Param file must be between 1 and {limit} bytes")
        media_id = str(2_000_000_000_000_000 + next(self._ids))
        self.media[media_id] = (upload["data"], mime)
        self.uploads.append({"messaging_product": fields["messaging_product"], "type": fields.get("type"),
                             **upload, "id": media_id})
        return web.json_response({"id": media_id})

    async def _media_bytes(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response(graph_error("error_token_expired"), status=401)
        found = self.media.get(request.match_info["media_id"])
        if found is None:
            return web.Response(status=404)
        self.media_downloads += 1
        return web.Response(body=found[0], content_type=found[1].split(";")[0])

    async def wait_for_messages(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while len(self.sent) < count:
                self.message_arrived.clear()
                await self.message_arrived.wait()
        return self.sent

    # ------------------------------------------------------------------ the endpoint
    async def _messages(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        await request.read()  # the whole request is in before any delay: a late answer is to a message received
        delay = 0.0
        if self.replies:
            reply = self.replies.popleft()
            delay = reply.delay
            if reply.status != 200 or reply.body is not None or reply.raw is not None:
                await asyncio.sleep(delay)
                headers = {"Retry-After": reply.retry_after} if reply.retry_after else None
                if reply.raw is not None:
                    return web.Response(status=reply.status, body=reply.raw, content_type="text/html",
                                        headers=headers)
                return web.json_response(reply.body, status=reply.status, headers=headers)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response(graph_error("error_token_expired"), status=401)
        if request.match_info["phone_number_id"] != self.phone_number_id:
            return _invalid_parameter(f"Unsupported post request. Object with ID "
                                      f"'{request.match_info['phone_number_id']}' does not exist")
        try:
            body = await request.json()
        except ValueError:
            return _invalid_parameter("The request body is not JSON")
        problem = _check_message(body, self.media)
        if problem:
            return _invalid_parameter(problem)
        to = body["to"]
        wa_id = to.lstrip("+")
        wamid = "wamid." + base64.b64encode(f"eva-test-{wa_id}-{next(self._ids):06d}".encode()).decode()
        self.sent.append(body)
        self.message_arrived.set()
        # A delayed success is delivered at once and only answered late (what a client that times out meets:
        # the customer has the message although the sender saw no answer).
        await asyncio.sleep(delay)
        return web.json_response({"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": wa_id}],
                                  "messages": [{"id": wamid}]})


SUPPORTED_MEDIA: dict[str, tuple[frozenset[str], int]] = {
    "audio": (frozenset({"audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg"}), 16 * 1024 * 1024),
    "document": (frozenset({
        "text/plain", "application/pdf", "application/msword", "application/vnd.ms-excel",
        "application/vnd.ms-powerpoint", "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation"}), 100 * 1024 * 1024),
    "image": (frozenset({"image/jpeg", "image/png"}), 5 * 1024 * 1024),
    "sticker": (frozenset({"image/webp"}), 500 * 1024),
    "video": (frozenset({"video/3gpp", "video/mp4"}), 16 * 1024 * 1024),
}
"""The media reference's supported types and sizes (written out here, not imported: the fake is the reference)."""
_CAPTIONED = frozenset({"image", "video", "document"})


def _check_template(template: Any) -> str:
    if not isinstance(template, dict):
        return "The parameter template is required"
    name, language = template.get("name"), template.get("language")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9_]{1,512}", name):
        return "Param template['name'] must be a template name"
    if not isinstance(language, dict) or not isinstance(language.get("code"), str) or set(language) != {"code"}:
        return "Param template['language'] must be {\"code\": ...}"
    for component in template.get("components", []):
        if not isinstance(component, dict) or component.get("type") not in ("header", "body", "button"):
            return "Param template['components'] holds an invalid component"
        for parameter in component.get("parameters", []):
            if not isinstance(parameter, dict) or parameter.get("type") != "text" or set(parameter) != {"type", "text"}:
                return "This fake only accepts text parameters"
            if not isinstance(parameter["text"], str) or not parameter["text"].strip():
                return "Param text is required"
            if re.search(r"[\n\t]| {5}", parameter["text"]):
                return "(#132018) Param text cannot have new-line/tab characters or more than 4 consecutive spaces"
    if set(template) - {"name", "language", "components"}:
        return "Unexpected template parameters"
    return ""


def _check_media(kind: str, media: Any, uploaded: dict[str, tuple[bytes, str]]) -> str:
    if not isinstance(media, dict):
        return f"The parameter {kind} is required"
    if ("id" in media) == ("link" in media):
        return f"Param {kind} must have exactly one of id and link"
    if "id" in media and media["id"] not in uploaded:
        return f"Param {kind}['id'] is not a media id of this phone number"
    if "link" in media and (not isinstance(media["link"], str) or not media["link"].startswith("https://")):
        return f"Param {kind}['link'] must be an https URL"
    if "caption" in media and (kind not in _CAPTIONED or not isinstance(media["caption"], str)
                               or len(media["caption"]) > 1024):
        return f"Param {kind}['caption'] is not allowed here or too long"
    if "filename" in media and (kind != "document" or not isinstance(media["filename"], str)):
        return f"Param {kind}['filename'] is only for documents"
    if set(media) - {"id", "link", "caption", "filename"}:
        return f"Unexpected parameters in {kind}"
    return ""


def _check_message(body: Any, uploaded: dict[str, tuple[bytes, str]]) -> str:
    """What is wrong with a message body, per the send-message reference ('' when it is right)."""
    if not isinstance(body, dict):
        return "The request body must be a JSON object"
    if body.get("messaging_product") != "whatsapp":
        return "The parameter messaging_product is required and must be 'whatsapp'"
    if body.get("recipient_type", "individual") != "individual":
        return "recipient_type must be 'individual'"
    to = body.get("to")
    if not isinstance(to, str) or not to.lstrip("+").isdigit():
        return "The parameter to is required and must be a phone number"
    kind = body.get("type")
    if kind == "template" or kind in SUPPORTED_MEDIA:
        problem = _check_template(body.get("template")) if kind == "template" else \
            _check_media(kind, body.get(kind), uploaded)
        if problem:
            return problem
        extra = set(body) - {"messaging_product", "recipient_type", "to", "type", kind, "context",
                             "biz_opaque_callback_data"}
        return f"Unexpected parameters: {', '.join(sorted(extra))}" if extra else ""
    if kind != "text":
        return "This fake accepts types text, template, image, document, audio, video and sticker"
    text = body.get("text")
    if not isinstance(text, dict) or not isinstance(text.get("body"), str) or not text["body"].strip():
        return "The parameter text['body'] is required"
    if len(text["body"]) > 4096:
        return "Param text['body'] must be at most 4096 characters long"
    if "preview_url" in text and not isinstance(text["preview_url"], bool):
        return "Param text['preview_url'] must be a boolean"
    context = body.get("context")
    if context is not None and (not isinstance(context, dict) or not isinstance(context.get("message_id"), str)):
        return "Param context['message_id'] must be a string"
    extra = set(body) - {"messaging_product", "recipient_type", "to", "type", "text", "context",
                         "biz_opaque_callback_data"}
    if extra:
        return f"Unexpected parameters: {', '.join(sorted(extra))}"
    return ""


def _invalid_parameter(details: str) -> web.Response:
    return web.json_response({"error": {"message": "(#100) Invalid parameter", "type": "OAuthException", "code": 100,
                                        "error_data": {"messaging_product": "whatsapp", "details": details},
                                        "fbtrace_id": "AfakeTraceId0000"}}, status=400)
