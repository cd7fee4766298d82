"""Inpainting: repaint the white part of a mask, keep the black part.

Two kinds of model, told apart by the UNet's input channels (as diffusers'
StableDiffusionInpaintPipeline does), not by the pipeline's name:

- 9 channels (a dedicated inpainting UNet): every UNet input is
  [latents, mask at latent size, latents of the masked image].
- 4 channels (an ordinary model): after every step the latents of the kept region are
  replaced by the init image's latents noised to the next timestep (clean after the last).

The mask is binarized at 0.5 for the model, as diffusers' mask processor does; with
``--mask-blur`` > 0 the decoded image is also laid over the original through the blurred
(soft) mask, as A1111 does, so that the kept region keeps its exact pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sdcli.imaging import image_io

F32 = np.float32


def prepare_mask(mask: np.ndarray, width: int, height: int, blur: int) -> tuple[np.ndarray, np.ndarray]:
    """(soft, binary) masks [H, W] float32 at the image size: `soft` is the resized and
    blurred mask (for the final overlay), `binary` is `soft >= 0.5` (for the model)."""
    soft = image_io.blur_mask(image_io.resize_mask(mask, width, height), blur)
    binary = (soft >= F32(0.5)).astype(F32)
    return soft, binary


@dataclass
class Inpainting:
    """What the denoising loop and the decoder need for one inpainting request."""

    nine_channel: bool
    mask_latent: np.ndarray  # [1, 1, h, w]: 1 repaint, 0 keep
    masked_image_latents: np.ndarray | None  # [1, C, h, w], 9-channel UNets only
    image_latents: np.ndarray | None  # [1, C, h, w], 4-channel UNets only
    noise: np.ndarray  # the initial noise, which also re-noises the kept region
    original: np.ndarray  # RGB uint8 [H, W, 3], the init image at the output size
    soft_mask: np.ndarray  # [H, W] in [0, 1]
    overlay: bool  # lay the result over the original through soft_mask

    def unet_input(self, x: np.ndarray) -> np.ndarray:
        """The UNet's input for the scaled latents `x` (batch 1)."""
        if not self.nine_channel:
            return x
        return np.concatenate([x, self.mask_latent, self.masked_image_latents], axis=1).astype(F32)

    def after_step(self, latents: np.ndarray, i: int, timesteps, scheduler) -> np.ndarray:
        """For a 4-channel UNet, put back the kept region after step `i`."""
        if self.nine_channel:
            return latents
        known = self.image_latents
        if i < len(timesteps) - 1:
            known = scheduler.add_noise(self.image_latents, self.noise, timesteps[i + 1])
        m = self.mask_latent
        return ((F32(1.0) - m) * known + m * latents).astype(F32)

    def finish(self, image: np.ndarray) -> np.ndarray:
        """The decoded image, laid over the original through the soft mask when asked."""
        if not self.overlay:
            return image
        m = self.soft_mask[:, :, None]
        blended = image.astype(F32) * m + self.original.astype(F32) * (F32(1.0) - m)
        return np.clip(np.round(blended), 0, 255).astype(np.uint8)
