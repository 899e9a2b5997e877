"""Alipay's RSA2 signatures: key loading, the sign string, signing and verifying (pure code).

RSA2 is SHA256withRSA with PKCS#1 v1.5 padding, base64-encoded. The signed text is every
non-empty parameter except `sign`, sorted by name and joined as `k=v&k=v` with the raw
(not URL-encoded) values. Requests keep `sign_type` in the signed text; notifications
leave it out (Alipay's "verify asynchronous notification" rule). A synchronous answer is
signed over the exact JSON text of its `*_response` member, so `response_members` keeps
the raw text of every top-level member instead of re-serializing parsed JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa


class AlipayKeyError(Exception):
    """A key file that is not an RSA key in a form Alipay's console or openssl writes."""


def _der_of(text: str) -> bytes:
    """The bare base64 body Alipay's console shows (no PEM armour), as DER bytes."""
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise AlipayKeyError("neither PEM nor a base64 key body") from None


def load_private_key(text: str) -> rsa.RSAPrivateKey:
    """An RSA private key from PEM (PKCS#1 or PKCS#8) or the bare base64 body."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
        else:
            key = serialization.load_der_private_key(_der_of(text), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm, UnicodeEncodeError) as exc:
        raise AlipayKeyError(f"not an unencrypted private key ({exc})") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise AlipayKeyError("not an RSA key")
    return key


def load_public_key(text: str) -> rsa.RSAPublicKey:
    """An RSA public key from PEM (SubjectPublicKeyInfo or PKCS#1) or the bare base64 body."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode("ascii"))
        else:
            key = serialization.load_der_public_key(_der_of(text))
    except (ValueError, TypeError, UnsupportedAlgorithm, UnicodeEncodeError) as exc:
        raise AlipayKeyError(f"not a public key ({exc})") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise AlipayKeyError("not an RSA key")
    return key


def sign_content(params: Mapping[str, str], *, exclude_sign_type: bool = False) -> str:
    """The text that is signed: non-empty parameters but `sign` (and, for notifications,
    `sign_type`), sorted by name, joined `k=v&...` without URL encoding."""
    skip = {"sign", "sign_type"} if exclude_sign_type else {"sign"}
    return "&".join(f"{k}={params[k]}" for k in sorted(params)
                    if k not in skip and params[k] != "")


def sign_bytes(data: bytes, key: rsa.RSAPrivateKey) -> str:
    """base64(SHA256withRSA(data)) with PKCS#1 v1.5 padding."""
    return base64.b64encode(key.sign(data, padding.PKCS1v15(), hashes.SHA256())).decode("ascii")


def verify_bytes(data: bytes, signature: str, key: rsa.RSAPublicKey) -> bool:
    """True when `signature` (base64) is the RSA2 signature of `data` under `key`."""
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    try:
        key.verify(raw, data, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def sign_params(params: Mapping[str, str], key: rsa.RSAPrivateKey) -> str:
    """The `sign` value of a request (its `sign_type` is part of the signed text)."""
    return sign_bytes(sign_content(params).encode("utf-8"), key)


def verify_notification(params: Mapping[str, str], key: rsa.RSAPublicKey) -> bool:
    """Check an asynchronous notification: RSA2 over everything but `sign`/`sign_type`."""
    signature = params.get("sign", "")
    if not signature or params.get("sign_type", "RSA2") != "RSA2":
        return False
    content = sign_content(params, exclude_sign_type=True)
    return verify_bytes(content.encode("utf-8"), signature, key)


def response_members(text: str) -> dict[str, str]:
    """The raw JSON text of each top-level member of an answer, exactly as it was sent.

    Raises ValueError when `text` is not one JSON object.
    """
    decoder = json.JSONDecoder()
    members: dict[str, str] = {}

    def skip_space(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    pos = skip_space(0)
    if not text.startswith("{", pos):
        raise ValueError("not a JSON object")
    pos = skip_space(pos + 1)
    if text.startswith("}", pos):
        return members
    while True:
        name, pos = decoder.raw_decode(text, pos)
        if not isinstance(name, str):
            raise ValueError("member name is not a string")
        pos = skip_space(pos)
        if not text.startswith(":", pos):
            raise ValueError("':' expected")
        start = skip_space(pos + 1)
        _, end = decoder.raw_decode(text, start)
        members[name] = text[start:end]
        pos = skip_space(end)
        if text.startswith("}", pos):
            if skip_space(pos + 1) != len(text):
                raise ValueError("text after the JSON object")
            return members
        if not text.startswith(",", pos):
            raise ValueError("',' or '}' expected")
        pos = skip_space(pos + 1)
