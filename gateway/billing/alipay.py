"""Call Alipay's OpenAPI (v1 gateway): trade precreate, query and close, signed with RSA2.

One `AlipayClient` per process holds the app's private key, Alipay's public key and one
aiohttp session. Every answer is checked against Alipay's signature over the raw text of
its `*_response` member before anything in it is believed; a business failure (a code
other than "10000") becomes an `AlipayError` carrying Alipay's `sub_code`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.billing.alipay_sign import (
    AlipayKeyError,
    load_private_key,
    load_public_key,
    response_members,
    sign_params,
    verify_bytes,
)
from gateway.config import AlipayConfig, ConfigError

log = logging.getLogger("llmapi.alipay")

BEIJING = timezone(timedelta(hours=8))
SUCCESS_CODE = "10000"
PAID_STATUSES = frozenset({"TRADE_SUCCESS", "TRADE_FINISHED"})
TRADE_NOT_EXIST = "ACQ.TRADE_NOT_EXIST"
TRADE_STATUS_ERROR = "ACQ.TRADE_STATUS_ERROR"


class AlipayError(Exception):
    """Alipay could not be reached, answered unsigned or wrongly signed, or said no."""

    def __init__(self, message: str, code: str = "", sub_code: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.sub_code = sub_code


@dataclass(frozen=True, slots=True)
class Trade:
    """What `alipay.trade.query` says about one order (status None: no such trade yet)."""

    out_trade_no: str
    status: str | None          # WAIT_BUYER_PAY | TRADE_CLOSED | TRADE_SUCCESS | TRADE_FINISHED
    trade_no: str = ""
    total_amount: str = ""

    @property
    def paid(self) -> bool:
        return self.status in PAID_STATUSES


@dataclass(frozen=True, slots=True)
class Refund:
    """What `alipay.trade.refund` answered: the trade's refunded total so far, and whether
    this call moved money (False for a repeated `out_request_no`)."""

    out_trade_no: str
    refund_fee: str
    fund_change: bool


def beijing_timestamp(now: datetime | None = None) -> str:
    """`yyyy-MM-dd HH:mm:ss` in Beijing time, the form of the `timestamp` parameter."""
    moment = now or datetime.now(UTC)
    return moment.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")


def compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def read_keys(config: AlipayConfig,
              source: str = "<config>") -> tuple[rsa.RSAPrivateKey, rsa.RSAPublicKey]:
    """Both key files, read when the payment service opens (config parsing does no I/O);
    a missing or unusable file is a `ConfigError` naming the key, one line at start."""

    def read(name: str, path: Path | None) -> str:
        if path is None:
            raise ConfigError(source, f"alipay.{name}", "must name a key file when app_id "
                                                         "is set")
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(source, f"alipay.{name}",
                              f"{path} cannot be read: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(source, f"alipay.{name}",
                              f"{path} is not a usable key: not text") from None

    private_text = read("private_key_path", config.private_key_path)
    public_text = read("alipay_public_key_path", config.alipay_public_key_path)
    try:
        private = load_private_key(private_text)
    except AlipayKeyError as exc:
        raise ConfigError(source, "alipay.private_key_path",
                          f"{config.private_key_path} is not a usable key: {exc}") from None
    try:
        public = load_public_key(public_text)
    except AlipayKeyError as exc:
        raise ConfigError(source, "alipay.alipay_public_key_path",
                          f"{config.alipay_public_key_path} is not a usable key: {exc}"
                          ) from None
    return private, public


class AlipayClient:
    """Signed calls to one Alipay gateway for one app."""

    def __init__(self, config: AlipayConfig, notify_url: str,
                 http: aiohttp.ClientSession, source: str = "<config>") -> None:
        self.config = config
        self.notify_url = notify_url
        self._http = http
        self._private_key, self.alipay_public_key = read_keys(config, source)

    def signed_params(self, method: str, biz: dict[str, Any],
                      notify_url: str | None = None) -> dict[str, str]:
        """The form a request sends: common parameters, `biz_content` and `sign`."""
        params = {
            "app_id": self.config.app_id, "method": method, "format": "JSON",
            "charset": "utf-8", "sign_type": "RSA2", "timestamp": beijing_timestamp(),
            "version": "1.0", "biz_content": compact_json(biz),
        }
        if notify_url:
            params["notify_url"] = notify_url
        params["sign"] = sign_params(params, self._private_key)
        return params

    async def call(self, method: str, biz: dict[str, Any],
                   notify_url: str | None = None) -> dict[str, Any]:
        """POST one signed request; the verified `*_response` object, code checked."""
        params = self.signed_params(method, biz, notify_url)
        try:
            async with self._http.post(
                    self.config.gateway_url, data=params,
                    headers={"Accept": "application/json"}) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AlipayError(f"{method}: Alipay unreachable: {exc!r}") from None
        if status != 200:
            raise AlipayError(f"{method}: HTTP {status} from Alipay")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise AlipayError(f"{method}: answer is not UTF-8") from None
        return self.verified_answer(method, text)

    def verified_answer(self, method: str, text: str) -> dict[str, Any]:
        """Check the signature over the raw `*_response` text, then the business code."""
        try:
            members = response_members(text)
        except ValueError as exc:
            raise AlipayError(f"{method}: answer is not JSON: {exc}") from None
        name = method.replace(".", "_") + "_response"
        raw = members.get(name)
        if raw is None:  # e.g. `error_response` for a bad app_id or signature: unsigned
            error = _parsed(members.get("error_response", "{}"))
            error = error if isinstance(error, dict) else {}
            raise AlipayError(f"{method}: {error.get('msg', 'no ' + name)} "
                              f"{error.get('sub_msg', '')}".strip(),
                              str(error.get("code", "")), str(error.get("sub_code", "")))
        signature = _parsed(members.get("sign", '""'))
        if not isinstance(signature, str) or not verify_bytes(
                raw.encode("utf-8"), signature, self.alipay_public_key):
            raise AlipayError(f"{method}: answer signature missing or wrong")
        body = _parsed(raw)
        if not isinstance(body, dict):
            raise AlipayError(f"{method}: {name} is not an object")
        code = str(body.get("code", ""))
        if code != SUCCESS_CODE:
            raise AlipayError(f"{method}: {body.get('msg', '')} {body.get('sub_msg', '')}"
                              .strip(), code, str(body.get("sub_code", "")))
        return body

    async def precreate(self, out_trade_no: str, amount: str, subject: str,
                        timeout_minutes: int) -> str:
        """Create the trade; returns the `qr_code` text to show as a QR image."""
        body = await self.call("alipay.trade.precreate", {
            "out_trade_no": out_trade_no, "total_amount": amount, "subject": subject,
            "timeout_express": f"{max(1, timeout_minutes)}m",
        }, notify_url=self.notify_url)
        qr_code = body.get("qr_code")
        if not isinstance(qr_code, str) or not qr_code:
            raise AlipayError("alipay.trade.precreate: no qr_code in the answer")
        return qr_code

    async def query(self, out_trade_no: str) -> Trade:
        try:
            body = await self.call("alipay.trade.query", {"out_trade_no": out_trade_no})
        except AlipayError as exc:
            if exc.sub_code == TRADE_NOT_EXIST:  # nobody has scanned the code yet
                return Trade(out_trade_no, None)
            raise
        return Trade(out_trade_no=str(body.get("out_trade_no", out_trade_no)),
                     status=str(body.get("trade_status", "")) or None,
                     trade_no=str(body.get("trade_no", "")),
                     total_amount=str(body.get("total_amount", "")))

    async def refund(self, out_trade_no: str, amount: str, out_request_no: str,
                     reason: str = "") -> Refund:
        """Refund `amount` of a paid trade. `out_request_no` names this refund request: Alipay
        answers a repeated one with the first result (`fund_change` "N") instead of paying
        twice, so a retry after a lost answer reuses it."""
        body = await self.call("alipay.trade.refund", {
            "out_trade_no": out_trade_no, "refund_amount": amount,
            "out_request_no": out_request_no, "refund_reason": reason[:256]})
        return Refund(out_trade_no=str(body.get("out_trade_no", out_trade_no)),
                      refund_fee=str(body.get("refund_fee", "")),
                      fund_change=str(body.get("fund_change", "")) == "Y")

    async def close(self, out_trade_no: str) -> bool:
        """Close an unpaid trade. False when Alipay refuses because it was paid meanwhile."""
        try:
            await self.call("alipay.trade.close", {"out_trade_no": out_trade_no})
        except AlipayError as exc:
            if exc.sub_code == TRADE_NOT_EXIST:
                return True  # never scanned: nothing to close on Alipay's side
            if exc.sub_code == TRADE_STATUS_ERROR:
                return False
            raise
        return True


def _parsed(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None
