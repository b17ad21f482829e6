"""Dialplan files (``dialplan/*.conf``) read and edited through the API, checked before and after Asterisk
loads them.

A broken or smuggled dialplan never replaces a working one:

1. **Static check** (before anything is written).  Comments are read exactly as Asterisk's config parser
   (``main/config.c``) reads them: ``;`` starts a line comment unless escaped as ``\\;`` (the backslash is
   dropped), ``;--`` opens a block comment only when a fourth ``-`` does not follow, ``--;`` closes one, blocks
   nest, and ``;--``/``--;`` after a line comment are plain comment text.  Everything a person or a simpler
   parser could read differently is refused outright: ``;---``, a marker Asterisk does not take as one, a
   ``--;`` with no open block (Asterisk then hides the following lines), an unclosed block, blocks nested
   deeper than 8 (at 128 Asterisk loops forever), lines over 4 KiB (Asterisk skips lines over 8 KiB, and the
   line after one of exactly that size) and control characters.  On the text Asterisk sees: only the
   statements a routing file needs (``exten``, ``same``, ``include``), balanced parentheses and ``${}``/``$[]``
   in applications, allowlisted applications that Asterisk has loaded, includes of contexts that exist, no
   context another file or extensions.conf owns, no ``#include``/``#exec``.
2. **Outbound dialling is an admin decision.**  ``Dial`` can reach a trunk and ``Transfer`` makes the carrier
   dial (toll fraud), so in a designer's file ``Dial`` may only reach ``Local/<exten>@<context>`` of a context
   in the dialplan that does not itself dial out, or a target an admin listed in ``EVA_DIALPLAN_DIAL_TARGETS``,
   with no variable anywhere in its arguments (``${EXTEN}`` is the caller's, and an ``&`` in it adds a
   destination); ``Transfer`` is admin-only.  "Dials out" is a closure: a context dials out when it dials a
   trunk, or includes, Dials as Local, jumps or Gosubs to one that does (Goto, Gosub, GotoIf, GosubIf,
   Background's exit context, Dial's G/F/U/B/b options, ``CHANNEL(hangup_handler_push|after_bridge_goto)``),
   across all files and extensions.conf; a context with a jump computed at run time counts too whenever any
   context dials out.  Designers may not include, Local-dial or jump into such a context, and may not write a
   jump whose target is computed: Asterisk substitutes ``${...}`` and ``$[...]`` *before* splitting at ``,``
   ``?`` ``:``, so ``Goto(${X})`` or ``GotoIf(${X}?a,1)`` can name any context (a condition may only be a
   ``$[...]`` of numbers).  ``Set`` of GLOBAL()/SHARED() (every later call reads them, Eva's ``EVA_APP``
   included), of CHANNEL items other than language/musicclass/tonezone, of functions outside a short list, of
   routing variables (TRANSFER_CONTEXT, GOTO_ON_BLINDXFR, FORWARD_CONTEXT, DYNAMIC_FEATURES, EVA_* -- except
   ``EVA_FLOW``/``EVA_AGENT`` set to a literal name, how a dialplan picks Eva's flow or agent, see
   :mod:`voicebot.ari.handback`) or of a computed name is refused too.  Refusals are 403
   ``outbound_dial_admin_only``.  Sound files (Playback, Background, Read, ReadExten) must be literal and
   relative (or ``${EVA_SOUNDS}/...``), without ``..``: an absolute path would play stored call recordings to
   callers (422).  One computed condition is allowed, because Eva vouches for its values: a GotoIf/GosubIf
   condition ``$[...]`` of quoted words, numbers, operators and ``${EVA_VAR_<name>}``/``${EVA_RESULT}``
   (``$["${EVA_VAR_choice}" = "sales"]``) -- Eva strips every separator and expression character from those
   values before it hands a call back (:mod:`voicebot.ari.handback`), and designers may not set them.
3. **Applied check against what Asterisk itself loaded**: ``dialplan show`` of *every* context, taken after a
   reload of the current files and again after the reload with the new file.  Every priority Asterisk took
   from the file must sit in a context the file declares, on a line we parsed, running an allowlisted
   application (for designers, an allowed ``Dial``); each declared context must hold exactly the parsed
   priorities and includes; every other context and the globals must be unchanged; no warning may name the
   file.  Otherwise the previous file is restored and reloaded, and the reasons are returned (422): each line
   Asterisk did not take, numbered as in the file (Asterisk counts lines across the whole ``dialplan/*.conf``
   glob), with what Asterisk logged about it (pbx.c's reason, which names the context, joined to pbx_config's
   "at line N"), read once the logger has written it.  This is what holds if the static check and Asterisk ever
   disagree again.

Edited files live in ``<data_dir>/dialplan/NAME.conf`` (an *override* of a packaged file, or a *custom* one);
the rendered copy Asterisk reads is ``<asterisk_dir>/etc/dialplan/NAME.conf``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from admin_api.asterisk_link import AsteriskLink
from voicebot.asterisk.files import read_tail
from voicebot.asterisk.render import DIALPLAN_DIR, TEMPLATE_DIR
from voicebot.errors import AsteriskRejected, Conflict, InvalidInput, NotFound, OutboundDialForbidden

NAME_PATTERN = r"[a-z0-9][a-z0-9_-]{0,63}"
_NAME_RE = re.compile(rf"^{NAME_PATTERN}$")
_CONTEXT_RE = re.compile(r"^[A-Za-z0-9_-]{1,79}$")
_EXTEN_RE = re.compile(r"^(_?[A-Za-z0-9*#+.!\[\]-]+)(/[^,]*)?$")
_PRIORITY_RE = re.compile(r"^(\d{1,5}|n|n\+\d{1,3}|s|hint)(\([A-Za-z0-9_-]{1,64}\))?$")
_APP_RE = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)(?:\((.*)\))?$", re.DOTALL)
_CONTROL_RE = re.compile(r"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)")
_ASCII_SPACE = " \t\n\v\f\r"
"""What Asterisk's ast_strip() removes (C isspace); str.strip() would also remove Unicode spaces."""
MAX_LINE_BYTES = 4096
MAX_COMMENT_DEPTH = 8
ASTERISK_NEST_LIMIT = 128
"""MAX_NESTED_COMMENTS in config.c: one more ``;--`` and its comment loop never advances again."""
PARSE_TIMEOUT_S = 10.0
"""The parse is linear in the (256 KiB at most) text; this only bounds a pathological case."""
PARSE_THREADS = 2
LOG_WAIT_S = 3.0
"""How long a reload's log may lag behind it before a line Asterisk refused is reported without its reason."""
LOG_READ_LIMIT = 1_000_000

RESERVED_CONTEXTS = frozenset({"general", "globals"})
STATEMENTS = frozenset({"exten", "same", "include"})
ALLOWED_APPLICATIONS = frozenset({
    "answer", "hangup", "noop", "playback", "background", "wait", "waitexten", "goto", "gotoif", "gosub",
    "gosubif", "return", "set", "stasis", "dial", "read", "saydigits", "saynumber", "sayalpha", "playtones",
    "stopplaytones", "progress", "ringing", "busy", "congestion", "senddtmf", "echo", "milliwatt", "verbose",
    "log", "transfer", "waitforsilence", "readexten",
})
"""What a dialplan edited here may call.  Left out on purpose: anything that runs a shell command or writes
files (MixMonitor's command argument, Record, System, AGI) and the indirections to them (Exec, ExecIf, TryExec)."""
ADMIN_ONLY_APPLICATIONS = frozenset({"transfer"})
"""A SIP REFER/302 to any URI: the carrier places that call, on Eva's account."""
_LOCAL_TARGET_RE = re.compile(r"^(?i:local)/([A-Za-z0-9*#+_.-]{1,80})@([A-Za-z0-9_-]{1,79})(/[nmjb]{1,4})?$")


