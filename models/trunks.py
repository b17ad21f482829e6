"""SIP trunks managed through the admin API; rendered into Asterisk's ``pjsip_trunks.conf``.

The password is stored because Asterisk needs it in its configuration, but it is write-only at the API: never
returned, never logged.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from models.base import utcnow


class SipTrunk(SQLModel, table=True):
    __tablename__ = "sip_trunks"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=40)
    """A slug; the pjsip objects are named ``trunk-<name>``."""
    host: str = Field(max_length=253)
    port: int = Field(default=5060)
    transport: str = Field(default="udp", max_length=8)
    """udp | tcp | tls"""
    username: str = Field(default="", max_length=128)
    password: str = Field(default="", max_length=256)
    registration: bool = False
    """Send an outbound REGISTER to the provider (needs username and password)."""
    codecs: list[str] = Field(
        default_factory=lambda: ["ulaw", "alaw"], sa_column=Column(JSON, nullable=False)
    )
    dids: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    """Numbers this trunk delivers (informational; routing is by the routes table)."""
    from_user: str = Field(default="", max_length=128)
    from_domain: str = Field(default="", max_length=253)
    verified_caller_id: bool = False
    """The provider delivers verified caller numbers (e.g. STIR/SHAKEN-attested).  Only then is a caller on
    this trunk recognised as a contact, with memory from other calls and channels; otherwise caller ID is
    untrusted (trivially spoofed) and each call has only its own memory."""
    enabled: bool = True
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
