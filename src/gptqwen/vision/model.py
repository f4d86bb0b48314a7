"""The vision-language model: the project's decoder with an image encoder in front of its embeddings.

    vlm = VisionLanguageModel.from_preset("qwen-vl-tiny", vocab_size=512, image_pad_id=tok.token_to_id("<|image_pad|>"))
    out = vlm(input_ids, images=[ImageInput, ...], targets=...)     # same outputs as Transformer.forward
    cache = vlm.new_cache(1, 256); vlm(prompt_ids, images=imgs, cache=cache, logits_to_keep=1)   # then ids only
    vlm.save_pretrained(dir); VisionLanguageModel.attach(decoder, dir)   # decoder from gptqwen.loading

The token embeddings of `input_ids` are computed as usual, then the encoder's features replace the rows at
the `<|image_pad|>` positions, in order (all images of a batch, row-major: the first row's images first). The
decoder takes those embeddings through its `inputs_embeds` entry and does everything else (positions, masks,
KV cache, fused loss) exactly as for text, so a prompt with images is prefilled once and decoded token by token.

On disk a VLM folder is an HF decoder checkpoint (config.json + model.safetensors, loadable on its own as a
text model) plus `vision.safetensors` and `vision_config.json` (encoder config + the image-pad id).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from gptqwen.config import Config
from gptqwen.errors import UserError
from gptqwen.model import Transformer
from gptqwen.vision.config import VisionConfig, vlm_config
from gptqwen.vision.encoder import VisionEncoder
from gptqwen.vision.image import ImageInput

VISION_CONFIG, VISION_WEIGHTS = "vision_config.json", "vision.safetensors"
# vl.train -> which parameters (by name) learn in that stage
TRAIN_MODES: dict[str, Callable[[str], bool]] = {
    "encoder": lambda name: name.startswith("visual."),
    "projector": lambda name: name.startswith("visual.merger."),
    "decoder": lambda name: not name.startswith("visual.") or name.startswith("visual.merger."),
    "all": lambda name: True,
}


class VisionLanguageModel(nn.Module):
    """`Transformer` + `VisionEncoder` (its projector maps into the decoder's embedding space)."""

    def __init__(self, decoder: Transformer, vision_config: VisionConfig, image_pad_id: int) -> None:
        super().__init__()
        if vision_config.out_dim != decoder.config.n_embd:
            raise UserError(f"the vision projector writes {vision_config.out_dim} features but the decoder's width is "
                            f"{decoder.config.n_embd}; set the vision out_dim to the decoder's n_embd")  # fmt: skip
        if not 0 <= image_pad_id < decoder.config.vocab_size:
            raise UserError(f"image pad id {image_pad_id} is outside the decoder's vocabulary of {decoder.config.vocab_size}")
        self.decoder = decoder
        self.visual = VisionEncoder(vision_config)
        self.vision_config = vision_config
        self.image_pad_id = image_pad_id

    @property
    def config(self) -> Config:
        return self.decoder.config

    @classmethod
    def from_preset(cls, name: str, image_pad_id: int, **decoder_overrides: Any) -> VisionLanguageModel:
        dec, vis = vlm_config(name, **decoder_overrides)
        return cls(Transformer(dec), vis, image_pad_id)

    # ---- the forward ---------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor, images: list[ImageInput] | None) -> torch.Tensor:
        """Token embeddings with the image features at the image-pad positions."""
        x = self.decoder.wte(input_ids)
        slots = input_ids == self.image_pad_id
        n_slots = int(slots.sum())
        n_feats = sum(im.n_tokens for im in images or [])
        if n_slots != n_feats:
            raise UserError(f"the prompt holds {n_slots} image-pad tokens but its images make {n_feats} features; "
                            "render prompts with gptqwen.vision.prompt.render_with_images")  # fmt: skip
        if not n_feats:
            return x
        feats = self.visual(images).to(x.dtype)
        return x.masked_scatter(slots[..., None], feats)

    def forward(self, input_ids: torch.Tensor, images: list[ImageInput] | None = None, **kwargs: Any):
        """As `Transformer.forward`, with `images` for the image-pad tokens of `input_ids` (none after the prefill)."""
        return self.decoder(input_ids, inputs_embeds=self.embed(input_ids, images), **kwargs)

    def new_cache(self, *args: Any, **kwargs: Any):
        return self.decoder.new_cache(*args, **kwargs)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def freeze(self, train: str) -> None:
        """Which parts learn: "encoder" (the encoder with the projector, decoder frozen: `vl.train=encoder`
        pretrains it through a readout), "projector" (encoder and decoder frozen), "decoder" (the projector and
        the decoder; the ViT before the projector frozen, so a pretrained encoder keeps its features) or "all"."""
        if train not in TRAIN_MODES:
            raise UserError(f"vl.train must be one of {', '.join(TRAIN_MODES)}, not '{train}'")
        for name, p in self.named_parameters():
            p.requires_grad_(TRAIN_MODES[train](name))

    # ---- files ---------------------------------------------------------------------------------
    def vision_files(self) -> dict[str, Callable[[Path], None]]:
        """Writers of the encoder's files (name -> write(path)), to go beside the decoder's checkpoint."""
        weights = {k: v.detach().contiguous().cpu() for k, v in self.visual.state_dict().items()}
        meta = {"vision": self.vision_config.to_dict(), "image_pad_id": self.image_pad_id}
        return {VISION_WEIGHTS: lambda p: p.write_bytes(save(weights)),
                VISION_CONFIG: lambda p: p.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")}

    def save_pretrained(self, path: str | Path) -> None:
        """An HF decoder checkpoint + the encoder (see the module docstring); each file renamed into place."""
        path = Path(path)
        self.decoder.save_pretrained(str(path))
        for name, write in self.vision_files().items():
            tmp = path / f".{name}.tmp"
            write(tmp)
            os.replace(tmp, path / name)

    @classmethod
    def attach(cls, decoder: Transformer, path: str | Path) -> VisionLanguageModel:
        """The VLM saved in folder `path`, around its `decoder` (loaded by `gptqwen.loading`, the one resolver)."""
        path = Path(path)
        if not is_vlm_dir(path):
            raise UserError(f"'{path}' is not a vision-language model folder (no {VISION_CONFIG}); train one with "
                            "'gptqwen vl train', or use a text model without images")  # fmt: skip
        try:
            meta = json.loads((path / VISION_CONFIG).read_text(encoding="utf-8"))
            vlm = cls(decoder, VisionConfig.from_dict(meta["vision"]), int(meta["image_pad_id"]))
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"'{path / VISION_CONFIG}' is malformed ({e}); re-export the model") from None
        try:
            vlm.visual.load_state_dict(load_file(str(path / VISION_WEIGHTS)))
        except (OSError, RuntimeError) as e:
            raise UserError(f"'{path / VISION_WEIGHTS}' does not match {VISION_CONFIG} ({str(e)[:200]})") from None
        ref = decoder.wte.weight  # only the encoder moves: the decoder may hold quantised weights (--quant)
        vlm.visual.to(device=ref.device, dtype=ref.dtype)
        return vlm.eval()


def is_vlm_dir(path: str | Path) -> bool:
    return (Path(path) / VISION_CONFIG).is_file()
