"""The `pdf_extract` data step: generated PDFs back to text with a measured character error rate (text layer),
broken PDFs dropped and counted, resume skips the finished step, and the VLM route renders pages for a model."""

from __future__ import annotations

import pytest

pytest.importorskip("pypdfium2")
pytest.importorskip("fpdf")

from gptqwen.data import pipeline as pl  # noqa: E402
from gptqwen.data.io import read_documents, write_documents  # noqa: E402
from gptqwen.data.pdf import edit_distance, make_test_pdfs, pdf_pages  # noqa: E402
from gptqwen.errors import UserError  # noqa: E402

TEXTS = ["Scaling laws relate loss to compute.\nThe 2nd line: é, ü and 42%.",
         "Page one of two.\fPage two: Qwen reads PDFs.", "Grouped-query attention saves KV cache."]


def test_edit_distance():
    assert edit_distance("kitten", "sitting") == 3 and edit_distance("", "abc") == 3 and edit_distance("same", "same") == 0
    assert edit_distance("abcd", "abed") == 1 and edit_distance("xy", "yx") == 2 and edit_distance("abc", "") == 3


def test_pdf_extract_step_round_trips_text_with_cer(tmp_path):
    paths = make_test_pdfs(tmp_path / "pdfs", TEXTS)
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    docs = [{"pdf": p, "reference": t.replace("\f", "\n\n")} for p, t in zip(paths, TEXTS)]
    docs += [{"pdf": str(tmp_path / "broken.pdf")}, {"pdf": str(tmp_path / "missing.pdf")}]
    spec = {"input": str(tmp_path / "in.jsonl"), "output": str(tmp_path / "work"), "workers": 1, "text_key": "text",
            "steps": [{"pdf_extract": {"reference_key": "reference"}}]}
    write_documents(tmp_path / "in.jsonl", [{"text": "", **d} for d in docs])
    summary = pl.run_pipeline(spec, log=lambda m: None)
    [step] = [r for r in summary["steps"] if r["step"] == "pdf_extract"]
    out = list(read_documents(summary["final_shards"]))
    assert [d["pdf_pages"] for d in out] == [1, 2, 1]
    assert step["removed"] == {"unreadable_pdf": 2} and step["cer"] == 0.0  # the text layer is exact
    assert out[0]["text"] == TEXTS[0] and "character error rate 0.0000" in pl.format_report(summary)
    shards = sorted(p for p in (tmp_path / "work").rglob("*") if p.is_file() and p.name != "report.json")
    before = {p: p.stat().st_mtime_ns for p in shards}
    again = pl.run_pipeline(spec, log=lambda m: None)  # resumable: the finished step is not run again
    assert {p: p.stat().st_mtime_ns for p in shards} == before and again["final_shards"] == summary["final_shards"]


def test_pdf_extract_settings_are_checked():
    from gptqwen.data.steps import build_step

    with pytest.raises(UserError, match="method"):
        build_step("pdf_extract", {"method": "vlm"})
    with pytest.raises(UserError, match="no setting"):
        build_step("pdf_extract", {"dpi": 300})


def test_vlm_route_transcribes_rendered_pages(tmp_path):
    """One word per 128x32-point page, rendered at 72 dpi: the image size the tiny VLM reads (here untrained)."""
    import torch

    from gptqwen.tokenizer.train import train_tokenizer
    from gptqwen.vision import VisionLanguageModel
    from gptqwen.vision.data import corpus_text

    tok = train_tokenizer(corpus_text(["word"]), 384, style="qwen", show_progress=False)
    torch.manual_seed(0)
    vlm = VisionLanguageModel.from_preset("qwen-vl-tiny", image_pad_id=tok.token_to_id("<|image_pad|>"),
                                          vocab_size=tok.vocab_size)  # fmt: skip
    vlm.save_pretrained(tmp_path / "vlm")
    tok.save(tmp_path / "vlm")
    [path] = make_test_pdfs(tmp_path / "pdfs", ["river\fstone"], page_size=(128, 32), font_size=16)
    pages = pdf_pages(path, "vlm", model=str(tmp_path / "vlm"), max_new_tokens=3)
    assert len(pages) == 2 and all(isinstance(p, str) for p in pages)
