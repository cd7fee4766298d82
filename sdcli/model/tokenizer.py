"""CLIP tokenization with the model's own tokenizer/ folder.

Uses the `tokenizers` library on tokenizer.json when the folder has one (a tenth of
transformers' import time); otherwise transformers' CLIPTokenizer on vocab.json and
merges.txt.  Both give the ids diffusers gets.
"""
from __future__ import annotations

from pathlib import Path

from sdcli.model.config_checks import read_json
from sdcli.util.errors import UsageError


class PromptTokenizer:
    def __init__(self, folder: Path):
        folder = Path(folder)
        cfg = read_json(folder / "tokenizer_config.json", required=False) or {}
        model_max = cfg.get("model_max_length", 77)
        self.max_length = int(model_max if isinstance(model_max, int) and model_max < 10_000 else 77)

        def token(name: str, default: str) -> str:
            value = cfg.get(name, default)
            value = value.get("content") if isinstance(value, dict) else value
            if not isinstance(value, str):
                raise UsageError(f"tokenizer/tokenizer_config.json: {name} must be a token (a string), got {value!r:.60}")
            return value

        if (folder / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            try:
                self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
            except Exception as exc:  # tokenizers raises a bare Exception for a broken file
                raise UsageError(f"tokenizer/tokenizer.json cannot be read: {str(exc).splitlines()[0][:200]}") from None
            self._tok.no_truncation()
            self._tok.no_padding()
            to_id = self._tok.token_to_id
            self._hf = None
        else:
            if not ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()):
                raise UsageError(f"{folder} has neither tokenizer.json nor vocab.json and merges.txt: the tokenizer is missing")
            from transformers import CLIPTokenizer

            try:
                self._hf = CLIPTokenizer.from_pretrained(str(folder))
            except Exception as exc:  # a broken vocab.json or merges.txt, in many kinds
                raise UsageError(f"{folder} is not a readable CLIP tokenizer: {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from None
            self._tok = None
            to_id = self._hf.convert_tokens_to_ids
        special = {}
        for name, default in (("bos_token", "<|startoftext|>"), ("eos_token", "<|endoftext|>"), ("pad_token", "<|endoftext|>")):
            text = token(name, default)
            special[name] = to_id(text)
            if not isinstance(special[name], int) or (self._hf is not None and special[name] == self._hf.unk_token_id
                                                      and text != self._hf.unk_token):
                raise UsageError(f"tokenizer: {name} {text!r:.60} is not in the vocabulary")
        self.bos, self.eos, self.pad = special["bos_token"], special["eos_token"], special["pad_token"]
        ids = self.ids(",")
        self.comma = ids[0] if len(ids) == 1 else None

    def ids(self, text: str) -> list[int]:
        """Token ids of `text` without start, end or padding tokens."""
        if self._tok is not None:
            return self._tok.encode(text, add_special_tokens=False).ids
        return self._hf(text, add_special_tokens=False).input_ids


class ChatTokenizer:
    """An LLM text encoder's tokenizer: tokenizer.json (the `tokenizers` library, as
    transformers' fast tokenizers run it) and the model's chat template (chat_template.jinja,
    or tokenizer_config.json's "chat_template"), rendered with jinja2 as transformers'
    apply_chat_template does."""

    def __init__(self, folder: Path):
        folder = Path(folder)
        if not (folder / "tokenizer.json").is_file():
            raise UsageError(f"{folder} has no tokenizer.json: the text encoder's tokenizer is missing")
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:  # tokenizers raises a bare Exception for a broken file
            raise UsageError(f"tokenizer/tokenizer.json cannot be read: {str(exc).splitlines()[0][:200]}") from None
        self._tok.no_truncation()
        self._tok.no_padding()
        self.config = read_json(folder / "tokenizer_config.json", required=False) or {}
        template = None
        if (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        else:
            template = self.config.get("chat_template")
            if isinstance(template, list):  # named templates: the default one
                template = next((t.get("template") for t in template if isinstance(t, dict)
                                 and t.get("name") == "default"), None)
        if not isinstance(template, str) or not template.strip():
            raise UsageError(f"{folder} has no chat template (chat_template.jinja or tokenizer_config.json's)")
        self._template_text = template
        pad = self._token_text("pad_token") or self._token_text("eos_token")
        self.pad = self._tok.token_to_id(pad) if pad else None

    def _token_text(self, name: str) -> str | None:
        value = self.config.get(name)
        value = value.get("content") if isinstance(value, dict) else value
        return value if isinstance(value, str) else None

    def render(self, messages: list[dict], **options) -> str:
        """The chat template applied to `messages` (transformers' apply_chat_template with
        tokenize=False); `options` are the template's variables (add_generation_prompt,
        enable_thinking, ...)."""
        import json

        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise UsageError(f"tokenizer chat template: {message}")

        def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        special = {name: self._token_text(name) for name in ("bos_token", "eos_token", "pad_token", "unk_token")}
        try:
            return env.from_string(self._template_text).render(messages=messages, **special, **options)
        except jinja2.TemplateError as exc:
            raise UsageError(f"tokenizer chat template: {exc}") from None

    def ids(self, text: str) -> list[int]:
        """Token ids of `text` (special tokens in it recognised), as the tokenizer's __call__ gives them."""
        return self._tok.encode(text, add_special_tokens=True).ids
