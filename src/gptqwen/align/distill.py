"""Strong-to-weak distillation (Qwen3 report, section 4.5): `gptqwen distill --teacher BIG --from SMALL --out DIR`.

    from gptqwen.align.distill import run_distill
    run_distill(load_recipe("distill-qwen3", ["model.base=small/", "distill.teacher=big/"], trainer="distill"), "d/")

Two phases, run as the recipe's stages (each from the previous one's weights, each in its own folder and resumable;
`align.post.run_stages`):

- **off-policy** (`distill.phase: off_policy`): the teacher answers the prompts (greedily, or sampled at
  `distill.teacher_temperature`), `distill.think_ratio` of them in thinking mode and the rest in non-thinking
  mode; with `distill.verify` only answers that match a row's "answer" are kept. The answers (reasoning in
  `reasoning_content`) become chat SFT data (`teacher_data.jsonl`), and the student is fine-tuned on them by the
  SFT trainer (`finetune.sft_train.run_sft`, the recipe's `sft` section). With `distill.dense_kl = w > 0` the
  loss also uses the teacher's whole next-token distribution over those sequences (computed on the fly, the
  teacher's forward in the same process): (1 − w)·CE on the teacher's tokens + w·KL(teacher ‖ student) per
  assistant token (`dense_loss`; `distill.dense_temperature` softens both distributions, Hinton-style).
- **on-policy** (`distill.phase: on_policy`): each step the student samples `distill.prompts_per_step` completions with the
  engine (modes mixed as above, the seed derived from the step so a resume draws the same samples), the teacher
  scores the same tokens, and the loss is the per-token KL between the two next-token distributions over the
  completion positions, averaged over tokens: reverse KL(student ‖ teacher) by default (`distill.kl: reverse`,
  mode seeking, the on-policy distillation of Agarwal et al. / Qwen3), forward KL(teacher ‖ student) selectable.

Teacher and student may be any two loadable models (run dirs, HF dirs, .gguf, presets); their tokenizers must be the
same vocabulary, checked before any model is loaded (`check_same_vocabulary`). Logits are compared over the
tokenizer's ids (an embedding padded beyond them is ignored).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from gptqwen.align import prefs
from gptqwen.align.grpo import load_prompt_rows, sample
from gptqwen.align.post import run_stages, sub_recipe
from gptqwen.align.rewards import answers_match, extract_final_answer
from gptqwen.errors import UserError
from gptqwen.finetune.common import export_run, load_base
from gptqwen.finetune.sft import IGNORE
from gptqwen.finetune.sft_train import batch_loss, model_inputs, run_sft, with_aux
from gptqwen.infer import Engine, SamplingParams
from gptqwen.infer.thinking import chat_many
from gptqwen.loading import load_tokenizer
from gptqwen.tokenizer import Tokenizer
from gptqwen.train.loop import Workload, check_run_dir, setup_process, train
from gptqwen.train.recipe import Recipe
from gptqwen.utils import atomic_write


def check_same_vocabulary(teacher: Tokenizer, student: Tokenizer, teacher_name: str = "the teacher",
                          student_name: str = "the student") -> None:  # fmt: skip
    """A UserError naming the first difference unless the two tokenizers map every id to the same bytes."""
    if teacher.vocab_size != student.vocab_size:
        raise UserError(f"{teacher_name} and {student_name} have different vocabularies ({teacher.vocab_size} vs "
                        f"{student.vocab_size} tokens); distillation compares next-token distributions id by id, "
                        "so both must use the same tokenizer")  # fmt: skip
    for i in range(teacher.vocab_size):
        if teacher.token_bytes(i) != student.token_bytes(i):
            raise UserError(f"{teacher_name} and {student_name} have different vocabularies (token {i} is "
                            f"{teacher.token_bytes(i)!r} vs {student.token_bytes(i)!r}); use one tokenizer for both")  # fmt: skip


def token_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
             direction: str = "reverse") -> torch.Tensor:  # fmt: skip
    """Mean over masked positions of the per-token KL between next-token distributions ([B, T, V] logits,
    [B, T] mask): reverse = Σ_v p_s (log p_s − log p_t), forward = Σ_v p_t (log p_t − log p_s)."""
    ls, lt = F.log_softmax(student_logits.float(), -1), F.log_softmax(teacher_logits.float(), -1)
    per_token = (ls.exp() * (ls - lt)).sum(-1) if direction == "reverse" else (lt.exp() * (lt - ls)).sum(-1)
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def dense_loss(teacher: torch.nn.Module, weight: float, vocab: int, temperature: float = 1.0):
    """`run_sft`'s `loss_of` for dense off-policy distillation: (1 − weight)·CE on the assistant tokens +
    weight·forward KL(teacher ‖ student) at the same positions (the teacher reads the same packed batch); at a
    `temperature` T ≠ 1 the KL is between both distributions softened by T, times T² (Hinton et al.)."""

    def loss_of(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        kw = model_inputs(batch)
        out = model(batch["input_ids"], targets=batch["targets"], **kw)
        with torch.no_grad():
            teacher_logits = teacher(batch["input_ids"], **kw).logits[..., :vocab]
        t = temperature
        kl = token_kl(out.logits[..., :vocab] / t, teacher_logits / t, batch["targets"] != IGNORE, "forward") * t * t
        return with_aux(out, (1 - weight) * out.loss + weight * kl, kl=kl.detach())

    return loss_of


def _modes(n: int, ratio: float, seed: int) -> list[bool]:
    rng = random.Random(seed)
    return [rng.random() < ratio for _ in range(n)]


def _messages(row: dict) -> list[dict]:
    p = row["prompt"]
    return [{"role": "user", "content": p}] if isinstance(p, str) else list(p)


def teacher_conversations(teacher, tok, rows: list[dict], think_ratio: float, seed: int, max_new_tokens: int,
                          verify: bool, temperature: float = 0.0) -> tuple[list[dict], dict]:  # fmt: skip
    """The teacher's answers to `rows` (greedy, or sampled at `temperature`; modes mixed) as SFT conversations,
    and counts (kept, wrong, ...)."""
    modes = _modes(len(rows), think_ratio, seed)
    params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens)
    # a batch decodes until its longest turn ends, so turns of one mode and similar prompts go together (thinking
    # turns are several times longer); the answers come back in the rows' order
    length = [len(r.get("_prompt_ids") or str(r["prompt"])) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: (modes[i], length[i]))
    torch.manual_seed(seed)  # unseeded rows draw their generators' seeds from torch's RNG
    done = chat_many(Engine(teacher.eval(), tok), [_messages(rows[i]) for i in order], [modes[i] for i in order],
                     params=params)  # fmt: skip
    turns = [r for _, r in sorted(zip(order, done), key=lambda p: p[0])]
    convs, wrong, empty = [], 0, 0
    for row, thinking, r in zip(rows, modes, turns):
        if not r.content or (thinking and r.finish_reason == "length"):
            empty += 1  # no answer inside the length limit
            continue
        if verify and row.get("answer") is not None:
            got = extract_final_answer(r.content)
            if got is None or not answers_match(got, str(row["answer"])):
                wrong += 1
                continue
        reply = {"role": "assistant", "content": r.content}
        if thinking and r.reasoning_content:
            reply["reasoning_content"] = r.reasoning_content
        convs.append({"messages": [*_messages(row), reply]})
    return convs, {"teacher_rows": len(rows), "kept": len(convs), "wrong": wrong, "unfinished": empty,
                   "thinking": sum(1 for c in convs if "reasoning_content" in c["messages"][-1])}


def _tokenizers(recipe: Recipe) -> tuple[Tokenizer, Tokenizer]:
    d, m = recipe.distill, recipe.model
    if not d.teacher:
        raise UserError("no teacher; pass --teacher (a run dir, HF dir, .gguf or preset) or set distill.teacher")
    if not m.base:
        raise UserError("no student to start from; pass --from (a run dir, HF dir, .gguf or preset) or set model.base")
    student = Tokenizer.load(m.tokenizer) if m.tokenizer else load_tokenizer(m.base)
    teacher = load_tokenizer(d.teacher)
    if student is None or teacher is None:
        which = "the student (--from; or pass --tokenizer)" if student is None else "the teacher"
        raise UserError(f"{which} comes without a tokenizer; distillation needs the tokenizer of both models")
    return teacher, student


def _prompt_rows(recipe: Recipe, tok: Tokenizer) -> list[dict]:
    d = recipe.distill
    return load_prompt_rows(tok, d.prompts, d.synthetic, d.synthetic_kinds, d.synthetic_seed)


def run_off_policy(recipe: Recipe, out: Path, resume: bool = False, overwrite: bool = False, quiet: bool = False,
                   stop_at: int | None = None) -> dict:  # fmt: skip
    """Phase 1: teacher answers (both modes) → `out/teacher_data.jsonl` → SFT of the student into `out`."""
    d, tc = recipe.distill, recipe.train
    teacher_tok, tok = _tokenizers(recipe)
    check_same_vocabulary(teacher_tok, tok)
    check_run_dir(out, resume, overwrite)
    rows = _prompt_rows(recipe, tok)
    data = out / "teacher_data.jsonl"
    teacher = None
    if not (resume and data.is_file()):  # greedy answers are the same each time; a resume reuses them
        teacher, _ = load_base(d.teacher, None, tc.device, tc.seed)
        cpu = time.process_time()
        convs, stats = teacher_conversations(teacher, tok, rows, d.think_ratio, tc.seed, d.teacher_max_new_tokens,
                                             d.verify, d.teacher_temperature)  # fmt: skip
        stats["cpu_s"] = round(time.process_time() - cpu, 2)  # the teacher's answers: part of the stage's cpu_s
        if not convs:
            raise UserError(f"the teacher answered none of {len(rows)} prompts (correctly, within "
                            f"distill.teacher_max_new_tokens={d.teacher_max_new_tokens}); check the teacher")  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(out / "teacher_data.json") as f:  # first: where the data is, its counts are too
            json.dump(stats, f, indent=2)
        with atomic_write(data) as f:
            f.writelines(json.dumps(c, ensure_ascii=False) + "\n" for c in convs)
    stats = json.loads((out / "teacher_data.json").read_text())
    sft = sub_recipe(recipe, "sft", sft={"data": str(data), "synthetic": None})
    loss_of = batch_loss
    if d.dense_kl > 0:
        teacher = teacher or load_base(d.teacher, None, tc.device, tc.seed)[0]
        loss_of = dense_loss(teacher.eval().requires_grad_(False), d.dense_kl, tok.vocab_size, d.dense_temperature)
    del teacher  # only a dense loss keeps the teacher through the SFT
    summary = run_sft(sft, out, resume=resume, overwrite=overwrite, quiet=quiet, stop_at=stop_at, loss_of=loss_of)
    return {**summary, "teacher_data": stats, "dense_kl": d.dense_kl, "dense_temperature": d.dense_temperature}


def on_policy_workload(recipe: Recipe, student, teacher, tok: Tokenizer, rows: list[dict], device) -> Workload:
    """The training-core `Workload` of on-policy distillation (samples of step k drawn with seed (seed, k))."""
    d, tc = recipe.distill, recipe.train
    vocab = tok.vocab_size
    pad = tok.pad_id if tok.pad_id is not None else 0
    per_epoch = max(1, len(rows) // d.prompts_per_step)
    prompts = {mode: [tok.apply_chat_template(_messages(r), add_generation_prompt=True, enable_thinking=mode,
                                              tokenize=True) for r in rows] for mode in (True, False)}  # fmt: skip
    params = SamplingParams(max_new_tokens=d.max_new_tokens, temperature=d.temperature)
    with torch.no_grad():  # build the RoPE tables outside inference mode: the engine's would be unusable for training
        student(torch.zeros(1, 1, dtype=torch.long, device=device))

    def micro_batches(step: int, info) -> list[dict]:
        epoch, i = divmod(step, per_epoch)
        idx = prefs.epoch_order(len(rows), d.prompts_per_step, tc.seed + epoch)[i]
        modes = _modes(len(idx), d.think_ratio, tc.seed * 1_000_003 + step)
        ids = [list(prompts[m][j]) for j, m in zip(idx, modes)]
        torch.manual_seed(tc.seed * 1_000_003 + step)
        completions, _ = sample(student, tok, ids, params)
        # an embedding padded beyond the tokenizer may sample an id the teacher cannot read: cut the sample there
        completions = [c[:next((k for k, t in enumerate(c) if t >= vocab), len(c))] for c in completions]
        return [prefs.collate_sequences(list(zip(ids, completions)), pad)]

    def loss(fwd, batch: dict):
        ids, mask = batch["input_ids"].to(device), batch["completion_mask"].to(device)
        with torch.no_grad():
            teacher_logits = teacher(ids).logits[..., :vocab]
        kl = token_kl(fwd(ids).logits[..., :vocab], teacher_logits, mask, d.kl)
        return kl, {"loss": kl.detach(), "completion_len": mask.sum(-1).float().mean()}

    return Workload(
        model=student, model_config=student.config.to_dict(), steps=tc.max_steps, micro_batches=micro_batches,
        loss=loss, count_tokens=lambda b: int(b["completion_mask"].sum()),
        order={"train.seed": tc.seed, "distill.prompts_per_step": d.prompts_per_step, "distill.kl": d.kl},
        describe=f"[bold]{recipe.name}[/]: on-policy distillation ({d.kl} KL) of {student.config.name} from "
                 f"{d.teacher}, {len(rows)} prompts, ",
    )  # fmt: skip


def run_on_policy(recipe: Recipe, out: Path, resume: bool = False, overwrite: bool = False, quiet: bool = False,
                  stop_at: int | None = None) -> dict:  # fmt: skip
    """Phase 2: the student samples, the loss is the per-token KL to the teacher on those samples."""
    d, tc = recipe.distill, recipe.train
    if tc.max_steps is None:
        raise UserError("on-policy distillation runs for train.max_steps optimizer steps; set --max-steps")
    teacher_tok, tok = _tokenizers(recipe)
    check_same_vocabulary(teacher_tok, tok)
    check_run_dir(out, resume, overwrite)
    info = setup_process(tc, single="distill")
    torch.manual_seed(tc.seed)
    student, tok = load_base(recipe.model.base, recipe.model.tokenizer, info.device, tc.seed)
    teacher, _ = load_base(d.teacher, None, info.device, tc.seed)
    teacher.eval().requires_grad_(False)
    rows = _prompt_rows(recipe, tok)
    if len(rows) < d.prompts_per_step:
        raise UserError(f"{len(rows)} prompts are fewer than distill.prompts_per_step={d.prompts_per_step}")
    work = on_policy_workload(recipe, student, teacher, tok, rows, info.device)
    summary = train(work, tc, out, recipe, info, resume, overwrite, quiet, stop_at, label="distill")
    summary.update({"prompts": len(rows), "steps": work.steps, "kl": d.kl, "teacher": d.teacher})
    if summary["step"] < work.steps:
        return summary
    return export_run(out, student, tok, summary, "distill.json", lora=False)


def run_distill(recipe: Recipe, out: str | Path, resume: bool = False, overwrite: bool = False, quiet: bool = False,
                stop_at: int | None = None) -> dict:  # fmt: skip
    """Distil `distill.teacher` into `model.base`: the recipe's stages (or its one phase) into `out`."""
    teacher_tok, tok = _tokenizers(recipe)  # before any work: both tokenizers exist and agree
    check_same_vocabulary(teacher_tok, tok)

    def one(stage: Recipe, folder: Path, **kw) -> dict:
        return (run_off_policy if stage.distill.phase == "off_policy" else run_on_policy)(stage, folder, **kw)

    return run_stages(recipe, Path(out), one, resume, overwrite, quiet, stop_at)

