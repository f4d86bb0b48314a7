"""Tool-integrated reasoning (Qwen2.5-Math style): the model writes a ```python block, generation pauses, the
block runs in the sandbox, and its output goes into the text as an ```output block before the model goes on.

    from gptqwen.tools import tir
    from gptqwen.tools.sandbox import Session
    with Session() as py:
        res = tir.run(engine, [{"role": "user", "content": "What is 2**100 mod 7?"}], py)
    res.content     # the whole turn, code and outputs included; res.tool_calls: each block and its output

Generation stops as soon as a python block closes (or at "```output", which a model trained on TIR writes
itself); the output block is appended to the assistant text, and the next round continues that very
turn. Cells share one session, so later blocks see earlier variables. At most `max_rounds` blocks run.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from gptqwen.infer.sampling import SamplingParams
from gptqwen.tools.agent import AgentEvent, AgentResult, result_of
from gptqwen.tools.sandbox import Session

_OPEN = "```python\n"
_BLOCK = re.compile(r"```python\n(.*?)\n?```", re.DOTALL)


def pending_code(text: str) -> tuple[str, int] | None:
    """(code, end offset) of the first closed python block after the last output block, or None."""
    m = _BLOCK.search(text, max(0, text.rfind("```output")))
    return (m.group(1), m.end()) if m else None


def stream(engine, messages: list[dict], session: Session, max_rounds: int = 4,
           params: SamplingParams | None = None, enable_thinking: bool = False) -> Iterator[AgentEvent]:
    tok = engine.tokenizer
    prompt = list(tok.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=enable_thinking,
                                          tokenize=True))  # fmt: skip
    params = (params or SamplingParams()).replace(stop=(*(params.stop if params else ()), "```output"))
    text, res = "", AgentResult(content="")
    for step in range(1, max_rounds + 2):
        res.steps, gen, found = step, "", None
        for piece in engine.stream(prompt + tok.encode(text), params):
            before = len(gen)
            gen += piece
            found = pending_code(text + gen) if step <= max_rounds else None
            if found is not None:  # a block closed: stop generating and run it
                gen = gen[: found[1] - len(text)]
                if len(gen) > before:
                    yield AgentEvent("content", gen[before:])
                break
            yield AgentEvent("content", piece)
        text += gen
        if found is None:
            break
        ran = found[0]
        call = {"id": f"tir_{step}", "type": "function", "function": {"name": "python", "arguments": ran}}
        yield AgentEvent("tool_call", call=call)
        out = session.run(ran)
        shown = out.as_text()
        res.tool_calls.append({"name": "python", "arguments": ran, "result": shown, "ok": out.exit_code == 0})
        block = f"\n```output\n{shown}\n```\n"
        text += block
        yield AgentEvent("tool_result", shown, call=call)
        yield AgentEvent("content", block)
    else:
        res.finish_reason = "max_steps"
    res.content = text.strip()
    res.messages = [{"role": "assistant", "content": res.content}]
    yield AgentEvent("done", result=res)


def run(engine, messages: list[dict], session: Session, **kwargs) -> AgentResult:
    return result_of(stream(engine, messages, session, **kwargs))
