"""Terms, privacy and refund pages from Markdown files the operator edits.

Each page is one Markdown file per language: `terms.md` (English) and `terms.zh-CN.md`
(Chinese), likewise `privacy` and `refunds`. The operator's folder (`[site] legal_dir`) wins;
what it lacks comes from the neutral starting text in `templates/legal/`. Files are read on
each request, so an edit shows at once without a restart (they are small, and these pages
are rarely visited). Raw HTML in the Markdown is not rendered, like the blog.
"""

from __future__ import annotations

from pathlib import Path

from markupsafe import Markup

from web.blog import markdown_renderer

PAGES = ("terms", "privacy", "refunds")


def legal_file(name: str, language: str, operator_dir: Path | None, builtin_dir: Path) -> Path:
    """The file that says page `name` in `language`, the operator's first, then English."""
    candidates = []
    for folder in (operator_dir, builtin_dir):
        if folder is None:
            continue
        if language != "en":
            candidates.append(folder / f"{name}.{language}.md")
        candidates.append(folder / f"{name}.md")
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"no {name}.md in {operator_dir} or {builtin_dir}")


def render_legal(path: Path, public_url: str) -> tuple[str, Markup]:
    """(title from the first `# ` heading, body HTML). `{public_url}` in the text is replaced
    with this server's address, so the neutral text names the right site."""
    text = path.read_text(encoding="utf-8").replace("{public_url}", public_url)
    title = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")),
                 path.stem)
    body = "\n".join(line for line in text.splitlines() if not line.startswith("# "))
    return title, Markup(markdown_renderer().render(body))  # html=False: Markdown only
