"""Build the aiohttp application: middleware, every long-lived resource, routes.

Each long-lived resource has its own typed `web.AppKey`, declared next to the class it
holds, and its own `cleanup_ctx` entry below. They open top to bottom in the order
`build_app` lists them and close in reverse: a later resource may use an earlier one,
never the other way round. Background tasks belong to the resource that owns them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from aiohttp import web
from redis.asyncio import Redis

from gateway.access_log import ACCESS_LOG, AccessLog
from gateway.accounting.admission import ACCOUNTANT, Accountant
from gateway.accounting.counters import Counters
from gateway.accounting.journal import Journal
from gateway.accounting.keycache import KEY_CACHE, KeyCache
from gateway.accounting.limits import LIMITS, MemoryCounters
from gateway.accounting.shared import RedisCounters
from gateway.accounting.usage import RECORDER, NoopRecorder, UsageRecorder
from gateway.accounts.plans import sync_plans
from gateway.api.endpoints import add_api_routes
from gateway.api.middleware import errors_middleware
from gateway.billing.payments import PAYMENTS, Payments
from gateway.config import CONFIG, Config, ProviderConfig
from gateway.events import USER_EVENTS, RedisEvents, Subscriber, UserChanged, UserEvents
from gateway.inflight import IN_FLIGHT, InFlight
from gateway.lifecycle import LIFECYCLE, Lifecycle
from gateway.metrics import METRICS, Gauge, Metrics
from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.base import PROVIDERS, Provider
from gateway.providers.demo import DemoProvider
from gateway.providers.openai import OpenAIProvider
from gateway.relay.breaker import BREAKERS, STATE_VALUE, Breaker
from gateway.relay.health_checks import HEALTH, HealthChecker
from gateway.remote.hub import REMOTE_HUB, RemoteHub, Viewer, ViewerAuth
from gateway.reports.health import DEPENDENCIES, STARTED_AT, Ping
from gateway.store.base import DATABASE, Store
from gateway.store.factory import open_store
from gateway.store.lease import JOBS, Jobs, open_lease
from gateway.streams import STREAMS, OpenStreams
from web.routes import add_routes as add_site_routes
from web.sessions import signed_in_user
from web.site import setup_site


def build_app(config: Config) -> web.Application:
    """The whole gateway as one aiohttp application (used by `serve` and by tests)."""
    app = web.Application(middlewares=[errors_middleware],
                          client_max_size=config.server.max_body_bytes,
                          # compressed request bodies are refused, never inflated (415)
                          handler_args={"auto_decompress": False})
    app[CONFIG] = config
    app[METRICS] = Metrics()
    app[LIFECYCLE] = Lifecycle()  # serving or draining: /health/ready
    app[DEPENDENCIES] = {}  # stores' pings for /health, added as they open
    app.cleanup_ctx.extend([
        database,          # SQLite file, migrated; plans synced from the config
        jobs,              # leases of the jobs that must run once across instances
        user_events,       # "this user changed" bus: publishers never call subscribers
        limits,            # plan limits and counters (None with accounting off)
        key_cache,         # API keys in memory, refreshed from the database
        usage_recorder,    # usage rows written behind the hot path
        providers,         # one provider (its own HTTP session) and breaker per name
        health_checker,    # background probes of the providers
        streams,           # open client streams and their keep-alive pings
        in_flight,         # relay requests under way, ended properly at the grace's end
        gauges,            # /metrics gauges over the resources above
        remote_hub,        # remote-control WebSocket rooms and their sweeper
        payments,          # orders, Alipay client, reconciler
        access_log,        # one JSON line per request on stderr
    ])
    app.on_shutdown.extend([close_websockets, start_shutdown_grace])
    add_api_routes(app)  # /v1/messages, count_tokens, models, /health, /metrics, /remote-ws
    setup_site(app, config)  # sessions, CSRF, templates, static files, error page
    add_site_routes(app)  # pages and /api/auth|dashboard|admin|payment|remote
    return app


@contextlib.asynccontextmanager
async def running(coro: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    """A background task that lives exactly as long as the `async with` block."""
    task = asyncio.create_task(coro, name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def database(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    db = await open_store(config)
    try:
        await sync_plans(db, config.plans)
        app[DATABASE] = db
        app[DEPENDENCIES]["database"] = (
            "postgresql" if config.database.postgres else "sqlite", db.ping)
        app[STARTED_AT] = time.time()
        yield
    finally:
        await db.close()


async def jobs(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    lease = open_lease(config.database.url if config.database.postgres else "")
    runner = app[JOBS] = Jobs(lease)
    app[METRICS].add_gauge(Gauge(
        "llmapi_job_rounds", "Rounds of each must-run-once job run here; held: this instance "
        "holds its lease", ("job", "held"), runner.samples))
    try:
        yield
    finally:
        await lease.close()


async def user_events(app: web.Application) -> AsyncIterator[None]:
    redis = app[CONFIG].redis
    bus = app[USER_EVENTS] = RedisEvents(redis.url, redis.timeout) if redis.url \
        else UserEvents()
    try:
        async with running(bus.run(), "user-events"):
            yield
    finally:
        await bus.close()


async def limits(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    if not config.server.accounting:
        app[LIMITS] = None
        yield
        return
    plans = {p.name: p for p in config.plans}
    if config.redis.url:  # several instances: counters shared in Redis
        shared = RedisCounters(app[DATABASE], plans, config.redis)
        app[LIMITS] = shared
        app[USER_EVENTS].subscribe(period_starter(shared))
        app[DEPENDENCIES]["redis"] = ("redis", redis_ping(shared.redis))
        await shared.start()
        try:
            async with running(shared.run(), "redis-counters"):
                yield
        finally:
            await shared.close()
        return
    found = app[LIMITS] = MemoryCounters(app[DATABASE], plans)
    app[USER_EVENTS].subscribe(period_starter(found))
    yield


def redis_ping(client: Redis) -> Ping:
    """Seconds one PING takes on the counters' own pool (for /health)."""
    async def ping() -> float:
        start = time.perf_counter()
        await client.ping()
        return time.perf_counter() - start

    return ping


