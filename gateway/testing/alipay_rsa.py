"""The fake Alipay's own RSA2 and format helpers, written apart from `gateway.billing`.

The fake is an oracle for the billing code, so it must not share that code: a bug in the
gateway's signing or amount parsing would otherwise be agreed with rather than caught.
Alipay's rules (open.alipay.com, "自行实现签名" / "异步通知验签"): RSA2 is SHA256withRSA,
PKCS#1 v1.5, base64; the signed text is every non-empty parameter except `sign` sorted by
name as `k=v&k=v` with raw values; notifications also leave `sign_type` out. Amounts are
yuan with at most two decimals; timestamps are `yyyy-MM-dd HH:mm:ss` Beijing time.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

BEIJING = timezone(timedelta(hours=8))
_AMOUNT = re.compile(r"[0-9]+(\.[0-9]{1,2})?")


class KeyFileError(Exception):
    """A key file the fake cannot use."""


def load_private_key(text: str) -> rsa.RSAPrivateKey:
    """A PEM RSA private key (what the fake writes, or openssl)."""
    try:
        key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm, UnicodeEncodeError) as exc:
        raise KeyFileError(f"not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyFileError("not an RSA key")
    return key


def load_public_key(text: str) -> rsa.RSAPublicKey:
    """A PEM RSA public key, or the bare base64 body Alipay's console shows."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode("ascii"))
        else:
            der = base64.b64decode("".join(text.split()), validate=True)
            key = serialization.load_der_public_key(der)
    except (ValueError, TypeError, UnsupportedAlgorithm, UnicodeEncodeError,
            binascii.Error) as exc:
        raise KeyFileError(f"not a public key ({exc})") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise KeyFileError("not an RSA key")
    return key


def sign_content(params: Mapping[str, str], *, exclude_sign_type: bool = False) -> str:
    skip = {"sign", "sign_type"} if exclude_sign_type else {"sign"}
    return "&".join(f"{k}={params[k]}" for k in sorted(params)
                    if k not in skip and params[k] != "")


def sign_bytes(data: bytes, key: rsa.RSAPrivateKey) -> str:
    return base64.b64encode(key.sign(data, padding.PKCS1v15(), hashes.SHA256())).decode("ascii")


def verify_bytes(data: bytes, signature: str, key: rsa.RSAPublicKey) -> bool:
    try:
        key.verify(base64.b64decode(signature, validate=True), data, padding.PKCS1v15(),
                   hashes.SHA256())
    except (binascii.Error, ValueError, InvalidSignature):
        return False
    return True


def parse_amount(text: str) -> Decimal | None:
    """Yuan as Alipay writes it ("9", "9.9", "9.90"); None for anything else."""
    return Decimal(text) if _AMOUNT.fullmatch(text) else None


def beijing_timestamp(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")


def compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
