"""Logging setup.  Caller data (numbers, transcripts) is only ever logged at DEBUG level."""

from __future__ import annotations

import logging
import os

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(level: int | None = None) -> None:
    """Standard error always (a service manager such as journald rotates it); also ``EVA_LOG_FILE`` when set,
    rotated past ``EVA_LOG_MAX_MB`` with ``EVA_LOG_KEEP`` old files, so a long-running Eva never fills the disk."""
    if level is None:
        level = getattr(logging, os.environ.get("EVA_LOG_LEVEL", "INFO").upper(), logging.INFO)
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    log_file = os.environ.get("EVA_LOG_FILE", "")
    if log_file:
        from logging.handlers import RotatingFileHandler

        max_mb = int(os.environ.get("EVA_LOG_MAX_MB", "50") or 50)
        keep = int(os.environ.get("EVA_LOG_KEEP", "5") or 5)
        handlers.append(RotatingFileHandler(log_file, maxBytes=max_mb * 1024 * 1024, backupCount=keep,
                                            encoding="utf-8"))
    logging.basicConfig(level=level, format=FORMAT, handlers=handlers)
    for noisy in ("aiohttp.access", "httpx", "chromadb", "urllib3", "faster_whisper", "alembic"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
