"""`sdcli convert`: a diffusers model (Hub repo, local folder or single checkpoint) to
OpenVINO IR, in the folder layout that `optimum-cli export openvino` writes.

Needs the ``convert`` extra (torch, diffusers, nncf); nothing outside this package imports
its heavy dependencies.  Components are exported one at a time, each freed when written.
"""
from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Callable

from sdcli.convert.defaults import check_default_vae, defaults_metadata, model_scheduler_config
from sdcli.convert.ir import WEIGHT_FORMATS, compress_saved_ir, export_tokenizer, model_config, \
    require_convert_extra, save_ir, to_openvino, write_json
from sdcli.convert.lora import fuse_lora, replacement_scheduler_config
from sdcli.convert.options import ConvertOptions
from sdcli.convert.sources import default_output_name, load_components, resolve_source
from sdcli.convert.vae_export import export_vae
from sdcli.util.errors import UsageError
from sdcli.util.fsutil import atomic_directory

__all__ = ["ConvertOptions", "WEIGHT_FORMATS", "convert", "default_output_name"]
COMPONENTS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
EXAMPLE_LATENT = 8  # the latent size of the example inputs the graphs are traced with


# --- torch wrappers that fix the names and signatures optimum-intel uses ---------------

def _wrappers():
    import torch

    class TextEncoder(torch.nn.Module):
        """optimum-cli's outputs: SD's (last_hidden_state, pooler_output); SDXL's encoders add
        every layer's hidden states (the UNet takes the penultimate), and the second one has
        a projection: (text_embeds, last_hidden_state, hidden_states.0, ...)."""

        def __init__(self, model, hidden_states: bool = False):
            super().__init__()
            self.model = model
            self.hidden_states = hidden_states

        def forward(self, input_ids):
            out = self.model(input_ids=input_ids, output_hidden_states=self.hidden_states, return_dict=True)
            first = (out.text_embeds, out.last_hidden_state) if hasattr(out, "text_embeds") else \
                (out.last_hidden_state, out.pooler_output)
            return (*first, *out.hidden_states) if self.hidden_states else first

    class UNet(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None, timestep_cond=None):
            # The graph converts the int64 timestep to float first thing, which lets the
            # engine swap the input for a float one (Euler's timesteps are fractional).
            t = timestep.to(torch.float32)
            # text_embeds, time_ids: SDXL's added conditioning; timestep_cond: an LCM UNet's
            # guidance-scale embedding (optimum-cli's names, in its order)
            added = {"text_embeds": text_embeds, "time_ids": time_ids} if text_embeds is not None else None
            return self.model(sample, t, encoder_hidden_states, timestep_cond=timestep_cond,
                              added_cond_kwargs=added, return_dict=False)[0]

    return TextEncoder, UNet


def check_options(opts: ConvertOptions, output: Path) -> None:
    """UsageError for options that cannot work together or an extra that is missing."""
    if opts.weight_format not in WEIGHT_FORMATS:
        raise UsageError(f"--weight-format must be one of {', '.join(WEIGHT_FORMATS)}")
    if output.exists() and not opts.force:
        raise UsageError(f"{output} already exists (pass --force to replace it)")
    check_default_vae(opts.default_vae, bool(opts.tiny_vae), "the converted folder")
    if opts.scheduler:
        from sdcli.schedulers import resolve_scheduler_name

        try:
            resolve_scheduler_name(opts.scheduler)
        except ValueError as exc:
            raise UsageError(f"--scheduler: {exc}") from None
    require_convert_extra()
    if opts.quantize not in (None, "hybrid"):
        raise UsageError(f"--quantize takes hybrid, got {opts.quantize!r}")
    if opts.quantize and opts.weight_format != "int8":
        raise UsageError("--quantize hybrid compresses the other components to int8: pass --weight-format int8 or leave it out")
    if opts.int4 is not None and opts.weight_format != "int4":
        raise UsageError("--group-size and --ratio set int4 compression: pass --weight-format int4 as well")
    if opts.int4_config is not None:
        opts.int4_config.check()
    if opts.weight_format in ("int8", "int4"):
        try:
            import nncf  # noqa: F401
        except ImportError as exc:
            raise UsageError(f'--weight-format {opts.weight_format} needs nncf: pip install "sdcli[convert]"') from exc


def transformer_pipelines() -> tuple:
    """The flow-matching transformer families convert knows (each module's TransformerPipeline):
    a new family adds its module and its entry here."""
    from sdcli.convert.flux2_klein import FLUX2_KLEIN
    from sdcli.convert.z_image import Z_IMAGE

    return (Z_IMAGE, FLUX2_KLEIN)


