"""Writing a diffusers AutoencoderKL as vae_encoder/ and vae_decoder/ IRs (optimum-cli's
names), for every model family that has one."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from sdcli.convert.ir import model_config, save_ir, to_openvino, write_json

EXAMPLE_LATENT = 8  # the latent size of the example inputs the graphs are traced with
LABELS = ("[4/6] vae_encoder", "[5/6] vae_decoder")


def _wrappers():
    import torch

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

    return VaeEncoder, VaeDecoder


def export_vae(vae, out: Path, weight_format: str, log: Callable[[str], None],
               labels: tuple[str, str] = LABELS) -> None:
    """Write vae_encoder/ and vae_decoder/ (`labels`: what is logged before each)."""
    import torch
    from openvino import PartialShape, Type

    VaeEncoder, VaeDecoder = _wrappers()
    vcfg = vae.config
    scale = 2 ** (len(vcfg.block_out_channels) - 1)
    lat = EXAMPLE_LATENT
    log(labels[0])
    model = to_openvino(
        VaeEncoder(vae),
        {"sample": torch.randn(1, vcfg.in_channels, lat * scale, lat * scale)},
        [(PartialShape([-1, vcfg.in_channels, -1, -1]), Type.f32)],
        ["latent_parameters"],
    )
    upcast_hint(model, vae)
    save_ir(model, out / "vae_encoder", weight_format)
    write_json(out / "vae_encoder" / "config.json", model_config(vae))
    del model
    log(labels[1])
    model = to_openvino(
        VaeDecoder(vae),
        {"latent_sample": torch.randn(1, vcfg.latent_channels, lat, lat)},
        [(PartialShape([-1, vcfg.latent_channels, -1, -1]), Type.f32)],
        ["sample"],
    )
    upcast_hint(model, vae)
    save_ir(model, out / "vae_decoder", weight_format)
    write_json(out / "vae_decoder" / "config.json", model_config(vae))


def upcast_hint(model, vae) -> None:
    """A VAE whose config says `force_upcast` (SDXL's) overflows float16: mark its IR as optimum-cli
    does, so that OpenVINO scales its activations down where it computes in f16 (the engine
    also compiles it at f32 where f16 would be used)."""
    if vae.config.get("force_upcast"):
        model.set_rt_info("128.0", ["runtime_options", "ACTIVATIONS_SCALE_FACTOR"])
