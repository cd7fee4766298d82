"""Textual-inversion embeddings: the vectors a name in the prompt stands for.

A file holds [vectors, width] for one text encoder under any key (civitai/kohya's
`emb_params`, diffusers' `<token>`), or one such tensor per text encoder of SDXL (`clip_l`,
`clip_g`); A1111's `.pt` holds `string_to_param: {"*": tensor}` (a pickle, read only with
--allow-pickle).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdcli.model.tensor_files import read_tensors
from sdcli.util.errors import UsageError

SUFFIXES = (".safetensors", ".pt", ".bin")
SDXL_KEYS = ("clip_l", "clip_g")  # text encoder 1, text encoder 2


@dataclass
class Embedding:
    name: str  # the file name without its extension: the word that stands for it in a prompt
    path: Path
    vectors: dict[str, np.ndarray]  # "clip_l" / "clip_g", or "" for a single tensor

    def for_encoder(self, index: int, width: int) -> np.ndarray | None:
        """The vectors for text encoder `index` (0: the first) of `width`, or None when the
        file has none for it."""
        if "" in self.vectors:
            vectors = self.vectors[""]
        elif index < len(SDXL_KEYS) and SDXL_KEYS[index] in self.vectors:
            vectors = self.vectors[SDXL_KEYS[index]]
        else:
            return None
        if vectors.shape[-1] != width:
            raise UsageError(f"embedding {self.path.name} has vectors of width {vectors.shape[-1]}, this model's "
                             f"text encoder {width} (an embedding for another base model?)")
        return vectors


def _tensors(content: object, path: Path) -> dict[str, np.ndarray]:
    if isinstance(content, tuple):
        content = content[0]
    if isinstance(content, dict) and isinstance(content.get("string_to_param"), dict):
        content = content["string_to_param"]  # A1111's .pt
    if not isinstance(content, dict):
        raise UsageError(f"embedding {path.name}: holds no table of tensors")
    return {str(k): v for k, v in content.items() if isinstance(v, np.ndarray)}


def read_embedding(path: Path, allow_pickle: bool) -> Embedding:
    content, _ = read_tensors(path, allow_pickle, "embedding")
    tensors = _tensors(content, path)
    if any(key in tensors for key in SDXL_KEYS):
        vectors = {key: tensors[key] for key in SDXL_KEYS if key in tensors}
    elif "emb_params" in tensors:
        vectors = {"": tensors["emb_params"]}
    elif len(tensors) == 1:
        vectors = {"": next(iter(tensors.values()))}
    else:
        raise UsageError(f"embedding {path.name}: holds {len(tensors)} tensors ({', '.join(list(tensors)[:4])}); "
                         "expected one [vectors, width] tensor, or clip_l and clip_g")
    for key, value in vectors.items():
        value = np.asarray(value, dtype=np.float32)
        vectors[key] = value.reshape(1, -1) if value.ndim == 1 else value.reshape(-1, value.shape[-1])
        if vectors[key].size == 0:
            raise UsageError(f"embedding {path.name}: its tensor is empty")
    return Embedding(path.stem, path, vectors)
