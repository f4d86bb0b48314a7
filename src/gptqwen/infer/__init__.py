"""Inference: the `Engine` (batched prefill/decode with a static KV cache), sampling, thinking budget.

    from gptqwen.infer import Engine, SamplingParams
    engine = Engine(model, tokenizer)
    engine.generate(["Hello"], SamplingParams(temperature=0, max_new_tokens=20))[0].text
    engine.chat([{"role": "user", "content": "Hi"}], enable_thinking=True, thinking_budget=64).content
"""

from gptqwen.infer.engine import Engine, Result
from gptqwen.infer.sampling import SamplingParams
from gptqwen.infer.thinking import STOP_THINKING, ChatDelta, ChatResult

__all__ = ["Engine", "SamplingParams", "Result", "ChatResult", "ChatDelta", "STOP_THINKING"]
