"""Text channels: the durable inbox between accepting a message (a webhook's 200) and answering it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from models.base import utcnow


class InboundMessage(SQLModel, table=True):
    """One message a channel has acknowledged to its sender and must answer.

    Written before the acknowledgement, so a crash between the 200 and the reply loses nothing: pending rows are
    picked up again when the channel starts.  ``(channel, external_id)`` is unique, which makes a redelivered
    webhook (WhatsApp retries until it sees a 200) a no-op."""

    __tablename__ = "inbound_messages"
    __table_args__ = (UniqueConstraint("channel", "external_id", name="uq_inbound_messages_channel_external_id"),)

    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(index=True, max_length=16)
    """whatsapp (e-mail needs no inbox: the IMAP server keeps a message unseen until it is answered)"""
    external_id: str = Field(max_length=255)
    """The channel's message id (WhatsApp wamid)."""
    sender: str = Field(max_length=320)
    """The channel's address of the sender (WhatsApp wa_id)."""
    sender_name: str = Field(default="", max_length=200)
    kind: str = Field(default="text", max_length=32)
    """The channel's message type (text, image, audio, ...)."""
    text: str = Field(default="")
    payload: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    """The message object as the channel delivered it (for audits and reprocessing)."""
    status: str = Field(default="pending", index=True, max_length=16)
    """pending | done | failed | ignored | uncertain (a reply part was maybe delivered: a send timed out or the
    process died during it; never resent automatically, an operator decides) | expired (older than the 24-hour
    customer-service window when it arrived: WhatsApp refuses a free-form reply, so none is generated)"""
    attempts: int = 0
    claimed_by: str = Field(default="", max_length=200)
    """The worker answering this row now ('' when nobody is).  Taken with an atomic conditional UPDATE, so two
    workers sharing one database never generate or send the same reply."""
    lease_until: datetime | None = Field(default=None, index=True)
    """Nobody else may take the row before this time: the claim's lease (renewed while the worker runs), or the
    back-off after a retryable failure."""
    sent_parts: list[str] | None = Field(default=None, sa_column=Column(JSON))
    """The wamids of the reply's parts already sent, in order (a long reply goes as several messages): a retry
    sends only the parts after these."""
    sending_part: int | None = None
    """The part whose POST is under way, written before it is sent and cleared when the answer is known.  Still
    set after a crash or a timeout: WhatsApp may have delivered it, so the row becomes ``uncertain``."""
    error: str = Field(default="", max_length=500)
    """Error code of the last failed attempt."""
    conversation_id: int | None = Field(default=None, foreign_key="conversations.id", index=True)
    received_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
