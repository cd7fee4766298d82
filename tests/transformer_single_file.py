"""A diffusers transformer's weights written in the original (non-diffusers) tensor names, as the
single-file checkpoints people share for FLUX.2-klein (Black Forest Labs' names) and Z-Image
(Tongyi-MAI's, under ComfyUI's `model.diffusion_model.` prefix) have them: the inverse of
diffusers' convert_flux2_transformer_checkpoint_to_diffusers and
convert_z_image_transformer_checkpoint_to_diffusers (q, k and v fused into one qkv, the final
AdaLN's (scale, shift) halves in BFL's (shift, scale) order, norms' `.scale`).

Every tensor is written under exactly one name; a name these maps do not know fails loudly.
The tests check that diffusers' from_single_file reads the result back to the same weights.
"""
from __future__ import annotations

import re

COMFY_PREFIX = "model.diffusion_model."

# FLUX.2: diffusers' name (regex) -> BFL's
FLUX2_NAMES = [
    (r"^x_embedder\.", "img_in."),
    (r"^context_embedder\.", "txt_in."),
    (r"^time_guidance_embed\.timestep_embedder\.linear_1\.", "time_in.in_layer."),
    (r"^time_guidance_embed\.timestep_embedder\.linear_2\.", "time_in.out_layer."),
    (r"^time_guidance_embed\.guidance_embedder\.linear_1\.", "guidance_in.in_layer."),
    (r"^time_guidance_embed\.guidance_embedder\.linear_2\.", "guidance_in.out_layer."),
    (r"^(double_stream_modulation_img|double_stream_modulation_txt|single_stream_modulation)\.linear\.", r"\1.lin."),
    (r"^proj_out\.", "final_layer.linear."),
    (r"^norm_out\.linear\.", "final_layer.adaLN_modulation.1."),
    (r"^transformer_blocks\.(\d+)\.attn\.norm_q\.weight$", r"double_blocks.\1.img_attn.norm.query_norm.scale"),
    (r"^transformer_blocks\.(\d+)\.attn\.norm_k\.weight$", r"double_blocks.\1.img_attn.norm.key_norm.scale"),
    (r"^transformer_blocks\.(\d+)\.attn\.norm_added_q\.weight$", r"double_blocks.\1.txt_attn.norm.query_norm.scale"),
    (r"^transformer_blocks\.(\d+)\.attn\.norm_added_k\.weight$", r"double_blocks.\1.txt_attn.norm.key_norm.scale"),
    (r"^transformer_blocks\.(\d+)\.attn\.to_out\.0\.", r"double_blocks.\1.img_attn.proj."),
    (r"^transformer_blocks\.(\d+)\.attn\.to_add_out\.", r"double_blocks.\1.txt_attn.proj."),
    (r"^transformer_blocks\.(\d+)\.ff\.linear_in\.", r"double_blocks.\1.img_mlp.0."),
    (r"^transformer_blocks\.(\d+)\.ff\.linear_out\.", r"double_blocks.\1.img_mlp.2."),
    (r"^transformer_blocks\.(\d+)\.ff_context\.linear_in\.", r"double_blocks.\1.txt_mlp.0."),
    (r"^transformer_blocks\.(\d+)\.ff_context\.linear_out\.", r"double_blocks.\1.txt_mlp.2."),
    (r"^single_transformer_blocks\.(\d+)\.attn\.to_qkv_mlp_proj\.", r"single_blocks.\1.linear1."),
    (r"^single_transformer_blocks\.(\d+)\.attn\.to_out\.", r"single_blocks.\1.linear2."),
    (r"^single_transformer_blocks\.(\d+)\.attn\.norm_q\.weight$", r"single_blocks.\1.norm.query_norm.scale"),
    (r"^single_transformer_blocks\.(\d+)\.attn\.norm_k\.weight$", r"single_blocks.\1.norm.key_norm.scale"),
]
# FLUX.2's fused projections: (diffusers' q, k, v prefix) -> BFL's qkv
FLUX2_QKV = [(r"^transformer_blocks\.(\d+)\.attn\.to_(q|k|v)\.", r"double_blocks.\1.img_attn.qkv."),
             (r"^transformer_blocks\.(\d+)\.attn\.add_(q|k|v)_proj\.", r"double_blocks.\1.txt_attn.qkv.")]

# Z-Image: diffusers' name (regex) -> Tongyi-MAI's
Z_IMAGE_NAMES = [
    (r"^all_final_layer\.2-1\.", "final_layer."),
    (r"^all_x_embedder\.2-1\.", "x_embedder."),
    (r"\.attention\.to_out\.0\.", ".attention.out."),
    (r"\.attention\.norm_k\.weight$", ".attention.k_norm.weight"),
    (r"\.attention\.norm_q\.weight$", ".attention.q_norm.weight"),
]
Z_IMAGE_QKV = [(r"^(.*)\.attention\.to_(q|k|v)\.", r"\1.attention.qkv.")]
Z_IMAGE_KEEP = (r"^(t_embedder|cap_embedder|noise_refiner|context_refiner|layers)\.", r"^(x_pad_token|cap_pad_token)$")


def _original(state: dict, names: list, qkv: list, keep: tuple = ()) -> dict:
    import torch

    out, fused = {}, {}
    for name, tensor in state.items():
        for pattern, target in qkv:
            match = re.match(pattern, name)
            if match:
                fused_name = re.sub(pattern, target, name, count=1)
                fused.setdefault(fused_name, {})[match.group(2)] = tensor
                break
        else:
            for pattern, target in names:
                if re.search(pattern, name):
                    out[re.sub(pattern, target, name, count=1)] = tensor
                    break
            else:
                if not any(re.match(pattern, name) for pattern in keep):
                    raise KeyError(f"no original name for {name}")
                out[name] = tensor
    for name, parts in fused.items():
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def flux2_original_state_dict(state: dict) -> dict:
    """A Flux2Transformer2DModel's state dict in Black Forest Labs' names."""
    import torch

    out = _original(state, FLUX2_NAMES, FLUX2_QKV)
    for name in [n for n in out if n.startswith("final_layer.adaLN_modulation.1.")]:
        scale, shift = out[name].chunk(2, dim=0)  # diffusers' (scale, shift) -> BFL's (shift, scale)
        out[name] = torch.cat([shift, scale], dim=0)
    return out


def z_image_original_state_dict(state: dict, prefix: str = COMFY_PREFIX) -> dict:
    """A ZImageTransformer2DModel's state dict in Tongyi-MAI's names, under ComfyUI's prefix."""
    original = _original(state, Z_IMAGE_NAMES, Z_IMAGE_QKV, Z_IMAGE_KEEP)
    return {prefix + name: tensor for name, tensor in original.items()}
