"""Stage 4, decode: latents to RGB pixels through the VAE decoder (full or tiny)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from sdcli.imaging import image_io


def decode(decoder: Callable[[np.ndarray], np.ndarray], latents: np.ndarray) -> np.ndarray:
    """RGB uint8 [H, W, 3] of `latents` as the VAE decoder takes them (the denoiser's, unscaled
    by the model family's decode_latents)."""
    return image_io.to_pixels(decoder(latents))
