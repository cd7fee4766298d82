"""A prompt for a language-model text encoder (Qwen3, as FLUX.2-klein and Z-Image use it): the
prompt put in the model's chat template as a user message, its token ids (cut to the pipeline's
max_sequence_length), padding to a fixed length, and the notes a prompt gets there: cut, or
written with A1111's weights, which a language model reads as plain text."""
from __future__ import annotations

from pathlib import Path

MAX_CACHED = 64  # prompts whose ids are kept (a batch's rows often share them)


class ChatPrompt:
    """The chat-templated token ids of prompts for one model folder's tokenizer (`tokenizer/`).

    `thinking`: the template's enable_thinking (FLUX.2-klein: off; Z-Image: on); `max_tokens`:
    where the ids are cut; `model`: the model's name in notes ("FLUX.2-klein")."""

    def __init__(self, root: Path, *, thinking: bool, max_tokens: int, model: str):
        from sdcli.model.tokenizer import ChatTokenizer

        self.tokenizer = ChatTokenizer(Path(root) / "tokenizer")
        self.thinking = thinking
        self.max_tokens = max_tokens
        self.model = model
        self._ids: dict[str, tuple[list[int], bool]] = {}

    def token_ids(self, text: str) -> tuple[list[int], bool]:
        """(ids of `text` in the chat template, cut to max_tokens; whether it was cut)."""
        if text not in self._ids:
            chat = self.tokenizer.render([{"role": "user", "content": text}], add_generation_prompt=True,
                                         enable_thinking=self.thinking)
            ids = self.tokenizer.ids(chat)
            if len(self._ids) > MAX_CACHED:
                self._ids.clear()
            self._ids[text] = (ids[: self.max_tokens], len(ids) > self.max_tokens)
        return self._ids[text]

    def padded(self, ids: list[int], length: int) -> tuple[list[int], list[int]]:
        """(`ids` padded to `length` with the pad token, the attention mask: 1 on `ids`)."""
        pad = self.tokenizer.pad if self.tokenizer.pad is not None else 0
        n = len(ids)
        return ids + [pad] * (length - n), [1] * n + [0] * (length - n)

    def notes(self, labelled: list[tuple[str, str]], emphasis: bool) -> list[str]:
        """Warnings for the (label, text) rows being encoded ("prompt", "negative prompt"): one
        per text cut to max_tokens, and one line in all for A1111 weights ((word), [word],
        (word:1.3)), which do not apply to a language model (with --emphasis, the default)."""
        from sdcli.engine.prompt_syntax import has_emphasis, parse_emphasis

        notes = [f"the {label} is longer than {self.max_tokens} tokens (in Qwen3's chat template) and was truncated"
                 for label, text in labelled if self.token_ids(text)[1]]
        weighted = [label for label, text in labelled if text and emphasis and has_emphasis(parse_emphasis(text))]
        if weighted:
            whose = " and the ".join(f"{label}'s" for label in weighted)
            notes.append(f"the {whose} A1111 weights ((word), [word], (word:1.3)) do not apply to {self.model}'s "
                         f"language-model text encoder; {'they are' if len(weighted) > 1 else 'it is'} used as "
                         "written")
        return notes
