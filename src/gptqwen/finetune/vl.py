"""Training and grading a vision-language model on the synthetic image tasks, on the shared training core.

    gptqwen vl train -c qwen-vl-tiny vl.text_only=true --out runs/vl-text   # the decoder alone: a baseline that cannot see
    gptqwen vl train -c qwen-vl-tiny vl.decoder=runs/vl-text/all --out runs/vl   # encoder, projector, decoder, all

    from gptqwen.train.recipe import load_recipe
    run_vl(load_recipe("qwen-vl-tiny", ["vl.train_items=100"], trainer="vl"), "runs/vl")

A recipe's stages run in order, each in `out/<stage>/` and starting from the previous stage's exported model
(Qwen-VL's recipe: first align the projector with encoder and decoder frozen, then train more of it; with
`vl.decoder` the VLM starts from a trained text model, as Qwen-VL starts from Qwen, else from scratch). Every
conversation is one user turn (the image and a question) and one assistant answer; the loss is the
cross-entropy of the answer tokens. With `vl.text_only` the same decoder trains and is graded on the questions
alone: what the data's priors give without seeing anything (a stage that trains only the projector is then
skipped). After the last stage, `vl.eval_items` held-out items per task are answered greedily through the
`Engine` (the same path as chat) and graded: exact answers, chart values within 5 %.

A stage with `vl.train=encoder` pretrains the encoder (with its projector) before it meets the decoder: a `Readout`
maps all of an image's feature rows to the answer of its question, the decoder is frozen and unused, and the readout
is dropped afterwards. Qwen-VL's ViT came pretrained (OpenCLIP); a new tiny encoder and a small decoder trained
together do not find each other (docs/vision-diagnosis.md: word-only, 1,500 steps, 1.5 % of held-out words).
`vl.train=decoder` then trains the projector and the decoder with the ViT frozen, so a full-rate stage cannot wash out
what the encoder stage put into its features (qwen-vl-tiny: encoder, projector, decoder, then a short low-rate `all`).
"""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gptqwen.data.pdf import edit_distance
from gptqwen.errors import UserError
from gptqwen.finetune.common import save_model_dir, write_json
from gptqwen.infer import Engine, SamplingParams
from gptqwen.loading import load_model_and_tokenizer
from gptqwen.model import Transformer
from gptqwen.tokenizer import Tokenizer
from gptqwen.tokenizer.train import train_tokenizer
from gptqwen.train.loop import EpochBatches, Workload, check_run_dir, setup_process, steps_for, train
from gptqwen.train.recipe import Recipe
from gptqwen.vision import VisionLanguageModel, is_vlm_dir, preprocess, render_with_images, vlm_config
from gptqwen.vision.data import BAR_LETTERS, COLOURS, READING, Item, corpus_text, make_split

CHART_TOLERANCE = 0.05


# ---------------------------------------------------------------------------------------------- model and data
def build_model(recipe: Recipe, device: torch.device) -> tuple[torch.nn.Module, Tokenizer]:
    """The model to train (a VLM, or its decoder alone for vl.text_only) and its tokenizer."""
    v = recipe.vl
    if v.base:
        decoder, tok = load_model_and_tokenizer(v.base)
        if tok is None:
            raise UserError(f"'{v.base}' has no tokenizer; pass vl.tokenizer")
        model = VisionLanguageModel.attach(decoder, v.base) if is_vlm_dir(v.base) else decoder
        if not v.text_only and not isinstance(model, VisionLanguageModel):
            raise UserError(f"'{v.base}' is a text model; start a VLM from a preset (vl.preset) or a vl run folder")
        if v.text_only and isinstance(model, VisionLanguageModel):
            model = model.decoder
        return model.to(device), tok
    decoder = tok = None
    if v.decoder:  # start from a trained text model, as Qwen-VL starts from Qwen: only the encoder is new
        decoder, tok = load_model_and_tokenizer(v.decoder)
        if tok is None:
            raise UserError(f"'{v.decoder}' has no tokenizer; pass vl.tokenizer")
    if v.tokenizer:
        tok = Tokenizer.load(v.tokenizer)
    tok = tok or train_tokenizer(corpus_text(v.tasks), 384, style="qwen", show_progress=False)
    pad = tok.token_to_id("<|image_pad|>")
    if pad is None:
        raise UserError("the tokenizer has no <|image_pad|> token; use a Qwen-style tokenizer")
    torch.manual_seed(recipe.train.seed)
    dec_cfg, vis = vlm_config(v.preset, vocab_size=tok.vocab_size)
    decoder = decoder or Transformer(dec_cfg)
    if v.text_only:
        return decoder.to(device), tok
    vlm = VisionLanguageModel(decoder, dataclasses.replace(vis, out_dim=decoder.config.n_embd), pad)
    return vlm.to(device), tok


