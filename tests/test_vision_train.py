"""The `vl` trainer: the encoder stage trains the encoder only (through a readout), the projector stage the
projector only (encoder and decoder weights unchanged), the decoder stage the projector and decoder (ViT frozen),
the last stage everything from the previous weights; the text-only baseline skips the encoder and projector
stages; held-out grading runs."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("PIL.Image")

from gptqwen.errors import UserError  # noqa: E402
from gptqwen.finetune.vl import build_model, correct, run_vl  # noqa: E402
from gptqwen.loading import from_pretrained  # noqa: E402
from gptqwen.train.recipe import load_recipe  # noqa: E402
from gptqwen.vision import VisionLanguageModel  # noqa: E402

SMALL = ["vl.tasks=[colour,chart]", "vl.train_items=8", "vl.eval_items=0", "train.batch_size=4", "train.log_interval=1",
         "train.ckpt_interval=0", "train.tensorboard=false", "train.threads=1"]


def _recipe(*extra: str):
    return load_recipe("qwen-vl-tiny", [*SMALL, *extra], trainer="vl")


def _overrides_for_stages(recipe, steps: int) -> None:
    for spec in recipe.stages:
        spec.setdefault("train", {})["max_steps"] = steps
    recipe.raw["stages"] = recipe.stages


@pytest.mark.parametrize("preset", ["qwen-vl-tiny", "qwen-vl-tiny-resampler"])
def test_stages_encoder_projector_decoder_then_everything(tmp_path, preset):
    """The encoder stage moves only the encoder (the decoder is frozen and unused), the projector stage only the
    projector, the decoder stage the projector and the decoder (the ViT frozen), the last stage everything."""
    recipe = _recipe(f"vl.preset={preset}", f"vl.token_targets={preset == 'qwen-vl-tiny'}")
    _overrides_for_stages(recipe, 2)
    assert [s["name"] for s in recipe.stages] == ["encoder", "projector", "decoder", "all"]
    before = build_model(recipe.stage(0), torch.device("cpu"))[0].state_dict()
    summary = run_vl(recipe, tmp_path, quiet=True)

    def weights(stage):
        return VisionLanguageModel.attach(from_pretrained(str(tmp_path / stage)), tmp_path / stage).state_dict()

    def moved(a, b):
        return {k for k in a if not torch.equal(a[k], b[k])}

    encoder, stage1, decoder, stage2 = (weights(s) for s in ("encoder", "projector", "decoder", "all"))
    changed = moved(before, encoder)
    assert changed and all(k.startswith("visual.") for k in changed)
    assert any(k.startswith("visual.blocks.") for k in changed) and any(k.startswith("visual.merger.") for k in changed)
    changed = moved(encoder, stage1)
    assert changed and all(k.startswith("visual.merger.") for k in changed)
    assert {k for k in encoder if k.startswith("visual.merger.") and k.endswith("weight")} <= changed
    changed = moved(stage1, decoder)
    assert any(k.startswith("decoder.blocks.") for k in changed) and any(k.startswith("visual.merger.") for k in changed)
    assert not any(k.startswith("visual.") and not k.startswith("visual.merger.") for k in changed)
    changed = moved(decoder, stage2)
    assert any(k.startswith("decoder.blocks.") for k in changed) and any(k.startswith("visual.blocks.") for k in changed)
    assert set(summary["stages"]) == {"encoder", "projector", "decoder", "all"}
    assert summary["stages"]["projector"]["trainable_params"] < summary["stages"]["decoder"]["trainable_params"] \
        < summary["stages"]["all"]["trainable_params"]
    assert json.loads((tmp_path / "all" / "vl.json").read_text())["steps"] == 2


def test_readout_shapes_and_loss():
    """One head per distinct question: all of an image's feature rows in, that task's training answers out."""
    from gptqwen.finetune.vl import Readout
    from gptqwen.vision import preprocess, vlm_config
    from gptqwen.vision.data import make_split

    vision = vlm_config("qwen-vl-tiny")[1]
    items = make_split(["colour", "word", "position"], 6, 0)
    readout = Readout(items, vision, 16)
    assert len(readout.heads) == len({it.question for it in items})
    for it in items:
        head = readout.heads[readout.index[it.question]]
        assert head.in_features == preprocess(it.image, vision).n_tokens * 16
        assert head.out_features == len({x.answer for x in items if x.task == it.task})
    images = [preprocess(it.image, vision) for it in items]
    feats = torch.zeros(sum(im.n_tokens for im in images), 16)
    for h in readout.heads:  # zero weights: uniform logits, so the loss is the mean log of each task's answer count
        torch.nn.init.zeros_(h.weight), torch.nn.init.zeros_(h.bias)
    expected = sum(math.log(len(readout.labels[it.task])) for it in items) / len(items)
    assert readout.loss(feats, images, items).item() == pytest.approx(expected, rel=1e-6)


def test_text_baseline_then_a_vlm_from_its_decoder_then_the_cli(tmp_path, capsys):
    """The demo's flow: the text-only baseline (projector stage skipped, graded), a VLM starting from its decoder
    and tokenizer, and `gptqwen vl eval` / `vl params` on the results."""
    from gptqwen.cli import main

    recipe = _recipe("vl.text_only=true", "vl.eval_items=3")
    _overrides_for_stages(recipe, 1)
    summary = run_vl(recipe, tmp_path / "text", quiet=True)
    assert not (tmp_path / "text" / "projector").exists() and summary["text_only"]
    assert {t: r["n"] for t, r in summary["heldout"]["tasks"].items()} == {"colour": 3, "chart": 3}
    recipe = _recipe(f"vl.decoder={tmp_path / 'text' / 'all'}")
    _overrides_for_stages(recipe, 1)
    run_vl(recipe, tmp_path / "vlm", quiet=True)
    text = from_pretrained(str(tmp_path / "text" / "all")).state_dict()
    stage1 = from_pretrained(str(tmp_path / "vlm" / "projector")).state_dict()
    assert all(torch.equal(text[k], stage1[k]) for k in text)  # the decoder came from the baseline, frozen in stage 1
    png = tmp_path / "sheet.png"
    assert main(["vl", "eval", "--model", str(tmp_path / "vlm" / "all"), "--tasks", "colour,chart", "--items", "1",
                 "--train-items", "8", "--examples", str(png), "--json"]) == 0  # fmt: skip
    assert set(json.loads(capsys.readouterr().out)["tasks"]) == {"colour", "chart"} and png.stat().st_size > 1000
    assert main(["vl", "params", "qwen2.5-vl-7b", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["qwen2.5-vl-7b"]["total"] == 8_292_166_656


def test_grading_rules():
    assert correct("chart", "52", "50") and correct("chart", " 48.", "50") and not correct("chart", "53", "50")
    assert not correct("chart", "fifty", "50") and correct("colour", "Red", "red") and not correct("count", "2", "3")
    # line and page: the words in order, however spaced or broken into lines
    assert correct("page", "apple tiger\npaper\n paper", "apple tiger\npaper\npaper") and correct("line", "Cat  dog", "cat dog")
    assert not correct("line", "cat", "cat dog") and not correct("page", "dog cat", "cat\ndog")


def test_reading_tasks_readout_slots_and_a_stage_on_them(tmp_path):
    """line and page: the readout predicts each word's place (slots x the task's words, not whole answers), the answer
    budget covers several words, and a short run trains and grades them; an unknown task is refused."""
    from gptqwen.finetune.vl import Readout
    from gptqwen.vision import preprocess, vlm_config
    from gptqwen.vision.data import READING, WORDS, make_split

    vision = vlm_config("qwen-vl-tiny")[1]
    items = make_split(["line", "page", "colour"], 8, 0)
    assert all(set(it.answer.split()) <= set(WORDS) for it in items if it.task in READING)
    assert all(it.answer.count("\n") == 2 for it in items if it.task == "page")
    readout = Readout(items, vision, 16)
    assert readout.n_slots == {"line": max(len(it.answer.split()) for it in items if it.task == "line"),
                               "page": max(len(it.answer.split()) for it in items if it.task == "page"), "colour": 1}
    for it in items:
        head = readout.heads[readout.index[it.question]]
        assert head.out_features == readout.n_slots[it.task] * len(readout.labels[it.task])
    images = [preprocess(it.image, vision) for it in items]
    feats = torch.zeros(sum(im.n_tokens for im in images), 16)
    for h in readout.heads:  # uniform logits: every slot costs the log of its task's word count
        torch.nn.init.zeros_(h.weight), torch.nn.init.zeros_(h.bias)
    expected = sum(math.log(len(readout.labels[it.task])) for it in items) / len(items)
    assert readout.loss(feats, images, items).item() == pytest.approx(expected, rel=1e-6)
    recipe = load_recipe("qwen-vl-tiny", [*SMALL, "vl.tasks=[line,page]", "vl.task_weights={}", "vl.eval_items=2"],
                         trainer="vl")  # fmt: skip
    _overrides_for_stages(recipe, 1)
    summary = run_vl(recipe, tmp_path / "vlm", quiet=True)
    assert {t: r["n"] for t, r in summary["heldout"]["tasks"].items()} == {"line": 2, "page": 2}
    assert all(0 <= r["wer"] and 0 <= r["cer"] for r in summary["heldout"]["tasks"].values())  # edits / reference
    from gptqwen.data.pdf import edit_distance

    assert edit_distance(["cat", "dog", "sun"], ["cat", "sun"]) == 1 and edit_distance("cat dog", "cat dig") == 1
    with pytest.raises(UserError, match="vl.tasks"):
        load_recipe("qwen-vl-tiny", ["vl.tasks=[colour,lines]"], trainer="vl")
    with pytest.raises(UserError, match="unknown vision task.*'lines'"):  # before any image is drawn
        make_split(["colour", "lines"], 1)


def test_stop_and_resume_matches_an_uninterrupted_run(tmp_path):
    recipe = _recipe()
    _overrides_for_stages(recipe, 2)
    run_vl(recipe, tmp_path / "whole", quiet=True)
    assert "out" not in run_vl(recipe, tmp_path / "split", quiet=True, stop_at=1)  # stops inside stage 1
    run_vl(recipe, tmp_path / "split", quiet=True, resume=True)
    whole = from_pretrained(str(tmp_path / "whole" / "all")).state_dict()
    split = from_pretrained(str(tmp_path / "split" / "all")).state_dict()
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    assert (tmp_path / "whole/all/vision.safetensors").read_bytes() == (tmp_path / "split/all/vision.safetensors").read_bytes()


def test_decoder_stage_keeps_the_vit_and_moves_projector_and_decoder(tmp_path):
    """vl.train=decoder: the ViT before the projector stays bit-identical (a pretrained encoder keeps its
    features); the projector and the decoder learn."""
    recipe = _recipe("vl.train=decoder", "train.max_steps=2")
    recipe.stages = []
    model = build_model(recipe, torch.device("cpu"))[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.freeze("decoder")
    summary = run_vl(recipe, tmp_path, quiet=True)
    after = VisionLanguageModel.attach(from_pretrained(str(tmp_path)), tmp_path).state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and not any(k.startswith("visual.") and not k.startswith("visual.merger.") for k in moved)
    assert any(k.startswith("visual.merger.") for k in moved) and any(k.startswith("decoder.blocks.") for k in moved)
    assert summary["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    with pytest.raises(UserError, match="vl.train must be one of"):
        model.freeze("vit")
