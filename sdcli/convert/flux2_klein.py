"""`sdcli convert` for FLUX.2-klein (diffusers' Flux2KleinPipeline: black-forest-labs/FLUX.2-klein-4B
and -9B, distilled or Base) to OpenVINO IR in optimum-cli's `flux2-klein` folder layout, with the
inputs openvino-genai's Flux2KleinPipeline feeds:

    transformer/   hidden_states [B, N, 4C] (the latents in 2x2 patches, packed: N = h/2 * w/2),
                   timestep [B] (sigma: the pipeline's t / 1000), encoder_hidden_states [B, L, 3D]
                   (the prompt's Qwen3 states), txt_ids [B, L, 4] and img_ids [B, N, 4] (float
                   positions (t, h, w, l)), guidance [B] where the config has guidance_embeds
                   -> out_hidden_states [B, N, 4C] (the velocity, packed)
    text_encoder/  input_ids, attention_mask [1, T] -> hidden_states.9, hidden_states.18,
                   hidden_states.27 (Qwen3's hidden states the pipeline stacks, before the final
                   norm; the IR keeps the layers up to the last one read); its config.json adds
                   hidden_states_layers
    vae_decoder/   latent_sample [1, C, h, w] -> sample: the decoder alone; its config.json carries
                   the BatchNorm statistics (bn_running_mean_data, bn_running_var_data) that the
                   pipeline de-normalises the patches with before unpatchifying (the engine's
                   family does that, as genai does)
    vae_encoder/, tokenizer/ (with openvino_tokenizer.xml), scheduler/, model_index.json

sdcli.json gets the model's defaults: 4 steps and guidance 1 for the distilled models
(model_index.json's is_distilled), 50 steps and guidance 4 (the pipeline's) for Base.
"""
from __future__ import annotations

from pathlib import Path

from sdcli.convert.ir import Int4, compress_saved_ir, model_config, save_ir, to_openvino, write_json
from sdcli.convert.transformer_pipeline import TransformerPipeline
from sdcli.engine.families.flux2_klein import BASE_DEFAULTS, DISTILLED_DEFAULTS
from sdcli.util.errors import UsageError

PIPELINE = "Flux2KleinPipeline"
TEXT_LAYERS = (9, 18, 27)  # Flux2KleinPipeline's text_encoder_out_layers


