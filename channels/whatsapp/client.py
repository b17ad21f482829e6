"""Async client of the WhatsApp Cloud API (Graph API): sends messages from the business phone number.

``POST {api_url}/{phone_number_id}/messages`` with ``Authorization: Bearer <token>``.  Every request has a
timeout.  HTTP 429 and 5xx are retried (``max_attempts`` in all), waiting as long as ``Retry-After`` says (capped)
or with exponential backoff; a connection that could not be opened is retried too, because nothing was sent.
A timeout after the request went out, a connection dropped before the answer and a 200 without a message id
are *not* retried, here or later: the message may have been delivered, and a duplicate is worse than a clear
error.  They raise with ``maybe_delivered=True`` (and ``retryable=False``), which the channel records as an
uncertain send (the Cloud API has no idempotency key that would make a resend safe).  Failures raise
:class:`~voicebot.errors.WhatsAppError` with a stable code (``whatsapp_auth_failed``, ``whatsapp_rate_limited``,
``whatsapp_window_closed``, ``whatsapp_rejected``, ``whatsapp_unavailable``, ``whatsapp_timeout``,
``whatsapp_bad_response``).  The token is never logged.

Besides text: :meth:`WhatsAppClient.send_template` (an approved template, the only message allowed outside the
24-hour window), :meth:`WhatsAppClient.upload_media` (``POST {api_url}/{phone_number_id}/media``, multipart with
``messaging_product=whatsapp``; answers a media id) and :meth:`WhatsAppClient.send_media` (an image, document or
audio by media id or https link).  An upload is retried like a send, and also after a timeout: a second upload only
makes a second media id, never a second message.
"""

from __future__ import annotations

import asyncio
import email.utils
import io
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from channels.whatsapp.codec import (
    SentMessage,
    build_media_message,
    build_template_message,
    build_text_message,
    check_upload,
    parse_graph_error,
    parse_send_response,
    parse_upload_response,
    split_text,
)
from voicebot.config import Settings
from voicebot.errors import WhatsAppError

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


