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

from sdcli.convert.ir import WEIGHT_FORMATS, export_tokenizer, model_config, require_convert_extra, save_ir, \
    to_openvino, write_json
from sdcli.convert.lora import fuse_lora, replacement_scheduler_config
from sdcli.convert.options import ConvertOptions
from sdcli.convert.sources import default_output_name, load_components, resolve_source
from sdcli.util.errors import UsageError
from sdcli.util.fsutil import atomic_directory

__all__ = ["ConvertOptions", "WEIGHT_FORMATS", "convert", "default_output_name"]
COMPONENTS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
EXAMPLE_LATENT = 8  # the latent size of the example inputs the graphs are traced with


# --- torch wrappers that fix the names and signatures optimum-intel uses ---------------

def _wrappers():
    import torch

    class TextEncoder(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            out = self.model(input_ids=input_ids, return_dict=True)
            return out.last_hidden_state, out.pooler_output

    class UNet(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None):
            # The graph converts the int64 timestep to float first thing, which lets the
            # engine swap the input for a float one (Euler's timesteps are fractional).
            t = timestep.to(torch.float32)
            # timestep_cond: an LCM UNet's guidance-scale embedding (optimum-cli's name for it)
            return self.model(sample, t, encoder_hidden_states, timestep_cond=timestep_cond, return_dict=False)[0]

    class VaeEncoder(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, sample):
            return self.vae.encode(sample, return_dict=True).latent_dist.parameters

    class VaeDecoder(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, latent_sample):
            return self.vae.decode(latent_sample, return_dict=False)[0]

    return TextEncoder, UNet, VaeEncoder, VaeDecoder


def check_options(opts: ConvertOptions, output: Path) -> None:
    """UsageError for options that cannot work together or an extra that is missing."""
    if opts.weight_format not in WEIGHT_FORMATS:
        raise UsageError(f"--weight-format must be one of {', '.join(WEIGHT_FORMATS)}")
    if output.exists() and not opts.force:
        raise UsageError(f"{output} already exists (pass --force to replace it)")
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
    if opts.weight_format == "int8":
        try:
            import nncf  # noqa: F401
        except ImportError as exc:
            raise UsageError('--weight-format int8 needs nncf: pip install "sdcli[convert]"') from exc


def convert(source: str, output: Path, opts: ConvertOptions, log: Callable[[str], None] = print) -> Path:
    check_options(opts, output)
    kind, path = resolve_source(source, opts)

    import torch

    torch.set_grad_enabled(False)
    taesd = None
    if opts.tiny_vae:
        from sdcli.convert.tiny_vae import check_matches, load_tiny_vae

        log(f"loading {opts.tiny_vae}")
        taesd = load_tiny_vae(opts.tiny_vae)
    log(f"loading {source}")
    unet, vae, text_encoder, tokenizer, scheduler_config, index = load_components(kind, path, opts)
    if taesd is not None:
        check_matches(taesd.config, vae.config.latent_channels, 2 ** (len(vae.config.block_out_channels) - 1))
    if opts.lora:
        log(f"fusing LoRA {opts.lora} (scale {opts.lora_scale:g})")
        fuse_lora(unet, vae, text_encoder, tokenizer, opts.lora, opts.lora_scale)
    if opts.scheduler:
        scheduler_config = replacement_scheduler_config(opts.scheduler, scheduler_config, unet.config)

    with atomic_directory(output, replace=opts.force) as tmp:
        started = time.perf_counter()
        log("[1/6] tokenizer")
        export_tokenizer(tokenizer, tmp / "tokenizer")
        write_json(tmp / "scheduler" / "scheduler_config.json", scheduler_config)
        log("[2/6] text_encoder")
        seq, hidden = export_text_encoder(text_encoder, tokenizer, tmp, opts.weight_format)
        del text_encoder
        gc.collect()
        log("[3/6] unet")
        # a UNet to quantize is written in fp16 first and quantized at the end
        export_unet(unet, seq, hidden, tmp, "fp16" if opts.quantize else opts.weight_format)
        del unet
        gc.collect()
        export_vae(vae, tmp, opts.weight_format, log)
        del vae
        gc.collect()
        if taesd is not None:
            from sdcli.convert.tiny_vae import export_tiny_vae

            log("[5/6] vae_encoder_tiny, vae_decoder_tiny")
            export_tiny_vae(taesd, tmp, opts.weight_format)
        log("[6/6] model_index.json")
        write_metadata(tmp, index, source, opts, time.perf_counter() - started)
        if opts.quantize == "hybrid":
            from sdcli.convert.quantize import hybrid_quantize_unet

            log("[6/6] unet: hybrid quantization")
            hybrid_quantize_unet(tmp, opts.calibration_prompts, opts.calibration_samples, log)
    log(f"wrote {output} ({_folder_size(output) / 1e6:.1f} MB, {opts.weight_format})")
    return output


def export_text_encoder(text_encoder, tokenizer, out: Path, weight_format: str) -> tuple[int, int]:
    """Write text_encoder/; returns (its sequence length, its hidden size)."""
    import torch
    from openvino import PartialShape, Type

    TextEncoder = _wrappers()[0]
    seq = tokenizer.model_max_length if tokenizer.model_max_length < 10_000 else 77
    model = to_openvino(
        TextEncoder(text_encoder),
        {"input_ids": torch.ones((1, seq), dtype=torch.int64)},
        [(PartialShape([-1, -1]), Type.i64)],
        ["last_hidden_state", "pooler_output"],
    )
    save_ir(model, out / "text_encoder", weight_format)
    write_json(out / "text_encoder" / "config.json", text_encoder.config.to_dict())
    return seq, text_encoder.config.hidden_size


def export_unet(unet, seq: int, hidden: int, out: Path, weight_format: str) -> None:
    import torch
    from openvino import PartialShape, Type

    UNet = _wrappers()[1]
    ucfg = unet.config
    lat = EXAMPLE_LATENT
    example = {
        "sample": torch.randn(2, ucfg.in_channels, lat, lat),
        "timestep": torch.tensor([1, 1], dtype=torch.int64),
        "encoder_hidden_states": torch.randn(2, seq, ucfg.cross_attention_dim or hidden),
    }
    inputs = [
        (PartialShape([-1, ucfg.in_channels, -1, -1]), Type.f32),
        (PartialShape([-1]), Type.i64),
        (PartialShape([-1, -1, ucfg.cross_attention_dim]), Type.f32),
    ]
    if ucfg.get("time_cond_proj_dim"):  # a Latent Consistency Model
        example["timestep_cond"] = torch.randn(2, ucfg.time_cond_proj_dim)
        inputs.append((PartialShape([-1, ucfg.time_cond_proj_dim]), Type.f32))
    model = to_openvino(UNet(unet), example, inputs, ["out_sample"])
    save_ir(model, out / "unet", weight_format)
    write_json(out / "unet" / "config.json", model_config(unet))


def export_vae(vae, out: Path, weight_format: str, log: Callable[[str], None]) -> None:
    """Write vae_encoder/ and vae_decoder/."""
    import torch
    from openvino import PartialShape, Type

    _, _, VaeEncoder, VaeDecoder = _wrappers()
    vcfg = vae.config
    scale = 2 ** (len(vcfg.block_out_channels) - 1)
    lat = EXAMPLE_LATENT
    log("[4/6] vae_encoder")
    model = to_openvino(
        VaeEncoder(vae),
        {"sample": torch.randn(1, vcfg.in_channels, lat * scale, lat * scale)},
        [(PartialShape([-1, vcfg.in_channels, -1, -1]), Type.f32)],
        ["latent_parameters"],
    )
    save_ir(model, out / "vae_encoder", weight_format)
    write_json(out / "vae_encoder" / "config.json", model_config(vae))
    del model
    log("[5/6] vae_decoder")
    model = to_openvino(
        VaeDecoder(vae),
        {"latent_sample": torch.randn(1, vcfg.latent_channels, lat, lat)},
        [(PartialShape([-1, vcfg.latent_channels, -1, -1]), Type.f32)],
        ["sample"],
    )
    save_ir(model, out / "vae_decoder", weight_format)
    write_json(out / "vae_decoder" / "config.json", model_config(vae))


def write_metadata(out: Path, index: dict, source: str, opts: ConvertOptions, seconds: float) -> None:
    """model_index.json (as diffusers wrote it, less absent components) and sdcli.json."""
    index = {k: v for k, v in index.items() if not (isinstance(v, list) and v[0] is None)}
    write_json(out / "model_index.json", index)
    write_json(
        out / "sdcli.json",
        {"source": source, "weight_format": opts.weight_format, "converted_in_s": round(seconds, 1),
         **({"tiny_vae": opts.tiny_vae} if opts.tiny_vae else {}),
         **({"quantize": opts.quantize} if opts.quantize else {})},
    )


def _folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
