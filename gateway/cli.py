"""The operator's command line: `serve` (default), users, keys, migrate-data and the fakes.

Every command reads the same config (`--config FILE` or `LLMAPI_CONFIG`) and so the same
database as the server, and first syncs `[[plans]]` from it, so a plan defined in the
config can be used before the server ever started. Mistakes the operator can fix print
one line and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from gateway.accounts.plans import sync_plans
from gateway.accounts.signup import SiteAccountError, check_new_password, delete_account
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
from gateway.events import announce
from gateway.remote import bridge as remote_bridge
from gateway.reports.admin import record_audit, user_target
from gateway.server import serve
from gateway.store import migrate_data
from gateway.store.factory import open_store
from gateway.testing import fake_alipay, fake_upstream

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    # --config is accepted before or after the command; SUPPRESS keeps the top-level value
    # when the sub-command does not repeat it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS,
                        help="TOML config file (default: $LLMAPI_CONFIG)")
    # serve's options, also accepted without a command (`python -m gateway --port 9000`)
    listen = argparse.ArgumentParser(add_help=False)
    listen.add_argument("--host", default=argparse.SUPPRESS,
                        help="listen address (default from config: 127.0.0.1)")
    listen.add_argument("--port", type=int, default=argparse.SUPPRESS,
                        help="listen port (default from config: 8080)")
    parser = argparse.ArgumentParser(
        prog="python -m gateway", parents=[common, listen],
        description="llmapi: an Anthropic-compatible gateway for Claude Code and friends.")
    parser.add_argument("--version", action="version", version=f"llmapi {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sub.add_parser("serve", parents=[common, listen], help="run the gateway (default command)")

    users = sub.add_parser("users", help="manage users").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    add = users.add_parser("add", parents=[common], help="create a user")
    add.add_argument("email")
    add.add_argument("--password", default="", metavar="-",
                     help="'-': ask for the web site password on the terminal (no echo), or "
                          "read one line of standard input; a password written here is "
                          "visible to other users (ps, shell history)")
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
    ulist = users.add_parser("list", parents=[common], help="list users (deleted ones hidden)")
    ulist.add_argument("--plan", default="", help="only users on this plan")
    ulist.add_argument("--status", default="",
                       help="only users with this status (active, suspended, pending, deleted)")
    delete = users.add_parser("delete", parents=[common],
                              help="delete a user: personal data erased, every key revoked")
    delete.add_argument("email")
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    kadd = keys.add_parser("add", parents=[common],
                           help="issue a key; prints the raw key alone on stdout")
    kadd.add_argument("email")
    kadd.add_argument("--name", default="")
    revoke = keys.add_parser("revoke", parents=[common],
                             help="revoke the key with this display prefix")
    revoke.add_argument("prefix")
    klist = keys.add_parser("list", parents=[common],
                            help="list keys (prefixes, never the keys themselves)")
    klist.add_argument("email", nargs="?", default="", help="only this user's keys")

    usage = sub.add_parser("usage", parents=[common],
                           help="print usage and provider cost per user and model")
    usage.add_argument("email", nargs="?", help="only this user")
    usage.add_argument("--days", type=int, default=30, help="look back this many days (30)")

    bridge = sub.add_parser("remote-bridge",
                            help="relay this machine's terminal to the gateway (remote control)")
    remote_bridge.add_arguments(bridge)

    move = sub.add_parser("migrate-data", parents=[common],
                          help="copy the SQLite database into PostgreSQL (idempotent, verified)")
    move.add_argument("--to", default=os.environ.get("LLMAPI_DATABASE_URL", ""),
                      help="postgresql://user:pass@host:5432/db (default: $LLMAPI_DATABASE_URL)")
    move.add_argument("--from", dest="source", default="",
                      help="the SQLite file (default: the config's [database] path)")
    move.add_argument("--batch-size", type=int, default=migrate_data.DEFAULT_BATCH,
                      help="rows per PostgreSQL transaction")

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
    if command == "migrate-data":
        return _migrate_data(config, args)
    if command == "serve":
        config = override_server(config, getattr(args, "host", None),
                                 getattr(args, "port", None))
        return serve(config)
    handler = COMMANDS[(command, getattr(args, "action", ""))]
    deleting = (command, getattr(args, "action", "")) == ("users", "delete")
    if deleting and not args.yes and not confirm(
            f"delete {args.email}? Their keys stop working and personal data is erased; "
            "type the e-mail address again to confirm: ", args.email):
        print("llmapi: not deleted", file=sys.stderr)
        return EXIT_USAGE
    if (command, getattr(args, "action", "")) == ("users", "add") and args.password:
        try:
            args.password = site_password(args.password)
        except SiteAccountError as exc:
            print(f"llmapi: password: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        return asyncio.run(_with_db(config, lambda db: handler(db, args),
                                    announced=(command, getattr(args, "action", ""))
                                    in ANNOUNCED))
    except AccountError as exc:
        print(f"llmapi: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, sqlite3.Error) as exc:
        print(f"llmapi: cannot open the database {config.database_path}: {exc}",
              file=sys.stderr)
        return EXIT_USAGE


def site_password(given: str) -> str:
    """`users add --password -`: from a prompt on a terminal (asked twice, no echo), else
    one line of standard input (a pipe, a file, a secret manager). Any other value is
    used as it is, with a warning: argv is readable by every user of the machine. Either
    way the site's rules for passwords apply."""
    if given == "-":
        if sys.stdin.isatty():
            password = getpass.getpass("Password: ")
            if getpass.getpass("Again: ") != password:
                raise SiteAccountError("the two passwords differ")
        else:
            password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    else:
        print("llmapi: warning: a password on the command line is visible to other users "
              "(ps, shell history); use --password - and type it or pipe it in",
              file=sys.stderr)
        password = given
    check_new_password(password)
    return password


