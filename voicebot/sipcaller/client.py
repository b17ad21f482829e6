"""Run a :class:`CallScript` in a pjsua2 worker process and parse its :class:`CallResult`."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from voicebot.errors import SipCallError
from voicebot.sipcaller.script import CallResult, CallScript

_GRACE = 15.0


def _command() -> list[str]:
    return [sys.executable, "-m", "voicebot.sipcaller.worker"]


def _parse(stdout: str, stderr: str, returncode: int) -> CallResult:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return CallResult.from_json(line)
    raise SipCallError(f"SIP caller process exited {returncode} without a result: {stderr.strip()[-800:]}")


def place_call(script: CallScript) -> CallResult:
    """Place the call and block until it ends."""
    try:
        proc = subprocess.run(_command(), input=script.to_json(), capture_output=True, text=True,
                              timeout=script.timeout + _GRACE, check=False)
    except subprocess.TimeoutExpired as exc:
        raise SipCallError(f"SIP caller did not finish within {script.timeout + _GRACE:.0f}s") from exc
    return _parse(proc.stdout, proc.stderr, proc.returncode)


async def place_call_async(script: CallScript) -> CallResult:
    """Place the call from asyncio code without blocking the loop."""
    proc = await asyncio.create_subprocess_exec(
        *_command(), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(script.to_json().encode()),
                                          timeout=script.timeout + _GRACE)
    except TimeoutError as exc:
        proc.kill()
        await proc.wait()
        raise SipCallError(f"SIP caller did not finish within {script.timeout + _GRACE:.0f}s") from exc
    return _parse(out.decode(), err.decode(), proc.returncode or 0)
