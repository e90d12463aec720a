"""Cutting documents into chunks for ``context.rag()``: plain text, Markdown and PDF.

Pure functions (no run, no I/O except reading the file handed to
:func:`chunk_file`):

* :func:`chunk_text` packs paragraphs (blank-line separated) into chunks of
  at most ``chunk_chars`` characters; a paragraph too long for one chunk is
  cut between sentences, a sentence too long between words. Each chunk after
  the first starts with the end of the previous one (at most ``overlap``
  characters, from a word boundary), so a sentence cut between chunks is
  whole in one of them.
* :func:`chunk_markdown` cuts at headings (``#`` to ``######``, not inside
  fenced code) and chunks each section's text; every chunk's metadata holds
  its heading path (``{"headings": ["Guide", "Install"]}``).
* :func:`chunk_pdf` extracts each page's text with pypdf (the ``[rag]``
  extra, imported when a PDF is read) and chunks it; metadata ``{"page": n}``
  (1-based).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aethergraph.core.errors import RagError

__all__ = ["SUPPORTED_FILES", "Chunk", "chunk_file", "chunk_markdown", "chunk_pdf", "chunk_text", "file_kind"]

# File suffixes read as documents, and how each is chunked.
SUPPORTED_FILES = {
    ".txt": "text",
    ".text": "text",
    ".log": "text",
    ".rst": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".pdf": "pdf",
}

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n+")
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$")
_FENCE = re.compile(r"^[ \t]{0,3}(```|~~~)")


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a document and what locates it (heading path, page)."""

    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


def _pieces(paragraph: str, limit: int) -> list[str]:
    """``paragraph`` as pieces of at most ``limit`` characters: whole sentences, else words, else characters."""
    if len(paragraph) <= limit:
        return [paragraph]
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(paragraph):
        if len(sentence) <= limit:
            pieces.append(sentence)
            continue
        current = ""
        for word in sentence.split():
            while len(word) > limit:  # a "word" longer than a chunk (a URL, base64): cut it
                if current:
                    pieces.append(current)
                    current = ""
                pieces.append(word[:limit])
                word = word[limit:]
            if current and len(current) + 1 + len(word) > limit:
                pieces.append(current)
                current = word
            else:
                current = f"{current} {word}" if current else word
        if current:
            pieces.append(current)
    return pieces


def _tail(text: str, overlap: int) -> str:
    """The last ``overlap`` characters of ``text`` or fewer, starting at a word boundary."""
    if overlap <= 0 or not text:
        return ""
    if len(text) <= overlap:
        return text
    tail = text[-overlap:]
    space = tail.find(" ")
    return tail[space + 1 :] if 0 <= space < len(tail) - 1 else ""


def chunk_text(text: str, *, chunk_chars: int = 1200, overlap: int = 150) -> list[str]:
    """``text`` cut into chunks of at most ``chunk_chars`` characters (see the module docstring)."""
    if chunk_chars < 16:
        raise ValueError(f"chunk_chars must be at least 16, got {chunk_chars}")
    overlap = max(0, min(overlap, chunk_chars // 2))
    paragraphs = [" ".join(p.split()) for p in _PARAGRAPH_BREAK.split(text.replace("\r\n", "\n"))]
    chunks: list[str] = []
    current = ""
    for paragraph in paragraphs:
        if not paragraph:
            continue
        for index, piece in enumerate(_pieces(paragraph, chunk_chars - overlap - 1)):
            separator = "\n\n" if index == 0 else " "
            if current and len(current) + len(separator) + len(piece) > chunk_chars:
                chunks.append(current)
                carried = _tail(current, overlap)
                current = f"{carried} {piece}" if carried else piece
            else:
                current = f"{current}{separator}{piece}" if current else piece
    if current:
        chunks.append(current)
    return chunks


def chunk_markdown(text: str, *, chunk_chars: int = 1200, overlap: int = 150) -> list[Chunk]:
    """Markdown cut at its headings; each chunk's metadata holds its heading path (``headings``)."""
    sections: list[tuple[list[str], list[str]]] = [([], [])]
    path: list[tuple[int, str]] = []
    fenced: str | None = None
    for line in text.replace("\r\n", "\n").split("\n"):
        fence = _FENCE.match(line)
        if fence is not None:
            fenced = None if fenced == fence.group(1) else (fenced or fence.group(1))
        heading = _HEADING.match(line) if fenced is None and fence is None else None
        if heading is None:
            sections[-1][1].append(line)
            continue
        level, title = len(heading.group(1)), heading.group(2).strip()
        path = [(lvl, name) for lvl, name in path if lvl < level] + [(level, title)]
        sections.append(([name for _, name in path], [title]))
    chunks: list[Chunk] = []
    for headings, lines in sections:
        body = "\n".join(lines)
        if headings and body.strip() == headings[-1]:
            continue  # a heading with nothing under it before the next one
        for piece in chunk_text(body, chunk_chars=chunk_chars, overlap=overlap):
            chunks.append(Chunk(piece, {"headings": list(headings)}))
    return chunks


def chunk_pdf(path: Path, *, chunk_chars: int = 1200, overlap: int = 150) -> list[Chunk]:
    """A PDF's text, page by page; each chunk's metadata holds its 1-based ``page``."""
    try:
        from pypdf import PdfReader
        from pypdf.errors import PyPdfError
    except ImportError as exc:
        raise RagError(
            f"cannot read {path}: reading PDF needs pypdf; install the rag extra (pip install 'aethergraph[rag]')"
        ) from exc
    try:
        reader = PdfReader(path)
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PyPdfError, OSError, ValueError, KeyError) as exc:
        raise RagError(f"cannot read {path} as a PDF ({type(exc).__name__}: {exc}); is it a valid PDF file?") from exc
    chunks = [
        Chunk(piece, {"page": number})
        for number, page_text in enumerate(pages, start=1)
        for piece in chunk_text(page_text, chunk_chars=chunk_chars, overlap=overlap)
    ]
    if not chunks:
        raise RagError(
            f"{path} has no extractable text ({len(pages)} page(s)); a scanned PDF needs OCR before it can be indexed"
        )
    return chunks


def file_kind(path: Path) -> str:
    """``text``, ``markdown`` or ``pdf`` by the file's suffix; :class:`RagError` for any other."""
    kind = SUPPORTED_FILES.get(path.suffix.lower())
    if kind is None:
        raise RagError(
            f"cannot index {path}: unsupported file type {path.suffix or '(no suffix)'!r}. Supported: "
            f"{', '.join(sorted(SUPPORTED_FILES))} (text, Markdown, PDF); for anything else pass its text "
            'as {"text": ..., "title": ...}'
        )
    return kind


def chunk_file(path: Path, *, chunk_chars: int = 1200, overlap: int = 150) -> list[Chunk]:
    """The chunks of a text, Markdown or PDF file; :class:`RagError` naming the file if it cannot be read."""
    kind = file_kind(path)
    if not path.is_file():
        raise RagError(f"cannot index {path}: no such file (paths are read by the process running the node)")
    if kind == "pdf":
        return chunk_pdf(path, chunk_chars=chunk_chars, overlap=overlap)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RagError(f"cannot read {path} as UTF-8 text ({exc}); convert it to UTF-8 or pass its text") from exc
    if kind == "markdown":
        return chunk_markdown(text, chunk_chars=chunk_chars, overlap=overlap)
    return [Chunk(piece) for piece in chunk_text(text, chunk_chars=chunk_chars, overlap=overlap)]
