"""`sdcli convert --quantize hybrid`: the UNet's linear layers int8 weight-only, the rest
int8 static (FakeQuantize on activations), calibrated; the model still generates."""
from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from sdcli.cli.app import app
from sdcli.imaging.image_io import read_rgb


@pytest.fixture(scope="module")
def hybrid_folder(tiny_eps_hybrid):
    """tiny_eps converted with --quantize hybrid, --calibration-prompts (a file with a comment
    and a blank line) and --calibration-samples 6 (conftest.tiny_eps_hybrid, shared with
    test_lora_formats)."""
    return tiny_eps_hybrid


def _op_types(xml):
    import openvino as ov

    return [op.get_type_name() for op in ov.Core().read_model(xml).get_ops()]


def test_unet_is_hybrid_and_the_rest_weight_only(hybrid_folder, tiny_eps):
    import openvino as ov

    from sdcli.convert.quantize import matmuls_with_weights

    unet = ov.Core().read_model(hybrid_folder / "unet" / "openvino_model.xml")
    types = [op.get_type_name() for op in unet.get_ops()]
    assert types.count("FakeQuantize") > 10  # activations quantized
    int8_consts = [op for op in unet.get_ops() if op.get_type_name() == "Constant"
                   and op.get_element_type() in (ov.Type.i8, ov.Type.u8)]
    assert len(int8_consts) > 20
    # every linear layer reads a compressed weight and has no quantizer on its input
    weighted = set(matmuls_with_weights(unet))
    assert weighted
    for op in unet.get_ops():
        if op.get_friendly_name() in weighted:
            assert op.input_value(0).get_node().get_type_name() != "FakeQuantize"
    for component in ("text_encoder", "vae_decoder", "vae_encoder"):
        assert "FakeQuantize" not in _op_types(hybrid_folder / component / "openvino_model.xml")
    float_size = (tiny_eps.ov_dir / "unet" / "openvino_model.bin").stat().st_size  # fp32 weights
    assert (hybrid_folder / "unet" / "openvino_model.bin").stat().st_size < 0.4 * float_size


def test_hybrid_model_generates_close_to_the_float_one(hybrid_folder, tiny_eps, tmp_path):
    outs = {}
    for name, folder in (("float", tiny_eps.ov_dir), ("hybrid", hybrid_folder)):
        outs[name] = tmp_path / f"{name}.png"
        result = CliRunner().invoke(app, ["generate", "--model", str(folder), "--prompt", "a red house", "--steps", "6",
                                          "--seed", "3", "--width", "64", "--height", "64", "--precision", "f32",
                                          "--output", str(outs[name]), "--quiet"])
        assert result.exit_code == 0, result.output
    a, b = (read_rgb(outs[n]).astype(np.int16) for n in ("float", "hybrid"))
    diff = np.abs(a - b)
    assert diff.max() > 0  # quantization changes something
    assert diff.mean() < 12, diff.mean()


@pytest.mark.parametrize("args,needle", [
    (["--quantize", "dynamic"], "--quantize"),
    (["--quantize", "hybrid", "--weight-format", "fp16"], "--weight-format int8"),
    (["--calibration-prompts", "p.txt"], "--calibration-prompts"),
])
def test_bad_quantize_options_exit_2(tiny_eps, tmp_path, args, needle):
    (tmp_path / "p.txt").write_text("a cat\n")
    args = [a if a != "p.txt" else str(tmp_path / "p.txt") for a in args]
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["convert", str(tiny_eps.diffusers_dir), "--output", str(out), *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert not out.exists()
