"""Two languages: the catalogue covers every message, the visitor's choice sticks, and a page
rendered in Chinese has no English sentence left in it.

The completeness check extracts the messages exactly as `pybabel extract` does (the same
`babel.cfg`), so a new `_()` or `{% trans %}` without a zh-CN translation fails here with the
command that refreshes the catalogue.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from tests.helpers.gateway import ROOT, Gateway, GatewayFactory
from tests.helpers.site import SiteClient, code_from_outbox, signed_in
from web import i18n

PO = ROOT / "templates" / "locale" / "zh_CN" / "LC_MESSAGES" / "messages.po"
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None,
            "SiteAccountError": None, "PaymentError": None, "AccountError": None}
PLACEHOLDER = re.compile(r"%\([a-z_]+\)[sd]|%%")
REFRESH = ("pybabel extract -F babel.cfg -k N_ -k SiteAccountError -k PaymentError "
           "-k AccountError "
           "--no-location --sort-output -o templates/locale/messages.pot . && pybabel update "
           "-i templates/locale/messages.pot -d templates/locale --no-fuzzy-matching, then "
           "translate the new entries")


def source_messages() -> dict[str, str]:
    """msgid -> where it was found, for every message in the code and templates."""
    method_map = []
    options_map = {}
    section = ""
    for line in (ROOT / "babel.cfg").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            method, _sep, pattern = line[1:-1].partition(":")
            section = pattern.strip()
            method_map.append((section, method.strip()))
            options_map[section] = {}
        elif "=" in line and not line.startswith("#") and section:
            key, _eq, value = line.partition("=")
            options_map[section][key.strip()] = value.strip()
    found: dict[str, str] = {}
    for filename, lineno, message, _comments, _context in extract_from_dir(
            str(ROOT), method_map, options_map, keywords=KEYWORDS):
        msgid = message if isinstance(message, str) else message[0]
        found.setdefault(msgid, f"{filename}:{lineno}")
    return found


def catalogue() -> dict[str, str]:
    with PO.open("rb") as f:
        return {(m.id if isinstance(m.id, str) else m.id[0]):
                (m.string if isinstance(m.string, str) else m.string[0])
                for m in read_po(f, locale="zh_CN") if m.id}


def test_every_message_in_code_and_templates_has_a_chinese_translation() -> None:
    found = source_messages()
    assert len(found) > 400, "extraction found suspiciously few messages"
    translated = catalogue()
    missing = [f"{where}: {msgid!r}" for msgid, where in sorted(found.items())
               if not translated.get(msgid)]
    assert not missing, (f"{len(missing)} message(s) without a zh-CN translation; run "
                         f"{REFRESH}:\n" + "\n".join(missing[:40]))


def test_translations_keep_every_placeholder() -> None:
    wrong = [msgid for msgid, text in catalogue().items()
             if text and sorted(PLACEHOLDER.findall(msgid)) != sorted(PLACEHOLDER.findall(text))]
    assert not wrong, wrong


def test_no_template_has_bare_english_text_outside_the_i18n_tags() -> None:
    """Text between tags in a template must come from `_()` or `{% trans %}` (or be code)."""
    tag = re.compile(r"{%.*?%}|{{.*?}}|{#.*?#}", re.S)
    problems = []
    for path in sorted((ROOT / "templates").glob("*/**/*.html")):
        source = path.read_text(encoding="utf-8")
        # drop translated blocks, code, CSS class blocks and Jinja expressions
        source = re.sub(r"{% block main_class %}.*?{% endblock %}", " ", source)
        source = re.sub(r"{% trans.*?%}.*?{% endtrans %}", " ", source, flags=re.S)
        source = re.sub(r"<(code|pre|kbd|script|style|cite)\b.*?</\1>", " ", source,
                        flags=re.S)
        source = tag.sub(" ", source)
        for text in re.findall(r">([^<]+)<", source):
            words = re.findall(r"[A-Za-z]{3,}", text)
            if len([w for w in words if w.lower() not in ALLOWED_WORDS]) >= 1:
                problems.append(f"{path.relative_to(ROOT)}: {text.strip()!r}")
    assert not problems, "\n".join(problems)


ALLOWED_WORDS = {"curl", "ctrl", "tab", "esc", "llmapi", "tok", "min", "utc"}


def test_accept_language_is_weighed_and_tags_normalised() -> None:
    assert i18n.from_accept_language("en-GB,en;q=0.8,zh-CN;q=0.9") == "en"
    assert i18n.from_accept_language("fr-FR, zh-TW;q=0.5, en;q=0.4") == "zh-CN"
    assert i18n.from_accept_language("de, fr") is None
    assert i18n.from_accept_language("zh;q=0, en;q=0.1") == "en"
    assert i18n.from_accept_language("zh;q=bogus, en") == "en"
    assert i18n.choose("en", "zh-CN", "zh-CN", "zh-CN") == "en"
    assert i18n.choose(None, "zh-CN", "en", "en") == "zh-CN"
    assert i18n.choose("xx", None, None, "zh-CN") == "zh-CN"


class VisibleText(HTMLParser):
    """Text a reader sees, outside code and outside parts marked as English on purpose."""

    SKIP = frozenset({"code", "pre", "kbd", "script", "style", "cite", "title", "option"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, bool]] = []
        self.texts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("br", "img", "input", "meta", "link", "hr", "source", "wbr"):
            return
        english = dict(attrs).get("lang") == "en" or tag in self.SKIP
        self.stack.append((tag, english or any(e for _t, e in self.stack)))

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        if not (self.stack and self.stack[-1][1]) and data.strip():
            self.texts.append(data.strip())


def english_sentences(html: str) -> list[str]:
    parser = VisibleText()
    parser.feed(html)
    body = [t for t in parser.texts]
    # Three English words in a row is a sentence nobody translated (product names and
    # units such as "Claude Code", "tok/s" or "API" stay as they are).
    return [t for t in body if re.search(r"\b[a-z]{3,} [a-z]{2,} [a-z]{2,}\b", t)]


async def test_pages_in_chinese_have_no_english_sentence_left(gateway: Gateway) -> None:
    visitor = SiteClient(gateway)
    admin = await signed_in(gateway, "zh-admin@example.com", admin=True, plan="pro")
    zh = {"Accept-Language": "zh-CN,zh;q=0.9"}
    try:
        pages = {}
        for path in ("/", "/pricing", "/docs", "/blog", "/login", "/register",
                     "/register/verify", "/nope", "/password/forgot", "/password/reset",
                     "/terms", "/privacy", "/refunds", "/sitemap"):
            pages[path] = (await visitor.get(path, headers=zh))[1]
        await admin.json("POST", "/api/dashboard/keys", {"name": "k"})
        for path in ("/dashboard", "/settings", "/orders", "/billing", "/remote", "/admin",
                     "/admin/users", "/admin/costs", "/admin/outbox", "/admin/audit",
                     "/admin/orders"):
            status, text, _ = await admin.get(path, headers=zh)
            assert status == 200, path
            pages[path] = text
    finally:
        await visitor.close()
        await admin.close()
    left = {path: english_sentences(html) for path, html in pages.items()}
    left = {p: s for p, s in left.items() if s}
    assert not left, left
    assert all('<html lang="zh-CN">' in html for html in pages.values())


async def test_lang_query_switches_and_the_cookie_keeps_the_choice(gateway: Gateway) -> None:
    client = SiteClient(gateway)
    try:
        _, text, headers = await client.get("/pricing?lang=zh-CN")
        assert '<html lang="zh-CN">' in text and "价格" in text
        assert "lang=zh-CN" in headers["Set-Cookie"]
        _, text, _ = await client.get("/docs", headers={"Accept-Language": "en"})
        assert '<html lang="zh-CN">' in text, "the cookie wins over Accept-Language"
        _, text, _ = await client.get("/docs?lang=en")
        _, text, _ = await client.get("/")
        assert '<html lang="en">' in text
        # the switch on every page links the same page in the other language
        assert 'href="/?lang=zh-CN"' in text and 'hreflang="zh-CN"' in text
    finally:
        await client.close()


async def test_default_language_applies_when_the_browser_says_nothing(
        gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory({"site": {"default_language": "zh-CN"}})
    client = SiteClient(gw)
    try:
        _, text, _ = await client.get("/")
        assert '<html lang="zh-CN">' in text
        _, text, _ = await client.get("/", headers={"Accept-Language": "en-US"})
        assert '<html lang="en">' in text
    finally:
        await client.close()


async def test_form_errors_flashes_and_the_code_mail_follow_the_language(
        gateway: Gateway) -> None:
    client = SiteClient(gateway)
    zh = {"Accept-Language": "zh-CN"}
    try:
        await client.get("/register", headers=zh)
        status, text, _ = await client.post("/register", {
            "email": "not-an-address", "password": "x"}, headers=zh)
        assert status == 422 and "请输入有效的邮箱地址" in text
        status, _, _ = await client.post("/register", {
            "email": "zh@example.com", "password": "correct horse battery"}, headers=zh)
        assert status == 303
        mail = await gateway.state.db.fetch_one("mail_latest_to", {"to_addr": "zh@example.com"})
        assert "验证码" in mail["subject"] and "分钟内有效" in mail["body_text"]
        code = await code_from_outbox(gateway, "zh@example.com")
        status, _, _ = await client.post("/register/verify", {"code": "000000"
                                                              if code != "000000"
                                                              else "111111"}, headers=zh)
        assert status == 422
        status, _, _ = await client.post("/register/verify", {"code": code},
                                               headers=zh)
        assert status == 303
        _, text, _ = await client.get("/dashboard", headers=zh)
        assert "你的邮箱地址已验证" in text
        status, text, _ = await client.get("/no/such/page", headers=zh)
        assert status == 404 and "页面不存在" in text and "no route" not in text
    finally:
        await client.close()


def test_catalogue_loads_from_the_po_file_alone(tmp_path: Path) -> None:
    """No compiled .mo is needed: an installed copy reads the .po at start-up."""
    target = tmp_path / "zh_CN" / "LC_MESSAGES"
    target.mkdir(parents=True)
    (target / "messages.po").write_bytes(PO.read_bytes())
    loaded = i18n.load_catalogues(tmp_path)
    assert loaded["zh-CN"].gettext("Pricing") == "价格"
    i18n.load_catalogues(PO.parent.parent.parent)  # back to the real one for other tests
