"""The pjsua2 worker process: reads a CallScript (JSON) on stdin, places the call, prints a CallResult.

Run as ``python -m voicebot.sipcaller.worker``.  Everything pjsua2 runs on this process's main thread
(``libHandleEvents`` polling); pjsua2 objects (Call, players, recorder) are kept referenced for the whole
call because the C++ side does not own them.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
from typing import Any

import pjsua2 as pj

from voicebot.audio import read_wav, resample, write_wav
from voicebot.sipcaller.script import Action, CallResult, CallScript, schedule

HEARD_LEVEL = 8
"""The far end's signal level (pjmedia's 0..255 scale) above which it counts as making sound; Eva sends digital
silence (level 0) between its words."""
HEARD_GAP_S = 0.4
"""A pause of the far end longer than this ends a stretch of speech (``when_heard``); shorter ones are breaths."""


class _Call(pj.Call):  # type: ignore[misc]
    def __init__(self, account: Any, worker: Worker, call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(account, call_id)
        self.worker = worker

    def onCallState(self, prm: Any) -> None:
        info = self.getInfo()
        if self in self.worker.refused:  # a call refused or left ringing: not the one the script runs
            if info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
                self.worker.others_ended += 1
            return
        self.worker.on_state(info)

    def onCallMediaState(self, prm: Any) -> None:
        if self in self.worker.refused:  # a brief answer's media: not the scripted call's, nothing records it
            return
        info = self.getInfo()
        for index, media in enumerate(info.media):
            if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                self.worker.on_media(self.getAudioMedia(index))


class _Account(pj.Account):  # type: ignore[misc]
    """The callee's account: answers the first incoming call (200 OK), refuses any other (486 Busy)."""

    def __init__(self, worker: Worker) -> None:
        super().__init__()
        self.worker = worker

    def onIncomingCall(self, prm: Any) -> None:
        call = _Call(self, self.worker, prm.callId)
        op = pj.CallOpParam()
        match = re.search(r"sip:([^@;>]+)@", str(call.getInfo().localUri))
        number = match.group(1) if match else ""
        hold = self.worker.script.answer_briefly.get(number)
        if hold is not None:  # answered outside the script, hung up by the main loop once ``hold`` has passed
            self.worker.refused.append(call)
            self.worker.brief.append((time.monotonic() + hold, call))
            self.worker.result.events.append({"kind": "incoming", "number": number, "status": 200,
                                              "at": round(time.monotonic() - self.worker.started, 4)})
            op.statusCode = pj.PJSIP_SC_OK
            call.answer(op)
            return
        status = self.worker.script.refuse.get(number)
        if status is not None:
            self.worker.refused.append(call)
            self.worker.result.events.append({"kind": "incoming", "number": number, "status": status,
                                              "at": round(time.monotonic() - self.worker.started, 4)})
            op.statusCode = status
            if status < 200:
                call.answer(op)  # a provisional answer: it rings until the caller cancels
            else:
                call.hangup(op)
            return
        if self.worker.incoming is not None:
            op.statusCode = pj.PJSIP_SC_BUSY_HERE
            self.worker.refused.append(call)  # pjsua2 needs the object alive until the call is gone
            call.hangup(op)
            return
        self.worker.incoming = call
        op.statusCode = pj.PJSIP_SC_OK
        call.answer(op)


