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


POOL_SIZE = 1 << 24  # values drawn once per large module; its weights are windows of them
LARGE_PARAMETERS = 200_000_000  # modules above this many parameters are filled from the pool


def make_large(make, torch_dtype, seed: int, usual=None):
    """`make()` in `torch_dtype`.  A module of more than LARGE_PARAMETERS parameters is made on
    the meta device and its weights filled by `fill_from_pool` (torch's default initialisers
    draw every value from one serial generator: minutes for a 6 B transformer, while what a
    benchmark measures does not depend on the values); a smaller one is made as usual, and
    `usual(module)` (where given) applied to it."""
    import torch

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)
    try:
        with torch.device("meta"):
            module = make()
        large = sum(p.numel() for p in module.parameters()) > LARGE_PARAMETERS
        if large and not _persistent_buffers(module):
            module = module.to_empty(device="cpu")  # (this unties tied weights: transformers ties them again)
            if hasattr(module, "tie_weights"):
                module.tie_weights()
            fill_from_pool(module, seed)
        else:
            module = make()
            if usual is not None:
                usual(module)
    finally:
        torch.set_default_dtype(previous)
    return module


def _persistent_buffers(module) -> list[str]:
    """The saved tensors that are not parameters (they would be left unset on the meta path)."""
    return sorted(set(module.state_dict()) - {name for name, _ in module.named_parameters(remove_duplicate=False)})


def fill_from_pool(module, seed: int) -> None:
    """Give every parameter of `module` random values: a weight (2 or more dimensions) windows of
    one pool of normal draws at random offsets, scaled by 1/sqrt(3 fan_in) (the spread of torch's
    default Linear init); a norm's weight 1; any other vector (a bias) the pool's values times 0.02."""
    import torch

    g = torch.Generator().manual_seed(seed + 2)
    draws = torch.randn(POOL_SIZE, generator=g)
    pools: dict = {}  # the draws scaled, in a parameter's dtype (a few fan-ins: a few pools)
    with torch.no_grad():
        for name, p in module.named_parameters():
            flat = p.view(-1)
            if p.ndim < 2 and "norm" in name and name.endswith("weight"):
                flat.fill_(1.0)
                continue
            scale = (1.0 / (3 * p[0].numel())) ** 0.5 if p.ndim >= 2 else 0.02
            if (p.dtype, scale) not in pools:
                pools[p.dtype, scale] = (draws * scale).to(p.dtype)
            pool = pools[p.dtype, scale]
            for start in range(0, flat.numel(), POOL_SIZE):
                n = min(POOL_SIZE, flat.numel() - start)
                offset = int(torch.randint(0, POOL_SIZE - n + 1, (1,), generator=g))
                flat[start:start + n].copy_(pool[offset:offset + n])


def save_large_components(out_dir, factories: dict, torch_dtype, seed: int = 0, finish: dict | None = None) -> None:
    """Replace components of a pipeline folder (saved from a tiny stand-in of the same classes)
    by full-size random ones, made one at a time in `torch_dtype` (make_large), each saved and
    freed before the next: a 6 B transformer and Qwen3-4B need 20 GB together, each alone only
    its own size.  `factories` maps a component's folder name to a function making the module;
    `finish` {folder: function(module, seed)} is applied to the made module."""
    import gc
    import shutil
    from pathlib import Path

    finish = finish or {}
    for i, (name, make) in enumerate(factories.items()):
        module = make_large(make, torch_dtype, seed + i)
        if name in finish:
            module = finish[name](module, seed)
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
