"""Tool schemas from callables, checked calls, the calculator, and tool-call parsing (parity with the Qwen templates)."""

from __future__ import annotations

import json
from typing import Literal

import pytest

from gptqwen.cli import main
from gptqwen.errors import UserError
from gptqwen.tokenizer import Tokenizer
from gptqwen.tokenizer.chat import parse_assistant
from gptqwen.tokenizer.qwen_format import parse_tool_calls
from gptqwen.tools.builtin import calculator, load_toolbox
from gptqwen.tools.registry import Tool, Toolbox
from gptqwen.tools.synthetic import conversation, grade, problems, tool_traces, training_expressions


def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius", days: int | None = None,
                tags: list[str] = ()) -> dict:  # fmt: skip
    """Current weather of a city.

    Args:
        city: the city's name,
            in English
        unit: temperature unit
        days (int): forecast days

    Returns:
        a dict
    """
    return {"city": city, "unit": unit}


def rest_style(x: float, flag: bool) -> str:
    """Scale a number.

    :param x: the number
    :param bool flag: whether to do it
    """
    return str(x * 2 if flag else x)


def test_schema_from_type_hints_and_docstrings():
    s = Tool.from_function(get_weather).schema()
    fn = s["function"]
    assert s["type"] == "function" and fn["name"] == "get_weather" and fn["description"] == "Current weather of a city."
    props = fn["parameters"]["properties"]
    assert props["city"] == {"type": "string", "description": "the city's name, in English"}
    assert props["unit"] == {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "temperature unit"}
    assert props["days"] == {"type": "integer", "description": "forecast days"}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert fn["parameters"]["required"] == ["city"]
    rest = Tool.from_function(rest_style).schema()["function"]["parameters"]
    assert rest["properties"] == {"x": {"type": "number", "description": "the number"},
                                  "flag": {"type": "boolean", "description": "whether to do it"}}


def test_toolbox_reports_every_bad_call_as_text():
    def broken(n: int) -> int:
        """Fails."""
        return 1 // 0

    box = Toolbox([get_weather, rest_style, broken])
    assert box.call("get_weather", '{"city": "Oslo"}') == ('{"city": "Oslo", "unit": "celsius"}', True)
    assert box.call("rest_style", {"x": 2, "flag": True}) == ("4", True)
    cases = [("get_wether", "{}", "unknown tool 'get_wether'. Did you mean: get_weather"),
             ("get_weather", "{oops", "not valid JSON"), ("get_weather", "[1]", "must be a JSON object"),
             ("get_weather", {}, "missing required argument(s) city"),
             ("get_weather", {"city": "x", "zip": 1}, "unknown argument(s) zip"),
             ("get_weather", {"city": 3}, "must be a string"),
             ("get_weather", {"city": "x", "unit": "kelvin"}, "must be one of ['celsius', 'fahrenheit']"),
             ("rest_style", {"x": True, "flag": True}, "must be a number"),
             ("broken", {"n": 1}, "broken raised ZeroDivisionError")]  # fmt: skip
    for name, args, message in cases:
        out, ok = box.call(name, args)
        assert not ok and out.startswith("Error: ") and message in out, (name, out)
    with pytest.raises(UserError, match="two tools are named"):
        box.add(get_weather)


def test_calculator_is_exact_and_refuses_code():
    assert calculator("4821 * 37") == "178377"
    assert calculator("2 ** 100") == str(2**100)
    assert calculator("(7 + 3) / 4") == "2.5" and calculator("sqrt(16)") == "4" and calculator("-3 % 5") == "2"
    for bad in ("__import__('os')", "x + 1", "9 ** 9 ** 9", "'a' * 3", "1 +"):
        with pytest.raises(ValueError):
            calculator(bad)


def test_load_toolbox_from_names_and_files(tmp_path):
    f = tmp_path / "mytools.py"
    f.write_text("import math\n\ndef area(r: float) -> float:\n    '''Area of a circle.'''\n    return math.pi * r * r\n\n"
                 "def _hidden():\n    pass\n")
    box = load_toolbox(f"calculator,{f}")
    assert list(box.tools) == ["calculator", "area"] and box.call("area", {"r": 1})[0].startswith("3.14")
    with pytest.raises(UserError, match="unknown tool 'calc'"):
        load_toolbox("calc")
    with pytest.raises(UserError, match="does not exist"):
        load_toolbox(str(tmp_path / "none.py"))
    (tmp_path / "bad.py").write_text("raise RuntimeError('no')\n")
    with pytest.raises(UserError, match="could not load tools"):
        load_toolbox(str(tmp_path / "bad.py"))


