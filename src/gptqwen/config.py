"""Model configuration: one dataclass, every published GPT and Qwen size as a named preset.

    from gptqwen.config import Config
    cfg = Config.from_name("qwen3-0.6b")
    cfg.num_params(), cfg.num_active_params(), cfg.kv_cache_bytes_per_token(), cfg.flops_per_token(4096)

Generations differ only by switches (norm type/placement, positions, MLP kind, attention kind, bias,
QK-norm, MoE); `gptqwen.model.Transformer` reads them. Counting is analytic, so `params` works for
235B-parameter presets without allocating anything.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from gptqwen.errors import UserError, closest


@dataclass
class Config:
    """Architecture hyper-parameters. `None` fields are derived in `__post_init__`."""

    name: str = "custom"
    vocab_size: int = 50257
    n_layer: int = 12
    n_embd: int = 768
    n_head: int = 12
    n_kv_head: int | None = None  # None -> n_head (multi-head attention)
    head_dim: int | None = None  # None -> n_embd // n_head
    intermediate_size: int | None = None  # width of the dense MLP (per branch for SwiGLU); None -> 4 * n_embd
    max_seq_len: int = 1024  # learned-position table size / training context (Qwen v1: seq_length)
    norm: str = "layernorm"  # "layernorm" | "rmsnorm"
    norm_eps: float = 1e-5
    pre_norm: bool = True  # False = GPT-1 post-norm, no final norm
    pos: str = "learned"  # "learned" | "rope"
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # e.g. {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    mlp: str = "gelu"  # "gelu" (tanh approximation) | "swiglu"
    qkv_bias: bool = True
    bias: bool = True  # bias on the attention output projection and on the dense MLP (GPT)
    qk_norm: bool = False  # Qwen3: RMSNorm per head on q and k before RoPE
    tie_embeddings: bool = True
    local_band: int = 256  # window of the locally banded attention layers
    local_layers: str = "none"  # "none" | "alternate" (GPT-3: odd layers banded)
    logn_attn: bool = False  # Qwen v1 inference: scale queries beyond max_seq_len by log_{max_seq_len}(pos+1)
    dynamic_ntk: bool = False  # Qwen v1 inference: grow the RoPE base when the context exceeds max_seq_len
    dca: dict | None = None  # Dual Chunk Attention {"chunk_size": s, "local_size": w}, s + w <= trained context
    n_experts: int = 0  # 0 = dense model
    n_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0  # 0 = no shared expert (Qwen3-MoE)
    norm_topk_prob: bool = False
    decoder_sparse_step: int = 1
    mlp_only_layers: list[int] = field(default_factory=list)
    router_aux_loss_coef: float = 0.001
    init_std: float = 0.02
    hf_model_type: str = "gpt2"
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.head_dim is None:
            self.head_dim = self.n_embd // self.n_head
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.n_embd
        self.mlp_only_layers = list(self.mlp_only_layers)
        self.validate()

    def validate(self) -> None:
        """Raise a UserError for inconsistent settings (they usually come from a user's config file)."""
        checks = [
            (self.norm in ("layernorm", "rmsnorm"), f"norm must be 'layernorm' or 'rmsnorm', got {self.norm!r}"),
            (self.pos in ("learned", "rope"), f"pos must be 'learned' or 'rope', got {self.pos!r}"),
            (self.mlp in ("gelu", "swiglu"), f"mlp must be 'gelu' or 'swiglu', got {self.mlp!r}"),
            (self.local_layers in ("none", "alternate"), f"local_layers must be 'none' or 'alternate', got {self.local_layers!r}"),
            (min(self.vocab_size, self.n_layer, self.n_embd, self.n_head, self.head_dim, self.max_seq_len) > 0,
             "vocab_size, n_layer, n_embd, n_head, head_dim and max_seq_len must be positive"),
            (self.n_kv_head > 0 and self.n_head % self.n_kv_head == 0,
             f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})"),
            (self.pos != "rope" or self.head_dim % 2 == 0, f"head_dim ({self.head_dim}) must be even for RoPE"),
            (self.n_experts == 0 or 0 < self.n_experts_per_tok <= self.n_experts,
             f"n_experts_per_tok ({self.n_experts_per_tok}) must be in 1..n_experts ({self.n_experts})"),
            (self.n_experts == 0 or self.moe_intermediate_size > 0, "moe_intermediate_size must be > 0 for MoE"),
            (self.n_experts == 0 or self.mlp == "swiglu", "MoE experts are SwiGLU: set mlp='swiglu'"),
            (self.decoder_sparse_step >= 1, "decoder_sparse_step must be >= 1"),
            (self.local_band >= 1, "local_band must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(f"invalid model config '{self.name}': {msg}")
        if self.dca is not None:
            self._validate_dca()

    def trained_len(self) -> int:
        """The context the weights were trained on: YaRN's original length when rope_scaling names one."""
        return int((self.rope_scaling or {}).get("original_max_position_embeddings") or self.max_seq_len)

    def _validate_dca(self) -> None:
        def bad(msg: str) -> UserError:
            return UserError(f"invalid model config '{self.name}': dca {msg}")

        if self.pos != "rope":
            raise bad("remaps rotary positions; this model has learned position embeddings (GPT), drop dca")
        if not isinstance(self.dca, dict) or set(self.dca) != {"chunk_size", "local_size"}:
            raise bad(f"must be {{chunk_size: S, local_size: W}}, got {self.dca!r}")
        s, w = self.dca["chunk_size"], self.dca["local_size"]
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (s, w)) or not 1 <= w <= s:
            raise bad(f"needs integers 1 <= local_size <= chunk_size, got chunk_size={s!r}, local_size={w!r}")
        if s + w > self.trained_len():
            raise bad(f"chunk_size + local_size ({s} + {w}) exceeds the trained context of {self.trained_len()} "
                      "tokens (no distance may exceed it); use a smaller chunk_size")

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> Config:
        """The preset `name` (e.g. 'gpt2-124m', 'qwen3-0.6b', 'qwen3-tiny'), with optional overrides."""
        key = name.lower()
        if key not in PRESETS:
            raise UserError(f"unknown model preset '{name}'.{closest(key, PRESETS)} List them with 'gptqwen params --all'")
        return cls(name=key, **{**PRESETS[key], **overrides})

    @staticmethod
    def names() -> list[str]:
        return list(PRESETS)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown model config keys {unknown}; valid keys are: {', '.join(sorted(known))}")
        return cls(**d)

    def replace(self, **overrides: Any) -> Config:
        return dataclasses.replace(self, **overrides)

    # ---- structure ----------------------------------------------------------------------------
    def is_moe_layer(self, i: int) -> bool:
        """Qwen2-MoE rule: layer i is sparse unless listed in mlp_only_layers or off the sparse step."""
        return self.n_experts > 0 and i not in self.mlp_only_layers and (i + 1) % self.decoder_sparse_step == 0

    def is_local_layer(self, i: int) -> bool:
        """GPT-3 alternates dense and locally banded layers; the odd ones are banded (as in GPT-Neo)."""
        return self.local_layers == "alternate" and i % 2 == 1

    # ---- counting -----------------------------------------------------------------------------
    def _norm_params(self, width: int) -> int:
        return 2 * width if self.norm == "layernorm" else width

    def _attn_params(self) -> int:
        q, kv, h = self.n_head * self.head_dim, self.n_kv_head * self.head_dim, self.n_embd
        n = h * (q + 2 * kv) + q * h
        n += (q + 2 * kv) if self.qkv_bias else 0
        n += h if self.bias else 0
        n += 2 * self.head_dim if self.qk_norm else 0
        return n

    def _dense_mlp_params(self, width: int) -> int:
        h = self.n_embd
        if self.mlp == "gelu":
            return 2 * h * width + ((width + h) if self.bias else 0)
        return 3 * h * width + ((2 * width + h) if self.bias else 0)

    def _moe_params(self, active: bool) -> int:
        h, e = self.n_embd, self.n_experts_per_tok if active else self.n_experts
        n = self.n_experts * h + e * 3 * h * self.moe_intermediate_size  # router + experts
        if self.shared_expert_intermediate_size:
            n += 3 * h * self.shared_expert_intermediate_size + h  # shared expert + its sigmoid gate
        return n

    def _count(self, active: bool, embeddings: bool = True) -> int:
        h = self.n_embd
        n = self.vocab_size * h if embeddings else 0
        if self.pos == "learned" and embeddings:
            n += self.max_seq_len * h
        for i in range(self.n_layer):
            mlp = self._moe_params(active) if self.is_moe_layer(i) else self._dense_mlp_params(self.intermediate_size)
            n += self._attn_params() + mlp + 2 * self._norm_params(h)
        if self.pre_norm:
            n += self._norm_params(h)
        if not self.tie_embeddings and embeddings:
            n += self.vocab_size * h
        return n

    def num_params(self, embeddings: bool = True) -> int:
        """Total parameters (tied embeddings counted once); `embeddings=False` leaves out token/position
        embeddings and an untied LM head (Kaplan's non-embedding N)."""
        return self._count(active=False, embeddings=embeddings)

    def num_active_params(self) -> int:
        """Parameters touched per token: only the top-k routed experts of MoE layers."""
        return self._count(active=True)

    def kv_cache_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """Bytes of K and V cached per token over all layers (only the n_kv_head heads are stored)."""
        return 2 * self.n_layer * self.n_kv_head * self.head_dim * dtype_bytes

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token, 6N + 12·L·H·Q·T (PaLM appendix B), N = active non-embedding params.

        The lm_head matmul is counted in N (it is a real matmul even when tied); the input embedding lookup is not.
        """
        t = seq_len or self.max_seq_len
        n = self._count(active=True, embeddings=False) + self.vocab_size * self.n_embd
        return 6 * n + 12 * self.n_layer * self.n_head * self.head_dim * t

    def summary(self, seq_len: int | None = None) -> dict[str, Any]:
        """The numbers `gptqwen params` prints."""
        return {
            "name": self.name,
            "params": self.num_params(),
            "active_params": self.num_active_params(),
            "kv_cache_bytes_per_token_bf16": self.kv_cache_bytes_per_token(2),
            "train_flops_per_token": self.flops_per_token(seq_len),
            "seq_len": seq_len or self.max_seq_len,
        }


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(int(n))


# ---- presets ------------------------------------------------------------------------------------
# Each family is a base dict plus per-size rows; sizes follow the papers and the published config.json files.

_GPT1 = dict(vocab_size=40478, max_seq_len=512, pre_norm=False, hf_model_type="openai-gpt")
_GPT2 = dict(vocab_size=50257, max_seq_len=1024, hf_model_type="gpt2", bos_token_id=50256, eos_token_id=50256)
_GPT3 = dict(_GPT2, max_seq_len=2048, local_layers="alternate", local_band=256)
_QWEN_RMS = dict(norm="rmsnorm", norm_eps=1e-6, pos="rope", mlp="swiglu", bias=False, tie_embeddings=False)
_QWEN1 = dict(_QWEN_RMS, vocab_size=151936, max_seq_len=8192, logn_attn=True, dynamic_ntk=True,
              hf_model_type="qwen", eos_token_id=151643)
_QWEN2 = dict(_QWEN_RMS, vocab_size=151936, max_seq_len=32768, rope_theta=1e6, hf_model_type="qwen2",
              bos_token_id=151643, eos_token_id=151643)
_QWEN2_MOE = dict(_QWEN2, hf_model_type="qwen2_moe", router_aux_loss_coef=0.001)
_QWEN3 = dict(_QWEN2, qkv_bias=False, qk_norm=True, head_dim=128, max_seq_len=40960, hf_model_type="qwen3",
              eos_token_id=151645)
_QWEN3_MOE = dict(_QWEN3, hf_model_type="qwen3_moe", n_experts=128, n_experts_per_tok=8, norm_topk_prob=True)


def _rows(base: dict, rows: dict[str, tuple], keys: tuple[str, ...]) -> dict[str, dict]:
    return {name: {**base, **dict(zip(keys, vals))} for name, vals in rows.items()}


PRESETS: dict[str, dict[str, Any]] = {
    "gpt1": dict(_GPT1, n_layer=12, n_embd=768, n_head=12),
    **_rows(_GPT2, {"gpt2-124m": (12, 768, 12), "gpt2-355m": (24, 1024, 16), "gpt2-774m": (36, 1280, 20),
                    "gpt2-1.5b": (48, 1600, 25)}, ("n_layer", "n_embd", "n_head")),
    # GPT-3 Table 2.1. XL prints 24 heads of 128 (=3072 != d_model 2048); we use 16 x 128 as GPT-Neo 1.3B does.
    **_rows(_GPT3, {"gpt3-125m": (12, 768, 12, 64), "gpt3-350m": (24, 1024, 16, 64), "gpt3-760m": (24, 1536, 16, 96),
                    "gpt3-1.3b": (24, 2048, 16, 128), "gpt3-2.7b": (32, 2560, 32, 80), "gpt3-6.7b": (32, 4096, 32, 128),
                    "gpt3-13b": (40, 5120, 40, 128), "gpt3-175b": (96, 12288, 96, 128)},
            ("n_layer", "n_embd", "n_head", "head_dim")),
    # Qwen v1: HF intermediate_size is w1+w2; ours is the width of one branch.
    **_rows(_QWEN1, {"qwen-1.8b": (24, 2048, 16, 5504, 8192, 1e4, 151936), "qwen-7b": (32, 4096, 32, 11008, 8192, 1e4, 151936),
                     "qwen-14b": (40, 5120, 40, 13696, 2048, 1e4, 152064), "qwen-72b": (80, 8192, 64, 24576, 32768, 1e6, 152064)},
            ("n_layer", "n_embd", "n_head", "intermediate_size", "max_seq_len", "rope_theta", "vocab_size")),
    **_rows(_QWEN2, {"qwen2-0.5b": (24, 896, 14, 2, 4864, True, 151936), "qwen2-1.5b": (28, 1536, 12, 2, 8960, True, 151936),
                     "qwen2-7b": (28, 3584, 28, 4, 18944, False, 152064), "qwen2-72b": (80, 8192, 64, 8, 29568, False, 152064),
                     "qwen2.5-0.5b": (24, 896, 14, 2, 4864, True, 151936), "qwen2.5-1.5b": (28, 1536, 12, 2, 8960, True, 151936),
                     "qwen2.5-3b": (36, 2048, 16, 2, 11008, True, 151936), "qwen2.5-7b": (28, 3584, 28, 4, 18944, False, 152064),
                     "qwen2.5-14b": (48, 5120, 40, 8, 13824, False, 152064), "qwen2.5-32b": (64, 5120, 40, 8, 27648, False, 152064),
                     "qwen2.5-72b": (80, 8192, 64, 8, 29568, False, 152064)},
            ("n_layer", "n_embd", "n_head", "n_kv_head", "intermediate_size", "tie_embeddings", "vocab_size")),
    "qwen2-57b-a14b": dict(_QWEN2_MOE, n_layer=28, n_embd=3584, n_head=28, n_kv_head=4, intermediate_size=18944,
                           max_seq_len=131072, n_experts=64, n_experts_per_tok=8, moe_intermediate_size=2560,
                           shared_expert_intermediate_size=20480),
    **_rows(_QWEN3, {"qwen3-0.6b": (28, 1024, 16, 8, 3072, True), "qwen3-1.7b": (28, 2048, 16, 8, 6144, True),
                     "qwen3-4b": (36, 2560, 32, 8, 9728, True), "qwen3-8b": (36, 4096, 32, 8, 12288, False),
                     "qwen3-14b": (40, 5120, 40, 8, 17408, False), "qwen3-32b": (64, 5120, 64, 8, 25600, False)},
            ("n_layer", "n_embd", "n_head", "n_kv_head", "intermediate_size", "tie_embeddings")),
    "qwen3-30b-a3b": dict(_QWEN3_MOE, n_layer=48, n_embd=2048, n_head=32, n_kv_head=4, intermediate_size=6144,
                          moe_intermediate_size=768),
    "qwen3-235b-a22b": dict(_QWEN3_MOE, n_layer=94, n_embd=4096, n_head=64, n_kv_head=4, intermediate_size=12288,
                            moe_intermediate_size=1536),
    # Tiny presets for tests and demos: same switches as the family, toy sizes.
    "gpt1-tiny": dict(_GPT1, vocab_size=512, max_seq_len=128, n_layer=2, n_embd=64, n_head=4),
    "gpt2-tiny": dict(_GPT2, vocab_size=512, max_seq_len=256, n_layer=4, n_embd=128, n_head=4,
                      bos_token_id=None, eos_token_id=None),
    "gpt3-tiny": dict(_GPT3, vocab_size=512, max_seq_len=256, n_layer=4, n_embd=64, n_head=4, local_band=32,
                      bos_token_id=None, eos_token_id=None),
    "qwen-tiny": dict(_QWEN1, vocab_size=512, max_seq_len=128, n_layer=2, n_embd=64, n_head=4, intermediate_size=128,
                      eos_token_id=None),
    "qwen2-tiny": dict(_QWEN2, vocab_size=512, max_seq_len=256, n_layer=2, n_embd=64, n_head=4, n_kv_head=2,
                       intermediate_size=128, tie_embeddings=True, bos_token_id=None, eos_token_id=None),
    "qwen2-moe-tiny": dict(_QWEN2_MOE, vocab_size=512, max_seq_len=256, n_layer=2, n_embd=64, n_head=4, n_kv_head=2,
                           intermediate_size=128, n_experts=8, n_experts_per_tok=2, moe_intermediate_size=32,
                           shared_expert_intermediate_size=64, bos_token_id=None, eos_token_id=None),
    "qwen3-tiny": dict(_QWEN3, vocab_size=512, max_seq_len=256, n_layer=4, n_embd=128, n_head=4, n_kv_head=2,
                       head_dim=32, intermediate_size=384, tie_embeddings=True, bos_token_id=None, eos_token_id=None),
    "qwen3-moe-tiny": dict(_QWEN3_MOE, vocab_size=512, max_seq_len=256, n_layer=2, n_embd=64, n_head=4, n_kv_head=2,
                           head_dim=16, intermediate_size=128, n_experts=8, n_experts_per_tok=2,
                           moe_intermediate_size=32, bos_token_id=None, eos_token_id=None),
}


def _check_presets() -> None:
    # guard against typos in the tables above: every preset must build and count
    for name in PRESETS:
        Config.from_name(name).num_params()


if __name__ == "__main__":  # python -m gptqwen.config : quick table
    _check_presets()
    for n in PRESETS:
        c = Config.from_name(n)
        print(f"{n:18s} {human(c.num_params()):>8s} {human(c.num_active_params()):>8s}")


# ---- Hugging Face config.json translation ------------------------------------------------------
SUPPORTED_MODEL_TYPES = ("openai-gpt", "gpt2", "qwen", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "llama")
_ARCHITECTURES = {"openai-gpt": "OpenAIGPTLMHeadModel", "gpt2": "GPT2LMHeadModel", "qwen": "QWenLMHeadModel",
                  "qwen2": "Qwen2ForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM", "qwen3": "Qwen3ForCausalLM",
                  "qwen3_moe": "Qwen3MoeForCausalLM", "llama": "LlamaForCausalLM"}


def _first(x: Any) -> Any:
    return x[0] if isinstance(x, list) and x else x


def _rope_from_hf(d: dict) -> tuple[float, dict | None]:
    """transformers 5 keeps rope_theta inside `rope_parameters`; older files use rope_theta + rope_scaling."""
    params = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
    theta = float(params.pop("rope_theta", d.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    return theta, (None if kind == "default" else params)


def config_from_hf(d: dict, name: str = "hf") -> Config:
    """A `Config` from a transformers config.json dict; UserError for unsupported types or options."""
    try:
        return _config_from_hf(d, name)
    except KeyError as e:
        raise UserError(f"config.json (model_type '{d.get('model_type')}') lacks the key {e}; restore the file") from None
    except TypeError as e:  # e.g. a null where a number belongs
        raise UserError(f"config.json (model_type '{d.get('model_type')}') has a malformed value: {e}") from None


def _config_from_hf(d: dict, name: str) -> Config:
    mt = d.get("model_type")
    if mt not in SUPPORTED_MODEL_TYPES:
        raise UserError(f"model_type '{mt}' in config.json is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")

    def unsupported(what: str) -> UserError:
        return UserError(f"config.json option {what} of model_type '{mt}' is not supported by gptqwen")

    common = dict(name=name, hf_model_type=mt, vocab_size=d.get("vocab_size"), bos_token_id=_first(d.get("bos_token_id")),
                  eos_token_id=_first(d.get("eos_token_id")))
    if mt in ("openai-gpt", "gpt2"):
        act = d.get("afn", "gelu") if mt == "openai-gpt" else d.get("activation_function", "gelu_new")
        if act not in (("gelu",) if mt == "openai-gpt" else ("gelu_new", "gelu_pytorch_tanh")):
            raise unsupported(f"activation '{act}'")
        if d.get("scale_attn_by_inverse_layer_idx") or d.get("scale_attn_weights") is False:
            raise unsupported("scale_attn_by_inverse_layer_idx / scale_attn_weights=false")
        return Config(**common, n_layer=d["n_layer"], n_embd=d["n_embd"], n_head=d["n_head"],
                      intermediate_size=d.get("n_inner"), max_seq_len=d["n_positions"],
                      norm_eps=d.get("layer_norm_epsilon", 1e-5), pre_norm=mt == "gpt2",
                      tie_embeddings=d.get("tie_word_embeddings", True))
    if mt == "qwen":
        if d.get("rotary_pct", 1.0) != 1.0:
            raise unsupported(f"rotary_pct={d['rotary_pct']}")
        return Config(**common, n_layer=d["num_hidden_layers"], n_embd=d["hidden_size"], n_head=d["num_attention_heads"],
                      head_dim=d.get("kv_channels"), intermediate_size=d["intermediate_size"] // 2,
                      max_seq_len=d.get("seq_length", 2048), norm="rmsnorm", norm_eps=d.get("layer_norm_epsilon", 1e-6),
                      pos="rope", rope_theta=float(d.get("rotary_emb_base", 10000)), mlp="swiglu", bias=False,
                      tie_embeddings=d.get("tie_word_embeddings", False), logn_attn=d.get("use_logn_attn", True),
                      dynamic_ntk=d.get("use_dynamic_ntk", True))
    # qwen2 / qwen3 / llama and their MoE variants
    if d.get("hidden_act", "silu") != "silu":
        raise unsupported(f"hidden_act '{d.get('hidden_act')}'")
    if d.get("use_sliding_window"):
        raise unsupported("use_sliding_window=true")
    if d.get("mlp_bias") or (mt != "qwen2_moe" and d.get("attention_bias")):
        raise unsupported("attention_bias / mlp_bias = true")
    theta, scaling = _rope_from_hf(d)
    moe = {}
    if mt.endswith("_moe"):
        moe = dict(n_experts=d.get("num_experts", d.get("num_local_experts")), n_experts_per_tok=d["num_experts_per_tok"],
                   moe_intermediate_size=d["moe_intermediate_size"],
                   shared_expert_intermediate_size=d.get("shared_expert_intermediate_size", 0) if mt == "qwen2_moe" else 0,
                   norm_topk_prob=d.get("norm_topk_prob", False), decoder_sparse_step=d.get("decoder_sparse_step", 1),
                   mlp_only_layers=d.get("mlp_only_layers") or [], router_aux_loss_coef=d.get("router_aux_loss_coef", 0.001))
    return Config(**common, **moe, n_layer=d["num_hidden_layers"], n_embd=d["hidden_size"],
                  n_head=d["num_attention_heads"], n_kv_head=d.get("num_key_value_heads"), head_dim=d.get("head_dim"),
                  intermediate_size=d["intermediate_size"], max_seq_len=d.get("max_position_embeddings", 32768),
                  norm="rmsnorm", norm_eps=d.get("rms_norm_eps", 1e-6), pos="rope", rope_theta=theta, rope_scaling=scaling,
                  mlp="swiglu", bias=False, qkv_bias=mt == "qwen2" or (mt == "qwen2_moe" and d.get("qkv_bias", True)),
                  qk_norm=mt.startswith("qwen3"), tie_embeddings=d.get("tie_word_embeddings", False))


_ARCH_FIELDS = ("vocab_size", "n_layer", "n_embd", "n_head", "n_kv_head", "head_dim", "intermediate_size", "norm",
                "pre_norm", "pos", "rope_theta", "rope_scaling", "mlp", "qkv_bias", "bias", "qk_norm", "tie_embeddings",
                "local_layers", "logn_attn", "dynamic_ntk", "n_experts", "n_experts_per_tok", "moe_intermediate_size",
                "shared_expert_intermediate_size", "norm_topk_prob", "decoder_sparse_step", "mlp_only_layers")


def config_to_hf(cfg: Config) -> dict:
    """The transformers config.json dict for `cfg`; UserError when its model type cannot express `cfg`."""
    mt = cfg.hf_model_type
    if mt not in SUPPORTED_MODEL_TYPES:
        raise UserError(f"hf_model_type '{mt}' is not exportable; use one of {', '.join(SUPPORTED_MODEL_TYPES)}")
    d: dict[str, Any] = {"architectures": [_ARCHITECTURES[mt]], "model_type": mt, "vocab_size": cfg.vocab_size,
                         "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
                         "tie_word_embeddings": cfg.tie_embeddings, "initializer_range": cfg.init_std}
    if mt in ("openai-gpt", "gpt2"):
        d.update(n_layer=cfg.n_layer, n_embd=cfg.n_embd, n_head=cfg.n_head, n_positions=cfg.max_seq_len,
                 layer_norm_epsilon=cfg.norm_eps)
        d.update({"afn": "gelu"} if mt == "openai-gpt" else {"activation_function": "gelu_new", "n_inner": cfg.intermediate_size})
    elif mt == "qwen":
        d.update(num_hidden_layers=cfg.n_layer, hidden_size=cfg.n_embd, num_attention_heads=cfg.n_head,
                 kv_channels=cfg.head_dim, intermediate_size=2 * cfg.intermediate_size, seq_length=cfg.max_seq_len,
                 max_position_embeddings=cfg.max_seq_len, layer_norm_epsilon=cfg.norm_eps, rotary_emb_base=cfg.rope_theta,
                 rotary_pct=1.0, use_logn_attn=cfg.logn_attn, use_dynamic_ntk=cfg.dynamic_ntk, no_bias=True)
    else:
        rope = {"rope_type": "default", **(cfg.rope_scaling or {}), "rope_theta": cfg.rope_theta}
        d.update(num_hidden_layers=cfg.n_layer, hidden_size=cfg.n_embd, num_attention_heads=cfg.n_head,
                 num_key_value_heads=cfg.n_kv_head, head_dim=cfg.head_dim, intermediate_size=cfg.intermediate_size,
                 max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps, hidden_act="silu",
                 rope_parameters=rope, use_sliding_window=False)
        if mt in ("qwen3", "qwen3_moe", "llama"):
            d["attention_bias"] = False
        if mt.endswith("_moe"):
            d.update(num_experts=cfg.n_experts, num_experts_per_tok=cfg.n_experts_per_tok,
                     moe_intermediate_size=cfg.moe_intermediate_size, norm_topk_prob=cfg.norm_topk_prob,
                     decoder_sparse_step=cfg.decoder_sparse_step, mlp_only_layers=cfg.mlp_only_layers,
                     router_aux_loss_coef=cfg.router_aux_loss_coef)
        if mt == "qwen2_moe":
            d.update(shared_expert_intermediate_size=cfg.shared_expert_intermediate_size, qkv_bias=cfg.qkv_bias)
    back = config_from_hf(d)
    diff = [f for f in _ARCH_FIELDS if getattr(back, f) != getattr(cfg, f)]
    if diff:
        raise UserError(f"model '{cfg.name}' cannot be written as a '{mt}' checkpoint: transformers has no "
                        f"equivalent for its {', '.join(diff)} setting(s)")
    return d