def period_starter(counters: Counters) -> Subscriber:
    """Counters are never dropped on a change (a rename once a second used to reset them):
    plan and status reach the hot path through the key cache; only a payment's new period
    restarts the counts."""
    async def user_changed(event: UserChanged) -> None:
        if event.period is not None:
            await counters.start_period(event.user_id, *event.period)
    return user_changed


async def key_cache(app: web.Application) -> AsyncIterator[None]:
    cache = app[KEY_CACHE] = KeyCache(app[DATABASE], app[USER_EVENTS])
    async with running(cache.run_refresher(), "key-cache-refresher"):
        yield


async def usage_recorder(app: web.Application) -> AsyncIterator[None]:
    found, config = app[LIMITS], app[CONFIG]
    path = config.database_path
    recorder: UsageRecorder | NoopRecorder = (
        UsageRecorder(app[DATABASE], found, {p.name: p for p in config.providers},
                      Journal(path.with_name(path.name + ".journal")))
        if found else NoopRecorder())
    await recorder.replay_journal()  # rows a killed process owed (gateway/accounting/journal)
    app[RECORDER] = recorder
    app[ACCOUNTANT] = Accountant(found, recorder, {p.name: p for p in config.plans})
    recorder.start()
    try:
        yield
    finally:
        await recorder.stop()  # drains the queue: a clean shutdown loses no usage row


def make_provider(config: ProviderConfig) -> Provider:
    """One provider object per protocol; vendors differ only by their config."""
    if config.protocol == "openai":
        return OpenAIProvider(config)
    if config.protocol == "anthropic":
        return AnthropicProvider(config)
    return DemoProvider(config)


