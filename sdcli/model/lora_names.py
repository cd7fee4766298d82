"""Layer names: what a LoRA file calls a layer, and what the IR calls its weight.

Both sides are reduced to kohya's flat form, the module path with `_` for `.` and without
the wrappers' prefixes (`self.model.`, `text_model.`), so that
`lora_unet_down_blocks_0_attentions_0_proj_in` (kohya), `unet.down_blocks.0.attentions.0.proj_in`
(diffusers/PEFT) and the IR constant `self.model.down_blocks.0.attentions.0.proj_in.weight`
(sdcli) or `self.down_blocks.0.attentions.0.proj_in.weight` (optimum-cli) meet.

UNet layers named after the original LDM code (`input_blocks_1_1_proj_in`, kohya's SDXL
LoRAs and some SD 1.x ones) are translated to diffusers' names from the UNet's config: how
many layers each block has and which blocks have attention.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

# a weight constant: `<path>.weight`, or `<path>.weight_compressed` in an fp16 IR (a Convert named
# `<path>.weight` widens it)
_IR_CONST = re.compile(rb'<layer\b[^>]*\bname="([^"]+)\.weight(_compressed)?"[^>]*\btype="Const"[^>]*>\s*'
                       rb'<data\b[^>]*\bshape="([^"]*)"')
_WRAPPERS = ("self.", "model.", "text_model.", "__module.")
_LORA_PREFIXES = ("diffusion_model_", "transformer_text_model_", "text_model_")

_RESNET = {"in_layers_2": "conv1", "out_layers_3": "conv2", "emb_layers_1": "time_emb_proj",
           "skip_connection": "conv_shortcut"}
_BLOCK = re.compile(r"^(input_blocks|output_blocks)_(\d+)_(\d+)(?:_(.*))?$")
_MIDDLE = re.compile(r"^middle_block_(\d+)(?:_(.*))?$")
_SIMPLE = {"time_embed_0": "time_embedding_linear_1", "time_embed_2": "time_embedding_linear_2",
           "label_emb_0_0": "add_embedding_linear_1", "label_emb_0_2": "add_embedding_linear_2",
           "out_2": "conv_out", "input_blocks_0_0": "conv_in"}


def flat_ir_name(constant: str) -> str:
    """An IR weight constant's name (without `.weight`) in kohya's flat form."""
    name = constant
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPERS:
            if name.startswith(prefix):
                name, stripped = name[len(prefix):], True
    return name.replace(".", "_")


# a layer as traced from torch: `__module.<path>/aten::linear/MatMul` (found where the weight has lost its
# name, as the convolutions of a hybrid-quantized UNet)
_IR_LAYER = re.compile(rb'<layer\b[^>]*\bname="__module\.([^"/]+)/aten::(?:linear|_convolution)/'
                       rb'(?:MatMul|Convolution)"[^>]*\btype="(?:MatMul|Convolution)"')


@lru_cache(maxsize=8)
def _ir_weights(xml: str, size: int, mtime: int) -> dict[str, tuple[str, int]]:
    found = {}
    data = Path(xml).read_bytes()
    for match in _IR_CONST.finditer(data):
        module = match.group(1).decode("utf-8", "replace")
        suffix = ".weight_compressed" if match.group(2) else ".weight"
        dims = [d.strip() for d in match.group(3).decode("ascii", "replace").split(",") if d.strip()]
        numel = 1
        for d in dims:
            numel *= int(d) if d.isdigit() else 0
        found.setdefault(flat_ir_name(module), (module + suffix, numel))
    for match in _IR_LAYER.finditer(data):
        name = match.group(0).split(b'name="', 1)[1].split(b'"', 1)[0].decode("utf-8", "replace")
        found.setdefault(flat_ir_name(match.group(1).decode("utf-8", "replace")), (name, 0))
    return found


def ir_weights(xml: Path) -> dict[str, tuple[str, int]]:
    """{flat layer name: (IR constant name, number of values)} of the weights in an IR (read
    from its XML); for a weight without its name, (the MatMul or Convolution's name, 0)."""
    st = xml.stat()
    return _ir_weights(str(xml.resolve()), st.st_size, st.st_mtime_ns)


def _layers(config: dict, count: int) -> list[int]:
    value = config.get("layers_per_block", 2)
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)] * count


def _resnet_part(rest: str | None) -> str:
    return _RESNET.get(rest or "", rest or "")


def _join(*parts) -> str:
    return "_".join(str(p) for p in parts if p not in (None, ""))


def ldm_to_diffusers(name: str, unet_config: dict) -> str | None:
    """The diffusers flat name of a UNet layer named after the LDM code, or None when `name`
    is not one."""
    if name in _SIMPLE:
        return _SIMPLE[name]
    downs = list(unet_config.get("down_block_types", []))
    ups = list(unet_config.get("up_block_types", []))
    match = _BLOCK.match(name)
    if match and downs:
        kind, index, part, rest = match.group(1), int(match.group(2)), int(match.group(3)), match.group(4)
        blocks = downs if kind == "input_blocks" else ups
        layers = _layers(unet_config, len(blocks))
        return _down(index, part, rest, downs, layers) if kind == "input_blocks" else \
            _up(index, part, rest, ups, list(reversed(layers)))
    match = _MIDDLE.match(name)
    if match:
        part, rest = int(match.group(1)), match.group(2)
        if part == 1:
            return _join("mid_block_attentions_0", rest)
        return _join(f"mid_block_resnets_{part // 2}", _resnet_part(rest))
    return None


def _down(index: int, part: int, rest, blocks: list, layers: list[int]) -> str | None:
    position = 1
    for d, block in enumerate(blocks):
        for j in range(layers[d]):
            if index == position:
                if part == 0:
                    return _join(f"down_blocks_{d}_resnets_{j}", _resnet_part(rest))
                return _join(f"down_blocks_{d}_attentions_{j}", rest) if "CrossAttn" in block or "Attn" in block else None
            position += 1
        if d < len(blocks) - 1:
            if index == position:
                return _join(f"down_blocks_{d}_downsamplers_0", "conv" if rest == "op" else rest)
            position += 1
    return None


def _up(index: int, part: int, rest, blocks: list, layers: list[int]) -> str | None:
    position = 0
    for u, block in enumerate(blocks):
        attention = "CrossAttn" in block or "Attn" in block
        for j in range(layers[u] + 1):
            if index == position:
                if part == 0:
                    return _join(f"up_blocks_{u}_resnets_{j}", _resnet_part(rest))
                if part == 1 and attention:
                    return _join(f"up_blocks_{u}_attentions_{j}", rest)
                if part == (2 if attention else 1) and j == layers[u] and u < len(blocks) - 1:
                    return _join(f"up_blocks_{u}_upsamplers_0", rest)
                return None
            position += 1
    return None


def lora_layer_candidates(component: str, name: str, unet_config: dict) -> list[str]:
    """The flat names a LoRA module's layer may have in the IR of `component`, most likely first."""
    names = [name]
    for prefix in _LORA_PREFIXES:
        if name.startswith(prefix):
            names.append(name[len(prefix):])
    if component == "unet":
        for candidate in list(names):
            converted = ldm_to_diffusers(candidate, unet_config)
            if converted:
                names.append(converted)
    return names
