"""The `Counters` seam: every limit a request is admitted against, behind one protocol.

A store of counters (in this process's memory: `gateway.accounting.limits.MemoryCounters`;
in Redis, shared by several gateway processes: `gateway.accounting.shared.RedisCounters`)
does three things per request, each atomic on its own:

- `admit(ask)`: check AND count in one step (requests per minute in a sliding window,
  requests per day, requests in flight per user and per key, and a token *reservation*
  against the monthly quota), or refuse with an `ApiError` (429/400) carrying the
  rate-limit headers and `retry-after`. Two concurrent admissions can never both take the
  last slot: nothing awaits between the check and the count.
- `settle(grant, tokens)`: the request finished; replace its reservation by what it really
  used and free its concurrency slot.
- `release(grant)`: the request never produced billable usage (refused upstream before any
  provider, cancelled before sending); drop the reservation and free the slot.

Reservation rule (the bound docs/limits.md states and tests/accounting measure): a request
reserves `input_estimate + min(max_tokens, what remains - input_estimate)`; it is admitted only
if at least `input_estimate + min(max_tokens, MIN_OUTPUT_TOKENS)` remain after every other
reservation in flight. The gateway lowers the `max_tokens` it sends upstream to what was
reserved (`Grant.max_tokens`), so the sum of reservations never passes the quota and the
real total can pass it only by how far the input estimate undershoots the upstream's count.

Persisted counters are written as *deltas* (`take_deltas`): the database adds them to what
is stored, so two writers (two processes, or a flush retried after a crash) add up instead
of overwriting each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from gateway.config import PlanConfig

# Smallest answer a request may be cut down to when the quota is nearly used up: below this
# a request is refused instead of being sent with a uselessly small max_tokens.
MIN_OUTPUT_TOKENS = 64


@dataclass(frozen=True, slots=True)
class Ask:
    """What a request asks the counters for."""

    user_id: int
    key_id: int
    plan: PlanConfig
    rpm: int                # the limit that applies (the key's override, or the plan's)
    rpm_per_key: bool       # True: the window counts this key only (override)
    input_estimate: int
    max_tokens: int         # what the client asked for


@dataclass(slots=True)
class Grant:
    """An admitted request's claim on the counters, given back by `settle` or `release`."""

    user_id: int
    key_id: int
    reserved: int           # tokens held against the monthly quota (0: unlimited plan)
    max_tokens: int         # what may be sent upstream (<= the client's max_tokens)
    period_start: float     # the quota period the reservation was taken in
    headers: dict[str, str] = field(default_factory=dict)
    done: bool = False      # settled or released (a second call is a no-op)
    token: str = ""         # the shared store's id of this claim ("": counted in-process)


@dataclass(frozen=True, slots=True)
class CounterDelta:
    """Tokens and requests one user used since the last persist, within one period."""

    user_id: int
    period_start: float
    period_end: float
    tokens: int
    requests: int


class Counters(Protocol):
    """Admission counters; implementations must make each method atomic on its own."""

    async def admit(self, ask: Ask) -> Grant:
        """Count the request if every limit allows it, else raise `ApiError`."""
        ...

    async def settle(self, grant: Grant, tokens: int) -> None:
        """Charge the real usage in place of the reservation; free the request's slot."""
        ...

    async def release(self, grant: Grant) -> None:
        """Give back the reservation and the slot of a request that used nothing."""
        ...

    async def start_period(self, user_id: int, period_start: float, period_end: float) -> None:
        """A payment began a new period: counters start from zero at once."""
        ...

    def take_deltas(self) -> list[CounterDelta]:
        """Usage counted since the last call, for the recorder's next transaction."""
        ...

    def restore_deltas(self, deltas: list[CounterDelta]) -> None:
        """A failed write: count these deltas again in the next `take_deltas`."""
        ...
