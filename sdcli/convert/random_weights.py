"""Helpers shared by the random-weight model builders (random_model, random_z_image)."""
from __future__ import annotations


def bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP byte-level alphabet: printable bytes map to themselves, the rest above 255.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def spread_weights(*modules, seed: int = 0) -> None:
    """Random init of a tiny model leaves the output nearly independent of its inputs
    (zero-initialised output convolutions, small attention weights).  Re-draw every
    weight with a larger spread so that parity tests see prompt, timestep and
    latents all move the pixels."""
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in modules:
            for name, p in module.named_parameters():
                if "norm" in name and name.endswith("weight"):
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
                elif p.ndim >= 2:
                    fan_in = p[0].numel()
                    p.copy_(torch.randn(p.shape, generator=g) * (1.0 / fan_in) ** 0.5)
                else:
                    p.copy_(0.05 * torch.randn(p.shape, generator=g))


def save_large_components(out_dir, factories: dict, torch_dtype, seed: int = 0) -> None:
    """Replace components of a pipeline folder (saved from a tiny stand-in of the same classes)
    by full-size random ones, made one at a time in `torch_dtype`, each saved and freed before
    the next: a 6 B transformer and Qwen3-4B need 20 GB together, each alone only its own size.
    `factories` maps a component's folder name to a function making the module."""
    import gc
    import shutil
    from pathlib import Path

    import torch

    for i, (name, make) in enumerate(factories.items()):
        torch.manual_seed(seed + i)
        torch.set_default_dtype(torch_dtype)
        try:
            module = make()
        finally:
            torch.set_default_dtype(torch.float32)
        shutil.rmtree(Path(out_dir) / name, ignore_errors=True)
        module.save_pretrained(Path(out_dir) / name)
        del module
        gc.collect()


# The 4-level KL autoencoder of FLUX.1, FLUX.2 and SD3 (diffusers' AutoencoderKL /
# AutoencoderKLFlux2 configs), without what differs between them (latent channels, scaling,
# quant convs), and its small stand-in: two levels (one 2x step), one layer each.
AUTOENCODER = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                   up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                   layers_per_block=2, norm_num_groups=32, sample_size=1024, mid_block_add_attention=True)
TINY_AUTOENCODER = dict(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=8,
                        sample_size=64)
