"""Graph edit: textual-inversion embeddings put in place of token embeddings.

A1111 puts an embedding's vectors where its name's tokens were, in place of what the token
embedding table gives there (position embeddings are added afterwards, as for any token).
The text encoder gets two inputs for that: `ti_embeds` [batch, tokens, width], the vectors,
and `ti_mask` [batch, tokens, 1], true where they replace the table's output.  One compile
serves every embedding; the token ids at those places are A1111's placeholder (0), so the
end-of-text token is still the largest id (a pooled output is taken there).
"""
from __future__ import annotations

from sdcli.util.errors import UsageError

EMBEDS = "ti_embeds"
MASK = "ti_mask"
_PASS_THROUGH = {"Convert", "Subtract", "Multiply", "Reshape"}


def _token_gather(model):
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Constant" and op.get_friendly_name().endswith("token_embedding.weight"):
            node = op
            for _ in range(6):
                users = list(node.output(0).get_target_inputs())
                if len(users) != 1:
                    break
                node = users[0].get_node()
                if node.get_type_name() == "Gather" and users[0].get_index() == 0:
                    return node
                if node.get_type_name() not in _PASS_THROUGH:
                    break
    return None


def add_embedding_inputs(model) -> None:
    """Graph edit: token embeddings = where(ti_mask, ti_embeds, table[input_ids])."""
    import openvino as ov
    from openvino import opset13 as ops

    gather = _token_gather(model)
    if gather is None:
        raise UsageError("embeddings: this text encoder's graph has no token embedding table where expected")
    out = gather.output(0)
    width = out.get_partial_shape()[2]
    embeds = ops.parameter(ov.PartialShape([-1, -1, width]), out.get_element_type(), name=EMBEDS)
    mask = ops.parameter(ov.PartialShape([-1, -1, 1]), ov.Type.boolean, name=MASK)
    embeds.output(0).get_tensor().set_names({EMBEDS})
    mask.output(0).get_tensor().set_names({MASK})
    users = list(out.get_target_inputs())
    chosen = ops.select(mask, embeds, out)
    for user in users:
        user.replace_source_output(chosen.output(0))
    model.add_parameters([embeds, mask])
    model.validate_nodes_and_infer_types()
