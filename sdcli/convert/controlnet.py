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
ProMax; a config whose _class_name says so, or that has num_control_type) is exported for one
control image a call, as diffusers runs it with one image: its extra input control_type is
diffusers' one-hot vector [batch, num_control_type], and the control image's task embedding is
the row of that vector's one (control_type_idx).  The engine runs a Union once per unit.
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

    class UnionWrapper(torch.nn.Module):
        """One control image a call: control_type is diffusers' one-hot vector (the same on every
        row), and its one is the image's control_type_idx (a gather from task_embedding)."""

        def __init__(self, controlnet):
            super().__init__()
            self.controlnet = controlnet

        def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, text_embeds, time_ids,
                    control_type):
            index = torch.argmax(control_type[0])
            down, mid = self.controlnet(sample, timestep, encoder_hidden_states, [controlnet_cond],
                                        control_type=control_type, control_type_idx=[index], conditioning_scale=1.0,
                                        added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids},
                                        return_dict=False)
            return (*down, mid)

    lat, factor = 8, 2 ** (len(cfg.conditioning_embedding_out_channels) - 1)
    dim = cfg.cross_attention_dim
    example = {"sample": torch.randn(2, cfg.in_channels, lat, lat), "timestep": torch.tensor([1.0, 1.0]),
               "encoder_hidden_states": torch.randn(2, 77, dim),
               "controlnet_cond": torch.rand(2, cfg.conditioning_channels, lat * factor, lat * factor)}
    inputs = [(PartialShape([-1, cfg.in_channels, -1, -1]), Type.f32), (PartialShape([-1]), Type.f32),
              (PartialShape([-1, -1, dim]), Type.f32), (PartialShape([-1, cfg.conditioning_channels, -1, -1]), Type.f32)]
    if xl:
        time_ids = 6
        pooled = cfg.projection_class_embeddings_input_dim - time_ids * cfg.addition_time_embed_dim
        example.update(text_embeds=torch.randn(2, pooled), time_ids=torch.full((2, time_ids), 64.0))
        inputs += [(PartialShape([-1, pooled]), Type.f32), (PartialShape([-1, time_ids]), Type.f32)]
    if union:
        types = int(cfg.num_control_type)
        example["control_type"] = torch.zeros(2, types)
        example["control_type"][:, types // 2] = 1.0
        inputs.append((PartialShape([-1, types]), Type.f32))
    wrapper = (UnionWrapper if union else Wrapper)(model)
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
