"""Anthropic `document` blocks in a form an OpenAI-compatible upstream accepts, never dropped.

The rules: docs/protocol.md §6.

Order of preference, per block:
1. text sources (`text`, `content`) become text;
2. a base64 PDF is sent as an OpenAI `file` part where the upstream takes files
   (OpenAI, OpenRouter: `{"type": "file", "file": {"filename", "file_data": data URL}}`);
3. otherwise its text is extracted with pypdf;
4. when nothing works (a scanned PDF without text, a broken file, a URL source the gateway
   does not fetch), a visible placeholder says so, a warning is logged and the
   `llmapi_content_downgraded_total` counter goes up. The model and the user can then see
   that something was not read, instead of an "[empty result]".
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
from typing import Any

from gateway.metrics import CONTENT_DOWNGRADED

log = logging.getLogger(__name__)

__all__ = ["document_parts", "pdf_text"]

MAX_PDF_TEXT = 400_000  # characters; a larger extraction is cut with a visible note


def document_parts(block: dict[str, Any], send_files: bool) -> list[dict[str, Any]]:
    """OpenAI content parts for one Anthropic document block (at least one)."""
    source = block.get("source")
    title = block.get("title") if isinstance(block.get("title"), str) else ""
    name = title or "document"
    if isinstance(source, dict):
        kind = source.get("type")
        if kind == "text" and isinstance(source.get("data"), str):
            return [_text(f"{title}\n\n{source['data']}" if title else source["data"])]
        if kind == "content" and isinstance(source.get("content"), list):
            texts = [b["text"] for b in source["content"]
                     if isinstance(b, dict) and isinstance(b.get("text"), str)]
            if texts:
                return [_text("\n\n".join([title, *texts] if title else texts))]
        if kind == "base64" and isinstance(source.get("data"), str):
            media = source.get("media_type") or "application/pdf"
            if media == "application/pdf":
                if send_files:
                    CONTENT_DOWNGRADED.inc(("document", "file_part"))
                    filename = name if name.endswith(".pdf") else f"{name}.pdf"
                    return [{"type": "file", "file": {
                        "filename": filename,
                        "file_data": f"data:application/pdf;base64,{source['data']}"}}]
                text = pdf_text(source["data"])
                if text:
                    CONTENT_DOWNGRADED.inc(("document", "pdf_text"))
                    label = f"[text extracted from the PDF {name!r}]"
                    return [_text(f"{label}\n{text}")]
            elif media.startswith("text/"):
                try:
                    return [_text(base64.b64decode(source["data"]).decode("utf-8", "replace"))]
                except (binascii.Error, ValueError):
                    pass
        if kind == "url" and isinstance(source.get("url"), str):
            return [_placeholder(name, f"at {source['url']}, which the gateway does not fetch")]
    return [_placeholder(name, "that could not be converted for this upstream")]


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _placeholder(name: str, why: str) -> dict[str, Any]:
    CONTENT_DOWNGRADED.inc(("document", "placeholder"))
    log.warning("document %r not sent upstream: %s", name, why)
    return _text(f"[document {name!r} {why}; its content was not sent to the model]")


def pdf_text(data: str) -> str:
    """The text layer of a base64 PDF ("" when it has none or cannot be read)."""
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        return ""
    try:
        from pypdf import PdfReader
        from pypdf.errors import PyPdfError
    except ImportError:  # pragma: no cover - pypdf is a dependency
        log.warning("pypdf is not installed; PDFs cannot be read for OpenAI upstreams")
        return ""
    try:
        reader = PdfReader(io.BytesIO(raw))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PyPdfError, ValueError, KeyError, TypeError, OSError):
        log.warning("PDF could not be read", exc_info=True)
        return ""
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if len(text) > MAX_PDF_TEXT:
        text = text[:MAX_PDF_TEXT] + "\n[... the rest of the PDF text was cut]"
    return text
