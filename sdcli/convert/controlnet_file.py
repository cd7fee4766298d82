"""A1111's single-file ControlNets (`control_v11p_sd15_canny.pth`, `…_openpose.safetensors`, or a
diffusers ControlNet's weights in one file such as `diffusers_xl_canny_full.safetensors`) read
into a diffusers ControlNetModel, which controlnet.py exports as it exports a folder.  A ControlNet
Union's file (xinsir's `diffusion_pytorch_model_promax.safetensors`: diffusers' names, with a
task_embedding) becomes a ControlNetUnionModel the same way (its union parts' sizes from their
tensors; its transformer's heads, which shapes cannot tell, xinsir's 8).

The file holds the original (LDM) tensor names, `control_model.input_blocks.…`, `zero_convs.…`,
`input_hint_block.…`, `middle_block_out.…` (some files without the `control_model.` prefix), or
diffusers' names.  There is no config in it: the diffusers config is worked out from the tensor
shapes (block widths, resnets a level, where the attention is and how deep, the context width,
linear or 1x1-conv projections, SDXL's added embedding), and what shapes cannot tell is taken
from the base the file fits, told by the context width of its attention (768 SD 1.x,
1024 SD 2.x, 2048 SDXL), as the original configs have it:

  * heads: 8 a block for SD 1.x; 64 channels a head for SD 2.x and SDXL (another width: 8 heads
    with 1x1-conv projections, as SD 1.x, 64 channels a head with linear ones);
  * GroupNorm's 32 groups, SDXL's 256-wide time-id embedding;
  * global_pool_conditions for an SD 1.x/2.x file with "shuffle" in its name, as the extension
    gives the shuffle ControlNet its global average pooling.

`--config DIR` (a diffusers ControlNet folder) gives the config instead.  diffusers' own
single-file loader (ControlNetModel.from_single_file, given the config in a temporary folder so
nothing is downloaded) maps the names.  Pickles are read only with --allow-pickle, by sdcli's
tensor-only unpickler (model/tensor_files.py).
"""
from __future__ import annotations

import json
import re
import tempfile
from functools import lru_cache
from pathlib import Path

from sdcli.model.tensor_files import PICKLE_SUFFIXES, read_safetensors, read_torch_pickle, safetensors_header
from sdcli.util.errors import UsageError

LDM_PREFIX = "control_model."
DIFFUSERS_KEY = "controlnet_cond_embedding.conv_in.weight"
HINT_OUT = 14  # diffusers' converter takes input_hint_block.14 for the embedding's last conv
HEAD_CHANNELS = 64  # SD 2.x and SDXL
SD1_HEADS, SD1_CONTEXT = 8, 768
SDXL_TIME_EMBED = 256


def _unwrap(content):
    """A torch.save file's state dict (some hold it under "state_dict")."""
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        return content["state_dict"]
    return content if isinstance(content, dict) else {}


@lru_cache(maxsize=4)
def _shapes(path: Path, allow_pickle: bool) -> tuple[tuple[str, tuple[int, ...]], ...]:
    if path.suffix.lower() == ".safetensors":
        header, _ = safetensors_header(path)
        return tuple((k, tuple(v["shape"])) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict))
    if path.suffix.lower() in PICKLE_SUFFIXES and allow_pickle:
        return tuple((k, tuple(getattr(v, "shape", ()))) for k, v in _unwrap(read_torch_pickle(path)).items())
    return ()


def layout(names) -> str | None:
    """"ldm" (the original names, with or without control_model.), "diffusers", or None: not a ControlNet."""
    names = set(names)
    if DIFFUSERS_KEY in names and "controlnet_mid_block.weight" in names:
        return "diffusers"
    stripped = {n[len(LDM_PREFIX):] if n.startswith(LDM_PREFIX) else n for n in names}
    if {"input_hint_block.0.weight", "middle_block_out.0.weight", "zero_convs.0.0.weight"} <= stripped:
        return "ldm"
    return None


def controlnet_file(path: Path, allow_pickle: bool) -> str | None:
    """The layout of the ControlNet in checkpoint `path`, or None (not one, not readable, or a
    pickle without `allow_pickle`)."""
    try:
        return layout(name for name, _ in _shapes(path, allow_pickle))
    except (UsageError, OSError):
        return None


