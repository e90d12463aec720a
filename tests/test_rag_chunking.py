"""Chunking for ``context.rag()``: plain text, Markdown headings, a real PDF made with pypdf, unreadable files."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

from aethergraph.core.context.chunking import chunk_file, chunk_markdown, chunk_text
from aethergraph.errors import RagError


def make_pdf(path: Path, pages: list[str]) -> Path:
    """A real PDF whose pages hold ``pages`` (lines split on newlines), in Helvetica."""
    writer = PdfWriter()
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    for text in pages:
        page = writer.add_blank_page(612, 792)
        shown = "".join(f"({line}) Tj 0 -16 Td " for line in text.split("\n"))
        content = DecodedStreamObject()
        content.set_data(f"BT /F1 12 Tf 72 720 Td {shown}ET".encode())
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
        )
        page.replace_contents(content)
    with path.open("wb") as out:
        writer.write(out)
    return path


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


def test_text_chunks_respect_size_keep_paragraphs_and_overlap() -> None:
    long_paragraph = " ".join(f"Sentence number {i} is here." for i in range(40))
    text = f"A short opening paragraph.\n\n{long_paragraph}\n\n\nA closing paragraph."
    chunks = chunk_text(text, chunk_chars=200, overlap=40)
    assert len(chunks) > 5
    assert all(len(chunk) <= 200 for chunk in chunks)
    # the first chunk keeps the paragraph break; no word is lost, and each chunk starts with the end of the last
    assert chunks[0].startswith("A short opening paragraph.\n\n")
    assert set(words(text)) == {w for chunk in chunks for w in words(chunk)}
    for previous, chunk in itertools.pairwise(chunks):
        assert previous[-15:] in chunk[:60]
    # sentences are kept whole where they fit: every chunk but the last ends at a sentence end
    assert all(chunk.rstrip().endswith(".") for chunk in chunks)
    assert chunks[-1].endswith("A closing paragraph.")


def test_text_without_overlap_and_oversized_words() -> None:
    text = "word " * 30 + "x" * 250
    chunks = chunk_text(text, chunk_chars=100, overlap=0)
    assert all(len(chunk) <= 100 for chunk in chunks)
    assert "".join(chunks).count("x") == 250
    assert chunk_text("   \n\n  ", chunk_chars=100, overlap=10) == []
    assert chunk_text("one small text", chunk_chars=100, overlap=10) == ["one small text"]


def test_markdown_chunks_carry_their_heading_path() -> None:
    md = (
        "Preface before any heading.\n\n"
        "# Guide\nWelcome to the guide.\n\n"
        "## Install\nRun pip install aethergraph.\n\n```bash\n# not a heading: a shell comment\n```\n\n"
        "## Use\n### Deep dive\nThe deep text.\n\n"
        "# Reference ##\nThe reference text.\n"
    )
    chunks = chunk_markdown(md, chunk_chars=300, overlap=20)
    by_path = {tuple(chunk.metadata["headings"]): chunk.text for chunk in chunks}
    assert list(by_path) == [(), ("Guide",), ("Guide", "Install"), ("Guide", "Use", "Deep dive"), ("Reference",)]
    assert by_path[()] == "Preface before any heading."
    assert "shell comment" in by_path[("Guide", "Install")]
    assert by_path[("Guide", "Use", "Deep dive")].startswith("Deep dive")
    assert by_path[("Reference",)] == "Reference The reference text."


def test_a_real_pdf_is_chunked_by_page(tmp_path: Path) -> None:
    pdf = make_pdf(
        tmp_path / "manual.pdf", ["Pump manual\nCheck the bearing monthly", "Turbine notes\nBlades last ten years"]
    )
    chunks = chunk_file(pdf, chunk_chars=200, overlap=20)
    assert [chunk.metadata for chunk in chunks] == [{"page": 1}, {"page": 2}]
    assert "bearing monthly" in chunks[0].text and "Blades last ten years" in chunks[1].text


def test_files_by_kind_and_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("plain text notes")
    (tmp_path / "doc.md").write_text("# Title\nbody")
    assert [c.text for c in chunk_file(tmp_path / "notes.txt")] == ["plain text notes"]
    assert chunk_file(tmp_path / "doc.md")[0].metadata == {"headings": ["Title"]}

    with pytest.raises(RagError) as caught:
        chunk_file(tmp_path / "sheet.xlsx")
    assert "sheet.xlsx" in str(caught.value) and ".pdf" in str(caught.value) and ".md" in str(caught.value)
    with pytest.raises(RagError, match="no such file"):
        chunk_file(tmp_path / "missing.txt")
    (tmp_path / "broken.pdf").write_bytes(b"this is not a PDF at all")
    with pytest.raises(RagError) as caught:
        chunk_file(tmp_path / "broken.pdf")
    assert "broken.pdf" in str(caught.value) and "PDF" in str(caught.value)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(RagError, match="UTF-8"):
        chunk_file(tmp_path / "latin1.txt")
    make_pdf(tmp_path / "blank.pdf", [""])
    with pytest.raises(RagError, match="OCR"):
        chunk_file(tmp_path / "blank.pdf")
