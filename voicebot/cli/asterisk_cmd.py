"""``eva asterisk start|stop|status|cli``: control Eva's own Asterisk."""

from __future__ import annotations

import argparse

from voicebot.asterisk.process import Asterisk
from voicebot.config import Settings
from voicebot.secrets import ensure_secrets


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("asterisk", help="start, stop or query Eva's Asterisk")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("start", help="render config and start Asterisk; waits until fully booted")
    actions.add_parser("stop", help="stop Asterisk")
    actions.add_parser("status", help="is Asterisk running; version and uptime")
    cli = actions.add_parser("cli", help='run one Asterisk CLI command, e.g. eva asterisk cli "pjsip show endpoints"')
    cli.add_argument("cli_command")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    asterisk = Asterisk(ensure_secrets(Settings.load()))
    if args.action == "start":
        pid = asterisk.start()
        print(f"Asterisk is running (pid {pid})")
    elif args.action == "stop":
        asterisk.stop()
        print("Asterisk stopped")
    elif args.action == "status":
        status = asterisk.status()
        if not status.running:
            print("Asterisk is not running")
            return 3
        print(f"running (pid {status.pid})\n{status.version}\n{status.uptime}")
    else:
        print(asterisk.cli(args.cli_command), end="")
    return 0
