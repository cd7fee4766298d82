"""Stage 4, decode: latents to RGB pixels through the VAE decoder (full or tiny), whole or, as
diffusers' enable_tiling() does (AutoencoderKL's or AutoencoderTiny's), in tiles (engine/vae_tiling.py): asked for, or by itself when the
memory estimate says a whole decode would not fit (engine/memory.py: decode_fits)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from sdcli.engine.vae_tiling import Tiling, tiled_decode
from sdcli.imaging import image_io


def decode(decoder: Callable[[np.ndarray], np.ndarray], latents: np.ndarray, tiling: Tiling | None = None,
           on_tile: Callable[[int, int], None] | None = None) -> np.ndarray:
    """RGB uint8 [H, W, 3] of `latents` as the VAE decoder takes them (the denoiser's, unscaled
    by the model family's decode_latents); with `tiling`, tile by tile (`decoder` then takes
    any size)."""
    if tiling is None:
        return image_io.to_pixels(decoder(latents))
    return image_io.to_pixels(tiled_decode(decoder, latents, tiling, on_tile))


def choose_tiling(asked: bool | None, tiling: Tiling | None, latent_hw: tuple[int, int],
                  whole_fits: Callable[[], bool]) -> Tiling | None:
    """The tiling to decode `latent_hw` with, or None (whole): `asked` True tiles (where diffusers
    would decode more than one tile), False never, None when `whole_fits()` is false (`tiling`:
    vae_tiling.tiling_for's, None where the VAE is not tiled)."""
    if asked is False or tiling is None or not tiling.decodes_tiled(latent_hw):
        return None
    if asked or not whole_fits():
        return tiling
    return None
