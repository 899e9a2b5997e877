"""RSA2 signing and verification against openssl, key formats, raw answers, the [alipay] config.

No published Alipay test vector comes with its private key, so the reference here is
`openssl dgst -sha256 -sign` (SHA256withRSA, PKCS#1 v1.5, deterministic): our signature
of the sign string must be byte-for-byte openssl's, and openssl must accept ours.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.billing.alipay import AlipayClient, AlipayError, read_keys
from gateway.billing.alipay_sign import (
    AlipayKeyError,
    load_private_key,
    load_public_key,
    response_members,
    sign_bytes,
    sign_content,
    sign_params,
    verify_bytes,
    verify_notification,
)
from gateway.config import ALIPAY_GATEWAY, AlipayConfig, ConfigError, parse_config
from gateway.testing.fake_alipay import FakeAlipay, KeySet, new_key
from tests.helpers.gateway import free_port, run_cli

OPENSSL = shutil.which("openssl")

# Shaped like the request example in Alipay's "sign the request yourself" guide; the empty
# value stays out of the sign string and sign_type stays in (requests, not notifications).
REQUEST = {
    "app_id": "2014072300007148",
    "method": "alipay.trade.precreate",
    "format": "JSON",
    "charset": "utf-8",
    "sign_type": "RSA2",
    "timestamp": "2014-07-24 03:07:50",
    "version": "1.0",
    "notify_url": "https://shop.example/api/payment/notify",
    "app_auth_token": "",
    "biz_content": '{"out_trade_no":"LL20140724030750ab12","total_amount":"9.00",'
                   '"subject":"llmapi 入门套餐"}',
}
SIGN_STRING = (
    'app_id=2014072300007148&biz_content={"out_trade_no":"LL20140724030750ab12",'
    '"total_amount":"9.00","subject":"llmapi 入门套餐"}&charset=utf-8&format=JSON'
    "&method=alipay.trade.precreate&notify_url=https://shop.example/api/payment/notify"
    "&sign_type=RSA2&timestamp=2014-07-24 03:07:50&version=1.0")


def openssl(*args: str, data: bytes | None = None) -> bytes:
    assert OPENSSL, "openssl is part of the base system on Debian"
    result = subprocess.run([OPENSSL, *args], input=data, capture_output=True, check=True)
    return result.stdout


@pytest.fixture(scope="module")
def openssl_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A key made by openssl, in every form Alipay's console or openssl hands out."""
    folder = tmp_path_factory.mktemp("openssl-keys")
    files = {"pkcs1": folder / "pkcs1.pem", "pkcs8": folder / "pkcs8.pem",
             "spki": folder / "spki.pem", "rsa_public": folder / "rsa_public.pem",
             "bare_private": folder / "private.txt", "bare_public": folder / "public.txt"}
    openssl("genrsa", "-traditional", "-out", str(files["pkcs1"]), "2048")
    openssl("pkcs8", "-topk8", "-nocrypt", "-in", str(files["pkcs1"]),
            "-out", str(files["pkcs8"]))
    openssl("pkey", "-in", str(files["pkcs1"]), "-pubout", "-out", str(files["spki"]))
    openssl("rsa", "-in", str(files["pkcs1"]), "-RSAPublicKey_out",
            "-out", str(files["rsa_public"]))
    for pem, bare in (("pkcs8", "bare_private"), ("spki", "bare_public")):
        body = "".join(line for line in files[pem].read_text().splitlines()
                       if not line.startswith("-----"))
        files[bare].write_text(body + "\n")  # one line, as the console shows it
    return files


def test_sign_string_sorts_keys_skips_empty_and_sign_keeps_sign_type() -> None:
    assert sign_content({**REQUEST, "sign": "xyz"}) == SIGN_STRING
    notification = {"b": "2", "a": "1", "sign": "s", "sign_type": "RSA2", "c": ""}
    assert sign_content(notification, exclude_sign_type=True) == "a=1&b=2"


def test_signature_is_byte_for_byte_openssl_dgst_sha256_sign(
        openssl_keys: dict[str, Path]) -> None:
    expected = base64.b64encode(openssl(
        "dgst", "-sha256", "-sign", str(openssl_keys["pkcs1"]),
        data=SIGN_STRING.encode("utf-8"))).decode()
    for form in ("pkcs1", "pkcs8", "bare_private"):
        key = load_private_key(openssl_keys[form].read_text())
        assert sign_params(REQUEST, key) == expected, form


