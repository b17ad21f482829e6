"""Proof that a channel was originated by Eva (an outbound call), not dialled in.

Stasis arguments are text a caller can influence (``${EXTEN}`` in a dialplan), so ``direction=outbound`` or
``agent=...`` in them proves nothing.  When Eva originates a call it sets the channel variable
``EVA_ORIGIN`` to an HMAC of the channel id under a key derived from Eva's ARI secret; the voice app trusts
the outbound arguments only when that variable verifies.  Neither a SIP caller nor an IVR designer's
dialplan knows the key, and a token is bound to one channel id, so copying one from another call is useless.
"""

from __future__ import annotations

import hashlib
import hmac

ORIGIN_VARIABLE = "EVA_ORIGIN"
_LABEL = b"eva-originate-v1"


def _key(secret: str) -> bytes:
    return hmac.new(secret.encode(), _LABEL, hashlib.sha256).digest()


def origin_token(secret: str, channel_id: str) -> str:
    """The value of ``EVA_ORIGIN`` for a channel Eva originates with id ``channel_id``."""
    return hmac.new(_key(secret), channel_id.encode(), hashlib.sha256).hexdigest()


def is_eva_origin(secret: str, channel_id: str, token: str) -> bool:
    """True when ``token`` (the channel's ``EVA_ORIGIN``) proves Eva originated ``channel_id``."""
    if not secret or not channel_id or not token:
        return False
    # As bytes: compare_digest refuses non-ASCII str, and the variable's value is whatever the channel holds.
    return hmac.compare_digest(origin_token(secret, channel_id).encode(), token.encode("utf-8", "replace"))
