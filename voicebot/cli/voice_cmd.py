"""``eva voice add|list``: the voices agents speak with.  ``add`` validates a Piper voice (NAME.onnx with its
NAME.onnx.json) by loading it and speaking a test sentence, then installs it into ``<data_dir>/voices``, where
agents in its language find it (voicebot.tts.voices); ``list`` shows what each language gets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from voicebot.config import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("voice", help="voices for agents' languages: add a Piper voice, list them")
    actions = parser.add_subparsers(dest="voice_command", required=True, metavar="ACTION")

    add = actions.add_parser("add", help="validate and install a Piper voice (NAME.onnx + NAME.onnx.json)")
    add.add_argument("onnx", type=Path, help="the voice's .onnx file")
    add.add_argument("--config", type=Path, default=None, help="its config (default: the .onnx path + .json)")
    add.set_defaults(func=add_voice)

    listing = actions.add_parser("list", help="installed voices, and the voice each catalog language gets")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=list_voices)


def add_voice(args: argparse.Namespace) -> int:
    from voicebot.tts.voices import add_voice as install

    settings = Settings.load()
    print(f"checking {args.onnx} (loading it and speaking a test sentence) ...", flush=True)
    voice = install(args.onnx, settings.voices_dir, config=args.config)
    print(f"installed voice {voice.name} for language {voice.language} in {settings.voices_dir}")
    print("agents in that language speak with it from their next call (restart `eva run` to preload it)")
    return 0


def list_voices(args: argparse.Namespace) -> int:
    from voicebot.i18n import languages
    from voicebot.tts.voices import installed_voices, resolve_voice

    settings = Settings.load()
    voices = installed_voices(settings.voices_dir)
    by_language = {language: resolve_voice("", language, settings.voices_dir) or "packaged en_US voice"
                   for language in languages()}
    if args.json:
        print(json.dumps({"installed": [{"name": v.name, "language": v.language, "path": str(v.path)}
                                        for v in voices], "by_language": by_language}, indent=2))
        return 0
    print(f"voices folder: {settings.voices_dir}")
    for v in voices:
        print(f"  {v.name:<32} {v.language}")
    if not voices:
        print("  (none installed; `eva voice add NAME.onnx`)")
    for language, key in by_language.items():
        print(f"{language}: {key}")
    return 0
