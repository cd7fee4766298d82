"""LoRAs for one model folder: a file's modules matched to the layers of the folder's IRs,
and the weight patches (runtime/lora.py) that fuse them.

A LoRA targets "the UNet" (the denoiser, whichever it is: a flow-matching transformer too)
and "text encoder N" (`text_encoder`, `text_encoder_2`).  A module is matched to an IR weight
by name (see model/lora_names.py; the model family says where a module's name may be in its
IR: ModelFamily.lora_layers, which may also split a fused projection's module over separate
layers) and checked by size before anything is computed; a file that matches nothing is an
error, a partly matched one a warning, one for a component the family takes no LoRAs on
(FLUX.2-klein's or Z-Image's text encoder) an error.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdcli.model.folder import ModelFolder
from sdcli.model.lora_file import LoraModule, parse_lora
from sdcli.model.lora_names import ir_weights
from sdcli.model.tensor_files import read_tensors
from sdcli.runtime.lora import WeightPatch
from sdcli.util.errors import UsageError

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
SHOWN = 3  # unmatched keys named in a message


@dataclass
class LoraFile:
    """A LoRA file read and split into modules."""

    path: Path
    modules: list[LoraModule]
    metadata: dict[str, str]
    identity: tuple  # (path, size, mtime): what the compiled blobs are keyed by
    stray: list[str]  # keys that are no LoRA tensor sdcli reads (OFT, norm, GLoRA, ...)

    @classmethod
    def read(cls, path: Path, allow_pickle: bool) -> "LoraFile":
        content, metadata = read_tensors(path, allow_pickle, "LoRA")
        if isinstance(content, tuple):
            content = content[0]
        if not isinstance(content, dict):
            raise UsageError(f"LoRA {path.name}: holds no table of tensors")
        if "state_dict" in content and isinstance(content["state_dict"], dict):
            content = content["state_dict"]
        modules, stray = parse_lora(content)
        if not modules:
            first = ", ".join(list(content)[:SHOWN])
            raise UsageError(f"LoRA {path.name}: no LoRA tensors in it (lora_down/lora_up, lora_A/lora_B, hada_*, "
                             f"lokr_*; its first keys: {first or 'none'})")
        st = path.stat()
        return cls(path, modules, metadata, (str(path.resolve()), st.st_size, st.st_mtime_ns), stray)


@dataclass
class LoraUse:
    """One `<lora:...>` of a prompt: the file and its multipliers."""

    name: str  # as the prompt names it
    file: LoraFile
    te: float = 1.0
    unet: float = 1.0
    dyn: int | None = None

    def multiplier(self, component: str) -> float:
        return self.unet if component == "unet" else self.te


def ir_component(folder: ModelFolder, component: str) -> str:
    """The IR a LoRA component is fused into: "unet" is the folder's denoiser (unet or transformer)."""
    return folder.denoiser if component == "unet" else component


def _layer_tables(folder: ModelFolder) -> dict[str, dict[str, tuple[str, int]]]:
    irs = {c: folder.ir(ir_component(folder, c)) for c in COMPONENTS}
    return {c: ir_weights(path) for c, path in irs.items() if path.is_file()}


def match_modules(lora: LoraFile, folder: ModelFolder, family) -> tuple[dict[str, list[tuple[LoraModule, str]]],
                                                                         list[str]]:
    """({component: [(module, IR constant)]}, keys of the modules that match no layer);
    `family`: the folder's ModelFamily (where its IRs have a module's layer, which components
    take LoRAs).

    UsageError when a matched layer's weight has another size than the module's ΔW (a LoRA
    made for another base model), or for a module of a component the family takes no LoRAs on."""
    tables = _layer_tables(folder)
    matched: dict[str, list[tuple[LoraModule, str]]] = {}
    unmatched = []
    for module in lora.modules:
        if module.component not in family.lora_components:
            raise UsageError(f"LoRA {lora.path.name} changes the text encoder ({module.key}): LoRAs on a "
                             f"{family.name} model's text encoder are not supported yet (on its transformer they are)")
        table = tables.get(module.component, {})
        layers = next((names for names in family.lora_layers(module.component, module.name)
                       if all(n in table for n in names)), None)
        parts = None if layers is None or module.kind is None else \
            [module] if len(layers) == 1 else module.split(len(layers))
        if parts is None:
            unmatched.append(module.key)
            continue
        for part, name in zip(parts, layers):
            constant, size = table[name]
            wanted = part.delta_size()
            if size and wanted != size:
                raise UsageError(f"LoRA {lora.path.name} does not fit this model: {module.key} changes "
                                 f"{constant.removesuffix('_compressed').removesuffix('.weight')}, whose weight has "
                                 f"{size} values, by {wanted} (a LoRA for another base model?)")
            matched.setdefault(module.component, []).append((part, constant))
    return matched, unmatched


def check_matches(lora: LoraFile, folder: ModelFolder, family) -> tuple[dict, str | None]:
    """match_modules, with a UsageError for a file that matches nothing and a note for one
    that matches in part."""
    matched, unmatched = match_modules(lora, folder, family)
    if not matched:
        raise UsageError(f"LoRA {lora.path} matches nothing in this model (its first keys: "
                         f"{', '.join((unmatched + lora.stray)[:SHOWN])}): a LoRA for another kind of model, or a "
                         "format sdcli does not read")
    notes = []
    if unmatched:
        notes.append(f"{len(unmatched)} of {len(lora.modules)} layers match nothing in this model or are of a kind "
                     f"sdcli does not read, and are left out (first: {', '.join(unmatched[:SHOWN])})")
    if lora.stray:
        notes.append(f"{len(lora.stray)} tensors are not a LoRA's, and are left out (first: "
                     f"{', '.join(lora.stray[:SHOWN])})")
    return matched, f"LoRA {lora.path.name}: {'; '.join(notes)}" if notes else None


def _delta_for(entries: list[tuple[LoraModule, LoraUse]], component: str):
    def delta(shape: tuple[int, ...]) -> np.ndarray:
        total = None
        for module, use in entries:
            try:
                change = module.delta(shape, use.dyn, use.multiplier(component))
            except ValueError as exc:
                raise UsageError(f"LoRA {use.file.path.name}: {exc}") from None
            if total is None:
                total = change
            else:
                total = np.add(total, change, out=total if total.flags.writeable else None)
        return total

    return delta


def weight_patch(uses: list[LoraUse], matches: list[dict], component: str) -> WeightPatch | None:
    """The patch fusing `uses` (each with its match_modules table) into `component`, or None
    when none of them changes it (or all at multiplier 0)."""
    by_constant: dict[str, list[tuple[LoraModule, LoraUse]]] = {}
    identity = []
    for use, matched in zip(uses, matches):
        entries = matched.get(component, [])
        if not entries or use.multiplier(component) == 0:
            continue
        identity.append([*use.file.identity, use.multiplier(component), use.dyn])
        for module, constant in entries:
            by_constant.setdefault(constant, []).append((module, use))
    if not by_constant:
        return None
    tag = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:12]
    return WeightPatch(tag, {constant: _delta_for(entries, component) for constant, entries in by_constant.items()})
