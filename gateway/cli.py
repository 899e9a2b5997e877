"""The operator's command line: `serve` (default), users, keys and the fake upstream.

Every command reads the same config (`--config FILE` or `LLMAPI_CONFIG`) and so the same
database as the server. Mistakes the operator can fix print one line and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from gateway.accounts.users import (
    AccountError,
    create_key,
    create_user,
    normalize_email,
    revoke_key,
    set_plan,
    set_user_status,
)
from gateway.config import Config, ConfigError, load_config, override_server
from gateway.remote import bridge as remote_bridge
from gateway.server import serve
from gateway.store.factory import open_store
from gateway.testing import fake_alipay, fake_upstream

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    # --config is accepted before or after the command; SUPPRESS keeps the top-level value
    # when the sub-command does not repeat it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS,
                        help="TOML config file (default: $LLMAPI_CONFIG)")
    parser = argparse.ArgumentParser(
        prog="python -m gateway", parents=[common],
        description="llmapi: an Anthropic-compatible gateway for Claude Code and friends.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", parents=[common], help="run the gateway (default command)")
    serve.add_argument("--host", help="listen address (default from config: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default from config: 8080)")

    users = sub.add_parser("users", help="manage users").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    add = users.add_parser("add", parents=[common], help="create a user")
    add.add_argument("email")
    add.add_argument("--password", default="", help="password for the web site (optional)")
    add.add_argument("--name", default="")
    add.add_argument("--plan", default="free")
    add.add_argument("--admin", action="store_true", help="make the user an administrator")
    plan = users.add_parser("plan", parents=[common],
                            help="change a user's plan (takes effect at once)")
    plan.add_argument("email")
    plan.add_argument("plan")
    suspend = users.add_parser("suspend", parents=[common],
                               help="suspend a user: all their keys stop working")
    suspend.add_argument("email")
    activate = users.add_parser("activate", parents=[common], help="re-activate a user")
    activate.add_argument("email")

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    kadd = keys.add_parser("add", parents=[common],
                           help="issue a key; prints the raw key alone on stdout")
    kadd.add_argument("email")
    kadd.add_argument("--name", default="")
    revoke = keys.add_parser("revoke", parents=[common],
                             help="revoke the key with this display prefix")
    revoke.add_argument("prefix")

    usage = sub.add_parser("usage", parents=[common],
                           help="print usage and provider cost per user and model")
    usage.add_argument("email", nargs="?", help="only this user")
    usage.add_argument("--days", type=int, default=30, help="look back this many days (30)")

    bridge = sub.add_parser("remote-bridge",
                            help="relay this machine's terminal to the gateway (remote control)")
    remote_bridge.add_arguments(bridge)

    fake = sub.add_parser("fake-upstream", help="run the scripted fake provider (tests, demos)")
    fake_upstream.add_arguments(fake)

    alipay = sub.add_parser("fake-alipay",
                            help="run the fake Alipay gateway (payment tests and demos)")
    fake_alipay.add_arguments(alipay)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command or "serve"
    if command == "remote-bridge":
        return remote_bridge.run(args)
    if command == "fake-upstream":
        return fake_upstream.run(args)
    if command == "fake-alipay":
        return fake_alipay.run(args)
    try:
        config = load_config(getattr(args, "config", None))
    except ConfigError as exc:
        print(f"llmapi: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if command == "serve":
        config = override_server(config, getattr(args, "host", None),
                                 getattr(args, "port", None))
        return serve(config)
    handler = COMMANDS[(command, getattr(args, "action", ""))]
    try:
        return asyncio.run(_with_db(config, lambda db: handler(db, args)))
    except AccountError as exc:
        print(f"llmapi: {exc}", file=sys.stderr)
        return EXIT_USAGE


async def _with_db(config: Config, work: Callable[..., Awaitable[int]]) -> int:
    db = await open_store(config)
    try:
        return await work(db)
    finally:
        await db.close()


async def _users_add(db, args) -> int:  # type: ignore[no-untyped-def]
    await create_user(db, args.email, password=args.password, name=args.name, plan=args.plan,
                      is_admin=args.admin)
    print(f"created user {args.email} on plan {args.plan}", file=sys.stderr)
    return 0


async def _users_plan(db, args) -> int:  # type: ignore[no-untyped-def]
    await set_plan(db, args.email, args.plan)
    print(f"{args.email} is now on plan {args.plan}", file=sys.stderr)
    return 0


async def _users_suspend(db, args) -> int:  # type: ignore[no-untyped-def]
    await set_user_status(db, args.email, "suspended")
    print(f"suspended {args.email}: their keys stop working within a second", file=sys.stderr)
    return 0


async def _users_activate(db, args) -> int:  # type: ignore[no-untyped-def]
    await set_user_status(db, args.email, "active")
    print(f"activated {args.email}", file=sys.stderr)
    return 0


async def _keys_add(db, args) -> int:  # type: ignore[no-untyped-def]
    key = await create_key(db, args.email, args.name)
    print(key.raw)
    print(f"key {key.prefix}... for {args.email}: shown once, store it now", file=sys.stderr)
    return 0


async def _keys_revoke(db, args) -> int:  # type: ignore[no-untyped-def]
    await revoke_key(db, args.prefix)
    print(f"revoked {args.prefix}", file=sys.stderr)
    return 0


async def _usage(db, args) -> int:  # type: ignore[no-untyped-def]
    since = time.time() - args.days * 86_400
    email = normalize_email(args.email) if args.email else None
    rows = await db.fetch_all("usage_summary", {"since": since, "email": email})
    print(format_usage(rows, args.days, email))
    return 0


def format_usage(rows: Sequence[Any], days: int, email: str | None) -> str:
    """A plain table, one line per user/provider/model, and totals per currency."""
    head = ("user", "provider", "model", "requests", "failed", "input", "output",
            "cache read", "cost")
    lines = [[str(r["email"] or "-"), r["provider"], r["upstream_model"], str(r["requests"]),
              str(r["failed"]), str(r["input_tokens"]), str(r["output_tokens"]),
              str(r["cache_read_tokens"]), f"{r['cost']:.4f} {r['currency']}".strip()]
             for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
              for i, h in enumerate(head)]
    out = [f"usage over the last {days} day(s)" + (f" for {email}" if email else ""),
           "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    totals: dict[str, list[float]] = {}
    for r in rows:
        t = totals.setdefault(r["currency"] or "-", [0, 0, 0])
        t[0] += r["requests"]
        t[1] += r["input_tokens"] + r["output_tokens"] + r["cache_read_tokens"]
        t[2] += r["cost"]
    for currency, (requests, tokens, cost) in totals.items():
        out.append(f"total: {int(requests)} requests, {int(tokens)} tokens, "
                   f"{cost:.4f} {currency}")
    if not rows:
        out.append("no usage recorded")
    return "\n".join(out)


COMMANDS: dict[tuple[str, str], Callable[..., Awaitable[int]]] = {
    ("users", "add"): _users_add,
    ("users", "plan"): _users_plan,
    ("users", "suspend"): _users_suspend,
    ("users", "activate"): _users_activate,
    ("keys", "add"): _keys_add,
    ("keys", "revoke"): _keys_revoke,
    ("usage", ""): _usage,
}