# ------------------------------------------------------------------ comments, exactly as Asterisk reads them
@dataclass
class CommentScan:
    lines: list[str | None]
    """Per line (index 0 is line 1): the text Asterisk's line parser receives, before stripping; None when the
    whole line is inside a block comment (Asterisk does not parse it at all)."""
    problems: list[tuple[int, str]]
    """Constructs that Asterisk reads one way and a person (or a simpler parser) another: (line, why)."""
    depth: int
    """Block-comment depth at the end (Asterisk carries it into the next file of a ``#include`` glob)."""


def _markers(line: str, marker: str) -> set[int]:
    found = set()
    index = line.find(marker)
    while index >= 0:
        found.add(index)
        index = line.find(marker, index + 1)
    return found


def _scan_line(line: str, number: int, depth: int, problems: list[tuple[int, str]]) -> tuple[str | None, int]:
    """One line through config_text_file_load's comment loop.  Returns (what is parsed, depth after)."""
    pieces: list[str] = []
    parsed = depth == 0  # Asterisk's process_buf: a line that starts inside a comment is not parsed ...
    start: int | None = 0 if parsed else None  # ... until a --; brings the depth back to 0
    pos = 0  # Asterisk's new_buf: where the search for the next ';' starts
    starts: set[int] = set()
    ends: set[int] = set()
    while True:
        i = line.find(";", pos)
        if i < 0:
            break
        if i > pos and line[i - 1] == "\\":
            # '\;' is a literal ';' (inside comments too); Asterisk removes the backslash.
            if start is not None:
                pieces.append(line[start : i - 1])
                start = i
            pos = i + 1
        elif line.startswith("--", i + 1) and not line.startswith("-", i + 3):
            if depth >= ASTERISK_NEST_LIMIT:
                problems.append((number, f"block comments nested {ASTERISK_NEST_LIMIT} deep hang Asterisk"))
                return None, depth
            starts.add(i)
            if start is not None:  # the visible text ends here (Asterisk writes a NUL over the ';')
                pieces.append(line[start:i])
                start = None
            depth += 1
            if depth > MAX_COMMENT_DEPTH:
                problems.append((number, f"block comments nested deeper than {MAX_COMMENT_DEPTH}"))
            pos = i + 3
        elif i >= pos + 2 and line[i - 2 : i] == "--":
            ends.add(i - 2)
            depth -= 1
            pos = i + 1
            if depth < 0:
                # Asterisk counts below zero and then ignores every following line until a ';--'.
                problems.append((number, "'--;' closes no ';--' block comment"))
            elif depth == 0:
                parsed = True
                start = pos
        elif depth == 0:  # a line comment: the rest of the line is not looked at, ';--' included
            if start is not None:
                pieces.append(line[start:i])
                start = None
            break
        else:
            pos = i + 1
    if start is not None:
        pieces.append(line[start:])
    for marker, used in ((";--", starts), ("--;", ends)):
        stray = sorted(_markers(line, marker) - used)
        if stray:
            problems.append((number, f"{marker!r} at column {stray[0] + 1} is not a block-comment marker for "
                                     "Asterisk (';---', an escaped '\\;', or after a ';' comment); put a space "
                                     "between the characters"))
    return ("".join(pieces) if parsed else None), depth


def scan_comments(text: str) -> CommentScan:
    """What Asterisk's config parser hands on, line by line, after removing comments (never raises)."""
    problems: list[tuple[int, str]] = []
    lines: list[str | None] = []
    depth = 0
    opened = 0
    for number, line in enumerate(text.split("\n"), start=1):
        before = depth
        visible, depth = _scan_line(line, number, depth, problems)
        if before <= 0 < depth:
            opened = number
        lines.append(visible)
        if problems and "hang Asterisk" in problems[-1][1]:
            break
    if depth > 0:
        problems.append((opened, "a ';--' block comment is never closed with '--;'"))
    return CommentScan(lines, problems, depth)


def _strip(text: str) -> str:
    return text.strip(_ASCII_SPACE)


# ------------------------------------------------------------------ the static check
@dataclass
class ParsedDialplan:
    contexts: list[str] = field(default_factory=list)
    priorities: dict[str, set[int]] = field(default_factory=dict)
    """Context → line numbers of its priorities (what ``dialplan show`` must list back)."""
    applications: dict[str, int] = field(default_factory=dict)
    """Application name (lower case) → first line using it."""
    includes: list[tuple[str, int]] = field(default_factory=list)
    """(included context, line), in file order."""
    included: dict[str, list[str]] = field(default_factory=dict)
    """Context → the contexts it includes."""
    calls: list[tuple[str, str, int]] = field(default_factory=list)
    """Every application call: (name in lower case, arguments, line)."""


def _fail(line: int, message: str) -> InvalidInput:
    return InvalidInput(f"line {line}: {message}", field="content")


def _check_balanced(text: str, line: int) -> None:
    pairs = {"(": ")", "{": "}", "[": "]"}
    closers = set(pairs.values())
    stack: list[str] = []
    escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in pairs:
            stack.append(pairs[char])
        elif char in closers and (not stack or stack.pop() != char):
            raise _fail(line, f"unbalanced {char!r} in application arguments")
    if stack:
        raise _fail(line, f"missing {stack[-1]!r} in application arguments")


def context_headers(text: str) -> list[str]:
    """Context names Asterisk reads from a config file (tolerant: for files we only need the contexts of)."""
    names = []
    for visible in scan_comments(text).lines:
        line = _strip(visible or "")
        if line.startswith("[") and "]" in line:
            names.append(line[1 : line.index("]")])
    return names


def _check_characters(text: str) -> None:
    if "\x00" in text:
        raise InvalidInput("the dialplan contains a NUL character", field="content")
    bad = _CONTROL_RE.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        raise _fail(line, f"control character {bad.group()!r} (only tab and line breaks are allowed)")
    for number, line_text in enumerate(text.split("\n"), start=1):
        if len(line_text) > MAX_LINE_BYTES // 4 and len(line_text.encode("utf-8")) > MAX_LINE_BYTES:
            raise _fail(number, f"longer than {MAX_LINE_BYTES} bytes (Asterisk skips long lines)")


