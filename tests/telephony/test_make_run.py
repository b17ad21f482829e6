"""The README's first command, exactly as a new user runs it: ``make run``, then ``eva call 100 --say …``.

Only the data folder and the ports are private (environment variables, as a user would set them), so the test
never disturbs another Eva on the machine; everything else — setup, embedded defaults, model loading, Asterisk
boot, the ready banner, Ctrl-C — is the real first run.  If ``make run`` cannot take a call, this fails.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from voicebot.asterisk.render import instance_path
from voicebot.audio import read_wav, voiced_regions
from voicebot.config import PROJECT_ROOT, Settings
from voicebot.harness import free_port_slot

pytestmark = [pytest.mark.asterisk, pytest.mark.slow]

QUESTION = "What are your opening hours on Saturday?"
ASK_AT = 5.0


def _port_free(port: int, kind: int) -> bool:
    """Could a new server take the port?  (As servers do, with SO_REUSEADDR: the closed connections' TIME_WAIT
    entries of a stopped server do not hold its port, a process still listening does.)"""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            if kind == socket.SOCK_STREAM:
                sock.listen()
        except OSError:
            return False
    return True


class Output:
    """Collects a child's output on a thread so the pipe never fills; lets the test wait for a line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, text: str, timeout: float, proc: subprocess.Popen[str]) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not any(text in line for line in self.lines):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"`make run` never printed {text!r}:\n" + "\n".join(self.lines[-40:]))
                self._changed.wait(0.5)

    def close(self, proc: subprocess.Popen[str]) -> None:
        self._thread.join(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()

    def text(self) -> str:
        with self._changed:
            return "\n".join(self.lines)


def test_make_run_answers_a_call_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    ports = free_port_slot()
    env = dict(os.environ)
    env.update({f"EVA_{key.upper()}": str(value) for key, value in ports.items()})
    env["EVA_DATA_DIR"] = str(tmp_path / "data")  # a fresh data folder: setup runs its steps for real
    env.pop("MAKEFLAGS", None)
    proc = subprocess.Popen(["make", "run"], cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    output = Output(proc)
    try:
        output.wait_for("Eva is ready.", 300, proc)
        record = tmp_path / "reply.wav"
        call = subprocess.run(
            [str(PROJECT_ROOT / ".venv" / "bin" / "eva"), "call", "100", "--say", QUESTION, "--at", str(ASK_AT),
             "--record", str(record), "--timeout", "30"],
            env=env, capture_output=True, text=True, timeout=90, check=False)
        assert call.returncode == 0, call.stdout + call.stderr
        assert "answered" in call.stdout
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends to the whole foreground group
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("`make run` did not stop within 60 s of Ctrl-C:\n" + output.text()[-4000:])
        output.close(proc)
    log = output.text()
    assert "Eva stopped." in log, log[-4000:]

    # The answer is stored with the call, in the data folder `make run` set up.
    db = sqlite3.connect(tmp_path / "data" / "eva.db")
    try:
        turns = db.execute("SELECT user_text, spoken_text FROM call_turns").fetchall()
    finally:
        db.close()
    assert turns and turns[-1][1], f"no answered turn stored: {turns}\n{log[-3000:]}"

    # What the caller heard: the greeting before the question, then an answer after it.
    audio = read_wav(record)
    regions = voiced_regions(audio)
    question_end = ASK_AT + 3.0  # the synthesized question lasts about 2.5 s
    assert any(start < ASK_AT for start, _ in regions), regions
    answer = sum(min(end, audio.seconds) - max(start, question_end) for start, end in regions if end > question_end)
    assert answer > 1.0, f"no answer after the question: {regions}; turns {turns}"

    # Nothing is left running and every port is free again.
    data = tmp_path / "data"
    assert not (data / "asterisk" / "asterisk.pid").exists()
    conf = f"{instance_path(Settings(data_dir=data))}/etc/asterisk.conf".encode()
    marker = f"EVA_DATA_DIR={data}".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        assert conf not in cmdline, f"Asterisk still running: {cmdline!r}"
        assert marker not in environ.split(b"\0"), f"a process of `make run` is still running: {cmdline!r}"
    assert _port_free(ports["sip_port"], socket.SOCK_DGRAM)
    for key in ("ari_port", "ami_port", "api_port"):
        assert _port_free(ports[key], socket.SOCK_STREAM), key
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(tmp_path) not in mounts
