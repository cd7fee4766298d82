"""DeepCache (Ma et al., 2023): reuse the UNet's deep features for the steps in between.

Every N-th UNet call runs the whole UNet and keeps the feature that enters the last
resnet of the last up block (the output of the layer before it); the calls in between run
only the shallow branch: conv_in, the time embedding, that last resnet (and its attention)
on [cached feature, conv_in's output], and the output head.

Both variants are cut out of the UNet graph at load time, so any folder with a diffusers-
traced UNet works (sdcli's and optimum-cli's alike) and nothing extra is stored on disk:

- "deepcache-full": the UNet with the feature as a second output;
- "deepcache-shallow": the UNet with that feature replaced by an input, which leaves the
  deep path unreachable from the output, so OpenVINO drops it.

The cut is found by structure, not by node names: conv_in is the convolution that reads
`sample`, and its output reaches exactly one Concat (the last up block's last skip
connection), whose other input is the feature.
"""
from __future__ import annotations

from sdcli.util.errors import UsageError

FEATURE = "deepcache_feature"


def _skip_concat(model):
    """The Concat that joins the cached feature (input 0) with conv_in's output."""
    sample = model.input("sample").get_node()
    convs = [t.get_node() for t in sample.output(0).get_target_inputs() if t.get_node().get_type_name() == "Convolution"]
    if len(convs) != 1:
        return None
    out = convs[0].output(0)
    users = list(out.get_target_inputs())
    if len(users) == 1 and users[0].get_node().get_type_name() == "Add":  # the convolution's bias
        out = users[0].get_node().output(0)
    concats = [t for t in out.get_target_inputs() if t.get_node().get_type_name() == "Concat"]
    if len(concats) != 1 or concats[0].get_index() != 1 or concats[0].get_node().get_input_size() != 2:
        return None
    return concats[0].get_node()


def _find_cut(model):
    concat = _skip_concat(model)
    if concat is None:
        raise UsageError("--deepcache: this UNet's graph does not have the layout DeepCache needs "
                         "(conv_in's output joined to the last up block); run without --deepcache")
    return concat


def add_feature_output(model, shapes: dict) -> None:
    """Graph edit for the full variant: the cached feature becomes output 1."""
    from openvino import opset13 as ops

    concat = _find_cut(model)
    result = ops.result(concat.input_value(0))
    model.add_results([result])
    model.validate_nodes_and_infer_types()


def cut_shallow(model, shapes: dict) -> None:
    """Graph edit for the shallow variant: the cached feature becomes an input."""
    from openvino import opset13 as ops

    concat = _find_cut(model)
    model.reshape(shapes)  # so the feature input gets a static shape
    feature = concat.input_value(0)
    param = ops.parameter(feature.get_partial_shape(), feature.get_element_type(), name=FEATURE)
    param.output(0).get_tensor().set_names({FEATURE})
    concat.input(0).replace_source_output(param.output(0))
    model.add_parameters([param])
    model.validate_nodes_and_infer_types()


VARIANTS = {
    "full": ("unet-deepcache-full", add_feature_output),
    "shallow": ("unet-deepcache-shallow", cut_shallow),
}
