"""Data pipeline: text sources, token shards, and the corpus tools (dedup, filters, decontamination, mixture).

`gptqwen data prepare` turns text/Markdown/JSONL into token shards (`gptqwen.data.prepare`);
`gptqwen.data.shards.TokenDataset` memory-maps them for the trainer.
"""
