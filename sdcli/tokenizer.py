"""CLIP tokenization with the model's own tokenizer/ folder.

Uses the `tokenizers` library on tokenizer.json when the folder has one (a tenth of
transformers' import time); otherwise transformers' CLIPTokenizer on vocab.json and
merges.txt.  Both give the ids diffusers gets.
"""
from __future__ import annotations

import json
from pathlib import Path


class PromptTokenizer:
    def __init__(self, folder: Path):
        folder = Path(folder)
        cfg_file = folder / "tokenizer_config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        model_max = cfg.get("model_max_length", 77)
        self.max_length = int(model_max if isinstance(model_max, int) and model_max < 10_000 else 77)

        def token(name: str, default: str) -> str:
            value = cfg.get(name, default)
            return value["content"] if isinstance(value, dict) else value

        if (folder / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
            self._tok.no_truncation()
            self._tok.no_padding()
            to_id = self._tok.token_to_id
            self._hf = None
        else:
            from transformers import CLIPTokenizer

            self._hf = CLIPTokenizer.from_pretrained(str(folder))
            self._tok = None
            to_id = self._hf.convert_tokens_to_ids
        self.bos = to_id(token("bos_token", "<|startoftext|>"))
        self.eos = to_id(token("eos_token", "<|endoftext|>"))
        self.pad = to_id(token("pad_token", "<|endoftext|>"))
        ids = self.ids(",")
        self.comma = ids[0] if len(ids) == 1 else None

    def ids(self, text: str) -> list[int]:
        """Token ids of `text` without start, end or padding tokens."""
        if self._tok is not None:
            return self._tok.encode(text, add_special_tokens=False).ids
        return self._hf(text, add_special_tokens=False).input_ids
