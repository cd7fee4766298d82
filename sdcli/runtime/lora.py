"""Graph edit: LoRAs fused into a component's weights before it is compiled.

For each layer a LoRA changes, the weight that its MatMul or Convolution reads is replaced
by a float32 constant holding W + ΔW, where W is the weight as the IR computes it: the
constant itself (fp32), widened (fp16), or dequantized (int8 and int4: `(q - zero point) *
scale`, int4 per group of input channels, as nncf writes it).  The result is exact, for any layer type, at no cost per step; the
price is a compile per set of LoRAs (the blob cache keeps it: see engine/networks.py).

The weight is found by its constant's name (see model/lora_names.py), then followed
through the ops that decompress it to the layer that reads it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from sdcli.util.errors import UsageError

# Ops between a weight constant and the layer reading it (decompression, reshapes).
_PASS_THROUGH = {"Convert", "Subtract", "Multiply", "Add", "Reshape", "Unsqueeze", "Squeeze", "Transpose"}
_LAYERS = {"MatMul", "Convolution"}

# torch-layout weight shape -> ΔW (float32), a new array each call: W is added into it
Delta = Callable[[tuple[int, ...]], np.ndarray]


def _consumer(constant):
    """(layer, input port) that reads `constant` through decompression ops, or None."""
    node, port = constant, None
    for _ in range(8):
        users = list(node.output(0).get_target_inputs())
        if len(users) != 1:
            return None
        user = users[0]
        node = user.get_node()
        if node.get_type_name() in _LAYERS:
            return (node, user.get_index()) if user.get_index() == 1 else None
        if node.get_type_name() not in _PASS_THROUGH:
            return None
    return None


def _numpy_type(element_type) -> np.dtype:
    import openvino as ov

    table = {ov.Type.f32: np.float32, ov.Type.f16: np.float16, ov.Type.f64: np.float64, ov.Type.i8: np.int8,
             ov.Type.u8: np.uint8, ov.Type.i32: np.int32, ov.Type.i64: np.int64}
    if element_type not in table:
        raise ValueError(f"element type {element_type}")
    return table[element_type]


def _nibbles(packed: np.ndarray, signed: bool, shape: tuple[int, ...]) -> np.ndarray:
    """The int4 values packed in `packed` (OpenVINO's u4/i4 layout), as int8 (i4) or uint8 (u4)."""
    values = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(-1)[:int(np.prod(shape))]
    if signed:
        return ((values.astype(np.int8) ^ 8) - 8).reshape(shape)  # sign-extend the four bits
    return values.reshape(shape)


def _value(output) -> np.ndarray:
    """The value of a constant subgraph (a weight and its decompression), computed in numpy."""
    node = output.get_node()
    kind = node.get_type_name()
    if kind == "Constant":
        element = node.get_element_type()
        if element.is_integral() and element.bitwidth == 4:  # u4/i4: two values a byte, the low nibble first
            return _nibbles(np.asarray(node.data).view(np.uint8), element.is_signed(),
                            tuple(node.get_output_shape(0)))
        return np.asarray(node.data)
    args = [_value(node.input_value(i)) for i in range(node.get_input_size())]
    if kind == "Convert":  # float32 for any float type: OpenVINO's CPU plugin decompresses int8 weights in
        target = _numpy_type(node.get_output_element_type(0))  # float32, not in the f16 the IR names
        if np.issubdtype(target, np.floating):  # (a float source is widened where it is used, without a copy)
            return args[0] if np.issubdtype(args[0].dtype, np.floating) else args[0].astype(np.float32)
        return args[0].astype(target)
    if kind in ("Subtract", "Multiply", "Add"):
        operation = {"Subtract": np.subtract, "Multiply": np.multiply, "Add": np.add}[kind]
        return operation(args[0], args[1], dtype=np.float32)
    if kind in ("Reshape", "Unsqueeze", "Squeeze"):
        return args[0].reshape(tuple(node.get_output_shape(0)))
    if kind == "Transpose":
        return np.transpose(args[0], tuple(int(v) for v in args[1]))
    raise ValueError(f"a {kind} op")


def fuse_weight_deltas(model, deltas: dict[str, Delta], component: str) -> int:
    """Graph edit: each weight constant named in `deltas` (or layer, for a weight without a
    name) gets its ΔW added (see the module's docstring).  Returns the number of layers changed."""
    import openvino as ov
    from openvino import opset13 as ops

    nodes = {op.get_friendly_name(): op for op in model.get_ordered_ops()
             if op.get_type_name() in ("Constant", *_LAYERS) and op.get_friendly_name() in deltas}
    for name, delta in deltas.items():
        node = nodes.get(name)  # the weight's constant, or the layer itself
        found = (node, 1) if node is not None and node.get_type_name() in _LAYERS else \
            _consumer(node) if node is not None else None
        if found is None:
            raise UsageError(f"{component}: cannot apply a LoRA to {name}: no MatMul or Convolution reads it "
                             "in this IR")
        layer, port = found
        source = layer.input_value(port)
        try:
            weight = _value(source)  # float16 or float32; widened exactly by the addition below
        except ValueError as exc:
            raise UsageError(f"{component}: cannot apply a LoRA to {name}: its weight passes through {exc} "
                             "(a quantization sdcli cannot fold; use an fp32, fp16, int8 or int4-weight folder)") from None
        transposed = layer.get_type_name() == "MatMul" and not layer.get_transpose_b()
        torch_shape = weight.shape[::-1] if transposed else weight.shape
        change = delta(tuple(torch_shape))
        change = change.T if transposed else change
        owned = change.flags.writeable and change.flags.c_contiguous and change.dtype == np.float32
        fused = np.add(change, weight, out=change if owned else None, dtype=np.float32)  # W + ΔW, in ΔW's memory
        del change
        target = source.get_element_type()
        new = ops.constant(fused if target == ov.Type.f32 else fused.astype(_numpy_type(target)))
        new.set_friendly_name(f"{name}/lora")
        layer.input(port).replace_source_output(new.output(0))
    model.validate_nodes_and_infer_types()
    return len(deltas)


@dataclass(frozen=True)
class WeightPatch:
    """The LoRAs of one component: ΔW by IR constant name, and a tag naming the set (the LoRA
    files and multipliers), which goes into the compiled blob's name."""

    tag: str
    deltas: dict[str, Delta] = field(compare=False, hash=False)

    def apply(self, model, component: str) -> int:
        return fuse_weight_deltas(model, self.deltas, component)
