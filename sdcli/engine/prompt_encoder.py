"""Stage 1, encode the prompt, for one CLIP text encoder: A1111's prompt syntax (emphasis
weights, prompts longer than 75 tokens in chunks) as token chunks, and their embeddings.

A model family uses one of these per text encoder (SD 1.x/2.x one, SDXL two).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from sdcli.engine.prompt_syntax import CHUNK, Chunk, chunk_prompt, parse_emphasis
from sdcli.model.tokenizer import PromptTokenizer
from sdcli.util.errors import UsageError

TOKENS_PER_CHUNK = CHUNK + 2  # 75 tokens between the start and end tokens
PLACEHOLDER = 0  # A1111's token id where an embedding's vectors go


def embedding_inputs(chunk: Chunk) -> tuple[np.ndarray, np.ndarray]:
    """The text encoder's ti_embeds and ti_mask for a chunk's embeddings."""
    width = chunk.fixes[0][1].shape[1]
    embeds = np.zeros((1, len(chunk.ids), width), np.float32)
    mask = np.zeros((1, len(chunk.ids), 1), bool)
    for position, vectors, _ in chunk.fixes:
        embeds[0, position:position + len(vectors)] = vectors
        mask[0, position:position + len(vectors)] = True
    return embeds, mask


def embeddings_used(chunked: list[list[Chunk]]) -> tuple[str, ...]:
    """The names of the embeddings in each text's chunks, once per text, as A1111 lists them in
    `TI hashes`: the last text's (the prompt's) first."""
    names: list[str] = []
    for chunks in reversed(chunked):
        names += dict.fromkeys(name for chunk in chunks for _, _, name in chunk.fixes)
    return tuple(names)


class ClipPromptEncoder:
    def __init__(self, tokenizer: PromptTokenizer, fixed_sequence: int | None):
        """`fixed_sequence`: the UNet's fixed text length (optimum-cli exports 77), or None
        when it takes any number of chunks."""
        self.tokenizer = tokenizer
        self.fixed_sequence = fixed_sequence

    def vocabulary(self, embeddings, index: int, width: int) -> list[tuple]:
        """(name's token ids, vectors, name) of each embedding that has vectors for text encoder
        `index` of `width`, longest name first (A1111 matches the longest)."""
        entries = []
        for embedding in embeddings:
            vectors = embedding.for_encoder(index, width)
            ids = tuple(self.tokenizer.ids(embedding.name))
            if vectors is not None and ids:
                if len(vectors) > CHUNK:
                    raise UsageError(f"embedding {embedding.name} has {len(vectors)} vectors, more than the {CHUNK} "
                                     "tokens of a prompt chunk")
                entries.append((ids, vectors, embedding.name))
        return sorted(entries, key=lambda entry: -len(entry[0]))

    def chunks(self, text: str, emphasis: bool, vocabulary: list[tuple] = ()) -> list[Chunk]:
        pairs = parse_emphasis(text) if emphasis else [(text, 1.0)]
        tokens: list[int] = []
        weights: list[float] = []
        spans: list[tuple] = []
        for fragment, weight in pairs:
            ids = self.tokenizer.ids(fragment)
            i = 0
            while i < len(ids):  # an embedding's name, where its tokens are, becomes its vectors
                entry = next((e for e in vocabulary if tuple(ids[i:i + len(e[0])]) == e[0]), None)
                if entry is None:
                    tokens.append(ids[i])
                    weights.append(weight)
                    i += 1
                    continue
                spans.append((len(tokens), len(entry[1]), entry[1], entry[2]))
                tokens += [PLACEHOLDER] * len(entry[1])
                weights += [weight] * len(entry[1])
                i += len(entry[0])
        t = self.tokenizer
        return chunk_prompt(tokens, weights, t.bos, t.eos, t.pad, t.comma, spans)

    def prompt_chunks(self, texts: list[str], labels: list[str], emphasis: bool,
                      vocabulary: list[tuple] = ()) -> tuple[list[list[Chunk]], list[str]]:
        """Token chunks of each text, padded to the same number of chunks, and warnings for
        anything truncated.  `vocabulary`: the embeddings (see vocabulary())."""
        chunked = [self.chunks(text, emphasis, vocabulary) for text in texts]
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
                ids = np.asarray([chunk.ids], dtype=np.int64)
                z = encoder(ids, *embedding_inputs(chunk)) if chunk.fixes else encoder(ids)
                weights = np.asarray(chunk.weights, dtype=np.float32)
                if (weights != 1.0).any():
                    # A1111: scale each token's embedding, then restore the chunk's mean
                    mean = z.mean()
                    z = z * weights[None, :, None]
                    z = z * (mean / z.mean())
                parts.append(z)
            rows.append(np.concatenate(parts, axis=1))
        return np.concatenate(rows, axis=0)
