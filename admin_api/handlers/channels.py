"""Text channels: the WhatsApp Cloud API webhook (public: Meta calls it, authenticated by the payload signature)
and handshake, sending WhatsApp messages and e-mails, an e-mail turn with the agent, and each channel's
conversations."""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlmodel import Session, col, select

from admin_api.framework import ApiRouter, Ctx
from admin_api.handlers.common import changed, get_row, row_or_404, saved
from admin_api.schemas import EmailAddress, Input, Output, Pagination, Slug, SourceOut, Timestamp, optional
from channels import store
from channels.email import templates
from channels.email.message import MAX_OUTGOING_ATTACHMENTS, OutgoingFile
from channels.whatsapp.codec import (
    MAX_CAPTION_CHARS,
    MAX_LINK_CHARS,
    MAX_TEMPLATE_PARAMETER_CHARS,
    MAX_TEMPLATE_PARAMETERS,
    MAX_TEXT_CHARS,
    OUTBOUND_MEDIA,
    SIGNATURE_HEADER,
)
from models import EmailTemplate
from voicebot.errors import Conflict, InvalidInput

whatsapp = ApiRouter("whatsapp")
email = ApiRouter("email")

WhatsAppId = Annotated[str, StringConstraints(pattern=r"^\+?[0-9]{4,20}$")]


# ------------------------------ schemas -----------------------------------------------------------
class WhatsAppWebhookPayload(BaseModel):
    """A Cloud API notification (only documented here: the handler checks the signature over the raw bytes)."""

    model_config = ConfigDict(extra="allow")
    object: Literal["whatsapp_business_account"]
    entry: list[dict[str, Any]]


class WhatsAppVerifyQuery(Input):
    mode: str = Field(alias="hub.mode", max_length=32)
    verify_token: str = Field(alias="hub.verify_token", max_length=256)
    challenge: str = Field(alias="hub.challenge", min_length=1, max_length=256)


class WebhookAck(Output):
    accepted: int
    """New messages stored; each is answered in the background."""
    duplicates: int
    ignored: int
    statuses: int


MAX_UPLOAD_BASE64 = max(limit for _types, limit in OUTBOUND_MEDIA.values()) * 4 // 3 + 4
"""Base64 of the largest file WhatsApp takes (the request body limit of the API is far lower: use ``link``)."""
TemplateName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,512}$")]
TemplateParameter = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEMPLATE_PARAMETER_CHARS)]


class WhatsAppTemplateIn(Input):
    name: TemplateName
    """The approved template's name in WhatsApp Manager."""
    language: Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}(_[A-Z]{2,4})?$")]
    """The template's language code (``en``, ``en_US``, ``es_MX``)."""
    parameters: Annotated[list[TemplateParameter], Field(max_length=MAX_TEMPLATE_PARAMETERS)] = Field(
        default_factory=list)
    """The body's ``{{1}}``, ``{{2}}``... in order (no new lines, tabs or more than 4 spaces in a row)."""


class WhatsAppSendRequest(Input):
    """``type`` ``text`` (the default): ``text``.  ``template``: ``template``.  ``image``, ``document``, ``audio``:
    either ``link`` (https) or the file as ``content_base64`` with ``filename`` and ``content_type`` (uploaded to
    the Graph API first; WhatsApp's types and sizes, and this API's 2 MB request limit), and an optional
    ``caption`` (not for audio)."""

    to: WhatsAppId
    """The recipient's WhatsApp number, international format (``+15551234567`` or ``15551234567``)."""
    type: Literal["text", "template", "image", "document", "audio"] = "text"
    text: str | None = Field(default=None, min_length=1, max_length=MAX_TEXT_CHARS)
    template: WhatsAppTemplateIn | None = None
    link: str | None = Field(default=None, min_length=9, max_length=MAX_LINK_CHARS, pattern=r"^https://")
    content_base64: str | None = Field(default=None, min_length=1, max_length=MAX_UPLOAD_BASE64)
    filename: str | None = Field(default=None, min_length=1, max_length=240)
    content_type: str | None = Field(default=None, min_length=3, max_length=100)
    caption: str | None = Field(default=None, min_length=1, max_length=MAX_CAPTION_CHARS)


class WhatsAppSendOut(Output):
    message_id: str
    """The WhatsApp message id (wamid)."""
    conversation_id: int
    stored_message_id: int
    contact_id: int


