"""Document quality filters with datatrove's default thresholds, a script-based language filter
and PII masking.

Every filter is a small dataclass whose fields are its thresholds (each overridable, `None`
disables a check) and whose `apply(text)` returns `(reason, text)`: `reason` is None when the
document is kept, else a short tag such as `"gopher_short_doc"`, and `text` may be rewritten
(C4 drops lines, PII masking replaces spans). Thresholds are those of datatrove / the Gopher,
C4 (T5) and FineWeb papers. Words come from a regex tokenizer close
to NLTK's `word_tokenize` (no model download).

    from gptqwen.data.filters import build_filter
    f = build_filter("gopher_quality", {"min_doc_words": 20})
    reason, text = f.apply(doc["text"])
"""

from __future__ import annotations

import dataclasses
import re
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

from gptqwen.data.dedup import CJK_CHARS
from gptqwen.errors import UserError, closest

_WORD = re.compile(rf"[{CJK_CHARS}]|[^\W{CJK_CHARS}]+(?:'[^\W{CJK_CHARS}]+)?|[^\w\s]")
_PUNCT = set(string.punctuation)


def words_of(text: str) -> list[str]:
    """Word and punctuation tokens (punctuation and CJK characters one per token)."""
    return _WORD.findall(text)


@dataclass
class DocFilter:
    """Base: subclasses set `name` and implement `apply(text) -> (reason | None, text)`."""

    name: ClassVar[str] = ""
    rewrites: ClassVar[bool] = False  # True when apply() may change the text instead of dropping

    def apply(self, text: str) -> tuple[str | None, str]:
        raise NotImplementedError

    def judge(self, text: str) -> tuple[str | None, str, dict]:
        """`apply` plus fields to record on the document (the language filter adds its guess)."""
        return (*self.apply(text), {})


@dataclass
class GopherQuality(DocFilter):
    name: ClassVar[str] = "gopher_quality"
    min_doc_words: int | None = 50
    max_doc_words: int | None = 100_000
    min_avg_word_length: float | None = 3
    max_avg_word_length: float | None = 10
    max_symbol_word_ratio: float | None = 0.1
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    max_non_alpha_words_ratio: float | None = 0.8  # named as in datatrove: minimum share of words with a letter
    min_stop_words: int | None = 2
    stop_words: tuple[str, ...] = ("the", "be", "to", "of", "and", "that", "have", "with")

    def apply(self, text: str) -> tuple[str | None, str]:
        words = [w for w in words_of(text) if w not in _PUNCT]
        n = len(words)
        if self.min_doc_words is not None and n < self.min_doc_words:
            return "gopher_short_doc", text
        if self.max_doc_words is not None and n > self.max_doc_words:
            return "gopher_long_doc", text
        if n == 0:
            return "gopher_short_doc", text
        mean_len = sum(map(len, words)) / n
        if self.min_avg_word_length is not None and mean_len < self.min_avg_word_length:
            return "gopher_below_avg_word_length", text
        if self.max_avg_word_length is not None and mean_len > self.max_avg_word_length:
            return "gopher_above_avg_word_length", text
        if self.max_symbol_word_ratio is not None:
            if text.count("#") / n > self.max_symbol_word_ratio:
                return "gopher_too_many_hashes", text
            if (text.count("...") + text.count("…")) / n > self.max_symbol_word_ratio:
                return "gopher_too_many_ellipsis", text
        lines = text.splitlines() or [text]
        if self.max_bullet_lines_ratio is not None:
            bullets = sum(line.lstrip().startswith(("•", "-", "*", "·")) for line in lines)
            if bullets / len(lines) > self.max_bullet_lines_ratio:
                return "gopher_too_many_bullets", text
        if self.max_ellipsis_lines_ratio is not None:
            ellipsis = sum(line.rstrip().endswith(("...", "…")) for line in lines)
            if ellipsis / len(lines) > self.max_ellipsis_lines_ratio:
                return "gopher_too_many_end_ellipsis", text
        if self.max_non_alpha_words_ratio is not None:
            alpha = sum(any(c.isalpha() for c in w) for w in words)
            if alpha / n < self.max_non_alpha_words_ratio:
                return "gopher_below_alpha_threshold", text
        if self.min_stop_words is not None:
            stops = set(self.stop_words)
            if sum(w.lower() in stops for w in words) < self.min_stop_words:
                return "gopher_enough_stop_words", text
        return None, text


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(number of repeated elements, characters in them), first occurrences not counted."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


