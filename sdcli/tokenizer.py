"""CLIP tokenization with the model's own tokenizer/ folder.

Uses the `tokenizers` library on tokenizer.json when the folder has one (a tenth of
transformers' import time); otherwise transformers' CLIPTokenizer on vocab.json and
merges.txt.  Both give the ids diffusers gets.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class PromptTokenizer:
    def __init__(self, folder: Path, max_length: int | None = None):
        folder = Path(folder)
        cfg_file = folder / "tokenizer_config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        model_max = cfg.get("model_max_length", 77)
        self.max_length = int(max_length or (model_max if isinstance(model_max, int) and model_max < 10_000 else 77))
        pad = cfg.get("pad_token", "<|endoftext|>")
        self.pad_token = pad["content"] if isinstance(pad, dict) else pad
        if (folder / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
            self._tok.enable_truncation(self.max_length)
            self._tok.enable_padding(length=self.max_length, pad_id=self._tok.token_to_id(self.pad_token), pad_token=self.pad_token)
            self._hf = None
        else:
            from transformers import CLIPTokenizer

            self._hf = CLIPTokenizer.from_pretrained(str(folder))
            self._tok = None

    def __call__(self, text: str) -> tuple[np.ndarray, bool]:
        """Return ids of shape [1, max_length] (int64) and whether the text was truncated."""
        if self._tok is not None:
            enc = self._tok.encode(text)
            ids, truncated = enc.ids, bool(enc.overflowing)
        else:
            out = self._hf(text, padding="max_length", max_length=self.max_length, truncation=True)
            ids = out.input_ids
            truncated = len(self._hf(text).input_ids) > self.max_length
        return np.asarray([ids], dtype=np.int64), truncated