class WhatsAppClient:
    """One business phone number.  Create inside the event loop that uses it; :meth:`close` when done."""

    def __init__(self, api_url: str, phone_number_id: str, token: str, *, timeout: float = 15.0,
                 max_attempts: int = 3, backoff: float = 0.5, max_retry_after: float = 30.0,
                 sleep: Sleep = asyncio.sleep) -> None:
        if not phone_number_id or not token:
            raise WhatsAppError("WhatsApp needs EVA_WHATSAPP_PHONE_NUMBER_ID and EVA_WHATSAPP_TOKEN",
                                code="whatsapp_not_configured")
        self.api_url = api_url.rstrip("/")
        self.url = f"{self.api_url}/{phone_number_id}/messages"
        self.media_url = f"{self.api_url}/{phone_number_id}/media"
        self._token = token
        self.timeout = timeout
        self.max_attempts = max(1, max_attempts)
        self.backoff = backoff
        self.max_retry_after = max_retry_after
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> WhatsAppClient:
        return cls(settings.whatsapp_api_url, settings.whatsapp_phone_number_id, settings.whatsapp_token, **kwargs)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send_text(self, to: str, text: str, *, reply_to: str | None = None) -> list[SentMessage]:
        """Send ``text`` to WhatsApp id ``to``; a text over the Cloud API's 4096 characters goes as several
        messages, cut at paragraph or sentence breaks.  Returns one :class:`SentMessage` per message sent."""
        sent = []
        for index, piece in enumerate(split_text(text)):
            # Only the first piece quotes the message it answers; the rest follow it.
            sent.append(await self.send(build_text_message(to, piece, reply_to=reply_to if index == 0 else None)))
        if not sent:
            raise WhatsAppError("the message text is empty", code="invalid_input", field="text")
        return sent

    async def send_template(self, to: str, name: str, language: str,
                            parameters: list[str] | tuple[str, ...] = ()) -> SentMessage:
        """Send the approved template ``name`` in ``language`` with its body parameters in order."""
        return await self.send(build_template_message(to, name, language, parameters))

    async def send_media(self, to: str, kind: str, *, media_id: str | None = None, link: str | None = None,
                         caption: str = "", filename: str = "") -> SentMessage:
        """Send an ``image``, ``document`` or ``audio`` message by uploaded ``media_id`` or https ``link``."""
        return await self.send(build_media_message(to, kind, media_id=media_id, link=link, caption=caption,
                                                   filename=filename))

    async def upload_media(self, data: bytes, content_type: str, filename: str, *, kind: str) -> str:
        """Upload a file for a ``kind`` message (type and size checked against the Cloud API's limits first);
        returns its media id."""
        mime = check_upload(kind, content_type, len(data))
        headers = {"Authorization": f"Bearer {self._token}"}
        for attempt in range(1, self.max_attempts + 1):
            # A fresh form each attempt: aiohttp consumes one while sending it.  The file name goes as browsers
            # send it (UTF-8, quotes escaped), not percent-encoded, which the server would show as it is.
            form = aiohttp.FormData(quote_fields=False)
            form.add_field("messaging_product", "whatsapp")
            form.add_field("type", mime)
            # A file object: aiohttp writes a large bytes value in one blocking piece (and warns).
            form.add_field("file", io.BytesIO(data), filename=filename or "file", content_type=mime)
            try:
                async with self._client().post(self.media_url, data=form, headers=headers) as response:
                    answer = await _json_or_none(response)
                    if response.status == 200:
                        return parse_upload_response(answer)
                    error = parse_graph_error(response.status, answer)
                    retry_after = _retry_after(response.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError) as exc:
                # Nothing but an unused media id can come of a lost upload, so every transport failure is retried.
                error = WhatsAppError(f"the WhatsApp media upload failed: {exc or type(exc).__name__}",
                                      code="whatsapp_timeout" if isinstance(exc, TimeoutError)
                                      else "whatsapp_unavailable", retryable=True)
                error.__cause__ = exc
                retry_after = None
            automatic = error.retryable and (error.upstream_status is None or error.upstream_status == 429
                                             or error.upstream_status >= 500)
            if not automatic or attempt == self.max_attempts:
                raise error
            delay = min(retry_after, self.max_retry_after) if retry_after is not None \
                else self.backoff * 2 ** (attempt - 1)
            log.warning("WhatsApp media upload failed (%s, attempt %d of %d); retrying in %.1fs", error.code,
                        attempt, self.max_attempts, delay)
            await self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def send(self, payload: dict[str, Any]) -> SentMessage:
        """POST one message payload (see :func:`~channels.whatsapp.codec.build_text_message`)."""
        headers = {"Authorization": f"Bearer {self._token}"}
        for attempt in range(1, self.max_attempts + 1):
            try:
                async with self._client().post(self.url, json=payload, headers=headers) as response:
                    data = await _json_or_none(response)
                    if response.status == 200:
                        try:
                            return parse_send_response(data)
                        except WhatsAppError as exc:
                            # Accepted (200) but no id to prove it: most likely sent, so never sent again.
                            exc.maybe_delivered, exc.retryable = True, False
                            raise
                    error = parse_graph_error(response.status, data)
                    retry_after = _retry_after(response.headers.get("Retry-After"))
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                # Nothing reached the server (refused, unresolvable, connect timed out): safe to try again.
                error = WhatsAppError(f"cannot connect to the WhatsApp API: {exc}", code="whatsapp_unavailable",
                                      retryable=True)
                error.__cause__ = exc
                retry_after = None
            except TimeoutError as exc:
                # The request went out; whether WhatsApp delivered it is unknown.
                raise WhatsAppError(f"the WhatsApp API did not answer within {self.timeout:g}s; the message "
                                    "may have been delivered", code="whatsapp_timeout",
                                    maybe_delivered=True) from exc
            except aiohttp.ClientError as exc:
                raise WhatsAppError(f"the WhatsApp API request failed before its answer ({exc}); the message may "
                                    "have been delivered", code="whatsapp_unavailable",
                                    maybe_delivered=True) from exc
            automatic = error.upstream_status is None or error.upstream_status == 429 or error.upstream_status >= 500
            if not automatic or attempt == self.max_attempts:
                raise error
            delay = min(retry_after, self.max_retry_after) if retry_after is not None \
                else self.backoff * 2 ** (attempt - 1)
            log.warning("WhatsApp send failed (%s, attempt %d of %d); retrying in %.1fs", error.code, attempt,
                        self.max_attempts, delay)
            await self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


