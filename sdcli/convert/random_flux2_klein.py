"""Random-weight FLUX.2-klein pipelines (black-forest-labs/FLUX.2-klein-4B's architecture), built
locally.

`--tiny-flux2-klein` is what the tests run (seconds); `--flux2-klein` the real architecture
(a 3.9 B transformer and Qwen3-4B as Qwen3ForCausalLM, random weights in half precision) for
benchmarks.  The tokenizer is random_z_image's offline byte-level Qwen2 BPE with Qwen3's chat
template (checked after saving: two prompts must give different ids).

The tiny text encoder keeps 28 layers (of width 32), so that the pipeline's default
`text_encoder_out_layers` (9, 18, 27) read it as they read Qwen3-4B's 36: layer 27's output
before the final norm.
"""
from __future__ import annotations

from pathlib import Path

from sdcli.convert.random_z_image import Z_IMAGE, check_tokenizer, qwen2_tokenizer

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
    "text": dict(Z_IMAGE["text"]),
    # FLUX.2's autoencoder: 32 latent channels, BatchNorm statistics of its 2x2 patches
    "vae": dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=32,
        norm_num_groups=32,
        sample_size=1024,
        use_quant_conv=True,
        use_post_quant_conv=True,
        mid_block_add_attention=True,
        batch_norm_eps=1e-4,
        patch_size=(2, 2),
    ),
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
    "text": dict(Z_IMAGE["text"], vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=28,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=1024,
                 bos_token_id=None, eos_token_id=None),
    "vae": dict(FLUX2_KLEIN["vae"], block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=8, sample_size=64,
                latent_channels=8),
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


def _vae_with_statistics(sizes: dict, seed: int):
    from diffusers import AutoencoderKLFlux2

    return _draw_statistics(AutoencoderKLFlux2(**sizes), seed)


def build_random_flux2_klein(out_dir: str | Path, sizes: dict = TINY_FLUX2_KLEIN, seed: int = 0, torch_dtype=None,
                             build: bool = True):
    """Build a random-weight Flux2KleinPipeline, save it as a diffusers folder (model_index.json
    with is_distilled, transformer/, text_encoder/ (Qwen3ForCausalLM), tokenizer/, vae/,
    scheduler/) and return it.  `build=False` makes the models on torch's meta device only
    (to check the configs instantiate) and saves nothing."""
    import torch
    from diffusers import (AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline,
                           Flux2Transformer2DModel)
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from sdcli.convert.random_weights import spread_weights

    if not build:
        with torch.device("meta"):
            return (Flux2Transformer2DModel(**sizes["transformer"]), Qwen3ForCausalLM(Qwen3Config(**sizes["text"])),
                    AutoencoderKLFlux2(**sizes["vae"]))
    from sdcli.convert.random_weights import save_large_components

    out_dir = Path(out_dir)
    tiny = sizes is TINY_FLUX2_KLEIN
    if not tiny and torch_dtype is not None:
        # full size: the small files from a tiny stand-in, then one large component at a time
        build_random_flux2_klein(out_dir, {**TINY_FLUX2_KLEIN, "scheduler": sizes["scheduler"],
                                           "is_distilled": sizes["is_distilled"]}, seed)
        save_large_components(out_dir, {"transformer": lambda: Flux2Transformer2DModel(**sizes["transformer"]),
                                        "text_encoder": lambda: Qwen3ForCausalLM(Qwen3Config(**sizes["text"])),
                                        "vae": lambda: _vae_with_statistics(sizes["vae"], seed)}, torch_dtype, seed)
        return None
    torch.manual_seed(seed)
    if torch_dtype is not None:
        torch.set_default_dtype(torch_dtype)
    try:
        transformer = Flux2Transformer2DModel(**sizes["transformer"])
        text_encoder = Qwen3ForCausalLM(Qwen3Config(**sizes["text"]))
        vae = AutoencoderKLFlux2(**sizes["vae"])
    finally:
        torch.set_default_dtype(torch.float32)
    if tiny:
        spread_weights(transformer, text_encoder, vae, seed=seed)
    _draw_statistics(vae, seed)
    tokenizer = qwen2_tokenizer()
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(sizes["scheduler"])
    pipe = Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              transformer=transformer, is_distilled=sizes["is_distilled"])
    pipe.save_pretrained(out_dir)
    check_tokenizer(out_dir / "tokenizer", sizes["text"]["vocab_size"])
    return pipe
