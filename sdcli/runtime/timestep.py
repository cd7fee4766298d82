"""Graph edit: a float32 `timestep` input for UNets exported with an int64 one."""
from __future__ import annotations

# Ops that only move or broadcast their first input, whatever its element type.
_SHAPE_ONLY = {"Broadcast", "Unsqueeze", "Squeeze", "Reshape", "Tile"}


def float_timestep(model) -> bool:
    """Make the UNet's int64 `timestep` input float32 when the graph only reshapes it
    before converting it to float (sdcli's export converts first; optimum-cli's expands
    and unsqueezes first).  Euler-type schedulers step on fractional timesteps, which an
    int64 input would truncate.  Returns whether the input is float now."""
    import openvino as ov
    from openvino import opset13 as ops

    param = model.input("timestep").get_node()
    if param.get_element_type() == ov.Type.f32:
        return True
    node = param
    while True:
        users = list(node.output(0).get_target_inputs())
        if len(users) != 1:
            return False
        user = users[0]
        node = user.get_node()
        kind = node.get_type_name()
        if kind == "Convert":
            if node.get_output_element_type(0) != ov.Type.f32:
                return False
            break
        if kind not in _SHAPE_ONLY or user.get_index() != 0:
            return False
    first_user = next(iter(param.output(0).get_target_inputs()))
    new = ops.parameter(param.get_partial_shape(), ov.Type.f32, name="timestep")
    param.output(0).get_tensor().set_names(set())
    new.output(0).get_tensor().set_names({"timestep"})
    first_user.replace_source_output(new.output(0))
    model.replace_parameter(model.get_parameters().index(param), new)
    model.validate_nodes_and_infer_types()
    return True
