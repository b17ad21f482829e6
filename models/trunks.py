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


class TrunkStateEvent(SQLModel, table=True):
    """One change of a trunk's monitored state (``admin_api.trunk_monitor``): the trunk's history.

    No foreign key to ``sip_trunks``: deleting a trunk deletes its history in the same transaction (so a new trunk
    that SQLite gives the same id starts with none), and a worker's late write for a trunk just deleted must not
    fail on a constraint.  ``trunk_name`` keeps the row readable on its own (logs, exports)."""

    __tablename__ = "trunk_state_events"

    id: int | None = Field(default=None, primary_key=True)
    trunk_id: int = Field(index=True)
    trunk_name: str = Field(default="", max_length=40)
    state: str = Field(max_length=16)
    """up | down | rejected | registering | unknown | disabled"""
    previous: str = Field(default="", max_length=16)
    """The state before this change ('' for the first one recorded)."""
    detail: str = Field(default="", max_length=200)
    """Why, in Asterisk's terms (qualify unanswered, registration rejected, AMI unreachable, ...); never call data."""
    at: datetime = Field(default_factory=utcnow, index=True)
