"""Online GRPO on the training core: `gptqwen grpo --from MODEL --out DIR` with a recipe naming prompts and rewards.

    from gptqwen.align.grpo import run_grpo
    run_grpo(load_recipe("grpo-qwen3", ["model.base=sft/", "grpo.synthetic=2000"], trainer="grpo"), "grpo/")

Each generation batch: `grpo.prompts_per_step` prompts, G = `grpo.num_generations` completions each,
sampled by the inference engine (`gptqwen.infer.Engine`: batched, KV cache, the C decode step on CPU;
prompts rendered with the chat template in thinking or non-thinking mode); the reward functions score
them (`align.rewards`), advantages are group-normalised, and the policy takes `grpo.num_iterations`
optimizer steps on the clipped objective (`align.losses.grpo_loss`). The per-token log-probs of the
sampled completions are recomputed by a forward pass of the policy — at sampling time for the ratio's
denominator when μ > 1, by the reference (the starting weights; with LoRA the adapters switched off) when
β > 0. Qwen2.5's query selection (`grpo.query_selection`) drops the prompts whose G rewards are all equal
and trains on the rest in order of reward variance, highest first.

Logged each step: loss, reward (weighted sum, mean over completions) and each reward function's mean,
reward_std, the share of zero-variance groups, completion length, clip ratios and KL. The current
generation batch is kept in the run folder (`rollout.pt`), so `--resume` continues exactly, also in the
middle of a batch's μ steps. At the end: `reward.png` (the reward curve), an HF checkpoint, `grpo.json`.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import torch

from gptqwen.align import prefs
from gptqwen.align.losses import group_advantages, group_variance, grpo_loss
from gptqwen.align.rbrm import rubric_reward
from gptqwen.align.reward import load_reward_model
from gptqwen.align.rewards import BUILTIN, RewardFn, RewardSet, require_math_verify
from gptqwen.errors import UserError
from gptqwen.finetune import lora as lora_mod
from gptqwen.finetune.common import export_run, load_base
from gptqwen.finetune.evaluate import heldout_problems, reasoning_accuracy
from gptqwen.finetune.synthetic import GENERATORS, problems
from gptqwen.infer import Engine, SamplingParams
from gptqwen.train.loop import Workload, check_run_dir, setup_process, train
from gptqwen.train.metrics import MetricsLog
from gptqwen.train.recipe import Recipe
from gptqwen.utils import atomic_write, read_jsonl, save_figure


def load_prompt_rows(tokenizer, prompts: str | None, synthetic: int | None, kinds: list | tuple = ("arithmetic",),
                     seed: int = 0, enable_thinking: bool = True) -> list[dict]:  # fmt: skip
    """Prompt rows from a JSONL file or `synthetic` built-in problems, each with `_prompt_ids` and `_where`.

    A text prompt is used as it is; a list of chat messages is rendered as a generation prompt."""
    if (prompts is None) == (synthetic is None):
        raise UserError("pass exactly one of --prompts FILE or --synthetic N")
    if synthetic is not None:
        unknown = [k for k in kinds if k not in GENERATORS]
        if unknown or not kinds:
            raise UserError(f"unknown synthetic kinds {unknown}; choose from {', '.join(GENERATORS)}")
        rows = [(i + 1, {"prompt": [{"role": "user", "content": p.question}], "answer": p.answer})
                for i, p in enumerate(problems(synthetic, seed, tuple(kinds)))]
        source = "synthetic"
    else:
        rows, source = read_jsonl(prompts, "prompt data"), prompts
    return encode_prompt_rows(tokenizer, rows, source, enable_thinking)


def encode_prompt_rows(tokenizer, rows: list[tuple[int, dict]], source: str, enable_thinking: bool = True) -> list[dict]:
    """`(line, row)` pairs as prompt rows with `_prompt_ids` and `_where` (`source:line`), checked."""
    out = []
    for line, row in rows:
        where = f"{source}:{line}"
        prompt = row.get("prompt")
        if isinstance(prompt, str) and prompt.strip():
            ids = tokenizer.encode(prompt)
        elif isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "role" in m for m in prompt):
            ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, enable_thinking=enable_thinking,
                                                tokenize=True)  # fmt: skip
        else:
            raise UserError(f"{where}: each row needs a 'prompt': non-empty text or a list of chat messages")
        out.append({**row, "_prompt_ids": list(ids), "_where": where})
    return out


@torch.no_grad()
def sample(model: torch.nn.Module, tokenizer, prompt_ids: list[list[int]], params: SamplingParams,
           native: bool = True) -> tuple[list[list[int]], list[str]]:  # fmt: skip
    """Completions of each prompt by the engine: token ids (with the stop token, if one ended it) and texts.

    The engine gets no tokenizer: a model whose embedding has rows beyond the tokenizer's vocabulary may
    sample them; the texts leave them out and the rewards score them like any other completion."""
    stops = tokenizer.stop_ids
    params = params.replace(stop_token_ids=sorted(stops))
    was = model.training
    try:
        results = Engine(model, None, native=native).generate(prompt_ids, params)
    finally:
        model.train(was)
    ids = [list(r.token_ids) for r in results]
    texts = [tokenizer.decode([t for t in (x[:-1] if x and x[-1] in stops else x) if t < tokenizer.vocab_size]) for x in ids]
    return ids, texts


def build_rewards(specs: list[str], weights: list[float] | None = None, device: str | None = None) -> RewardSet:
    """A `RewardSet` from names: math, math-verify, steps, format, code, constraints, rbrm:RUBRIC.yaml,
    model:REWARD_DIR."""
    if not specs:
        raise UserError("no reward functions; set grpo.rewards, e.g. [math] or [math, format]")
    weights = [1.0] * len(specs) if weights is None else [float(w) for w in weights]
    if len(weights) != len(specs):
        raise UserError(f"grpo.reward_weights has {len(weights)} entries for {len(specs)} reward functions")
    fns = []
    for spec in specs:
        kind, _, arg = str(spec).partition(":")
        if kind in BUILTIN and not arg:
            if kind == "math-verify":
                require_math_verify()  # a missing optional package is reported before any work starts
            fns.append(BUILTIN[kind])
        elif kind == "rbrm" and arg:
            fns.append(rubric_reward(arg, device))
        elif kind == "model" and arg:
            fns.append(model_reward(arg, device))
        else:
            raise UserError(f"unknown reward '{spec}'; use math, math-verify, steps, format, code, constraints, "
                            "rbrm:RUBRIC.yaml or model:REWARD_DIR")
    return RewardSet([str(s) for s in specs], fns, weights)


def model_reward(path: str, device: str | None = None) -> RewardFn:
    """A trained reward model (`gptqwen reward train`) as a reward function; it scores the token ids GRPO
    passes in each row (`_prompt_ids` + `_completion_ids`, the completion ending in its stop token)."""
    model, tok = load_reward_model(path, device)
    pad = tok.pad_id if tok.pad_id is not None else 0

    def score(rows: list[dict], completions: list[str]) -> list[float | None]:
        return model.score_sequences([list(r["_prompt_ids"]) + list(r["_completion_ids"]) for r in rows], pad_id=pad)
    return score


@contextlib.contextmanager
def adapters_off(model: torch.nn.Module):
    """LoRA layers compute the base projection only (the reference model of a LoRA run)."""
    layers = [m for m in model.modules() if isinstance(m, lora_mod.LoRALinear)]
    scales = [m.scale for m in layers]
    for m in layers:
        m.scale = 0.0
    try:
        yield
    finally:
        for m, s in zip(layers, scales):
            m.scale = s


class Rollouts:
    """`Workload.micro_batches` for GRPO: generation batch k = step // μ, sampled by the policy of its first step."""

    def __init__(self, recipe: Recipe, model, tokenizer, rows: list[dict], rewards: RewardSet, reference, out: Path,
                 device: torch.device, lora: bool):  # fmt: skip
        self.g, self.tc = recipe.grpo, recipe.train
        self.model, self.tok, self.rows, self.rewards, self.reference = model, tokenizer, rows, rewards, reference
        self.path, self.device, self.lora = out / "rollout.pt", device, lora
        self.per_epoch = max(1, len(rows) // self.g.prompts_per_step)
        self.pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
        self.index, self.batches, self.stats = -1, [], {}

    def __call__(self, step: int, info) -> list[dict]:
        k = step // self.g.num_iterations
        if k != self.index:
            saved = torch.load(self.path, weights_only=True) if self.path.is_file() else None
            if saved is not None and int(saved["index"]) == k:  # resumed in the middle of this batch's μ steps
                self.batches, self.stats = saved["batches"], saved["stats"]
            else:
                self.batches, self.stats = self.generate(k)
                with atomic_write(self.path, "wb") as f:
                    torch.save({"index": k, "batches": self.batches, "stats": self.stats}, f)
            self.index = k
        return [{**b, "stats": self.stats} for b in self.batches]

    def prompts_of(self, k: int) -> list[dict]:
        epoch, i = divmod(k, self.per_epoch)
        idx = prefs.epoch_order(len(self.rows), self.g.prompts_per_step, self.tc.seed + epoch)[i]
        return [self.rows[j] for j in idx]

    @torch.no_grad()
    def generate(self, k: int) -> tuple[list[dict], dict]:
        g, G = self.g, self.g.num_generations
        rows = self.prompts_of(k)
        torch.manual_seed(self.tc.seed * 1_000_003 + k)
        params = SamplingParams(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p, top_k=g.top_k)
        ids, texts = sample(self.model, self.tok, [r["_prompt_ids"] for r in rows for _ in range(G)], params, not self.lora)
        per_row = [{**rows[n // G], "_completion_ids": x} for n, x in enumerate(ids)]
        totals, per_fn = self.rewards(per_row, texts)
        adv = group_advantages(totals, G, g.scale_rewards)
        var = group_variance(torch.nan_to_num(totals), G)
        groups = list(range(len(rows)))
        if g.query_selection:  # Qwen2.5: only prompts whose completions disagree, most informative first
            groups = sorted((i for i in groups if var[i] > 0), key=lambda i: -float(var[i]))
        stats = {"reward": torch.nanmean(totals), "reward_std": torch.nan_to_num(totals).std(),
                 "zero_variance": (var == 0).float().mean(),
                 "completion_len": torch.tensor([len(x) for x in ids], dtype=torch.float).mean(),
                 **{f"reward_{name.split(':')[0]}": torch.nanmean(per_fn[:, j]) for j, name in enumerate(self.rewards.names)}}  # fmt: skip
        keep = [i * G + j for i in groups for j in range(G)]
        if not keep:  # every group agreed: nothing to learn from this batch
            return [], stats
        seqs = [(per_row[i]["_prompt_ids"], per_row[i]["_completion_ids"]) for i in keep]
        chunk = self.tc.micro_batch or len(seqs)
        batches = []
        for s in range(0, len(seqs), chunk):
            b = prefs.collate_sequences(seqs[s:s + chunk], self.pad)
            b["advantages"] = adv[keep[s:s + chunk]]
            b = {**b, **self.logps(b)}
            batches.append(b)
        total = float(sum(b["completion_mask"].sum() for b in batches))
        for b in batches:
            b["num_items"] = torch.tensor(total / len(batches))  # dapo: the generation batch's tokens, per micro-batch
        return batches, stats

    def logps(self, b: dict) -> dict:
        """Log-probs of the sampled tokens by the sampling policy (μ > 1) and by the reference (β > 0)."""
        out: dict[str, torch.Tensor] = {}
        if self.g.num_iterations == 1 and not self.g.beta:
            return out
        ids, targets = b["input_ids"].to(self.device), b["targets"].to(self.device)
        t = self.g.temperature or 1.0
        was = self.model.training
        self.model.eval()
        if self.g.num_iterations > 1:
            out["old"] = prefs.token_logps(self.model(ids).logits / t, targets).cpu()
        if self.g.beta:
            with adapters_off(self.model) if self.lora else contextlib.nullcontext():
                out["ref"] = prefs.token_logps((self.reference or self.model)(ids).logits / t, targets).cpu()
        self.model.train(was)
        return out


def heldout_accuracy(model: torch.nn.Module, tokenizer, items: list, enable_thinking: bool = True,
                     max_new_tokens: int = 128) -> dict:
    """Greedy accuracy on held-out problems with its standard error `sqrt(p(1 − p)/n)`."""
    res = reasoning_accuracy(model, tokenizer, items, enable_thinking, max_new_tokens)
    model.train()
    p, n = res["accuracy"], res["n"]
    return {"accuracy": p, "stderr": (p * (1 - p) / max(n, 1)) ** 0.5, "n": n, "answered": res["answered"]}


def plot_rewards(metrics: Path, png: Path, title: str) -> bool:
    """The reward curve (mean reward per generation batch against step); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    records = [r for r in MetricsLog.read(metrics) if "reward" in r]
    if not records:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    steps, values = [r["step"] for r in records], [r["reward"] for r in records]
    ax.plot(steps, values, lw=0.8, alpha=0.4, label="reward (generation batch)")
    w = max(1, len(values) // 20)
    smooth = [sum(values[max(0, i - w + 1):i + 1]) / len(values[max(0, i - w + 1):i + 1]) for i in range(len(values))]
    ax.plot(steps, smooth, lw=1.8, label=f"moving mean ({w})")
    ax.set_xlabel("step")
    ax.set_ylabel("mean reward")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, png)
    plt.close(fig)
    return True


def grpo_workload(recipe: Recipe, model: torch.nn.Module, tok, rows: list[dict], rewards: RewardSet, out: Path,
                  device: torch.device) -> Workload:  # fmt: skip
    """The GRPO `Workload` for the training core (LoRA applied here when lora.r is set); bench/grpo_step.py
    times exactly its steps."""
    g, tc, lo = recipe.grpo, recipe.train, recipe.lora
    reference = copy.deepcopy(model).eval().requires_grad_(False) if g.beta and lo.r is None else None
    wrapped = lora_mod.apply_lora(model, lo.targets, lo.r, lo.alpha, lo.dropout) if lo.r is not None else []
    with torch.no_grad():  # build the RoPE tables outside inference mode: the engine's would be unusable for training
        model(torch.zeros(1, 1, dtype=torch.long, device=device))
    rollouts = Rollouts(recipe, model, tok, rows, rewards, reference, out, device, bool(wrapped))
    eps_high = g.epsilon_high if g.epsilon_high is not None else g.epsilon
    # log-probs of the distribution the completions were drawn from (logits ÷ T, as TRL does): the ratio and
    # the gradient are then those of the sampling policy, not of its T = 1 version
    temperature = g.temperature or 1.0

    def loss(fwd: torch.nn.Module, batch: dict):
        stats = batch["stats"]
        if "input_ids" not in batch:  # a batch with no disagreeing group: a zero step
            zero = sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
            return zero, {"loss": zero.detach(), **stats}
        b = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        logp = prefs.token_logps(fwd(b["input_ids"]).logits / temperature, b["targets"])
        objective, extra = grpo_loss(logp, b.get("old", logp.detach()), b["advantages"], b["completion_mask"], g.loss_type,
                                     g.epsilon, eps_high, g.beta, b.get("ref"), g.max_new_tokens, b["num_items"])  # fmt: skip
        return objective, {"loss": objective.detach(), **extra, **stats}

    def micro_batches(step: int, dist_info) -> list[dict]:
        return rollouts(step, dist_info) or [{"stats": rollouts.stats}]

    return Workload(
        model=model, model_config=model.config.to_dict(), steps=tc.max_steps, micro_batches=micro_batches, loss=loss,
        count_tokens=lambda b: int(b["completion_mask"].sum()) if "completion_mask" in b else 0,
        order={"train.seed": tc.seed, "grpo.prompts_per_step": g.prompts_per_step, "grpo.num_generations": g.num_generations,
               "grpo.num_iterations": g.num_iterations, "lora layers": wrapped},
        describe=f"[bold]{recipe.name}[/]: GRPO ({g.loss_type}, G={g.num_generations}, rewards {', '.join(rewards.names)}) "
                 f"of {model.config.name} from {recipe.model.base}, {len(rows)} prompts, ",
    )  # fmt: skip


def run_grpo(recipe: Recipe, out: str | Path, resume: bool = False, overwrite: bool = False, quiet: bool = False,
             stop_at: int | None = None) -> dict:  # fmt: skip
    """Train `recipe.model.base` with GRPO into `out`; returns the summary."""
    g, tc = recipe.grpo, recipe.train
    if not recipe.model.base:
        raise UserError("no model to start from; pass --from (a run dir, HF dir, .gguf or preset) or set model.base")
    if tc.max_steps is None:
        raise UserError("GRPO runs for train.max_steps optimizer steps; set --max-steps")
    out = Path(out)
    check_run_dir(out, resume, overwrite)
    info = setup_process(tc, single="grpo")
    torch.manual_seed(tc.seed)
    model, tok = load_base(recipe.model.base, recipe.model.tokenizer, info.device, tc.seed)
    rows = load_prompt_rows(tok, g.prompts, g.synthetic, g.synthetic_kinds, g.synthetic_seed, g.enable_thinking)
    if len(rows) < g.prompts_per_step:
        raise UserError(f"{len(rows)} prompts are fewer than grpo.prompts_per_step={g.prompts_per_step}")
    rewards = build_rewards(list(g.rewards), g.reward_weights, str(info.device))
    if not resume:  # a generation batch of an earlier run must not be mistaken for this run's
        (out / "rollout.pt").unlink(missing_ok=True)
    work = grpo_workload(recipe, model, tok, rows, rewards, out, info.device)
    wrapped = work.order["lora layers"]
    heldout = None
    if g.eval_problems:
        if g.synthetic is None:
            raise UserError("grpo.eval_problems grades built-in problems; use it with --synthetic")
        exclude = {r["prompt"][0]["content"] for r in rows}
        heldout = heldout_problems(g.eval_problems, g.synthetic_seed + 7919, exclude, tuple(g.synthetic_kinds))
    if heldout and not resume:
        before = heldout_accuracy(model, tok, heldout, g.enable_thinking, g.max_new_tokens)
    summary = train(work, tc, out, recipe, info, resume, overwrite, quiet, stop_at, label="grpo")
    if heldout and summary["step"] >= work.steps:
        summary["heldout_after"] = heldout_accuracy(model, tok, heldout, g.enable_thinking, g.max_new_tokens)
        if not resume:
            summary["heldout_before"] = before
    summary.update({"prompts": len(rows), "steps": work.steps, "rewards": rewards.names,
                    "generation_batches": -(-work.steps // g.num_iterations)})  # fmt: skip
    if summary["step"] < work.steps:
        return summary
    if plot_rewards(out / "metrics.jsonl", out / "reward.png", f"{recipe.name}: GRPO reward"):
        summary["reward_png"] = str(out / "reward.png")
    return export_run(out, model, tok, summary, "grpo.json", lora=bool(wrapped))
