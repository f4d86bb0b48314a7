"""Thinking mode end to end: the thinking budget, soft switches, and a user typing `<think>`
(a tiny random model with the real Qwen vocabulary and chat template)."""

from __future__ import annotations

import pytest
import torch

from gptqwen.config import Config
from gptqwen.errors import UserError
from gptqwen.infer import STOP_THINKING, Engine, SamplingParams
from gptqwen.model import Transformer
from gptqwen.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def engine() -> Engine:
    tok = Tokenizer.from_preset("qwen")
    torch.manual_seed(0)
    model = Transformer(Config.from_name("qwen3-tiny", vocab_size=151936, n_layer=2, n_embd=64)).eval()
    return Engine(model, tok)


def _find(seq: list[int], sub: list[int]) -> list[int]:
    return [i for i in range(len(seq) - len(sub) + 1) if seq[i:i + len(sub)] == sub]


@pytest.mark.parametrize("budget", [1, 7])
def test_budget_cuts_reasoning_at_exactly_n_tokens(engine, budget):
    tok = engine.tokenizer
    end = tok.token_to_id("</think>")
    stop_ids = tok.encode(STOP_THINKING, allow_special=True)
    msgs = [{"role": "user", "content": "What is 17 * 23?"}]
    r = engine.chat(msgs, thinking_budget=budget, start_thinking=True,
                    params=SamplingParams(temperature=1.0, seed=3, max_new_tokens=budget + 6))
    assert r.budget_hit and r.thinking_tokens == budget
    starts = _find(r.token_ids, stop_ids)
    assert starts == [budget]  # N model tokens, then the stop text, once
    assert r.token_ids.index(end) == budget + stop_ids.index(end)  # the block closes inside the stop text
    assert tok.decode(r.token_ids).count("Considering the limited time") == 1
    assert r.reasoning_content.endswith("based on the thinking directly now.")
    assert "</think>" not in r.content and r.content
    assert len(r.token_ids) == budget + 6 + len(stop_ids)  # the forced text does not eat the answer's tokens


def test_no_budget_no_stop_text(engine):
    r = engine.chat([{"role": "user", "content": "hi"}], start_thinking=True,
                    params=SamplingParams(temperature=1.0, seed=1, max_new_tokens=12))
    assert not r.budget_hit and r.thinking_tokens == 12 and r.content == ""
    assert "Considering" not in r.reasoning_content


def test_user_typing_think_does_not_open_a_block(engine):
    tok = engine.tokenizer
    think = tok.token_to_id("<think>")
    msgs = [{"role": "user", "content": "<think> I typed a tag </think> on purpose"}]
    prompt = tok.apply_chat_template(msgs, tokenize=True)
    assert think not in prompt and tok.token_to_id("</think>") not in prompt
    assert "<think> I typed a tag </think>" in tok.decode(prompt)
    r = engine.chat(msgs, thinking_budget=1, params=SamplingParams(temperature=0, max_new_tokens=6))
    assert r.thinking_tokens == 0 and not r.budget_hit and r.reasoning_content == ""
    assert think not in r.token_ids[:1]  # the model was not put inside a think block


def test_thinking_off_and_soft_switches(engine):
    tok = engine.tokenizer
    p = SamplingParams(temperature=0, max_new_tokens=4)
    off = engine.chat([{"role": "user", "content": "hi"}], enable_thinking=False, thinking_budget=1,
                      start_thinking=True, params=p)
    assert off.thinking_tokens == 0 and not off.budget_hit
    empty_block = tok.encode("<think>\n\n</think>\n\n", allow_special=True)
    from gptqwen.infer.thinking import build_prompt, soft_switch

    msgs = [{"role": "user", "content": "hi /no_think"}]
    assert soft_switch(msgs) is False
    assert soft_switch(msgs + [{"role": "assistant", "content": "x"}, {"role": "user", "content": "/think ok"}])
    r = engine.chat(msgs, thinking_budget=1, start_thinking=True, params=p)  # the switch beats the default
    assert r.thinking_tokens == 0
    assert build_prompt(engine, msgs, False, None)[-len(empty_block):] == empty_block


def test_bad_budget(engine):
    with pytest.raises(UserError, match="budget"):
        engine.chat([{"role": "user", "content": "hi"}], thinking_budget=0)



def test_streamed_deltas_count_the_models_thinking_tokens(engine):
    from gptqwen.commands.chat import thought_line

    msgs = [{"role": "user", "content": "What is 17 * 23?"}]
    deltas = list(engine.stream_chat(msgs, thinking_budget=3, start_thinking=True,
                                     params=SamplingParams(temperature=1.0, seed=3, max_new_tokens=9)))
    reasoning = [d for d in deltas if d.kind == "reasoning"]
    assert "Considering the limited time" in "".join(d.text for d in reasoning)  # the stop text streams as reasoning
    assert (reasoning[-1].thinking_tokens, reasoning[-1].budget_hit) == (3, True)  # ...but is not counted
    assert [d.thinking_tokens for d in reasoning] == sorted(d.thinking_tokens for d in reasoning)
    done = deltas[-1]
    assert (done.thinking_tokens, done.budget_hit) == (done.result.thinking_tokens, done.result.budget_hit) == (3, True)
    assert thought_line(3, True) == "▸ thought for 3 tokens, budget reached (/show to expand)"
    assert thought_line(12, False) == "▸ thought for 12 tokens (/show to expand)"
