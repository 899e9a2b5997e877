"""`RedisCounters`: the `Counters` protocol in Redis, shared by every gateway instance.

One admission is one round trip: a Lua script (`ADMIT`) checks and counts everything a
request is limited by, atomically on the Redis server (a script runs alone, so two
instances can never both take the last slot):

- requests per minute: a sorted set of admission times (`u:{user}:m`, or `k:{key}:m` when
  the key has its own rpm), trimmed to the last 60 s;
- requests per UTC day: a counter `u:{user}:d:{day}` that expires after two days;
- requests in flight, per user (`u:{user}:fl`) and per key (`k:{key}:fl`): sorted sets of
  grant ids scored by a *lease* deadline. The instance holding a request extends the lease
  every `LEASE_REFRESH` s; the grants of an instance that died expire within `LEASE` s, so
  a kill -9 cannot hold a user's slots (or tokens) forever;
- the monthly token quota: a hash `u:{user}:q` (period start/end, settled tokens `used`,
  `reserved` by requests in flight) plus `u:{user}:res` (grant id -> tokens reserved).

`SETTLE` replaces a grant's reservation by its real usage and frees its slots; `release`
is a settle of 0 tokens. Counts are in Redis; the database stays the durable record: each
instance still persists what it counted as deltas (`take_deltas`), so the subscription row
is the sum over all instances.

**Redis lost its keys** (FLUSHALL, restart without persistence, eviction): the admission
finds no quota hash and answers `LOAD`; the instance reads the subscription row (written
in the same transaction as the usage rows, so it equals their sum for the period) and
today's request count from the database, and `INIT` writes them only if nobody else did
first, with the moment they were read (`rb`). A settlement is charged to the hash only if
it happened after `rb` (before, it is in the figures read, or it went to the keys that were
lost), so nothing is counted twice. Missed by a rebuild: what other instances settled in
their last unflushed `FLUSH_INTERVAL` (0.25 s) before it, the rpm window (it restarts
empty) and the reservations of requests then in flight.

**Redis unreachable** (`[redis] on_error`): `fail_closed` refuses with 503 and
`retry-after`; `fail_open` admits against a `MemoryCounters` of this instance (every limit
still holds *per instance*, so N instances can admit up to N times a limit while Redis is
away). The state change is logged once each way; a probe every `PROBE_INTERVAL` s brings
Redis back without a restart, and the settlements made meanwhile are replayed into it with
the time they happened (the `rb` rule above: a Redis that lost its keys and was rebuilt
since only takes those that came after its rebuild).

Times are this host's clock (keep instances on NTP); Redis Cluster is not supported (the
day key is named inside the script).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from gateway.accounting.counters import MIN_OUTPUT_TOKENS, Ask, CounterDelta, Grant
from gateway.accounting.limits import (
    Figures,
    MemoryCounters,
    day_start,
    rate_headers,
    refusal,
    token_headers,
)
from gateway.accounts.users import add_month
from gateway.config import PlanConfig, RedisConfig
from gateway.errors import ApiError
from gateway.store.base import Store

log = logging.getLogger("llmapi.counters")

LEASE = 60.0           # seconds a grant holds its slot without being refreshed
LEASE_REFRESH = 20.0   # how often an instance extends the leases of its requests
PROBE_INTERVAL = 0.25  # seconds between PINGs while Redis is unreachable
MAX_CONNECTIONS = 32  # per instance
REPLAY_BATCH = 500     # settlements per pipelined round trip when Redis returns
MAX_OWED = 100_000     # settlements kept for replay while Redis is away (oldest dropped)
UNAVAILABLE_RETRY_AFTER = 2
_UNREACHABLE = (RedisError, OSError, TimeoutError)

# KEYS: q ufl ures win kfl day; ARGV: now_ms rpm rpd conc monthly max_input estimate
# max_tokens token lease_ms min_output. Replies: {1} LOAD (no quota hash, or its period
# ended); {0, reserved, max_tokens, window, reset_ms, period_start, period_end};
# {2, used, reserved, short, today, window, reset_ms, in_flight, key_in_flight, period_end}.
ADMIT = """
local q, ufl, ures, win, kfl, dayk = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local now = tonumber(ARGV[1])
local rpm, rpd, conc = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local monthly, max_input = tonumber(ARGV[5]), tonumber(ARGV[6])
local est, maxt = tonumber(ARGV[7]), tonumber(ARGV[8])
local token, lease, min_out = ARGV[9], tonumber(ARGV[10]), tonumber(ARGV[11])
local qv = redis.call('HMGET', q, 'ps', 'pe', 'used', 'reserved')
if not qv[1] or not qv[2] or now >= tonumber(qv[2]) * 1000 then return {1} end
local used, reserved = tonumber(qv[3]) or 0, tonumber(qv[4]) or 0
local dead = redis.call('ZRANGEBYSCORE', ufl, '-inf', now)
if #dead > 0 then
  for _, g in ipairs(dead) do
    local r = redis.call('HGET', ures, g)
    if r then reserved = reserved - tonumber(r); redis.call('HDEL', ures, g) end
  end
  redis.call('ZREMRANGEBYSCORE', ufl, '-inf', now)
  if reserved < 0 then reserved = 0 end
  redis.call('HSET', q, 'reserved', reserved)
