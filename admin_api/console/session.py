"""The console's browser session: tokens in httpOnly cookies, a CSRF token bound to them, and first-run setup.

Why cookies and not localStorage: a script injected into the page (a stored XSS anywhere) could read a token kept
in storage and take it away; it cannot read an httpOnly cookie.  Cookies bring their own danger, cross-site request
forgery, which three things close:

- every console cookie is ``SameSite=Strict``: a browser does not send it with a request another site starts;
- an unsafe request (POST/PUT/PATCH/DELETE) authenticated by the cookie must also carry ``X-CSRF-Token``, an HMAC
  of the access token's id under the server's secret.  Another origin can neither read it nor make a browser add
  a custom header cross-site without a CORS grant; and because it is derived from the session, a cookie planted by
  a sibling subdomain cannot fix it in advance;
- an ``Origin`` header naming another origin is refused outright on those requests.

The API's own clients are untouched: a request with ``Authorization`` or ``X-API-Key`` is authenticated by that
header alone and never by a cookie (so a Bearer client is not exposed to CSRF either).

First run: while no admin exists, ``eva run`` writes a one-time setup token (``<data_dir>/console-setup-token``,
mode 0600; a file, so every worker of one data folder agrees) and prints the console address carrying it.  Only
that token creates the first admin, and it is spent by doing so.  Without it the setup page is no open door.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from voicebot.errors import AuthError, Forbidden

ACCESS_COOKIE = "eva_access"
REFRESH_COOKIE = "eva_refresh"
CSRF_COOKIE = "eva_csrf"
CSRF_HEADER = "X-CSRF-Token"
REFRESH_PATH = "/api/v1/console"
"""The refresh cookie goes only to the console's own session routes, never with every API request."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SETUP_TOKEN_FILE = "console-setup-token"
SETUP_TOKEN_BYTES = 24


def csrf_token(secret: str, access_jti: str) -> str:
    """The CSRF token of one access token: only the server (which knows ``secret``) can make it."""
    return hmac.new(secret.encode(), f"csrf:{access_jti}".encode(), hashlib.sha256).hexdigest()


def _secure(request: web.Request) -> bool:
    # Behind a TLS proxy the request itself is plain HTTP; the proxy says so (aiohttp honours it only when the
    # app is told to, so fall back to the header a trusted proxy sets).
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def set_session_cookies(response: web.StreamResponse, request: web.Request, *, access_token: str,
                        access_ttl: int, refresh_token: str, refresh_ttl: int, csrf: str) -> None:
    secure = _secure(request)
    response.set_cookie(ACCESS_COOKIE, access_token, max_age=access_ttl, path="/", httponly=True,
                        samesite="Strict", secure=secure)
    response.set_cookie(REFRESH_COOKIE, refresh_token, max_age=refresh_ttl, path=REFRESH_PATH, httponly=True,
                        samesite="Strict", secure=secure)
    # Readable by the page's own script (it echoes it in the header); worthless without the httpOnly cookie.
    response.set_cookie(CSRF_COOKIE, csrf, max_age=refresh_ttl, path="/", httponly=False, samesite="Strict",
                        secure=secure)


def clear_session_cookies(response: web.StreamResponse) -> None:
    response.del_cookie(ACCESS_COOKIE, path="/")
    response.del_cookie(REFRESH_COOKIE, path=REFRESH_PATH)
    response.del_cookie(CSRF_COOKIE, path="/")


def check_origin(request: web.Request) -> None:
    """Refuse a state-changing request that a page of another origin started (403 ``cross_origin``)."""
    origin = request.headers.get("Origin")
    if origin is None:  # not a browser's cross-site request: browsers always name the origin of those
        return
    hosts = {request.host.lower()}
    # Behind a reverse proxy the browser's host arrives here as X-Forwarded-Host (a page cannot forge that
    # header on a victim's browser, and a request without the victim's cookie gains nothing by it).
    forwarded = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip().lower()
    if forwarded:
        hosts.add(forwarded)
    if origin == "null" or urlsplit(origin).netloc.lower() not in hosts:
        raise Forbidden("this request came from a page of another origin", code="cross_origin")


def check_csrf(request: web.Request, secret: str, access_jti: str) -> None:
    """For a cookie-authenticated unsafe request: the origin and the CSRF header must be this session's."""
    if request.method in SAFE_METHODS:
        return
    check_origin(request)
    sent = request.headers.get(CSRF_HEADER, "")
    if not sent or not hmac.compare_digest(sent, csrf_token(secret, access_jti)):
        raise AuthError(f"the {CSRF_HEADER} header is missing or is not this session's", code="csrf_failed")


# ------------------------------------------------------------------ first-run setup token
def setup_token_path(data_dir: Path) -> Path:
    return data_dir / SETUP_TOKEN_FILE


def issue_setup_token(data_dir: Path) -> str:
    """A new one-time token, written 0600 (replacing an older one: only the latest printed token works)."""
    token = secrets.token_urlsafe(SETUP_TOKEN_BYTES)
    path = setup_token_path(data_dir)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token)
    os.replace(tmp, path)
    return token


def setup_token_matches(data_dir: Path, offered: str) -> bool:
    try:
        stored = setup_token_path(data_dir).read_text().strip()
    except OSError:
        return False
    return bool(stored) and hmac.compare_digest(stored.encode(), offered.encode())


def spend_setup_token(data_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        setup_token_path(data_dir).unlink()
