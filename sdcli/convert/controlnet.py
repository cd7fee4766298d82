"""`sdcli convert` of a diffusers ControlNetModel (a folder whose config.json says so, a Hub
repo downloaded as models are, or A1111's single file of one: controlnet_file.py) into a
ControlNet folder of IR:

    NAME/openvino_model.xml, .bin   inputs sample, timestep (f32), encoder_hidden_states,
                                    controlnet_cond (RGB in [0, 1]) [+ SDXL's text_embeds, time_ids]
                                    [+ a Union's control_type];
                                    outputs down_block_res_0 ... down_block_res_{n-1}, mid_block_res
    NAME/config.json                the ControlNetModel's config (what base it fits)
    NAME/sdcli.json                 source, weight format

Height and width are dynamic.  The residuals come out unscaled (conditioning_scale 1, no guess
mode): the engine scales them (engine/controlnet.py).

A ControlNet Union (diffusers' ControlNetUnionModel: xinsir's controlnet-union-sdxl-1.0 and its
ProMax; a config whose _class_name says so, or that has num_control_type) is exported for any
number K of control images a call (ProMax's multi-condition use, diffusers'
control_image=[...], control_mode=[...] on one ControlNetUnionModel):

    controlnet_cond [batch, K, 3, H, W]   the K control images
    control_type [batch, num_control_type]   diffusers' multi-hot vector of their modes
    control_type_idx [K] (int64)   each image's mode (its task embedding's row)
    conditioning_scale [K]   each image's scale, applied inside as diffusers does for K > 1

UnionWrapper.forward is ControlNetUnionModel.forward with its loop over the images done on
the K axis at once.  diffusers scales the residuals by the one image's scale when K is 1 (not
inside): the engine then feeds conditioning_scale 1 and scales the residuals itself.  Folders
converted before (controlnet_cond [batch, 3, H, W], a one-hot control_type, no
control_type_idx) still run one image a call (engine/controlnet.py).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from sdcli.convert.ir import model_config, save_ir, write_json
from sdcli.convert.options import ConvertOptions
from sdcli.util.errors import UsageError
from sdcli.util.fsutil import atomic_directory

CLASS_NAME = "ControlNetModel"
UNION_CLASS_NAME = "ControlNetUnionModel"


def is_union_config(config: dict) -> bool:
    return config.get("_class_name") == UNION_CLASS_NAME or "num_control_type" in config


def union_types(path: Path) -> int | None:
    """A ControlNet folder's number of control types as its weights have them (a Union's
    task_embedding rows), None when its weights file has no task_embedding (or is not one
    safetensors file)."""
    from sdcli.convert.controlnet_file import UNION_KEY
    from sdcli.model.tensor_files import safetensors_header

    weights = path / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        return None
    try:
        entry = safetensors_header(weights)[0].get(UNION_KEY)
    except (UsageError, OSError):
        return None
    return int(entry["shape"][0]) if isinstance(entry, dict) else None


def is_controlnet_folder(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file() or (path / "model_index.json").is_file():
        return False
    try:
        return json.loads(config.read_text()).get("_class_name") in (CLASS_NAME, UNION_CLASS_NAME)
    except (OSError, ValueError):
        return False


def residual_names(count: int) -> list[str]:
    return [f"down_block_res_{i}" for i in range(count)] + ["mid_block_res"]


def load_controlnet(source: str, path: Path, opts: ConvertOptions):
    """The ControlNetModel of a diffusers folder, or of a single file (controlnet_file.py), in float32."""
    import torch
    from diffusers import ControlNetModel

    if path.is_file():
        from sdcli.convert.controlnet_file import load_controlnet_file

        return load_controlnet_file(path, opts.allow_pickle, opts.config)
    try:
        types = union_types(path)
        if types is not None or is_union_config(json.loads((path / "config.json").read_text())):
            from diffusers import ControlNetUnionModel

            given = {"num_control_type": types} if types else {}  # (ProMax's weights beside the first config)
            return ControlNetUnionModel.from_pretrained(path, torch_dtype=torch.float32, **given)
        return ControlNetModel.from_pretrained(path, torch_dtype=torch.float32)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise UsageError(f"{source}: not a loadable ControlNet ({exc})") from None


def union_wrapper(model):
    """A ControlNetUnionModel wrapped for export: K control images a call (the module's docstring)."""
    import torch

    class UnionWrapper(torch.nn.Module):
        """ControlNetUnionModel.forward (diffusers 0.42) for K control images at once (K >= 1), no
        guess mode, the residuals unscaled: see the module's docstring."""

        def __init__(self, controlnet):
            super().__init__()
            self.controlnet = controlnet

        def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, text_embeds, time_ids,
                    control_type, control_type_idx, conditioning_scale):
            net = self.controlnet
            t_emb = net.time_proj(timestep.expand(sample.shape[0])).to(sample.dtype)
            emb = net.time_embedding(t_emb)
            time_embeds = net.add_time_proj(time_ids.flatten()).reshape((text_embeds.shape[0], -1))
            aug_emb = net.add_embedding(torch.concat([text_embeds, time_embeds], dim=-1))
            control_embeds = net.control_type_proj(control_type.flatten()).reshape((t_emb.shape[0], -1))
            emb = emb + net.control_add_embedding(control_embeds) + aug_emb
            sample = net.conv_in(sample)
            # the K images' embeddings [batch, K, C, h, w], each with its mode's task embedding
            condition = net.controlnet_cond_embedding(controlnet_cond.flatten(0, 1))
            condition = condition.reshape((controlnet_cond.shape[0], -1) + condition.shape[1:])
            scale = conditioning_scale.reshape(1, -1, 1)
            feat_seq = (torch.mean(condition, dim=(3, 4)) + torch.index_select(net.task_embedding, 0,
                                                                               control_type_idx)) * scale
            x = torch.cat([feat_seq, torch.mean(sample, dim=(2, 3)).unsqueeze(1)], dim=1)
            for layer in net.transformer_layes:
                x = layer(x)
            alpha = net.spatial_ch_projs(x[:, :-1]) * scale  # [batch, K, C]
            fuser = (condition * scale.unsqueeze(-1).unsqueeze(-1) + alpha.unsqueeze(-1).unsqueeze(-1)).sum(dim=1)
            sample = sample + fuser
            down = (sample,)
            for block in net.down_blocks:
                if getattr(block, "has_cross_attention", False):
                    sample, res = block(hidden_states=sample, temb=emb, encoder_hidden_states=encoder_hidden_states)
                else:
                    sample, res = block(hidden_states=sample, temb=emb)
                down += res
            sample = net.mid_block(sample, emb, encoder_hidden_states=encoder_hidden_states)
            down = [block(res) for res, block in zip(down, net.controlnet_down_blocks)]
            return (*down, net.controlnet_mid_block(sample))

    return UnionWrapper(model)