def _migrate_data(config: Config, args: argparse.Namespace) -> int:
    """Progress on stderr, the verification table on stdout; 1 when a figure differs."""
    source = Path(args.source) if args.source else config.database_path
    try:
        reports = asyncio.run(migrate_data.migrate_data(
            source, args.to, batch_size=args.batch_size,
            progress=lambda line: print(line, file=sys.stderr, flush=True)))
    except migrate_data.MigrateError as exc:
        print(f"llmapi: migrate-data: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(migrate_data.format_report(reports))
    return 1 if any(r.mismatches for r in reports) else 0


def package_version() -> str:
    try:
        return version("llmapi")
    except PackageNotFoundError:  # a checkout run without installing
        return "unknown (not installed)"


def confirm(prompt: str, expected: str) -> bool:
    """Ask on the terminal; no terminal (a script) means no."""
    if not sys.stdin.isatty():
        print("llmapi: refusing to delete without a terminal to confirm on; "
              "pass --yes", file=sys.stderr)
        return False
    try:
        return normalize_email(input(prompt)) == normalize_email(expected)
    except (EOFError, AccountError):
        return False


# Commands whose change every running instance must feel at once (revocation, suspension,
# plan): announced on Redis when `[redis] url` is set (gateway/events.py).
ANNOUNCED = {("users", "plan"), ("users", "suspend"), ("users", "activate"),
             ("users", "delete"), ("keys", "revoke")}


async def _with_db(config: Config, work: Callable[..., Awaitable[int]],
                   announced: bool = False) -> int:
    db = await open_store(config)
    try:
        await sync_plans(db, config.plans)
        code = await work(db)
    finally:
        await db.close()
    if announced and code == 0 and config.redis.url and not await announce(
            config.redis.url, timeout=config.redis.timeout):
        print("llmapi: Redis unreachable: running gateways see the change by polling "
              "the database within a second", file=sys.stderr)
    return code


async def _plan_problem(db: Any, plan: str) -> str | None:
    """None when the plan exists, else a line naming the plans there are."""
    if await db.fetch_one("plan_by_name", {"name": plan}) is not None:
        return None
    names = ", ".join(r["name"] for r in await db.fetch_all("plan_all"))
    return f"unknown plan {plan!r}; the plans are: {names} (add more with [[plans]])"


def cli_actor() -> str:
    """Who ran a command, as the audit log names them: "cli:" and the OS user."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no login name in the environment nor the user database
        return f"cli:uid {os.getuid()}"


async def _audit(db: Any, action: str, email: str, detail: str,
                 user_id: int | None = None) -> None:
    """The audit entry an admin page would write for the same change (the CLI's actor)."""
    if user_id is None:
        user = await db.fetch_one("user_by_email", {"email": normalize_email(email)})
        user_id = user["id"] if user else 0
    target = user_target(user_id, normalize_email(email) if email else None)
    await record_audit(db, None, cli_actor(), action, target, detail)


async def _users_add(db, args) -> int:  # type: ignore[no-untyped-def]
    problem = await _plan_problem(db, args.plan)
    if problem:
        raise AccountError(problem)
    user_id = await create_user(db, args.email, password=args.password, name=args.name,
                                plan=args.plan, is_admin=args.admin)
    await _audit(db, "user.create", args.email,
                 f"plan {args.plan}{', admin' if args.admin else ''}", user_id)
    print(f"created user {args.email} on plan {args.plan}", file=sys.stderr)
    return 0


async def _users_plan(db, args) -> int:  # type: ignore[no-untyped-def]
    problem = await _plan_problem(db, args.plan)
    if problem:
        raise AccountError(problem)
    user = await db.fetch_one("user_by_email", {"email": normalize_email(args.email)})
    before = user and await db.fetch_one("subscription_by_user", {"user_id": user["id"]})
    await set_plan(db, args.email, args.plan)  # refuses an unknown address
    await _audit(db, "user.plan", args.email,
                 f"plan {before['plan'] if before else '?'} -> {args.plan}")
    print(f"{args.email} is now on plan {args.plan}", file=sys.stderr)
    return 0


async def _set_status(db: Any, email: str, status: str) -> None:
    before = await db.fetch_one("user_by_email", {"email": normalize_email(email)})
    await set_user_status(db, email, status)
    await _audit(db, "user.suspend" if status == "suspended" else "user.activate", email,
                 f"status {before['status'] if before else '?'} -> {status}")


async def _users_suspend(db, args) -> int:  # type: ignore[no-untyped-def]
    await _set_status(db, args.email, "suspended")
    print(f"suspended {args.email}: their keys stop working within a second", file=sys.stderr)
    return 0


async def _users_activate(db, args) -> int:  # type: ignore[no-untyped-def]
    await _set_status(db, args.email, "active")
    print(f"activated {args.email}", file=sys.stderr)
    return 0


async def _users_list(db, args) -> int:  # type: ignore[no-untyped-def]
    rows = await db.fetch_all("users_list", {"plan": args.plan, "status": args.status})
    print(table(("id", "email", "plan", "status", "admin", "keys", "created"),
                [(str(r["id"]), r["email"], r["plan"] or "-", r["status"],
                  "yes" if r["is_admin"] else "", str(r["active_keys"]), _day(r["created_at"]))
                 for r in rows]))
    print(f"{len(rows)} user(s)", file=sys.stderr)
    return 0


async def _users_delete(db, args) -> int:  # type: ignore[no-untyped-def]
    user = await db.fetch_one("user_by_email", {"email": normalize_email(args.email)})
    if user is None or user["status"] == "deleted":
        raise AccountError(f"no user with e-mail {args.email}")
    try:
        await delete_account(db, user["id"], user["email"])
    except SiteAccountError as exc:
        raise AccountError(str(exc)) from None
    # the address is erased with the account: the entry names the id only
    await _audit(db, "user.delete", "", "keys revoked, personal data erased", user["id"])
    print(f"deleted {args.email}: keys revoked, personal data erased", file=sys.stderr)
    return 0


async def _keys_list(db, args) -> int:  # type: ignore[no-untyped-def]
    email = normalize_email(args.email) if args.email else ""
    rows = await db.fetch_all("keys_list", {"email": email})
    print(table(("prefix", "user", "name", "created", "last used", "state"),
                [(r["prefix"], r["email"], r["name"] or "-", _day(r["created_at"]),
                  _day(r["last_used_at"]), "revoked" if r["revoked_at"] else "active")
                 for r in rows]))
    print(f"{len(rows)} key(s)", file=sys.stderr)
    return 0


def _day(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d", time.gmtime(ts))


def table(head: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
              for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip()]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
            for line in lines]
    return "\n".join(out)


async def _keys_add(db, args) -> int:  # type: ignore[no-untyped-def]
    key = await create_key(db, args.email, args.name)
    await _audit(db, "key.create", args.email,
                 f"key {key.prefix}{f' ({args.name})' if args.name else ''}")
    print(key.raw)
    print(f"key {key.prefix}... for {args.email}: shown once, store it now", file=sys.stderr)
    return 0


async def _keys_revoke(db, args) -> int:  # type: ignore[no-untyped-def]
    owners = [r for r in await db.fetch_all("keys_by_prefix", {"prefix": args.prefix})
              if r["revoked_at"] is None]
    await revoke_key(db, args.prefix)  # refuses none or several active keys
    await _audit(db, "key.revoke", owners[0]["email"], f"key {args.prefix}",
                 owners[0]["user_id"])
    print(f"revoked {args.prefix}", file=sys.stderr)
    return 0


async def _usage(db, args) -> int:  # type: ignore[no-untyped-def]
    since = time.time() - args.days * 86_400
    email = normalize_email(args.email) if args.email else None
    rows = await db.fetch_all("usage_summary", {"since": since, "email": email})
    failures = await db.fetch_all("usage_failures", {"since": since, "email": email})
    print(format_usage(rows, args.days, email, failures))
    return 0


def format_usage(rows: Sequence[Any], days: int, email: str | None,
                 failures: Sequence[Any] = ()) -> str:
    """A plain table, one line per user/provider/model, and totals per currency; then the
    requests that failed, per user, status and error type."""
    head = ("user", "api", "provider", "model", "requests", "failed", "input", "output",
            "cache read", "cost")
    lines = [[str(r["email"] or "-"), str(r["ingress"]), r["provider"], r["upstream_model"],
              str(r["requests"]),
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
    if failures:
        out += ["", "failed requests by status"]
        out += _table(("user", "status", "error type", "requests", "tokens"),
                      [[str(f["email"] or "-"), str(f["status"]), str(f["error_type"] or "-"),
                        str(f["requests"]), str(f["tokens"] or 0)] for f in failures])
    return "\n".join(out)


def _table(head: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h)
              for i, h in enumerate(head)]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in [head, *lines]]


COMMANDS: dict[tuple[str, str], Callable[..., Awaitable[int]]] = {
    ("users", "add"): _users_add,
    ("users", "plan"): _users_plan,
    ("users", "suspend"): _users_suspend,
    ("users", "activate"): _users_activate,
    ("users", "list"): _users_list,
    ("users", "delete"): _users_delete,
    ("keys", "list"): _keys_list,
    ("keys", "add"): _keys_add,
    ("keys", "revoke"): _keys_revoke,
    ("usage", ""): _usage,
}
