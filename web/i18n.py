"""The site's two languages (zh-CN, en): catalogues, the visitor's choice, gettext for Jinja.

Messages are written in English in templates and code; `templates/locale/<lang>/LC_MESSAGES/
messages.po` holds the Babel catalogue of each other language. The `.po` files are read once
at start-up and compiled in memory (Babel's `write_mo` into `gettext.GNUTranslations`), so
an installed copy needs no build step and no `.mo` file can go stale beside its `.po`.

The language of one request is chosen in this order: `?lang=` on the URL (then kept in the
`lang` cookie), the cookie, the browser's `Accept-Language`, `[site] default_language`.
It lives in a context variable for the length of the request, so Jinja templates, flash
messages and e-mails rendered while handling it all use the same catalogue.
"""

from __future__ import annotations

import gettext as gettext_module
import io
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

LANGUAGES = ("zh-CN", "en")
"""Every language the site speaks; English is the language of the source strings."""
LANGUAGE_NAMES = {"zh-CN": "中文", "en": "English"}
COOKIE = "lang"
COOKIE_MAX_AGE = 365 * 86400
_FALLBACK = gettext_module.NullTranslations()

_catalogues: dict[str, gettext_module.NullTranslations] = {"en": _FALLBACK}
_current: ContextVar[str] = ContextVar("site_language", default="en")


def N_(message: str) -> str:
    """Mark a string for extraction; it is translated where it is shown, with `_()`."""
    return message


def load_catalogues(locale_dir: Path) -> dict[str, gettext_module.NullTranslations]:
    """Read every `<locale>/LC_MESSAGES/messages.po` under `locale_dir` (once, at start-up).
    A missing catalogue is an error: a site that silently shows English to Chinese visitors
    would look broken only to the people who cannot read the logs."""
    loaded: dict[str, gettext_module.NullTranslations] = {"en": _FALLBACK}
    for language in LANGUAGES:
        if language == "en":
            continue
        po = locale_dir / language.replace("-", "_") / "LC_MESSAGES" / "messages.po"
        with po.open("rb") as source:
            catalog = read_po(source, locale=language.replace("-", "_"))
        buffer = io.BytesIO()
        write_mo(buffer, catalog)
        buffer.seek(0)
        loaded[language] = gettext_module.GNUTranslations(buffer)
    _catalogues.clear()
    _catalogues.update(loaded)
    return loaded


def current_language() -> str:
    return _current.get()


def set_language(language: str) -> None:
    """Use `language` for the rest of this request (its task's context)."""
    _current.set(language if language in LANGUAGES else "en")


@contextmanager
def using(language: str) -> Iterator[None]:
    """Render something (an e-mail to another user) in another language, then switch back."""
    token = _current.set(language if language in LANGUAGES else "en")
    try:
        yield
    finally:
        _current.reset(token)


def _translations() -> gettext_module.NullTranslations:
    return _catalogues.get(_current.get(), _FALLBACK)


def _(message: str, **params: Any) -> str:
    """Translate `message` into the current language, then fill `%(name)s` placeholders."""
    text = _translations().gettext(message)
    return text % params if params else text


def ngettext(singular: str, plural: str, n: int, **params: Any) -> str:
    text = _translations().ngettext(singular, plural, n)
    return text % {"num": n, **params}


def jinja_gettext(message: str) -> str:
    return _translations().gettext(message)


def jinja_ngettext(singular: str, plural: str, n: int) -> str:
    return _translations().ngettext(singular, plural, n)


def normalise(value: str | None) -> str | None:
    """`zh`, `zh-cn`, `zh_Hans_CN` -> `zh-CN`; `en-GB` -> `en`; anything else -> None."""
    if not value:
        return None
    tag = value.strip().replace("_", "-").lower()
    if tag == "zh" or tag.startswith("zh-"):
        # Traditional-script visitors (zh-TW, zh-Hant) still read Simplified far better
        # than English; there is no zh-TW catalogue to prefer.
        return "zh-CN"
    if tag == "en" or tag.startswith("en-"):
        return "en"
    return None


def from_accept_language(header: str | None) -> str | None:
    """The best of our languages for an `Accept-Language` header (RFC 9110 §12.5.4)."""
    if not header:
        return None
    best: tuple[float, int, str] | None = None
    for position, part in enumerate(header.split(",")):
        tag, _sep, params = part.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _eq, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        language = normalise(tag)
        if language is None or quality <= 0:
            continue
        candidate = (quality, -position, language)
        if best is None or candidate > best:
            best = candidate
    return best[2] if best else None


def choose(query: str | None, cookie: str | None, accept: str | None, default: str) -> str:
    """The language of a request; see the module docstring for the order."""
    return (normalise(query) or normalise(cookie) or from_accept_language(accept)
            or normalise(default) or "en")


def translated(exc: Exception) -> str:
    """A domain error (`SiteAccountError`, `PaymentError`) in the visitor's language: their
    `message` is the English msgid and `params` fill its placeholders."""
    message = getattr(exc, "message", None)
    if not isinstance(message, str):
        return str(exc)
    params = getattr(exc, "params", None) or {}
    return _(message, **params)
