"""Image input: a ViT encoder + 2x2-merge projector on the project's decoder (Qwen2-VL / Qwen2.5-VL layout), or
Qwen-VL's learnable-query resampler as the projector.

    from gptqwen.vision import VisionLanguageModel, render_with_images, preprocess
    ids, _, images = render_with_images(tok, [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "chart.png"}}, {"type": "text", "text": "Value of B?"}]}], vlm.vision_config)
    logits = vlm(torch.tensor([ids]), images=images).logits

Modules: config (VisionConfig, VLM presets, parameter counts), image (reading, resizing, patches), encoder
(ViT with 2D RoPE, projectors), prompt (content parts -> image tokens), model (the VLM), data (synthetic
images with questions), sheet (example pictures), transcribe (greedy reading without the engine, for the
pdf_extract data step). Training and grading (`gptqwen vl`) live in gptqwen.finetune.vl, above the engine.
"""

from gptqwen.vision.config import VLM_PRESETS, VisionConfig, vlm_config, vlm_num_params
from gptqwen.vision.image import ImageInput, load_image, preprocess
from gptqwen.vision.model import VisionLanguageModel, is_vlm_dir
from gptqwen.vision.prompt import has_images, render_with_images

__all__ = ["VLM_PRESETS", "ImageInput", "VisionConfig", "VisionLanguageModel", "has_images", "is_vlm_dir", "load_image",
           "preprocess", "render_with_images", "vlm_config", "vlm_num_params"]
