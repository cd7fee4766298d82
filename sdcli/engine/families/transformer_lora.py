"""Where a LoRA's layers are in a flow-matching transformer's IR: Z-Image's and FLUX.2's names.

sdcli's transformer IRs keep diffusers' module paths (`self.model.layers.0.attention.to_q`,
`self.model.transformer_blocks.0.attn.add_k_proj`): a LoRA in diffusers/PEFT form
(`transformer.<path>`), ai-toolkit's with diffusers' paths (`diffusion_model.<path>`) or kohya's
flat form of them (`lora_unet_<path with _>`) meets them as they are (model/lora_names.py).
What is named otherwise is translated here as diffusers 0.42 translates it
(loaders/lora_conversion_utils.py):

* Z-Image: the original model's names, `attention.out` (to_out.0), `x_embedder`
  (all_x_embedder.2-1), `final_layer` (all_final_layer.2-1), and its fused `attention.qkv`,
  whose module is split over to_q, to_k, to_v (the single-file converter's equal thirds).
* FLUX.2: Black Forest Labs' names (kohya's `lora_unet_double_blocks_0_img_attn_qkv`,
  ai-toolkit's `diffusion_model.double_blocks.0.img_attn.qkv`): a double block's fused qkv is
  split over to_q/to_k/to_v (add_q_proj/... for the text stream) in equal thirds of its up
  matrix, as _convert_kohya_flux2_lora_to_diffusers and _convert_non_diffusers_flux2_lora_to_diffusers
  split it; a single block's linear1 is the IR's fused to_qkv_mlp_proj, linear2 its to_out.
"""
from __future__ import annotations

import re

from sdcli.model.lora_names import lora_layer_candidates


def _plain(component: str, name: str) -> list[str]:
    """The module's name and the name without a wrapper's prefix (no UNet-only translation)."""
    return lora_layer_candidates(component, name, {})


def _translated(component: str, name: str, table) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for candidate in _plain(component, name):
        found.append((candidate,))
        for pattern, targets in table:
            match = pattern.fullmatch(candidate)
            if match:
                found.append(tuple(match.expand(t) for t in targets))
    return found


_Z_IMAGE = [
    (re.compile(r"(.*_attention)_out"), (r"\1_to_out_0",)),
    (re.compile(r"(.*_attention)_qkv"), (r"\1_to_q", r"\1_to_k", r"\1_to_v")),
    (re.compile(r"x_embedder(_.*)?"), (r"all_x_embedder_2-1\1",)),
    (re.compile(r"final_layer(_.*)"), (r"all_final_layer_2-1\1",)),
]


def z_image_layers(component: str, name: str) -> list[tuple[str, ...]]:
    """ModelFamily.lora_layers for Z-Image."""
    return _translated(component, name, _Z_IMAGE)


_DOUBLE = r"(?:double_blocks|sformer_blocks)_(\d+)"
_FLUX2 = [(re.compile(pattern), targets) for pattern, targets in [
    (_DOUBLE + r"_img_attn_qkv", tuple(rf"transformer_blocks_\1_attn_to_{p}" for p in "qkv")),
    (_DOUBLE + r"_txt_attn_qkv", tuple(rf"transformer_blocks_\1_attn_add_{p}_proj" for p in "qkv")),
    (_DOUBLE + r"_img_attn_proj", (r"transformer_blocks_\1_attn_to_out_0",)),
    (_DOUBLE + r"_txt_attn_proj", (r"transformer_blocks_\1_attn_to_add_out",)),
    (_DOUBLE + r"_img_mlp_0", (r"transformer_blocks_\1_ff_linear_in",)),
    (_DOUBLE + r"_img_mlp_2", (r"transformer_blocks_\1_ff_linear_out",)),
    (_DOUBLE + r"_txt_mlp_0", (r"transformer_blocks_\1_ff_context_linear_in",)),
    (_DOUBLE + r"_txt_mlp_2", (r"transformer_blocks_\1_ff_context_linear_out",)),
    (r"sformer_blocks_(.*)", (r"transformer_blocks_\1",)),
    (r"single_blocks_(\d+)_linear1", (r"single_transformer_blocks_\1_attn_to_qkv_mlp_proj",)),
    (r"single_blocks_(\d+)_linear2", (r"single_transformer_blocks_\1_attn_to_out",)),
    (r"img_in", ("x_embedder",)),
    (r"txt_in", ("context_embedder",)),
    (r"time_in_in_layer", ("time_guidance_embed_timestep_embedder_linear_1",)),
    (r"time_in_out_layer", ("time_guidance_embed_timestep_embedder_linear_2",)),
    (r"guidance_in_in_layer", ("time_guidance_embed_guidance_embedder_linear_1",)),
    (r"guidance_in_out_layer", ("time_guidance_embed_guidance_embedder_linear_2",)),
    (r"final_layer_linear", ("proj_out",)),
    (r"final_layer_adaLN_modulation_1", ("norm_out_linear",)),
    (r"(single_stream_modulation|double_stream_modulation_img|double_stream_modulation_txt)_lin", (r"\1_linear",)),
]]


def flux2_layers(component: str, name: str) -> list[tuple[str, ...]]:
    """ModelFamily.lora_layers for FLUX.2."""
    return _translated(component, name, _FLUX2)
