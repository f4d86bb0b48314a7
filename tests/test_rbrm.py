"""The rubric judge with a reference answer (Qwen3's general-RL reward): batched judging equals one text at a time,
`{reference}` comes from the prompt row, the judge's training data renders the same text it is judged on."""

import pytest
import torch

import _align_fixtures
from gptqwen.align import rbrm
from gptqwen.align.post import reference_judge_examples
from gptqwen.errors import UserError
from gptqwen.train.recipe import load_recipe

tok, model_dir = _align_fixtures.tok, _align_fixtures.model_dir  # shared fixtures

REPLIES = ["The answer is 6.", "THE ANSWER IS 4.", "The answer is no. done", "yes", "", "The answer is 12 and more words"]


def test_batched_judge_equals_one_at_a_time(model_dir):
    rubric = rbrm.Rubric.load("reference-answer", str(model_dir))
    prompts = [f"What is {i} + 2?" for i in range(len(REPLIES))]
    refs = ["6", "4", "no", "no", "3", "12"]
    one = rubric.class_probs(prompts, REPLIES, refs, batch_size=1)
    batched = rubric.class_probs(prompts, REPLIES, refs, batch_size=4)  # rows of different lengths, left-padded
    assert one.shape == (len(REPLIES), 2)
    torch.testing.assert_close(batched, one, atol=1e-5, rtol=1e-4)


def test_reference_comes_from_the_row(model_dir):
    rubric = rbrm.Rubric.load("reference-answer", str(model_dir))
    rows = [{"prompt": [{"role": "user", "content": "What is 2 + 2?"}], "answer": "4"}]
    got = rubric.rewards(rows * 2, ["The answer is 4.", "<think>\n2 + 2 = 5.\n</think>\n\nThe answer is 5."])
    probs = rubric.class_probs(["What is 2 + 2?"] * 2, ["The answer is 4.", "The answer is 5."], ["4", "4"])
    assert got == pytest.approx(probs[:, 0].tolist(), abs=1e-6)  # A = 1, B = 0; the reply, not its thinking
    with pytest.raises(UserError, match="no 'answer'"):
        rubric.rewards([{"prompt": "What is 2 + 2?"}], ["The answer is 4."])


def test_judge_training_data_renders_the_judged_text(tok):
    recipe = load_recipe("qwen3-post", ["model.base=x"], trainer="post")
    examples = reference_judge_examples(recipe.stage(3).post, 40, 3)
    labels = [e["label"] for e in examples]
    assert 10 < labels.count("A") < 30 and set(labels) == {"A", "B"}
    for e in examples:  # A exactly when the reply carries the reference answer
        said = e["response"].lower().replace("the answer is", "").replace("done", "").strip(" .")
        assert (said == e["reference"]) == (e["label"] == "A")
    rubric = rbrm.Rubric.load("reference-answer", with_judge=False)
    conv = rbrm.judge_conversations(rubric, examples[:1])[0]["messages"]
    e = examples[0]
    assert conv[0]["content"] == rubric.template.format(prompt=e["prompt"], response=e["response"], reference=e["reference"])
    assert conv[1] == {"role": "assistant", "content": e["label"]}
    with pytest.raises(UserError, match="no class 'C'"):
        rbrm.judge_conversations(rubric, [{**e, "label": "C"}])
