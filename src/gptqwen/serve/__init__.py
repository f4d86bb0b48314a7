"""Serving: an OpenAI-compatible HTTP server over the continuous-batching scheduler, and a web chat page.

    gptqwen serve --model SmolLM2-135M-Instruct.Q4_1.gguf --quant q8_0     # then open http://127.0.0.1:8000/

`protocol.py` is the wire format (request models, validation, errors, response pieces), `app.py` the FastAPI
routes, `metrics.py` the Prometheus metrics, `static/chat.html` the page. Needs the `serve` extra.
"""
