"""`sdcli convert` for Z-Image (diffusers' ZImagePipeline: Tongyi-MAI/Z-Image-Turbo and its
fine-tunes) to OpenVINO IR in optimum-cli's `z-image` folder layout:

    transformer/   hidden_states [B, 16, h, w] (the latents, unpatched), timestep [1] (1 - sigma),
                   encoder_hidden_states [B, L, 2560] (the caption, zeros after its tokens),
                   encoder_attention_mask [B, L] (0 on the caption's tokens, the lowest float after),
                   txt_ids [B, L, 3] and img_ids [B, N, 3] (int32 RoPE positions, N the image's
                   2x2 patches rounded up to 32) -> out_hidden_states [B, 16, h, w] (the velocity
                   with Z-Image's sign: the pipeline negates it)
    text_encoder/  input_ids, attention_mask [1, T] -> last_hidden_state [1, T, 2560]: the hidden
                   state the transformer reads, hidden_states[-2] of Qwen3 (the IR keeps the layers
                   up to it; the last layer and the final norm are not in it)
    vae_decoder/, vae_encoder/, tokenizer/ (with openvino_tokenizer.xml), scheduler/, model_index.json

These are the inputs openvino-genai's ZImagePipeline feeds; sdcli.json gets the model's
defaults (9 steps, guidance 0).  Components are exported one at a time, each freed when
written, as for the UNet models.
"""
from __future__ import annotations

from pathlib import Path

from sdcli.convert.ir import Int4, compress_saved_ir, model_config, save_ir, to_openvino, write_json
from sdcli.convert.transformer_pipeline import TransformerPipeline
from sdcli.engine.families.z_image import DEFAULTS

PIPELINE = "ZImagePipeline"
SEQ_MULTIPLE = 32  # the transformer pads its image and caption sequences to multiples of this
PATCH = 2


# --- torch wrappers ------------------------------------------------------------------------------