def _wrappers():
    import torch

    class Transformer(torch.nn.Module):
        """Flux2Transformer2DModel.forward with the inputs by genai's names (ids of one row: the
        model reads the first row's)."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, hidden_states, timestep, encoder_hidden_states, txt_ids, img_ids, guidance=None):
            return self.model(hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states,
                              timestep=timestep, img_ids=img_ids, txt_ids=txt_ids, guidance=guidance,
                              return_dict=False)[0]

    class TextEncoder(torch.nn.Module):
        """Qwen3 up to the last layer read; its hidden states after each of `layers` (before any
        norm: the final norm is dropped, the layers after the last read too)."""

        def __init__(self, model, layers: tuple[int, ...]):
            super().__init__()
            keep = max(layers)
            model.layers = model.layers[:keep]
            model.norm = torch.nn.Identity()
            model.config.num_hidden_layers = keep
            if getattr(model.config, "layer_types", None):
                model.config.layer_types = model.config.layer_types[:keep]
            self.model, self.layers = model, layers

        def forward(self, input_ids, attention_mask):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                             use_cache=False)
            return tuple(out.hidden_states[k] for k in self.layers)

    return Transformer, TextEncoder


def export_transformer(transformer, out: Path, weight_format: str, int4: Int4 | None = None) -> None:
    import torch
    from openvino import PartialShape, Type

    Transformer, _ = _wrappers()
    cfg = transformer.config
    tokens, text = 16, 8
    example = {"hidden_states": torch.randn(1, tokens, cfg.in_channels), "timestep": torch.tensor([0.5]),
               "encoder_hidden_states": torch.randn(1, text, cfg.joint_attention_dim),
               "txt_ids": torch.zeros(1, text, 4), "img_ids": torch.zeros(1, tokens, 4)}
    example["txt_ids"][0, :, 3] = torch.arange(text)
    example["img_ids"][0, :, 1] = torch.arange(tokens) // 4
    example["img_ids"][0, :, 2] = torch.arange(tokens) % 4
    inputs = [(PartialShape([-1, -1, cfg.in_channels]), Type.f32), (PartialShape([-1]), Type.f32),
              (PartialShape([-1, -1, cfg.joint_attention_dim]), Type.f32), (PartialShape([-1, -1, 4]), Type.f32),
              (PartialShape([-1, -1, 4]), Type.f32)]
    if cfg.guidance_embeds:
        example["guidance"] = torch.tensor([1.0])
        inputs.append((PartialShape([-1]), Type.f32))
    model = to_openvino(Transformer(transformer), example, inputs, ["out_hidden_states"])
    # compressed from the saved fp16 IR, torch's copy freed (see compress_saved_ir)
    save_ir(model, out / "transformer", "fp16" if weight_format in ("int8", "int4") else weight_format)
    del model
    if weight_format in ("int8", "int4"):
        compress_saved_ir(out / "transformer", int4 if weight_format == "int4" else None)
    write_json(out / "transformer" / "config.json", model_config(transformer))


def export_text_encoder(text_encoder, out: Path, weight_format: str, layers: tuple[int, ...] = TEXT_LAYERS,
                        int4: Int4 | None = None) -> None:
    """Write text_encoder/ from a Qwen3ForCausalLM (its `model`, truncated); config.json is the
    whole model's with hidden_states_layers added (genai reads them)."""
    import torch
    from openvino import PartialShape, Type

    _, TextEncoder = _wrappers()
    config = text_encoder.config.to_dict()
    if max(layers) > int(text_encoder.config.num_hidden_layers):
        raise UsageError(f"text_encoder: Qwen3 has {text_encoder.config.num_hidden_layers} layers; FLUX.2-klein reads "
                         f"layers {list(layers)}")
    example = {"input_ids": torch.ones((1, 8), dtype=torch.int64),
               "attention_mask": torch.ones((1, 8), dtype=torch.int64)}
    inputs = [(PartialShape([-1, -1]), Type.i64), (PartialShape([-1, -1]), Type.i64)]
    model = to_openvino(TextEncoder(text_encoder.model, layers), example, inputs,
                        [f"hidden_states.{k}" for k in layers])
    save_ir(model, out / "text_encoder", weight_format, int4)
    write_json(out / "text_encoder" / "config.json", {**config, "hidden_states_layers": list(layers)})


def add_batch_norm_statistics(vae, out: Path) -> None:
    """The VAE's latent BatchNorm statistics in vae_decoder/ and vae_encoder/config.json, by the
    names genai reads."""
    from sdcli.model.config_checks import read_json

    stats = {"bn_running_mean_data": [float(v) for v in vae.bn.running_mean.float().tolist()],
             "bn_running_var_data": [float(v) for v in vae.bn.running_var.float().tolist()]}
    for name in ("vae_decoder", "vae_encoder"):
        write_json(out / name / "config.json", {**read_json(out / name / "config.json"), **stats})


def _export_text_encoder(text_encoder, out: Path, weight_format: str, int4: Int4 | None) -> None:
    export_text_encoder(text_encoder, out, weight_format, int4=int4)


def _defaults(index: dict) -> tuple[int, float]:
    """The distilled models' (model_index.json's is_distilled) or Base's."""
    return DISTILLED_DEFAULTS if index.get("is_distilled") else BASE_DEFAULTS


FLUX2_KLEIN = TransformerPipeline(
    name="FLUX.2-klein", pipeline=PIPELINE, transformer="Flux2Transformer2DModel", text_encoder="Qwen3ForCausalLM",
    vae="AutoencoderKLFlux2", export_transformer=export_transformer, export_text_encoder=_export_text_encoder,
    defaults=_defaults, after_vae=add_batch_norm_statistics,
    marker="double_stream_modulation_img.")  # BFL's .lin and diffusers' .linear: FLUX.2's, not FLUX.1's
