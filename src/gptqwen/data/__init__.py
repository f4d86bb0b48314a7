"""Data pipeline: text sources, token shards, and the corpus tools (dedup, filters, decontamination, mixture).

`gptqwen.data.prepare` turns text/Markdown/JSONL into token shards (CLI: `gptqwen data prepare`, in
`gptqwen.commands.data`); `gptqwen.data.shards.TokenDataset` memory-maps them for the trainer. The built-in
Shakespeare corpus and its word lists are `gptqwen.data.corpus`; evaluation reads them from there (eval
depends on data, never the reverse).
"""