end
redis.call('ZREMRANGEBYSCORE', kfl, '-inf', now)
redis.call('ZREMRANGEBYSCORE', win, '-inf', now - 60000)
local count = redis.call('ZCARD', win)
local reset = now + 60000
if count > 0 then
  reset = tonumber(redis.call('ZRANGE', win, 0, 0, 'WITHSCORES')[2]) + 60000
end
local today = tonumber(redis.call('GET', dayk) or '0')
local inflight, kinflight = redis.call('ZCARD', ufl), redis.call('ZCARD', kfl)
local res, mt, short = 0, maxt, 0
if monthly > 0 then
  local left = monthly - used - reserved - est
  if left < math.min(maxt, min_out) then short = 1
  else mt = math.min(maxt, left); res = est + mt end
end
if (max_input > 0 and est > max_input) or short == 1 or (rpd > 0 and today >= rpd)
    or (rpm > 0 and count >= rpm)
    or (conc > 0 and (inflight >= conc or kinflight >= conc)) then
  return {2, used, reserved, short, today, count, reset, inflight, kinflight, qv[2]}
end
redis.call('ZADD', win, now, token)
redis.call('PEXPIRE', win, 61000)
redis.call('INCR', dayk)
redis.call('EXPIRE', dayk, 172800)
redis.call('ZADD', ufl, lease, token)
redis.call('ZADD', kfl, lease, token)
local keep = lease - now + 60000
redis.call('PEXPIRE', ufl, keep)
redis.call('PEXPIRE', kfl, keep)
if res > 0 then
  redis.call('HSET', ures, token, res)
  redis.call('PEXPIRE', ures, keep)
  redis.call('HINCRBY', q, 'reserved', res)
end
return {0, res, mt, count + 1, reset, qv[1], qv[2], used, reserved + res}
"""

# KEYS: q ufl ures kfl; ARGV: token tokens period_start settled_ms. Frees the grant's slots
# and reservation, then charges the tokens to the period the grant was taken in (and only
# to it: a payment may have started a fresh one), and only if they were settled after the
# hash was (re)built (`rb`, the moment its figures were read from the database): what was
# settled before is in those figures already, or was lost with the keys it went to.
SETTLE = """
local q, ufl, ures, kfl = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local token, tokens, ps, at = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
if token ~= '' then
  redis.call('ZREM', ufl, token)
  redis.call('ZREM', kfl, token)
  local r = redis.call('HGET', ures, token)
  if r then
    redis.call('HDEL', ures, token)
    if redis.call('HEXISTS', q, 'ps') == 1 then
      local left = redis.call('HINCRBY', q, 'reserved', -tonumber(r))
      if left < 0 then redis.call('HSET', q, 'reserved', 0) end
    end
  end
