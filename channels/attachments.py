"""Files that come and go with messages (WhatsApp images and documents, e-mail attachments): kept on disk, listed on
the message row.

A kept file lives at ``<data_dir>/media/<conversation id>/<sha256>.<ext>`` (mode 0600, written to a temporary name
and renamed, so a crash never leaves half a file under the final name).  The name the sender gave is only ever data
in the row's listing: it never becomes part of a path, so no name can climb out of the folder or overwrite another
file.  A message row lists each file as :class:`Attachment.to_dict` gives it; erasing a contact removes their
conversations' folders (:func:`remove_conversations`).
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import os
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicebot.errors import NotFound

log = logging.getLogger(__name__)

MAX_NAME = 120
_EXT_RE = re.compile(r"^\.[a-z0-9]{1,8}$")


def clean_name(name: str, fallback: str = "file") -> str:
    """The sender's file name made safe to show and to put in a Content-Disposition: the last path part, control
    characters and separators removed, at most ``MAX_NAME`` characters."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = "".join(ch for ch in unicodedata.normalize("NFC", base)
                   if unicodedata.category(ch)[0] != "C" and ch not in '"<>:|?*')
    base = base.strip().strip(".") or fallback
    if len(base) > MAX_NAME:
        stem, dot, ext = base.rpartition(".")
        base = (stem[:MAX_NAME - len(ext) - 1] + "." + ext) if dot and len(ext) <= 8 else base[:MAX_NAME]
    return base


def extension(name: str, content_type: str) -> str:
    """A short lower-case extension for the stored file: from the type when it has a usual one, else the name's."""
    guessed = mimetypes.guess_extension((content_type or "").split(";")[0].strip().lower()) or ""
    if not _EXT_RE.match(guessed):
        guessed = Path(name).suffix.lower()
    return guessed if _EXT_RE.match(guessed) else ".bin"


@dataclass(frozen=True)
class Attachment:
    """One file of a message.  ``path`` is relative to the media folder; empty when the file was not kept (it was
    only listed: too large, or of a type not kept)."""

    name: str
    content_type: str
    size: int
    sha256: str
    path: str = ""
    note: str = ""
    """Why it was not kept, or what became of it (``too_large``, ``offered_to_knowledge``...)."""

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"name": self.name, "content_type": self.content_type, "size": self.size,
                               "sha256": self.sha256}
        if self.path:
            row["path"] = self.path
        if self.note:
            row["note"] = self.note
        return row

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> Attachment:
        return cls(str(row.get("name", "")), str(row.get("content_type", "")), int(row.get("size", 0)),
                   str(row.get("sha256", "")), str(row.get("path", "")), str(row.get("note", "")))


def listed(name: str, content_type: str, data: bytes | None, *, size: int | None = None, note: str = "") -> Attachment:
    """An attachment listed but not kept."""
    digest = hashlib.sha256(data).hexdigest() if data is not None else ""
    return Attachment(clean_name(name), content_type, len(data) if data is not None else int(size or 0), digest,
                      note=note)


def keep(media_dir: Path, conversation_id: int, name: str, content_type: str, data: bytes) -> Attachment:
    """Write ``data`` below ``media_dir`` for the conversation and describe it (blocking: call it in a thread)."""
    digest = hashlib.sha256(data).hexdigest()
    relative = f"{int(conversation_id)}/{digest}{extension(name, content_type)}"
    folder = media_dir / str(int(conversation_id))
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = media_dir / relative
    if not target.exists():
        fd, temporary = tempfile.mkstemp(dir=folder, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temporary, 0o600)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    return Attachment(clean_name(name), content_type or "application/octet-stream", len(data), digest, relative)


def keep_or_list(media_dir: Path, conversation_id: int, name: str, content_type: str, data: bytes) -> Attachment:
    """:func:`keep`, or, when the disk refuses (full, unwritable), the file only listed with ``note: "not_kept"``:
    a message is never lost or left unanswered over a file that could not be written (blocking)."""
    try:
        return keep(media_dir, conversation_id, name, content_type, data)
    except OSError as exc:
        log.error("a file of conversation %d could not be kept (%s); it is only listed", conversation_id,
                  exc.strerror or type(exc).__name__)
        return listed(name, content_type or "application/octet-stream", data, note="not_kept")


def kept_path(media_dir: Path, attachment: Attachment) -> Path:
    """The file of a kept attachment; NotFound when it was not kept or is gone (a path that is not one this module
    wrote is refused, whatever the row says)."""
    parts = attachment.path.split("/")
    if (len(parts) != 2 or not parts[0].isdigit()
            or not re.fullmatch(r"[0-9a-f]{64}\.[a-z0-9]{1,8}", parts[1])):
        raise NotFound("the attachment was not kept", code="attachment_not_kept")
    path = media_dir / parts[0] / parts[1]
    if path.is_symlink() or not path.is_file():
        raise NotFound("the attachment's file is gone", code="attachment_not_found")
    return path


def remove_conversations(media_dir: Path, conversation_ids: Iterable[int]) -> int:
    """Delete the media folders of these conversations (blocking).  Returns how many folders were removed; links are
    removed, never followed."""
    removed = 0
    for conversation_id in conversation_ids:
        folder = media_dir / str(int(conversation_id))
        if folder.is_symlink():
            folder.unlink()
            removed += 1
        elif folder.is_dir():
            shutil.rmtree(folder)  # fd-based on Linux: safe against links swapped in while it runs
            removed += 1
    return removed
