"""Dialplan files (``dialplan/*.conf``) read and edited through the API, validated before Asterisk sees them.

A broken dialplan never replaces a working one:

1. **Static check** (here, before anything is written): Asterisk's config syntax, only the statements a
   routing file needs (``exten``, ``same``, ``include``), balanced parentheses and ``${}``/``$[]`` in
   applications, applications that Asterisk has loaded, includes of contexts that exist, no context that
   another file or extensions.conf already owns, no ``#include``/``#exec`` (``#exec`` would run shell
   commands).
2. **Applied check**: the file is written, ``dialplan reload`` runs, and Asterisk's own view (``dialplan
   show``) must contain exactly the priorities we parsed, line for line, with no warning logged about the
   file. Otherwise the previous file is restored and reloaded, and the reasons are returned (422).

Edited files live in ``<data_dir>/dialplan/NAME.conf`` (an *override* of a packaged file, or a *custom* one);
the rendered copy Asterisk reads is ``<asterisk_dir>/etc/dialplan/NAME.conf``.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from admin_api.asterisk_link import AsteriskLink
from voicebot.asterisk.render import DIALPLAN_DIR, TEMPLATE_DIR
from voicebot.errors import AsteriskRejected, Conflict, InvalidInput, NotFound

NAME_PATTERN = r"[a-z0-9][a-z0-9_-]{0,63}"
_NAME_RE = re.compile(rf"^{NAME_PATTERN}$")
_CONTEXT_RE = re.compile(r"^[A-Za-z0-9_-]{1,79}$")
_HEADER_RE = re.compile(r"^\[([^\]]*)\](.*)$")
_EXTEN_RE = re.compile(r"^(_?[A-Za-z0-9*#+.!\[\]-]+)(/[^,]*)?$")
_PRIORITY_RE = re.compile(r"^(\d{1,5}|n|n\+\d{1,3}|s|hint)(\([A-Za-z0-9_-]{1,64}\))?$")
_APP_RE = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)\s*(?:\((.*)\))?$", re.DOTALL)
_SHOW_LINE_RE = re.compile(r"\[([^\]:]+\.conf):(\d+)\]")
RESERVED_CONTEXTS = frozenset({"general", "globals"})
STATEMENTS = frozenset({"exten", "same", "include"})
ALLOWED_APPLICATIONS = frozenset({
    "answer", "hangup", "noop", "playback", "background", "wait", "waitexten", "goto", "gotoif", "gosub",
    "gosubif", "return", "set", "stasis", "dial", "read", "saydigits", "saynumber", "sayalpha", "playtones",
    "stopplaytones", "progress", "ringing", "busy", "congestion", "senddtmf", "echo", "milliwatt", "verbose",
    "log", "transfer", "waitforsilence", "readexten",
})
"""What IVR designers may call.  Left out on purpose: anything that runs a shell command or writes files
(MixMonitor's command argument, Record, System, AGI) and the indirections to them (Exec, ExecIf, TryExec)."""


@dataclass
class ParsedDialplan:
    contexts: list[str] = field(default_factory=list)
    priorities: dict[str, set[int]] = field(default_factory=dict)
    """Context → line numbers of its priorities (what ``dialplan show`` must list back)."""
    applications: dict[str, int] = field(default_factory=dict)
    """Application name (lower case) → first line using it."""
    includes: list[tuple[str, int]] = field(default_factory=list)


def _fail(line: int, message: str) -> InvalidInput:
    return InvalidInput(f"line {line}: {message}", field="content")


def _strip_comment(line: str) -> str:
    index = 0
    while True:
        index = line.find(";", index)
        if index < 0:
            return line
        if index > 0 and line[index - 1] == "\\":
            index += 1
            continue
        return line[:index]


def _check_balanced(text: str, line: int) -> None:
    pairs = {"(": ")", "{": "}", "[": "]"}
    stack: list[str] = []
    escaped = False
    for char in text:
        if escaped:
            escaped = False
            continue
        if char == "\\":
            escaped = True
        elif char in pairs:
            stack.append(pairs[char])
        elif char in pairs.values() and (not stack or stack.pop() != char):
            raise _fail(line, f"unbalanced {char!r} in application arguments")
    if stack:
        raise _fail(line, f"missing {stack[-1]!r} in application arguments")


def context_headers(text: str) -> list[str]:
    """Context names declared in a config file (tolerant: for files we only need to know the contexts of)."""
    names = []
    for raw in text.splitlines():
        match = _HEADER_RE.match(_strip_comment(raw).strip())
        if match:
            names.append(match.group(1).strip())
    return names


def parse_dialplan(text: str) -> ParsedDialplan:
    """Check ``text`` and describe it; raises InvalidInput naming the first bad line."""
    parsed = ParsedDialplan()
    context: str | None = None
    has_exten: set[str] = set()
    in_block_comment = False
    if "\x00" in text:
        raise InvalidInput("the dialplan contains a NUL character", field="content")
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw
        if in_block_comment:
            end = line.find("--;")
            if end < 0:
                continue
            line = line[end + 3 :]
            in_block_comment = False
        start = line.find(";--")
        if start >= 0 and (start == 0 or line[start - 1] != "\\"):
            end = line.find("--;", start + 3)
            if end < 0:
                in_block_comment = True
                line = line[:start]
            else:
                line = line[:start] + line[end + 3 :]
        line = _strip_comment(line).strip()
        if not line:
            continue
        if line.startswith("#"):
            raise _fail(number, "#include, #tryinclude and #exec are not allowed in dialplans edited here")
        header = _HEADER_RE.match(line)
        if header:
            name, rest = header.group(1).strip(), header.group(2).strip()
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
        key = key.strip().lower()
        value = value.lstrip(">").strip()
        if not sep:
            raise _fail(number, "expected 'exten => ...', 'same => ...', 'include => ...' or a [context]")
        if key not in STATEMENTS:
            raise _fail(number, f"unsupported statement {key!r} (use exten, same or include)")
        if context is None:
            raise _fail(number, f"'{key}' before any [context]")
        if key == "include":
            target = value.split(",", 1)[0].strip()
            if not _CONTEXT_RE.match(target):
                raise _fail(number, f"invalid included context {target!r}")
            parsed.includes.append((target, number))
            continue
        if key == "exten":
            extension, comma, rest = value.partition(",")
            extension = extension.strip()
            if not comma or not _EXTEN_RE.match(extension):
                raise _fail(number, f"invalid extension {extension!r}")
            has_exten.add(context)
        else:
            if context not in has_exten:
                raise _fail(number, "'same' needs an 'exten' before it in the same context")
            rest = value
        priority, comma, application = rest.partition(",")
        priority = priority.strip()
        if not comma or not _PRIORITY_RE.match(priority):
            raise _fail(number, f"invalid priority {priority!r} (a number, n, n+N or s, optionally (label))")
        application = application.strip()
        if priority == "hint":
            continue  # a device-state hint, not an application
        app = _APP_RE.match(application)
        if not app:
            raise _fail(number, f"invalid application call {application!r}")
        if app.group(2) is not None:
            _check_balanced(app.group(2), number)
        parsed.applications.setdefault(app.group(1).lower(), number)
        parsed.priorities[context].add(number)
    if in_block_comment:
        raise InvalidInput("a ;-- block comment is never closed --;", field="content")
    if not parsed.contexts:
        raise InvalidInput("the dialplan declares no [context]", field="content")
    if not any(parsed.priorities.values()):
        raise InvalidInput("the dialplan has no extensions", field="content")
    return parsed


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
        return DialplanFile(name, source, (folder / f"{name}.conf").read_text(encoding="utf-8"))

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
        return [self.describe(f) for f in await asyncio.to_thread(self._all)]

    async def get(self, name: str) -> dict[str, Any]:
        self._check_name(name)
        return self.describe(await asyncio.to_thread(self._read, name))

    @staticmethod
    def _check_name(name: str) -> None:
        if not _NAME_RE.match(name):
            raise InvalidInput("a dialplan name is 1-64 lower-case letters, digits, '_' or '-'", field="name")

    # ------------------------------------------------------------------ writing
    async def _validate(self, name: str, content: str) -> ParsedDialplan:
        parsed = parse_dialplan(content)
        others = [f for f in await asyncio.to_thread(self._all) if f.name != name]
        owners: dict[str, str] = {}
        base = await asyncio.to_thread(self.extensions_conf.read_text, encoding="utf-8")
        for context in context_headers(base):
            owners[context] = "extensions.conf"
        for other in others:
            for context in context_headers(other.content):
                owners.setdefault(context, f"dialplan {other.name!r}")
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
        if self.link.ami is not None:
            output = await self.link.ami.command("core show applications")
            loaded = {m.group(1).lower() for m in re.finditer(r"^\s*([A-Za-z][A-Za-z0-9_]*):", output, re.M)}
            for app, line in sorted(parsed.applications.items(), key=lambda item: item[1]):
                if app not in loaded:
                    raise _fail(line, f"Asterisk has no application {app!r} loaded")
        return parsed

    async def put(self, name: str, content: str) -> dict[str, Any]:
        """Validate, apply and keep ``content`` as dialplan ``name``; returns it with ``applied``."""
        self._check_name(name)
        if not content.endswith("\n"):
            content += "\n"
        async with self.link.lock:
            parsed = await self._validate(name, content)
            applied = await self._apply(name, content, parsed)
            await asyncio.to_thread(_write_plain, self.override_dir / f"{name}.conf", content)
        result = self.describe(await asyncio.to_thread(self._read, name))
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
                packaged = (self.packaged_dir / f"{name}.conf").read_text(encoding="utf-8")
                await self._apply(name, packaged, parse_dialplan(packaged))
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

    async def _apply(self, name: str, content: str, parsed: ParsedDialplan) -> bool:
        etc_file = self.etc_dir / f"{name}.conf"
        old = await asyncio.to_thread(self.link.read_text, etc_file)
        await asyncio.to_thread(self.link.write_config, etc_file, content)
        if self.link.ami is None:
            return False
        try:
            problems = await self._reload_and_check(name, parsed)
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

    async def _reload_and_check(self, name: str, parsed: ParsedDialplan) -> list[str]:
        assert self.link.ami is not None
        filename = f"{name}.conf"
        logged = await self.link.reload("dialplan reload")
        problems = [
            text.replace(str(self.link.settings.asterisk_dir), "")
            for _level, _src, text in logged
            if f"/{filename}" in text or f" {filename}" in text
        ]
        for context, lines in parsed.priorities.items():
            ok, output = await self.link.ami.run_command(f"dialplan show {context}")
            if not ok:
                problems.append(f"context [{context}] was not loaded")
                continue
            loaded = {int(m.group(2)) for m in _SHOW_LINE_RE.finditer(output) if m.group(1) == filename}
            if loaded != lines:
                missing = sorted(lines - loaded)
                if missing:
                    problems.append(f"lines {', '.join(map(str, missing[:10]))} were not loaded")
                else:
                    problems.append(f"context [{context}] holds priorities from other lines")
        return problems


def _write_plain(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
