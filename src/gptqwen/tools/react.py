"""ReAct over the same tools: Thought / Action / Action Input / Observation, in the prompt style of Qwen's
ReAct examples (Qwen-Agent): the tools are described in the user turn, the model writes one
Thought/Action/Action Input at a time and generation stops at "Observation:"; we run the action, write the
observation into the same assistant turn and let the model continue, until it writes "Final Answer:".

    from gptqwen.tools import react
    res = react.run(engine, [{"role": "user", "content": "What is 4821 * 37?"}], toolbox)
    res.content        # the final answer; res.messages[-1]["react"] holds the whole Thought/Action trace
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from gptqwen.infer.sampling import SamplingParams
from gptqwen.tools.agent import AgentEvent, AgentResult, result_of
from gptqwen.tools.registry import Toolbox

TOOL_DESC = ("{name}: Call this tool to interact with the {name} API. What is the {name} API useful for? "
             "{description} Parameters: {parameters} Format the arguments as a JSON object.")
PROMPT = """Answer the following questions as best you can. You have access to the following tools:

{tool_descs}

Use the following format:

Question: the input question you must answer
Thought: you should always think about what to do
Action: the action to take, should be one of [{tool_names}]
Action Input: the input to the action
Observation: the result of the action
... (this Thought/Action/Action Input/Observation can be repeated zero or more times)
Thought: I now know the final answer
Final Answer: the final answer to the original input question

Begin!

Question: {query}"""
_ACTION = re.compile(r"Action:\s*(.*?)\s*\nAction Input:\s*(.*)", re.DOTALL)


def build_prompt(toolbox: Toolbox, query: str) -> str:
    descs = [TOOL_DESC.format(name=t.name, description=t.description,
                              parameters=json.dumps(t.parameters.get("properties", {}), ensure_ascii=False))
             for t in toolbox.tools.values()]  # fmt: skip
    return PROMPT.format(tool_descs="\n\n".join(descs), tool_names=",".join(toolbox.tools), query=query)


def parse_action(text: str) -> tuple[str, str] | None:
    """(action, action input) of the last Action in `text`, or None."""
    found = None
    for m in _ACTION.finditer(text):
        found = m
    if found is None:
        return None
    return found.group(1).strip(), found.group(2).split("\nObservation:")[0].strip()


def _arguments(toolbox: Toolbox, name: str, raw: str) -> str | dict:
    """Action Input as JSON arguments; a bare value is given to a tool's only parameter."""
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw.strip().strip("`").strip()
    if isinstance(value, dict):
        return value
    props = list(toolbox.tools[name].parameters.get("properties", {})) if name in toolbox else []
    return {props[0]: value if isinstance(value, str) else json.dumps(value)} if len(props) == 1 else raw


def stream(engine, messages: list[dict], toolbox: Toolbox, max_steps: int = 8,
           params: SamplingParams | None = None) -> Iterator[AgentEvent]:
    """Run ReAct on the last user message (earlier turns are kept as history); events as in `agent.stream`."""
    tok = engine.tokenizer
    last = max(i for i, m in enumerate(messages) if m.get("role") == "user")
    query = {"role": "user", "content": build_prompt(toolbox, messages[last]["content"])}
    prompt = tok.apply_chat_template([*messages[:last], query], add_generation_prompt=True, enable_thinking=False,
                                     tokenize=True)  # fmt: skip
    params = (params or SamplingParams()).replace(stop=(*(params.stop if params else ()), "Observation:"))
    text, res = "", AgentResult(content="")
    for step in range(1, max_steps + 1):
        res.steps, gen = step, ""
        for piece in engine.stream(list(prompt) + tok.encode(text), params):
            gen += piece
            yield AgentEvent("content", piece)
        text += gen
        if "Final Answer:" in gen:
            res.content = gen.split("Final Answer:", 1)[1].strip()
            break
        action = parse_action(gen)
        if action is None:  # neither an action nor a final answer: the text is the answer
            res.content = gen.strip()
            break
        name, raw = action
        call = {"id": f"react_{step}", "type": "function", "function": {"name": name, "arguments": raw}}
        yield AgentEvent("tool_call", call=call)
        out, ok = toolbox.call(name, _arguments(toolbox, name, raw))
        res.tool_calls.append({"name": name, "arguments": raw, "result": out, "ok": ok})
        yield AgentEvent("tool_result", out, call=call)
        observation = f"\nObservation: {out}\nThought:"
        text = text.rstrip() + observation
        yield AgentEvent("content", observation)
    else:
        res.finish_reason = "max_steps"
    res.messages = [{"role": "assistant", "content": res.content, "react": text}]
    yield AgentEvent("done", result=res)


def run(engine, messages: list[dict], toolbox: Toolbox, **kwargs) -> AgentResult:
    return result_of(stream(engine, messages, toolbox, **kwargs))
