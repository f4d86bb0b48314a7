"""The agent loops (function calling, ReAct, TIR) through the real Engine, driven by a scripted model.

`ScriptedModel` is a stand-in for a Transformer whose every generation request writes a given text: each
prefill starts the next script and each step returns a one-hot logit for its next token (then <|im_end|>).
Everything between — chat template, engine, stream_chat, stop strings, parsing, tools — is the real code.
"""

from __future__ import annotations

import json
from collections import deque
from types import SimpleNamespace

import pytest
import torch

from gptqwen.infer import Engine, SamplingParams
from gptqwen.tokenizer import Tokenizer
from gptqwen.tools import agent, react, tir
from gptqwen.tools.builtin import calculator, load_toolbox
from gptqwen.tools.registry import Toolbox
from gptqwen.tools.sandbox import Limits, Session


class _Cache:
    def __init__(self, batch_size: int, max_len: int) -> None:
        self.batch_size, self.max_len, self.length = batch_size, max_len, 0

    def reset(self) -> None:
        self.length = 0


class ScriptedModel(torch.nn.Module):
    def __init__(self, tok: Tokenizer, scripts: list[str]) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.tok, self.scripts = tok, deque(scripts)
        self.config = SimpleNamespace(vocab_size=tok.vocab_size, max_seq_len=4096, eos_token_id=None, name="scripted")
        self.prompts: list[list[int]] = []
        self.todo: deque[int] = deque()

    def new_cache(self, batch_size, max_len, dtype=None, device=None):
        return _Cache(batch_size, max_len)

    def forward(self, ids, position_ids=None, attention_mask=None, cache=None, logits_to_keep=0, **_):
        if cache.length == 0:  # a new request: the next script
            self.prompts.append(ids[0].tolist())
            self.todo = deque(self.tok.encode(self.scripts.popleft(), allow_special=True) if self.scripts else [])
        cache.length += ids.shape[1]
        nxt = self.todo.popleft() if self.todo else self.tok.token_to_id("<|im_end|>")
        logits = torch.full((ids.shape[0], 1, self.tok.vocab_size), -1e9)
        logits[:, :, nxt] = 0.0
        return SimpleNamespace(logits=logits)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_preset("qwen3")


def engine_for(tok, scripts):
    return Engine(ScriptedModel(tok, scripts), tok, native=False)


GREEDY = SamplingParams(temperature=0, max_new_tokens=200)
USER = [{"role": "user", "content": "What is 4821 * 37?"}]


def call(name, args):
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': args})}\n</tool_call>"


def test_function_calling_loop_runs_tools_and_feeds_results_back(tok):
    eng = engine_for(tok, ["<think>\nI need the calculator.\n</think>\n\n" + call("calculator", {"expression": "4821 * 37"})
                           + "\n" + call("calculator", {"expression": "2 + 2"}),
                           "<think>\n\n</think>\n\nThe answer is 178377."])  # fmt: skip
    events = list(agent.stream(eng, USER, load_toolbox("calculator"), params=GREEDY))
    res = events[-1].result
    assert res.content == "The answer is 178377." and res.steps == 2 and res.finish_reason == "stop"
    assert [c["result"] for c in res.tool_calls] == ["178377", "4"]
    first = res.messages[0]
    assert [c["function"]["name"] for c in first["tool_calls"]] == ["calculator", "calculator"]
    assert json.loads(first["tool_calls"][0]["function"]["arguments"]) == {"expression": "4821 * 37"}
    assert [m["role"] for m in res.messages] == ["assistant", "tool", "tool", "assistant"]
    assert res.messages[1]["tool_call_id"] == first["tool_calls"][0]["id"]
    # calls are announced while streaming, with the ids the final messages carry, before their results
    kinds = [e.kind for e in events]
    assert kinds.index("tool_call") < kinds.index("tool_result")
    assert [e.call["id"] for e in events if e.kind == "tool_call"] == [c["id"] for c in first["tool_calls"]]
    assert "".join(e.text for e in events if e.kind == "reasoning").strip() == "I need the calculator."
    # the second prompt holds the rendered tool results, as the Qwen3 template writes them
    second = tok.decode(eng.model.prompts[1])
    assert "<tool_response>\n178377\n</tool_response>\n<tool_response>\n4\n</tool_response>" in second
    assert '"name": "calculator"' in second.split("<|im_start|>system")[1]  # the tool schema in the system turn