class Worker:
    def __init__(self, script: CallScript) -> None:
        self.script = script
        self.result = CallResult(record_path=script.record_path)
        self.answered_at: float | None = None
        self.ended = False
        self.audio: Any = None
        self.recorder: Any = None
        self.players: list[Any] = []
        self.tmpdir = tempfile.mkdtemp(prefix="eva-call-")
        self.we_hung_up = False
        self.incoming: _Call | None = None
        self.refused: list[_Call] = []
        self.others_ended = 0
        """Refused (or left ringing) calls that have ended."""
        self.brief: list[tuple[float, _Call]] = []
        """Calls answered through ``answer_briefly`` not yet hung up, with when to hang up (monotonic)."""
        self.started = time.monotonic()
        self._armed_at: float | None = None
        """When the waiting ``when_quiet`` step became next (None: none waits)."""
        self._heard = False
        self._quiet_since: float | None = None
        self._speaking_since: float | None = None
        self._last_heard = 0.0
        self._playing_until = 0.0
        """When the last play started ends (seconds after answer): a ``when_quiet`` wait starts after it, so the far
        end's silence while it listens (and thinks) is not taken for the end of its reply."""

    # ------------------------------------------------------------------ callbacks
    def on_state(self, info: Any) -> None:
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED and self.answered_at is None:
            self.answered_at = time.monotonic()
            self.result.connected = True
        if info.remoteUri:
            self.result.remote_uri = str(info.remoteUri)
        if info.lastStatusCode:
            self.result.status_code = int(info.lastStatusCode)
            self.result.reason = str(info.lastReason)
        if info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.ended = True
            self.result.remote_hangup = not self.we_hung_up
            if self.answered_at is not None:
                self.result.duration = time.monotonic() - self.answered_at

    def on_media(self, audio: Any) -> None:
        if self.audio is not None:
            return
        self.audio = audio
        # The conference bridge measures the far end's level (``when_quiet``) only on a port that transmits to
        # something: the (null) speaker listens to the call whether or not it is recorded.
        audio.startTransmit(pj.Endpoint.instance().audDevManager().getPlaybackDevMedia())
        if self.script.record_path:
            self.recorder = pj.AudioMediaRecorder()
            self.recorder.createRecorder(self.script.record_path)
            audio.startTransmit(self.recorder)
            self.result.record_offset = self.elapsed()

    def elapsed(self) -> float:
        return 0.0 if self.answered_at is None else time.monotonic() - self.answered_at

    def due(self, action: Action) -> bool:
        """Is ``action`` (the next step) to be done now?"""
        if action.at > self.elapsed() or self.audio is None:
            return False
        if action.when_quiet <= 0 and action.when_heard <= 0:
            return True
        if self.elapsed() < self._playing_until:
            return False
        now = time.monotonic()
        if self._armed_at is None:
            self._armed_at, self._heard, self._quiet_since, self._speaking_since = now, False, None, None
        # pjsua2 names levels from the conference bridge's side: "tx" is what the bridge takes from the call's
        # port to pass on, i.e. the far end's voice ("rx" is what this caller plays into the call).
        level = self.audio.getTxLevel()
        if action.when_heard > 0:
            if level > HEARD_LEVEL:
                if self._speaking_since is None or now - self._last_heard > HEARD_GAP_S:
                    self._speaking_since = now
                self._last_heard = now
            if self._speaking_since is None or now - self._last_heard > HEARD_GAP_S \
                    or now - self._speaking_since < action.when_heard:
                return False
            self._armed_at = None
            return True
        if level > HEARD_LEVEL:
            self._heard, self._quiet_since = True, None
        elif self._heard and self._quiet_since is None:
            self._quiet_since = now
        if self._quiet_since is None or now - self._quiet_since < action.when_quiet:
            return False
        self._armed_at = None
        return True

    # ------------------------------------------------------------------ actions
    def prepare(self, action: Action) -> str:
        """Convert a WAV to the conference bridge's rate, mono, 16-bit (pjmedia plays it without resampling)."""
        audio = resample(read_wav(action.path), self.script.clock_rate)
        out = os.path.join(self.tmpdir, f"play{len(os.listdir(self.tmpdir))}.wav")
        write_wav(out, audio)
        return out

    def do(self, call: _Call, action: Action, prepared: dict[int, tuple[str, float]], index: int) -> None:
        event: dict[str, Any] = {"kind": action.kind, "at": round(self.elapsed(), 4)}
        if action.kind == "play" and self.audio is not None:
            path, seconds = prepared[index]
            player = pj.AudioMediaPlayer()
            player.createPlayer(path, pj.PJMEDIA_FILE_NO_LOOP)
            player.startTransmit(self.audio)
            self.players.append(player)
            event["end"] = round(event["at"] + seconds, 4)
            self._playing_until = max(self._playing_until, event["at"] + seconds)
        elif action.kind == "dtmf":
            call.dialDtmf(action.digits)
            event["digits"] = action.digits
        elif action.kind == "hangup":
            self.we_hung_up = True
            call.hangup(pj.CallOpParam(True))
        self.result.events.append(event)

    def hang_up_brief(self) -> None:
        """Hang up the brief answers whose time has come (from the loop: pjsua2 runs on this thread only)."""
        now = time.monotonic()
        due = [call for when, call in self.brief if when <= now]
        self.brief = [(when, call) for when, call in self.brief if when > now]
        for call in due:
            with contextlib.suppress(pj.Error):  # the caller may have hung up first
                call.hangup(pj.CallOpParam(True))

    # ------------------------------------------------------------------ main
    def run(self) -> CallResult:
        ep = pj.Endpoint()
        ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.uaConfig.userAgent = "Eva test caller"
        cfg.logConfig.level = 1
        cfg.logConfig.consoleLevel = 1
        cfg.medConfig.clockRate = self.script.clock_rate
        cfg.medConfig.sndClockRate = self.script.clock_rate
        cfg.medConfig.noVad = self.script.no_vad
        cfg.medConfig.ecTailLen = 0
        ep.libInit(cfg)
        tcfg = pj.TransportConfig()
        tcfg.port = self.script.bind_port
        tcfg.boundAddress = self.script.bind_ip
        tcfg.publicAddress = self.script.bind_ip
        ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
        ep.libStart()
        ep.audDevManager().setNullDev()
        # Only G.711 (what a PSTN trunk offers); the order says PCMU first.
        for codec in ep.codecEnum2():
            priority = {"PCMU/8000/1": 255, "PCMA/8000/1": 254}.get(codec.codecId, 0)
            ep.codecSetPriority(codec.codecId, priority)
        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:{self.script.from_user}@{self.script.bind_ip}:{self.script.bind_port}"
        acfg.mediaConfig.transportConfig.boundAddress = self.script.bind_ip
        account = _Account(self)
        account.create(acfg)
        prepared: dict[int, tuple[str, float]] = {}
        for index, action in enumerate(self.script.actions):
            if action.kind == "play":
                path = self.prepare(action)
                prepared[index] = (path, read_wav(path).seconds)
        call: _Call | None = None if self.script.answer else _Call(account, self)
        started = time.monotonic()
        try:
            if call is not None:
                call.makeCall(self.script.uri, pj.CallOpParam(True))
            pending = schedule(self.script.actions)
            while not self.ended:
                ep.libHandleEvents(5)
                self.hang_up_brief()
                now = time.monotonic()
                if call is None:
                    call = self.incoming
                    if call is None:
                        if self.script.calls and self.others_ended >= self.script.calls:
                            break  # a callee that answers nothing saw every call it expected
                        if now - started > self.script.timeout:
                            if not self.script.refuse:
                                self.result.error = "no call came in before the timeout"
                            break
                        continue
                if self.answered_at is None:
                    if now - started > self.script.timeout:
                        self.we_hung_up = True
                        call.hangup(pj.CallOpParam(True))
                        self.result.error = "not answered before the timeout"
                        self._drain(ep, 2.0)
                        break
                    continue
                while pending and self.due(pending[0][1]):
                    index, action = pending.pop(0)
                    self.do(call, action, prepared, index)
                if self.elapsed() > self.script.timeout and not self.ended:
                    self.we_hung_up = True
                    call.hangup(pj.CallOpParam(True))
                    self._drain(ep, 2.0)
                    break
            # A callee told to expect more calls keeps answering them (refusing, or ringing) after this one.
            while (self.script.calls and self.others_ended + (self.incoming is not None) < self.script.calls
                   and time.monotonic() - started < 2 * self.script.timeout):
                ep.libHandleEvents(10)
                self.hang_up_brief()
        except pj.Error as exc:
            self.result.error = f"pjsua2: {exc.info()}"
        finally:
            if self.recorder is not None and self.audio is not None:
                with contextlib.suppress(pj.Error):
                    self.audio.stopTransmit(self.recorder)
            self.recorder = None
            self.players.clear()
            del call
            ep.libDestroy()
        return self.result

    def _drain(self, ep: Any, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.ended and time.monotonic() < end:
            ep.libHandleEvents(10)


def main() -> int:
    script = CallScript.from_json(sys.stdin.read())
    try:
        result = Worker(script).run()
    except Exception as exc:  # the parent needs a result line whatever happened
        result = CallResult(error=f"{type(exc).__name__}: {exc}")
    sys.stdout.write("\n" + result.to_json() + "\n")
    sys.stdout.flush()
    return 0 if result.connected or result.status_code else 1


if __name__ == "__main__":
    sys.exit(main())