def strip_prefix(state: dict) -> dict:
    """An LDM file's ControlNet tensors without the control_model. prefix; where the prefix is
    there, only those (ControlNet 1.0's files hold a whole SD model beside them)."""
    if not any(k.startswith(LDM_PREFIX) for k in state):
        return state
    return {k[len(LDM_PREFIX):]: v for k, v in state.items() if k.startswith(LDM_PREFIX)}


def _ldm_shapes(shapes: dict) -> dict:
    """{LDM name without prefix: shape}; a diffusers-named file's names renamed to LDM's for the config."""
    if layout(shapes) == "diffusers":
        return {ldm_name(k, shapes): v for k, v in shapes.items()}
    return strip_prefix(shapes)


RESNET_NAMES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def ldm_name(name: str, names) -> str:
    """The LDM name of a diffusers ControlNetModel tensor `name` (`names`: all of the model's,
    for the resnets a level and the conditioning embedding's length)."""
    per_level = 1 + max(int(m.group(1)) for m in (re.match(r"down_blocks\.0\.resnets\.(\d+)\.", n) for n in names) if m)
    hints = 1 + max(int(m.group(1)) for m in (re.match(r"controlnet_cond_embedding\.blocks\.(\d+)\.", n) for n in names)
                    if m)
    fixed = [(r"time_embedding\.linear_1\.", "time_embed.0."), (r"time_embedding\.linear_2\.", "time_embed.2."),
             (r"add_embedding\.linear_1\.", "label_emb.0.0."), (r"add_embedding\.linear_2\.", "label_emb.0.2."),
             (r"conv_in\.", "input_blocks.0.0."), (r"controlnet_cond_embedding\.conv_in\.", "input_hint_block.0."),
             (r"controlnet_cond_embedding\.conv_out\.", f"input_hint_block.{2 * hints + 2}."),
             (r"controlnet_mid_block\.", "middle_block_out.0.")]
    for pattern, ldm in fixed:
        if re.match(pattern, name):
            return re.sub("^" + pattern, ldm, name)
    if m := re.match(r"controlnet_cond_embedding\.blocks\.(\d+)\.(.*)", name):
        return f"input_hint_block.{2 * int(m.group(1)) + 2}.{m.group(2)}"
    if m := re.match(r"controlnet_down_blocks\.(\d+)\.(.*)", name):
        return f"zero_convs.{m.group(1)}.0.{m.group(2)}"
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.*)", name):
        level, part, index, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
        block = 1 + level * (per_level + 1) + (per_level if part == "downsamplers" else index)
        if part == "downsamplers":
            return f"input_blocks.{block}.0.op.{rest.split('.', 1)[1]}"
        return f"input_blocks.{block}.{1 if part == 'attentions' else 0}.{_resnet(rest) if part == 'resnets' else rest}"
    if m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", name):
        part, index, rest = m.groups()
        return (f"middle_block.{2 * int(index)}.{_resnet(rest)}" if part == "resnets"
                else f"middle_block.1.{rest}")
    return name


def _resnet(rest: str) -> str:
    first, _, tail = rest.partition(".")
    return f"{RESNET_NAMES.get(first, first)}.{tail}"


def _levels(shapes: dict) -> list[dict]:
    """Each down level of the input blocks: channels, resnets, transformer depth (0: no attention)."""
    levels, current, i = [], None, 1
    while any(k.startswith(f"input_blocks.{i}.") for k in shapes):
        if f"input_blocks.{i}.0.op.weight" in shapes:
            levels.append(current)
            current = None
        else:
            if current is None:
                current = {"channels": shapes[f"input_blocks.{i}.0.out_layers.3.weight"][0], "resnets": 0, "depth": 0}
            current["resnets"] += 1
            current["depth"] = _depth(shapes, f"input_blocks.{i}.1.")
        i += 1
    if current is not None:
        levels.append(current)
    return levels


def _depth(shapes: dict, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"transformer_blocks\.(\d+)\.")
    found = {int(m.group(1)) for m in map(pattern.match, shapes) if m}
    return 1 + max(found) if found else 0


