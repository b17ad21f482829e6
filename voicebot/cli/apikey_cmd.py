"""``eva apikey create|list|revoke``: API keys for machines.  A key is printed once and stored only hashed."""

from __future__ import annotations

import argparse
import json

from voicebot.config import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("apikey", help="API keys for machines: create, list, revoke")
    actions = parser.add_subparsers(dest="apikey_command", required=True, metavar="ACTION")

    create = actions.add_parser("create", help="create a key (printed once; send it as X-API-Key)")
    create.add_argument("name", help="what the key is for, e.g. 'crm-sync'")
    create.add_argument("--role", choices=("admin", "designer", "viewer", "chat"), default="viewer",
                        help="what the key may do (default viewer: read only; chat: only chat sessions and replies, "
                             "for a website backend)")
    create.set_defaults(func=create_key)

    listing = actions.add_parser("list", help="list keys (never the keys themselves)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=list_keys)

    revoke = actions.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("key_id", type=int, help="the ID shown by `eva apikey list`")
    revoke.set_defaults(func=revoke_key)


def create_key(args: argparse.Namespace) -> int:
    from admin_api import accounts
    from models.db import session_scope
    from voicebot.cli.db_cmd import open_engine

    engine = open_engine(Settings.load())
    try:
        with session_scope(engine) as session:
            row, key = accounts.create_api_key(session, args.name, args.role)
    finally:
        engine.dispose()
    print(f"API key {row.id} ({row.role}) for {row.name!r}:")
    print(key)
    print("Store it now: it is not shown again.  Send it as 'X-API-Key: <key>'.")
    return 0


def list_keys(args: argparse.Namespace) -> int:
    from admin_api import accounts
    from models.db import session_scope
    from voicebot.cli.db_cmd import open_engine

    engine = open_engine(Settings.load())
    try:
        with session_scope(engine) as session:
            keys = list(accounts.list_api_keys(session))
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps([{"id": k.id, "name": k.name, "prefix": k.prefix, "role": k.role,
                           "revoked": k.revoked, "created_at": k.created_at.isoformat(),
                           "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None}
                          for k in keys], indent=2))
        return 0
    print(f"{'ID':>4}  {'NAME':<30} {'PREFIX':<13} {'ROLE':<9} {'STATE':<8} LAST USED")
    for key in keys:
        used = key.last_used_at.strftime("%Y-%m-%d %H:%M") if key.last_used_at else "never"
        print(f"{key.id:>4}  {key.name:<30} {'eva_' + key.prefix:<13} {key.role:<9} "
              f"{'revoked' if key.revoked else 'active':<8} {used}")
    return 0


def revoke_key(args: argparse.Namespace) -> int:
    from admin_api import accounts
    from models.db import session_scope
    from voicebot.cli.db_cmd import open_engine

    engine = open_engine(Settings.load())
    try:
        with session_scope(engine) as session:
            key = accounts.revoke_api_key(session, args.key_id)
    finally:
        engine.dispose()
    print(f"API key {key.id} ({key.name!r}) revoked")
    return 0
