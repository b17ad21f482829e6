"""``eva setup``: models, Asterisk image, secrets and data.  Idempotent."""

from __future__ import annotations

import argparse

from voicebot.config import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("setup", help="prepare models, the Asterisk image, secrets and data (idempotent)")
    parser.add_argument("--force", action="store_true", help="redo every step")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from voicebot.setup import setup

    settings = setup(Settings.load(), force=args.force)
    print(f"Eva is set up (data in {settings.data_dir}).")
    return 0