@dataclass
class GopherRepetition(DocFilter):
    name: ClassVar[str] = "gopher_repetition"
    dup_line_frac: float | None = 0.3
    dup_para_frac: float | None = 0.3
    dup_line_char_frac: float | None = 0.2
    dup_para_char_frac: float | None = 0.2
    top_n_grams: dict = dataclasses.field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    dup_n_grams: dict = dataclasses.field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )

    def apply(self, text: str) -> tuple[str | None, str]:
        size = max(1, len(text))
        for unit, parts, frac, char_frac in (
            ("para", re.split(r"\n{2,}", text.strip()), self.dup_para_frac, self.dup_para_char_frac),
            ("line", text.splitlines(), self.dup_line_frac, self.dup_line_char_frac),
        ):
            count, chars = _duplicates(parts)
            if frac is not None and parts and count / len(parts) > frac:
                return f"dup_{unit}_frac", text
            if char_frac is not None and chars / size > char_frac:
                return f"dup_{unit}_char_frac", text
        words = words_of(text)
        for n, frac in sorted(self.top_n_grams.items()):
            grams = [" ".join(words[i : i + int(n)]) for i in range(len(words) - int(n) + 1)]
            if grams:
                gram, count = Counter(grams).most_common(1)[0]
                if len(gram) * count / size > frac:
                    return f"top_{n}_gram", text
        for n, frac in sorted(self.dup_n_grams.items()):
            if self._repeated_chars(words, int(n)) / size > frac:
                return f"duplicated_{n}_n_grams", text
        return None, text

    @staticmethod
    def _repeated_chars(words: list[str], n: int) -> int:
        """Characters in n-grams already seen, skipping past each repeat (no double counting)."""
        seen: set[str] = set()
        chars, i = 0, 0
        while i + n <= len(words):
            gram = " ".join(words[i : i + n])
            if gram in seen:
                chars += len(gram)
                i += n
            else:
                seen.add(gram)
                i += 1
        return chars


_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?:\s|$)")
POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


@dataclass
class C4Quality(DocFilter):
    """C4 line filters (the text keeps only good lines) and document rules."""

    name: ClassVar[str] = "c4"
    rewrites: ClassVar[bool] = True
    remove_citations: bool = True
    filter_no_terminal_punct: bool = True
    min_num_sentences: int | None = 5
    min_words_per_line: int | None = 3
    max_word_length: int | None = 1000
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True

    def apply(self, text: str) -> tuple[str | None, str]:
        kept, sentences = [], 0
        for line in text.splitlines():
            line = line.strip()
            words = line.split()
            if self.max_word_length is not None and any(len(w) > self.max_word_length for w in words):
                continue
            if self.remove_citations:
                line = _CITATION.sub("", line)
            if self.filter_no_terminal_punct and (not line.endswith((".", "?", "!", '"', "'")) or line.endswith("...")):
                continue
            if self.min_words_per_line is not None and len(words) < self.min_words_per_line:
                continue
            lower = line.lower()
            if self.filter_lorem_ipsum and "lorem ipsum" in lower:
                return "lorem_ipsum", text
            if self.filter_javascript and "javascript" in lower:
                continue
            if self.filter_curly_bracket and "{" in line:
                return "curly_bracket", text
            if self.filter_policy and any(p in lower for p in POLICY_PHRASES):
                continue
            sentences += max(1, len(_SENTENCE_END.findall(line)))
            kept.append(line)
        if self.min_num_sentences is not None and sentences < self.min_num_sentences:
            return "too_few_sentences", text
        return None, "\n".join(kept).strip()