async def fetch_media(client: WhatsAppClient, media_id: str, *, max_bytes: int,
                      mime_prefixes: tuple[str, ...] = ("audio/",)) -> tuple[bytes, str]:
    """Download an inbound message's media: ``GET {api_url}/{media_id}`` gives its URL, type, size and sha256
    (https://developers.facebook.com/docs/whatsapp/cloud-api/reference/media), then ``GET url`` with the same
    token gives the bytes.  Refuses a type not in ``mime_prefixes``, a size over ``max_bytes`` (declared or
    actual), a URL on a host that is not Meta's (or the configured API's: a proxy, a test server), and bytes whose
    sha256 differs.  Returns (bytes, mime type)."""
    import base64
    import hashlib
    import re
    from urllib.parse import urlsplit

    if not re.fullmatch(r"[0-9A-Za-z_.-]{1,128}", media_id):
        raise WhatsAppError("the media id is malformed", code="whatsapp_bad_response")
    headers = {"Authorization": f"Bearer {client._token}"}
    session = client._client()
    try:
        async with session.get(f"{client.api_url}/{media_id}", headers=headers) as response:
            info = await _json_or_none(response)
            if response.status != 200:
                raise parse_graph_error(response.status, info)
        if not isinstance(info, dict) or not isinstance(info.get("url"), str):
            raise WhatsAppError("the media answer has no URL", code="whatsapp_bad_response")
        mime = str(info.get("mime_type") or "").split(";")[0].strip().lower()
        if not mime.startswith(mime_prefixes):
            raise WhatsAppError(f"media of type {mime or 'unknown'} is not accepted", code="whatsapp_media_refused")
        size_text = str(info.get("file_size") or "0")
        declared = int(size_text) if size_text.isascii() and size_text.isdigit() and len(size_text) < 19 else 0
        if declared > max_bytes:
            raise WhatsAppError(f"the media is larger than {max_bytes} bytes", code="whatsapp_media_too_large")
        try:
            url = urlsplit(info["url"])
            api = urlsplit(client.api_url)
            host, port, api_port = (url.hostname or "").lower(), url.port, api.port
        except ValueError as exc:  # a port out of range, a malformed host
            raise WhatsAppError("the media URL is malformed", code="whatsapp_bad_response") from exc
        if url.username is not None or url.password is not None or "\\" in info["url"]:
            raise WhatsAppError("the media URL is malformed", code="whatsapp_bad_response")
        meta = url.scheme == "https" and port in (None, 443) and (
            host.endswith((".fbsbx.com", ".facebook.com", ".whatsapp.net")) or host in ("fbsbx.com", "facebook.com"))
        if not meta and (url.scheme, host, port) != (api.scheme, (api.hostname or "").lower(), api_port):
            # Never fetch with the token from anywhere Meta did not put the file.
            raise WhatsAppError("the media URL is not on Meta's servers", code="whatsapp_media_refused")
        chunks: list[bytes] = []
        size = 0
        async with session.get(info["url"], headers=headers, allow_redirects=False) as response:
            if response.status != 200:
                raise parse_graph_error(response.status, await _json_or_none(response))
            async for chunk in response.content.iter_chunked(65536):
                size += len(chunk)
                if size > max_bytes:
                    raise WhatsAppError(f"the media is larger than {max_bytes} bytes",
                                        code="whatsapp_media_too_large")
                chunks.append(chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise WhatsAppError(f"could not download the media: {exc}", code="whatsapp_unavailable",
                            retryable=True) from exc
    except ValueError as exc:  # what aiohttp refuses to request (a URL it cannot use with these headers)
        raise WhatsAppError(f"the media URL cannot be fetched: {exc}", code="whatsapp_bad_response") from exc
    data = b"".join(chunks)
    expected = str(info.get("sha256") or "")
    if expected:
        digest = await asyncio.to_thread(lambda: hashlib.sha256(data).digest())  # 10 MB: off the loop
        if expected not in (digest.hex(), base64.b64encode(digest).decode()):
            raise WhatsAppError("the media does not match its sha256", code="whatsapp_bad_response")
    return data, mime


async def _json_or_none(response: aiohttp.ClientResponse) -> Any:
    try:
        return await response.json(content_type=None)
    except ValueError:  # not JSON (an HTML error page from a proxy, an empty body)
        return None


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
