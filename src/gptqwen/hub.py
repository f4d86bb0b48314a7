"""Hugging Face Hub ids as model specs: `Qwen/Qwen3-0.6B` -> a local snapshot folder (the Hub cache first).

    from gptqwen.loading import from_pretrained
    model = from_pretrained("Qwen/Qwen3-0.6B")              # downloads once, then loads from the cache
    gptqwen generate --model Qwen/Qwen3-0.6B --prompt "Hi"  # every --model option accepts Hub ids

`gptqwen.loading` calls `is_hub_id(spec)` for a spec that is not an existing path and `snapshot(spec)` to get
the folder; the folder is then an ordinary Hugging Face checkpoint directory. Only what loading needs is
downloaded (JSON files, safetensors weights, Jinja chat templates). The cache is huggingface_hub's own
(`HF_HUB_CACHE`, `HF_HOME`), so models downloaded by transformers or `hf download` are found without network.
Offline (`HF_HUB_OFFLINE=1`, or the Hub cannot be reached) a model that is not cached is a UserError saying so.
Needs the `huggingface_hub` package (`pip install 'gptqwen[hub]'`; transformers installs it too).
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

from gptqwen.errors import UserError, require

# `org/name` as the Hub spells repository ids: letters, digits, '-', '_', '.'; no '--' or '..'.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_FILE_SUFFIXES = (".gguf", ".json", ".safetensors", ".pt", ".bin", ".jsonl", ".txt")
WANTED = ["*.json", "*.safetensors", "*.jinja"]  # config, weights (+ index), tokenizer, chat template
_TRUE = ("1", "ON", "YES", "TRUE")


def is_hub_id(spec: str) -> bool:
    """True for `org/name` specs that name no local path (and whose `org` is not a local folder either)."""
    text = str(spec)
    if not _HUB_ID.fullmatch(text) or "--" in text or ".." in text or text.endswith(_FILE_SUFFIXES):
        return False
    org = text.split("/")[0]
    return not Path(text).expanduser().exists() and not Path(org).is_dir()


def _offline() -> bool:
    constants = importlib.import_module("huggingface_hub.constants")
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE or bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _complete(folder: Path) -> bool:
    """Whether a cached snapshot has what loading needs (a partial download is fetched again)."""
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def snapshot(repo_id: str) -> Path:
    """The local folder of Hub model `repo_id`: the cached snapshot when complete, else downloaded now."""
    hub = require("huggingface_hub", "hub", f"loading the Hugging Face Hub model '{repo_id}'")
    errors = importlib.import_module("huggingface_hub.errors")
    # Read at call time (huggingface_hub reads these once, at import).
    where = {"cache_dir": os.environ.get("HF_HUB_CACHE") or None, "endpoint": os.environ.get("HF_ENDPOINT") or None}
    fix = (f"download it where the Hub is reachable (`hf download {repo_id}`, or any gptqwen command with network) "
           f"and copy the Hugging Face cache here, or pass a local checkpoint folder")
    try:
        folder = Path(hub.snapshot_download(repo_id, allow_patterns=WANTED, local_files_only=True, **where))
        if _complete(folder):
            return folder
    except errors.LocalEntryNotFoundError:
        pass
    if _offline():
        raise UserError(f"'{repo_id}' looks like a Hugging Face Hub id, but it is not in the local cache and the Hub is "
                        f"switched off (HF_HUB_OFFLINE is set): unset HF_HUB_OFFLINE to download it, or {fix}")
    try:
        folder = Path(hub.snapshot_download(repo_id, allow_patterns=WANTED, **where))
    except (errors.RepositoryNotFoundError, errors.GatedRepoError, errors.RevisionNotFoundError) as e:
        why = ("says the model is gated: accept its licence on the Hub and log in (`hf auth login` or HF_TOKEN)"
               if isinstance(e, errors.GatedRepoError) else "has no model by that name (check the spelling; a "
               "private model needs `hf auth login` or HF_TOKEN)")
        raise UserError(f"'{repo_id}' is not a local path, and the Hugging Face Hub {why}") from None
    except errors.LocalEntryNotFoundError:  # raised when the Hub cannot be reached and nothing is cached
        raise UserError(f"'{repo_id}' looks like a Hugging Face Hub id, but it is not in the local cache and the Hub "
                        f"could not be reached (no network?): {fix}") from None
    except (OSError, errors.HfHubHTTPError) as e:
        raise UserError(f"downloading '{repo_id}' from the Hugging Face Hub failed ({str(e)[:200]}); try again, "
                        f"or {fix}") from None
    if not (folder / "config.json").is_file():
        raise UserError(f"Hub model '{repo_id}' has no config.json, so it is not a transformers checkpoint (a GGUF "
                        "repository? download its .gguf file and pass that path)")
    return folder


__all__ = ["WANTED", "is_hub_id", "snapshot"]
