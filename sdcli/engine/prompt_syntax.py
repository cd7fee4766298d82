"""A1111's prompt syntax: emphasis weights and 75-token chunks.

`(word)` multiplies the attention to `word` by 1.1, `((word))` by 1.1², `[word]`
divides by 1.1, `(word:1.3)` sets 1.3 (multiplied into any enclosing weight), `\\(`
and `\\)` are literal brackets.  A bracket left open applies to the rest of the prompt,
as in A1111.  Prompts longer than 75 tokens are split into chunks of 75 (at the last
comma in the chunk's final 20 tokens when there is one) that are encoded separately and
concatenated.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

ROUND = 1.1
SQUARE = 1 / 1.1
CHUNK = 75  # tokens per chunk, between the start and end tokens
COMMA_BACKTRACK = 20

_TOKEN = re.compile(
    r"""
    \\\( | \\\) | \\\[ | \\\] | \\\\ | \\  # escapes
    | \(                                  # open round
    | \[                                  # open square
    | :\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\) # ":1.3)" closes a round bracket with a weight
    | \)                                  # close round
    | \]                                  # close square
    | [^\\()\[\]:]+                       # plain text
    | :                                   # a colon that is just text
    """,
    re.VERBOSE,
)


def parse_emphasis(text: str) -> list[tuple[str, float]]:
    """Split `text` into (fragment, weight) pairs, merging neighbours of equal weight."""
    fragments: list[list] = []  # [text, weight]
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for frag in fragments[start:]:
            frag[1] *= factor

    for match in _TOKEN.finditer(text):
        tok = match.group(0)
        weight = match.group(1)
        if tok.startswith("\\"):
            fragments.append([tok[1:] if len(tok) > 1 else "\\", 1.0])
        elif tok == "(":
            round_open.append(len(fragments))
        elif tok == "[":
            square_open.append(len(fragments))
        elif weight is not None and round_open:
            scale(round_open.pop(), float(weight))
        elif tok == ")" and round_open:
            scale(round_open.pop(), ROUND)
        elif tok == "]" and square_open:
            scale(square_open.pop(), SQUARE)
        elif weight is not None:  # ":1.3)" with no open bracket: plain text
            fragments.append([tok, 1.0])
        else:
            fragments.append([tok, 1.0])
    for start in round_open:
        scale(start, ROUND)
    for start in square_open:
        scale(start, SQUARE)

    merged: list[tuple[str, float]] = []
    for frag, weight in fragments:
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + frag, weight)
        elif frag:
            merged.append((frag, weight))
    return merged or [("", 1.0)]


MAX_WEIGHT = 1000.0  # far beyond any useful weight; near float32's range the embeddings overflow to NaN


def weight_out_of_range(text: str) -> float | None:
    """The first emphasis weight in `text` beyond +-MAX_WEIGHT (nested brackets multiply:
    a hundred `(` give 1.1^100), or None."""
    for _, weight in parse_emphasis(text):
        if not abs(weight) <= MAX_WEIGHT:
            return weight
    return None


def has_emphasis(pairs: list[tuple[str, float]]) -> bool:
    return any(w != 1.0 for _, w in pairs)


@dataclass
class Chunk:
    ids: list[int]  # start token, up to 75 ids, end token, padding: always CHUNK + 2 long
    weights: list[float]
    # textual-inversion embeddings: (position in ids, vectors [n, width], name); their ids are placeholders
    fixes: list[tuple] = field(default_factory=list)


def chunk_prompt(tokens: list[int], weights: list[float], bos: int, eos: int, pad: int, comma: int | None,
                 spans: list[tuple] = ()) -> list[Chunk]:
    """Split token ids into chunks of at most 75, each framed by start/end tokens and padded.
    `spans`: (start, length, vectors, name) of the embeddings in `tokens`, which are not split
    across chunks (A1111 starts a new chunk before one that does not fit)."""
    chunks: list[Chunk] = []
    ids, ws = list(tokens), list(weights)
    spans = sorted(spans, key=lambda span: span[0])
    offset = 0
    while True:
        take = min(len(ids), CHUNK)
        if len(ids) > CHUNK and comma is not None:
            # end the chunk at a comma in its last 20 tokens, as A1111 does
            commas = [i for i in range(CHUNK - COMMA_BACKTRACK, CHUNK) if ids[i] == comma]
            if commas:
                take = commas[-1] + 1
        for start, length, _, _ in spans:  # an embedding across the end goes to the next chunk
            if start - offset < take < start - offset + length and start > offset:
                take = start - offset
        body, body_w = ids[:take], ws[:take]
        fixes = [(1 + start - offset, vectors, name) for start, length, vectors, name in spans
                 if offset <= start < offset + take]
        ids, ws = ids[take:], ws[take:]
        offset += take
        padding = CHUNK - len(body)
        chunks.append(Chunk([bos, *body, eos] + [pad] * padding, [1.0, *body_w, 1.0] + [1.0] * padding, fixes))
        if not ids:
            return chunks
