"""Issue and check 6-digit e-mail codes: stored hashed, valid 30 minutes, few attempts.

Codes live in the `email_codes` table, so a restart between sending and typing the code
loses nothing. A code is hashed with the same scrypt as passwords (a 6-digit secret is
cheap to brute-force from a plain SHA-256), and a new code replaces every older one.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from enum import Enum

from gateway.accounts.users import hash_password, verify_password
from gateway.store.base import Store

CODE_TTL = 30 * 60
MAX_ATTEMPTS = 5
RESEND_INTERVAL = 60


class CodeProblem(Enum):
    MISSING = "no code was sent to this address, or it was already used; ask for a new one"
    EXPIRED = "this code has expired; ask for a new one"
    LOCKED = "too many wrong codes; ask for a new one"
    WRONG = "this code is not right"


class CodeError(Exception):
    """The typed code was refused; `problem` says why, `attempts_left` how many remain."""

    def __init__(self, problem: CodeProblem, attempts_left: int = 0) -> None:
        message = problem.value
        if problem is CodeProblem.WRONG:
            message += f" ({attempts_left} attempt{'s' if attempts_left != 1 else ''} left)"
        super().__init__(message)
        self.problem = problem
        self.attempts_left = attempts_left


def new_code() -> str:
    return f"{secrets.randbelow(1_000_000):06d}"


async def issue_code(db: Store, email: str, purpose: str, now: float | None = None) -> str:
    """A fresh code for `email`; every older unused code for the same purpose stops working."""
    now = time.time() if now is None else now
    code = new_code()
    code_hash = await asyncio.to_thread(hash_password, code)
    async with db.transaction() as tx:
        await tx.execute("code_replace_active", {"email": email, "purpose": purpose, "now": now})
        await tx.insert("code_insert", {"email": email, "purpose": purpose,
                                        "code_hash": code_hash, "now": now,
                                        "expires_at": now + CODE_TTL})
        await tx.execute("code_prune", {"before": now - 7 * 86400})
    return code


async def seconds_until_resend(db: Store, email: str, purpose: str,
                               now: float | None = None) -> int:
    """How long to wait before another code may be sent (0: now)."""
    now = time.time() if now is None else now
    row = await db.fetch_one("code_latest", {"email": email, "purpose": purpose})
    if row is None:
        return 0
    return max(0, int(row["created_at"] + RESEND_INTERVAL - now + 0.999))


async def check_code(db: Store, email: str, purpose: str, code: str,
                     now: float | None = None) -> None:
    """Accept and use up the code, or raise `CodeError`. Every check is counted.

    The attempt is claimed first, in one statement (`code_claim_attempt`: add one to the
    code's attempts only while they are below `MAX_ATTEMPTS` and it is unexpired and
    unused), and only then is the typed code hashed: 200 guesses sent at once get
    `MAX_ATTEMPTS` comparisons, not 200. A right code uses the code up, so of many
    browsers sending it at once exactly one succeeds."""
    now = time.time() if now is None else now
    async with db.transaction() as tx:
        row = await tx.fetch_one("code_claim_attempt", {
            "email": email, "purpose": purpose, "now": now, "max_attempts": MAX_ATTEMPTS})
    if row is None:
        raise CodeError(await _why_refused(db, email, purpose, now))
    left = MAX_ATTEMPTS - row["attempts"]
    code = "".join(code.split())
    matches = len(code) == 6 and code.isdigit() and await asyncio.to_thread(
        verify_password, code, row["code_hash"])
    if not matches:
        raise CodeError(CodeProblem.LOCKED if left <= 0 else CodeProblem.WRONG, left)
    if not await db.execute("code_mark_used", {"id": row["id"], "now": now}):
        raise CodeError(CodeProblem.MISSING)  # used by a concurrent request a moment ago


async def _why_refused(db: Store, email: str, purpose: str, now: float) -> CodeProblem:
    row = await db.fetch_one("code_latest_active", {"email": email, "purpose": purpose})
    if row is None:
        return CodeProblem.MISSING
    if row["expires_at"] < now:
        return CodeProblem.EXPIRED
    return CodeProblem.LOCKED
