"""Int8 convolution weights unpacked to float16 before compiling: the int8 folder's memory.

NNCF's weight compression (`sdcli convert --weight-format int8`) stores each weight as u8 with
a per-channel zero point and a float16 scale, decompressed in the graph:

    Constant(u8) -> Convert(f16) -> Subtract(zero point) -> Multiply(scale) -> Convert(f32, "decompression")

OpenVINO's CPU plugin keeps that compressed for the layers it runs as FullyConnected (MatMuls,
and the 1x1 convolutions it turns into them), but a convolution has no int8-weight kernel: the
plugin constant-folds the chain into a float32 constant, in anonymous memory, and its compiled
model keeps that constant as long as it lives, beside the convolution's own bf16 copy.
On the SD 1.5 UNet that is 2.25 GB (562 M convolution weights x 4 bytes): a compiled int8 UNet
held 4.1 GB against the fp16 folder's 1.8 GB, and an int8 run with an int8 ControlNet peaked at
6.2 GB against the fp16 run's 3.3 GB, until the blob cache served it (a blob is mapped and its
pages dropped, so an imported model has no such copy).

So before compiling, the chain of each convolution with a kernel wider than 1x1 is folded here
into a float16 constant followed by the same decompression Convert: the pattern of an fp16 IR,
which the plugin keeps as it is (no float32 copy).  The values are those the plugin's folding
computes: (w - zero point) is exact in float16, and its product with the float16 scale is exact
in float32 and rounded once to float16, as OpenVINO's float16 Multiply does; the compiled model
gives bit-identical outputs (checked on the SD 1.5 UNet).  1x1 convolutions are left to the
plugin, which may run them as FullyConnected on the u8 weights (folding them would change that),
and so is a model with FakeQuantize (`--quantize hybrid`), left whole to the plugin's
low-precision transformations, which read the weights' chains themselves.  Chains without the
decompression mark (an int8 ControlNet's IR, compressed from the traced model) are left too: the
plugin computes those otherwise (folded to float16, a ControlNet's residuals moved by up to 0.45).

Runtime.load (core.py) writes the float16 values to a file in the cache's folder and maps it,
its pages dropped like an IR's, so that they are not held either: the int8 UNet compiled alone
then held 1.6 GB (as much as when imported from its blob), 2.65 GB with the values in memory
(no cache folder, or a disk that refuses the file), 4.1 GB before.
"""
from __future__ import annotations

import numpy as np

CONVOLUTIONS = ("Convolution", "GroupConvolution")
INTEGER_TYPES = ("u8", "i8")


def _is_decompression(node) -> bool:
    return any(key.startswith("decompression") for key in node.get_rt_info().keys())


def _const(output):
    node = output.get_node()
    return node if node.get_type_name() == "Constant" else None


def _integer_const(output):
    """The integer Constant that Convert `output` widens to float16, else None."""
    node = output.get_node()
    if node.get_type_name() != "Convert" or node.get_output_element_type(0).get_type_name() != "f16":
        return None
    const = _const(node.input_value(0))
    if const is None or const.get_output_element_type(0).get_type_name() not in INTEGER_TYPES:
        return None
    return const


def _folded(multiply) -> np.ndarray | None:
    """The float16 value of a weight chain ending in `multiply`, or None where it is not
    NNCF's int8 pattern (Subtract of a zero point optional)."""
    if multiply.get_type_name() != "Multiply" or multiply.get_output_element_type(0).get_type_name() != "f16":
        return None
    for data, scale in ((0, 1), (1, 0)):
        scale_const = _const(multiply.input_value(scale))
        if scale_const is None or scale_const.get_output_element_type(0).get_type_name() != "f16":
            continue
        source = multiply.input_value(data).get_node()
        if source.get_type_name() == "Subtract":
            weights, zero = _integer_const(source.input_value(0)), _integer_const(source.input_value(1))
            if weights is None or zero is None:
                return None
            centred = weights.get_data().astype(np.float32) - zero.get_data().astype(np.float32)
        else:
            weights = _integer_const(multiply.input_value(data))
            if weights is None:
                return None
            centred = weights.get_data().astype(np.float32)
        # exact in float32 (an integer of 9 bits times an 11-bit mantissa), rounded once to float16
        value = (centred * scale_const.get_data().astype(np.float32)).astype(np.float16)
        return value if tuple(value.shape) == tuple(multiply.get_output_shape(0)) else None
    return None


def conv_weight_folds(model):
    """(Convert, float16 value) of each convolution chain in `model` to fold (see the module's
    doc), computed one at a time; the graph is not changed."""
    ordered = model.get_ordered_ops()
    if any(node.get_type_name() == "FakeQuantize" for node in ordered):
        return  # quantized activations (--quantize hybrid): the plugin's low-precision passes read the chains
    for node in ordered:
        if node.get_type_name() not in CONVOLUTIONS:
            continue
        convert = node.input_value(1).get_node()
        if convert.get_type_name() != "Convert" or not _is_decompression(convert):
            continue
        shape = node.input_value(1).get_partial_shape()
        spatial = 2 if node.get_type_name() == "Convolution" else 3  # (GroupConvolution: [groups, out, in, ...])
        if not shape.is_static or all(d == 1 for d in list(shape.to_shape())[spatial:]):
            continue  # a 1x1 kernel: the plugin may keep it compressed (FullyConnected)
        value = _folded(convert.input_value(0).get_node())
        if value is not None:
            yield convert, value


def replace_chain(convert, value: np.ndarray, shared: bool = False) -> None:
    """Feed decompression `convert` the float16 constant `value` instead of its chain
    (`shared`: the constant uses `value`'s memory, which must outlive the model)."""
    from openvino import opset13 as ops

    convert.input(0).replace_source_output(ops.constant(value, shared_memory=shared).output(0))


def fold_conv_weights(model) -> int:
    """Replace the int8 decompression chain of each convolution wider than 1x1 in `model` by a
    float16 constant (see the module's doc); returns how many were replaced."""
    folds = list(conv_weight_folds(model))
    for convert, value in folds:
        replace_chain(convert, value)
    return len(folds)
