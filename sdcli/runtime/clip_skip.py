"""Clip skip: the prompt embedding from an earlier layer of the CLIP text encoder.

A1111's "Clip skip N" takes the output of the N-th layer from the end (1: the last, i.e.
off) and passes it through the encoder's final layer norm; diffusers' `clip_skip=N-1` does
the same.  The text encoder graph is edited at load time, so any converted folder works:
the final layer norm's input is moved from the last layer's output to an earlier one.

Layers are found by structure, not names: each CLIP layer is two residual Adds
(`h + attn(ln1(h))`, then `h + mlp(ln2(h))`), and the residual stream is the Add input
whose producer is an Add with more than one consumer (its layer norm and the next Add).
"""
from __future__ import annotations

from sdcli.util.errors import UsageError

_THROUGH_LAYER_NORM = {"Add", "Multiply", "Convert"}


def _final_layer_norm(model):
    node = model.output("last_hidden_state").get_node().input_value(0).get_node()
    for _ in range(4):
        if node.get_type_name() == "MVN":
            return node
        if node.get_type_name() not in _THROUGH_LAYER_NORM:
            break
        node = node.input_value(0).get_node()
    return None


def _residual_input(add):
    """The residual-stream input of a residual Add, or None if `add` is not one."""
    if add.get_type_name() != "Add":
        return None
    streams = [v for v in add.input_values()
               if v.get_node().get_type_name() == "Add" and len(v.get_target_inputs()) > 1]
    return streams[0] if len(streams) == 1 else None


def skip_layers(model, clip_skip: int) -> None:
    """Graph edit: `last_hidden_state` = final_layer_norm(output of layer -clip_skip)."""
    if clip_skip <= 1:
        return
    norm = _final_layer_norm(model)
    if norm is None:
        raise UsageError("--clip-skip: this text encoder's graph has no final layer norm where expected")
    stream = norm.input_value(0)
    for _ in range(2 * (clip_skip - 1)):
        stream = _residual_input(stream.get_node())
        if stream is None:
            raise UsageError(f"--clip-skip {clip_skip}: this text encoder does not have that many layers")
    norm.input(0).replace_source_output(stream)
    model.validate_nodes_and_infer_types()


def keep_hidden_state(model, clip_skip: int, pooled: str | None) -> None:
    """Graph edit for SDXL's text encoders, exported with every layer's hidden states as
    optimum-cli does: keep only the output SDXL's pipeline reads (`hidden_states.{N-1}`, the
    penultimate of N layers, without the final layer norm; `clip_skip` N goes N-1 layers
    further back), then the pooled output `pooled` if given.  Layers nothing reads any more
    are dropped from the compiled graph."""
    results = {name: result for result in model.get_results() for name in result.output(0).get_names()}
    layers = sorted(int(n.split(".")[1]) for n in results if n.startswith("hidden_states.") and n.split(".")[1].isdigit())
    if not layers:
        raise UsageError("this SDXL text encoder has no hidden_states outputs (an export without them?): "
                         "convert the model again with sdcli convert or optimum-cli")
    if pooled and pooled not in results:
        raise UsageError(f"this SDXL text encoder has no {pooled} output: convert the model again")
    index = layers[-1] - clip_skip
    if index < 0:
        raise UsageError(f"--clip-skip {clip_skip}: this text encoder does not have that many layers")
    wanted = {id(results[f"hidden_states.{index}"]), *([id(results[pooled])] if pooled else [])}
    for result in {id(r): r for r in results.values()}.values():
        if id(result) not in wanted:
            model.remove_result(result)
    model.validate_nodes_and_infer_types()
