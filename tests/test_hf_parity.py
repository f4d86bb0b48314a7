"""Logit parity with the installed transformers for every supported model type, both directions,
plus the checkpoint error paths (missing / unexpected / mis-shaped tensors, no weights, bad model type)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from gptqwen.config import Config, config_to_hf
from gptqwen.errors import UserError
from gptqwen.hf import save_pretrained
from gptqwen.loading import from_pretrained
from gptqwen.model import Transformer

TOL = 1e-4

CASES = {
    "openai-gpt": Config.from_name("gpt1-tiny"),
    "gpt2": Config.from_name("gpt2-tiny", n_layer=2, n_embd=64),
    "qwen2": Config.from_name("qwen2-tiny"),
    "qwen2-untied-mha": Config.from_name("qwen2-tiny", n_kv_head=4, tie_embeddings=False),
    "qwen2-yarn": Config.from_name("qwen2-tiny", max_seq_len=64, rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                                "original_max_position_embeddings": 16}),
    "qwen2_moe": Config.from_name("qwen2-moe-tiny", n_layer=3, mlp_only_layers=[1]),
    "qwen3": Config.from_name("qwen3-tiny", n_layer=2),
    "qwen3_moe": Config.from_name("qwen3-moe-tiny"),
    "llama": Config.from_name("qwen2-tiny", hf_model_type="llama", qkv_bias=False, tie_embeddings=False),
}


def _transformers():
    """transformers, for the parity tests (a skip without it, a failure in CI); the error paths run without it."""
    return pytest.importorskip("transformers")


def hf_model(cfg: Config, seed: int = 0):
    """A randomly initialised transformers model for `cfg` (weights large enough to make mistakes visible)."""
    d = config_to_hf(cfg)
    mt = d.pop("model_type")
    d.pop("architectures")
    transformers = _transformers()
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(mt, **d))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2).add_(1.0 if p.dim() == 1 and p.shape[0] in (cfg.n_embd, cfg.head_dim) else 0.0)
    return model.eval()


def _ids(cfg: Config, B: int = 2, T: int = 40) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("case", list(CASES))
def test_import_and_export_parity(case, tmp_path):
    cfg = CASES[case]
    ref = hf_model(cfg)
    ref.save_pretrained(tmp_path / "hf")
    ours = from_pretrained(tmp_path / "hf")
    ids = _ids(cfg)
    with torch.no_grad():
        want = ref(ids).logits
        got = ours(ids).logits
    assert (want - got).abs().max().item() <= TOL

    ours.save_pretrained(tmp_path / "ours")
    back = _transformers().AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        again = back(ids).logits
    assert (want - again).abs().max().item() <= TOL


def test_padded_batch_parity(tmp_path):
    """Left-padded batches with an attention mask match transformers on the real tokens."""
    cfg = CASES["qwen3"]
    ref = hf_model(cfg)
    ref.save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path)
    ids = _ids(cfg, T=12)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    with torch.no_grad():
        want = ref(ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
    real = mask.bool()
    assert (want[real] - got[real]).abs().max().item() <= TOL


def test_fused_expert_checkpoint_and_shards(tmp_path):
    """Checkpoints holding transformers' in-memory fused experts load too; sharded output round-trips."""
    cfg = CASES["qwen3_moe"]
    ref = hf_model(cfg)
    (tmp_path / "fused").mkdir()
    state = {k: v.contiguous() for k, v in ref.state_dict().items() if k != "lm_head.weight" or not cfg.tie_embeddings}
    assert any(k.endswith("experts.gate_up_proj") for k in state)
    save_file(state, str(tmp_path / "fused" / "model.safetensors"))
    (tmp_path / "fused" / "config.json").write_text(json.dumps(config_to_hf(cfg)))
    ours = from_pretrained(tmp_path / "fused")
    ids = _ids(cfg)
    with torch.no_grad():
        want = ref(ids).logits
        assert (want - ours(ids).logits).abs().max().item() <= TOL

    save_pretrained(ours, tmp_path / "sharded", max_shard_size="60KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    again = from_pretrained(tmp_path / "sharded")
    back = _transformers().AutoModelForCausalLM.from_pretrained(tmp_path / "sharded").eval()
    with torch.no_grad():
        assert (want - again(ids).logits).abs().max().item() <= TOL
        assert (want - back(ids).logits).abs().max().item() <= TOL


def test_base_model_names_without_prefix(tmp_path):
    """The original `gpt2` repository stores GPT2Model keys (`h.0.attn...`, no `transformer.` prefix)."""
    cfg = CASES["gpt2"]
    ref = hf_model(cfg)
    (tmp_path / "gpt2").mkdir()
    state = {k.removeprefix("transformer."): v.contiguous() for k, v in ref.state_dict().items() if k != "lm_head.weight"}
    state["h.0.attn.bias"] = torch.ones(1, 1, 4, 4)  # the old causal-mask buffer: ignored
    save_file(state, str(tmp_path / "gpt2" / "model.safetensors"))
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps(config_to_hf(cfg)))
    ids = _ids(cfg)
    with torch.no_grad():
        assert (ref(ids).logits - from_pretrained(tmp_path / "gpt2")(ids).logits).abs().max().item() <= TOL


