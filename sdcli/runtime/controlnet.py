"""ControlNet residuals fed to any UNet, by a graph edit at load time.

A ControlNet gives one residual for each skip connection of the UNet's down path (12 for
SD 1.x: conv_in's output, then every resnet's and downsampler's) and one for the mid block's
output.  diffusers' UNet2DConditionModel adds them where they are used: each skip where it
joins its up block (the Concat of [up path, skip] before each up resnet), the mid one to the
mid block's output, which is the up path of the first of those Concats.

So the UNet graph of any converted folder (sdcli's or optimum-cli's; LoRAs fused or not) is
given new inputs `down_block_res_0` ... `down_block_res_{n-1}` and `mid_block_res`, each
Add-ed in front of its Concat input.  The skip Concats are found by structure: rank-4
Concats of two tensors along the channels, which in a diffusers UNet are the up blocks'
skip joins, and nothing else; the up path runs through them in order (each depends on the
one before), so in the graph's topological order they take the skips last-first.

Without a ControlNet none of this happens: the engine compiles the UNet as it is.
"""
from __future__ import annotations

from sdcli.util.errors import UsageError

MID = "mid_block_res"


def down_name(index: int) -> str:
    return f"down_block_res_{index}"


def skip_concats(model) -> list:
    """The up blocks' skip Concats, in the order the up path runs through them."""
    found = []
    for index, node in enumerate(model.get_ordered_ops()):
        if node.get_type_name() != "Concat" or node.get_input_size() != 2:
            continue
        rank = node.get_output_partial_shape(0).rank
        if not rank.is_static or rank.get_length() != 4:
            continue
        axis = int(node.get_attributes().get("axis", 0))
        if axis not in (1, -3):
            continue
        found.append(node)
    return found


def residual_count(unet_config: dict) -> int:
    """How many down residuals a UNet of `unet_config` takes (a ControlNet of it gives)."""
    blocks = len(unet_config.get("down_block_types") or ())
    layers = unet_config.get("layers_per_block", 2)
    layers = list(layers) if isinstance(layers, (list, tuple)) else [layers] * blocks
    return 1 + sum(layers) + blocks - 1


def add_residual_inputs(model, shapes: dict) -> None:
    """Graph edit: inputs down_block_res_{i} (one per skip, in diffusers' order) and
    mid_block_res, added to the skips and the mid block's output (see the module's doc).
    `shapes`: the UNet's input shapes, which fix the new inputs' shapes."""
    from openvino import opset13 as ops

    model.reshape({name: shape for name, shape in shapes.items() if name not in (MID,) and
                   not name.startswith("down_block_res_")})
    concats = skip_concats(model)
    if not concats:
        raise UsageError("--controlnet: this UNet's graph has no skip connections where expected (the up blocks' "
                         "Concats); it cannot take ControlNet residuals")

    def residual(name: str, target):
        source = target.get_source_output()
        param = ops.parameter(source.get_partial_shape(), source.get_element_type(), name=name)
        param.output(0).get_tensor().set_names({name})
        target.replace_source_output(ops.add(source, param).output(0))
        return param

    params = [residual(MID, concats[0].input(0))]  # before the down ones: concats[0] is the up path's first
    params += [residual(down_name(i), concat.input(1)) for i, concat in enumerate(reversed(concats))]
    model.add_parameters(params)
    model.validate_nodes_and_infer_types()


def residual_shapes(compiled) -> dict[str, tuple[int, ...]]:
    """The residual inputs of a compiled edited UNet and their static shapes."""
    shapes = {}
    for port in compiled.inputs:
        names = port.get_names()
        name = next((n for n in names if n == MID or n.startswith("down_block_res_")), None)
        if name is not None:
            shapes[name] = tuple(port.get_partial_shape().to_shape())
    return shapes


def deepcache_full_with_residuals(model, shapes: dict) -> None:
    """DeepCache's full UNet (the cached feature as output 1: runtime/deepcache.py) taking
    ControlNet residuals as add_residual_inputs does.  The feature is the up path where it
    enters the last skip Concat, after every residual but down_block_res_0 has been added."""
    from sdcli.runtime.deepcache import add_feature_output

    add_feature_output(model, shapes)
    add_residual_inputs(model, shapes)


def deepcache_shallow_with_residual(model, shapes: dict) -> None:
    """DeepCache's shallow UNet (runtime/deepcache.py: the last up resnet on [cached feature,
    conv_in's output]) taking the one residual whose skip it runs: down_block_res_0, conv_in's,
    Add-ed where that skip joins the feature (as in the full UNet)."""
    from openvino import opset13 as ops

    from sdcli.runtime.deepcache import cut_shallow

    cut_shallow(model, shapes)
    concats = skip_concats(model)
    if len(concats) != 1:
        raise UsageError("--controlnet with --deepcache: this UNet's shallow branch does not have the one skip "
                         "Concat expected; run without --deepcache")
    target = concats[0].input(1)
    source = target.get_source_output()
    name = down_name(0)
    param = ops.parameter(source.get_partial_shape(), source.get_element_type(), name=name)
    param.output(0).get_tensor().set_names({name})
    target.replace_source_output(ops.add(source, param).output(0))
    model.add_parameters([param])
    model.validate_nodes_and_infer_types()


VARIANTS = {
    "controlnet": ("unet-controlnet", add_residual_inputs),
    # DeepCache with ControlNet residuals (engine/deepcache.py feeds each the residuals it takes)
    "controlnet-deepcache-full": ("unet-controlnet-deepcache-full", deepcache_full_with_residuals),
    "controlnet-deepcache-shallow": ("unet-controlnet-deepcache-shallow", deepcache_shallow_with_residual),
}
