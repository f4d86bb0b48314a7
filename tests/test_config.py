"""Config presets, analytic counting against published sizes, HF config translation, and `gptqwen params`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from gptqwen.cli import main
from gptqwen.config import SUPPORTED_MODEL_TYPES, Config, config_from_hf, config_to_hf
from gptqwen.errors import UserError

GPT3_TABLE = {"gpt3-125m": 125e6, "gpt3-350m": 350e6, "gpt3-760m": 760e6, "gpt3-1.3b": 1.3e9, "gpt3-2.7b": 2.7e9,
              "gpt3-6.7b": 6.7e9, "gpt3-13b": 13.0e9, "gpt3-175b": 175.0e9}
ISSUE_PRESETS = ["gpt1", "gpt2-124m", "gpt2-355m", "gpt2-774m", "gpt2-1.5b", *GPT3_TABLE, "qwen-1.8b", "qwen-7b",
                 "qwen-14b", "qwen-72b", "qwen2-0.5b", "qwen2-1.5b", "qwen2-7b", "qwen2-72b", "qwen2-57b-a14b",
                 "qwen2.5-0.5b", "qwen2.5-72b", "qwen3-0.6b", "qwen3-32b", "qwen3-30b-a3b", "qwen3-235b-a22b"]
TINY = ["gpt1-tiny", "gpt2-tiny", "gpt3-tiny", "qwen-tiny", "qwen2-tiny", "qwen2-moe-tiny", "qwen3-tiny", "qwen3-moe-tiny"]


def test_every_preset_exists_and_tiny_ones_are_tiny():
    names = Config.names()
    assert set(ISSUE_PRESETS + TINY) <= set(names)
    for n in TINY:
        c = Config.from_name(n)
        assert c.vocab_size <= 512 and c.n_layer <= 4 and c.n_embd <= 128


def test_published_parameter_counts():
    assert Config.from_name("gpt2-124m").num_params() == 124_439_808
    for name, published in GPT3_TABLE.items():
        assert abs(Config.from_name(name).num_params() / published - 1) <= 0.02, name
    for name, total, active, tol in (("qwen3-235b-a22b", 235e9, 22e9, 0.02), ("qwen2-57b-a14b", 57e9, 14e9, 0.03),
                                     ("qwen3-30b-a3b", 30.5e9, 3.3e9, 0.02), ("qwen3-0.6b", 0.6e9, 0.6e9, 0.01),
                                     ("qwen2.5-0.5b", 0.494e9, 0.494e9, 0.01), ("qwen-7b", 7.7e9, 7.7e9, 0.01)):
        c = Config.from_name(name)
        assert abs(c.num_params() / total - 1) <= tol, name
        assert abs(c.num_active_params() / active - 1) <= 0.05, name


@pytest.mark.parametrize("name", [n for n in ISSUE_PRESETS if not n.startswith(("gpt3-", "qwen-"))])
def test_parameter_counts_equal_transformers_models(name):
    """Exactly the parameters transformers' model of the same config holds (built on the meta device: no memory).
    GPT-3 (banded attention) and Qwen v1 have no transformers class; their counts are checked against the papers."""
    transformers = pytest.importorskip("transformers")
    cfg = Config.from_name(name)
    d = config_to_hf(cfg)
    model_type = d.pop("model_type")
    d.pop("architectures", None)
    with torch.device("meta"):
        ref = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(model_type, **d))
    assert cfg.num_params() == sum(p.numel() for p in ref.parameters())


def test_kv_and_flops():
    c = Config.from_name("qwen3-0.6b")
    assert c.kv_cache_bytes_per_token() == 2 * 28 * 8 * 128 * 2
    g = Config.from_name("gpt2-124m")
    n = g.num_params() - g.max_seq_len * g.n_embd  # input position table is a lookup, lm_head a matmul
    assert g.flops_per_token(1024) == 6 * n + 12 * 12 * 12 * 64 * 1024


def test_dict_round_trip_and_overrides():
    c = Config.from_name("qwen3-tiny", n_layer=3)
    assert c.n_layer == 3 and Config.from_dict(c.to_dict()) == c
    assert c.replace(n_kv_head=4).n_kv_head == 4
    with pytest.raises(UserError, match="unknown model config keys \\['n_layers'\\]"):
        Config.from_dict({"n_layers": 2})
    with pytest.raises(UserError, match="multiple of n_kv_head"):
        Config(n_head=4, n_kv_head=3)


def test_unknown_preset_lists_closest():
    with pytest.raises(UserError, match="unknown model preset 'qwen3-0.5b'. Did you mean: .*qwen3-0.6b"):
        Config.from_name("qwen3-0.5b")


@pytest.mark.parametrize("name", [n for n in TINY if n != "gpt3-tiny"] + ["qwen3-235b-a22b", "qwen-72b", "qwen2-57b-a14b"])
def test_hf_config_round_trip(name):
    c = Config.from_name(name)
    back = config_from_hf(json.loads(json.dumps(config_to_hf(c))), name=name)
    assert back.replace(max_seq_len=c.max_seq_len) == c.replace(init_std=back.init_std)


def test_hf_config_errors():
    with pytest.raises(UserError, match="supported: " + ", ".join(SUPPORTED_MODEL_TYPES)):
        config_from_hf({"model_type": "mamba"})
    with pytest.raises(UserError, match="use_sliding_window"):
        config_from_hf({**config_to_hf(Config.from_name("qwen2-tiny")), "use_sliding_window": True})


def test_params_cli(capsys):
    assert main(["params", "gpt2-124m", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["params"] == 124_439_808 and rows[0]["kv_cache_bytes_per_token_bf16"] == 2 * 12 * 768 * 2
    assert main(["params", "--all"]) == 0
    out = capsys.readouterr().out
    assert "qwen3-235b-a22b" in out and "235,093,634,560" in out
    assert main(["params"]) == 2 and "--all" in capsys.readouterr().err
    assert main(["params", "gpt2-124m", "--seq-len", "0"]) == 2


def test_params_cli_unknown_preset_subprocess():
    r = subprocess.run([sys.executable, "-m", "gptqwen", "params", "gpt2-125m"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown model preset 'gpt2-125m'") and "gpt2-124m" in lines[0]
