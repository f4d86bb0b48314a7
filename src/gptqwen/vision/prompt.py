"""Conversations with images: OpenAI content parts -> token ids with `<|vision_start|><|image_pad|>…<|vision_end|>`.

    ids, mask, images = render_with_images(tok, messages, vision_config)            # a generation prompt
    ids, mask, images = render_with_images(tok, messages, cfg, training=True)       # + assistant mask for SFT

A message's content may be a list of parts, as in OpenAI's API:
    {"type": "text", "text": "What colour is it?"}
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,..." | "path/to/file.png"}}
    {"type": "image", "image": "path/to/file.png"}                                  (Qwen-VL / transformers style)
Each image becomes `<|vision_start|>`, one `<|image_pad|>` per merged patch (`ImageInput.n_tokens`, set by its
size) and `<|vision_end|>`, all control ids. User text cannot forge them: the chat renderer spells control-token
text from messages as plain text, and the private marker that stands for an image while the chat template runs
is deleted from every string of the conversation first.
"""

from __future__ import annotations

from typing import Any

from gptqwen.errors import UserError
from gptqwen.tokenizer.chat import CTL, LITERAL, TEXT, encode_parts, render_parts
from gptqwen.vision.config import VisionConfig
from gptqwen.vision.image import ImageInput, preprocess

IMAGE_MARK = "\U000f0002"  # stands for one image inside the rendered text; never survives from user data
VISION_START, IMAGE_PAD, VISION_END = "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"


def _scrub(obj: Any) -> Any:
    if isinstance(obj, str):
        return obj.replace(IMAGE_MARK, "")
    if isinstance(obj, dict):
        return {k: _scrub(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_scrub(v) for v in obj]
    return obj


def _image_source(part: dict) -> Any:
    if part.get("type") == "image_url" or "image_url" in part:
        ref = part.get("image_url")
        ref = ref.get("url") if isinstance(ref, dict) else ref
    else:
        ref = part.get("image")
    if ref is None or (isinstance(ref, str) and not ref.strip()):
        raise UserError(f"an image part has no image: {str(part)[:80]}; give image_url.url (a data URL or a file path)")
    return ref


def has_images(messages: Any) -> bool:
    """Whether any message carries an image part."""
    return isinstance(messages, (list, tuple)) and any(
        isinstance(m, dict) and isinstance(m.get("content"), list)
        and any(isinstance(p, dict) and (p.get("type") in ("image", "image_url") or "image_url" in p) for p in m["content"])
        for m in messages)  # fmt: skip


def flatten_content(messages: list[dict]) -> tuple[list[dict], list[Any]]:
    """Messages with string contents (an image part -> IMAGE_MARK) and the image sources in order."""
    if not isinstance(messages, (list, tuple)):
        raise UserError("messages must be a list of {'role': ..., 'content': ...} objects")
    sources: list[Any] = []
    out = []
    for m in messages:
        if not isinstance(m, dict):
            raise UserError("messages must be a list of {'role': ..., 'content': ...} objects")
        content = m.get("content")
        if isinstance(content, list):
            pieces = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" or (isinstance(part, dict) and kind is None and "text" in part):
                    pieces.append(_scrub(str(part.get("text", ""))))
                elif kind in ("image", "image_url") or (isinstance(part, dict) and "image_url" in part):
                    sources.append(_image_source(part))
                    pieces.append(IMAGE_MARK)
                else:
                    raise UserError(f"unknown content part {str(part)[:80]}; use {{'type': 'text', 'text': ...}} or "
                                    "{'type': 'image_url', 'image_url': {'url': ...}}")  # fmt: skip
            m = {**_scrub({k: v for k, v in m.items() if k != "content"}), "content": "".join(pieces)}
        else:
            m = _scrub(m)
        out.append(m)
    return out, sources


def _expand(items: list[tuple[str, str, bool]], images: list[ImageInput]) -> list[tuple[str, str, bool]]:
    """Replace each IMAGE_MARK in the rendered parts by the image's control tokens."""
    out, k = [], 0
    for text, kind, assistant in items:
        if kind not in (TEXT, LITERAL) or IMAGE_MARK not in text:
            out.append((text, kind, assistant))
            continue
        for j, piece in enumerate(text.split(IMAGE_MARK)):
            if j:
                if k >= len(images):
                    raise ValueError("the chat template wrote an image marker twice")
                out += [(VISION_START, CTL, assistant), *[(IMAGE_PAD, CTL, assistant)] * images[k].n_tokens,
                        (VISION_END, CTL, assistant)]  # fmt: skip
                k += 1
            if piece:
                out.append((piece, kind, assistant))
    if k != len(images):
        raise UserError(f"the chat template dropped {len(images) - k} of {len(images)} images (e.g. from a system "
                        "or tool message it does not render); put images in user messages")  # fmt: skip
    return out


def render_with_images(tok, messages: list[dict], cfg: VisionConfig, tools: list | None = None,
                       add_generation_prompt: bool = True, enable_thinking: bool = True, training: bool = False,
                       max_len: int | None = None, images: list[ImageInput] | None = None,
                       ) -> tuple[list[int], list[int], list[ImageInput]]:  # fmt: skip
    """Token ids, assistant mask (training) and encoder inputs of a conversation with images.

    `training=True` renders a whole conversation for SFT (no generation prompt; the mask marks what the model
    learns to write, as `render_for_sft`). `images` may pass already preprocessed images (one per image part).
    `max_len` refuses a conversation whose image tokens leave no room in the context."""
    missing = [t for t in (VISION_START, IMAGE_PAD, VISION_END) if tok.token_to_id(t) is None]
    if missing:
        raise UserError(f"tokenizer '{tok.name}' has no {', '.join(missing)} tokens; images need a Qwen-style "
                        "vocabulary (the qwen preset, or a tokenizer trained with --style qwen)")  # fmt: skip
    flat, sources = flatten_content(messages)
    if images is None:
        images = [preprocess(s, cfg) for s in sources]
    elif len(images) != len(sources):
        raise ValueError(f"{len(images)} images given for {len(sources)} image parts")
    parts = render_parts(tok, flat, tools, add_generation_prompt=add_generation_prompt and not training,
                         enable_thinking=enable_thinking, think_is_prompt=training and not enable_thinking)
    ids, mask = encode_parts(tok, _expand(parts.items, images), split_at_assistant=training)
    if max_len is not None and len(ids) >= max_len:
        n_img = sum(im.n_tokens + 2 for im in images)
        raise UserError(f"{len(images)} image(s) take {n_img} tokens and the conversation {len(ids)} in all, which does "
                        f"not fit the context window of {max_len} tokens; send fewer or smaller images")  # fmt: skip
    return ids, mask, images