@dataclass
class FineWebQuality(DocFilter):
    name: ClassVar[str] = "fineweb"
    line_punct_thr: float | None = 0.12
    line_punct_exclude_zero: bool = False
    short_line_thr: float | None = 0.67
    short_line_length: int = 30
    char_duplicates_ratio: float | None = 0.01
    new_line_ratio: float | None = 0.3

    def apply(self, text: str) -> tuple[str | None, str]:
        lines = text.split("\n")
        if self.line_punct_thr is not None:
            ratio = sum(line.endswith((".", "'", '"', "!", "?")) for line in lines) / len(lines)
            if ratio <= self.line_punct_thr and not (ratio == 0 and self.line_punct_exclude_zero):
                return "line_punct_ratio", text
        if self.short_line_thr is not None:
            if sum(len(line) <= self.short_line_length for line in lines) / len(lines) >= self.short_line_thr:
                return "short_line_ratio", text
        if self.char_duplicates_ratio is not None:
            dup_chars = _duplicates([line for line in lines if line.strip()])[1]
            if dup_chars / max(1, len(text) - text.count("\n")) >= self.char_duplicates_ratio:
                return "char_dup_ratio", text
        if self.new_line_ratio is not None:
            if text.count("\n") / max(1, len(words_of(text))) > self.new_line_ratio:
                return "list_ratio", text
        return None, text


_EN_FUNCTION_WORDS = frozenset("the of and to a in is that for it with as was on be by this are or not".split())
_SCRIPTS = (  # (label, first, last) code point ranges; letters outside all ranges count as "other"
    ("han", 0x4E00, 0x9FFF), ("han", 0x3400, 0x4DBF), ("han", 0xF900, 0xFAFF), ("han", 0x20000, 0x2FA1F),
    ("kana", 0x3040, 0x30FF), ("hangul", 0xAC00, 0xD7AF), ("hangul", 0x1100, 0x11FF),
    ("latin", 0x41, 0x5A), ("latin", 0x61, 0x7A), ("latin", 0xC0, 0x24F),
    ("cyrillic", 0x400, 0x4FF), ("arabic", 0x600, 0x6FF), ("greek", 0x370, 0x3FF), ("devanagari", 0x900, 0x97F),
)


def script_counts(text: str) -> Counter:
    """Letters per script (CJK ideographs count as letters)."""
    counts: Counter = Counter()
    for ch in text:
        if not (ch.isalpha() or unicodedata.category(ch) == "Lo"):
            continue
        cp = ord(ch)
        counts[next((s for s, lo, hi in _SCRIPTS if lo <= cp <= hi), "other")] += 1
    return counts


def detect_language(text: str) -> tuple[str, float]:
    """`(code, score)` from script statistics: zh / ja / ko by CJK script, en for Latin text
    with English function words, ru/ar/el/hi by script, else "unknown". Score = share of
    letters in the deciding script (times the function-word evidence for English)."""
    counts = script_counts(text)
    total = sum(counts.values())
    if total == 0:
        return "unknown", 0.0
    cjk = counts["han"] + counts["kana"] + counts["hangul"]
    if cjk / total >= 0.3:
        if counts["kana"] >= 0.1 * cjk:
            return "ja", cjk / total
        if counts["hangul"] > counts["han"]:
            return "ko", counts["hangul"] / total
        return "zh", cjk / total
    top, n = max(((s, c) for s, c in counts.items() if s not in ("han", "kana", "hangul")), key=lambda x: x[1])
    if top == "latin":
        words = [w.lower() for w in words_of(text) if w[0].isalpha()]
        evidence = sum(w in _EN_FUNCTION_WORDS for w in words) / max(1, len(words))
        return ("en", n / total * min(1.0, evidence / 0.15)) if evidence >= 0.03 else ("unknown", 0.0)
    return {"cyrillic": "ru", "arabic": "ar", "greek": "el", "devanagari": "hi"}.get(top, "unknown"), n / total


