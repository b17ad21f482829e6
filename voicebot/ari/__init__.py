"""A thin asyncio ARI client (REST + events websocket) and typed ARI events.

ari-py, the classic client, is Python-2-era (swagger-py, no asyncio) and does not run on Python 3.11, so Eva talks
to ARI directly with aiohttp: a handful of REST calls and one events websocket with reconnect.
"""

from voicebot.ari.client import AriClient
from voicebot.ari.events import AriEvent, parse_event

__all__ = ["AriClient", "AriEvent", "parse_event"]
