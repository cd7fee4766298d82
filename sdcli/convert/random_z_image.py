"""Random-weight Z-Image pipelines (Tongyi-MAI/Z-Image-Turbo's architecture), built locally.

`--tiny-z-image` is what the tests run (seconds); `--z-image` the real architecture (a 6.2 B
transformer and Qwen3-4B, random weights in half precision) for benchmarks, whose cost per
step does not depend on the values of the weights.  The Qwen3 text encoder, its offline
tokenizer and the building are random_qwen3's.
"""
from __future__ import annotations

from pathlib import Path

from sdcli.convert.random_qwen3 import QWEN3_4B, build_qwen3_pipeline, tiny_qwen3
from sdcli.convert.random_weights import AUTOENCODER, TINY_AUTOENCODER

# Tongyi-MAI/Z-Image-Turbo's configs (transformer/, text_encoder/, vae/, scheduler/)
Z_IMAGE = {
    "transformer": dict(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=3840,
        n_layers=30,
        n_refiner_layers=2,
        n_heads=30,
        n_kv_heads=30,
        norm_eps=1e-05,
        qk_norm=True,
        cap_feat_dim=2560,
        rope_theta=256.0,
        t_scale=1000.0,
        axes_dims=[32, 48, 48],
        axes_lens=[1536, 512, 512],
    ),
    # Qwen3-4B (the repo's text_encoder/config.json; model_index.json loads it as Qwen3Model)
    "text": dict(QWEN3_4B),
    # FLUX.1's autoencoder with Z-Image's scaling and shift
    "vae": dict(AUTOENCODER, latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                use_post_quant_conv=False),
    "scheduler": dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False),
}

# The same shapes in small: 2 heads of 32 (RoPE's axes 8 + 12 + 12), two main layers and one of
# each refiner; a 3-layer Qwen3 whose penultimate hidden state (after layer 2) is what the
# transformer reads; a VAE with 16 latent channels and one 2x step (latents half the image
# size, so that a small image has many latent pixels to compare).
TINY_Z_IMAGE = {
    "transformer": dict(Z_IMAGE["transformer"], dim=64, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2,
                        cap_feat_dim=32, axes_dims=[8, 12, 12]),
    "text": tiny_qwen3(3),
    "vae": dict(Z_IMAGE["vae"], **TINY_AUTOENCODER),
    "scheduler": Z_IMAGE["scheduler"],
}

def build_random_z_image(out_dir: str | Path, sizes: dict = TINY_Z_IMAGE, seed: int = 0, torch_dtype=None):
    """Build a random-weight ZImagePipeline, save it as a diffusers folder (as the Hub has
    Tongyi-MAI/Z-Image-Turbo: model_index.json, transformer/, text_encoder/ (Qwen3Model),
    tokenizer/, vae/, scheduler/) and return it.  `torch_dtype` (torch.bfloat16) builds a
    full-size one in half the memory, one large component at a time (and returns None)."""
    from diffusers import AutoencoderKL, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    def assemble(modules, tokenizer, scheduler, sizes):
        return ZImagePipeline(scheduler=scheduler, vae=modules["vae"], text_encoder=modules["text_encoder"],
                              tokenizer=tokenizer, transformer=modules["transformer"])

    return build_qwen3_pipeline(out_dir, sizes, TINY_Z_IMAGE, seed, torch_dtype,
                                {"transformer": lambda s: ZImageTransformer2DModel(**s["transformer"]),
                                 "text_encoder": lambda s: Qwen3Model(Qwen3Config(**s["text"])),
                                 "vae": lambda s: AutoencoderKL(**s["vae"])}, assemble)
