"""Images in: read (file path, `data:` URL, bytes, PIL image), check, resize to a patch multiple, cut into patches.

    from gptqwen.vision.image import load_image, preprocess
    img = load_image("data:image/png;base64,iVBOR...")          # or a path, file:// URL, bytes, PIL.Image
    x = preprocess(img, vision_config)                          # x.patches [N, C*t*p*p], x.grid (rows, cols)
    x.n_tokens                                                  # <|image_pad|> tokens it becomes in the prompt

Sizes follow Qwen2-VL's rule: each side is rounded to a multiple of patch x merge pixels, and the whole image
is scaled (aspect ratio kept) into [min_pixels, max_pixels]. Patches are listed so that every merge_size x
merge_size group is consecutive — the projector merges neighbours by a reshape, and the 2D RoPE positions
(`grid_positions`) are listed in the same order. Pixels are scaled to [0, 1] and normalised with the CLIP
mean and standard deviation, as the Qwen-VL processors do.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gptqwen.errors import UserError, require
from gptqwen.vision.config import VisionConfig

MAX_INPUT_PIXELS = 50_000_000  # refuse to decode anything larger (a decompression bomb, or a mistake)
MAX_INPUT_BYTES = 64 * 2**20
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ImageInput:
    """One image ready for the encoder."""

    patches: torch.Tensor  # [rows * cols, patch_dim], merge groups consecutive
    grid: tuple[int, int]  # patch rows, patch cols
    n_tokens: int  # <|image_pad|> tokens (decoder positions) it fills: VisionConfig.tokens_for(grid)


def _pil():
    return require("PIL.Image", "vision", "reading images")


def _decode(data: bytes, what: str):
    Image = _pil()
    if len(data) > MAX_INPUT_BYTES:
        raise UserError(f"{what} is {len(data) / 2**20:.0f} MiB, over the {MAX_INPUT_BYTES // 2**20} MiB limit; send a smaller image")
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size  # read from the header before any pixel is decoded
        if w * h > MAX_INPUT_PIXELS:
            raise UserError(f"{what} is {w}x{h} pixels, over the limit of {MAX_INPUT_PIXELS:,}; scale it down first")
        img.load()
    except UserError:
        raise
    except Exception as e:  # PIL raises many kinds (UnidentifiedImageError, OSError, DecompressionBombError, ...)
        raise UserError(f"{what} is not a readable image ({type(e).__name__}: {e}); send a PNG, JPEG, GIF or WebP") from None
    return img


def load_image(source: Any):
    """A PIL image (RGB) from a path, `file://` or `data:image/...;base64,` URL, raw bytes or a PIL image."""
    Image = _pil()
    if isinstance(source, Image.Image):
        img = source
    elif isinstance(source, (bytes, bytearray)):
        img = _decode(bytes(source), "the image data")
    elif isinstance(source, (str, Path)):
        s = str(source)
        if s.startswith("data:"):
            header, sep, payload = s.partition(",")
            if not sep or not header[5:].lower().startswith("image/") or ";base64" not in header.lower():
                shown = header[:60] or "data:"
                raise UserError(f"'{shown}' is not an image data URL; expected data:image/<png|jpeg|...>;base64,<data>")
            try:
                data = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                raise UserError("the image data URL holds invalid base64") from None
            img = _decode(data, "the image in the data URL")
        elif s.startswith(("http://", "https://")):
            raise UserError(f"image URLs are not fetched ({s[:60]}); download the image and pass the file or a data URL")
        else:
            path = Path(s[7:] if s.startswith("file://") else s).expanduser()
            if not path.is_file():
                raise UserError(f"image file '{path}' does not exist")
            img = _decode(path.read_bytes(), f"'{path}'")
    else:
        raise UserError(f"an image must be a path, data URL, bytes or PIL image, not {type(source).__name__}")
    if img.mode != "RGB":  # drop alpha onto white, as a viewer shows it
        rgba = img.convert("RGBA")
        img = Image.new("RGB", rgba.size, (255, 255, 255))
        img.paste(rgba, mask=rgba.getchannel("A"))
    return img


def fit_size(height: int, width: int, cfg: VisionConfig) -> tuple[int, int]:
    """The (height, width) an image is resized to: sides multiples of cfg.factor, pixels in [min, max], aspect kept."""
    f = cfg.factor
    if min(height, width) < 1:
        raise UserError(f"image of {width}x{height} pixels is empty")
    if max(height, width) / min(height, width) > 200:
        raise UserError(f"image of {width}x{height} pixels is too elongated (aspect ratio over 200); crop it")
    h, w = max(f, round(height / f) * f), max(f, round(width / f) * f)
    if h * w > cfg.max_pixels:
        scale = math.sqrt(height * width / cfg.max_pixels)
        h, w = max(f, math.floor(height / scale / f) * f), max(f, math.floor(width / scale / f) * f)
    elif h * w < cfg.min_pixels:
        scale = math.sqrt(cfg.min_pixels / (height * width))
        h, w = math.ceil(height * scale / f) * f, math.ceil(width * scale / f) * f
    return h, w


def patchify(pixels: torch.Tensor, cfg: VisionConfig) -> torch.Tensor:
    """[C, H, W] (sides multiples of cfg.factor) -> [rows * cols, C * t * p * p], each merge group consecutive."""
    C, H, W = pixels.shape
    p, m, t = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    gh, gw = H // p, W // p
    x = pixels.reshape(C, gh // m, m, p, gw // m, m, p)
    x = x.permute(1, 4, 2, 5, 0, 3, 6)  # (block row, block col, row in block, col in block, C, p, p)
    x = x.reshape(gh * gw, C, 1, p, p).expand(-1, -1, t, -1, -1)  # a still image fills every frame
    return x.reshape(gh * gw, C * t * p * p)


def grid_positions(grid: tuple[int, int], merge_size: int) -> torch.Tensor:
    """[rows * cols, 2] (row, col) of each patch, in `patchify`'s order."""
    gh, gw = grid
    rows = torch.arange(gh).view(gh // merge_size, merge_size, 1, 1).expand(-1, -1, gw // merge_size, merge_size)
    cols = torch.arange(gw).view(1, 1, gw // merge_size, merge_size).expand(gh // merge_size, merge_size, -1, -1)
    return torch.stack([rows.permute(0, 2, 1, 3).reshape(-1), cols.permute(0, 2, 1, 3).reshape(-1)], dim=1)


def preprocess(image: Any, cfg: VisionConfig) -> ImageInput:
    """Load (if needed), resize and normalise one image into encoder patches."""
    Image = _pil()
    img = load_image(image)
    h, w = fit_size(img.height, img.width, cfg)
    if (h, w) != (img.height, img.width):
        img = img.resize((w, h), Image.Resampling.BICUBIC)
    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(h, w, 3)
    pixels = data.permute(2, 0, 1).float().div_(255)
    pixels = (pixels - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)
    grid = (h // cfg.patch_size, w // cfg.patch_size)
    return ImageInput(patchify(pixels, cfg), grid, cfg.tokens_for(grid))
