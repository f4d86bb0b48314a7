"""The built-in synthetic data: deterministic by seed, and every answer and label is right."""

import json
import re

from gptqwen.finetune import synthetic as syn


def test_deterministic_by_seed():
    assert syn.reasoning_conversations(50, seed=3) == syn.reasoning_conversations(50, seed=3)
    assert syn.reasoning_conversations(50, seed=3) != syn.reasoning_conversations(50, seed=4)
    assert syn.entailment_examples(50, seed=3) == syn.entailment_examples(50, seed=3)


def test_arithmetic_steps_and_answers_are_correct():
    for p in syn.problems(300, seed=0, kinds=("arithmetic",)):
        expr = p.question.removeprefix("What is ").removesuffix("?")
        assert str(eval(expr)) == p.answer  # noqa: S307 - our own digits and +/- only
        total = int(expr.split()[0])
        for step in p.steps:
            a, op, b, _, c = step.rstrip(".").split()
            assert int(a) == total and int(c) == (total + int(b) if op == "+" else total - int(b))
            total = int(c)
            assert 0 <= total <= 9
        assert 2 <= len(p.steps) <= 3


def test_logic_answers_are_correct():
    for p in syn.problems(300, seed=0, kinds=("logic",)):
        facts = re.findall(r"(\w) is (true|false|the opposite of|the same as)(?: (\w))?\.", p.question)
        value = {}
        for name, rel, other in facts:
            value[name] = rel == "true" if rel in ("true", "false") else value[other] ^ (rel == "the opposite of")
        last = re.search(r"Is (\w) true\?", p.question).group(1)
        assert p.answer == ("yes" if value[last] else "no")


def test_conversations_mix_thinking_and_direct_with_matching_flags():
    # the shares are draws (400 Bernoulli trials each): within 3 standard deviations of what was asked for
    for think_ratio, flag_prob in [(0.25, 0.75), (0.75, 0.25)]:
        convs = syn.reasoning_conversations(400, seed=1, think_ratio=think_ratio, flag_prob=flag_prob)
        thinking = sum("reasoning_content" in c["messages"][1] for c in convs)
        flagged = sum(c["messages"][0]["content"].endswith(("/think", "/no_think")) for c in convs)
        for count, p in [(thinking, think_ratio), (flagged, flag_prob)]:
            assert abs(count - 400 * p) <= 3 * (400 * p * (1 - p)) ** 0.5, (count, p)
    convs = syn.reasoning_conversations(400, seed=1, think_ratio=0.5, flag_prob=0.5)
    for c in convs:
        user, reply = c["messages"]
        think = "reasoning_content" in reply
        assert not user["content"].endswith("/no_think" if think else "/think")
        assert syn.extract_answer(reply["content"]) == c["answer"].lower()
        json.dumps(c)  # plain JSON


def test_entailment_labels_follow_the_premise():
    rows = syn.entailment_examples(600, seed=0)
    assert {r["label"] for r in rows} == set(syn.ENTAILMENT_LABELS)
    for r in rows:
        clauses = r["premise"].rstrip(".").split(" and ")
        hyp = r["hypothesis"].rstrip(".")
        a, verb, b = re.fullmatch(r"(the \w+) (\w+) (the \w+)", hyp).groups()
        if r["label"] == "entailment":
            assert hyp in clauses
        elif r["label"] == "contradiction":
            assert f"{a} {syn._VERBS[verb]} {b}" in clauses
        else:
            assert not any({a, b} == {c.split()[0] + " " + c.split()[1], " ".join(c.split()[3:])} for c in clauses)


def _is_misspelling(new: str, old: str) -> bool:
    """Two adjacent inner letters swapped, nothing else changed."""
    diff = [j for j, (a, b) in enumerate(zip(new, old)) if a != b]
    return (len(new) == len(old) and len(diff) == 2 and diff[1] == diff[0] + 1 and 0 < diff[0] < len(old) - 2
            and new[diff[0]] == old[diff[1]] and new[diff[1]] == old[diff[0]])


def test_typo_entailment_labels_and_splits():
    lines = syn.play_lines()
    assert len(lines) > 10000 and all(7 <= len(w) <= 12 and not w[-1].endswith(":") for w in lines)
    train = syn.typo_entailment_examples(400, seed=1, lines=lines)
    dev = syn.typo_entailment_examples(200, seed=2, split="dev", lines=lines)
    test = syn.typo_entailment_examples(200, seed=2, split="test", lines=lines)
    assert train == syn.typo_entailment_examples(400, seed=1, lines=lines)
    premises = [{r["premise"] for r in rows} for rows in (train, dev, test)]
    assert not premises[0] & premises[1] and not premises[0] & premises[2] and not premises[1] & premises[2]
    vocab = {w for words in lines for w in words}
    for r in train + dev + test:
        old, new = r["premise"].split(), r["hypothesis"].split()
        changed = [(a, b) for a, b in zip(new, old) if a != b]
        assert len(old) == len(new) and len(changed) == 2
        if r["label"] == "entailment":
            assert all(_is_misspelling(a, b) for a, b in changed)
        else:
            assert r["label"] == "contradiction" and all(a in vocab and syn._is_content_word(a) for a, _ in changed)
    assert 0.4 < sum(r["label"] == "entailment" for r in train) / len(train) < 0.6


def test_extract_answer():
    assert syn.extract_answer("<think>\n1 + 2 = 3.\n</think>\n\nThe answer is 3.") == "3"
    assert syn.extract_answer("The answer is yes. Or: the answer is no.") == "no"
    assert syn.extract_answer("no idea") is None


def test_synth_cli(capsys):
    from gptqwen.cli import main

    assert main(["synth", "entailment", "--n", "3", "--seed", "4"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows == syn.entailment_examples(3, 4)
    assert main(["synth", "tokenizer"]) == 2 and "needs --out" in capsys.readouterr().err
