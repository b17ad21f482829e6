"""Kept files of messages: a sender's file name is only ever data, files land whole under the conversation's folder,
and only paths this module wrote are served or removed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from channels import attachments
from channels.attachments import Attachment, clean_name, keep, kept_path, remove_conversations
from voicebot.errors import NotFound


@pytest.mark.parametrize(("raw", "clean"), [
    ("invoice.pdf", "invoice.pdf"),
    ("../../etc/passwd", "passwd"),
    ("C:\\Users\\ann\\photo.jpg", "photo.jpg"),
    ("evil\r\nContent-Type: text/html.txt", "html.txt"),
    ("evil\r\nBcc: x@y.z.txt", "evilBcc x@y.z.txt"),
    ('quo"te<>|?*.png', "quote.png"),
    ("", "file"),
    ("...", "file"),
])
def test_names_lose_paths_controls_and_header_breakers(raw: str, clean: str) -> None:
    assert clean_name(raw) == clean
    assert "\r" not in clean_name(raw) and "\n" not in clean_name(raw) and "/" not in clean_name(raw)


def test_long_names_keep_their_extension() -> None:
    name = clean_name("a" * 500 + ".pdf")
    assert len(name) == attachments.MAX_NAME and name.endswith(".pdf")


def test_a_kept_file_is_whole_private_and_named_by_its_hash(tmp_path: Path) -> None:
    data = b"%PDF-1.4 hello"
    kept = keep(tmp_path, 7, "../../report.pdf", "application/pdf", data)
    digest = hashlib.sha256(data).hexdigest()
    assert kept == Attachment("report.pdf", "application/pdf", len(data), digest, f"7/{digest}.pdf")
    path = kept_path(tmp_path, kept)
    assert path.read_bytes() == data and (path.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in (tmp_path / "7").iterdir()] == [f"{digest}.pdf"]  # no temporary left behind
    assert Attachment.from_dict(kept.to_dict()) == kept
    assert keep(tmp_path, 7, "again.pdf", "application/pdf", data).path == kept.path  # same bytes, one file


def test_the_stored_extension_comes_from_the_type_not_the_name(tmp_path: Path) -> None:
    assert keep(tmp_path, 1, "x.php", "image/png", b"png").path.endswith(".png")
    assert keep(tmp_path, 1, "noext", "", b"raw").path.endswith(".bin")


@pytest.mark.parametrize("path", ["", "7", "../7/x.pdf", "7/../../etc/passwd", "7/" + "a" * 64 + ".pdf/x",
                                  "/etc/passwd", "7/notahash.pdf"])
def test_paths_it_did_not_write_are_refused(tmp_path: Path, path: str) -> None:
    with pytest.raises(NotFound):
        kept_path(tmp_path, Attachment("x", "application/pdf", 1, "", path))


def test_a_link_planted_in_place_of_a_file_is_not_served(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("top")
    media = tmp_path / "media"
    kept = keep(media, 3, "a.txt", "text/plain", b"a")
    target = media / kept.path
    target.unlink()
    os.symlink(secret, target)
    with pytest.raises(NotFound):
        kept_path(media, kept)


def test_removing_conversations_removes_only_their_folders_and_never_follows_links(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    media = tmp_path / "media"
    keep(media, 1, "a.txt", "text/plain", b"a")
    keep(media, 2, "b.txt", "text/plain", b"b")
    os.symlink(outside, media / "3")
    assert remove_conversations(media, [1, 3, 99]) == 2
    assert not (media / "1").exists() and (media / "2").is_dir()
    assert (outside / "keep.txt").read_text() == "mine"
