"""PDF text for the `pdf_extract` pipeline step (`data/steps.py`): pages via pypdfium2, character error rate.

```yaml
steps:
  - pdf_extract: {pdf_key: pdf}                                   # the PDF's text layer (PDFium)
  - pdf_extract: {method: vlm, model: runs/qwen-vl-tiny/all, prompt: "What word is written?", scale: 1.0}
```

Each input document names a PDF (`pdf_key`, a path); the step writes its text into the document's text field
(pages joined by a blank line) and `pdf_pages`. `method: text` reads the text layer; `method: vlm` renders each
page (`scale` x 72 dpi) and has a vision-language model transcribe it (Qwen3 extracted its PDF text with
Qwen2.5-VL this way; the tiny VLM trained here reads one word per page image). An unreadable or missing PDF is
dropped and counted (`removed: unreadable_pdf`). With `reference_key`, documents carrying the true text add to
the step's character error rate (`extra.cer`: edits and reference characters; CER = edits / chars).
Resumable like every step: shards finish atomically and a re-run skips them.

    make_test_pdfs(out_dir, texts)      # fpdf2: one PDF per text (for tests and the demo), returns the paths
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gptqwen.errors import require
from gptqwen.vision.transcribe import load_vlm, transcribe


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance (insertions, deletions, substitutions) between two strings (or lists of words)."""
    if len(a) < len(b):
        a, b = b, a
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def pdf_pages(path: str, method: str = "text", max_pages: int = 1000, model: str | None = None,
              prompt: str = "What word is written?", scale: float = 1.0, max_new_tokens: int = 32) -> list[str]:
    """The text of each page of a PDF: its text layer (`text`), or a VLM's transcription of the rendered page (`vlm`)."""
    pdfium = require("pypdfium2", "pdf", "the pdf_extract step")
    pdf = pdfium.PdfDocument(path)
    try:
        texts = []
        for i in range(min(len(pdf), max_pages)):
            page = pdf[i]
            if method == "text":
                texts.append(page.get_textpage().get_text_range().replace("\r\n", "\n").strip())
            else:
                vlm, tok = load_vlm(str(model))
                image = page.render(scale=scale).to_pil().convert("RGB")
                texts.append(transcribe(vlm, tok, image, prompt, max_new_tokens))
        return texts
    finally:
        pdf.close()


def make_test_pdfs(out_dir: str | Path, texts: list[str], page_size: tuple[float, float] | None = None,
                   font_size: float = 11) -> list[str]:  # fmt: skip
    """One PDF per text (lines as written; a form feed starts a new page), DejaVu Sans; returns the paths.

    `page_size` (points) defaults to A4; (128, 32) with font_size 16 makes one word per page as the tiny VLM reads."""
    fpdf = require("fpdf", "pdf", "writing test PDFs")
    mpl = require("matplotlib", "vision", "its bundled DejaVu Sans font")
    font = Path(mpl.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, text in enumerate(texts):
        doc = fpdf.FPDF(unit="pt", format=page_size or "A4")
        doc.add_font("dejavu", "", str(font))
        doc.set_font("dejavu", size=font_size)
        doc.set_auto_page_break(True, margin=4 if page_size else 36)
        doc.set_margins(4, 4) if page_size else doc.set_margins(36, 36)
        for page in text.split("\f"):
            doc.add_page()
            for line in page.split("\n"):
                doc.cell(text=line, new_x="LMARGIN", new_y="NEXT", h=font_size * 1.3)
        path = out / f"doc_{k:05d}.pdf"
        doc.output(str(path))
        paths.append(str(path))
    return paths
