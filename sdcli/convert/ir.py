"""Writing OpenVINO IR from torch modules, as every converter of this package does: the
tensor names optimum-cli uses, the weight format, the configs beside each IR."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sdcli.util.errors import UsageError

WEIGHT_FORMATS = ("fp32", "fp16", "int8", "int4")
# optimum-cli's int4 defaults (optimum-intel's _DEFAULT_4BIT_WQ_CONFIG): asymmetric, groups of
# 128 input channels, every layer NNCF may put in int4 in int4 (ratio 1)
DEFAULT_GROUP_SIZE = 128
DEFAULT_RATIO = 1.0


@dataclass(frozen=True)
class Int4:
    """NNCF's int4 weight compression: `ratio` of the layers in int4 (groups of `group_size`
    input channels, -1: one group per output channel), the rest int8_asym; symmetric or not."""

    group_size: int = DEFAULT_GROUP_SIZE
    ratio: float = DEFAULT_RATIO
    sym: bool = False

    def check(self) -> None:
        if self.group_size != -1 and self.group_size < 2:
            raise UsageError(f"--group-size must be -1 (per output channel) or 2 or more, got {self.group_size}")
        if not 0.0 <= self.ratio <= 1.0:
            raise UsageError(f"--ratio must be between 0 and 1 (the share of layers in int4), got {self.ratio:g}")

    def metadata(self) -> dict:
        return {"int4": {"mode": "int4_sym" if self.sym else "int4_asym", "group_size": self.group_size,
                         "ratio": self.ratio, "backup": "int8_asym"}}


def vae_weight_format(weight_format: str) -> str:
    """The VAE's: int4 folders keep it in int8 (its convolutions are most of its weights and
    NNCF would put them in int8 anyway; the decoder is what every pixel goes through)."""
    return "int8" if weight_format == "int4" else weight_format


def require_convert_extra() -> None:
    missing = []
    for mod in ("torch", "diffusers"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise UsageError(
            f"sdcli convert needs {' and '.join(missing)}: pip install \"sdcli[convert]\" "
            "(on CPU-only machines: pip install torch --index-url https://download.pytorch.org/whl/cpu first)"
        )


def stored_float_dtype(folder: Path) -> str | None:
    """The float type ("BF16", "F16", "F32") that most of the weights in `folder`'s safetensors
    files are stored in, read from their headers alone; None if it has none."""
    import struct

    counts: dict[str, int] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        for name, entry in header.items():
            if name != "__metadata__" and entry.get("dtype") in ("BF16", "F16", "F32"):
                numel = 1
                for dim in entry.get("shape", []):
                    numel *= dim
                counts[entry["dtype"]] = counts.get(entry["dtype"], 0) + numel
    return max(counts, key=counts.get) if counts else None


def load_dtype(folder: Path, weight_format: str):
    """The torch dtype a component is loaded in for conversion: the one its weights are stored
    in when that is 16-bit (a 6 B transformer in float32 would need 25 GB; traced in 16 bits,
    see to_openvino, it needs its file's size), float32 for --weight-format fp32 or float32 files."""
    import torch

    if weight_format == "fp32":
        return torch.float32
    return {"BF16": torch.bfloat16, "F16": torch.float16}.get(stored_float_dtype(folder) or "", torch.float32)


def to_openvino(module, example: dict, inputs: list, output_names: list[str]):
    import torch

    module.eval()
    if any(p.dtype in (torch.float16, torch.bfloat16) for p in module.parameters()):
        # A module loaded in 16 bits (see load_dtype): OpenVINO's own recipe (optimum-cli's too)
        # keeps each Linear/Embedding weight in its 16-bit type as the graph's constant and
        # traces in float32 around it, so nothing is copied to float32 on the way.
        # OpenVINO has it only under a private name (optimum-intel calls the same function)
        from openvino.frontend.pytorch import patch_model

        getattr(patch_model, "__make_16bit_traceable")(module)
    model = traced_to_openvino(module, example, inputs)
    for port, name in zip(model.inputs, example):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, output_names):
        port.get_tensor().set_names({name})
    return model


def traced_to_openvino(module, example, inputs):
    """ov.convert_model of `module` traced on `example`, without torch.jit.trace's check (it traces
    the module again and runs it twice more to compare): optimum-intel skips it for every diffusers
    export too (allow_skip_tracing_check). The IR is the same, byte for byte."""
    import openvino as ov
    import torch
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

    with torch.no_grad():
        decoder = TorchScriptPythonDecoder(module, example_input=example, trace_kwargs={"check_trace": False})
        return ov.convert_model(decoder, example_input=example, input=inputs)


def save_ir(model, folder: Path, weight_format: str, int4: Int4 | None = None) -> None:
    """`model` into folder/openvino_model.xml: fp32, fp16, or its weights compressed by NNCF
    (int8; int4 with the parameters `int4`, optimum-cli's defaults if None)."""
    import openvino as ov

    if weight_format in ("int8", "int4"):
        model = _compress_weights(model, (int4 or Int4()) if weight_format == "int4" else None)
    folder.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, folder / "openvino_model.xml", compress_to_fp16=(weight_format == "fp16"))


def _compress_weights(model, int4: Int4 | None = None):
    """NNCF's weight compression of `model` (int8, or int4 as `int4` says), its statistics
    tables kept off stdout.  A layer whose input channels do not divide into int4 groups gets
    the largest power-of-two group size that does (NNCF's ADJUST fallback, as optimum-cli's
    own recipes choose) rather than failing the conversion."""
    import logging

    import nncf

    nncf.set_log_level(logging.ERROR)
    if int4 is None:
        return nncf.compress_weights(model)
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    mode = nncf.CompressWeightsMode.INT4_SYM if int4.sym else nncf.CompressWeightsMode.INT4_ASYM
    return nncf.compress_weights(
        model, mode=mode, group_size=int4.group_size, ratio=int4.ratio,
        advanced_parameters=AdvancedCompressionParameters(group_size_fallback_mode=GroupSizeFallbackMode.ADJUST))


def compress_saved_ir(folder: Path, int4: Int4 | None = None) -> None:
    """Compress the weights of the fp16 IR in `folder` to int8 (or int4: see Int4) in place.  The UNet goes this
    way: compressing the model converted from torch holds torch's weights, OpenVINO's float32
    copy and NNCF's work at once (19 GB for SDXL's), while the saved IR is read mapped, in
    half precision, after torch has let go of the module."""
    import os

    import openvino as ov

    xml = folder / "openvino_model.xml"
    staging = folder / ".int8"
    model = _compress_weights(ov.Core().read_model(xml), int4)
    ov.save_model(model, staging / xml.name, compress_to_fp16=False)
    del model
    for name in (xml.name, xml.with_suffix(".bin").name):
        os.replace(staging / name, folder / name)
    staging.rmdir()


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def model_config(model) -> dict:
    config = dict(model.config)
    config["_class_name"] = type(model).__name__
    return config


def export_tokenizer(tokenizer, folder: Path) -> None:
    import openvino as ov

    tokenizer.save_pretrained(folder)
    try:
        from openvino_tokenizers import convert_tokenizer
    except ImportError:
        return
    ov_tok, ov_detok = convert_tokenizer(tokenizer, with_detokenizer=True)
    ov.save_model(ov_tok, folder / "openvino_tokenizer.xml")
    ov.save_model(ov_detok, folder / "openvino_detokenizer.xml")
