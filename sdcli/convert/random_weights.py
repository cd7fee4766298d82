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