def test_openssl_verifies_our_signature_and_we_verify_openssls(
        openssl_keys: dict[str, Path], tmp_path: Path) -> None:
    key = load_private_key(openssl_keys["pkcs8"].read_text())
    signature = tmp_path / "sig.bin"
    signature.write_bytes(base64.b64decode(sign_params(REQUEST, key)))
    out = openssl("dgst", "-sha256", "-verify", str(openssl_keys["spki"]),
                  "-signature", str(signature), data=SIGN_STRING.encode("utf-8"))
    assert b"Verified OK" in out
    theirs = base64.b64encode(openssl("dgst", "-sha256", "-sign", str(openssl_keys["pkcs1"]),
                                      data=b"total_amount=9.00")).decode()
    for form in ("spki", "rsa_public", "bare_public"):
        public = load_public_key(openssl_keys[form].read_text())
        assert verify_bytes(b"total_amount=9.00", theirs, public), form
        assert not verify_bytes(b"total_amount=9.01", theirs, public), form


def test_key_files_that_are_not_rsa_keys_are_refused(openssl_keys: dict[str, Path],
                                                     tmp_path: Path) -> None:
    ec = tmp_path / "ec.pem"
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-out", str(ec))
    for text in (ec.read_text(), "not a key", "", openssl_keys["spki"].read_text()):
        with pytest.raises(AlipayKeyError):
            load_private_key(text)
    with pytest.raises(AlipayKeyError):
        load_public_key(openssl_keys["pkcs1"].read_text().replace("A", "B", 5))


def test_notification_signature_leaves_out_sign_type() -> None:
    key = new_key()
    params = {"app_id": "2021", "out_trade_no": "LL1", "total_amount": "9.00",
              "trade_status": "TRADE_SUCCESS", "sign_type": "RSA2"}
    params["sign"] = sign_bytes(sign_content(params, exclude_sign_type=True).encode(), key)
    assert verify_notification(params, key.public_key())
    assert not verify_notification({**params, "total_amount": "0.01"}, key.public_key())
    assert not verify_notification({**params, "sign_type": "RSA"}, key.public_key())
    assert not verify_notification({**params, "sign": "!!!"}, key.public_key())
    assert not verify_notification(params, new_key().public_key())


def test_answer_is_verified_over_the_raw_response_text() -> None:
    alipay = new_key()
    raw = ('{ "code" : "10000", "msg":"Success",'
           '"qr_code":"https:\\/\\/qr.alipay.com\\/b","x":"支付"}')
    signature = sign_bytes(raw.encode("utf-8"), alipay)
    text = f'{{"alipay_trade_precreate_response":{raw},\n "sign" : "{signature}"}}'
    assert response_members(text)["alipay_trade_precreate_response"] == raw
    client = _client(alipay)
    body = client.verified_answer("alipay.trade.precreate", text)
    assert body["qr_code"] == "https://qr.alipay.com/b"
    # the same object re-serialized is not what was signed: refused
    reserialized = json.dumps({"alipay_trade_precreate_response": json.loads(raw),
                               "sign": signature})
    with pytest.raises(AlipayError, match="signature"):
        client.verified_answer("alipay.trade.precreate", reserialized)
    with pytest.raises(AlipayError, match="signature"):
        client.verified_answer("alipay.trade.precreate",
                               text.replace("10000", "10001"))
    with pytest.raises(AlipayError, match="not JSON"):
        client.verified_answer("alipay.trade.precreate", text + "]")


def test_unsigned_error_answer_becomes_an_alipay_error() -> None:
    client = _client(new_key())
    with pytest.raises(AlipayError) as caught:
        client.verified_answer("alipay.trade.query", '{"error_response":{"code":"40002",'
                               '"msg":"Invalid Arguments","sub_code":"isv.invalid-app-id"}}')
    assert caught.value.sub_code == "isv.invalid-app-id"


def test_fake_alipay_answers_verify_with_its_published_key() -> None:
    alipay = new_key()
    fake = FakeAlipay(KeySet(alipay_private=alipay, app_public=new_key().public_key()))
    text = fake.signed_answer("alipay.trade.close", {"code": "10000", "msg": "Success",
                                                     "out_trade_no": "LL1"})
    assert _client(alipay).verified_answer("alipay.trade.close", text)["out_trade_no"] == "LL1"


