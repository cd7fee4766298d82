"""Converting a transformer model stored in bfloat16 (as FLUX.2-klein's and Z-Image's
checkpoints are) loads it in bfloat16 and traces it in 16 bits (sdcli.convert.ir.load_dtype
and to_openvino), so a 6 B transformer needs its file's size rather than twice that in float32.
The folder it gives paints what the float32 route gives on the same (bf16-rounded) weights."""
from __future__ import annotations

import numpy as np

from tests.reference import sdcli_pixels


def _save(pipe, folder, dtype):
    import copy

    twin = copy.deepcopy(pipe)
    twin.to(dtype)
    twin.save_pretrained(folder)


def test_a_bf16_checkpoint_converts_in_16_bits_to_the_float32_route_s_picture(tiny_z_image, tmp_path):
    import openvino as ov
    import torch

    from sdcli.convert.export import convert
    from sdcli.convert.ir import load_dtype, stored_float_dtype
    from sdcli.convert.options import ConvertOptions

    pipe = tiny_z_image[2]
    rounded = type(pipe)(**{k: v for k, v in pipe.components.items()})
    _save(rounded, tmp_path / "bf16", torch.bfloat16)
    # the same bf16-rounded values, stored in float32: the route that loads float32
    from diffusers import ZImagePipeline

    _save(ZImagePipeline.from_pretrained(tmp_path / "bf16", torch_dtype=torch.float32), tmp_path / "fp32", torch.float32)
    assert stored_float_dtype(tmp_path / "bf16" / "transformer") == "BF16"
    assert load_dtype(tmp_path / "bf16" / "transformer", "fp16") == torch.bfloat16
    assert load_dtype(tmp_path / "bf16" / "transformer", "fp32") == torch.float32
    assert load_dtype(tmp_path / "fp32" / "transformer", "fp16") == torch.float32

    pictures = {}
    for name in ("bf16", "fp32"):
        out = tmp_path / f"{name}-ov"
        convert(str(tmp_path / name), out, ConvertOptions(weight_format="fp16"), log=lambda s: None)
        pictures[name] = sdcli_pixels(out, tmp_path / f"{name}.png", prompt="a fox", width=32, height=32, seed=5,
                                      steps=3)
    constants = {str(op.get_output_element_type(0)) for op in
                 ov.Core().read_model(tmp_path / "bf16-ov" / "transformer" / "openvino_model.xml").get_ops()
                 if op.get_type_name() == "Constant"}
    assert any("bfloat16" in t for t in constants), constants  # the weights stayed in bf16: traced in 16 bits
    assert pictures["bf16"].std() > 10
    assert int(np.abs(pictures["bf16"] - pictures["fp32"]).max()) <= 1
