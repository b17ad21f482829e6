"""E-mail bodies from templates: a sandboxed Jinja2 (no attribute tricks, no imports, bounded ``range``) with HTML
autoescaped, so whatever a variable holds (a customer's name, the agent's reply) is text, never markup.

Designers write templates (``email_templates``); :func:`check` compiles one when it is saved (a syntax error is a
422 naming the line), :func:`render` fills it with variables (a missing one is a 422 naming it).  Agent replies
get :func:`reply_html`: the reply's paragraphs and the agent's signature in a small, client-safe layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, UndefinedError, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from voicebot.errors import InvalidInput

MAX_OUTPUT_CHARS = 1_000_000
"""A rendered body larger than this is refused (a template looping over itself)."""

MAX_REPEAT = 10_000
"""``'-' * n`` and ``x ** n`` beyond this are refused: one expression must not allocate or compute without end."""


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's sandbox (no unsafe attributes, immutable built-ins, a bounded ``range``) plus bounded arithmetic.
    With loops refused (:func:`_refuse_loops`), rendering is linear in the template and its variables."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(left, int | float) and isinstance(right, int | float) and (
                abs(right) > 64 or abs(left) > MAX_REPEAT):
            raise SecurityError("a power that large is not allowed")
        if operator == "*" and any(isinstance(n, int) and n > MAX_REPEAT for n in (left, right)) and any(
                isinstance(v, str | list | tuple) for v in (left, right)):
            raise SecurityError("repeating text that often is not allowed")
        return super().call_binop(context, operator, left, right)


_TEXT = _Sandbox(autoescape=False, undefined=StrictUndefined, keep_trailing_newline=True)
_HTML = _Sandbox(autoescape=True, undefined=StrictUndefined, keep_trailing_newline=True)
_FORBIDDEN = (nodes.For, nodes.Macro, nodes.CallBlock, nodes.Include, nodes.Import, nodes.FromImport,
              nodes.Extends)


def _refuse_loops(tree: nodes.Template, field: str) -> None:
    found = next(iter(tree.find_all(_FORBIDDEN)), None)
    if found is not None:
        raise InvalidInput(f"{field}: line {found.lineno}: loops, macros, includes and imports are not allowed in "
                           "e-mail templates (variables, filters and if are)", field=field)

_REPLY_LAYOUT = _HTML.from_string(
    "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head>"
    "<body style=\"font-family: Arial, Helvetica, sans-serif; font-size: 15px; line-height: 1.5; color: #1f1f1f;\">"
    "{% for paragraph in paragraphs %}<p>{% for line in paragraph %}{{ line }}{% if not loop.last %}<br>"
    "{% endif %}{% endfor %}</p>{% endfor %}"
    "{% if signature %}<p style=\"color: #5f6368;\">{% for line in signature %}{{ line }}{% if not loop.last %}"
    "<br>{% endif %}{% endfor %}</p>{% endif %}</body></html>\n")


def check(source: str, *, html: bool, field: str) -> None:
    """Compile ``source`` or raise InvalidInput naming the line."""
    try:
        tree = (_HTML if html else _TEXT).parse(source)
    except TemplateSyntaxError as exc:
        raise InvalidInput(f"{field}: line {exc.lineno}: {exc.message}", field=field) from exc
    _refuse_loops(tree, field)


def render(source: str, variables: Mapping[str, str], *, html: bool, field: str) -> str:
    """``source`` filled with ``variables``.  InvalidInput for a missing variable, a forbidden operation (the
    sandbox), a syntax error, or an output over :data:`MAX_OUTPUT_CHARS`."""
    check(source, html=html, field=field)
    try:
        out = (_HTML if html else _TEXT).from_string(source).render(dict(variables))
    except UndefinedError as exc:
        raise InvalidInput(f"{field}: {exc.message}", field=field) from exc
    except SecurityError as exc:
        raise InvalidInput(f"{field}: not allowed in a template ({exc})", field=field) from exc
    except TemplateSyntaxError as exc:
        raise InvalidInput(f"{field}: line {exc.lineno}: {exc.message}", field=field) from exc
    except (TemplateError, OverflowError, RecursionError, TypeError, ValueError) as exc:
        raise InvalidInput(f"{field}: the template failed: {exc}", field=field) from exc
    if len(out) > MAX_OUTPUT_CHARS:
        raise InvalidInput(f"{field}: the rendered text is longer than {MAX_OUTPUT_CHARS} characters", field=field)
    return out


def with_signature(text: str, signature: str) -> str:
    """The plain-text body with the signature after the usual ``-- `` separator (RFC 3676)."""
    signature = signature.strip()
    return f"{text.rstrip()}\n\n-- \n{signature}\n" if signature else text


def reply_html(text: str, signature: str = "") -> str:
    """An agent's reply as HTML: its paragraphs (blank lines) and lines kept, everything escaped."""
    paragraphs = [p.split("\n") for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]
    lines = [line for line in signature.replace("\r\n", "\n").split("\n")] if signature.strip() else []
    return _REPLY_LAYOUT.render(paragraphs=paragraphs, signature=lines)