@dataclass
class LanguageFilter(DocFilter):
    """Keep documents whose detected language is in `languages` with score >= `min_score`."""

    name: ClassVar[str] = "language"
    languages: tuple[str, ...] = ("en", "zh")
    min_score: float = 0.65

    def apply(self, text: str) -> tuple[str | None, str]:
        return self.judge(text)[:2]

    def judge(self, text: str) -> tuple[str | None, str, dict]:
        lang, score = detect_language(text)
        fields = {"language": lang, "language_score": round(score, 4)}
        if lang not in self.languages:
            return f"language_{lang}", text, fields
        return ("language_low_score" if score < self.min_score else None), text, fields


_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_IPV4 = re.compile(r"(?<!\d)(?<!\d\.)(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\.?\d)")
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){1,4}(?![\w])|(?<!\d)1[3-9]\d{9}(?!\d)")


def _is_phone(match: re.Match) -> bool:
    s = match.group(0)
    digits = sum(c.isdigit() for c in s)
    # A phone number has 7-15 digits and a sign of being one: +country code, (area), or separators
    # in a phone-like layout; plain runs like "2019 2020" or "3.14" stay untouched.
    return 7 <= digits <= 15 and (s.startswith("+") or "(" in s or len(re.findall(r"[\s.-]", s)) >= 2 or s.isdigit())


@dataclass
class PIIMasker(DocFilter):
    """Replace emails, IPv4 addresses and phone numbers with placeholders (never drops)."""

    name: ClassVar[str] = "pii"
    rewrites: ClassVar[bool] = True
    email: str | None = "<EMAIL>"
    ip: str | None = "<IP>"
    phone: str | None = "<PHONE>"

    def apply(self, text: str) -> tuple[str | None, str]:
        if self.email is not None:
            text = _EMAIL.sub(self.email, text)
        if self.ip is not None:
            text = _IPV4.sub(self.ip, text)
        if self.phone is not None:
            text = _PHONE.sub(lambda m: self.phone if _is_phone(m) else m.group(0), text)
        return None, text


FILTERS: dict[str, type[DocFilter]] = {
    f.name: f for f in (GopherQuality, GopherRepetition, C4Quality, FineWebQuality, LanguageFilter, PIIMasker)
}


def build_filter(name: str, params: dict[str, Any] | None = None) -> DocFilter:
    """Instantiate filter `name` with threshold overrides, checking names, types and ranges."""
    if name not in FILTERS:
        raise UserError(f"unknown filter '{name}'.{closest(name, FILTERS)} Known: {', '.join(FILTERS)}")
    cls = FILTERS[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    params = dict(params or {})
    for key, value in params.items():
        if key not in fields:
            raise UserError(f"filter '{name}' has no setting '{key}'.{closest(key, fields)} Settings: {', '.join(fields)}")
        default = fields[key].default if fields[key].default is not dataclasses.MISSING else fields[key].default_factory()
        _check_value(name, key, value, default)
        if isinstance(default, tuple):
            params[key] = tuple(value)
    return cls(**params)


def _check_value(filter_name: str, key: str, value: Any, default: Any) -> None:
    where = f"filter '{filter_name}' setting '{key}'"
    if value is None:
        return
    if isinstance(default, bool) or isinstance(value, bool):
        if not isinstance(value, bool) or not isinstance(default, bool):
            raise UserError(f"{where} must be {type(default).__name__}, got {value!r}")
    elif isinstance(default, (int, float)) or default is None:
        if not isinstance(value, (int, float)) or value < 0:
            raise UserError(f"{where} must be a non-negative number (or null to disable), got {value!r}")
        if ("ratio" in key or "frac" in key or "thr" in key or "score" in key) and value > 1:
            raise UserError(f"{where} is a fraction and must lie in [0, 1], got {value!r}")
    elif isinstance(default, dict):
        if not isinstance(value, dict) or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in value.values()):
            raise UserError(f"{where} must map n to a fraction in [0, 1], got {value!r}")
    elif isinstance(default, (tuple, list)) and not isinstance(value, (list, tuple)):
        raise UserError(f"{where} must be a list, got {value!r}")
    elif isinstance(default, str) and not isinstance(value, str):
        raise UserError(f"{where} must be a string, got {value!r}")
