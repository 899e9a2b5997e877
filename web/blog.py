"""Load the blog: Markdown posts with front matter from `templates/blog/`, rendered safely.

A post is a file `SLUG.md` that starts with a front matter block:

    ---
    title: Running Claude Code on Qwen through llmapi
    date: 2025-11-20
    category: Guides
    description: One sentence for the list and the meta description.
    ---

Markdown is rendered by markdown-it-py with raw HTML switched off (any `<tag>` in a post
is shown as text, never passed through) and its link validation on (no `javascript:`).
Images must be served by this site: a post that points at another host fails to load.

Every post is written in English (`SLUG.md`, required); `SLUG.zh-CN.md` beside it is its
Chinese version, with its own front matter (the same `date`). The site shows the version
in the visitor's language and falls back to English with a note; a translation without
its English post is an error (the English file is what the slug, date and list come from).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path

from markdown_it import MarkdownIt
from markdown_it.token import Token

REQUIRED = ("title", "date", "category", "description")
_SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
SOURCE_LANGUAGE = "en"
TRANSLATIONS = ("zh-CN",)  # file suffixes: SLUG.zh-CN.md


class BlogError(Exception):
    """A post file is malformed; the message names the file and the problem."""


@dataclass(frozen=True, slots=True)
class Post:
    slug: str
    title: str
    published: date
    category: str
    description: str
    html: str
    words: int
    lang: str = SOURCE_LANGUAGE
    category_key: str = ""  # the English category (slug and filter), also on translations
    translations: dict[str, Post] = field(default_factory=dict, compare=False)

    @property
    def category_slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", (self.category_key or self.category).lower()
                      ).strip("-")

    @property
    def reading_minutes(self) -> int:
        # about 220 English words or 400 Chinese characters a minute
        per_minute = 400 if self.lang == "zh-CN" else 220
        return max(1, round(self.words / per_minute))

    def in_language(self, language: str) -> Post:
        """This post in `language` when it has that version, else itself (English)."""
        return self.translations.get(language, self)

    @property
    def languages(self) -> list[str]:
        return [SOURCE_LANGUAGE, *self.translations]


def markdown_renderer() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}
                      ).enable(["table", "strikethrough"])


def split_front_matter(text: str, source: str) -> tuple[dict[str, str], str]:
    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        raise BlogError(f"{source}: must start with a '---' front matter block")
    try:
        end = next(i for i, line in enumerate(lines[1:], 1) if line.strip() == "---")
    except StopIteration:
        raise BlogError(f"{source}: the front matter block is not closed with '---'") from None
    meta: dict[str, str] = {}
    for number, line in enumerate(lines[1:end], 2):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise BlogError(f"{source}:{number}: expected 'key: value', got {line!r}")
        meta[key.strip().lower()] = value.strip().strip('"')
    return meta, "\n".join(lines[end + 1:])


def _check_images(tokens: list[Token], source: str) -> None:
    for token in tokens:
        if token.type == "image":
            src = str(token.attrGet("src") or "")
            if not src.startswith("/") or src.startswith("//"):
                raise BlogError(f"{source}: image {src!r} must be served by this site "
                                "(a path starting with /static/)")
        if token.children:
            _check_images(token.children, source)


def split_name(path: Path) -> tuple[str, str]:
    """`my-post.zh-CN.md` -> ("my-post", "zh-CN"); `my-post.md` -> ("my-post", "en")."""
    stem = path.stem
    for language in TRANSLATIONS:
        if stem.endswith("." + language):
            return stem[: -len(language) - 1], language
    return stem, SOURCE_LANGUAGE


def load_post(path: Path, md: MarkdownIt | None = None) -> Post:
    md = md or markdown_renderer()
    source = path.name
    slug, language = split_name(path)
    if not _SLUG.match(slug):
        raise BlogError(f"{source}: the file name must be a slug like 'my-first-post.md'")
    meta, body = split_front_matter(path.read_text(encoding="utf-8"), source)
    missing = [k for k in REQUIRED if not meta.get(k)]
    if missing:
        raise BlogError(f"{source}: front matter lacks {', '.join(missing)}")
    try:
        published = date.fromisoformat(meta["date"])
    except ValueError:
        raise BlogError(f"{source}: date must look like 2025-11-20, got {meta['date']!r}") from None
    tokens = md.parse(body)
    _check_images(tokens, source)
    # Chinese has no spaces between words: count its characters instead
    words = (len(re.findall(r"[\u3400-\u9fff]", body)) + len(re.findall(r"[A-Za-z0-9]+", body))
             if language == "zh-CN" else len(body.split()))
    return Post(slug=slug, title=meta["title"], published=published,
                category=meta["category"], description=meta["description"],
                html=md.renderer.render(tokens, md.options, {}), words=words, lang=language)


def load_posts(directory: Path) -> list[Post]:
    """Every English post in the folder, newest first, each with its translations."""
    md = markdown_renderer()
    loaded = [load_post(p, md) for p in sorted(directory.glob("*.md"))]
    english = {p.slug: p for p in loaded if p.lang == SOURCE_LANGUAGE}
    for post in loaded:
        if post.lang == SOURCE_LANGUAGE:
            continue
        original = english.get(post.slug)
        if original is None:
            raise BlogError(f"{post.slug}.{post.lang}.md: translates a post that does not "
                            f"exist ({post.slug}.md)")
        if post.published != original.published:
            raise BlogError(f"{post.slug}.{post.lang}.md: date {post.published} differs from "
                            f"{post.slug}.md ({original.published})")
        original.translations[post.lang] = replace(post, category_key=original.category)
    return sorted(english.values(), key=lambda p: (p.published, p.slug), reverse=True)