def _transformer_wrapper():
    import torch
    import torch.nn.functional as F

    class RealRotaryAttention:
        """Z-Image's attention processor with the rotary embedding in real arithmetic (the
        IR has no complex numbers): `freqs_cis` is (cos, sin), each [B, S, head_dim / 2]."""

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, freqs_cis=None):
            query = attn.to_q(hidden_states).unflatten(-1, (attn.heads, -1))
            key = attn.to_k(hidden_states).unflatten(-1, (attn.heads, -1))
            value = attn.to_v(hidden_states).unflatten(-1, (attn.heads, -1))
            if attn.norm_q is not None:
                query = attn.norm_q(query)
            if attn.norm_k is not None:
                key = attn.norm_k(key)
            if freqs_cis is not None:
                cos, sin = freqs_cis[0].unsqueeze(2), freqs_cis[1].unsqueeze(2)

                def rotate(x):  # pairs (even, odd) as (real, imaginary), times cos + i sin
                    pairs = x.unflatten(-1, (-1, 2))
                    re, im = pairs[..., 0], pairs[..., 1]
                    return torch.stack([re * cos - im * sin, re * sin + im * cos], dim=-1).flatten(3)

                query, key = rotate(query), rotate(key)
            mask = attention_mask[:, None, None, :] if attention_mask is not None else None
            out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                                 attn_mask=mask, dropout_p=0.0, is_causal=False)
            out = attn.to_out[0](out.transpose(1, 2).flatten(2, 3))
            if len(attn.to_out) > 1:
                out = attn.to_out[1](out)
            return out

    class Transformer(torch.nn.Module):
        """ZImageTransformer2DModel.forward on fixed-shape tensors (one image per row, no
        Python lists): the same patches, pad tokens, positions and masks, so that it gives
        diffusers' output wherever the IR is reshaped to."""

        def __init__(self, model):
            super().__init__()
            self.model = model
            processor = RealRotaryAttention()
            for block in [*model.noise_refiner, *model.context_refiner, *model.layers]:
                block.attention.set_processor(processor)
            # RoPE's tables as the model computes them (complex64), kept as cos and sin
            tables = model.rope_embedder.precompute_freqs_cis(model.rope_embedder.axes_dims,
                                                              model.rope_embedder.axes_lens,
                                                              theta=model.rope_embedder.theta)
            for i, table in enumerate(tables):
                self.register_buffer(f"cos{i}", table.real.contiguous(), persistent=False)
                self.register_buffer(f"sin{i}", table.imag.contiguous(), persistent=False)
            self.axes = len(tables)
            self.key = f"{PATCH}-1"

        def rope(self, ids):
            ids = ids.long()
            cos = torch.cat([getattr(self, f"cos{i}")[ids[..., i]] for i in range(self.axes)], dim=-1)
            sin = torch.cat([getattr(self, f"sin{i}")[ids[..., i]] for i in range(self.axes)], dim=-1)
            return cos, sin

        def forward(self, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, txt_ids, img_ids):
            m = self.model
            batch, channels, height, width = hidden_states.shape
            adaln = m.t_embedder(timestep * m.t_scale)
            # the image: 2x2 patches (h, w, channel order within one), embedded, then pad tokens
            # up to img_ids' length (a multiple of 32)
            x = hidden_states.view(batch, channels, height // PATCH, PATCH, width // PATCH, PATCH)
            x = x.permute(0, 2, 4, 3, 5, 1).reshape(batch, -1, PATCH * PATCH * channels)
            tokens = x.shape[1]
            x = m.all_x_embedder[self.key](x)
            padded = img_ids.shape[1]
            x = torch.cat([x, m.x_pad_token.expand(batch, padded, -1)], dim=1)[:, :padded]
            x_freqs = self.rope(img_ids)
            for layer in m.noise_refiner:
                x = layer(x, None, x_freqs, adaln)
            # the caption: its tokens (mask 0), pad tokens up to a multiple of 32 (attended to,
            # as in diffusers), then nothing (masked out: another row's longer caption)
            real = encoder_attention_mask >= 0
            cap = m.cap_embedder(encoder_hidden_states)
            cap = torch.where(real.unsqueeze(-1), cap, m.cap_pad_token.to(cap.dtype))
            rounded = (real.sum(dim=1, keepdim=True) + SEQ_MULTIPLE - 1) // SEQ_MULTIPLE * SEQ_MULTIPLE
            valid = torch.ones_like(real, dtype=torch.int64).cumsum(dim=1) <= rounded
            cap_freqs = self.rope(txt_ids)
            for layer in m.context_refiner:
                cap = layer(cap, valid, cap_freqs)
            # image and caption together
            unified = torch.cat([x, cap], dim=1)
            mask = torch.cat([torch.ones_like(img_ids[..., 0], dtype=torch.bool), valid], dim=1)
            freqs = (torch.cat([x_freqs[0], cap_freqs[0]], dim=1), torch.cat([x_freqs[1], cap_freqs[1]], dim=1))
            for layer in m.layers:
                unified = layer(unified, mask, freqs, adaln)
            out = m.all_final_layer[self.key](unified, c=adaln)[:, :tokens]
            out = out.view(batch, height // PATCH, width // PATCH, PATCH, PATCH, channels)
            return out.permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, height, width)

    return Transformer


def _text_encoder_wrapper():
    import torch

    class TextEncoder(torch.nn.Module):
        """Qwen3 up to the hidden state Z-Image reads (hidden_states[-2]: the output of the
        last layer but one, before any norm): the last layer and the final norm are dropped."""

        def __init__(self, model, layers: int):
            super().__init__()
            model.layers = model.layers[:layers]
            model.norm = torch.nn.Identity()
            model.config.num_hidden_layers = layers
            if getattr(model.config, "layer_types", None):
                model.config.layer_types = model.config.layer_types[:layers]
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

    return TextEncoder


# --- the components ------------------------------------------------------------------------------

def export_transformer(transformer, out: Path, weight_format: str, int4: Int4 | None = None) -> None:
    """Write transformer/ (see the module's doc for its inputs)."""
    import torch
    from openvino import PartialShape, Type

    Transformer = _transformer_wrapper()
    cfg = transformer.config
    lat, caption = 8, SEQ_MULTIPLE  # example: 8x8 latents (16 patches, padded to 32), one caption of 32
    example = {
        "hidden_states": torch.randn(1, cfg.in_channels, lat, lat),
        "timestep": torch.tensor([0.5]),
        "encoder_hidden_states": torch.randn(1, caption, cfg.cap_feat_dim),
        "encoder_attention_mask": torch.zeros(1, caption),
        "txt_ids": torch.zeros(1, caption, 3, dtype=torch.int32),
        "img_ids": torch.zeros(1, SEQ_MULTIPLE, 3, dtype=torch.int32),
    }
    inputs = [
        (PartialShape([-1, cfg.in_channels, -1, -1]), Type.f32),
        (PartialShape([-1]), Type.f32),
        (PartialShape([-1, -1, cfg.cap_feat_dim]), Type.f32),
        (PartialShape([-1, -1]), Type.f32),
        (PartialShape([-1, -1, 3]), Type.i32),
        (PartialShape([-1, -1, 3]), Type.i32),
    ]
    model = to_openvino(Transformer(transformer), example, inputs, ["out_hidden_states"])
    # compressed from the saved fp16 IR, torch's copy freed (see compress_saved_ir)
    save_ir(model, out / "transformer", "fp16" if weight_format in ("int8", "int4") else weight_format)
    del model
    if weight_format in ("int8", "int4"):
        compress_saved_ir(out / "transformer", int4 if weight_format == "int4" else None)
    write_json(out / "transformer" / "config.json", model_config(transformer))


def export_text_encoder(text_encoder, out: Path, weight_format: str, int4: Int4 | None = None) -> None:
    """Write text_encoder/: Qwen3 truncated to the hidden state Z-Image reads; its config.json
    is the whole model's (as diffusers has it)."""
    import torch
    from openvino import PartialShape, Type

    TextEncoder = _text_encoder_wrapper()
    config = text_encoder.config.to_dict()
    layers = int(text_encoder.config.num_hidden_layers) - 1
    example = {"input_ids": torch.ones((1, 8), dtype=torch.int64), "attention_mask": torch.ones((1, 8), dtype=torch.int64)}
    inputs = [(PartialShape([-1, -1]), Type.i64), (PartialShape([-1, -1]), Type.i64)]
    model = to_openvino(TextEncoder(text_encoder, layers), example, inputs, ["last_hidden_state"])
    save_ir(model, out / "text_encoder", weight_format, int4)
    write_json(out / "text_encoder" / "config.json", config)


Z_IMAGE = TransformerPipeline(
    name="Z-Image", pipeline=PIPELINE, transformer="ZImageTransformer2DModel", text_encoder="Qwen3Model",
    vae="AutoencoderKL", export_transformer=export_transformer, export_text_encoder=export_text_encoder,
    defaults=lambda index: DEFAULTS, by_transformer_config=True,
    marker="context_refiner.")  # the caption's refiner blocks, in the original names and diffusers'
