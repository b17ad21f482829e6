"""The README's first command, exactly as a new user runs it: ``make run``, then ``eva call 100 --say …``.

Only the data folder and the ports are private (environment variables, as a user would set them), so the test
never disturbs another Eva on the machine; everything else — setup, embedded defaults, model loading, Asterisk
boot, the ready banner, Ctrl-C — is the real first run.  If ``make run`` cannot take a call, this fails.
The instance boots once for the module: a designer's dialplan is applied through the admin API on it first (as
issue 12 tried it), then the call, then Ctrl-C.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import stat
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from voicebot.asterisk.render import instance_path
from voicebot.audio import read_wav, voiced_regions
from voicebot.config import PROJECT_ROOT, Settings
from voicebot.harness import free_port_slot

pytestmark = [pytest.mark.asterisk, pytest.mark.models]  # by hand: `make run` boots both in a child process

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


class MakeRun:
    """One ``make run`` for the whole module (Asterisk boots once): its environment, output and data folder."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.data = tmp / "data"
        self.ports = free_port_slot()
        self.env = dict(os.environ)
        self.env.update({f"EVA_{key.upper()}": str(value) for key, value in self.ports.items()})
        self.env["EVA_DATA_DIR"] = str(self.data)  # a fresh data folder: setup runs its steps for real
        self.env.pop("MAKEFLAGS", None)
        self.proc = subprocess.Popen(["make", "run"], cwd=PROJECT_ROOT, env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.output = Output(self.proc)
        self.stopped = False

    def eva(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(PROJECT_ROOT / ".venv" / "bin" / "eva"), *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def stop(self) -> str:
        """Ctrl-C, as the terminal sends it to the whole foreground group; returns everything it printed."""
        if not self.stopped:
            self.stopped = True
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                pytest.fail("`make run` did not stop within 60 s of Ctrl-C:\n" + self.output.text()[-4000:])
            finally:
                self.output.close(self.proc)
        return self.output.text()


@pytest.fixture(scope="module")
def make_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeRun]:
    run = MakeRun(tmp_path_factory.mktemp("make-run"))
    try:
        run.output.wait_for("Eva is ready.", 300, run.proc)
        yield run
    finally:
        run.stop()


FRONTDESK = "[frontdesk-entry]\nexten => 1,1,NoOp(ok)\n same => n,Hangup()\n"
"""The dialplan of issue 12, as an IVR designer first writes one."""


def _put_dialplan(run: MakeRun, key: str, name: str, content: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{run.ports['api_port']}/api/v1/dialplans/{name}", method="PUT",
        data=json.dumps({"content": content}).encode(),
        headers={"X-API-Key": key, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_make_run_applies_a_designers_dialplan_and_says_why_asterisk_refuses_a_line(make_run: MakeRun) -> None:
    """Runs before the call test, which ends the instance with Ctrl-C."""
    assert not make_run.stopped, "this test needs the running `make run` (run the module in file order)"
    created = make_run.eva("apikey", "create", "ivr-designer", "--role", "designer")
    keys = [line.strip() for line in created.stdout.splitlines() if line.strip().startswith("eva_")]
    assert created.returncode == 0 and keys, created.stdout + created.stderr
    key = keys[0]
    etc = make_run.data / "asterisk" / "etc" / "dialplan"

    # The dialplan, sent as a designer sends it: applied, and Asterisk runs it from the file the API
    # wrote under the CLI's umask (root's, Asterisk's group, 0640).
    status, saved = _put_dialplan(make_run, key, "frontdesk", FRONTDESK)
    assert (status, saved.get("applied")) == (200, True), saved
    shown = make_run.eva("asterisk", "cli", "dialplan show frontdesk-entry").stdout
    assert "NoOp(ok)" in shown and "Hangup()" in shown and "[frontdesk.conf:" in shown, shown
    written = (etc / "frontdesk.conf").stat()
    assert (stat.S_IMODE(written.st_mode), written.st_uid, written.st_gid) == (0o640, 0, etc.stat().st_gid)

    # Sorted after inbound.conf (Asterisk numbers its lines after every earlier file's), with CRLF line ends:
    # applied, and handed back exactly as written.
    crlf = "[zz-desk]\r\nexten => 2,1,NoOp(ok)\r\n same => n,Hangup()\r\n"
    status, saved = _put_dialplan(make_run, key, "zz-desk", crlf)
    assert (status, saved.get("applied"), saved.get("content")) == (200, True, crlf), saved

    # Asterisk refuses a line the static check lets through (a priority used twice): the 422 names the line
    # as the designer numbers it and gives Asterisk's own reason, with no path of the chroot in it.
    status, error = _put_dialplan(make_run, key, "zz-dup",
                                  "[zz-dup]\nexten => 1,1,NoOp(first)\nexten => 1,1,Hangup()\n")
    message = error["error"]["message"]
    assert (status, error["error"]["code"]) == (422, "asterisk_rejected"), error
    assert "line 3 was not loaded: Unable to register extension '1' priority 1 in 'zz-dup', already in use" \
        in message, message
    assert "/eva/" not in message and "logged no reason" not in message, message

    # Its first priority refused: the line is the file's line 2, not Asterisk's count across the glob.
    status, error = _put_dialplan(make_run, key, "zz-next", "[zz-next]\nexten => 1,n,NoOp(x)\n")
    message = error["error"]["message"]
    assert (status, error["error"]["code"]) == (422, "asterisk_rejected"), error
    assert "line 2 was not loaded: Can't use 'next' priority on the first entry at line 2 of zz-next.conf" \
        in message, message

    # Neither refused file is left where Asterisk reads, nor loaded.
    assert not (etc / "zz-dup.conf").exists() and not (etc / "zz-next.conf").exists()
    assert "zz-dup" not in make_run.eva("asterisk", "cli", "dialplan show").stdout


def test_make_run_serves_the_console_and_prints_its_one_time_setup_link(make_run: MakeRun) -> None:
    """A new install: the banner's link opens the console's first-run page, whose token makes the first admin."""
    banner = make_run.output.text()
    found = re.search(r"Web console: +(http://127\.0\.0\.1:\d+/)#/setup\?token=([A-Za-z0-9_-]+)", banner)
    assert found, banner[-3000:]
    base, token = found.groups()
    with urllib.request.urlopen(base, timeout=30) as response:
        page = response.read().decode()
        assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert '<script type="module" src="/console/app.js">' in page
    request = urllib.request.Request(
        f"{base}api/v1/console/setup", method="POST",
        data=json.dumps({"token": token, "username": "owner", "password": "first admin password"}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert json.loads(response.read())["user"]["role"] == "admin"
        assert "eva_access=" in response.headers.get("Set-Cookie", "")
    # Spent: the same link makes nobody else an admin.
    try:
        urllib.request.urlopen(request, timeout=60)
        raise AssertionError("the setup token worked twice")
    except urllib.error.HTTPError as error:
        assert error.code in (403, 409)


def test_make_run_answers_a_call_and_ctrl_c_stops_everything(make_run: MakeRun) -> None:
    tmp_path, ports = make_run.tmp, make_run.ports
    record = tmp_path / "reply.wav"
    try:
        call = make_run.eva("call", "100", "--say", QUESTION, "--at", str(ASK_AT), "--record", str(record),
                            "--timeout", "30")
        assert call.returncode == 0, call.stdout + call.stderr
        assert "answered" in call.stdout
    finally:
        log = make_run.stop()
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
