"""Reading an image with a vision-language model: load a VLM folder, and answer one prompt about one image greedily.

    vlm, tok = load_vlm("runs/qwen-vl-tiny/all")
    transcribe(vlm, tok, pil_image, "What word is written?")      # -> "river"

For callers below the engine (the `pdf_extract` data step): a plain greedy loop over the KV cache — the prefill
carries the image, every later step feeds one token — which is what `Engine.chat` does with temperature 0.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from gptqwen import hf
from gptqwen.errors import UserError
from gptqwen.model import Transformer
from gptqwen.tokenizer import Tokenizer
from gptqwen.vision.model import VisionLanguageModel, is_vlm_dir
from gptqwen.vision.prompt import render_with_images


@functools.lru_cache(maxsize=2)
def load_vlm(path: str) -> tuple[VisionLanguageModel, Tokenizer]:
    """A VLM folder written by `gptqwen vl train` (decoder checkpoint + encoder + tokenizer.json), on the CPU."""
    folder = Path(path).expanduser()
    if not is_vlm_dir(folder) or not (folder / "tokenizer.json").is_file():
        raise UserError(f"'{path}' is not a vision-language model folder with a tokenizer (train one with gptqwen vl train)")
    ckpt = hf.read_checkpoint(folder)
    with torch.device("meta"):
        decoder = Transformer(ckpt.config)
    decoder = hf.fill_model(decoder, ckpt.shapes, ckpt.get_tensor, torch.float32, torch.device("cpu"), ckpt.rules,
                            "checkpoint does not match its config.json")  # fmt: skip
    return VisionLanguageModel.attach(decoder, folder), Tokenizer.from_file(folder / "tokenizer.json")


@torch.inference_mode()
def transcribe(vlm: VisionLanguageModel, tok: Tokenizer, image: Any, prompt: str, max_new_tokens: int = 32) -> str:
    """The model's greedy answer to `prompt` about `image` (thinking off)."""
    msgs = [{"role": "user", "content": [{"type": "text", "text": prompt}, {"type": "image", "image": image}]}]  # vision.data's order
    ids, _, images = render_with_images(tok, msgs, vlm.vision_config, enable_thinking=False,
                                        max_len=vlm.config.max_seq_len)  # fmt: skip
    steps = min(max_new_tokens, vlm.config.max_seq_len - len(ids))
    cache = vlm.new_cache(1, len(ids) + steps)
    logits = vlm(torch.tensor([ids]), images=images, cache=cache, logits_to_keep=1).logits[0, -1]
    out: list[int] = []
    for _ in range(steps):
        token = int(logits.argmax())
        if token in tok.stop_ids:
            break
        out.append(token)
        logits = vlm(torch.tensor([[token]]), cache=cache, logits_to_keep=1).logits[0, -1]
    return tok.decode(out, skip_special=True).split("</think>")[-1].strip()