def test_bad_calls_go_back_to_the_model_and_the_loop_continues(tok):
    def explode(x: int) -> str:
        """Always fails."""
        raise RuntimeError("boom")

    box = Toolbox([calculator, explode])
    eng = engine_for(tok, [call("nope", {}) + call("explode", {"x": 1}) + call("calculator", {"expr": "1"})
                           + call("explode", {"x": "one"}), "<tool_call>\n{not json\n</tool_call>", "Sorry."])  # fmt: skip
    res = agent.run(eng, USER, box, params=GREEDY)
    results = [c["result"] for c in res.tool_calls]
    assert "unknown tool 'nope'" in results[0]
    assert results[1] == "Error: explode raised RuntimeError: boom"
    assert "unknown argument(s) expr" in results[2] and "must be a integer" in results[3]
    assert not any(c["ok"] for c in res.tool_calls)
    assert res.errors and "invalid JSON" in res.errors[0]
    assert res.messages[-2]["role"] == "tool" and "invalid JSON" in res.messages[-2]["content"]
    assert res.content == "Sorry." and res.steps == 3


def test_engine_chat_with_tools_is_one_turn_and_runs_nothing(tok):
    """Engine.chat(tools=schemas) renders the tools and returns the parsed calls (as transformers/vLLM chat do);
    running them and continuing is agent.run's job."""
    eng = engine_for(tok, [call("calculator", {"expression": "4821 * 37"})])
    res = eng.chat(USER, tools=load_toolbox("calculator").schemas(), params=GREEDY)
    [c] = res.tool_calls
    assert c["function"]["name"] == "calculator" and c["function"]["arguments"] == {"expression": "4821 * 37"}
    assert res.content == "" and len(eng.model.prompts) == 1  # one generation; no tool response fed back


def test_step_limit(tok):
    eng = engine_for(tok, [call("calculator", {"expression": "1+1"})] * 5)
    res = agent.run(eng, USER, load_toolbox("calculator"), params=GREEDY, max_steps=3)
    assert res.finish_reason == "max_steps" and res.steps == 3 and len(res.tool_calls) == 3


def test_react_loop(tok):
    eng = engine_for(tok, ['Thought: use the calculator\nAction: calculator\nAction Input: {"expression": "4821 * 37"}\n'
                           "Observation: made up",
                           " I now know the final answer\nFinal Answer: 178377"])  # fmt: skip
    res = react.run(eng, USER, load_toolbox("calculator"), params=GREEDY)
    assert res.content == "178377" and res.tool_calls[0]["result"] == "178377"
    trace = res.messages[-1]["react"]
    assert "Observation: 178377\nThought: I now know" in trace and "made up" not in trace
    first = tok.decode(eng.model.prompts[0])
    assert "Action: the action to take, should be one of [calculator]" in first and "Question: What is 4821 * 37?" in first


def test_react_bare_action_input_goes_to_the_only_parameter(tok):
    eng = engine_for(tok, ["Action: calculator\nAction Input: 6*7\n", "Final Answer: 42"])
    res = react.run(eng, USER, load_toolbox("calculator"), params=GREEDY)
    assert res.tool_calls[0]["result"] == "42" and res.content == "42"


def test_tir_runs_each_block_and_continues(tok):
    eng = engine_for(tok, ["Let me compute.\n```python\nx = 2 ** 100\nprint(x % 7)\n```\nignored after the block",
                           "So far 2.\n```python\nprint(x % 5)\n```", "The answer is 2."])  # fmt: skip
    with Session(Limits(timeout_s=10)) as py:
        res = tir.run(eng, USER, py, params=GREEDY)
    assert [c["result"] for c in res.tool_calls] == ["2", "1"]  # x persisted between blocks
    assert "```output\n2\n```" in res.content and "ignored" not in res.content
    assert res.content.endswith("The answer is 2.")
    assert tok.decode(eng.model.prompts[2]).endswith("```python\nprint(x % 5)\n```\n```output\n1\n```\n")
