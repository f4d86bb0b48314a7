"""Diagnostic probes for the tiny VLM (issue 22): why position, chart and word stay at the text-only baseline.
The figures in docs/vision-diagnosis.md come from these commands (1 thread each, one at a time):

    OMP_NUM_THREADS=1 .venv/bin/python docs/vision-probe.py vlm word --steps 300 --decoder runs/demo-vision/text/all
    OMP_NUM_THREADS=1 .venv/bin/python docs/vision-probe.py head word --readout cat --steps 300
    OMP_NUM_THREADS=1 .venv/bin/python docs/vision-probe.py oracle word --where one --steps 150 --decoder runs/demo-vision/text/all

- vlm: one stage of `qwen-vl-tiny` that trains everything on one task (no projector stage), graded on held-out
  items through the Engine as `gptqwen vl train` does; `--vit key=value` changes the tiny encoder preset.
  `--pretrain N` first trains the encoder N steps as `head --readout cat` does (a pretrained encoder).
- head: the tiny ViT + projector alone with a linear classifier over the answers, trained on the labels
  (no decoder): `cat` reads every image token through its own weights (a position-specific readout),
  `mean` / `max` pool the tokens first (rms-normalised, as the decoder normalises what it reads); one classifier
  per distinct question (chart: which letter, position: which two colours), so the answer is a label.
- oracle: the decoder alone, its image-pad positions filled with a fixed random vector per answer — in every
  image token (`all`), or in one random token with zeros elsewhere (`one`) or with a fixed vector per position
  elsewhere (`one-bg`): can the decoder read a clean signal, and can it find one token among the image's?

Session 10 (what the demo's stages do to the encoder; TASK is a comma list or `all`):

    OMP_NUM_THREADS=1 .venv/bin/python docs/vision-probe.py readout all --model runs/demo-vision/vlm/encoder
    OMP_NUM_THREADS=1 .venv/bin/python docs/vision-probe.py frozen word,position --model runs/demo-vision/vlm/all
    OMP_NUM_THREADS=1 .venv/bin/python docs/vision-probe.py stage all --model runs/demo-vision/vlm/encoder \
        --set vl.train=decoder --set train.max_steps=1800

- readout: the encoder stage's own readout (from its last checkpoint, `--run` defaults to the model's parent
  folder) on the encoder of `--model`, held-out accuracy per task (a stage after it moves the projector, so
  there this mixes drift with a new mapping; `frozen` separates them).
- frozen: a new `cat` readout (linear, features z-scored, 60 epochs of 2,500 items per task) fitted on the
  frozen features of `--model`'s encoder: how much of each task its features still hold.
- stage: one stage of `qwen-vl-tiny` from the VLM folder `--model` (`vl.base`) with `--set` overrides, graded.

Session 11 (the per-token targets, vl.token_targets, and what the chart rendering allows):

    OMP_NUM_THREADS=1 .venv/bin/python docs/vision-probe.py tokens chart,position --model runs/demo-vision/vlm/encoder
    OMP_NUM_THREADS=1 .venv/bin/python docs/vision-probe.py chart-oracle chart

- tokens: the encoder stage's per-token heads on `--model`'s encoder, held out (letter, colour, side, and the
  asked bar's value within 5 % read from its column's tokens).
- chart-oracle: a pixel reader (the asked bar's top row -> the value most training charts with that row allow).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from gptqwen.finetune import vl as V
from gptqwen.loading import load_model_and_tokenizer
from gptqwen.train.recipe import load_recipe
from gptqwen.vision import VisionLanguageModel, preprocess
from gptqwen.vision import config as vc
from gptqwen.vision.data import TASKS, make_split
from gptqwen.vision.encoder import VisionEncoder


def vlm(a: argparse.Namespace) -> dict:
    if a.pretrain:  # the encoder (and projector) first learn the task through the `cat` readout, then meet the decoder
        encoder, build = head(a, steps=a.pretrain)["encoder"], V.build_model

        def build_pretrained(recipe, device):
            model, tok = build(recipe, device)
            model.visual.load_state_dict(encoder.state_dict())
            return model, tok

        V.build_model = build_pretrained
    overrides = [f"vl.tasks=[{a.task}]", f"vl.train_items={a.items}", "vl.eval_items=100", f"train.max_steps={a.steps}",
                 "train.threads=1", "train.tensorboard=false"] + ([f"vl.decoder={a.decoder}"] if a.decoder else [])
    recipe = load_recipe("qwen-vl-tiny", overrides, trainer="vl")
    recipe.stages = []  # one stage, everything trains
    s = V.run_vl(recipe, a.out, overwrite=True, quiet=True)
    return {t: d["accuracy"] for t, d in s["heldout"]["tasks"].items()} | {"final_loss": s.get("final_loss")}


def head(a: argparse.Namespace, steps: int = 0) -> dict:
    cfg = vc.vlm_config("qwen-vl-tiny")[1]
    torch.manual_seed(0)
    enc = VisionEncoder(cfg)
    steps = steps or a.steps
    items = make_split([a.task], 32 * steps, 0)
    labels = {x: i for i, x in enumerate(sorted({it.answer for it in items}))}
    questions = {x: i for i, x in enumerate(sorted({it.question for it in items}))}  # a readout per question asked
    n_tok = preprocess(items[0].image, cfg).n_tokens
    lin = torch.nn.Linear(cfg.out_dim * (n_tok if a.readout == "cat" else 1), len(labels) * len(questions))
    opt = torch.optim.AdamW([*enc.parameters(), *lin.parameters()], lr=2e-3, weight_decay=0.0)

    def logits(batch):
        f = enc([preprocess(it.image, cfg) for it in batch]).view(len(batch), n_tok, -1)
        if a.readout == "cat":
            out = lin(f.flatten(1))
        else:
            out = lin(F.rms_norm(f.mean(1) if a.readout == "mean" else f.amax(1), (cfg.out_dim,)))
        q = torch.tensor([questions.get(it.question, 0) for it in batch])
        return out.view(len(batch), len(questions), len(labels))[torch.arange(len(batch)), q]

    for s in range(steps):
        batch = items[32 * s:32 * s + 32]
        loss = F.cross_entropy(logits(batch), torch.tensor([labels[it.answer] for it in batch]))
        loss.backward()
        opt.step()
        opt.zero_grad()
    test = make_split([a.task], 200, 0, split="test")
    with torch.no_grad():
        pred = torch.cat([logits(test[i:i + 50]).argmax(-1) for i in range(0, len(test), 50)])
    hits = (pred == torch.tensor([labels.get(it.answer, -1) for it in test])).float().mean().item()
    return {f"{a.task}_{a.readout}_readout": hits, "encoder": enc}


def oracle(a: argparse.Namespace) -> dict:
    recipe = load_recipe("qwen-vl-tiny", [f"vl.tasks=[{a.task}]"] + ([f"vl.decoder={a.decoder}"] if a.decoder else []),
                         trainer="vl")  # fmt: skip
    torch.manual_seed(0)
    model, tok = V.build_model(recipe, torch.device("cpu"))
    vis, dec = model.vision_config, model.decoder
    items = make_split([a.task], 32 * a.steps, 0)
    labels = {x: i for i, x in enumerate(sorted({it.answer for it in items}))}
    code = torch.randn(len(labels), dec.config.n_embd) * 0.075  # the scale of the untrained projector's output
    background = torch.randn(64, dec.config.n_embd) * 0.075
    batches = V.make_batches([(*V.encode_item(tok, it, vis), it) for it in items], 32, 0, 0, vis)
    opt = torch.optim.AdamW(dec.parameters(), lr=2e-3, weight_decay=0.0)
    losses = []
    for b in batches[:a.steps]:
        rows = []
        for it in b["items"]:
            k = preprocess(it.image, vis).n_tokens
            f = code[labels[it.answer]].expand(k, -1).clone()
            if a.where != "all":  # the others zero, or a fixed vector per position (what the image does not change)
                f = torch.zeros_like(f) if a.where == "one" else background[:k].clone()
                f[torch.randint(k, ())] = code[labels[it.answer]]
            rows.append(f)
        emb = dec.wte(b["ids"]).masked_scatter((b["ids"] == model.image_pad_id)[..., None], torch.cat(rows))
        out = dec(b["ids"], inputs_embeds=emb, targets=b["targets"])
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
    return {"loss_first_25": sum(losses[:25]) / 25, "loss_last_25": sum(losses[-25:]) / 25}


def _tasks(spec: str) -> list[str]:
    return list(TASKS) if spec == "all" else spec.split(",")


def _load(path: str):
    dec, _ = load_model_and_tokenizer(path)
    return VisionLanguageModel.attach(dec, path)


def _features(vlm, items) -> list[torch.Tensor]:
    """Each item's image features, flattened (the `cat` readout's input)."""
    out = []
    with torch.no_grad():
        for s in range(0, len(items), 100):
            images = [preprocess(it.image, vlm.vision_config) for it in items[s:s + 100]]
            out += [f.flatten() for f in vlm.visual(images).split([im.n_tokens for im in images])]
    return out


def readout(a: argparse.Namespace) -> dict:
    vlm, tasks = _load(a.model), list(TASKS)
    items = make_split(tasks, a.items, 0)
    ro = V.Readout(items, vlm.vision_config, vlm.config.n_embd)
    run = a.run or os.path.dirname(os.path.normpath(a.model))
    ckpt = sorted(glob.glob(f"{run}/encoder/ckpt_*"))[-1]
    ro.load_state_dict({k.removeprefix("readout."): v for k, v in load_file(f"{ckpt}/model.safetensors").items()
                        if k.startswith("readout.")})  # fmt: skip
    test = [it for it in make_split(tasks, 200, 0, split="test", exclude=items) if it.task in _tasks(a.task)]
    hits: dict[str, list[bool]] = {}
    for f, it in zip(_features(vlm, test), test):
        guess = ro.labels[it.task][int(ro.heads[ro.index[it.question]](f).argmax())]
        hits.setdefault(it.task, []).append(V.correct(it.task, guess, it.answer))
    return {f"{t}_readout": sum(h) / len(h) for t, h in hits.items()}


def frozen(a: argparse.Namespace) -> dict:
    vlm, res = _load(a.model), {}
    torch.manual_seed(0)
    for task in _tasks(a.task):
        train_items = make_split([task], a.items, 0)
        test = make_split([task], 200, 0, split="test", exclude=train_items)
        x_tr, x_te = torch.stack(_features(vlm, train_items)), torch.stack(_features(vlm, test))
        mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-5
        x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd
        qs, labels = sorted({it.question for it in train_items}), sorted({it.answer for it in train_items})
        q_tr = torch.tensor([qs.index(it.question) for it in train_items])
        y_tr = torch.tensor([labels.index(it.answer) for it in train_items])
        lin = torch.nn.Linear(x_tr.shape[1], len(qs) * len(labels))
        opt = torch.optim.AdamW(lin.parameters(), lr=1e-3, weight_decay=0.05)
        for _ in range(60):
            for b in torch.randperm(len(train_items)).split(100):
                z = lin(x_tr[b]).view(len(b), len(qs), len(labels))[torch.arange(len(b)), q_tr[b]]
                loss = F.cross_entropy(z, y_tr[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            q_te = torch.tensor([qs.index(it.question) if it.question in qs else 0 for it in test])
            pred = lin(x_te).view(len(test), len(qs), len(labels))[torch.arange(len(test)), q_te].argmax(-1)
        res[f"{task}_frozen_readout"] = sum(V.correct(task, labels[int(p)], it.answer) for p, it in zip(pred, test)) / len(test)
        res[f"{task}_train_loss"] = round(loss.item(), 3)
    return res


def stage(a: argparse.Namespace) -> dict:
    overrides = [f"vl.base={a.model}", f"vl.train_items={a.items}", "train.threads=1", "train.tensorboard=false"]
    if a.task != "all":
        overrides.append(f"vl.tasks=[{a.task}]")
    recipe = load_recipe("qwen-vl-tiny", overrides + a.set, trainer="vl")
    recipe.stages = []
    s = V.run_vl(recipe, a.out, overwrite=True, quiet=True)
    return {t: d["accuracy"] for t, d in s["heldout"]["tasks"].items()} | {"final_loss": s.get("final_loss")}


def tokens(a: argparse.Namespace) -> dict:
    """The encoder stage's per-token heads (vl.token_targets) on the encoder of --model, held out: letter and colour
    on every token, side on shape tokens, and the asked bar's value (its column's tokens' mean ordinal count)."""
    vlm, run = _load(a.model), a.run or os.path.dirname(os.path.normpath(a.model))
    heads = V.TokenTargets(vlm.vision_config, vlm.config.n_embd)
    ckpt = sorted(glob.glob(f"{run}/encoder/ckpt_*"))[-1]
    heads.load_state_dict({k.removeprefix("tokens."): v for k, v in load_file(f"{ckpt}/model.safetensors").items()
                           if k.startswith("tokens.")})  # fmt: skip
    test = make_split(_tasks(a.task), 200, 0, split="test", exclude=make_split(_tasks(a.task), a.items, 0))
    hits: dict[str, list[bool]] = {}
    with torch.no_grad():
        for it in test:
            image = preprocess(it.image, vlm.vision_config)
            f, y = vlm.visual([image]), heads.labels(it, image.grid)
            for name, head, t in (("letter", heads.letter, y[0]), ("colour", heads.colour, y[2]), ("side", heads.side, y[3])):
                hits.setdefault(name, []).extend((head(f).argmax(-1) == t)[t >= 0].tolist())
            if "bars" in it.meta:
                asked = y[0] == it.meta["asked"] + 1
                guess = (heads.value(f[asked]) > 0).sum(-1).float().mean().round()
                hits.setdefault("value_within_5pct", []).append(V.correct("chart", str(int(guess)), it.answer))
    return {k: round(sum(h) / len(h), 3) for k, h in hits.items() if h}


