"""Shared column helpers."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Timezone-aware now; stored as UTC."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A stored datetime with its zone: SQLite hands them back naive, and Eva stores UTC (an aware one is kept)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
