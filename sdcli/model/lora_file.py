"""LoRA files as people download them, to weight differences (ΔW) per layer, in numpy.

Formats (the tensor names of one layer share a prefix, the module, and differ in suffix):

* kohya / A1111: `lora_unet_<module>`, `lora_te_<module>` (SDXL: `lora_te1_`, `lora_te2_`),
  the module path with `_` for `.`, in diffusers' block names (`down_blocks_0_attentions_0_...`)
  or the original LDM ones (`input_blocks_1_1_...`, which is how kohya writes SDXL LoRAs);
  `lora_down.weight` / `lora_up.weight` (linear, 1x1 and 3x3 convolutions: LoCon), an
  optional `lora_mid.weight` (LyCORIS' Tucker form) and `alpha`.
* diffusers / PEFT: `unet.<module>.lora_A.weight` / `lora_B.weight` (`text_encoder.`,
  `text_encoder_2.`), optionally with `alpha`; diffusers' older `..._lora.down.weight` too.
  A flow-matching transformer's (Z-Image, FLUX.2): `transformer.<module>` (diffusers/PEFT),
  `diffusion_model.<module>` (ai-toolkit), `lora_unet_<module>` (kohya), all read as the
  denoiser's ("unet"); the family maps their names onto its IR (ModelFamily.lora_layers).
* LyCORIS LoHa: `hada_w1_a`, `hada_w1_b`, `hada_w2_a`, `hada_w2_b` (Tucker: `hada_t1`, `hada_t2`).
* LyCORIS LoKr: `lokr_w1` or `lokr_w1_a`/`lokr_w1_b`, `lokr_w2` or `lokr_w2_a`/`lokr_w2_b`
  (Tucker: `lokr_t2`).

Scaling is A1111's: a module's ΔW is multiplied by its `scale` tensor when it has one, else
by alpha / rank when it has an alpha (rank: the down matrix's rows; for LoKr, the rank of
its decomposed factor, and 1 when neither factor is decomposed), else by 1; the prompt's
multiplier comes on top (engine/networks.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

# Suffixes of the tensors of one module, longest first so that `lora_A.default.weight` wins.
SUFFIXES = sorted([
    "lora_up.weight", "lora_down.weight", "lora_mid.weight", "alpha", "scale",
    "lora_A.weight", "lora_B.weight", "lora_A.default.weight", "lora_B.default.weight",
    "lora.up.weight", "lora.down.weight", "lora_linear_layer.up.weight", "lora_linear_layer.down.weight",
    "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
    "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
    "diff", "diff_b", "dora_scale", "bias", "on_input", "weight",
], key=len, reverse=True)

_UP_DOWN = {
    "lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight",
    "lora_A.default.weight": "lora_down.weight", "lora_B.default.weight": "lora_up.weight",
    "lora.down.weight": "lora_down.weight", "lora.up.weight": "lora_up.weight",
    "lora_linear_layer.down.weight": "lora_down.weight", "lora_linear_layer.up.weight": "lora_up.weight",
}

# module prefix -> the component it targets (kohya's and diffusers' names)
_COMPONENTS = [
    ("lora_unet_", "unet"), ("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2"),
    ("lora_te_", "text_encoder"), ("unet.", "unet"), ("text_encoder_2.", "text_encoder_2"),
    ("text_encoder.", "text_encoder"), ("base_model.model.", "unet"),
    # the flow-matching transformers' (Z-Image, FLUX.2): diffusers/PEFT's and ai-toolkit's; "unet" is the denoiser
    ("transformer.", "unet"), ("diffusion_model.", "unet"),
]
# diffusers' attention-processor LoRAs: `attn1.processor.to_q_lora` is `attn1.to_q`
_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora$")


@dataclass
class LoraModule:
    """The tensors of one layer's LoRA, by suffix (`lora_down.weight`, `hada_w1_a`, ...)."""

    component: str  # "unet", "text_encoder", "text_encoder_2"
    name: str  # the module path with "_" for ".", as kohya writes it
    key: str  # the module as the file names it (for messages)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def kind(self) -> str | None:
        t = self.tensors
        if "dora_scale" in t:  # DoRA: a magnitude rescale of W + ΔW, not read
            return None
        if "lora_up.weight" in t and "lora_down.weight" in t:
            return "lora"
        if all(k in t for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")):
            return "loha"
        if ("lokr_w1" in t or {"lokr_w1_a", "lokr_w1_b"} <= t.keys()) and \
                ("lokr_w2" in t or {"lokr_w2_a", "lokr_w2_b"} <= t.keys()):
            return "lokr"
        if "diff" in t:
            return "full"
        return None

    def delta_size(self) -> int | None:
        """How many values ΔW has (the layer's weight must have as many), from the shapes alone."""
        t = {k: v.shape for k, v in self.tensors.items()}
        kind = self.kind
        if kind == "lora":
            if "lora_mid.weight" in t:
                return int(t["lora_up.weight"][0] * t["lora_down.weight"][1] * np.prod(t["lora_mid.weight"][2:]))
            return int(t["lora_up.weight"][0] * np.prod(t["lora_down.weight"][1:]))
        if kind == "loha":
            if "hada_t1" in t:
                return int(t["hada_w1_a"][1] * t["hada_w1_b"][1] * np.prod(t["hada_t1"][2:]))
            return int(t["hada_w1_a"][0] * np.prod(t["hada_w1_b"][1:]))
        if kind == "lokr":
            one = t["lokr_w1"] if "lokr_w1" in t else (t["lokr_w1_a"][0], t["lokr_w1_b"][1])
            if "lokr_w2" in t:
                two = int(np.prod(t["lokr_w2"]))
            elif "lokr_t2" in t:
                two = int(t["lokr_w2_a"][1] * t["lokr_w2_b"][1] * np.prod(t["lokr_t2"][2:]))
            else:
                two = int(t["lokr_w2_a"][0] * np.prod(t["lokr_w2_b"][1:]))
            return int(np.prod(one)) * two
        if kind == "full":
            return int(np.prod(t["diff"]))
        return None

    def _f32(self, suffix: str) -> np.ndarray | None:
        value = self.tensors.get(suffix)
        return None if value is None else np.asarray(value, dtype=np.float32)

    def _scale(self, dim: int | None) -> float:
        scale, alpha = self._f32("scale"), self._f32("alpha")
        if scale is not None:
            return float(scale.reshape(-1)[0])
        if dim and alpha is not None:
            return float(alpha.reshape(-1)[0]) / dim
        return 1.0

    def delta(self, shape: tuple[int, ...], dyn_dim: int | None = None, factor: float = 1.0) -> np.ndarray:
        """ΔW for a layer whose weight has `shape` (torch's layout: [out, in] or [out, in, kh, kw]),
        scaled by the module's alpha/rank or scale and by `factor` (the prompt's multiplier),
        which are applied to the smallest factor of the product; float32, writable."""
        kind = self.kind
        scale = np.float32(self._scale(self._rank(kind)) * factor)
        if kind == "lora":
            delta = self._lora(shape, dyn_dim, scale)
        elif kind == "loha":
            delta = self._loha(shape, scale)
        elif kind == "lokr":
            delta = self._lokr(shape, scale)
        elif kind == "full":
            delta = self._f32("diff") * scale
        else:
            raise ValueError(f"{self.key}: not a LoRA, LoHa or LoKr module")
        if delta.size != int(np.prod(shape)):
            raise ValueError(f"{self.key}: its ΔW has {delta.size} values, the layer's weight {list(shape)}")
        return delta.reshape(shape)

    def split(self, parts: int) -> list["LoraModule"] | None:
        """The module as `parts` modules, each with an equal share of the rows of its up matrix
        (its output features) and the whole down matrix and alpha: a LoRA on a fused projection
        (FLUX's qkv) for a model whose layers are the separate projections; ΔW of part i is the
        fused ΔW's rows of part i exactly.  None where that cannot be done (not a plain LoRA, or
        rows not divisible)."""
        up = self.tensors.get("lora_up.weight")
        if self.kind != "lora" or "lora_mid.weight" in self.tensors or up.shape[0] % parts:
            return None
        rows = up.shape[0] // parts
        return [LoraModule(self.component, self.name, self.key,
                           {**self.tensors, "lora_up.weight": up[i * rows:(i + 1) * rows]}) for i in range(parts)]

    def _rank(self, kind: str | None) -> int | None:
        """The rank alpha is divided by (A1111's `dim`)."""
        t = self.tensors
        if kind == "lora":
            return t["lora_down.weight"].shape[0]
        if kind == "loha":
            return t["hada_w1_b"].shape[0]
        if kind == "lokr":  # the rank of a decomposed factor, w2's when both are; none when neither is
            for key in ("lokr_w2_b", "lokr_w1_b"):
                if key in t:
                    return t[key].shape[0]
        return None

    def _lora(self, shape, dyn_dim, scale):
        up, down, mid = self._f32("lora_up.weight"), self._f32("lora_down.weight"), self._f32("lora_mid.weight")
        up2, down2 = up.reshape(up.shape[0], -1) * scale, down.reshape(down.shape[0], -1)
        if mid is not None:  # Tucker: up [out, r], mid [r, r', kh, kw], down [r', in]
            return np.einsum("nmkl,in,mj->ijkl", mid, up2, down2)
        if dyn_dim is not None:
            up2, down2 = up2[:, :dyn_dim], down2[:dyn_dim]
        return up2 @ down2

    @staticmethod
    def _tucker(t: np.ndarray, wa: np.ndarray, wb: np.ndarray) -> np.ndarray:
        # t [r, r', kh, kw] with wb [r', in] and wa [r, out] -> [out, in, kh, kw]
        return np.einsum("ijkl,ir->rjkl", np.einsum("ijkl,jr->irkl", t, wb), wa)

    def _loha(self, shape, scale):
        w1a, w1b, w2a, w2b = (self._f32(k) for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"))
        w1a = w1a * scale
        t1, t2 = self._f32("hada_t1"), self._f32("hada_t2")
        one = self._tucker(t1, w1a, w1b) if t1 is not None else w1a.reshape(w1a.shape[0], -1) @ w1b.reshape(w1b.shape[0], -1)
        two = self._tucker(t2, w2a, w2b) if t2 is not None else w2a.reshape(w2a.shape[0], -1) @ w2b.reshape(w2b.shape[0], -1)
        return one.reshape(-1) * two.reshape(-1)

    def _lokr(self, shape, scale):
        w1 = self._f32("lokr_w1")
        if w1 is None:
            w1 = self._f32("lokr_w1_a") @ self._f32("lokr_w1_b")
        w1 = w1 * scale  # the small factor
        w2 = self._f32("lokr_w2")
        if w2 is None:
            w2a, w2b, t2 = self._f32("lokr_w2_a"), self._f32("lokr_w2_b"), self._f32("lokr_t2")
            w2 = self._tucker(t2, w2a, w2b) if t2 is not None else w2a @ w2b.reshape(w2b.shape[0], -1)
        if w2.ndim == 4:  # a convolution's full kernel
            return np.kron(w1[:, :, None, None], w2)
        return np.kron(w1, w2.reshape(w2.shape[0], -1))  # kernel positions, if any, in the columns


def _split_key(key: str) -> tuple[str, str] | None:
    for suffix in SUFFIXES:
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], suffix
    return None


def _target(module: str) -> tuple[str, str] | None:
    """(component, kohya-style flat name) of a module as a file names it, or None."""
    for prefix, component in _COMPONENTS:
        if module.startswith(prefix):
            rest = module[len(prefix):]
            if prefix.endswith("."):
                rest = _PROCESSOR.sub(lambda m: "." + m.group(1) + (".0" if m.group(1) == "to_out" else ""), rest)
            return component, rest.replace(".", "_")
    return None


def parse_lora(tensors: dict[str, np.ndarray]) -> tuple[list[LoraModule], list[str]]:
    """The modules of a LoRA state dict, and the keys that are not a LoRA's."""
    modules: dict[str, LoraModule] = {}
    stray: list[str] = []
    for key, value in tensors.items():
        split = _split_key(key)
        target = _target(split[0]) if split else None
        if target is None or not isinstance(value, np.ndarray):
            stray.append(key)
            continue
        module, suffix = split
        entry = modules.get(module)
        if entry is None:
            entry = modules[module] = LoraModule(target[0], target[1], module)
        entry.tensors[_UP_DOWN.get(suffix, suffix)] = value
    return list(modules.values()), stray