def convert(source: str, output: Path, opts: ConvertOptions, log: Callable[[str], None] = print) -> Path:
    check_options(opts, output)
    kind, path = resolve_source(source, opts)
    if kind == "controlnet":  # a ControlNetModel: its own exporter
        from sdcli.convert.controlnet import convert_controlnet

        convert_controlnet(source, path, output, opts, log)
        log(f"wrote {output} ({_folder_size(output) / 1e6:.1f} MB, {opts.weight_format})")
        return output
    from sdcli.convert.transformer_pipeline import convert_transformer_pipeline, transformer_source

    transformer = transformer_source(kind, path, opts, transformer_pipelines())
    if transformer is not None:  # a flow-matching transformer pipeline: its own driver
        family, root, transformer_file = transformer
        convert_transformer_pipeline(family, source, root, output, opts, log, transformer_file)
        log(f"wrote {output} ({_folder_size(output) / 1e6:.1f} MB, {opts.weight_format})")
        return output
    if opts.weight_format == "int4":
        raise UsageError("--weight-format int4 is for the transformer models (Z-Image, FLUX.2-klein); "
                         "use int8 for Stable Diffusion and SDXL")

    import torch

    torch.set_grad_enabled(False)
    taesd = None
    if opts.tiny_vae:
        from sdcli.convert.tiny_vae import check_matches, load_tiny_vae

        log(f"loading {opts.tiny_vae}")
        taesd = load_tiny_vae(opts.tiny_vae)
    log(f"loading {source}")
    parts = load_components(kind, path, opts, lazy=not opts.lora)  # a LoRA is fused into all at once
    if taesd is not None:
        vae_config = parts.vae_config
        check_matches(taesd.config, vae_config.get("latent_channels", 4),
                      2 ** (len(vae_config.get("block_out_channels", [0] * 4)) - 1))
    if opts.lora:
        log(f"fusing LoRA {opts.lora} (scale {opts.lora_scale:g})")
        fuse_lora(parts, opts.lora, opts.lora_scale)
    scheduler_config = parts.scheduler_config
    if opts.scheduler or opts.timestep_spacing:
        scheduler_config = model_scheduler_config(opts.scheduler, opts.timestep_spacing, scheduler_config,
                                                  parts.unet_config)

    with atomic_directory(output, replace=opts.force) as tmp:
        started = time.perf_counter()
        log("[1/6] tokenizer")
        for name, tokenizer in parts.text_encoders():
            export_tokenizer(tokenizer, tmp / name.replace("text_encoder", "tokenizer"))
        write_json(tmp / "scheduler" / "scheduler_config.json", scheduler_config)
        log("[2/6] unet")  # the largest first, into memory nothing else has used yet
        # a UNet to quantize or compress is written in fp16 first, then quantized at the end or
        # compressed from the saved IR once torch's copy is freed (see compress_saved_ir)
        seq = token_length(parts.text_encoders()[0][1])
        export_unet(parts.load("unet"), seq, tmp, "fp16" if opts.weight_format == "int8" else opts.weight_format,
                    added_conditioning(parts))
        parts.unet = None
        gc.collect()
        if opts.weight_format == "int8" and not opts.quantize:
            compress_saved_ir(tmp / "unet")
        for name, tokenizer in parts.text_encoders():
            log(f"[3/6] {name}")
            export_text_encoder(parts.load(name), tokenizer, tmp, opts.weight_format, name, parts.is_sdxl)
            setattr(parts, name, None)
            gc.collect()
        export_vae(parts.load("vae"), tmp, opts.weight_format, log)
        parts.vae = None
        gc.collect()
        if taesd is not None:
            from sdcli.convert.tiny_vae import export_tiny_vae

            log("[5/6] vae_encoder_tiny, vae_decoder_tiny")
            export_tiny_vae(taesd, tmp, opts.weight_format)
        log("[6/6] model_index.json")
        write_metadata(tmp, parts.index, source, opts, time.perf_counter() - started)
        if opts.quantize == "hybrid":
            from sdcli.convert.quantize import hybrid_quantize_unet

            log("[6/6] unet: hybrid quantization")
            hybrid_quantize_unet(tmp, opts.calibration_prompts, opts.calibration_samples, log)
    log(f"wrote {output} ({_folder_size(output) / 1e6:.1f} MB, {opts.weight_format})")
    return output