def _qwen1_to_qwen2(state: dict[str, torch.Tensor], cfg: Config) -> dict[str, torch.Tensor]:
    """Map Qwen v1 checkpoint names onto Qwen2's (independently of gptqwen's own rules)."""
    out = {"model.embed_tokens.weight": state["transformer.wte.weight"], "model.norm.weight": state["transformer.ln_f.weight"],
           "lm_head.weight": state["lm_head.weight"]}
    for i in range(cfg.n_layer):
        h, m = f"transformer.h.{i}.", f"model.layers.{i}."
        for kind in ("weight", "bias"):
            q, k, v = state[h + f"attn.c_attn.{kind}"].chunk(3)
            out.update({m + f"self_attn.q_proj.{kind}": q, m + f"self_attn.k_proj.{kind}": k,
                        m + f"self_attn.v_proj.{kind}": v})
        out.update({m + "self_attn.o_proj.weight": state[h + "attn.c_proj.weight"],
                    m + "input_layernorm.weight": state[h + "ln_1.weight"],
                    m + "post_attention_layernorm.weight": state[h + "ln_2.weight"],
                    m + "mlp.gate_proj.weight": state[h + "mlp.w2.weight"],  # w2 is the gated branch
                    m + "mlp.up_proj.weight": state[h + "mlp.w1.weight"],
                    m + "mlp.down_proj.weight": state[h + "mlp.c_proj.weight"]})
    return {k: v.contiguous() for k, v in out.items()}


def test_qwen1_matches_qwen2_mapping(tmp_path):
    cfg = Config.from_name("qwen-tiny")
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    model.save_pretrained(tmp_path / "v1")
    hf_cfg = json.loads((tmp_path / "v1" / "config.json").read_text())
    assert hf_cfg["model_type"] == "qwen" and hf_cfg["intermediate_size"] == 2 * cfg.intermediate_size
    v1 = from_pretrained(tmp_path / "v1")

    q2cfg = cfg.replace(hf_model_type="qwen2", logn_attn=False, dynamic_ntk=False)
    ref = hf_model(q2cfg)
    state = _qwen1_to_qwen2(load_file(str(tmp_path / "v1" / "model.safetensors")), cfg)
    ref.load_state_dict(state, strict=True)
    ids = _ids(cfg, T=cfg.max_seq_len)  # within seq_length: logn / NTK inactive, as in Qwen v1
    with torch.no_grad():
        assert (ref(ids).logits - v1(ids).logits).abs().max().item() <= TOL
        assert (model(ids).logits - v1(ids).logits).abs().max().item() <= TOL


# ---- error paths --------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    Transformer(Config.from_name("qwen3-tiny", n_layer=2)).save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def _edit_weights(path, fn):
    f = path / "model.safetensors"
    state = load_file(str(f))
    fn(state)
    save_file(state, str(f))


def test_missing_tensor_named(saved):
    _edit_weights(saved, lambda s: s.pop("model.layers.1.mlp.down_proj.weight"))
    with pytest.raises(UserError, match=r"missing tensors: model\.layers\.1\.mlp\.down_proj\.weight"):
        from_pretrained(saved)


def test_unexpected_tensor_named(saved):
    _edit_weights(saved, lambda s: s.__setitem__("model.layers.7.extra.weight", torch.zeros(3)))
    with pytest.raises(UserError, match=r"unexpected tensors: model\.layers\.7\.extra\.weight"):
        from_pretrained(saved)


def test_misshaped_tensor_named(saved):
    _edit_weights(saved, lambda s: s.__setitem__("model.norm.weight", torch.ones(7)))
    with pytest.raises(UserError, match=r"mis-shaped tensors: model\.norm\.weight \[7\] \(expected \[128\]\)"):
        from_pretrained(saved)


def test_no_weights_and_bad_type(saved, tmp_path):
    (saved / "model.safetensors").unlink()
    with pytest.raises(UserError, match="no \\*.safetensors weights"):
        from_pretrained(saved)
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UserError, match="model_type 'bert'.*supported: openai-gpt, gpt2, qwen, qwen2"):
        from_pretrained(tmp_path / "bert")
    with pytest.raises(UserError, match="no config.json"):
        from_pretrained(tmp_path)


def test_band_model_refuses_export(tmp_path):
    with pytest.raises(UserError, match="local_layers"):
        Transformer(Config.from_name("gpt3-tiny")).save_pretrained(tmp_path / "g3")
    assert not (tmp_path / "g3").exists()


def test_cli_reports_bad_checkpoint_in_one_line(saved, tmp_path, capsys):
    from gptqwen.cli import main

    _edit_weights(saved, lambda s: s.pop("model.norm.weight"))
    assert main(["generate", "--model", str(saved), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing tensors: model.norm.weight" in err[0]
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"model_type": "t5"}))
    assert main(["params", str(tmp_path / "odd")]) == 2
    assert "model_type 't5' in config.json is not supported" in capsys.readouterr().err
