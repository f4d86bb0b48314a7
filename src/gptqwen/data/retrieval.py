"""Retrieval documents for long-context training: a pass key (or several named ones) hidden in filler text, then
the question and its answer, in exactly the wording of the passkey / needle evaluations (`gptqwen.eval.long_context`).

Long-context stages mix such documents into their data so that a model learns to fetch a fact from far back before
it is asked to do so beyond its training length. Four `gptqwen data prepare` / recipe sources, deterministic by seed:

  * ``synthetic:retrieval[:N]``       N pass-key documents of up to ~256 tokens (0..7 filler sentence groups);
  * ``synthetic:retrieval-far[:N]``   the same lengths with the key-to-question distance uniform (far keys as
                                      common as near ones; recipe qwen3-long's settle stage);
  * ``synthetic:retrieval-long[:N]``  N pass-key documents of up to ~1024 tokens (0..41 groups), for a long stage,
                                      the key-to-question distance uniform (far keys as common as near ones);
  * ``synthetic:needles[:N]``         N multi-key needle documents of up to ~256 tokens: four named keys, then every
                                      name asked for in random order (the needle eval's wording).

Measured while writing recipe qwen3-long (2 layers, batch 4 x 256, lr 1e-2): on pass-key documents alone the
answer digits left the copying plateau (ln 10 nats) after ~600 steps; with half the documents multi-key needles
they had not left it after 700 (matching a name before the key is a longer pattern than the one-key copy).

    from gptqwen.data.retrieval import retrieval_documents
    docs = list(retrieval_documents(1000, max_units=7, seed=0))
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from functools import partial

from gptqwen.errors import UserError

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the important information there.\n")
FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NAMES = ("apple", "river", "falcon", "copper", "meadow", "lantern", "violet", "harbor", "tiger", "quartz")
PASSKEY_QUESTION = " What is the pass key? The pass key is"


def passkey_needle(key: str) -> str:
    return f"The pass key is {key}. Remember it. {key} is the pass key."


def needle_question(name: str) -> str:
    return f" What is the pass key for {name}? The pass key for {name} is"


def random_key(rng: random.Random, digits: int = 5) -> str:
    return str(rng.randrange(10 ** (digits - 1), 10 ** digits))


def _filler(rng: random.Random, sentences: int) -> list[str]:
    """`sentences` filler sentences in the eval's order, from a random one on."""
    pool = FILLER.split(".")[:-1]
    first = rng.randrange(len(pool))
    return [pool[(first + i) % len(pool)] + "." for i in range(sentences)]


def passkey_document(rng: random.Random, max_units: int, digits: int = 5, far_keys: bool = False) -> str:
    """The intro, 0..max_units filler sentence groups' worth of sentences with the needle after a random one, the
    question, the answer. Whole sentences, not whole groups: the distance from the key to the question then takes
    every value, so a model cannot get by with a head per distance and has to match the key by content."""
    key = random_key(rng, digits)
    most = max_units * FILLER.count(".")
    if far_keys:  # sentences between the key and the question uniform: far keys as common as near ones
        after = rng.randint(0, most)
        filler = _filler(rng, after + rng.randint(0, most - after))
        at = len(filler) - after
    else:  # a uniform length with the key anywhere: mostly near keys, where the copy is learned first
        filler = _filler(rng, rng.randint(0, most))
        at = rng.randint(0, len(filler))
    return (INTRO + "".join(filler[:at]) + " " + passkey_needle(key) + "".join(filler[at:]) + PASSKEY_QUESTION
            + f" {key}.")


def needle_document(rng: random.Random, max_units: int, keys: int = 4, digits: int = 5) -> str:
    """The intro, `keys` named pass keys spread over filler sentences, then every name asked for in a random order,
    each question followed by its answer."""
    names = rng.sample(NAMES, keys)
    values = [random_key(rng, digits) for _ in names]
    # the questions take about as much room as `keys` filler groups
    filler = _filler(rng, rng.randint(0, max(0, max_units - keys) * FILLER.count(".")))
    cuts = sorted(rng.randint(0, len(filler)) for _ in names)
    text, done = INTRO, 0
    for cut, name, value in zip(cuts, names, values):
        text += "".join(filler[done:cut]) + f" The pass key for {name} is {value}."
        done = cut
    text += "".join(filler[done:])
    for i in rng.sample(range(keys), keys):
        text += needle_question(names[i]) + f" {values[i]}."
    return text


def retrieval_documents(n: int, max_units: int = 7, seed: int = 0, needle_fraction: float = 0.0,
                        keys: int = 4, far_keys: bool = False) -> Iterator[str]:
    """`n` documents: passkey documents (`far_keys`: see `passkey_document`) and, a `needle_fraction` of them,
    multi-key needle documents."""
    if n < 1 or max_units < 0 or not 0 <= needle_fraction <= 1 or not 1 <= keys <= len(NAMES):
        raise UserError(f"retrieval documents: need n >= 1, max_units >= 0, needle_fraction in [0, 1] and "
                        f"1 <= keys <= {len(NAMES)}; got n={n}, max_units={max_units}, "
                        f"needle_fraction={needle_fraction}, keys={keys}")
    rng = random.Random(seed)
    for _ in range(n):
        if rng.random() < needle_fraction:
            yield needle_document(rng, max_units, keys)
        else:
            yield passkey_document(rng, max_units, far_keys=far_keys)


short_documents = partial(retrieval_documents, max_units=7)  # synthetic:retrieval (up to ~256 tokens)
far_documents = partial(retrieval_documents, max_units=7, seed=3, far_keys=True)  # synthetic:retrieval-far (~256)
long_documents = partial(retrieval_documents, max_units=41, seed=1, far_keys=True)  # synthetic:retrieval-long (~1024)
needle_documents = partial(retrieval_documents, max_units=7, seed=2, needle_fraction=1.0)  # synthetic:needles