VariableName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
ContentType = Annotated[str, StringConstraints(
    pattern=r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}$")]
"""A plain ``type/subtype`` (no parameters: nothing that could add to a MIME header)."""
MAX_ATTACHMENT_BASE64 = 2 * 1024 * 1024
"""Characters of one attachment's base64 (the whole JSON body is capped at 2 MB anyway, so the files of one
request are about 1.5 MB together; the service also holds them to EVA_EMAIL_ATTACHMENT_MAX_BYTES)."""


class EmailAttachmentIn(Input):
    filename: str = Field(min_length=1, max_length=255)
    """Shown to the recipient; cleaned (no path, no control characters) before it is used."""
    content_type: ContentType = "application/octet-stream"
    content_base64: str = Field(max_length=MAX_ATTACHMENT_BASE64)
    """The file's bytes, base64 (RFC 4648, padded)."""


class EmailSendRequest(Input):
    """Either ``subject`` and ``body`` (with ``html: true`` an HTML part is made from the body), or a
    ``template`` filled with ``variables``.  ``agent`` (a name) sends it From that agent's address with its
    signature; ``attachments`` go beside the text (and HTML)."""

    to: EmailAddress
    subject: str = Field(default="", max_length=200)
    body: str = Field(default="", max_length=100_000)
    html: bool = False
    template: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")] | None = None
    variables: Annotated[dict[VariableName, Annotated[str, StringConstraints(max_length=10_000)]],
                         Field(max_length=50)] = Field(default_factory=dict)
    agent: Slug | None = None
    """The agent it is sent for (its address and signature); null: the channel's address, no signature."""
    attachments: list[EmailAttachmentIn] = Field(default_factory=list, max_length=MAX_OUTGOING_ATTACHMENTS)


class EmailTemplateIn(Input):
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")]
    subject: str = Field(min_length=1, max_length=400)
    text: str = Field(min_length=1, max_length=65_536)
    """The plain-text body (Jinja2: ``{{ name }}``, ``{% if %}``); every e-mail has one."""
    html: str = Field(default="", max_length=65_536)
    """An HTML body (variables are escaped); empty: text only."""


class EmailTemplateUpdate(Input):
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")] = optional()
    subject: str = optional(min_length=1, max_length=400)
    text: str = optional(min_length=1, max_length=65_536)
    html: str = optional(max_length=65_536)


class EmailTemplateOut(Output):
    id: int
    name: str
    subject: str
    text: str
    html: str
    created_at: Timestamp
    updated_at: Timestamp


class EmailSendOut(Output):
    message_id: str
    """The e-mail's Message-ID header."""
    conversation_id: int
    stored_message_id: int
    contact_id: int


class EmailChatRequest(Input):
    email: EmailAddress
    """Who writes (the agent's answer is e-mailed there)."""
    message: str = Field(min_length=1, max_length=8000)
    subject: str = Field(default="", max_length=200)
    agent: Slug | None = None
    """The agent that answers (from its address); null: ``EVA_EMAIL_AGENT``."""


class EmailChatOut(Output):
    reply: str
    message_id: str
    """The Message-ID of the e-mail that carried the reply."""
    conversation_id: int
    stored_message_id: int
    sources: list[SourceOut]


class ChannelConversationOut(Output):
    id: int
    contact_id: int | None
    contact_name: str
    address: str
    """The contact's WhatsApp id or e-mail address."""
    agent_id: int | None
    external_id: str
    messages: int
    started_at: Timestamp
    updated_at: Timestamp


class ChannelConversationPage(Output):
    items: list[ChannelConversationOut]
    total: int
    limit: int
    offset: int


async def _conversations(ctx: Ctx, channel: str, query: Pagination) -> ChannelConversationPage:
    rows, total = await ctx.services.db(lambda s: store.list_conversations(s, channel, query.limit, query.offset))
    return ChannelConversationPage(items=[ChannelConversationOut.model_validate(r) for r in rows], total=total,
                                   limit=query.limit, offset=query.offset)


# ------------------------------ WhatsApp ----------------------------------------------------------
@whatsapp.get("/whatsapp/webhook", role=None, errors=(403, 503),
              response_media={"text/plain": {"type": "string"}},
              summary="Webhook verification handshake (Meta sends hub.mode, hub.verify_token, hub.challenge)")
async def whatsapp_verify(ctx: Ctx, query: WhatsAppVerifyQuery) -> web.StreamResponse:
    challenge = ctx.services.need_whatsapp().verify(query.mode, query.verify_token, query.challenge)
    return web.Response(text=challenge, content_type="text/plain")


@whatsapp.post("/whatsapp/webhook", role=None, errors=(400, 401, 403, 413, 422, 503),
               request_media={"application/json": WhatsAppWebhookPayload},
               summary=f"Cloud API notifications (signed with {SIGNATURE_HEADER}); answered in the background")
async def whatsapp_webhook(ctx: Ctx) -> WebhookAck:
    service = ctx.services.need_whatsapp()
    body = await ctx.request.read()
    accepted = await service.accept(body, ctx.request.headers.get(SIGNATURE_HEADER))
    return WebhookAck(accepted=accepted.accepted, duplicates=accepted.duplicates, ignored=accepted.ignored,
                      statuses=accepted.statuses)


_MEDIA_FIELDS = ("link", "content_base64", "filename", "content_type", "caption")


def _only(body: WhatsAppSendRequest, allowed: tuple[str, ...]) -> None:
    """Refuse the fields of another message type (a template with a text would silently lose the text)."""
    for name in ("text", "template", *_MEDIA_FIELDS):
        if name not in allowed and getattr(body, name) is not None:
            raise InvalidInput(f"{name} does not go with type {body.type!r}", field=name)


@whatsapp.post("/whatsapp/send-message", role="designer", errors=(413, 415, 502, 503),
               summary="Send a WhatsApp text, template, image, document or audio from the business number "
                       "(stored in the contact's conversation)")
async def whatsapp_send(ctx: Ctx, body: WhatsAppSendRequest) -> WhatsAppSendOut:
    service = ctx.services.need_whatsapp()
    if body.type == "text":
        _only(body, ("text",))
        if body.text is None:
            raise InvalidInput("a text message needs text", field="text")
        sent = await service.send_message(body.to, body.text)
    elif body.type == "template":
        _only(body, ("template",))
        if body.template is None:
            raise InvalidInput("a template message needs template: {name, language, parameters}", field="template")
        sent = await service.send_template(body.to, body.template.name, body.template.language,
                                           body.template.parameters)
    else:
        _only(body, _MEDIA_FIELDS)
        data = None
        if body.content_base64 is not None:
            if body.filename is None or body.content_type is None:
                raise InvalidInput("an uploaded file needs filename and content_type",
                                   field="filename" if body.filename is None else "content_type")
            try:
                # Up to 2 MB of base64: decoded off the event loop.
                data = await asyncio.to_thread(base64.b64decode, body.content_base64, validate=True)
            except ValueError as exc:  # binascii.Error: not base64
                raise InvalidInput("content_base64 is not base64", field="content_base64") from exc
        elif (body.filename is not None and body.type != "document") or body.content_type is not None:
            raise InvalidInput("filename and content_type describe an uploaded file (content_base64)",
                               field="content_type" if body.content_type is not None else "filename")
        sent = await service.send_media(body.to, body.type, link=body.link, data=data, filename=body.filename or "",
                                        content_type=body.content_type or "", caption=body.caption or "")
    return WhatsAppSendOut(message_id=sent.wamid, conversation_id=sent.conversation_id,
                           stored_message_id=sent.message_id, contact_id=sent.contact_id)


@whatsapp.get("/whatsapp/conversations", role="viewer", summary="WhatsApp conversations, most recent first")
async def whatsapp_conversations(ctx: Ctx, query: Pagination) -> ChannelConversationPage:
    return await _conversations(ctx, "whatsapp", query)


# ------------------------------ e-mail ------------------------------------------------------------
def _decoded_files(files: list[EmailAttachmentIn]) -> list[OutgoingFile]:
    """The request's attachments decoded (blocking: up to 2 MB of base64)."""
    decoded = []
    for index, file in enumerate(files):
        try:
            data = base64.b64decode(file.content_base64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput("content_base64 is not base64", field=f"attachments.{index}.content_base64") from exc
        decoded.append(OutgoingFile.of(file.filename, file.content_type, data))
    return decoded


@email.post("/email/send", role="designer", errors=(502, 503), summary="Send an e-mail from the channel's address")
async def email_send(ctx: Ctx, body: EmailSendRequest) -> EmailSendOut:
    service = ctx.services.need_email()
    agent = await service.named_agent(body.agent, active=False)
    signature = agent.email_signature if agent is not None else ""
    files = await asyncio.to_thread(_decoded_files, body.attachments) if body.attachments else []
    if body.template is not None:
        if body.subject or body.body or body.html:
            raise InvalidInput("a template brings its own subject and body", field="template")
        name = body.template
        row = await ctx.services.db(lambda s: s.exec(select(EmailTemplate).where(EmailTemplate.name == name)).first())
        if row is None:
            raise InvalidInput(f"there is no e-mail template named {name!r}", field="template")
        variables = body.variables
        # Rendering is CPU work on designers' templates: off the event loop.
        subject, text, html = await asyncio.to_thread(lambda: (
            " ".join(templates.render(row.subject, variables, html=False, field="subject").split()),
            templates.render(row.text, variables, html=False, field="text"),
            templates.render(row.html, variables, html=True, field="html") if row.html else ""))
    else:
        if not body.subject.strip():
            raise InvalidInput("subject is required without a template", field="subject")
        if not body.body.strip():
            raise InvalidInput("body is required without a template", field="body")
        if body.variables:
            raise InvalidInput("variables fill a template; name one", field="variables")
        subject, text = body.subject, body.body
        html = templates.reply_html(text, signature) if body.html else ""
    sent = await service.send(body.to, subject[:200], text, html=html, agent=agent, files=files)
    return EmailSendOut(message_id=sent.email_message_id, conversation_id=sent.conversation_id,
                        stored_message_id=sent.message_id, contact_id=sent.contact_id)


@email.post("/email/chat", role="designer", errors=(502, 503),
            summary="One e-mail turn: the agent answers the message and the reply is e-mailed to the address")
async def email_chat(ctx: Ctx, body: EmailChatRequest) -> EmailChatOut:
    result = await ctx.services.need_email().chat(body.email, body.message, body.subject, agent_name=body.agent)
    return EmailChatOut(
        reply=result.reply, message_id=result.email_message_id, conversation_id=result.conversation_id,
        stored_message_id=result.message_id,
        sources=[SourceOut.model_validate(c) for c in result.citations])


def _refuse_taken_name(session: Session, name: str, other_than: int | None = None) -> None:
    query = select(EmailTemplate.id).where(EmailTemplate.name == name)
    if other_than is not None:
        query = query.where(col(EmailTemplate.id) != other_than)
    if session.exec(query).first() is not None:
        raise Conflict(f"an e-mail template named {name!r} exists", field="name")


def _check_template(fields: dict[str, Any]) -> None:
    for field in ("subject", "text", "html"):
        if fields.get(field):
            templates.check(fields[field], html=field == "html", field=field)


@email.get("/email/templates", role="viewer", summary="E-mail templates")
async def list_templates(ctx: Ctx) -> list[EmailTemplateOut]:
    rows = await ctx.services.db(lambda s: list(s.exec(select(EmailTemplate).order_by(col(EmailTemplate.name)))))
    return [EmailTemplateOut.model_validate(r) for r in rows]


@email.post("/email/templates", role="designer", status=201, errors=(409,),
            summary="Create an e-mail template (Jinja2, sandboxed; HTML variables are escaped)")
async def create_template(ctx: Ctx, body: EmailTemplateIn) -> EmailTemplateOut:
    fields = body.model_dump()
    _check_template(fields)

    def create(session: Session) -> EmailTemplate:
        _refuse_taken_name(session, body.name)
        return saved(session, EmailTemplate(**fields))

    return EmailTemplateOut.model_validate(await ctx.services.db(create))


@email.get("/email/templates/{template_id}", role="viewer", summary="An e-mail template")
async def get_template(ctx: Ctx, template_id: int) -> EmailTemplateOut:
    return EmailTemplateOut.model_validate(await get_row(ctx, EmailTemplate, template_id, "template"))


@email.patch("/email/templates/{template_id}", role="designer", errors=(409,), summary="Change an e-mail template")
async def update_template(ctx: Ctx, template_id: int, body: EmailTemplateUpdate) -> EmailTemplateOut:
    changes = body.model_dump(exclude_unset=True)
    _check_template(changes)

    def change(session: Session) -> EmailTemplate:
        row = row_or_404(session, EmailTemplate, template_id, "template")
        if "name" in changes:
            _refuse_taken_name(session, changes["name"], other_than=template_id)
        return changed(session, row, changes)

    return EmailTemplateOut.model_validate(await ctx.services.db(change))


@email.delete("/email/templates/{template_id}", role="designer", summary="Delete an e-mail template")
async def delete_template(ctx: Ctx, template_id: int) -> None:
    def delete(session: Session) -> None:
        session.delete(row_or_404(session, EmailTemplate, template_id, "template"))

    await ctx.services.db(delete)


@email.get("/email/conversations", role="viewer", summary="E-mail conversations, most recent first")
async def email_conversations(ctx: Ctx, query: Pagination) -> ChannelConversationPage:
    return await _conversations(ctx, "email", query)
