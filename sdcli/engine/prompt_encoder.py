"""Stage 1, encode the prompt, for one CLIP text encoder: A1111's prompt syntax (emphasis
weights, prompts longer than 75 tokens in chunks) as token chunks, and their embeddings.

A model family uses one of these per text encoder (SD 1.x/2.x one, SDXL two).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from sdcli.engine.prompt_syntax import CHUNK, Chunk, chunk_prompt, parse_emphasis
from sdcli.model.tokenizer import PromptTokenizer

TOKENS_PER_CHUNK = CHUNK + 2  # 75 tokens between the start and end tokens


class ClipPromptEncoder:
    def __init__(self, tokenizer: PromptTokenizer, fixed_sequence: int | None):
        """`fixed_sequence`: the UNet's fixed text length (optimum-cli exports 77), or None
        when it takes any number of chunks."""
        self.tokenizer = tokenizer
        self.fixed_sequence = fixed_sequence

    def chunks(self, text: str, emphasis: bool) -> list[Chunk]:
        pairs = parse_emphasis(text) if emphasis else [(text, 1.0)]
        tokens: list[int] = []
        weights: list[float] = []
        for fragment, weight in pairs:
            ids = self.tokenizer.ids(fragment)
            tokens += ids
            weights += [weight] * len(ids)
        t = self.tokenizer
        return chunk_prompt(tokens, weights, t.bos, t.eos, t.pad, t.comma)

    def prompt_chunks(self, texts: list[str], labels: list[str], emphasis: bool) -> tuple[list[list[Chunk]], list[str]]:
        """Token chunks of each text, padded to the same number of chunks, and warnings for
        anything truncated."""
        chunked = [self.chunks(text, emphasis) for text in texts]
        warnings = []
        if self.fixed_sequence:
            for label, chunks in zip(labels, chunked):
                if len(chunks) > 1:
                    warnings.append(f"the {label} is longer than {CHUNK} tokens and was truncated "
                                    f"(this model's UNet takes {self.fixed_sequence} tokens)")
            chunked = [chunks[:1] for chunks in chunked]
        n = max(len(chunks) for chunks in chunked)
        t = self.tokenizer
        for chunks in chunked:
            while len(chunks) < n:
                chunks += chunk_prompt([], [], t.bos, t.eos, t.pad, t.comma)
        return chunked, warnings

    @staticmethod
    def embed(chunked: list[list[Chunk]], encoder: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """The hidden states of each text's chunks, concatenated along the sequence, one row per text."""
        rows = []
        for chunks in chunked:
            parts = []
            for chunk in chunks:
                z = encoder(np.asarray([chunk.ids], dtype=np.int64))
                weights = np.asarray(chunk.weights, dtype=np.float32)
                if (weights != 1.0).any():
                    # A1111: scale each token's embedding, then restore the chunk's mean
                    mean = z.mean()
                    z = z * weights[None, :, None]
                    z = z * (mean / z.mean())
                parts.append(z)
            rows.append(np.concatenate(parts, axis=1))
        return np.concatenate(rows, axis=0)