def chart_oracle(a: argparse.Namespace) -> dict:
    """A pixel reader: the asked bar's (or point's) top row in its colour, answered with the value within 5 % of
    the most training charts that share that row: what the rendering lets anyone read."""
    import numpy as np

    def top(it):
        _, x0, x1, _ = it.meta["bars"][it.meta["asked"]]
        column = np.asarray(it.image)[:, int(round((x0 + x1) / 2))]
        return it.meta["line"], int(np.argmax(np.all(column == np.array(it.meta["colour"]), axis=-1)))

    train = make_split(["chart"], a.items, 0)
    seen: dict = {}
    for it in train:
        seen.setdefault(top(it), []).append(int(it.answer))
    test = make_split(["chart"], 200, 0, split="test", exclude=train)
    hits = []
    for it in test:
        values = seen.get(top(it), [50])
        guess = max(range(101), key=lambda g: sum(abs(g - v) <= V.CHART_TOLERANCE * v for v in values))
        hits.append(V.correct("chart", str(guess), it.answer))
    return {"chart_oracle": sum(hits) / len(hits)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("probe", choices=["vlm", "head", "oracle", "readout", "frozen", "stage", "tokens", "chart-oracle"])
    p.add_argument("task")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--items", type=int, default=2500)
    p.add_argument("--decoder", help="a text model to start from (the demo's runs/.../text/all)")
    p.add_argument("--out", default="runs/vision-probe")
    p.add_argument("--pretrain", type=int, default=0, help="vlm: first train the encoder N steps through the cat readout")
    p.add_argument("--readout", choices=["cat", "mean", "max"], default="cat")
    p.add_argument("--where", choices=["all", "one", "one-bg"], default="all")
    p.add_argument("--model", help="readout / frozen / stage: a VLM folder (a stage of a vl run)")
    p.add_argument("--run", help="readout: the vl run folder whose encoder/ckpt_* holds the readout")
    p.add_argument("--set", action="append", default=[], help="stage: a recipe override, e.g. vl.train=decoder")
    p.add_argument("--vit", action="append", default=[], help="encoder setting key=value (JSON value), e.g. abs_pos='\"none\"'")
    a = p.parse_args()
    dec, overrides, vit = vc.VLM_PRESETS["qwen-vl-tiny"]
    vit = {**vit, **{k: json.loads(v) for k, v in (s.split("=", 1) for s in a.vit)}}
    vc.VLM_PRESETS["qwen-vl-tiny"] = (dec, overrides, vit)  # a probe-only change of the preset, in this process
    t0, c0 = time.time(), time.process_time()
    probes = {"vlm": vlm, "head": head, "oracle": oracle, "readout": readout, "frozen": frozen, "stage": stage,
              "tokens": tokens, "chart-oracle": chart_oracle}
    res = {k: v for k, v in probes[a.probe](a).items() if k != "encoder"}
    print(json.dumps({"probe": a.probe, "task": a.task, "steps": a.steps, **res, "wall_s": round(time.time() - t0),
                      "cpu_s": round(time.process_time() - c0), "load": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