def _client(alipay_key: rsa.RSAPrivateKey) -> AlipayClient:
    client = AlipayClient.__new__(AlipayClient)  # only the answer check: no files, no HTTP
    client.alipay_public_key = alipay_key.public_key()
    return client


# --- [alipay] in the config file -------------------------------------------------------

def test_alipay_config_defaults_and_derived_notify_url(openssl_keys: dict[str, Path],
                                                       tmp_path: Path) -> None:
    config = parse_config({}, env={}, base_dir=tmp_path)
    assert config.alipay == AlipayConfig() and not config.alipay.enabled
    assert config.alipay_notify_url == "http://127.0.0.1:8080/api/payment/notify"
    config = parse_config({
        "server": {"public_url": "https://llm.example/"},
        "alipay": {"app_id": "2021000000000000",
                   "private_key_path": str(openssl_keys["bare_private"]),
                   "alipay_public_key_path": str(openssl_keys["rsa_public"])}},
        env={}, base_dir=tmp_path)
    assert config.alipay.enabled and config.alipay.gateway_url == ALIPAY_GATEWAY
    assert config.alipay_notify_url == "https://llm.example/api/payment/notify"
    assert config.alipay.order_timeout == 900 and config.alipay.reconcile_after == 60


@pytest.mark.parametrize(("table", "key", "problem"), [
    ({"app_id": "1"}, "alipay.private_key_path", "must name a key file"),
    ({"gateway_url": "ftp://x"}, "alipay.gateway_url", "http"),
    ({"order_timeout": 0}, "alipay.order_timeout", "greater than 0"),
    ({"app_key": "x"}, "alipay.app_key", "unknown key"),
])
def test_alipay_config_mistakes_name_the_key(tmp_path: Path, table: dict[str, object],
                                             key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"alipay": table}, env={}, base_dir=tmp_path)
    assert caught.value.key == key and problem in caught.value.problem


@pytest.mark.parametrize(("table", "key", "problem"), [
    ({"private_key_path": "missing.pem", "alipay_public_key_path": "x"},
     "alipay.private_key_path", "missing.pem cannot be read: No such file"),
    ({"private_key_path": "PKCS1", "alipay_public_key_path": "missing.pem"},
     "alipay.alipay_public_key_path", "cannot be read"),
    ({"private_key_path": "SPKI", "alipay_public_key_path": "SPKI"},
     "alipay.private_key_path", "not a usable key"),
    ({"private_key_path": "PKCS1", "alipay_public_key_path": "PKCS1"},
     "alipay.alipay_public_key_path", "not a usable key"),
    ({"private_key_path": "BINARY", "alipay_public_key_path": "SPKI"},
     "alipay.private_key_path", "not a usable key: not text"),
])
def test_key_files_are_read_when_the_service_opens(
        openssl_keys: dict[str, Path], tmp_path: Path, table: dict[str, str], key: str,
        problem: str) -> None:
    """Parsing accepts any path (it reads no file); opening the client reads both and a
    bad one is a ConfigError naming the key."""
    binary = tmp_path / "binary.pem"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    files = {"SPKI": str(openssl_keys["spki"]), "PKCS1": str(openssl_keys["pkcs1"]),
             "BINARY": str(binary)}
    table = {k: files.get(v, v) for k, v in table.items()}
    config = parse_config({"alipay": {"app_id": "1", **table}}, source="llmapi.toml", env={},
                          base_dir=tmp_path)
    with pytest.raises(ConfigError) as caught:
        read_keys(config.alipay, config.source)
    assert caught.value.key == key and problem in caught.value.problem
    assert str(caught.value).startswith("llmapi.toml: " + key)


def test_a_bad_key_file_is_one_line_and_exit_2_at_start(tmp_path: Path) -> None:
    (tmp_path / "app.pem").write_text("not a key\n")
    file = tmp_path / "llmapi.toml"
    file.write_text(f'[database]\npath = "{tmp_path / "x.db"}"\n[alipay]\napp_id = "1"\n'
                    f'private_key_path = "{tmp_path / "app.pem"}"\n'
                    f'alipay_public_key_path = "{tmp_path / "app.pem"}"\n', "utf-8")
    done = run_cli("--port", str(free_port()), env={"LLMAPI_CONFIG": str(file)}, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("llmapi:")]
    assert errors == [f"llmapi: config error: {file}: alipay.private_key_path: "
                      f"{tmp_path / 'app.pem'} is not a usable key: neither PEM nor a "
                      "base64 key body"], done.stderr