def infer_config(shapes: dict) -> dict:
    """The diffusers ControlNetModel config of a single file's tensors ({name: shape}, either layout)."""
    s = _ldm_shapes(shapes)
    try:
        levels = _levels(s)
        per_level = {level["resnets"] for level in levels}
        if len(per_level) != 1:
            raise UsageError(f"its down levels have different numbers of resnets ({sorted(per_level)})")
        k_weights = [v for k, v in s.items() if k.endswith("attn2.to_k.weight")]
        proj = [v for k, v in s.items() if k.endswith("proj_in.weight")]
        if not k_weights or not proj:
            raise UsageError("it has no cross-attention")
        context, linear = k_weights[0][1], len(proj[0]) == 2
        widths = [level["channels"] for level in levels]
        if linear and context != SD1_CONTEXT:
            if any(w % HEAD_CHANNELS for w in widths):
                raise UsageError(f"its widths {widths} are not multiples of {HEAD_CHANNELS} channels a head")
            heads = [w // HEAD_CHANNELS for w in widths]
        else:
            heads = SD1_HEADS
        hint = sorted(int(k.split(".")[1]) for k in s if re.fullmatch(r"input_hint_block\.\d+\.weight", k))
        embedding = [s[f"input_hint_block.{hint[0]}.weight"][0]] + [s[f"input_hint_block.{i}.weight"][0]
                                                                  for i in hint[2:-1:2]]
        depths = [level["depth"] or 1 for level in levels]
        mid_depth = _depth(s, "middle_block.1.")
        config = {
            "_class_name": "ControlNetModel", "in_channels": s["input_blocks.0.0.weight"][1],
            "conditioning_channels": s["input_hint_block.0.weight"][1],
            "conditioning_embedding_out_channels": embedding, "block_out_channels": widths,
            "down_block_types": ["CrossAttnDownBlock2D" if level["depth"] else "DownBlock2D" for level in levels],
            "layers_per_block": per_level.pop(), "cross_attention_dim": context, "attention_head_dim": heads,
            "use_linear_projection": linear,
            "transformer_layers_per_block": depths if len(set(depths)) > 1 else depths[0],
            "mid_block_type": "UNetMidBlock2DCrossAttn" if mid_depth else "UNetMidBlock2D",
        }
        if mid_depth and mid_depth != depths[-1]:
            raise UsageError(f"its middle block's depth {mid_depth} is not its last level's {depths[-1]}")
        if "label_emb.0.0.weight" in s:
            config.update(addition_embed_type="text_time", addition_time_embed_dim=SDXL_TIME_EMBED,
                          projection_class_embeddings_input_dim=s["label_emb.0.0.weight"][1])
    except (KeyError, IndexError, ValueError) as exc:
        raise UsageError(f"cannot tell its architecture from its tensors (missing {exc})") from None
    return config


def _state_dict(path: Path) -> dict:
    """The file's tensors as torch tensors (an LDM file's names without the prefix)."""
    import numpy as np
    import torch

    if path.suffix.lower() == ".safetensors":
        content = read_safetensors(path)[0]
    else:
        content = _unwrap(read_torch_pickle(path))
    state = {k: torch.from_numpy(np.array(v)) for k, v in content.items() if hasattr(v, "shape")}
    return state if layout(state) == "diffusers" else strip_prefix(state)


def diffusers_state_dict(state: dict, config: dict, name: str) -> dict:
    """An LDM state dict renamed by diffusers' converter, with what it leaves out: SDXL's added
    embedding (label_emb), and a conditioning embedding whose last conv is not at index 14."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    if layout(state) == "diffusers":
        return state
    state = dict(state)
    last = max(int(k.split(".")[1]) for k in state if k.startswith("input_hint_block."))
    if last > HINT_OUT:
        raise UsageError(f"{name}: its conditioning embedding has more convolutions than diffusers reads")
    for suffix in ("weight", "bias"):
        if last != HINT_OUT and f"input_hint_block.{last}.{suffix}" in state:
            state[f"input_hint_block.{HINT_OUT}.{suffix}"] = state.pop(f"input_hint_block.{last}.{suffix}")
    converted = convert_controlnet_checkpoint(state, config)
    for linear, index in (("linear_1", 0), ("linear_2", 2)):
        for suffix in ("weight", "bias"):
            if f"label_emb.0.{index}.{suffix}" in state:
                converted[f"add_embedding.{linear}.{suffix}"] = state[f"label_emb.0.{index}.{suffix}"]
    return converted


UNION_KEY = "task_embedding"  # a ControlNet Union's (xinsir's files have diffusers' names)
UNION_HEADS = 8  # xinsir's num_trans_head: the tensors' shapes do not tell it


def union_config(shapes: dict) -> dict:
    """The ControlNetUnionModel config of a Union's tensors ({diffusers name: shape}): the SDXL
    ControlNet's inferred as for any file, with the union parts' sizes from their tensors."""
    config = infer_config(shapes)
    layers = {int(m.group(1)) for m in (re.match(r"transformer_layes\.(\d+)\.", n) for n in shapes) if m}
    types, width = shapes[UNION_KEY]
    config.update(_class_name="ControlNetUnionModel", num_control_type=types, num_trans_channel=width,
                  num_proj_channel=shapes["spatial_ch_projs.weight"][0], num_trans_head=UNION_HEADS,
                  num_trans_layer=1 + max(layers) if layers else 1)
    return config


def load_union_file(path: Path, state: dict, config_dir: str | None):
    """A ControlNet Union's single file (xinsir's diffusion_pytorch_model[_promax].safetensors) as
    a ControlNetUnionModel in float32; `config_dir`: its folder's config instead of the inferred
    one (num_control_type taken from the file: ProMax's 8 beside the first Union's 6)."""
    from diffusers import ControlNetUnionModel

    if layout(state) != "diffusers":
        raise UsageError(f"{path.name}: a ControlNet Union in the original (LDM) names is not supported")
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    if config_dir is None:
        config = union_config(shapes)
    else:
        try:
            config = dict(ControlNetUnionModel.load_config(config_dir, local_files_only=True))
        except (OSError, ValueError) as exc:
            raise UsageError(f"--config {config_dir}: not a ControlNet folder ({str(exc).splitlines()[0]})") from None
        config["num_control_type"] = shapes[UNION_KEY][0]
    try:
        model = ControlNetUnionModel.from_config({k: v for k, v in config.items() if not k.startswith("_")})
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UsageError(f"cannot load {path.name} as a ControlNet Union: {first}") from None
    return model.float().eval()


def load_controlnet_file(path: Path, allow_pickle: bool, config_dir: str | None = None):
    """The file's ControlNetModel in float32 (`config_dir`: a diffusers ControlNet folder whose
    config.json describes it, instead of the inferred config)."""
    import torch
    from diffusers import ControlNetModel

    if path.suffix.lower() != ".safetensors" and not allow_pickle:
        raise UsageError(f"{path.name} is a pickle ({path.suffix}), which can run code when loaded: pass "
                         "--allow-pickle if you trust it, or use a .safetensors version")
    state = _state_dict(path)
    if UNION_KEY in state:
        return load_union_file(path, state, config_dir)
    if config_dir is None:
        config = infer_config({k: tuple(v.shape) for k, v in state.items()})
        if "addition_embed_type" not in config and "shuffle" in path.stem.lower():
            config["global_pool_conditions"] = True  # (the extension's rule for an SD 1.x/2.x file: shuffle's)
    else:
        try:
            config = ControlNetModel.load_config(config_dir, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--config {config_dir}: not a ControlNet folder ({str(exc).splitlines()[0]})") from None
    with tempfile.TemporaryDirectory(prefix="sdcli-controlnet-") as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(config))
        try:
            model = ControlNetModel.from_single_file(diffusers_state_dict(state, config, path.name), config=tmp,
                                                     local_files_only=True, torch_dtype=torch.float32)
        except UsageError:
            raise
        except Exception as exc:  # diffusers raises many kinds here; the first line says which
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise UsageError(f"cannot load {path.name} as a ControlNet: {first}") from None
    empty = sum(t.is_meta for t in [*model.parameters(), *model.buffers()])
    if empty:
        raise UsageError(f"cannot load {path.name}: it has no weights for {empty} of its ControlNet's tensors "
                         "(an incomplete file, or an architecture sdcli read wrongly: try --config)")
    return model.eval()
