"""Logging setup.  Caller data (numbers, transcripts) is only ever logged at DEBUG level."""

from __future__ import annotations

import logging
import os


def setup_logging(level: int | None = None) -> None:
    if level is None:
        level = getattr(logging, os.environ.get("EVA_LOG_LEVEL", "INFO").upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    for noisy in ("aiohttp.access", "httpx", "chromadb", "urllib3", "faster_whisper", "alembic"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
