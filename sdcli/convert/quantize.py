"""`sdcli convert --quantize hybrid`: NNCF hybrid quantization of the UNet.

What optimum-intel calls hybrid quantization for diffusion models: the weights of the
MatMuls (the linear layers) are compressed to int8 on their own, and everything else —
convolutions (weights and inputs) and the activation-by-activation MatMuls of attention —
is quantized to int8 statically, with activation ranges measured on real UNet inputs: a
short generation over a few prompts with the freshly converted model (calibration).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

DEFAULT_PROMPTS = (
    "a photo of an astronaut riding a horse on mars",
    "a watercolor painting of a lighthouse at dawn, soft light",
    "portrait of an old fisherman, detailed face, 85mm photograph",
    "a cozy living room with plants and a cat, interior design",
    "a futuristic city at night, neon signs, rain, cinematic",
    "a bowl of ramen on a wooden table, food photography",
    "a mountain lake surrounded by pine trees, oil painting",
    "an isometric pixel art castle on a floating island",
)
DEFAULT_SAMPLES = 32  # UNet calls measured; optimum-intel uses 200, at several times the cost
_THROUGH_DECOMPRESSION = {"Convert", "Subtract", "Multiply", "Reshape", "Transpose"}


def _reads_a_constant(op, port: int) -> bool:
    node = op.input_value(port).get_node()
    for _ in range(6):
        if node.get_type_name() == "Constant":
            return True
        if node.get_type_name() not in _THROUGH_DECOMPRESSION:
            return False
        node = node.input_value(0).get_node()
    return False


def matmuls_with_weights(model) -> list[str]:
    """Names of the MatMuls with a weight operand (compressed weight-only, not quantized)."""
    return [op.get_friendly_name() for op in model.get_ops()
            if op.get_type_name() == "MatMul" and (_reads_a_constant(op, 0) or _reads_a_constant(op, 1))]


def calibration_inputs(folder: Path, prompts: list[str], samples: int, log: Callable[[str], None]) -> list[dict]:
    """The UNet's inputs over a short generation per prompt on `folder` (f32, default size)."""
    from sdcli.engine.engine import Engine
    from sdcli.engine.request import GenerationRequest

    engine = Engine(folder, precision="f32", cache_dir=False)
    steps = max(2, -(-samples // len(prompts)))
    recorded: list[dict] = []
    engine.unet_recorder = lambda inputs: recorded.append({k: np.array(v) for k, v in inputs.items()})
    for i, prompt in enumerate(prompts):
        if len(recorded) >= samples:
            break
        log(f"calibration {i + 1}/{len(prompts)}: {steps} steps")
        engine.generate(GenerationRequest(prompt=prompt, steps=steps, seed=i, rng="numpy"), decode=False)
    return recorded[:samples]


def hybrid_quantize_unet(folder: Path, prompts: list[str] | None, samples: int, log: Callable[[str], None]) -> None:
    """Replace folder/unet's IR with its hybrid-quantized version (in place: `folder` is
    the converter's temporary folder)."""
    import logging

    import nncf
    import openvino as ov

    nncf.set_log_level(logging.ERROR)  # it explains every quantizer it does not insert
    prompts = list(prompts or DEFAULT_PROMPTS)
    data = calibration_inputs(folder, prompts, samples, log)
    xml = folder / "unet" / "openvino_model.xml"
    core = ov.Core()
    model = core.read_model(xml)
    if model.input("timestep").get_element_type() != ov.Type.f32:
        for item in data:  # the engine ran a float timestep; this IR takes integers
            item["timestep"] = np.round(item["timestep"]).astype(np.int64)
    weighted = matmuls_with_weights(model)
    log(f"quantizing the UNet: {len(weighted)} weight MatMuls int8 weight-only, the rest int8 static "
        f"({len(data)} calibration samples)")
    model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM,
                                  ignored_scope=nncf.IgnoredScope(types=["Convolution"]))
    model = nncf.quantize(
        model, nncf.Dataset(data), subset_size=len(data), model_type=nncf.ModelType.TRANSFORMER,
        ignored_scope=nncf.IgnoredScope(names=weighted, validate=False),
        advanced_parameters=nncf.AdvancedQuantizationParameters(smooth_quant_alpha=-1),
    )
    tmp = folder / "unet.quantized"
    tmp.mkdir()
    ov.save_model(model, tmp / "openvino_model.xml", compress_to_fp16=False)
    del model
    for name in ("openvino_model.xml", "openvino_model.bin"):
        (tmp / name).replace(folder / "unet" / name)
    tmp.rmdir()
