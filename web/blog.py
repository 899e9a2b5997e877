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
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from markdown_it import MarkdownIt
from markdown_it.token import Token

REQUIRED = ("title", "date", "category", "description")
_SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


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

    @property
    def category_slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.category.lower()).strip("-")

    @property
    def reading_minutes(self) -> int:
        return max(1, round(self.words / 220))


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


def load_post(path: Path, md: MarkdownIt | None = None) -> Post:
    md = md or markdown_renderer()
    source = path.name
    slug = path.stem
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
    return Post(slug=slug, title=meta["title"], published=published,
                category=meta["category"], description=meta["description"],
                html=md.renderer.render(tokens, md.options, {}), words=len(body.split()))


def load_posts(directory: Path) -> list[Post]:
    """Every post in the folder, newest first."""
    md = markdown_renderer()
    posts = [load_post(p, md) for p in sorted(directory.glob("*.md"))]
    return sorted(posts, key=lambda p: (p.published, p.slug), reverse=True)
