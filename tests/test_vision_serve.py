"""Images through the OpenAI-compatible server: content parts with data URLs reach the VLM (same answer as
`Engine.chat`), while file paths, non-image data and images on a text model are refused with a 400."""

from __future__ import annotations

import base64
import io

import pytest
import torch

pytest.importorskip("PIL.Image")
openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")

from tests.test_serve import running_server, stop_server  # noqa: E402

from gptqwen.infer import Engine, SamplingParams  # noqa: E402
from gptqwen.infer.scheduler import Scheduler  # noqa: E402
from gptqwen.serve.app import Limits, create_app  # noqa: E402
from gptqwen.tokenizer.train import train_tokenizer  # noqa: E402
from gptqwen.vision import VisionLanguageModel  # noqa: E402
from gptqwen.vision.data import corpus_text, make_item  # noqa: E402


@pytest.fixture(scope="module")
def served():
    tok = train_tokenizer(corpus_text(["colour"]), 384, style="qwen", show_progress=False)
    torch.manual_seed(0)
    vlm = VisionLanguageModel.from_preset("qwen-vl-tiny", image_pad_id=tok.token_to_id("<|image_pad|>"),
                                          vocab_size=tok.vocab_size).eval()
    engine = Engine(vlm, tok)
    sched = Scheduler(engine, max_seqs=2, max_queue=4, prefill_tokens=8)  # small chunks: images must not be split
    server, url = running_server(create_app(engine, sched, "vlm", Limits(200, 16)))
    yield engine, openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    stop_server(server, sched)


def _url(item) -> str:
    buf = io.BytesIO()
    item.image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_image_content_parts_match_engine_chat(served):
    engine, client = served
    item = make_item("colour", 0, 4)
    parts = [{"type": "image_url", "image_url": {"url": _url(item)}}, {"type": "text", "text": item.question}]
    r = client.chat.completions.create(model="vlm", messages=[{"role": "user", "content": parts}], temperature=0,
                                       max_tokens=5, extra_body={"chat_template_kwargs": {"enable_thinking": False}})  # fmt: skip
    direct = engine.chat([{"role": "user", "content": parts}], enable_thinking=False,
                         params=SamplingParams(max_new_tokens=5, temperature=0.0))
    assert r.choices[0].message.content == direct.content
    assert r.usage.prompt_tokens == direct.prompt_tokens > 16  # the 16 image tokens count as prompt


def test_bad_image_requests_are_400(served):
    _, client = served
    for part, words in (({"type": "image_url", "image_url": {"url": "/etc/passwd"}}, "data URLs only"),
                        ({"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGk="}}, "not an image"),
                        ({"type": "input_audio", "input_audio": {}}, "text or image_url")):
        with pytest.raises(openai.BadRequestError, match=words):
            client.chat.completions.create(model="vlm", messages=[{"role": "user", "content": [part]}], max_tokens=2)
