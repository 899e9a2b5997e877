"""A fake Alipay gateway: a real HTTP server for trade precreate, query and close, with keys.

Tests and the local demo point `[alipay] gateway_url` at it instead of Alipay. It checks
the gateway's RSA2 request signatures with the app's public key, answers like Alipay's
v1 gateway (JSON signed with its own key over the raw `*_response` text), and sends
signed payment notifications to the order's `notify_url` when told to.

Run it: ``python -m gateway fake-alipay [--port 8091] [--keys DIR] [--app-id ID]``. The
folder (default ``data/fake-alipay``) gets any missing key file on start:
``app_private.pem`` (for `[alipay] private_key_path`), ``app_public.pem`` (what the fake
verifies requests with), ``alipay_private.pem`` (the fake signs with it) and
``alipay_public.pem`` (for `[alipay] alipay_public_key_path`).

Endpoints
---------
- ``POST /gateway.do`` (parameters in the form body and/or the query string): methods
  ``alipay.trade.precreate``, ``alipay.trade.query``, ``alipay.trade.close``. As at Alipay,
  a trade nobody has scanned yet does not exist for query and close (ACQ.TRADE_NOT_EXIST).
- ``POST /_fake/pay?out_trade_no=N&mode=M`` pays (or pretends to) and notifies:
  ``ok`` pay and notify; ``duplicate`` pay and notify twice; ``lost`` pay, no notification
  (reconciliation must find it); ``late`` pay a trade that was already closed, and notify;
  ``scan`` only scan (WAIT_BUYER_PAY); ``tampered`` a notification with the right amount
  whose signature does not match its content; ``wrong_amount`` a correctly signed one with
  another amount; ``wrong_app_id`` a correctly signed one for another app. The last three
  leave the trade unpaid. Answers
  ``{"trade": ..., "notify": [{"status": 200, "body": "success"}, ...]}``.
- ``GET /_fake/trades`` (all trades and the calls seen), ``GET /_fake/scan/N`` (an HTML
  page with pay buttons: what the QR code of a fake trade points at).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import html
import itertools
import json
import logging
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.testing.alipay_rsa import (
    BEIJING,
    KeyFileError,
    beijing_timestamp,
    compact_json,
    load_private_key,
    load_public_key,
    parse_amount,
    sign_bytes,
    sign_content,
    verify_bytes,
)

log = logging.getLogger("llmapi.fake_alipay")

DEFAULT_APP_ID = "2021000000000000"
DEFAULT_KEYS_DIR = Path("data/fake-alipay")
MODES = ("ok", "duplicate", "lost", "late", "scan", "tampered", "wrong_amount",
         "wrong_app_id")
METHODS = ("alipay.trade.precreate", "alipay.trade.query", "alipay.trade.close",
           "alipay.trade.refund")


@dataclass(slots=True)
class FakeTrade:
    out_trade_no: str
    total_amount: str
    subject: str
    notify_url: str
    app_id: str
    qr_code: str
    # CREATED (nobody scanned yet) | WAIT_BUYER_PAY | TRADE_SUCCESS | TRADE_CLOSED
    status: str = "CREATED"
    trade_no: str = ""
    gmt_create: str = ""
    gmt_payment: str = ""
    refunds: dict[str, str] = field(default_factory=dict)  # out_request_no -> amount


@dataclass(slots=True)
class KeySet:
    """The fake's own key pair and the app key pair it expects requests to be signed with."""

    alipay_private: rsa.RSAPrivateKey
    app_public: rsa.RSAPublicKey
    app_private: rsa.RSAPrivateKey | None = None  # known when the fake generated it


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_pem(key: rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def load_or_create_keys(folder: Path) -> KeySet:
    """Read the four key files from `folder`, generating whatever pair is missing."""
    folder.mkdir(parents=True, exist_ok=True)

    def pair(name: str) -> tuple[rsa.RSAPrivateKey | None, rsa.RSAPublicKey]:
        private_file, public_file = folder / f"{name}_private.pem", folder / f"{name}_public.pem"
        if public_file.exists() and not private_file.exists():  # e.g. a real app's key
            return None, load_public_key(public_file.read_text(encoding="utf-8"))
        if private_file.exists():
            key = load_private_key(private_file.read_text(encoding="utf-8"))
        else:
            key = new_key()
            private_file.write_bytes(private_pem(key))
            private_file.chmod(0o600)
        public_file.write_bytes(public_pem(key.public_key()))
        return key, key.public_key()

    alipay_private, _ = pair("alipay")
    app_private, app_public = pair("app")
    assert alipay_private is not None  # the fake's own pair always has its private half
    return KeySet(alipay_private=alipay_private, app_public=app_public,
                  app_private=app_private)


class FakeAlipay:
    """The fake's state: trades by out_trade_no, the calls seen, the keys."""

    def __init__(self, keys: KeySet, app_id: str = DEFAULT_APP_ID) -> None:
        self.keys = keys
        self.app_id = app_id
        self.trades: dict[str, FakeTrade] = {}
        self.calls: list[dict[str, str]] = []   # every gateway request, parameters as sent
        self.base_url = ""                       # set when serving: used in QR codes
        self._numbers = itertools.count(1)
        self._http: aiohttp.ClientSession | None = None

    # --- the OpenAPI gateway --------------------------------------------------------

    def signed_answer(self, method: str, body: dict[str, Any]) -> str:
        """`{"<method>_response": {...}, "sign": "..."}` signed over the raw member text."""
        raw = compact_json(body)
        signature = sign_bytes(raw.encode("utf-8"), self.keys.alipay_private)
        name = method.replace(".", "_") + "_response"
        return f'{{"{name}":{raw},"sign":"{signature}"}}'

    async def handle_gateway(self, request: web.Request) -> web.Response:
        params: dict[str, str] = dict(request.query)
        if request.method == "POST":
            params.update({k: v for k, v in (await request.post()).items()
                           if isinstance(v, str)})
        self.calls.append(params)
        method = params.get("method", "")
        if method not in METHODS:
            return self._json('{"error_response":{"code":"40002","msg":"Invalid Arguments",'
                              '"sub_code":"isv.invalid-method","sub_msg":"unknown method"}}')
        signature = params.get("sign", "")
        if params.get("sign_type") != "RSA2" or not verify_bytes(
                sign_content(params).encode("utf-8"), signature, self.keys.app_public):
            return self._answer(method, _failure("40002", "isv.invalid-signature",
                                                 "request signature is wrong"))
        if params.get("app_id") != self.app_id:
            return self._answer(method, _failure("40002", "isv.invalid-app-id",
                                                 f"unknown app_id {params.get('app_id')!r}"))
        try:
            biz = json.loads(params.get("biz_content", ""))
        except ValueError:
            biz = None
        if not isinstance(biz, dict) or not isinstance(biz.get("out_trade_no"), str):
            return self._answer(method, _failure("40002", "isv.missing-out-trade-no",
                                                 "biz_content.out_trade_no is required"))
        if method == "alipay.trade.precreate":
            return self._answer(method, self._precreate(biz, params))
        trade = self.trades.get(biz["out_trade_no"])
        if trade is None or trade.status == "CREATED":
            return self._answer(method, _failure("40004", "ACQ.TRADE_NOT_EXIST",
                                                 "trade does not exist"))
        if method == "alipay.trade.query":
            return self._answer(method, {**_SUCCESS, **self._trade_fields(trade),
                                         "buyer_pay_amount": trade.total_amount
                                         if trade.status == "TRADE_SUCCESS" else "0.00"})
        if method == "alipay.trade.refund":
            return self._answer(method, self._refund(trade, biz))
        if trade.status == "TRADE_SUCCESS":
            return self._answer(method, _failure("40004", "ACQ.TRADE_STATUS_ERROR",
                                                 "the trade was paid"))
        trade.status = "TRADE_CLOSED"
        return self._answer(method, {**_SUCCESS, "out_trade_no": trade.out_trade_no,
                                     "trade_no": trade.trade_no})

    def _precreate(self, biz: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
        no = biz["out_trade_no"]
        amount = biz.get("total_amount")
        if not isinstance(amount, str) or parse_amount(amount) is None:
            return _failure("40002", "isv.invalid-total-amount", "total_amount is wrong")
        existing = self.trades.get(no)
        if existing is not None:
            if existing.total_amount != amount or existing.status != "CREATED":
                return _failure("40004", "ACQ.CONTEXT_INCONSISTENT",
                                "out_trade_no used with other content")
            trade = existing
        else:
            trade = FakeTrade(out_trade_no=no, total_amount=amount,
                              subject=str(biz.get("subject", "")),
                              notify_url=params.get("notify_url", ""), app_id=self.app_id,
                              qr_code=f"{self.base_url}/_fake/scan/{no}",
                              gmt_create=beijing_timestamp())
            self.trades[no] = trade
        return {**_SUCCESS, "out_trade_no": no, "qr_code": trade.qr_code}

    def _refund(self, trade: FakeTrade, biz: dict[str, Any]) -> dict[str, Any]:
        """Alipay's refund rules ("统一收单交易退款接口" alipay.trade.refund, Alipay open
        platform docs): `refund_amount` in yuan with at most two decimals; only a paid trade
        is refunded (ACQ.TRADE_STATUS_ERROR otherwise); without `out_request_no` the amount
        must be the whole total (ACQ.REFUND_AMT_NOT_EQUAL_TOTAL); refunds together may not
        exceed the total (ACQ.REASON_TRADE_REFUND_FEE_ERR); a repeated `out_request_no`
        answers success with `fund_change` "N" and moves no money; a fully refunded trade
        becomes TRADE_CLOSED. A repeated `out_request_no` with another amount is refused
        (ACQ.CONTEXT_INCONSISTENT): stricter than a guess at what Alipay would do."""
        raw = biz.get("refund_amount")
        amount = parse_amount(raw) if isinstance(raw, str) else None
        if amount is None or amount <= 0:
            return _failure("40002", "isv.invalid-refund-amount", "refund_amount is wrong")
        total = parse_amount(trade.total_amount) or 0
        refunded = sum((parse_amount(a) or 0) for a in trade.refunds.values())
        request_no = biz.get("out_request_no") or trade.out_trade_no
        if not isinstance(request_no, str):
            return _failure("40002", "isv.invalid-out-request-no", "out_request_no is wrong")
        fields = {"out_trade_no": trade.out_trade_no, "trade_no": trade.trade_no,
                  "buyer_logon_id": "buy***@example.com", "send_back_fee": "0.00",
                  "gmt_refund_pay": beijing_timestamp()}
        if request_no in trade.refunds:
            if parse_amount(trade.refunds[request_no]) != amount:
                return _failure("40004", "ACQ.CONTEXT_INCONSISTENT",
                                "out_request_no used with another amount")
            return {**_SUCCESS, **fields, "fund_change": "N",
                    "refund_fee": f"{refunded:.2f}"}
        if trade.status != "TRADE_SUCCESS":
            return _failure("40004", "ACQ.TRADE_STATUS_ERROR", "the trade is not paid")
        if "out_request_no" not in biz and amount != total:
            return _failure("40004", "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL",
                            "撤销或退款金额与订单金额不一致")
        if refunded + amount > total:
            return _failure("40004", "ACQ.REASON_TRADE_REFUND_FEE_ERR",
                            "REASON_TRADE_REFUND_FEE_ERR")
        trade.refunds[request_no] = f"{amount:.2f}"
        if refunded + amount == total:
            trade.status = "TRADE_CLOSED"
        return {**_SUCCESS, **fields, "fund_change": "Y",
                "refund_fee": f"{refunded + amount:.2f}"}

    def _trade_fields(self, trade: FakeTrade) -> dict[str, str]:
        return {"out_trade_no": trade.out_trade_no, "trade_no": trade.trade_no,
                "trade_status": trade.status, "total_amount": trade.total_amount,
                "buyer_logon_id": "buy***@example.com", "buyer_user_id": "2088102177846880"}

    def _answer(self, method: str, body: dict[str, Any]) -> web.Response:
        return self._json(self.signed_answer(method, body))

    @staticmethod
    def _json(text: str) -> web.Response:
        return web.Response(text=text, content_type="application/json", charset="utf-8")

    # --- payments and notifications -------------------------------------------------

    def scan(self, trade: FakeTrade) -> None:
        if trade.status == "CREATED":
            trade.status = "WAIT_BUYER_PAY"
            trade.trade_no = datetime.now(BEIJING).strftime("%Y%m%d") + \
                f"22{next(self._numbers):020d}"

    def pay(self, trade: FakeTrade) -> None:
        self.scan(trade)
        trade.status = "TRADE_SUCCESS"
        trade.gmt_payment = beijing_timestamp()

    def notification(self, trade: FakeTrade, **overrides: str) -> dict[str, str]:
        """A correctly signed TRADE_SUCCESS notification for `trade`, fields overridden
        before signing (so `total_amount="1.00"` is a valid signature over a wrong amount)."""
        params = {
            "notify_time": beijing_timestamp(), "notify_type": "trade_status_sync",
            "notify_id": secrets.token_hex(16), "app_id": trade.app_id, "charset": "utf-8",
            "version": "1.0", "sign_type": "RSA2", "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no, "buyer_id": "2088102177846880",
            "buyer_logon_id": "buy***@example.com", "seller_id": "2088102177296610",
            "trade_status": "TRADE_SUCCESS", "total_amount": trade.total_amount,
            "receipt_amount": trade.total_amount, "buyer_pay_amount": trade.total_amount,
            "invoice_amount": trade.total_amount, "point_amount": "0.00",
            "subject": trade.subject, "gmt_create": trade.gmt_create,
            "gmt_payment": trade.gmt_payment or beijing_timestamp(),
            "fund_bill_list": compact_json([{"amount": trade.total_amount,
                                             "fundChannel": "ALIPAYACCOUNT"}]),
        }
        params.update(overrides)
        return self.sign_notification(params)

    def sign_notification(self, params: dict[str, str]) -> dict[str, str]:
        signed = {k: v for k, v in params.items() if k != "sign"}
        content = sign_content(signed, exclude_sign_type=True)
        signed["sign"] = sign_bytes(content.encode("utf-8"), self.keys.alipay_private)
        return signed

    async def send(self, url: str, params: dict[str, str]) -> dict[str, Any]:
        """POST a notification as Alipay does (form-encoded); the receiver's answer."""
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        try:
            async with self._http.post(url, data=params) as response:
                return {"status": response.status, "body": await response.text()}
        except (aiohttp.ClientError, TimeoutError) as exc:
            return {"status": 0, "body": f"unreachable: {exc!r}"}

    async def pay_and_notify(self, out_trade_no: str, mode: str) -> dict[str, Any]:
        """What `POST /_fake/pay` does (see the module docstring for the modes)."""
        trade = self.trades.get(out_trade_no)
        if trade is None:
            raise LookupError(f"no trade {out_trade_no}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        if trade.status == "TRADE_CLOSED" and mode != "late":
            raise ValueError("the trade is closed; mode=late pays it anyway")
        notify: list[dict[str, Any]] = []
        if mode == "scan":
            self.scan(trade)
        elif mode in ("ok", "duplicate", "lost", "late"):
            self.pay(trade)
            if mode != "lost":
                params = self.notification(trade)
                for _ in range(2 if mode == "duplicate" else 1):
                    notify.append(await self.send(trade.notify_url, params))
        else:
            shadow = copy.copy(trade)
            self.pay(shadow)  # the paid fields a forged notice would carry; trade stays
            if mode == "tampered":
                # the right amount and status, but not what Alipay signed
                params = {**self.notification(shadow), "buyer_id": "2088000000000001"}
            elif mode == "wrong_amount":
                amount = parse_amount(trade.total_amount) or 0
                params = self.notification(shadow, total_amount=f"{amount + 1:.2f}")
            else:
                params = self.notification(shadow, app_id="2021999999999999")
            notify.append(await self.send(trade.notify_url, params))
        return {"trade": asdict(trade), "notify": notify}

    async def handle_pay(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        if request.method == "POST" and request.content_type in (
                "application/x-www-form-urlencoded", "multipart/form-data"):
            query.update({k: v for k, v in (await request.post()).items()
                          if isinstance(v, str)})
        try:
            result = await self.pay_and_notify(query.get("out_trade_no", ""),
                                               query.get("mode", "ok"))
        except LookupError as exc:
            return web.json_response({"error": str(exc)}, status=404)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=409)
        return web.json_response(result)

    async def handle_trades(self, request: web.Request) -> web.Response:
        return web.json_response({"trades": [asdict(t) for t in self.trades.values()],
                                  "calls": self.calls})

    async def handle_scan_page(self, request: web.Request) -> web.Response:
        trade = self.trades.get(request.match_info["out_trade_no"])
        if trade is None:
            raise web.HTTPNotFound(text="no such trade")
        no = html.escape(trade.out_trade_no)
        buttons = "".join(
            f'<form method="post" action="/_fake/pay?out_trade_no={no}&amp;mode={m}">'
            f'<button>{m}</button></form>' for m in MODES)
        page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>Fake Alipay</title></head><body><h1>Fake Alipay</h1>"
                f"<p>{html.escape(trade.subject)}: ¥{html.escape(trade.total_amount)} "
                f"({html.escape(trade.status)})</p>{buttons}</body></html>")
        return web.Response(text=page, content_type="text/html")

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


_SUCCESS = {"code": "10000", "msg": "Success"}


def _failure(code: str, sub_code: str, sub_msg: str) -> dict[str, str]:
    msg = "Invalid Arguments" if code == "40002" else "Business Failed"
    return {"code": code, "msg": msg, "sub_code": sub_code, "sub_msg": sub_msg}


FAKE_ALIPAY = web.AppKey("fake_alipay", FakeAlipay)


def build_app(fake: FakeAlipay) -> web.Application:
    """The fake as an aiohttp application (its state is `app[FAKE_ALIPAY]`)."""
    app = web.Application()
    app[FAKE_ALIPAY] = fake
    app.router.add_route("*", "/gateway.do", fake.handle_gateway)
    app.router.add_post("/_fake/pay", fake.handle_pay)
    app.router.add_get("/_fake/trades", fake.handle_trades)
    app.router.add_get("/_fake/scan/{out_trade_no}", fake.handle_scan_page)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        yield
        await fake.close()

    app.cleanup_ctx.append(lifecycle)
    return app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m gateway fake-alipay``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8091, help="port (default 8091)")
    parser.add_argument("--keys", "--write-keys", dest="keys", type=Path,
                        default=DEFAULT_KEYS_DIR,
                        help="folder of the key files; missing ones are generated "
                             "(default data/fake-alipay)")
    parser.add_argument("--app-id", default=DEFAULT_APP_ID,
                        help=f"the app_id requests must carry (default {DEFAULT_APP_ID})")


async def _serve(fake: FakeAlipay, host: str, port: int, keys_dir: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError):  # Windows has no add_signal_handler
            loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(build_app(fake), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        fake.base_url = f"http://{host}:{bound}"
        folder = keys_dir.resolve()
        print(f"fake Alipay listening on {fake.base_url}\n"
              f"[alipay]\n"
              f'app_id = "{fake.app_id}"\n'
              f'private_key_path = "{folder / "app_private.pem"}"\n'
              f'alipay_public_key_path = "{folder / "alipay_public.pem"}"\n'
              f'gateway_url = "{fake.base_url}/gateway.do"', flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; 0 when stopped, 2 when a key file is unusable."""
    try:
        keys = load_or_create_keys(args.keys)
    except (KeyFileError, OSError) as exc:
        print(f"fake-alipay: {args.keys}: {exc}", file=sys.stderr)
        return 2
    fake = FakeAlipay(keys, args.app_id)
    asyncio.run(_serve(fake, args.host, args.port, args.keys))
    return 0
