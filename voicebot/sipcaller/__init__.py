"""A real SIP caller (pjsua2) for tests, benchmarks and ``eva call``.

pjsua2 is not asyncio-friendly and keeps global state, so every call runs in its own process
(:mod:`voicebot.sipcaller.worker`).  The parent describes the call as a :class:`CallScript` and gets a
:class:`CallResult` back as JSON on the worker's stdout.
"""

from voicebot.sipcaller.client import place_call, place_call_async
from voicebot.sipcaller.script import Action, CallResult, CallScript

__all__ = ["Action", "CallResult", "CallScript", "place_call", "place_call_async"]
