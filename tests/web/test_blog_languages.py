"""Blog posts in both languages: the switch picks the Chinese version, a post without one
falls back to English with a note, and hreflang / sitemap alternates name only the
versions that exist."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.helpers.gateway import Gateway
from tests.helpers.site import SiteClient
from web.blog import BlogError, load_posts
from web.site import BLOG_DIR, SITE

SITEMAP = "{http://www.sitemaps.org/schemas/sitemap/0.9}"
XHTML = "{http://www.w3.org/1999/xhtml}"
POST = """---
title: {title}
date: {date}
category: {category}
description: {title}, in short.
---

{body}
"""


def write(folder: Path, name: str, title: str, body: str, date: str = "2025-12-01",
          category: str = "Notes") -> None:
    (folder / name).write_text(POST.format(title=title, date=date, category=category,
                                           body=body), encoding="utf-8")


def alternates(html: str) -> dict[str, str]:
    return dict(re.findall(r'<link rel="alternate" hreflang="([^"]+)" href="([^"]+)">', html))


def test_every_shipped_post_has_a_chinese_version() -> None:
    posts = load_posts(BLOG_DIR)
    assert posts and all(p.languages == ["en", "zh-CN"] for p in posts)
    for post in posts:
        chinese = post.in_language("zh-CN")
        assert chinese.lang == "zh-CN" and re.search(r"[\u4e00-\u9fff]", chinese.title)
        assert chinese.category_slug == post.category_slug  # one filter for both
        assert chinese.published == post.published
        # commands keep the server's address placeholder, like the English text
        assert ("{public_url}" in post.html) == ("{public_url}" in chinese.html)


def test_a_translation_needs_its_english_post_and_the_same_date(tmp_path: Path) -> None:
    write(tmp_path, "lonely.zh-CN.md", "孤单", "只有中文。")
    with pytest.raises(BlogError, match=r"lonely\.zh-CN\.md: translates a post"):
        load_posts(tmp_path)
    write(tmp_path, "lonely.md", "Lonely", "English.", date="2025-11-30")
    with pytest.raises(BlogError, match="date 2025-12-01 differs"):
        load_posts(tmp_path)
    write(tmp_path, "lonely.md", "Lonely", "English.")
    (post,) = load_posts(tmp_path)
    assert post.in_language("zh-CN").title == "孤单" and post.in_language("en").title == "Lonely"


async def test_the_switch_chooses_the_chinese_post_and_alternates_name_both(
        gateway: Gateway) -> None:
    client = SiteClient(gateway)
    try:
        status, html, _ = await client.get("/blog/claude-code-on-qwen?lang=zh-CN")
        assert status == 200
        assert '<article class="prose" lang="zh-CN">' in html
        assert "<h1>通过 llmapi 在通义千问上运行 Claude Code</h1>" in html
        assert "还没有中文版" not in html
        assert f"export ANTHROPIC_BASE_URL={gateway.config.public_url}" in html  # filled in
        assert set(alternates(html)) == {"zh-CN", "en"}
        # the cookie keeps the choice: the list and the home page follow
        status, html, _ = await client.get("/blog")
        assert "上游服务商的提示词缓存" in html and "还没有中文版的文章" not in html
        assert ">指南</a>" in html and ">工程</a>" in html
        status, html, _ = await client.get("/blog?category=guides")
        assert status == 200 and "通义千问" in html and "提示词缓存" not in html
        status, html, _ = await client.get("/")
        assert 'lang="zh-CN">通过 llmapi 在通义千问上运行 Claude Code</a>' in html
        status, html, _ = await client.get("/blog/claude-code-on-qwen?lang=en")
        assert '<article class="prose" lang="en">' in html
        assert "<h1>Running Claude Code on Qwen through llmapi</h1>" in html
    finally:
        await client.close()


async def test_a_post_without_chinese_falls_back_to_english_with_a_note(
        gateway: Gateway, tmp_path: Path) -> None:
    write(tmp_path, "english-only.md", "Only in English", "Plain English text.",
          date="2020-01-01")
    gateway.app[SITE].posts.extend(load_posts(tmp_path))
    client = SiteClient(gateway)
    try:
        status, html, _ = await client.get("/blog/english-only?lang=zh-CN")
        assert status == 200
        assert "这篇文章还没有中文版，下面是英文原文。" in html
        assert '<article class="prose" lang="en">' in html and "<h1>Only in English</h1>" in html
        assert html.index("还没有中文版") < html.index("<article")
        assert set(alternates(html)) == {"en"}  # the same English text is no zh-CN page
        status, html, _ = await client.get("/blog")
        assert "还没有中文版的文章以英文显示。" in html
        assert '<h2 lang="en"><a href="/blog/english-only">Only in English</a></h2>' in html
        status, html, _ = await client.get("/blog/english-only?lang=en")
        assert "还没有中文版" not in html and "no Chinese version" not in html

        status, text, headers = await client.get("/sitemap.xml")
        assert status == 200 and headers["Content-Type"].startswith("application/xml")
        root = ET.fromstring(text)
        urls = {u.findtext(f"{SITEMAP}loc"): {
            link.get("hreflang"): link.get("href") for link in u.findall(f"{XHTML}link")}
            for u in root.findall(f"{SITEMAP}url")}
        base = gateway.config.public_url
        post = urls[f"{base}/blog/claude-code-on-qwen"]
        assert post == {"en": f"{base}/blog/claude-code-on-qwen?lang=en",
                        "zh-CN": f"{base}/blog/claude-code-on-qwen?lang=zh-CN",
                        "x-default": f"{base}/blog/claude-code-on-qwen"}
        assert set(urls[f"{base}/blog/english-only"]) == {"en", "x-default"}
        assert set(urls[f"{base}/pricing"]) == {"en", "zh-CN", "x-default"}
    finally:
        await client.close()
