"""``eva run``: start Asterisk and Eva's server in the foreground; Ctrl-C stops both."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("run", help="start Asterisk + Eva (ARI app, admin API) in the foreground")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from voicebot.server import serve

    return serve()
