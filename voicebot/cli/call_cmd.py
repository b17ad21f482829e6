"""``eva call NUMBER``: place a real SIP call into Eva's Asterisk, as a carrier would deliver it."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from voicebot.config import Settings
from voicebot.errors import InvalidInput
from voicebot.sipcaller import Action, CallScript, place_call


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("call", help="place a real SIP call (pjsua2) to NUMBER through Eva's Asterisk")
    parser.add_argument("number", help="the DID/extension to dial, e.g. 100")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--play", metavar="FILE.wav", help="play this WAV into the call")
    what.add_argument("--say", metavar="TEXT", help="synthesize TEXT with Piper and play it")
    parser.add_argument("--at", type=float, default=1.0, metavar="S", help="start playing S seconds after answer")
    parser.add_argument("--dtmf", metavar="DIGITS", help="send these DTMF digits after the audio")
    parser.add_argument("--record", metavar="OUT.wav", help="record what the caller hears")
    parser.add_argument("--timeout", type=float, default=20.0, metavar="S", help="hang up S seconds after answer")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = Settings.load()
    actions: list[Action] = []
    at = args.at
    play_path = args.play
    if args.play and not Path(args.play).is_file():
        raise InvalidInput(f"no such file: {args.play}", field="play")
    if args.say:
        from voicebot.tts.piper import synthesize_to_wav

        play_path = str(Path(tempfile.mkdtemp(prefix="eva-say-")) / "say.wav")
        synthesize_to_wav(args.say, play_path, settings=settings)
    if play_path:
        actions.append(Action("play", at=at, path=play_path))
        from voicebot.audio import read_wav

        at += read_wav(play_path).seconds + 0.5
    if args.dtmf:
        actions.append(Action("dtmf", at=at, digits=args.dtmf))
    script = CallScript(
        uri=f"sip:{args.number}@{settings.bind_host}:{settings.sip_port}",
        actions=tuple(actions),
        record_path=str(Path(args.record).resolve()) if args.record else "",
        timeout=args.timeout,
        bind_ip=settings.local_carrier_ip,
    )
    result = place_call(script)
    if args.json:
        print(result.to_json())
    else:
        state = "answered" if result.connected else "not answered"
        print(f"call to {args.number}: {state}, SIP {result.status_code} {result.reason}, "
              f"{result.duration:.1f}s{' (hung up by Eva)' if result.remote_hangup else ''}")
        if result.record_path and result.connected:
            print(f"recording: {result.record_path}")
        if result.error:
            print(f"error: {result.error}")
        if result.events:
            print("events: " + json.dumps(result.events))
    return 0 if result.connected and not result.error else 1