def parse_dialplan(text: str) -> ParsedDialplan:
    """Check ``text`` and describe it as Asterisk will read it; raises InvalidInput naming the first bad line.

    Blocking (a Python loop over up to 256 KiB): call it in a thread from async code.
    """
    _check_characters(text)
    scan = scan_comments(text)
    if scan.problems:
        number, message = scan.problems[0]
        raise _fail(number, message)
    parsed = ParsedDialplan()
    context: str | None = None
    has_exten: set[str] = set()
    for number, visible in enumerate(scan.lines, start=1):
        line = _strip(visible or "")
        if not line:
            continue
        if line.startswith("#"):
            raise _fail(number, "#include, #tryinclude and #exec are not allowed in dialplans edited here")
        if line.startswith("["):
            end = line.find("]")  # Asterisk: the name is everything up to the first ']', not stripped
            if end < 0:
                raise _fail(number, "a [context] header needs its closing ']'")
            name, rest = line[1:end], line[end + 1 :]
            if rest:
                raise _fail(number, "context templates and options ([name](...)) are not supported here")
            if not _CONTEXT_RE.match(name):
                raise _fail(number, f"invalid context name {name!r} (letters, digits, '_' and '-')")
            if name.lower() in RESERVED_CONTEXTS:
                raise _fail(number, f"[{name}] is reserved for extensions.conf")
            if name in parsed.priorities:
                raise _fail(number, f"context [{name}] is declared twice")
            context = name
            parsed.contexts.append(name)
            parsed.priorities[name] = set()
            continue
        key, sep, value = line.partition("=")
        key = _strip(key).lower()
        if value.startswith(">"):  # '=>' is '=' for an object; Asterisk drops exactly one '>'
            value = value[1:]
        value = _strip(value)
        if not sep:
            raise _fail(number, "expected 'exten => ...', 'same => ...', 'include => ...' or a [context]")
        if key not in STATEMENTS:
            raise _fail(number, f"unsupported statement {key!r} (use exten, same or include)")
        if context is None:
            raise _fail(number, f"'{key}' before any [context]")
        if key == "include":
            target = _strip(value.split(",", 1)[0])
            if not _CONTEXT_RE.match(target):
                raise _fail(number, f"invalid included context {target!r}")
            parsed.includes.append((target, number))
            parsed.included.setdefault(context, []).append(target)
            continue
        if key == "exten":
            extension, comma, rest = value.partition(",")
            extension = _strip(extension)
            if not comma or not _EXTEN_RE.match(extension):
                raise _fail(number, f"invalid extension {extension!r}")
            has_exten.add(context)
        else:
            if context not in has_exten:
                raise _fail(number, "'same' needs an 'exten' before it in the same context")
            rest = value
        priority, comma, application = rest.partition(",")
        priority = _strip(priority)
        if not comma or not _PRIORITY_RE.match(priority):
            raise _fail(number, f"invalid priority {priority!r} (a number, n, n+N or s, optionally (label))")
        application = _strip(application)
        if priority == "hint":
            continue  # a device-state hint, not an application
        app = _APP_RE.match(application)
        if not app:
            raise _fail(number, f"invalid application call {application!r}")
        arguments = app.group(2) or ""
        if app.group(2) is not None:
            _check_balanced(arguments, number)
        name = app.group(1).lower()
        parsed.applications.setdefault(name, number)
        parsed.calls.append((name, arguments, number))
        parsed.priorities[context].add(number)
    if not parsed.contexts:
        raise InvalidInput("the dialplan declares no [context]", field="content")
    if not any(parsed.priorities.values()):
        raise InvalidInput("the dialplan has no extensions", field="content")
    return parsed


def dial_targets(setting: str) -> frozenset[str]:
    """``EVA_DIALPLAN_DIAL_TARGETS``: comma-separated dial strings designers may use as they are."""
    return frozenset(_strip(t) for t in setting.split(",") if _strip(t))


def outbound_problem(app: str, arguments: str, contexts: Iterable[str], allowed: frozenset[str]) -> str | None:
    """Why a designer may not call ``app(arguments)`` (it could reach a trunk), or None."""
    if app in ADMIN_ONLY_APPLICATIONS:
        return f"{app.capitalize()}() hands the call to any SIP URI the carrier will dial; only an admin may use it"
    if app != "dial":
        return None
    if "${" in arguments or "$[" in arguments:
        return ("Dial() with a variable or expression can reach any trunk (a caller's ${EXTEN} with '&' adds "
                "a destination); designers write the target literally")
    target = _strip(arguments.split(",", 1)[0])
    if not target:
        return "Dial() needs a target"
    known = contexts if isinstance(contexts, (set, frozenset)) else set(contexts)  # no copy per call
    for part in (_strip(p) for p in target.split("&")):
        if part in allowed:
            continue
        local = _LOCAL_TARGET_RE.match(part)
        if local is None:
            return (f"Dial({part}) reaches outside Eva's dialplan (a trunk, a SIP URI or another channel "
                    "technology): only an admin may write it; designers may Dial Local/<exten>@<context> of "
                    "a context in the dialplan, or a target an admin listed in EVA_DIALPLAN_DIAL_TARGETS")
        if local.group(2) not in known:
            return f"Dial({part}): context [{local.group(2)}] does not exist"
    return None


_NUMERIC_EXPRESSION_RE = re.compile(r"\$\[[0-9\s+\-*/%()<>=!&|]*\]")
"""A ``$[...]`` of numbers and operators only: its result is a number, so it cannot add a ',', '?' or ':'."""
_SOUNDS_PREFIX = "${EVA_SOUNDS}/"
"""The one variable a designer's sound file may start with: an admin's global (designers may not set EVA_*)."""
_EVA_HANDBACK_VAR = r"\$\{EVA_(?:VAR_[A-Za-z_][A-Za-z0-9_]{0,63}|RESULT)\}"
_HANDBACK_CONDITION_RE = re.compile(
    rf'\$\[(?:\s|[0-9]|[+\-*/%()<>=!&|]|{_EVA_HANDBACK_VAR}|"(?:[A-Za-z0-9 _.+@#*-]|{_EVA_HANDBACK_VAR})*")*\]')
"""A condition on what Eva handed back: quoted words, numbers, operators and EVA_VAR_*/EVA_RESULT, whose values
Eva cleans of every separator (voicebot.ari.handback), so the condition cannot add a ',', '?' or ':'."""
_JUMP_APPLICATIONS = frozenset({"goto", "gosub", "gotoif", "gosubif"})
_SOUND_ARGUMENT = {"playback": 0, "background": 0, "read": 1, "readexten": 1}
"""Application → index of its sound-file argument."""
_ROUTING_VARIABLES = frozenset({"TRANSFER_CONTEXT", "GOTO_ON_BLINDXFR", "FORWARD_CONTEXT", "DYNAMIC_FEATURES"})
"""Channel variables Asterisk reads as a destination (a DTMF blind transfer, a forward) or a feature list."""
_DESIGNER_SET_FUNCTIONS = frozenset({"CALLERID", "CONNECTEDLINE", "HASH", "TIMEOUT", "VOLUME", "CHANNEL"})
_DESIGNER_CHANNEL_ITEMS = frozenset({"language", "musicclass", "tonezone"})
"""``CHANNEL()`` items a designer may write; hangup_handler_push and after_bridge_goto are jumps."""
_CHANNEL_JUMP_ITEMS = frozenset({"hangup_handler_push", "after_bridge_goto"})
_DESIGNER_EVA_CHOICES = frozenset({"EVA_FLOW", "EVA_AGENT"})
"""Eva's variables a designer may set, to a literal name: which flow or agent the next ``Stasis()`` runs."""
_CHOICE_VALUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")


