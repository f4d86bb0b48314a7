"""Quality filters reproduce datatrove's thresholds on crafted documents; language and PII; `gptqwen data filter`."""

import json

import pytest

from gptqwen.cli import main
from gptqwen.data.filters import build_filter, detect_language
from gptqwen.data.io import read_documents
from gptqwen.errors import UserError
from test_data_dedup import SAMPLE, SAMPLE_IDS

FILLER = "house river stone garden window market yellow silver basket little".split()


def words(n: int, stops: int = 4) -> str:
    """n words: `stops` stop words then filler words (mean length ~6)."""
    return " ".join((["the", "and", "of", "with"] * n)[:stops] + [FILLER[i % len(FILLER)] for i in range(n - stops)])


def reason(name, text, **overrides):
    return build_filter(name, overrides).apply(text)[0]


def test_gopher_quality_thresholds():
    assert reason("gopher_quality", words(50)) is None
    assert reason("gopher_quality", words(49)) == "gopher_short_doc"
    assert reason("gopher_quality", words(49), min_doc_words=40) is None  # overridable
    assert reason("gopher_quality", words(60), max_doc_words=59) == "gopher_long_doc"
    assert reason("gopher_quality", " ".join(["of", "to", "an"] * 20)) == "gopher_below_avg_word_length"
    assert reason("gopher_quality", words(60, stops=1)) == "gopher_enough_stop_words"
    assert reason("gopher_quality", words(60) + " #" * 6) is None  # 6/60 = 0.1 is allowed
    assert reason("gopher_quality", words(60) + " #" * 7) == "gopher_too_many_hashes"
    ten_lines = [words(6, stops=2) for _ in range(10)]
    assert reason("gopher_quality", "\n".join(ln + "..." if i < 3 else ln for i, ln in enumerate(ten_lines))) is None
    four = "\n".join(ln + "..." if i < 4 else ln for i, ln in enumerate(ten_lines))
    assert reason("gopher_quality", four) == "gopher_too_many_end_ellipsis"
    assert reason("gopher_quality", "\n".join("• " + ln for ln in ten_lines)) == "gopher_too_many_bullets"
    assert reason("gopher_quality", words(40) + " 1" * 11) == "gopher_below_alpha_threshold"  # 40/51 < 0.8


def test_gopher_repetition_thresholds():
    only_lines = {"dup_line_char_frac": None, "dup_para_char_frac": None, "top_n_grams": {}, "dup_n_grams": {}}
    lines = [f"line number {w} says something different {w}" for w in FILLER]
    three = "\n".join(lines[:7] + lines[:3])
    four = "\n".join(lines[:6] + lines[:4])
    assert reason("gopher_repetition", three, **only_lines) is None  # 3/10 = 0.3 allowed
    assert reason("gopher_repetition", four, **only_lines) == "dup_line_frac"
    assert reason("gopher_repetition", three) == "dup_line_char_frac"  # default char fraction 0.2
    assert reason("gopher_repetition", "spam eggs " * 40) == "top_2_gram"
    import random

    rnd = random.Random(0)
    vocab = [a + b + c for a in "bcdfg" for b in "aeiou" for c in "klmnp"]
    body = [rnd.choice(vocab) for _ in range(200)]
    assert reason("gopher_repetition", " ".join(body)) is None
    repeated = body + body[:20] * 3
    assert reason("gopher_repetition", " ".join(repeated), top_n_grams={}) == "duplicated_5_n_grams"


def test_c4_line_and_document_rules():
    good = [f"This is sentence number {w} in the text." for w in FILLER[:6]]
    text = "\n".join(good + ["Menu Home About", "Enable javascript to see this page.", "We use cookies on this site."])
    r, out = build_filter("c4").apply(text)
    assert r is None and out.splitlines() == good  # bad lines dropped, good lines kept
    assert reason("c4", "\n".join(good[:4])) == "too_few_sentences"
    assert reason("c4", "\n".join(good + ["Lorem ipsum dolor sit amet."])) == "lorem_ipsum"
    assert reason("c4", "\n".join(good + ["The code is { x } here."])) == "curly_bracket"


