"""Tool use: function calling, ReAct, the sandboxed code interpreter and tool-integrated reasoning.

    registry.py   tools from Python callables (OpenAI schemas from type hints and docstrings), argument checks
    builtin.py    the built-in tools: calculator (exact arithmetic) and python (the sandbox)
    agent.py      the function-calling loop over an `Engine` (events streamed as calls complete)
    react.py      ReAct: Thought / Action / Action Input / Observation over the same tools
    tir.py        tool-integrated reasoning: ```python blocks run as the model writes them
    styles.py     ToolUse: the three styles behind one entry point (what `chat/generate --tools` run)
    sandbox.py    stateful, isolated Python sessions (namespaces, rlimits, seccomp)
    synthetic.py  tool-use SFT traces and the held-out tool-use evaluation

Parsing of `<tool_call>` blocks lives with the chat format (`gptqwen.tokenizer.qwen_format.parse_tool_calls`).
"""
