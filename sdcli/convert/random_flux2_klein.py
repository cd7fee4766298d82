"""Random-weight FLUX.2-klein pipelines (black-forest-labs/FLUX.2-klein-4B's architecture), built
locally.

`--tiny-flux2-klein` is what the tests run (seconds); `--flux2-klein` the real architecture
(a 3.9 B transformer and Qwen3-4B as Qwen3ForCausalLM, random weights in half precision) for
benchmarks.  The Qwen3 text encoder, its offline tokenizer (a byte-level Qwen2 BPE with Qwen3's
chat template) and the building are random_qwen3's.

The tiny text encoder keeps 28 layers (of width 32), so that the pipeline's default
`text_encoder_out_layers` (9, 18, 27) read it as they read Qwen3-4B's 36: layer 27's output
before the final norm.
"""
from __future__ import annotations

from pathlib import Path

from sdcli.convert.random_qwen3 import QWEN3_4B, build_qwen3_pipeline, tiny_qwen3
from sdcli.convert.random_weights import AUTOENCODER, TINY_AUTOENCODER

# black-forest-labs/FLUX.2-klein-4B's configs (transformer/, text_encoder/, vae/, scheduler/)
FLUX2_KLEIN = {
    "transformer": dict(
        patch_size=1,
        in_channels=128,
        num_layers=5,
        num_single_layers=20,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=7680,  # 3 x Qwen3-4B's 2560: layers 9, 18, 27 side by side
        timestep_guidance_channels=256,
        mlp_ratio=3.0,
        axes_dims_rope=(32, 32, 32, 32),
        rope_theta=2000,
        eps=1e-6,
        guidance_embeds=False,
    ),
    # Qwen3-4B, loaded by the pipeline as Qwen3ForCausalLM
    "text": dict(QWEN3_4B),
    # FLUX.2's autoencoder: 32 latent channels, BatchNorm statistics of its 2x2 patches
    "vae": dict(AUTOENCODER, latent_channels=32, use_quant_conv=True, use_post_quant_conv=True, batch_norm_eps=1e-4,
                patch_size=(2, 2)),
    "scheduler": dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                      base_image_seq_len=256, max_image_seq_len=4096, time_shift_type="exponential"),
    "is_distilled": True,
}

# The same shapes in small: one double and one single block of 2 heads of 16 (RoPE's four axes
# 4 each), a 28-layer Qwen3 of width 32 (the transformer reads 3 x 32), a VAE with 8 latent
# channels and one 2x step (latents half the image size, patches of 2x2 of those).
TINY_FLUX2_KLEIN = {
    "transformer": dict(FLUX2_KLEIN["transformer"], in_channels=32, num_layers=1, num_single_layers=1,
                        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=96,
                        timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4)),
    "text": tiny_qwen3(28),
    "vae": dict(FLUX2_KLEIN["vae"], **TINY_AUTOENCODER, latent_channels=8),
    "scheduler": FLUX2_KLEIN["scheduler"],
    "is_distilled": True,
}


def _draw_statistics(vae, seed: int):
    """The VAE's latent statistics (BatchNorm running mean and variance: 0 and 1 when made),
    drawn so that the de-normalisation before decoding is exercised."""
    import torch

    g = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        vae.bn.running_mean.copy_(0.3 * torch.randn(vae.bn.running_mean.shape, generator=g))
        vae.bn.running_var.copy_(0.5 + torch.rand(vae.bn.running_var.shape, generator=g))
    return vae


def build_random_flux2_klein(out_dir: str | Path, sizes: dict = TINY_FLUX2_KLEIN, seed: int = 0, torch_dtype=None,
                             build: bool = True):
    """Build a random-weight Flux2KleinPipeline, save it as a diffusers folder (model_index.json
    with is_distilled, transformer/, text_encoder/ (Qwen3ForCausalLM), tokenizer/, vae/,
    scheduler/) and return it (a full size in `torch_dtype`: None).  `build=False` makes the
    models on torch's meta device only (to check the configs instantiate) and saves nothing."""
    import torch
    from diffusers import AutoencoderKLFlux2, Flux2KleinPipeline, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    make = {"transformer": lambda s: Flux2Transformer2DModel(**s["transformer"]),
            "text_encoder": lambda s: Qwen3ForCausalLM(Qwen3Config(**s["text"])),
            "vae": lambda s: AutoencoderKLFlux2(**s["vae"])}
    if not build:
        with torch.device("meta"):
            return tuple(made(sizes) for made in make.values())

    def assemble(modules, tokenizer, scheduler, sizes):
        return Flux2KleinPipeline(scheduler=scheduler, vae=modules["vae"], text_encoder=modules["text_encoder"],
                                  tokenizer=tokenizer, transformer=modules["transformer"],
                                  is_distilled=sizes["is_distilled"])

    return build_qwen3_pipeline(out_dir, sizes, TINY_FLUX2_KLEIN, seed, torch_dtype, make, assemble,
                                {"vae": _draw_statistics})
