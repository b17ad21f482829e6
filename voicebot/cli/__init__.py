"""The ``eva`` command.  Each command group lives in its own module exposing ``register(subparsers)``;
the module sets ``func`` on its parser, which receives the parsed args and returns an exit code."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from voicebot.errors import EvaError

COMMAND_MODULES = (
    "voicebot.cli.setup_cmd",
    "voicebot.cli.run_cmd",
    "voicebot.cli.asterisk_cmd",
    "voicebot.cli.call_cmd",
    "voicebot.cli.db_cmd",
    "voicebot.cli.agent_cmd",
    "voicebot.cli.chat_cmd",
    "voicebot.cli.kb_cmd",
    "voicebot.cli.flow_cmd",
    "voicebot.cli.campaign_cmd",
    "voicebot.cli.user_cmd",
    "voicebot.cli.apikey_cmd",
    "voicebot.cli.voice_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eva", description="Eva: telephony-first AI voice agents on Asterisk.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (shows caller data)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.umask(0o027)  # what Eva writes (database, knowledge, recordings) is not world-readable
    parser = build_parser()
    args = parser.parse_args(argv)
    from voicebot.logs import setup_logging

    setup_logging(logging.DEBUG if args.verbose else None)
    try:
        code: int = args.func(args)
    except EvaError as exc:
        print(f"eva: error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