def test_parse_tool_calls_openai_shape_and_errors():
    text = ('Checking.\n<tool_call>\n{"name": "a", "arguments": {"x": 1, "s": "é"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "b", "arguments": "{\\"y\\": [2]}"}\n</tool_call>\n'
            "<tool_call>\n{broken\n</tool_call>\n<tool_call>\n{\"arguments\": {}}\n</tool_call>\n"
            '<tool_call>\n{"name": "c", "arguments": {"z": tru')  # fmt: skip
    content, calls, errors = parse_tool_calls(text)
    assert [c["function"]["name"] for c in calls] == ["a", "b"]
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in calls)
    assert len({c["id"] for c in calls}) == 2
    assert json.loads(calls[0]["function"]["arguments"]) == {"x": 1, "s": "é"}
    assert calls[1]["function"]["arguments"] == '{"y": [2]}'  # an encoded string is decoded once, then re-encoded
    assert len(errors) == 3 and "invalid JSON" in errors[0] and "no function name" in errors[1]
    assert "not closed" in errors[2]
    assert content.startswith("Checking.") and "{broken" in content  # malformed blocks stay in the content
    unclosed = parse_tool_calls('<tool_call>\n{"name": "d", "arguments": {}}')
    assert unclosed[0] == "" and unclosed[1][0]["function"]["name"] == "d" and unclosed[2] == []
    assert parse_tool_calls("plain text\n") == ("plain text\n", [], [])


@pytest.mark.parametrize("preset", ["qwen3", "qwen2.5"])
def test_parsing_round_trips_what_the_templates_render(preset):
    """The calls a Qwen3 / Qwen2.5 chat template writes into an assistant turn parse back to the same calls."""
    tok = Tokenizer.from_preset(preset)
    calls = [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "北京", "days": 2}}},
             {"type": "function", "function": {"name": "now", "arguments": {}}}]
    for content in ("", "Let me look."):
        msgs = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": content, "tool_calls": calls}]
        text = tok.apply_chat_template(msgs, tools=[Tool.from_function(get_weather).schema()], add_generation_prompt=False)
        turn = text.rsplit("<|im_start|>assistant\n", 1)[1].split("<|im_end|>")[0]
        got_content, got, errors = parse_tool_calls(turn.split("</think>")[-1])
        assert errors == [] and got_content == content
        assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in got] == \
            [(c["function"]["name"], c["function"]["arguments"]) for c in calls]
        assert parse_assistant(turn)["tool_calls"] == calls


def test_tool_traces_render_and_hold_out():
    rows = tool_traces(50, seed=0)
    with_tools = [r for r in rows if "tools" in r]
    assert 10 < len(with_tools) < 40
    r = with_tools[0]
    assert [m["role"] for m in r["messages"]] == ["user", "assistant", "tool", "assistant"]
    expr = r["messages"][1]["tool_calls"][0]["function"]["arguments"]["expression"]
    assert calculator(expr) == r["answer"] == r["messages"][2]["content"]
    assert r["messages"][3]["content"] == f"{expr} = {r['answer']}."
    seen = training_expressions(rows)
    assert len(seen) == 50 and not seen & {p.expression for p in problems(100, seed=1, exclude=seen)}
    p = problems(1, 3)[0]
    assert conversation(p, use_tools=False)["messages"][1]["content"] == f"{p.expression} = {p.answer}."
    assert grade(f"{p.expression} = {p.answer}.", p.answer) and grade(f"The answer is {p.answer}", p.answer)
    assert not grade(f"{p.expression} = 1{p.answer}.", p.answer) and not grade(p.expression, p.answer)
    multi = tool_traces(40, seed=0, tool_share=1.0, turns=3)  # several questions under one tool prompt
    asked = [sum(m["role"] == "user" for m in r["messages"]) for r in multi]
    assert set(asked) == {1, 2, 3} and len(training_expressions(multi)) == sum(asked)
    roles = [m["role"] for m in multi[asked.index(3)]["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant"] * 3


def test_tools_cli(capsys, tmp_path):
    assert main(["tools", "list", "--tools", "calculator", "--json"]) == 0
    [schema] = json.loads(capsys.readouterr().out)
    assert schema["function"]["name"] == "calculator"
    assert main(["tools", "call", "calculator", '{"expression": "12 * 12"}']) == 0
    assert capsys.readouterr().out == "144\n"
    assert main(["tools", "call", "calculator", '{"expression": "x"}']) == 1
    assert main(["tools", "call", "calculator", "{bad"]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_prepare_then_generate_and_chat_with_tools(tmp_path, capsys, monkeypatch):
    """The CLI path end to end on an untrained model: what it says is noise, the plumbing is not."""
    assert main(["tools", "prepare", "--out", str(tmp_path / "x"), "--n", "200", "--vocab-size", "400"]) == 2
    assert "more than the 512-token context" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["tools", "prepare", "--out", str(tmp_path), "--n", "200", "--vocab-size", "400", "--turns", "1"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rows"] == 200 and info["longest_tokens"] < 512
    assert {p.name for p in tmp_path.iterdir()} >= {"traces.jsonl", "tokenizer", "base"}
    base = str(tmp_path / "base")
    assert main(["generate", "--model", base, "--tools", "calculator", "--prompt", "What is 1 + 1?", "--json",
                 "--max-new-tokens", "8", "--temperature", "0", "--max-steps", "2"]) == 0  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"content", "reasoning_content", "messages", "tool_calls", "errors", "steps", "finish_reason"}
    assert 1 <= doc["steps"] <= 2
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("Hi\n"))
    assert main(["chat", "--model", base, "--tools", "calculator", "--agent", "react", "--max-new-tokens", "8"]) == 0
    assert "does not fit the context window" in capsys.readouterr().out  # reported; the session went on to the end
    assert main(["chat", "--model", base, "--agent", "tir", "--tools", "calculator"]) == 2
    assert "needs the python tool" in capsys.readouterr().err