def test_fineweb_thresholds():
    long_line = "this line is long enough to not count as a short line at all"
    lines8 = [long_line + f" {w}" for w in FILLER[:8]]
    ok = "\n".join([lines8[0] + "."] + lines8[1:])  # 1/8 = 0.125 > 0.12
    assert reason("fineweb", ok) is None
    lines9 = [long_line + f" {w}" for w in FILLER[:9]]
    assert reason("fineweb", "\n".join([lines9[0] + "."] + lines9[1:])) == "line_punct_ratio"
    short = "\n".join(f"short {w}." for w in FILLER[:7]) + "\n" + "\n".join(ln + "." for ln in lines8[:3])
    assert reason("fineweb", short) == "short_line_ratio"
    dup = "\n".join(ln + "." for ln in lines8 + lines8[:1])
    assert reason("fineweb", dup) == "char_dup_ratio"
    assert reason("fineweb", dup, char_duplicates_ratio=0.2) is None


def test_language_detection_and_filter():
    assert detect_language("这是一个中文句子，我们用它来测试语言识别。")[0] == "zh"
    assert detect_language("The cat sat on the mat and it was happy with the day.")[0] == "en"
    assert detect_language("Съешь же ещё этих мягких французских булок")[0] == "ru"
    assert detect_language("これは日本語の文です。ひらがなとカタカナ")[0] == "ja"
    assert reason("language", "这是一个中文句子。") is None
    assert reason("language", "这是一个中文句子。", languages=["en"]) == "language_zh"
    assert reason("language", "Der schnelle braune Fuchs springt über den faulen Hund") == "language_unknown"


def test_pii_masking():
    _, out = build_filter("pii").apply(
        "Mail john.doe@example.com, call +1 (555) 123-4567 or 13812345678; host 192.168.0.1. "
        "In 2019 2020 pi was 3.14 and version 1.2.3.4.5 shipped; 999.1.1.1 is no address."
    )
    assert "<EMAIL>" in out and out.count("<PHONE>") == 2 and out.count("<IP>") == 1
    for kept in ("2019 2020", "3.14", "1.2.3.4.5", "999.1.1.1"):
        assert kept in out


@pytest.mark.parametrize("name,params,match", [
    ("gopher_qualty", {}, "unknown filter"),
    ("gopher_quality", {"min_doc_word": 3}, "no setting"),
    ("fineweb", {"line_punct_thr": 1.5}, r"\[0, 1\]"),
    ("gopher_quality", {"min_doc_words": -1}, "non-negative"),
    ("c4", {"filter_javascript": "yes"}, "must be bool"),
])
def test_bad_filter_settings(name, params, match):
    with pytest.raises(UserError, match=match):
        build_filter(name, params)


def test_cli_filter_drops_and_masks(tmp_path, capsys):
    """On the README sample: the repeated spam goes (top 2-gram share), then everything not English (code, Chinese),
    and the one document with an e-mail address and a phone number comes out masked, nothing else changed."""
    out = tmp_path / "clean.jsonl"
    assert main(["data", "filter", str(SAMPLE), "-o", str(out), "--filters", "gopher_repetition,language,pii",
                 "--set", "language.languages=[en]", "--workers", "1", "--json"]) == 0
    steps = json.loads(capsys.readouterr().out)["steps"]
    assert [(s["step"], s["removed"], s["modified"]) for s in steps[1:]] == [
        ("gopher_repetition", {"top_2_gram": 1}, 0), ("language", {"language_low_score": 1, "language_zh": 1}, 0),
        ("pii", {}, 1)]
    sample = {d["id"]: d["text"] for d in read_documents([SAMPLE], on_error="skip")}
    kept = {d["id"]: d["text"] for d in read_documents([out])}
    assert list(kept) == [i for i in SAMPLE_IDS if i not in ("spam", "code", "zh")]
    masked = sample["pii"].replace("garden.club@example.org", "<EMAIL>").replace("+44 20 7946 0958", "<PHONE>")
    assert masked != sample["pii"] and kept.pop("pii") == masked
    assert all(text == sample[i] for i, text in kept.items())