def encode_item(tok, item: Item, vision, with_answer: bool = True) -> tuple[list[int], list[int]]:
    """Ids and assistant mask of an item's conversation (images become pad tokens; text-only: no image)."""
    msgs = item.messages(with_answer=with_answer, with_image=vision is not None)
    if vision is None:
        if with_answer:
            return tok.render_for_sft(msgs, enable_thinking=False)
        return tok.apply_chat_template(msgs, enable_thinking=False, tokenize=True), []
    ids, mask, _ = render_with_images(tok, msgs, vision, training=with_answer, enable_thinking=False,
                                      images=[_placeholder(item, vision)])  # fmt: skip
    return ids, mask


def _placeholder(item: Item, vision):
    """An ImageInput with the right token count, without building its patches (ids only need the count)."""
    from gptqwen.vision.image import ImageInput, fit_size

    h, w = fit_size(item.image.height, item.image.width, vision)
    grid = (h // vision.patch_size, w // vision.patch_size)
    return ImageInput(torch.empty(0), grid, vision.tokens_for(grid))


def make_batches(examples: list[tuple[list[int], list[int], Item]], batch_size: int, seed: int, pad: int,
                 vision) -> list[dict[str, Any]]:  # fmt: skip
    """Shuffled, right-padded batches: ids, targets (answer tokens only), and the items' images."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    batches = []
    for s in range(0, len(order) - batch_size + 1, batch_size):
        rows = [examples[i] for i in order[s:s + batch_size]]
        T = max(len(ids) for ids, _, _ in rows)
        ids = torch.full((len(rows), T), pad, dtype=torch.long)
        targets = torch.full((len(rows), T), -100, dtype=torch.long)
        for r, (x, m, _) in enumerate(rows):
            ids[r, :len(x)] = torch.tensor(x)
            learn = torch.tensor(m[1:], dtype=torch.bool)
            targets[r, :len(x) - 1] = torch.where(learn, torch.tensor(x[1:]), -100)
        batches.append({"ids": ids, "targets": targets, "items": [it for _, _, it in rows] if vision else [],
                        "tokens": sum(len(x) for x, _, _ in rows)})
    return batches


def _slots(item: Item) -> list[str]:
    """What a readout predicts of an item: its answer, or for line and page each word in reading order."""
    return item.answer.split() if item.task in READING else [item.answer]


class Readout(torch.nn.Module):
    """The encoder-pretraining head: per distinct question, one linear map from an image's feature rows, concatenated
    (so where a feature sits counts: left/right, which letter), to that task's answers in the training items — for
    line and page, to the word in each place of the text (a few slots of the task's words, not whole answers)."""

    def __init__(self, items: list[Item], vision, out_dim: int) -> None:
        super().__init__()
        first: dict[str, Item] = {}
        for it in items:
            first.setdefault(it.question, it)
        questions = sorted(first)
        tasks = {it.task for it in items}
        self.labels = {t: sorted({w for it in items if it.task == t for w in _slots(it)}) for t in tasks}
        self.n_slots = {t: max(len(_slots(it)) for it in items if it.task == t) for t in tasks}
        self.index = {q: i for i, q in enumerate(questions)}
        self.heads = torch.nn.ModuleList(
            torch.nn.Linear(preprocess(first[q].image, vision).n_tokens * out_dim,
                            self.n_slots[first[q].task] * len(self.labels[first[q].task]))
            for q in questions)  # fmt: skip

    def loss(self, feats: torch.Tensor, images: list, items: list[Item]) -> torch.Tensor:
        """Mean cross-entropy of the items' answers (each slot's) from their images' feature rows [sum of n_tokens,
        out_dim]."""
        rows = feats.split([im.n_tokens for im in images])
        losses = []
        for f, it in zip(rows, items):
            labels, words = self.labels[it.task], _slots(it)
            logits = self.heads[self.index[it.question]](f.flatten()).view(self.n_slots[it.task], len(labels))
            target = torch.tensor([labels.index(w) for w in words], device=feats.device)
            losses.append(F.cross_entropy(logits[: len(words)], target))
        loss = torch.stack(losses).mean()
        # every head takes part (zero gradient when its question is not in the batch), so the optimizer keeps state
        # for all of them from the first step and a resumed run equals an uninterrupted one
        return loss + sum(p.sum() for p in self.parameters()) * 0.0


class TokenTargets(torch.nn.Module):
    """The encoder stage's per-token targets (`vl.token_targets`): heads shared by every image token read what lies
    under that token — a chart's bar letter (none, A-D) and value (ordinal: 100 thresholds "value >= t", so a
    near miss costs little where 96 independent classes overfit), a shape's colour (none or one of six) and, in
    position items, that shape's side. Shared heads make a token itself say "C, 57" or "red, left", a form the
    decoder's attention can match to the question's words; the per-question readout lets the slot carry it.
    (Heads for the answer's two digits as well did not help: chart 18.0 % vs 22.5 %, docs/vision-diagnosis.md.)"""

    def __init__(self, vision, out_dim: int) -> None:
        super().__init__()
        if vision.projector != "merge":
            raise UserError("vl.token_targets needs the merge projector (a resampler's tokens have no place in the "
                            "image); pass vl.token_targets=false")
        self.merge = vision.merge_size
        self.letter, self.value = torch.nn.Linear(out_dim, 1 + len(BAR_LETTERS)), torch.nn.Linear(out_dim, 100)
        self.colour, self.side = torch.nn.Linear(out_dim, 1 + len(COLOURS)), torch.nn.Linear(out_dim, 3)

    def labels(self, item: Item, grid: tuple[int, int]) -> torch.Tensor:
        """[4, tokens]: letter, value, colour, side of each merged token in raster order (-100: no target)."""
        rows, cols = grid[0] // self.merge, grid[1] // self.merge
        sx, sy = item.image.width / cols, item.image.height / rows  # image pixels under one token
        out = torch.full((4, rows, cols), -100, dtype=torch.long)
        if "bars" in item.meta:  # every token of a bar's column carries the bar (its top, its label, the space above)
            out[0] = 0
            for c in range(cols):
                overlap = [min((c + 1) * sx, x1) - max(c * sx, x0) for _, x0, x1, _ in item.meta["bars"]]
                best = max(range(len(overlap)), key=overlap.__getitem__)
                if overlap[best] >= sx / 4:
                    out[0, :, c], out[1, :, c] = best + 1, item.meta["bars"][best][3]
        if "shapes" in item.meta:  # the shape covering most of the token, if it covers an eighth of it
            out[2] = 0
            sides = item.meta.get("sides", {})
            for r in range(rows):
                for c in range(cols):
                    area = [max(0.0, min((c + 1) * sx, x + rr) - max(c * sx, x - rr))
                            * max(0.0, min((r + 1) * sy, y + rr) - max(r * sy, y - rr)) for _, _, x, y, rr in item.meta["shapes"]]
                    best = max(range(len(area)), key=area.__getitem__)
                    if area[best] >= sx * sy / 8:
                        colour = item.meta["shapes"][best][1]
                        out[2, r, c] = 1 + list(COLOURS).index(colour)
                        if colour in sides:
                            out[3, r, c] = 1 + (sides[colour] == "right")
        return out.flatten(1)

    def loss(self, feats: torch.Tensor, images: list, items: list[Item]) -> torch.Tensor:
        """Cross-entropy of letter, colour and side, and the value's ordinal loss (summed over the thresholds, a tenth:
        near a cross-entropy's scale once the far thresholds are learnt), over the tokens that have each target."""
        y = torch.cat([self.labels(it, im.grid) for it, im in zip(items, images)], dim=1).to(feats.device)
        has = y[1] >= 0
        total = sum(F.cross_entropy(head(feats), t, ignore_index=-100) for head, t in
                    ((self.letter, y[0]), (self.colour, y[2]), (self.side, y[3])) if (t >= 0).any())  # fmt: skip
        if has.any():
            above = (y[1][has, None] >= torch.arange(1, 101, device=feats.device)).float()
            total = total + F.binary_cross_entropy_with_logits(self.value(feats[has]), above, reduction="sum") / has.sum() / 10
        return total + sum(p.sum() for p in self.parameters()) * 0.0  # every head keeps optimizer state (Readout.loss)


class EncoderPretraining(torch.nn.Module):
    """What `vl.train=encoder` trains (and checkpoints): the VLM's encoder, the readout, and the per-token targets."""

    def __init__(self, visual: torch.nn.Module, readout: Readout, tokens: TokenTargets | None = None) -> None:
        super().__init__()
        self.visual, self.readout, self.tokens = visual, readout, tokens

    def forward(self, images: list, items: list[Item]) -> torch.Tensor:
        feats = self.visual(images)
        loss = self.readout.loss(feats, images, items)
        return loss + self.tokens.loss(feats, images, items) if self.tokens is not None else loss


# ---------------------------------------------------------------------------------------------- training
def run_vl(recipe: Recipe, out: str | Path, resume: bool = False, overwrite: bool = False, quiet: bool = False,
           stop_at: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Run every stage of a vl recipe into `out/<stage>/` (or `out` without stages); returns the last summary."""
    out = Path(out)
    if not recipe.stages:
        return train_stage(recipe, out, resume, overwrite, quiet, stop_at, last=True)
    summaries: dict[str, Any] = {}
    previous = None
    for i, spec in enumerate(recipe.stages):
        sub = recipe.stage(i)
        if previous is not None:
            sub.vl.base = str(previous)
        if sub.vl.text_only and sub.vl.train in ("encoder", "projector"):
            if not quiet:
                print(f"stage {spec['name']}: skipped (vl.text_only has no encoder or projector to train)")
            continue
        last = i == len(recipe.stages) - 1
        stage_dir = out / spec["name"]
        if resume and (stage_dir / "vl.json").is_file() and not last:  # finished earlier: go on from it
            previous = stage_dir
            continue
        summaries[spec["name"]] = train_stage(sub, stage_dir, resume and stage_dir.exists(), overwrite, quiet, stop_at, last)
        if "out" not in summaries[spec["name"]]:  # stopped early
            return summaries[spec["name"]]
        previous = stage_dir
    final = summaries[list(summaries)[-1]]
    return {**final, "stages": {k: {"final_loss": s.get("final_loss"), "steps": s.get("steps"),
                                    "trainable_params": s.get("trainable_params")} for k, s in summaries.items()}}


def train_stage(recipe: Recipe, out: Path, resume: bool, overwrite: bool, quiet: bool, stop_at: int | None,
                last: bool) -> dict[str, Any]:  # fmt: skip
    v, tc = recipe.vl, recipe.train
    check_run_dir(out, resume, overwrite)
    info = setup_process(tc, single="vl train")
    model, tok = build_model(recipe, info.device)
    vision = getattr(model, "vision_config", None)
    if isinstance(model, VisionLanguageModel):
        model.freeze(v.train)
    items = make_split(v.tasks, v.train_items, v.data_seed, weights=v.task_weights)
    examples = [(*encode_item(tok, it, vision), it) for it in items]
    too_long = sum(len(ids) >= model.config.max_seq_len for ids, _, _ in examples)
    if too_long:
        raise UserError(f"{too_long} training conversations do not fit the decoder's context of {model.config.max_seq_len}")
    pad = tok.pad_id if tok.pad_id is not None else 0
    batches = EpochBatches(lambda e: make_batches(examples, tc.batch_size, tc.seed + e, pad, vision))
    trained: torch.nn.Module = model
    if v.train == "encoder":  # the decoder sits out: the encoder learns the answers through a readout
        tokens = TokenTargets(vision, model.config.n_embd) if v.token_targets else None
        trained = EncoderPretraining(model.visual, Readout(items, vision, model.config.n_embd), tokens).to(info.device)
    n_train = sum(p.numel() for p in trained.parameters() if p.requires_grad)

    def loss(fwd: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        extra = {"images": [preprocess(it.image, vision) for it in batch["items"]]} if vision else {}
        if v.train == "encoder":
            value = fwd(extra["images"], batch["items"])
            return value, {"loss": value.detach()}
        out_ = fwd(batch["ids"].to(info.device), targets=batch["targets"].to(info.device), **extra)
        return out_.loss, {"loss": out_.loss.detach()}

    model_config = {"decoder": model.config.to_dict(), **({"vision": vision.to_dict()} if vision else {})}
    work = Workload(
        model=trained, model_config=model_config, steps=steps_for(tc, batches.per_epoch), micro_batches=batches,
        loss=loss, count_tokens=lambda b: b["tokens"],
        order={"vl.train": v.train, "vl.text_only": v.text_only, "vl.tasks": list(v.tasks), "vl.train_items": v.train_items,
               "train.batch_size": tc.batch_size, "train.seed": tc.seed},
        epoch_of=batches.epoch_of,
        describe=f"[bold]{recipe.name}[/]: {'text-only ' if vision is None else ''}{model.config.name}, "
                 f"{n_train / 1e6:.2f}M of {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params train "
                 f"({v.train if vision else 'decoder'}), {len(items)} items, {batches.per_epoch} batches per epoch, ",
    )  # fmt: skip
    summary = train(work, tc, out, recipe, info, resume, overwrite, quiet, stop_at, label="vl")
    summary.update({"steps": work.steps, "trainable_params": n_train, "final_loss": summary.get("loss"),
                    "train_items": len(items), "text_only": vision is None})
    if summary["step"] < work.steps:
        return summary
    model.eval()
    if last and v.eval_items:
        summary["heldout"] = evaluate(model, tok, heldout_items(v), v.max_new_tokens)
    files = model.vision_files() if isinstance(model, VisionLanguageModel) else {}
    save_model_dir(out, getattr(model, "decoder", model), tok, {**files, "vl.json": write_json(summary)})
    summary["out"] = str(out)
    return summary


# ---------------------------------------------------------------------------------------------- grading
def heldout_items(v) -> list[Item]:
    """vl.eval_items test-split items per task, none identical to a training item."""
    # `gptqwen vl eval` passes no weights: it excludes train_items per task (test images equal to a training one are
    # rare: the test stream has its own seed)
    train = make_split(v.tasks, v.train_items, v.data_seed, weights=getattr(v, "task_weights", None))
    return make_split(v.tasks, v.eval_items, v.data_seed, split="test", exclude=train)


def correct(task: str, answer: str, expected: str) -> bool:
    """Exact (case, outer space and how the words are spaced or broken into lines ignored); chart values within 5 % of
    the true value."""
    got = answer.strip().lower().rstrip(".")
    if task == "chart":
        try:
            return abs(float(got) - float(expected)) <= CHART_TOLERANCE * float(expected)
        except ValueError:
            return False
    return got.split() == expected.lower().split()


def answer_items(model: torch.nn.Module, tok, items: list[Item], max_new_tokens: int = 6,
                 batch_size: int = 32) -> list[str]:  # fmt: skip
    """Greedy answers through the Engine (the chat path: images in the prefill, then cached decoding)."""
    engine = Engine(model, tok)
    vision = getattr(model, "vision_config", None)
    answers: list[str] = []
    for s in range(0, len(items), batch_size):
        chunk = items[s:s + batch_size]
        steps = max(max_new_tokens, *(READING.get(it.task, 0) for it in chunk))  # line and page: several words
        params = SamplingParams(max_new_tokens=steps, temperature=0.0)
        prompts = [encode_item(tok, it, vision, with_answer=False)[0] for it in chunk]
        images = [[preprocess(it.image, vision)] if vision else [] for it in chunk]
        rows = engine.make_rows(prompts, params, images=images)
        for _ in engine.run(rows, {}):
            pass
        answers += [r.result({}).text for r in rows]
    return [a.split("</think>")[-1].strip() for a in answers]


def evaluate(model: torch.nn.Module, tok, items: list[Item], max_new_tokens: int = 6) -> dict[str, Any]:
    """Accuracy and its standard error per task (and a few example answers)."""
    answers = answer_items(model, tok, items, max_new_tokens)
    by_task: dict[str, list[bool]] = {}
    for it, a in zip(items, answers):
        by_task.setdefault(it.task, []).append(correct(it.task, a, it.answer))
    tasks = {}
    for task, hits in by_task.items():
        p = sum(hits) / len(hits)
        tasks[task] = {"accuracy": p, "stderr": math.sqrt(p * (1 - p) / len(hits)), "n": len(hits)}
        if task in READING:  # several words: also how many words and characters are wrong (edits / reference)
            pairs = [(a.lower().split(), it.answer.lower().split()) for it, a in zip(items, answers) if it.task == task]
            tasks[task]["wer"] = sum(edit_distance(a, r) for a, r in pairs) / sum(len(r) for _, r in pairs)
            tasks[task]["cer"] = (sum(edit_distance(" ".join(a), " ".join(r)) for a, r in pairs)
                                  / sum(len(" ".join(r)) for _, r in pairs))
    examples = [{"task": it.task, "question": it.question, "answer": it.answer, "model": a}
                for it, a in list(zip(items, answers))[:12]]  # fmt: skip
    return {"tasks": tasks, "examples": examples}