end
if tokens > 0 then
  local cur = redis.call('HMGET', q, 'ps', 'rb')
  if cur[1] == ps and at >= (tonumber(cur[2]) or 0) then
    redis.call('HINCRBY', q, 'used', tokens)
  end
end
return 0
"""

# KEYS: q ures day; ARGV: mode period_start period_end used today now_ms read_ms (when
# the figures were read: settlements before it are in them). Mode "load"
# writes the figures only if the hash is missing or its period has ended (another instance
# may have loaded it a moment earlier: its figures stand); mode "start" (a payment began a
# period) only if that period is newer than the stored one, so every instance hearing of
# the same payment resets it once.
INIT = """
local q, ures, dayk = KEYS[1], KEYS[2], KEYS[3]
local mode, ps, pe, used, today = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now = tonumber(ARGV[6])
local cur = redis.call('HMGET', q, 'ps', 'pe', 'reserved')
local missing = not cur[1] or not cur[2]
if mode == 'load' then
  if not missing and now < tonumber(cur[2]) * 1000 then return 0 end
elseif not missing and tonumber(cur[1]) >= tonumber(ps) then
  return 0
end
local reserved = cur[3] or '0'
if missing then
  reserved = 0
  local held = redis.call('HVALS', ures)
  for _, v in ipairs(held) do reserved = reserved + tonumber(v) end
  redis.call('SET', dayk, today, 'NX', 'EX', 172800)