def convert_controlnet(source: str, path: Path, output: Path, opts: ConvertOptions,
                       log: Callable[[str], None] = print) -> Path:
    if opts.weight_format not in ("fp32", "fp16", "int8"):
        raise UsageError(f"--weight-format {opts.weight_format}: a ControlNet converts to fp32, fp16 or int8")
    if path.is_dir() and opts.config:
        raise UsageError(f"--config is for single-file checkpoints; {source} is a ControlNet folder")
    for flag, value in (("--lora", opts.lora), ("--tiny-vae", opts.tiny_vae), ("--quantize", opts.quantize),
                        ("--scheduler", opts.scheduler), ("--timestep-spacing", opts.timestep_spacing)):
        if value:
            raise UsageError(f"{flag} is for models; {source} is a ControlNet")
    import torch
    from openvino import PartialShape, Type

    torch.set_grad_enabled(False)
    log(f"loading {source}")
    model = load_controlnet(source, path, opts)
    cfg = model.config
    xl = cfg.get("addition_embed_type") == "text_time"
    union = is_union_config(dict(cfg)) or type(model).__name__ == UNION_CLASS_NAME
    if union and not xl:
        raise UsageError(f"{source}: a ControlNet Union without SDXL's text_embeds/time_ids is not supported")

    class Wrapper(torch.nn.Module):
        def __init__(self, controlnet):
            super().__init__()
            self.controlnet = controlnet

        def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, text_embeds=None, time_ids=None):
            added = {"text_embeds": text_embeds, "time_ids": time_ids} if text_embeds is not None else None
            down, mid = self.controlnet(sample, timestep, encoder_hidden_states, controlnet_cond,
                                        conditioning_scale=1.0, added_cond_kwargs=added, return_dict=False)
            return (*down, mid)

    lat, factor = 8, 2 ** (len(cfg.conditioning_embedding_out_channels) - 1)
    dim = cfg.cross_attention_dim
    conditions = (2,) if union else ()  # (a Union's K, traced at 2 so that nothing is fixed at 1)
    example = {"sample": torch.randn(2, cfg.in_channels, lat, lat), "timestep": torch.tensor([1.0, 1.0]),
               "encoder_hidden_states": torch.randn(2, 77, dim),
               "controlnet_cond": torch.rand(2, *conditions, cfg.conditioning_channels, lat * factor, lat * factor)}
    inputs = [(PartialShape([-1, cfg.in_channels, -1, -1]), Type.f32), (PartialShape([-1]), Type.f32),
              (PartialShape([-1, -1, dim]), Type.f32),
              (PartialShape([-1, *(-1 for _ in conditions), cfg.conditioning_channels, -1, -1]), Type.f32)]
    if xl:
        time_ids = 6
        pooled = cfg.projection_class_embeddings_input_dim - time_ids * cfg.addition_time_embed_dim
        example.update(text_embeds=torch.randn(2, pooled), time_ids=torch.full((2, time_ids), 64.0))
        inputs += [(PartialShape([-1, pooled]), Type.f32), (PartialShape([-1, time_ids]), Type.f32)]
    if union:
        types = int(cfg.num_control_type)
        modes = [types // 2, 0]
        example["control_type"] = torch.zeros(2, types)
        example["control_type"][:, modes] = 1.0
        example.update(control_type_idx=torch.tensor(modes), conditioning_scale=torch.tensor([1.0, 0.5]))
        inputs += [(PartialShape([-1, types]), Type.f32), (PartialShape([-1]), Type.i64), (PartialShape([-1]), Type.f32)]
    wrapper = union_wrapper(model) if union else Wrapper(model)
    with torch.no_grad():
        count = len(wrapper(**example)) - 1
    from sdcli.convert.ir import to_openvino

    with atomic_directory(output, replace=opts.force) as tmp:
        started = time.perf_counter()
        log("[1/1] controlnet union" if union else "[1/1] controlnet")
        ir = to_openvino(wrapper, example, inputs, residual_names(count))
        save_ir(ir, tmp, opts.weight_format)
        write_json(tmp / "config.json", model_config(model))
        write_json(tmp / "sdcli.json", {"source": source, "weight_format": opts.weight_format,
                                        "converted_in_s": round(time.perf_counter() - started, 1)})
    return output