def token_length(tokenizer) -> int:
    """A text encoder's sequence length: its tokenizer's (77 for CLIP; a tokenizer that sets
    none gives a huge model_max_length)."""
    return tokenizer.model_max_length if tokenizer.model_max_length < 10_000 else 77


def export_text_encoder(text_encoder, tokenizer, out: Path, weight_format: str, name: str = "text_encoder",
                        hidden_states: bool = False) -> None:
    """Write text encoder `name`/, with every layer's hidden states as outputs when
    `hidden_states` (SDXL's)."""
    import torch
    from openvino import PartialShape, Type

    TextEncoder = _wrappers()[0]
    seq = token_length(tokenizer)
    projection = hasattr(text_encoder, "text_projection")
    outputs = ["text_embeds", "last_hidden_state"] if projection else ["last_hidden_state", "pooler_output"]
    if hidden_states:
        outputs += [f"hidden_states.{i}" for i in range(text_encoder.config.num_hidden_layers + 1)]
    model = to_openvino(
        TextEncoder(text_encoder, hidden_states),
        {"input_ids": torch.ones((1, seq), dtype=torch.int64)},
        [(PartialShape([-1, -1]), Type.i64)],
        outputs,
    )
    save_ir(model, out / name, weight_format)
    write_json(out / name / "config.json", text_encoder.config.to_dict())


def added_conditioning(parts) -> dict[str, int]:
    """SDXL's added UNet inputs and their widths: the second text encoder's pooled projection
    (`text_embeds`) and the micro-conditioning `time_ids` (6 numbers; 5 for the refiner)."""
    ucfg = parts.unet_config
    if ucfg.get("addition_embed_type") != "text_time":
        return {}
    config = parts.config_of("text_encoder_2")  # config.json, or the loaded model's config
    pooled = config["projection_dim"] if isinstance(config, dict) else config.projection_dim
    total, per_id = ucfg.get("projection_class_embeddings_input_dim") or 0, ucfg.get("addition_time_embed_dim") or 1
    if total - pooled <= 0 or (total - pooled) % per_id:
        raise UsageError(f"unet/config.json: projection_class_embeddings_input_dim {total} does not fit "
                         f"text_encoder_2's projection_dim {pooled}: files from different models?")
    return {"text_embeds": pooled, "time_ids": (total - pooled) // per_id}


def export_unet(unet, seq: int, out: Path, weight_format: str, added: dict[str, int]) -> None:
    """Write unet/; `added`: the widths of SDXL's added inputs (see added_conditioning)."""
    import torch
    from openvino import PartialShape, Type

    UNet = _wrappers()[1]
    ucfg = unet.config
    lat = EXAMPLE_LATENT
    example = {
        "sample": torch.randn(2, ucfg.in_channels, lat, lat),
        "timestep": torch.tensor([1, 1], dtype=torch.int64),
        "encoder_hidden_states": torch.randn(2, seq, ucfg.cross_attention_dim),
    }
    inputs = [
        (PartialShape([-1, ucfg.in_channels, -1, -1]), Type.f32),
        (PartialShape([-1]), Type.i64),
        (PartialShape([-1, -1, ucfg.cross_attention_dim]), Type.f32),
    ]
    for name, width in added.items():
        example[name] = torch.randn(2, width) if name == "text_embeds" else torch.full((2, width), 64.0)
        inputs.append((PartialShape([-1, width]), Type.f32))
    if ucfg.get("time_cond_proj_dim"):  # a Latent Consistency Model
        example["timestep_cond"] = torch.randn(2, ucfg.time_cond_proj_dim)
        inputs.append((PartialShape([-1, ucfg.time_cond_proj_dim]), Type.f32))
    model = to_openvino(UNet(unet), example, inputs, ["out_sample"])
    save_ir(model, out / "unet", weight_format)
    write_json(out / "unet" / "config.json", model_config(unet))


def write_metadata(out: Path, index: dict, source: str, opts: ConvertOptions, seconds: float) -> None:
    """model_index.json (as diffusers wrote it, less absent components) and sdcli.json."""
    index = {k: v for k, v in index.items() if not (isinstance(v, list) and v[0] is None)}
    write_json(out / "model_index.json", index)
    write_json(
        out / "sdcli.json",
        {"source": source, "weight_format": opts.weight_format, "converted_in_s": round(seconds, 1),
         **({"tiny_vae": opts.tiny_vae} if opts.tiny_vae else {}),
         **({"quantize": opts.quantize} if opts.quantize else {}),
         **defaults_metadata(opts.default_steps, opts.default_guidance, opts.default_vae)},
    )


def _folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
