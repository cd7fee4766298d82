"""runtime/compressed.py: int8 convolution weights (NNCF's pattern) folded to float16 before
compiling, so that the CPU plugin keeps no float32 copy of them; the outputs must not change."""
from __future__ import annotations

import numpy as np
import pytest

ov = pytest.importorskip("openvino")
from openvino import opset13 as ops  # noqa: E402

from sdcli.runtime.compressed import fold_conv_weights  # noqa: E402


def _int8_weights(rng, shape, marked=True):
    """NNCF's INT8_ASYM chain on a float16 model: u8 -> f16, minus the u8 zero point, times the
    f16 scale, Convert to f32 (marked as decompression, as an fp16 IR's Converts are)."""
    out = shape[0]
    weights = ops.constant(rng.integers(0, 256, shape).astype(np.uint8))
    zero = ops.constant(rng.integers(100, 156, (out, 1, 1, 1)).astype(np.uint8))
    scale = ops.constant((rng.random((out, 1, 1, 1)) * 0.02 + 1e-3).astype(np.float16))
    centred = ops.subtract(ops.convert(weights, "f16"), ops.convert(zero, "f16"))
    convert = ops.convert(ops.multiply(centred, scale), "f32")
    if marked:
        convert.get_rt_info()["decompression_0"] = ""
    expected = ((weights.get_data().astype(np.float32) - zero.get_data()) * scale.get_data().astype(np.float32))
    return convert, expected.astype(np.float16)


def _model(seed=0):
    rng = np.random.default_rng(seed)
    x = ops.parameter([1, 4, 8, 8], np.float32, name="x")
    w3, expected = _int8_weights(rng, (8, 4, 3, 3))
    w1, _ = _int8_weights(rng, (6, 8, 1, 1))
    y = ops.convolution(x, w3, [1, 1], [1, 1], [1, 1], [1, 1])
    y = ops.convolution(ops.relu(y), w1, [1, 1], [0, 0], [0, 0], [1, 1])
    return ov.Model([y], [x]), expected


def test_fold_replaces_the_3x3_chain_by_float16_and_keeps_the_1x1():
    model, expected = _model()
    assert fold_conv_weights(model) == 1
    convs = [n for n in model.get_ordered_ops() if n.get_type_name() == "Convolution"]
    convert = convs[0].input_value(1).get_node()
    assert convert.get_type_name() == "Convert" and "decompression_0" in list(convert.get_rt_info().keys())
    constant = convert.input_value(0).get_node()
    assert constant.get_type_name() == "Constant" and constant.get_output_element_type(0) == ov.Type.f16
    np.testing.assert_array_equal(constant.get_data(), expected)
    # the 1x1 convolution keeps its u8 chain (the CPU plugin may run it as FullyConnected on u8)
    assert convs[1].input_value(1).get_node().input_value(0).get_node().get_type_name() == "Multiply"
    assert fold_conv_weights(model) == 0  # nothing left to fold


@pytest.mark.parametrize("precision", ["f32", None])
def test_folded_model_computes_the_same_bits(precision):
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
    x = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)
    plain, _ = _model()
    folded, _ = _model()
    assert fold_conv_weights(folded) == 1
    want = core.compile_model(plain, "CPU", config)(x)[0]
    got = core.compile_model(folded, "CPU", config)(x)[0]
    np.testing.assert_array_equal(got, want)


def test_unmarked_or_float_chains_are_left_alone():
    rng = np.random.default_rng(2)
    x = ops.parameter([1, 4, 8, 8], np.float32, name="x")
    w, _ = _int8_weights(rng, (8, 4, 3, 3), marked=False)
    plain = ops.constant(rng.standard_normal((8, 8, 3, 3)).astype(np.float16))
    y = ops.convolution(x, w, [1, 1], [1, 1], [1, 1], [1, 1])
    y = ops.convolution(y, ops.convert(plain, "f32"), [1, 1], [1, 1], [1, 1], [1, 1])
    assert fold_conv_weights(ov.Model([y], [x])) == 0


def test_a_model_with_quantized_activations_is_left_alone():
    """--quantize hybrid: FakeQuantize on activations, left whole to the plugin's low-precision passes."""
    model, _ = _model()
    x = model.get_parameters()[0]
    conv = next(n for n in model.get_ordered_ops() if n.get_type_name() == "Convolution")
    low, high = ops.constant(np.float32(-4)), ops.constant(np.float32(4))
    conv.input(0).replace_source_output(ops.fake_quantize(x, low, high, low, high, 256).output(0))
    assert fold_conv_weights(model) == 0


def test_the_runtime_spills_the_folded_weights_to_a_mapped_file(tmp_path):
    """With a cache folder the float16 values live in a mapped file (its pages dropped like an
    IR's), attached to the model's weights mapping; nothing is left in the folder."""
    from types import SimpleNamespace

    from sdcli.runtime.core import Runtime

    runtime = Runtime(cache_dir=tmp_path, cache_max_bytes=10**9)
    model, expected = _model()
    weights = SimpleNamespace(attached=[])
    runtime._fold_conv_weights(model, weights)
    assert len(weights.attached) == 1 and list(tmp_path.iterdir()) == []
    weights.attached[0].drop_pages()  # read back from the (removed) file
    conv = next(n for n in model.get_ordered_ops() if n.get_type_name() == "Convolution")
    np.testing.assert_array_equal(conv.input_value(1).get_node().input_value(0).get_node().get_data(), expected)
    x = np.random.default_rng(3).standard_normal((1, 4, 8, 8)).astype(np.float32)
    plain, _ = _model()
    core = ov.Core()
    np.testing.assert_array_equal(core.compile_model(model, "CPU")(x)[0], core.compile_model(plain, "CPU")(x)[0])
