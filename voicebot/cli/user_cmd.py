"""``eva user create|list|delete|passwd``: admin API users (the first admin is made here; no open signup)."""

from __future__ import annotations

import argparse
import getpass
import json
import sys

from voicebot.config import Settings
from voicebot.errors import InvalidInput


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("user", help="admin API users: create, list, delete, passwd")
    actions = parser.add_subparsers(dest="user_command", required=True, metavar="ACTION")

    create = actions.add_parser("create", help="create a user (asks for the password)")
    create.add_argument("username")
    create.add_argument("--role", choices=("admin", "designer", "viewer"), default="viewer",
                        help="admin: everything; designer: agents, knowledge, flows, dialplans, routes; "
                             "viewer: read only (default)")
    create.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of standard input (for scripts)")
    create.set_defaults(func=create_user)

    listing = actions.add_parser("list", help="list users")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=list_users)

    delete = actions.add_parser("delete", help="delete a user (never the last admin)")
    delete.add_argument("username")
    delete.set_defaults(func=delete_user)

    passwd = actions.add_parser("passwd", help="set a user's password (ends the user's sessions)")
    passwd.add_argument("username")
    passwd.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of standard input")
    passwd.set_defaults(func=set_password)


def read_password(from_stdin: bool) -> str:
    """The new password, from stdin or typed twice at a prompt (never echoed, never an argument)."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != password:
            raise InvalidInput("the passwords do not match", field="password")
    from admin_api.accounts import check_password

    return check_password(password)


def create_user(args: argparse.Namespace) -> int:
    from admin_api import accounts
    from models.db import session_scope
    from voicebot.cli.db_cmd import open_engine

    password = read_password(args.password_stdin)
    engine = open_engine(Settings.load())
    try:
        with session_scope(engine) as session:
            user = accounts.create_user(session, args.username, password, args.role)
            print(f"created {user.role} {user.username!r} (id {user.id})")
    finally:
        engine.dispose()
    return 0


def list_users(args: argparse.Namespace) -> int:
    from admin_api import accounts
    from models.db import session_scope
    from voicebot.cli.db_cmd import open_engine

    engine = open_engine(Settings.load())
    try:
        with session_scope(engine) as session:
            users = accounts.list_users(session)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps([{"id": u.id, "username": u.username, "role": u.role, "active": u.active,
                           "created_at": u.created_at.isoformat()} for u in users], indent=2))
        return 0
    if not users:
        print("no users yet: create the first admin with `eva user create NAME --role admin`")
        return 0
    print(f"{'ID':>4}  {'USERNAME':<30} {'ROLE':<9} ACTIVE")
    for user in users:
        print(f"{user.id:>4}  {user.username:<30} {user.role:<9} {'yes' if user.active else 'no'}")
    return 0


def delete_user(args: argparse.Namespace) -> int:
    from admin_api import accounts
    from models.db import session_scope
    from voicebot.cli.db_cmd import open_engine

    engine = open_engine(Settings.load())
    try:
        with session_scope(engine) as session:
            user = accounts.get_user_by_name(session, args.username)
            assert user.id is not None
            accounts.delete_user(session, user.id)
    finally:
        engine.dispose()
    print(f"deleted user {args.username!r}")
    return 0


def set_password(args: argparse.Namespace) -> int:
    from admin_api import accounts
    from models.db import session_scope
    from voicebot.cli.db_cmd import open_engine

    password = read_password(args.password_stdin)
    engine = open_engine(Settings.load())
    try:
        with session_scope(engine) as session:
            user = accounts.get_user_by_name(session, args.username)
            assert user.id is not None
            accounts.update_user(session, user.id, password=password)
    finally:
        engine.dispose()
    print(f"password of {args.username!r} changed; their sessions have ended")
    return 0