async def providers(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    routing = config.routing
    app[BREAKERS] = {p.name: Breaker(routing.breaker_failures, routing.breaker_cooldown)
                     for p in config.providers}
    opened = app[PROVIDERS] = {p.name: make_provider(p) for p in config.providers}
    try:
        yield
    finally:
        for provider in opened.values():
            await provider.close()


async def health_checker(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    checker = app[HEALTH] = HealthChecker(config.providers, app[BREAKERS],
                                          config.routing.health_interval)
    if config.routing.health_interval > 0 and checker.providers:
        async with running(checker.run(), "health-checker"):
            yield
    else:
        yield


async def streams(app: web.Application) -> AsyncIterator[None]:
    open_streams = app[STREAMS] = OpenStreams()
    async with running(open_streams.run_pings(), "keepalive-pings"):
        yield


async def in_flight(app: web.Application) -> AsyncIterator[None]:
    tracker = app[IN_FLIGHT] = InFlight()
    try:
        yield
    finally:
        tracker.close()


async def start_shutdown_grace(app: web.Application) -> None:
    """Shutdown has begun: what is still running at the grace's end is ended by us,
    properly, before aiohttp's own timeout would cut it (gateway/inflight.py)."""
    app[IN_FLIGHT].cut_after(app[CONFIG].server.shutdown_grace)


async def gauges(app: web.Application) -> AsyncIterator[None]:
    metrics, open_streams = app[METRICS], app[STREAMS]
    breakers, recorder = app[BREAKERS], app[RECORDER]
    metrics.add_gauge(Gauge("llmapi_active_streams", "Client streams open now", (),
                            lambda: [((), len(open_streams))]))
    metrics.add_gauge(Gauge(
        "llmapi_breaker_state", "Circuit breaker per provider: 0 closed, 1 half-open, 2 open",
        ("provider",),
        lambda: [((name, ), STATE_VALUE[b.state]) for name, b in breakers.items()]))
    metrics.add_gauge(Gauge("llmapi_usage_queue", "Usage rows waiting to be written",
                            (), lambda: [((), recorder.pending)]))
    yield


def signed_in_viewer(db: Store) -> ViewerAuth:
    """The web session's user and session epoch, for the remote hub's viewer role (the hub
    closes the socket when the epoch moves on: password change, sign-out everywhere)."""
    async def load(user_id: int) -> Any:
        return await db.fetch_one("user_by_id", {"id": user_id})

    async def viewer(request: web.Request) -> Viewer | None:
        user = await signed_in_user(request, load)
        if user is None:
            return None
        row = await load(user.id)  # the epoch the sign-in was checked against
        return Viewer(user.id, int(row["session_epoch"])) if row is not None else None

    return viewer


async def remote_hub(app: web.Application) -> AsyncIterator[None]:
    config, db = app[CONFIG], app[DATABASE]
    hub = app[REMOTE_HUB] = RemoteHub(
        db, app[KEY_CACHE], config.remote, config.public_url, viewer_user=signed_in_viewer(db),
        public_url_configured=bool(config.server.public_url), events=app[USER_EVENTS])
    interval = config.remote.sweep_interval
    try:
        async with running(app[JOBS].run("remote.sweep", interval, hub.sweep),
                           "remote-sweeper"), \
                running(hub.run_room_check(), "remote-room-check"):
            yield
    finally:
        await hub.close_all()


async def close_websockets(app: web.Application) -> None:
    """On shutdown, before in-flight requests are awaited: WebSockets never end by
    themselves, so close them (bridges reconnect to the next process)."""
    hub = app.get(REMOTE_HUB)
    if hub is not None:
        await hub.close_all()


async def payments(app: web.Application) -> AsyncIterator[None]:
    service = app[PAYMENTS] = await Payments.open(app[CONFIG], app[DATABASE],
                                                  app[USER_EVENTS])
    try:
        async with running(app[JOBS].run("payments.reconcile",
                                         app[CONFIG].alipay.reconcile_interval,
                                         service.reconcile), "payment-reconciler"):
            yield
    finally:
        await service.close()


async def access_log(app: web.Application) -> AsyncIterator[None]:
    if not app[CONFIG].server.access_log:
        app[ACCESS_LOG] = None
        yield
        return
    log = app[ACCESS_LOG] = AccessLog()
    async with running(log.run(), "access-log"):
        yield
