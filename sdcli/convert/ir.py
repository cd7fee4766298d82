"""Writing OpenVINO IR from torch modules, as every converter of this package does: the
tensor names optimum-cli uses, the weight format, the configs beside each IR."""
from __future__ import annotations

import json
from pathlib import Path

from sdcli.util.errors import UsageError

WEIGHT_FORMATS = ("fp32", "fp16", "int8")


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


def to_openvino(module, example: dict, inputs: list, output_names: list[str]):
    import openvino as ov
    import torch

    module.eval()
    with torch.no_grad():
        model = ov.convert_model(module, example_input=example, input=inputs)
    for port, name in zip(model.inputs, example):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, output_names):
        port.get_tensor().set_names({name})
    return model


def save_ir(model, folder: Path, weight_format: str) -> None:
    import openvino as ov

    if weight_format == "int8":
        model = _compress_weights(model)
    folder.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, folder / "openvino_model.xml", compress_to_fp16=(weight_format == "fp16"))


def _compress_weights(model):
    """NNCF's int8 weight compression of `model`, its statistics tables kept off stdout."""
    import logging

    import nncf

    nncf.set_log_level(logging.ERROR)
    return nncf.compress_weights(model)


def compress_saved_ir(folder: Path) -> None:
    """Compress the weights of the fp16 IR in `folder` to int8 in place.  The UNet goes this
    way: compressing the model converted from torch holds torch's weights, OpenVINO's float32
    copy and NNCF's work at once (19 GB for SDXL's), while the saved IR is read mapped, in
    half precision, after torch has let go of the module."""
    import os

    import openvino as ov

    xml = folder / "openvino_model.xml"
    staging = folder / ".int8"
    model = _compress_weights(ov.Core().read_model(xml))
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
