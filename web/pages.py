"""Public pages: landing, pricing, docs, blog, sitemap.xml, robots.txt."""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

from aiohttp import web
from markupsafe import Markup
from markupsafe import escape as escape_html

from gateway.billing.payments import PAYMENTS
from gateway.config import CONFIG
from gateway.reports import catalog, savings
from gateway.reports.compatibility import load_matrix
from gateway.reports.health import health_snapshot
from web import legal
from web.blog import Post
from web.guards import current_user
from web.i18n import LANGUAGES, _, current_language
from web.responses import db_of, public_url, render, site_of
from web.site import switch_links

PUBLIC_PAGES = ("/", "/pricing", "/docs", "/blog", "/login", "/register", "/terms", "/privacy",
                "/refunds", "/sitemap")
LEGAL_DIR = Path(__file__).resolve().parent.parent / "templates" / "legal"
PRIVATE_PREFIXES = ("/dashboard", "/settings", "/orders", "/billing", "/admin", "/remote", "/api/")


async def home(request: web.Request) -> web.Response:
    plans = await catalog.plans(db_of(request))
    rows = savings.savings(plans)
    config = request.app[CONFIG]
    base = public_url(request)
    structured = {
        "@context": "https://schema.org", "@type": "WebSite", "name": "llmapi", "url": base,
        "inLanguage": current_language(),
        "description": _("An Anthropic-compatible API for Claude Code on cheaper models."),
        "publisher": {"@type": "Organization", "name": "llmapi", "url": base},
        "offers": [{"@type": "Offer", "name": str(p["name"]).capitalize(),
                    "price": str(p["price_month"]), "priceCurrency": "CNY",
                    "url": f"{base}/pricing"} for p in plans],
    }
    return await render(request, "pages/home.html", {
        "plans": plans, "posts": in_language(site_of(request).posts[:3]), "saving_rows": rows,
        "best": max(rows, key=lambda r: r.percent) if rows else None,
        "recommended": savings.recommended(plans, config.site.recommended_plan),
        "compare": {"model": savings.COMPARED_MODEL, "input": savings.INPUT_USD_PER_MTOK,
                    "output": savings.OUTPUT_USD_PER_MTOK, "rate": savings.CNY_PER_USD,
                    "source": savings.SOURCE_URL},
        "structured_data": structured})


async def pricing(request: web.Request) -> web.Response:
    payments = request.app.get(PAYMENTS)
    user = await current_user(request)
    plans = await catalog.plans(db_of(request))
    subscription = (await payments.subscription(user.id)
                    if user is not None and payments is not None else None)
    return await render(request, "pages/pricing.html", {
        "plans": plans, "subscription": subscription, "error": "",
        "recommended": savings.recommended(plans, request.app[CONFIG].site.recommended_plan),
        "payments_enabled": payments is not None and payments.enabled,
    }, forms=user is not None)


async def docs(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    snapshot = health_snapshot(request.app)
    return await render(request, "pages/docs.html", {
        "plans": await catalog.plans(db_of(request)),
        "providers": catalog.provider_models(config),
        "routes": catalog.example_routes(config),
        "provider_status": {name: p.get("status", "") for name, p in
                            snapshot.get("providers", {}).items()},
        "compatibility": load_matrix(),  # measured by the test suite (docs/compatibility.md)
    })


def in_language(posts: list[Post]) -> list[Post]:
    """Each post in the visitor's language where it has that version, else in English."""
    language = current_language()
    return [p.in_language(language) for p in posts]


async def blog_index(request: web.Request) -> web.Response:
    posts = in_language(site_of(request).posts)
    category = request.query.get("category", "")
    names: dict[str, str] = {}
    for p in posts:  # a category's name in this language when any of its posts has it
        if p.lang == current_language() or p.category_slug not in names:
            names[p.category_slug] = p.category
    categories = sorted(names.items())
    shown = [p for p in posts if not category or p.category_slug == category]
    if category and not shown:
        raise web.HTTPNotFound()
    return await render(request, "pages/blog_index.html", {
        "posts": shown, "categories": categories, "category": category,
        "untranslated": any(p.lang != current_language() for p in shown)})


async def blog_post(request: web.Request) -> web.Response:
    slug = request.match_info["slug"]
    posts = site_of(request).posts
    original = next((p for p in posts if p.slug == slug), None)
    if original is None:
        raise web.HTTPNotFound()
    post = original.in_language(current_language())
    others = in_language([p for p in posts if p.slug != slug][:3])
    # Posts say {public_url} where a reader needs this server's address (commands to copy).
    body = Markup(str(post.html).replace("{public_url}", str(escape_html(public_url(request)))))
    return await render(request, "pages/blog_post.html", {
        "post": post, "others": others, "body": body,
        "fallback": post.lang != current_language(),
        # hreflang alternates only for the versions that exist (a missing Chinese version
        # is the English text again, not an alternate)
        "alternates": [(code, href) for code, _name, href in switch_links(request)
                       if code in original.languages]})


def _alternate_links(base: str, path: str, languages: list[str]) -> str:
    """The sitemap's hreflang alternates of one URL (the sitemaps.org xhtml:link form)."""
    links = [f'<xhtml:link rel="alternate" hreflang="{code}" '
             f'href="{escape(base + path)}?lang={code}"/>' for code in languages]
    links.append(f'<xhtml:link rel="alternate" hreflang="x-default" href="{escape(base + path)}"/>')
    return "".join(links)


async def sitemap(request: web.Request) -> web.Response:
    """Every public URL, with its language alternates (`?lang=`; `x-default` lets the
    visitor's browser choose)."""
    base = public_url(request)
    entries: list[tuple[str, str | None, list[str]]] = [
        (path, None, list(LANGUAGES)) for path in PUBLIC_PAGES]
    entries += [(f"/blog/{p.slug}", p.published.isoformat(), p.languages)
                for p in site_of(request).posts]
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9" '
             'xmlns:xhtml="http://www.w3.org/1999/xhtml">']
    for path, modified, languages in entries:
        lastmod = f"<lastmod>{modified}</lastmod>" if modified else ""
        lines.append(f"  <url><loc>{escape(base + path)}</loc>{lastmod}"
                     f"{_alternate_links(base, path, languages)}</url>")
    lines.append("</urlset>")
    return web.Response(text="\n".join(lines) + "\n", content_type="application/xml")


async def robots(request: web.Request) -> web.Response:
    lines = ["User-agent: *", "Allow: /"]
    lines += [f"Disallow: {prefix}" for prefix in PRIVATE_PREFIXES]
    lines += ["", f"Sitemap: {public_url(request)}/sitemap.xml", ""]
    return web.Response(text="\n".join(lines), content_type="text/plain")


async def legal_page(request: web.Request) -> web.Response:
    """/terms, /privacy, /refunds: the operator's Markdown, or the neutral starting text."""
    name = request.path.strip("/")
    config = request.app[CONFIG]
    operator_dir = None
    if config.site.legal_dir:
        folder = Path(config.site.legal_dir)
        operator_dir = folder if folder.is_absolute() else config.base_dir / folder
    path = legal.legal_file(name, current_language(), operator_dir, LEGAL_DIR)
    title, body = legal.render_legal(path, public_url(request))
    text_lang = "zh-CN" if path.name.endswith(".zh-CN.md") else "en"
    return await render(request, "pages/legal.html", {
        "title": title, "body": body, "text_lang": text_lang})


async def sitemap_page(request: web.Request) -> web.Response:
    """The human sitemap (the footer's link); /sitemap.xml stays for search engines."""
    return await render(request, "pages/sitemap.html",
                        {"posts": in_language(site_of(request).posts)})