def _split_top(text: str, separator: str) -> list[str]:
    """Split at ``separator`` outside parentheses and brackets (how applications separate their arguments)."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        if char == separator and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [_strip(part) for part in parts]


def _literal(text: str) -> str | None:
    """``text`` with numeric ``$[...]`` replaced by a number; None when a variable or another expression is left
    (Asterisk substitutes those before it splits the arguments, so they could add separators)."""
    masked = _NUMERIC_EXPRESSION_RE.sub("0", text)
    return None if "$" in masked else masked


def _label_context(label: str, separator: str = ",", *, arguments: bool = False) -> str | None:
    """The context of a ``[[context,]exten,]priority`` label (ast_parseable_goto), None when it names none.
    ``arguments``: a Gosub's label, whose ``(args)`` follow the priority (Goto has none: a '(' is text)."""
    parts = (label.split("(", 1)[0] if arguments else label).split(separator)
    return _strip(parts[0]) if len(parts) >= 3 else None


def _dial_options(options: str) -> list[tuple[str, str]]:
    """Dial's options with an argument: (letter, text inside its parentheses)."""
    found = []
    index = 0
    while index < len(options):
        if index + 1 < len(options) and options[index + 1] == "(":
            depth, end = 0, index + 1
            while end < len(options):
                depth += {"(": 1, ")": -1}.get(options[end], 0)
                if depth == 0:
                    break
                end += 1
            found.append((options[index], options[index + 2 : end]))
            index = end + 1
        else:
            index += 1
    return found


def jump_targets(app: str, arguments: str) -> list[str] | None:
    """Contexts a call can send the channel (or the channel it creates) to; None when a target is computed
    at run time.  Asterisk substitutes variables and expressions before it splits at ',', '?', ':' and '^',
    so any '$' that could reach a target makes it computed (a one-part ``Goto(${X})`` is a whole label)."""
    targets: list[str | None] = []
    if app in ("goto", "gosub"):
        head = arguments.split("(", 1)[0] if app == "gosub" else arguments  # Gosub's (args) are not the label
        literal = _literal(head)
        if literal is None:
            return None
        targets.append(_label_context(literal, arguments=app == "gosub"))
    elif app in ("gotoif", "gosubif"):
        condition, question, branches = arguments.partition("?")
        literal = _literal(_HANDBACK_CONDITION_RE.sub("0", condition) + question + branches)
        if literal is None:
            return None
        _condition, _question, branches = literal.partition("?")
        # GotoIf splits at the first ':' of the text, GosubIf outside parentheses: both readings count.
        for branch in [*branches.split(":", 1), *_split_top(branches, ":")[:2]]:
            targets.append(_label_context(branch, arguments=app == "gosubif"))
    elif app == "background":
        literal = _literal(arguments.replace(_SOUNDS_PREFIX, "sounds/"))
        if literal is None:
            return None
        parts = _split_top(literal, ",")
        if len(parts) > 3 and parts[3]:
            targets.append(parts[3])
    elif app == "dial":
        if "$" in arguments:
            return None
        parts = _split_top(arguments, ",")
        for part in (_strip(p) for p in parts[0].split("&")):
            local = _LOCAL_TARGET_RE.match(part)
            if local:
                targets.append(local.group(2))
        for letter, inside in _dial_options(parts[2] if len(parts) > 2 else ""):
            if letter in "GFBb":
                targets.append(_label_context(inside, "^", arguments=letter in "Bb"))
            elif letter == "U":  # U(context[^arg...]): a Gosub to context,s,1 on the called channel
                targets.append(_strip(inside.split("^", 1)[0]))
    elif app == "set":
        name, _eq, value = arguments.partition("=")
        if "$" in name:
            return None
        item = re.match(r"^_{0,2}CHANNEL\((.*)\)$", _strip(name), re.IGNORECASE)
        if item and _strip(item.group(1)).lower() in _CHANNEL_JUMP_ITEMS:
            if "$" in value:
                return None
            targets.append(_label_context(value, arguments=True))
    return [t for t in targets if t]


def _dials(target: str, dialling: set[str]) -> bool:
    """``dialling`` in lower case: Asterisk finds contexts regardless of case, so does this check."""
    return target.lower() in dialling


def dialling_closure(calls: dict[str, list[tuple[str, str]]], includes: dict[str, list[str]],
                     allowed: frozenset[str]) -> set[str]:
    """Contexts that dial out, directly or through what they include, Dial as Local, jump or Gosub to (Goto,
    Gosub and their If forms, Background's exit context, Dial's G/F/U/B/b options, hangup handlers).  A context
    with a jump computed at run time counts as dialling whenever any context dials out."""
    contexts = set(calls) | set(includes)
    edges: dict[str, set[str]] = {c: {t.lower() for t in includes.get(c, [])} for c in contexts}
    direct: set[str] = set()
    computed: set[str] = set()
    for context, context_calls in calls.items():
        for app, data in context_calls:
            if outbound_problem(app, data, contexts, allowed):
                direct.add(context.lower())
            targets = jump_targets(app, data)
            if targets is None:
                computed.add(context.lower())
            else:
                edges[context] |= {t.lower() for t in targets}
    callers: dict[str, set[str]] = {}
    for context, reached in edges.items():
        for target in reached:
            callers.setdefault(target, set()).add(context.lower())
    dialling = set(direct) | (computed if direct else set())
    pending = list(dialling)
    while pending:  # linear in the edges: each context is queued once
        for caller in callers.get(pending.pop(), ()):
            if caller not in dialling:
                dialling.add(caller)
                pending.append(caller)
    return {c for c in contexts if c.lower() in dialling}


def dialling_contexts(parsed: ParsedDialplan, known: Iterable[str], allowed: frozenset[str]) -> set[str]:
    """Contexts of an (admin's) file that dial out, directly or indirectly within the file."""
    del known  # kept for callers; every context of the file is part of the closure
    calls: dict[str, list[tuple[str, str]]] = {c: [] for c in parsed.contexts}
    context_of = {line: name for name, lines in parsed.priorities.items() for line in lines}
    for app, arguments, line in parsed.calls:
        if line in context_of:
            calls[context_of[line]].append((app, arguments))
    return dialling_closure(calls, parsed.included, allowed)


def dialplan_graph(text: str, calls: dict[str, list[tuple[str, str]]], includes: dict[str, list[str]]) -> None:
    """Add the contexts, calls and includes of a config file to the graph, tolerantly (extensions.conf and files
    not written through this API need not pass ``parse_dialplan``)."""
    context: str | None = None
    for visible in scan_comments(text).lines:
        line = _strip(visible or "")
        if line.startswith("["):
            context = line[1 : line.find("]")] if "]" in line else None
            if context is not None:
                calls.setdefault(context, [])
            continue
        key, _sep, value = line.partition("=")
        key, value = _strip(key).lower(), _strip(value[1:] if value.startswith(">") else value)
        if context is None or key not in STATEMENTS:
            continue
        if key == "include":
            includes.setdefault(context, []).append(_strip(value.split(",", 1)[0]))
            continue
        fields = value.split(",", 2 if key == "exten" else 1)
        app = _APP_RE.match(_strip(fields[-1])) if len(fields) == (3 if key == "exten" else 2) else None
        if app:
            calls[context].append((app.group(1).lower(), app.group(2) or ""))


def sound_problem(app: str, arguments: str) -> str | None:
    """Why a designer's sound-file argument could play a file outside the sounds (a call recording), or None."""
    index = _SOUND_ARGUMENT.get(app)
    if index is None:
        return None
    parts = _split_top(arguments, ",")
    if any("$" in part for part in parts[:index]):
        return (f"{app.capitalize()}() with a variable before its sound file: Asterisk substitutes it before "
                "splitting the arguments, so it could name any file")
    for name in (_strip(n) for n in (parts[index] if len(parts) > index else "").split("&")):
        rest = name[len(_SOUNDS_PREFIX):] if name.startswith(_SOUNDS_PREFIX) else name
        if "$" in rest:
            return (f"{app.capitalize()}({name}): a sound file named by a variable could be any file (a call "
                    f"recording); designers name sound files literally, relative to the sounds directory or "
                    f"{_SOUNDS_PREFIX}")
        if rest.startswith("/") or ".." in rest.split("/") or "\\" in rest:
            return (f"{app.capitalize()}({name}): absolute paths and '..' reach files outside the sounds (call "
                    "recordings); designers name sound files relative to the sounds directory or "
                    f"{_SOUNDS_PREFIX}")
    return None


def set_problem(arguments: str) -> str | None:
    """Why a designer's ``Set`` could change where calls go, or other calls, or None."""
    name = _strip(arguments.partition("=")[0])
    if "$" in name:
        return ("Set() of a name computed at run time (a variable in it) can write any variable or function, "
                "GLOBAL() included: designers name what they set literally")
    match = re.match(r"^_{0,2}([A-Za-z0-9_]+)(?:\((.*)\))?$", name, re.DOTALL)
    if match is None:
        return f"Set({name}=...) does not name a plain variable or function"
    base, inside = match.group(1).upper(), match.group(2)
    if inside is None:
        if name.upper() in _DESIGNER_EVA_CHOICES:
            # The one way a dialplan picks Eva's flow/agent (voicebot.ari.handback): only a literal name, or a
            # caller's ${EXTEN} would choose it.
            value = _strip(arguments.partition("=")[2])
            if not _CHOICE_VALUE_RE.match(value):
                return (f"Set({name}={value}): {name} takes a literal flow or agent name (letters, digits, '_', "
                        "'-', '.'), never a variable: a caller-controlled value would choose the flow or agent")
            return None
        if base in _ROUTING_VARIABLES or base.startswith("EVA_"):
            return (f"Set({name}) changes where calls go (a transfer or forward destination, or Eva's own "
                    "routing variables): only an admin may set it")
        return None
    if base in ("GLOBAL", "SHARED"):
        return (f"Set({base}(...)) changes variables every later call (or another channel) reads, Eva's routing "
                "included: only an admin may set it")
    if base not in _DESIGNER_SET_FUNCTIONS:
        return f"Set({base}(...)) is for admins; designers may set {', '.join(sorted(_DESIGNER_SET_FUNCTIONS))}"
    if base == "CHANNEL" and _strip(inside).lower() not in _DESIGNER_CHANNEL_ITEMS:
        return (f"Set(CHANNEL({_strip(inside)})) is for admins (hangup_handler_push and after_bridge_goto are "
                f"jumps); designers may set CHANNEL({'|'.join(sorted(_DESIGNER_CHANNEL_ITEMS))})")
    return None


def designer_problem(app: str, arguments: str, dialling: set[str], reachable: Iterable[str],
                     allowed: frozenset[str]) -> str | None:
    """Why a designer may not call ``app(arguments)`` (it could reach a trunk, or change routing), or None.

    ``dialling``: the contexts that dial out, in lower case; ``reachable``: the existing ones that do not."""
    if app in ADMIN_ONLY_APPLICATIONS:
        return outbound_problem(app, arguments, reachable, allowed)
    if app == "set":
        why = set_problem(arguments)
        if why:
            return why
    targets = jump_targets(app, arguments)
    if targets is None and app != "dial":  # Dial with a variable: outbound_problem says why
        # Named in a stable order (a set's order changes from one process to the next), the site's own contexts
        # before Eva's packaged ones, which every installation has.
        named = sorted(dialling, key=lambda name: (name.startswith("eva-"), name))[:3]
        example = (f" such as {', '.join(f'[{name}]' for name in named)}, which "
                   f"{'dials' if len(named) == 1 else 'dial'} out" if named else ", one that dials out too")
        return (f"{app.capitalize()}() with a variable or expression in its target: Asterisk substitutes "
                f"${{...}} and $[...] before splitting at ',', '?' and ':', so it could name any context{example}; "
                "designers write jump targets literally (a condition may be a $[...] of numbers only)")
    for target in targets or []:
        if _dials(target, dialling):
            return (f"[{target}] dials out (an admin's context, directly or through what it includes or jumps "
                    "to): designers may not send calls there")
    if app == "set":
        return None
    return outbound_problem(app, arguments, reachable, allowed)


# ------------------------------------------------------------------ what Asterisk loaded
_SHOW_HEADER_RE = re.compile(r"^\[ Context '(?P<name>.*)' created by '(?P<registrar>.*)' \]$")
_SHOW_SOURCE_RE = re.compile(r"\s\[(?P<file>[^\[\]]*):(?P<line>\d+)\]$")
_SHOW_PRIORITY_RE = re.compile(
    r"^\s*(?:'[^']*'\s+=>\s*)?(?:\[[^\]]*\]\s*)?(?:(?P<priority>\d+)\.|(?P<hint>hint:))\s*(?P<body>.*?)\s*$"
)
"""A priority line: ``  '100' =>  [label]  1. App(data)``, or ``hint: PJSIP/x`` (then ``[file:line]``)."""
_SHOW_INCLUDE_RE = re.compile(r"^\s*Include =>\s+'(?P<target>[^']*)'")


@dataclass
class LoadedPriority:
    file: str
    line: int
    application: str
    """Lower case; empty for a hint."""
    data: str


@dataclass
class LoadedContext:
    name: str
    shape: list[str] = field(default_factory=list)
    """Every line ``dialplan show`` printed for it, line numbers left out (those shift when a file before it in
    the glob changes length): compared for the contexts a file must not touch."""
    priorities: list[LoadedPriority] = field(default_factory=list)
    includes: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    """Switches, ignore patterns: nothing a file edited here may add."""


def parse_dialplan_show(output: str) -> dict[str, LoadedContext]:
    """``dialplan show`` (all contexts) as Asterisk printed it."""
    contexts: dict[str, LoadedContext] = {}
    current: LoadedContext | None = None
    for raw in output.splitlines():
        header = _SHOW_HEADER_RE.match(raw)
        if header:
            current = contexts.setdefault(header.group("name"), LoadedContext(header.group("name")))
            continue
        if current is None or not raw.strip():
            continue
        if raw.startswith("-= ") or raw.startswith("[ "):
            current = None
            continue
        source = _SHOW_SOURCE_RE.search(raw)
        current.shape.append(raw[: source.start()] + f" [{source.group('file')}]" if source else raw.rstrip())
        include = _SHOW_INCLUDE_RE.match(raw)
        if include:
            current.includes.append(include.group("target"))
            continue
        priority = _SHOW_PRIORITY_RE.match(raw[: source.start()]) if source else None
        if source is None or priority is None:
            current.other.append(raw.strip())
            continue
        body = priority.group("body")
        if priority.group("hint"):
            application, data = "", body
        else:
            application, _, data = body.partition("(")
            data = data[:-1] if data.endswith(")") else data
        current.priorities.append(LoadedPriority(
            Path(source.group("file")).name, int(source.group("line")), application.strip().lower(), data
        ))
    return contexts


def _line_offset(loaded: list[int], wanted: set[int]) -> int:
    """Asterisk numbers lines across all files of the ``#include dialplan/*.conf`` glob (config.c does not reset
    its counter per file), so a file's lines appear shifted by the lines of the files before it."""
    return min(loaded) - min(wanted) if loaded and wanted else 0


def asterisk_line_count(text: str) -> int:
    """How far one file of the glob moves config.c's line counter: its ``while (!feof(f)) { lineno++; fgets }``
    loop counts every line plus the final read that meets end-of-file, i.e. newlines + 1 (with or without a
    final newline)."""
    return text.count("\n") + 1


def glob_offset(line_counts: dict[str, int], filename: str) -> int:
    """The shift of ``filename``'s line numbers: the counts (:func:`asterisk_line_count`) of the glob's files
    sorted before it (``glob()`` sorts; compared byte-wise as in Asterisk's C locale)."""
    return sum(count for name, count in line_counts.items() if name.encode() < filename.encode())


def choose_offset(filename: str, parsed: ParsedDialplan, after: dict[str, LoadedContext],
                  candidates: Iterable[int]) -> int:
    """The line shift that ties the most loaded priorities of ``filename`` to a parsed line running the same
    application.  ``candidates`` (the glob count first) win ties; the lowest loaded line against the first
    parsed one is always tried too.  The smallest-line guess alone is wrong whenever Asterisk refused the
    file's first priority: every later line then looks shifted, and the reasons point at the wrong lines."""
    loaded = [(p.line, p.application) for c in after.values() for p in c.priorities
              if p.file == filename and p.application]
    wanted = {n for lines in parsed.priorities.values() for n in lines}
    apps_by_line = {line: app for app, _arguments, line in parsed.calls}
    options = [*candidates, _line_offset(sorted(line for line, _app in loaded), wanted)]
    return max(options, key=lambda k: (sum(apps_by_line.get(line - k) == app for line, app in loaded),
                                       -options.index(k)))


_LOG_LINE_RE = re.compile(
    r"^\[[^\]]+\]\s+(?:WARNING|ERROR)\[\d+\](?:\[[^\]]*\])?\s+(?P<source>[^:\s]+):\s*(?P<text>.*?)\s*$")
_AT_LINE_RE = re.compile(r"\bat line (\d+)\b")
_PBX_SOURCES = frozenset({"pbx.c", "pbx_config.c", "config.c"})
"""Where Asterisk logs why it did not take a dialplan line (pbx.c names the context, not the file)."""


@dataclass
class AsteriskReasons:
    by_line: dict[int, str] = field(default_factory=dict)
    """Line of the file (as the designer numbers it) → what Asterisk logged about it."""
    general: list[str] = field(default_factory=list)
    """Warnings about the file or its contexts that name no line of it."""


def asterisk_reasons(log_text: str, filename: str, contexts: Iterable[str], offset: int) -> AsteriskReasons:
    """What Asterisk logged about ``filename`` during a reload, in the designer's terms: paths (the chroot's
    ``/eva/<id>/etc/dialplan/...``) reduced to the file name, glob-wide line numbers turned back into the file's.

    pbx.c says *why* a priority was refused ("... in 'ctx', already in use") without naming the file; pbx_config
    then logs "Unable to register extension at line N of FILE".  The first is the reason given for line N."""
    reasons = AsteriskReasons()
    path_re = re.compile(rf"(?:\S*/)?(?<![\w.-]){re.escape(filename)}(?![\w.-])")
    quoted = [f"'{context}'" for context in contexts]
    pending: str | None = None
    for raw in log_text.splitlines():
        match = _LOG_LINE_RE.match(raw)
        if match is None:
            continue
        source, text = match.group("source"), match.group("text")
        if path_re.search(text):
            text = path_re.sub(filename, text)
            line_match = _AT_LINE_RE.search(text)
            if line_match is None:
                reasons.general.append(text)
                continue
            line = int(line_match.group(1)) - offset
            text = _AT_LINE_RE.sub(f"at line {line}", text, count=1)
            if pending is not None and text.startswith("Unable to register extension"):
                text = f"{pending} ({text})"
            pending = None
            reasons.by_line.setdefault(line, text)
        elif source in _PBX_SOURCES and any(name in text for name in quoted):
            if pending is not None:
                reasons.general.append(pending)
            pending = text
    if pending is not None:
        reasons.general.append(pending)
    return reasons


def verify_loaded(
    filename: str,
    parsed: ParsedDialplan,
    before: dict[str, LoadedContext],
    after: dict[str, LoadedContext],
    *,
    outbound: bool,
    allowed_targets: frozenset[str] = frozenset(),
    offset: int | None = None,
    reasons: AsteriskReasons | None = None,
    unexplained: list[int] | None = None,
) -> list[str]:
    """Problems with what Asterisk loaded from ``filename`` (empty: it loaded exactly what we checked).

    ``offset``: the glob-wide line shift (see :func:`choose_offset`; default: the smallest-line guess).
    ``reasons``: what Asterisk logged, so a line it did not load is reported with Asterisk's own words; the
    missing lines it logged nothing about are appended to ``unexplained``.

    Nothing here trusts the static parse for safety: every priority Asterisk took from the file is checked on
    its own (declared context, allowlisted application, allowed Dial), and every context the file does not
    declare must look exactly as it did before.  Line numbers only tie Asterisk's view back to the parse.
    """
    problems: list[str] = []
    declared = set(parsed.contexts)
    previously = {c.name for c in before.values() if any(p.file == filename for p in c.priorities)}
    ours_everywhere = sorted(p.line for c in after.values() for p in c.priorities
                             if p.file == filename and p.application)
    wanted_everywhere = {n for lines in parsed.priorities.values() for n in lines}
    if offset is None:
        offset = _line_offset(ours_everywhere, wanted_everywhere)
    by_line = reasons.by_line if reasons is not None else {}
    apps_by_line = {line: app for app, _arguments, line in parsed.calls}
    dialling = {c.lower() for c in dialling_closure(
        {name: [(p.application, p.data) for p in c.priorities if p.application]
         for name, c in after.items() if name not in declared},
        {name: c.includes for name, c in after.items() if name not in declared}, allowed_targets)}
    reachable = {name for name in after if not _dials(name, dialling)}
    for name, context in after.items():
        ours = [p for p in context.priorities if p.file == filename]
        if name not in declared:
            if ours:
                problems.append(f"Asterisk loaded lines {', '.join(str(p.line - offset) for p in ours[:10])} "
                                f"into context [{name}], which this file does not declare")
            elif name not in previously and (name not in before or before[name].shape != context.shape):
                problems.append(f"context [{name}] changed although this file does not declare it")
            continue
        for priority in context.priorities:
            line = priority.line - offset
            if priority.file != filename:
                problems.append(f"context [{name}] holds a line of {priority.file}")
                continue
            if not priority.application:
                continue  # a hint
            if priority.application not in ALLOWED_APPLICATIONS:
                problems.append(f"line {line} runs {priority.application!r}, which is not allowed")
            elif apps_by_line.get(line) != priority.application:
                problems.append(f"line {line} runs {priority.application!r}, not what the file was checked for")
            elif not outbound:
                why = (sound_problem(priority.application, priority.data)
                       or designer_problem(priority.application, priority.data, dialling, reachable,
                                           allowed_targets))
                if why:
                    problems.append(f"line {line}: {why}")
        loaded_lines = {p.line - offset for p in ours if p.application}
        wanted = parsed.priorities.get(name, set())
        if loaded_lines != wanted:
            missing = sorted(wanted - loaded_lines)
            if missing:
                explained = [n for n in missing if n in by_line]
                silent = [n for n in missing if n not in by_line]
                problems += [f"line {n} was not loaded: {by_line[n]}" for n in explained[:10]]
                if silent:
                    if unexplained is not None:
                        unexplained += silent
                    lines_text = ", ".join(map(str, silent[:10]))
                    problems.append(f"{'line' if len(silent) == 1 else 'lines'} {lines_text} "
                                    f"{'was' if len(silent) == 1 else 'were'} not loaded (Asterisk logged no "
                                    "reason)")
            else:
                extra = sorted(loaded_lines - wanted)
                problems.append(f"context [{name}] holds priorities from other lines "
                                f"({', '.join(map(str, extra[:10]))})")
        wanted_includes = sorted(parsed.included.get(name, []))
        if sorted(context.includes) != wanted_includes:
            problems.append(f"context [{name}] includes {sorted(context.includes)}, expected {wanted_includes}")
        if not outbound and any(_dials(target, dialling) for target in context.includes):
            problems.append(f"context [{name}] includes a context that dials out")
        if context.other:
            problems.append(f"context [{name}] holds {context.other[0]!r}")
    for name in sorted(declared - set(after)):
        problems.append(f"context [{name}] was not loaded")
    for name in sorted(set(before) - set(after) - previously - declared):
        problems.append(f"context [{name}] disappeared")
    return problems


# ------------------------------------------------------------------ the service
@dataclass(frozen=True)
class DialplanFile:
    name: str
    source: str
    content: str


class DialplanService:
    def __init__(
        self,
        link: AsteriskLink,
        *,
        packaged_dir: Path = DIALPLAN_DIR,
        extensions_conf: Path = TEMPLATE_DIR / "extensions.conf",
    ) -> None:
        self.link = link
        self.packaged_dir = packaged_dir
        self.extensions_conf = extensions_conf
        self.override_dir = link.settings.data_dir / "dialplan"
        self.allowed_targets = dial_targets(link.settings.dialplan_dial_targets)
        self._parse_slots = asyncio.Semaphore(PARSE_THREADS)

    @property
    def etc_dir(self) -> Path:
        return self.link.etc_dir / "dialplan"

    # ------------------------------------------------------------------ reading (blocking helpers)
    def _names(self) -> dict[str, str]:
        packaged = {p.stem for p in self.packaged_dir.glob("*.conf")}
        overrides = (
            {p.stem for p in self.override_dir.glob("*.conf")} if self.override_dir.is_dir() else set()
        )
        sources = {}
        for name in sorted(packaged | overrides):
            if not _NAME_RE.match(name):
                continue
            if name in overrides:
                sources[name] = "override" if name in packaged else "custom"
            else:
                sources[name] = "packaged"
        return sources

    def _read(self, name: str) -> DialplanFile:
        source = self._names().get(name)
        if source is None:
            raise NotFound(f"dialplan {name!r} does not exist", field="name")
        folder = self.packaged_dir if source == "packaged" else self.override_dir
        # Bytes, not read_text: universal newlines would hand back a CRLF file as LF (and its size wrong).
        return DialplanFile(name, source, (folder / f"{name}.conf").read_bytes().decode("utf-8"))

    def _all(self) -> list[DialplanFile]:
        return [self._read(name) for name in self._names()]

    @staticmethod
    def describe(file: DialplanFile) -> dict[str, Any]:
        return {
            "name": file.name,
            "source": file.source,
            "size": len(file.content.encode("utf-8")),
            "contexts": context_headers(file.content),
            "content": file.content,
        }

    async def list_dialplans(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(lambda: [self.describe(f) for f in self._all()])

    async def get(self, name: str) -> dict[str, Any]:
        self._check_name(name)
        return await asyncio.to_thread(lambda: self.describe(self._read(name)))

    @staticmethod
    def _check_name(name: str) -> None:
        if not _NAME_RE.match(name):
            raise InvalidInput("a dialplan name is 1-64 lower-case letters, digits, '_' or '-'", field="name")

    # ------------------------------------------------------------------ writing
    async def parse(self, content: str) -> ParsedDialplan:
        """``parse_dialplan`` off the event loop (it shares the loop with live calls), bounded in threads and
        time.  A thread cannot be stopped, so its slot is only given back when it has really finished."""
        await self._parse_slots.acquire()
        try:
            task = asyncio.ensure_future(asyncio.to_thread(parse_dialplan, content))
        except BaseException:
            self._parse_slots.release()
            raise

        def finished(done: asyncio.Future[ParsedDialplan]) -> None:
            self._parse_slots.release()
            if not done.cancelled():
                done.exception()  # retrieved: a late failure after a timeout is not "never retrieved"

        task.add_done_callback(finished)
        try:
            return await asyncio.wait_for(asyncio.shield(task), PARSE_TIMEOUT_S)
        except TimeoutError as exc:
            raise InvalidInput(f"the dialplan could not be checked within {PARSE_TIMEOUT_S:.0f} s",
                               field="content") from exc

    async def _owners(self, name: str) -> tuple[dict[str, str], set[str]]:
        """Context → who declares it, for every file except dialplan ``name``; and which of those contexts dial
        out (an admin's outbound contexts, which a designer's Local or include may not lead callers into)."""
        def collect() -> tuple[dict[str, str], set[str]]:
            owners = {c: "extensions.conf" for c in context_headers(self.extensions_conf.read_text("utf-8"))}
            others = [f for f in self._all() if f.name != name]
            for other in others:
                for context in context_headers(other.content):
                    owners.setdefault(context, f"dialplan {other.name!r}")
            # One graph over every other file and extensions.conf: "dials out" is transitive across files.
            calls: dict[str, list[tuple[str, str]]] = {}
            includes: dict[str, list[str]] = {}
            dialplan_graph(self.extensions_conf.read_text("utf-8"), calls, includes)
            for other in others:
                dialplan_graph(other.content, calls, includes)
            for reserved in RESERVED_CONTEXTS:
                calls.pop(reserved, None)
            return owners, {c.lower() for c in dialling_closure(calls, includes, self.allowed_targets)}

        return await asyncio.to_thread(collect)

    async def _validate(self, name: str, parsed: ParsedDialplan, *, outbound: bool) -> None:
        owners, dialling = await self._owners(name)
        for context in parsed.contexts:
            if context in owners:
                raise Conflict(
                    f"context [{context}] is already declared in {owners[context]}", field="content"
                )
        for app, line in sorted(parsed.applications.items(), key=lambda item: item[1]):
            if app not in ALLOWED_APPLICATIONS:
                raise _fail(line, f"application {app!r} is not allowed in Eva dialplans "
                                  f"(allowed: {', '.join(sorted(ALLOWED_APPLICATIONS))})")
        known = set(owners) | set(parsed.contexts)
        for target, line in parsed.includes:
            if target not in known:
                raise _fail(line, f"included context [{target}] does not exist")
        if not outbound:
            reachable = {c for c in known if not _dials(c, dialling)}
            for app, arguments, line in parsed.calls:
                sound = sound_problem(app, arguments)
                if sound:
                    raise _fail(line, sound)
                why = designer_problem(app, arguments, dialling, reachable, self.allowed_targets)
                if why:
                    raise OutboundDialForbidden(f"line {line}: {why}", field="content")
            for target, line in parsed.includes:
                if _dials(target, dialling):
                    raise OutboundDialForbidden(
                        f"line {line}: [{target}] dials out (an admin's context): designers may not include it",
                        field="content",
                    )
        if self.link.ami is not None:
            output = await self.link.ami.command("core show applications")
            loaded = {m.group(1).lower() for m in re.finditer(r"^\s*([A-Za-z][A-Za-z0-9_]*):", output, re.M)}
            for app, line in sorted(parsed.applications.items(), key=lambda item: item[1]):
                if app not in loaded:
                    raise _fail(line, f"Asterisk has no application {app!r} loaded")

    async def put(self, name: str, content: str, *, outbound: bool = False) -> dict[str, Any]:
        """Validate, apply and keep ``content`` as dialplan ``name``; returns it with ``applied``.

        ``outbound``: the author may dial out (an admin); designers may not reach trunks.
        """
        self._check_name(name)
        if not content.endswith("\n"):
            content += "\n"
        parsed = await self.parse(content)
        async with self.link.lock:
            await self._validate(name, parsed, outbound=outbound)
            applied = await self._apply(name, content, parsed, outbound=outbound)
            await asyncio.to_thread(_write_plain, self.override_dir / f"{name}.conf", content)
        result = await asyncio.to_thread(lambda: self.describe(self._read(name)))
        result["applied"] = applied
        return result

    async def delete(self, name: str) -> None:
        """Custom dialplans are removed; an edited packaged one goes back to the shipped version."""
        self._check_name(name)
        async with self.link.lock:
            current = await asyncio.to_thread(self._read, name)
            if current.source == "packaged":
                raise Conflict(
                    f"dialplan {name!r} is the packaged version already; nothing to revert", field="name"
                )
            if current.source == "override":
                packaged = await asyncio.to_thread(
                    (self.packaged_dir / f"{name}.conf").read_text, encoding="utf-8"
                )
                # The shipped file is trusted as an admin's (it may dial out).
                await self._apply(name, packaged, await self.parse(packaged), outbound=True)
            else:
                etc_file = self.etc_dir / f"{name}.conf"
                old = await asyncio.to_thread(self.link.read_text, etc_file)
                await asyncio.to_thread(etc_file.unlink, missing_ok=True)
                if self.link.live:
                    try:
                        await self.link.reload("dialplan reload")
                    except BaseException:
                        if old is not None:
                            await asyncio.to_thread(self.link.write_config, etc_file, old)
                        raise
            await asyncio.to_thread((self.override_dir / f"{name}.conf").unlink, missing_ok=True)

    async def _apply(self, name: str, content: str, parsed: ParsedDialplan, *, outbound: bool) -> bool:
        etc_file = self.etc_dir / f"{name}.conf"
        old = await asyncio.to_thread(self.link.read_text, etc_file)
        before: dict[str, LoadedContext] = {}
        globals_before = ""
        if self.link.ami is not None:
            # Asterisk's view of the current files, freshly reloaded: what the new file may change is then
            # exactly the difference between this and the view after the next reload.
            await self.link.reload("dialplan reload")
            before, globals_before = await self._loaded()
        await asyncio.to_thread(self.link.write_config, etc_file, content)
        if self.link.ami is None:
            return False
        try:
            problems = await self._reload_and_check(name, parsed, before, globals_before, outbound=outbound)
        except BaseException:
            await self._restore(etc_file, old)
            raise
        if problems:
            await self._restore(etc_file, old)
            raise AsteriskRejected(
                f"Asterisk did not load dialplan {name!r} as written: "
                f"{'; '.join(dict.fromkeys(problems))}. The previous dialplan is still "
                "active.",
                field="content",
            )
        return True

    async def _restore(self, etc_file: Path, old: str | None) -> None:
        if old is None:
            await asyncio.to_thread(etc_file.unlink, missing_ok=True)
        else:
            await asyncio.to_thread(self.link.write_config, etc_file, old)
        await self.link.reload("dialplan reload")

    async def _loaded(self) -> tuple[dict[str, LoadedContext], str]:
        """Every context Asterisk holds now, and its globals."""
        assert self.link.ami is not None
        ok, output = await self.link.ami.run_command("dialplan show")
        if not ok:
            raise AsteriskRejected("Asterisk did not list its dialplan (dialplan show failed)")
        _ok, globals_text = await self.link.ami.run_command("dialplan show globals")
        return parse_dialplan_show(output), globals_text

    async def _reload_and_check(
        self,
        name: str,
        parsed: ParsedDialplan,
        before: dict[str, LoadedContext],
        globals_before: str,
        *,
        outbound: bool,
    ) -> list[str]:
        filename = f"{name}.conf"
        log_start = await asyncio.to_thread(self.link.log_offset)
        await self.link.reload("dialplan reload")
        after, globals_after = await self._loaded()
        counts = await asyncio.to_thread(self._glob_line_counts)
        # Linear, but over every context Asterisk holds: off the event loop that live calls share.
        offset = await asyncio.to_thread(choose_offset, filename, parsed, after, [glob_offset(counts, filename)])

        def check(reasons: AsteriskReasons, unexplained: list[int] | None = None) -> list[str]:
            return verify_loaded(filename, parsed, before, after, outbound=outbound,
                                 allowed_targets=self.allowed_targets, offset=offset, reasons=reasons,
                                 unexplained=unexplained)

        # Asterisk's logger thread writes a reload's warnings shortly after the command returns (later still on
        # a busy machine).  A line Asterisk did not load always has a reason in the log, so for those we wait
        # until it is there (bounded) instead of answering "not loaded" without saying why.
        deadline = time.monotonic() + LOG_WAIT_S
        while True:
            reasons = asterisk_reasons(await self._log_since(log_start), filename, parsed.contexts, offset)
            unexplained: list[int] = []
            problems = await asyncio.to_thread(check, reasons, unexplained)
            if not unexplained or time.monotonic() >= deadline or log_start < 0:
                break
            await asyncio.sleep(0.1)
        problems = reasons.general + problems
        if globals_after != globals_before:
            problems.append("the dialplan globals changed")
        return problems

    def _glob_line_counts(self) -> dict[str, int]:
        """What each file of Asterisk's ``dialplan/*.conf`` glob adds to its line counter (blocking)."""
        counts = {}
        for path in self.etc_dir.glob("*.conf"):
            if not path.name.startswith("."):  # glob's '*' does not match a leading dot
                with contextlib.suppress(OSError):
                    counts[path.name] = path.read_bytes().count(b"\n") + 1
        return counts

    async def _log_since(self, offset: int) -> str:
        if offset < 0:
            return ""
        # log/ is Asterisk's: read without following a link it could have put there.
        data = await asyncio.to_thread(read_tail, self.link.log_file, offset=offset, limit=LOG_READ_LIMIT)
        return data.decode("utf-8", errors="replace")


def _write_plain(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