end
redis.call('HSET', q, 'ps', ps, 'pe', pe, 'used', used, 'reserved', reserved, 'rb', ARGV[7])
redis.call('EXPIREAT', q, math.floor(tonumber(pe)) + 7 * 86400)
return 1
"""


@dataclass(slots=True)
class _Owed:
    """A settlement Redis has not heard of yet (it was unreachable)."""

    token: str
    user_id: int
    key_id: int
    tokens: int
    period_start: float
    settled_at: float


class RedisCounters:
    """Admission counters in Redis, shared by every instance (the `Counters` protocol)."""

    def __init__(self, db: Store, plans: dict[str, PlanConfig], config: RedisConfig,
                 prefix: str = "llmapi:") -> None:
        self._db = db
        self.plans = plans
        self.policy = config.on_error
        self.timeout = config.timeout
        self.prefix = prefix
        # A bounded pool: a burst of admissions queues for a connection (up to `timeout`)
        # instead of opening hundreds of sockets at once. One retry: after a Redis restart
        # every pooled connection is stale once, which is no outage.
        pool = BlockingConnectionPool.from_url(
            config.url, max_connections=MAX_CONNECTIONS, timeout=config.timeout,
            decode_responses=True, socket_timeout=config.timeout,
            socket_connect_timeout=config.timeout, retry=Retry(NoBackoff(), 1))
        self.redis: Redis = Redis(connection_pool=pool)
        self._admit = self.redis.register_script(ADMIT)
        self._settle = self.redis.register_script(SETTLE)
        self._init = self.redis.register_script(INIT)
        self.local = MemoryCounters(db, plans)  # the fail_open fallback
        self.up = True
        self.instance = secrets.token_hex(6)
        self._seq = 0
        self._live: dict[str, Grant] = {}
        self._deltas: dict[tuple[int, float], list[float]] = {}  # -> [end, tokens, requests]
        self._owed: deque[_Owed] = deque()
        self._owed_dropped = 0
        self.rebuilds = 0           # quota hashes this instance rebuilt from the database
        self.outages = 0            # times Redis became unreachable
        self._back = asyncio.Event()
        self._loading: dict[int, asyncio.Future[None]] = {}

    # ---- keys ---------------------------------------------------------------------------
    def _user(self, user_id: int, what: str) -> str:
        return f"{self.prefix}u:{user_id}:{what}"

    def _key(self, key_id: int, what: str) -> str:
        return f"{self.prefix}k:{key_id}:{what}"

    def _day_key(self, user_id: int, now: float) -> str:
        return self._user(user_id, f"d:{int(day_start(now))}")

    # ---- the protocol -------------------------------------------------------------------
    async def admit(self, ask: Ask) -> Grant:
        if self.up:
            try:
                return await self._admit_shared(ask)
            except _UNREACHABLE as exc:
                self._went_down(exc)
        return await self._admit_while_down(ask)

    async def _admit_shared(self, ask: Ask) -> Grant:
        plan = ask.plan
        self._seq += 1
        token = f"{self.instance}:{self._seq}"
        window = (self._key(ask.key_id, "m") if ask.rpm_per_key
                  else self._user(ask.user_id, "m"))
        for _ in range(3):
            now = time.time()
            now_ms = int(now * 1000)
            reply: list[Any] = await self._call(
                self._admit, keys=[self._user(ask.user_id, "q"), self._user(ask.user_id, "fl"),
                      self._user(ask.user_id, "res"), window, self._key(ask.key_id, "fl"),
                      self._day_key(ask.user_id, now)],
                args=[now_ms, ask.rpm, plan.rpd, plan.concurrency, plan.monthly_tokens,
                      plan.max_input_tokens, ask.input_estimate, ask.max_tokens, token,
                      now_ms + int(LEASE * 1000), MIN_OUTPUT_TOKENS])
            status = int(reply[0])
            if status == 1:
                await self._rebuild_once(ask.user_id, now)
                continue
            if status == 2:
                (used, reserved, short, today, count, reset_ms, in_flight, key_in_flight,
                 period_end) = reply[1:]
                # Decided when the script ran, not when this request took its time: another
                # instance's admission may have landed in the window in between.
                now = time.time()
                reset_at = min(int(reset_ms) / 1000, now + 60)
                raise refusal(ask, Figures(
                    tokens_used=int(used), reserved=int(reserved), quota_short=bool(short),
                    requests_today=int(today), day=day_start(now), window=int(count),
                    reset_at=reset_at, in_flight=int(in_flight),
                    key_in_flight=int(key_in_flight), period_end=float(period_end)),
                    rate_headers(ask.rpm, int(count), reset_at), now)
            reserved, max_tokens, count, reset_ms, ps, pe, used, held = reply[1:]
            granted = rate_headers(ask.rpm, int(count), int(reset_ms) / 1000)
            if plan.monthly_tokens:
                granted.update(token_headers(plan.monthly_tokens, int(used), int(held),
                                             float(pe)))
            grant = Grant(ask.user_id, ask.key_id, int(reserved), int(max_tokens), float(ps),
                          granted, token=token)
            self._live[token] = grant
            self._count(ask.user_id, float(ps), float(pe), 0, 1)
            return grant
        raise RedisError("the quota hash would not stay loaded")  # -> the on_error policy

    async def _admit_while_down(self, ask: Ask) -> Grant:
        if self.policy == "fail_closed":
            raise ApiError(
                "api_error",
                "the gateway cannot reach its rate-limit store (Redis), and is configured "
                "to refuse requests until it is back ([redis] on_error = \"fail_closed\"); "
                "retry shortly", status=503,
                headers={"retry-after": str(UNAVAILABLE_RETRY_AFTER)})
        return await self.local.admit(ask)  # token "": settled by the fallback

    async def settle(self, grant: Grant, tokens: int) -> None:
        await self._finish(grant, max(0, tokens))

    async def release(self, grant: Grant) -> None:
        await self._finish(grant, 0)

    async def _finish(self, grant: Grant, tokens: int) -> None:
        if grant.done:
            return
        if not grant.token:  # admitted by the fallback while Redis was away
            await self.local.settle(grant, tokens)
            if tokens > 0:  # Redis must hear of these tokens too
                await self._settle_shared(_Owed("", grant.user_id, grant.key_id, tokens,
                                                grant.period_start, time.time()))
            return
        grant.done = True
        self._live.pop(grant.token, None)
        if tokens > 0:
            self._count(grant.user_id, grant.period_start, None, tokens, 0)
        await self._settle_shared(_Owed(grant.token, grant.user_id, grant.key_id, tokens,
                                        grant.period_start, time.time()))

    async def _settle_shared(self, owed: _Owed) -> None:
        if self.up:
            try:
                await self._run_settle(owed)
                return
            except _UNREACHABLE as exc:
                self._went_down(exc)
        if len(self._owed) >= MAX_OWED:
            self._owed.popleft()
            self._owed_dropped += 1
        self._owed.append(owed)

    async def _run_settle(self, owed: _Owed) -> None:
        await self._call(self._settle, keys=self._settle_keys(owed),
                         args=self._settle_args(owed))

    def _settle_keys(self, owed: _Owed) -> list[str]:
        return [self._user(owed.user_id, "q"), self._user(owed.user_id, "fl"),
                self._user(owed.user_id, "res"), self._key(owed.key_id, "fl")]

    @staticmethod
    def _settle_args(owed: _Owed) -> list[Any]:
        return [owed.token, owed.tokens, repr(owed.period_start), int(owed.settled_at * 1000)]

    async def start_period(self, user_id: int, period_start: float, period_end: float) -> None:
        """A payment began a period: reset the shared figures once (every instance hears of
        the same payment; only the first reset counts), and the fallback's."""
        self.local.reset_period(user_id, period_start, period_end)
        if not self.up:
            return
        try:
            now = time.time()
            await self._call(self._init, keys=[self._user(user_id, "q"),
                                               self._user(user_id, "res"),
                                               self._day_key(user_id, now)],
                             args=["start", repr(period_start), repr(period_end), 0, 0,
                                   int(now * 1000), 0])
        except _UNREACHABLE as exc:
            self._went_down(exc)

    def take_deltas(self) -> list[CounterDelta]:
        deltas = [CounterDelta(uid, ps, end, int(tokens), int(requests))
                  for (uid, ps), (end, tokens, requests) in self._deltas.items()]
        self._deltas = {}
        return deltas + self.local.take_deltas()

    def restore_deltas(self, deltas: list[CounterDelta]) -> None:
        for d in deltas:
            self._count(d.user_id, d.period_start, d.period_end, d.tokens, d.requests)

    # ---- helpers ------------------------------------------------------------------------
    async def _call(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """One script round trip, bounded by `[redis] timeout` (a hung server is an outage
        like a refused connection; the database reads around it are not bounded by it)."""
        async with asyncio.timeout(self.timeout * 2):
            return await script(keys=keys, args=args)

    async def _rebuild_once(self, user_id: int, now: float) -> None:
        """One rebuild per user at a time in this instance: a burst of first requests
        waits for it instead of each reading the database."""
        running = self._loading.get(user_id)
        if running is None:
            running = self._loading[user_id] = asyncio.ensure_future(
                self._rebuild(user_id, now))
            running.add_done_callback(lambda _: self._loading.pop(user_id, None))
        await asyncio.shield(running)

    def _count(self, user_id: int, ps: float, pe: float | None, tokens: int,
               requests: int) -> None:
        """Add to what this instance owes the database for (user, period)."""
        entry = self._deltas.get((user_id, ps))
        if entry is None:
            entry = self._deltas[(user_id, ps)] = [pe if pe is not None else add_month(ps),
                                                   0, 0]
        elif pe is not None:
            entry[0] = pe
        entry[1] += tokens
        entry[2] += requests

    async def _rebuild(self, user_id: int, now: float) -> None:
        """The quota hash is missing or its period ended: load the period's figures from the
        database (the durable record) and write them unless another instance just did."""
        sub = await self._db.fetch_one("subscription_by_user", {"user_id": user_id})
        today = day_start(now)
        row = await self._db.fetch_one("usage_requests_since",
                                       {"user_id": user_id, "since": today})
        requests_today = int(row["n"]) if row else 0
        if sub is None:
            ps, pe, used = now, add_month(now), 0
            self._count(user_id, ps, pe, 0, 0)  # the next flush creates the row
        else:
            ps, pe, used = float(sub["period_start"]), float(sub["period_end"]), \
                int(sub["tokens_used"])
            rolled = False
            while now >= pe:
                ps, pe, used, rolled = pe, add_month(pe), 0, True
            if rolled:
                self._count(user_id, ps, pe, 0, 0)  # the next flush moves the row on
        # this instance's own unflushed usage of the period is not in the row yet (usage
        # other instances settled in their last flush interval is missed: docs/scale-out.md)
        pending = self._deltas.get((user_id, ps))
        if pending is not None:
            used += int(pending[1])
        used += self.local.pending_tokens(user_id, ps)  # settled by the fallback meanwhile
        read_ms = int(time.time() * 1000)  # every settlement before this is in `used`
        wrote = await self._call(
            self._init, keys=[self._user(user_id, "q"), self._user(user_id, "res"),
                  self._day_key(user_id, now)],
            args=["load", repr(ps), repr(pe), used, requests_today, int(now * 1000),
                  read_ms])
        if int(wrote):
            self.rebuilds += 1
            log.info("counters of user %d loaded from the database: %d tokens used in the "
                     "period, %d requests today", user_id, used, requests_today)

    def _went_down(self, exc: BaseException) -> None:
        if not self.up:
            return
        self.up = False
        self.outages += 1
        self._back.clear()
        self.local.drop_idle()
        what = ("admitting against this instance's own counters (limits hold per instance)"
                if self.policy == "fail_open" else "refusing requests with 503")
        log.error("Redis unreachable (%s: %s): on_error = %s, %s until it is back",
                  type(exc).__name__, exc, self.policy, what)

    async def _came_back(self) -> None:
        """Back to Redis at once; the settlements it missed follow in pipelined batches
        (one round trip per `REPLAY_BATCH`), so a long outage's queue cannot keep the
        instance on its fallback while it is replayed."""
        self.up = True
        replayed = 0
        while self._owed:  # a failure here leaves the rest queued for the next probe
            batch = [self._owed[i] for i in range(min(REPLAY_BATCH, len(self._owed)))]
            async with self.redis.pipeline(transaction=False) as pipe:
                for entry in batch:
                    await self._settle(keys=self._settle_keys(entry),
                                       args=self._settle_args(entry), client=pipe)
                async with asyncio.timeout(self.timeout * 4):
                    await pipe.execute()
            for _ in batch:
                self._owed.popleft()
            replayed += len(batch)
        self._back.set()
        dropped = f"; {self._owed_dropped} settlements were dropped" if self._owed_dropped \
            else ""
        self._owed_dropped = 0
        log.warning("Redis reachable again: counting in Redis again (%d settlements "
                    "replayed%s)", replayed, dropped)

    async def wait_until_up(self, timeout: float) -> bool:
        """For tests: True once Redis is reachable again and has heard what it missed."""
        if self.up and not self._owed:
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._back.wait()
        return self.up and not self._owed

    async def refresh_leases(self) -> None:
        """Extend the lease of every request this instance holds (one pipeline)."""
        if not self._live:
            return
        until = int((time.time() + LEASE) * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            for token, grant in list(self._live.items()):
                pipe.zadd(self._user(grant.user_id, "fl"), {token: until}, xx=True)
                pipe.zadd(self._key(grant.key_id, "fl"), {token: until}, xx=True)
            await pipe.execute()

    async def start(self) -> None:
        """Connect (a Redis down at start-up is the same outage as later, never a crash)."""
        try:
            async with asyncio.timeout(self.timeout * 2):
                await self.redis.ping()
        except _UNREACHABLE as exc:
            self._went_down(exc)

    async def run(self) -> None:
        """Probe while Redis is away; extend leases while it is here."""
        last_refresh = time.monotonic()
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            try:
                async with asyncio.timeout(self.timeout * 2):
                    if not self.up:
                        await self.redis.ping()
                        await self._came_back()
                    elif time.monotonic() - last_refresh >= LEASE_REFRESH:
                        last_refresh = time.monotonic()
                        await self.refresh_leases()
            except _UNREACHABLE as exc:
                self._went_down(exc)
            except Exception:
                log.exception("Redis counters background task")

    async def close(self) -> None:
        await self.redis.aclose()

