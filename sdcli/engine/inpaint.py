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

from sdcli.engine.latents import Encode, latent_sample, latent_shape, strength_timesteps
from sdcli.imaging import image_io
from sdcli.util.errors import UsageError

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


def prepare(folder, family, request, scheduler, rng, width: int, height: int, encode: Encode):
    """Inpainting's stage 2: return (latents, timesteps to run, Inpainting).

    The random draws come in diffusers' StableDiffusionInpaintPipeline order: the init
    image's latent sample (unless a 9-channel UNet starts from pure noise at strength 1),
    the noise, then the masked image's latent sample (drawn for 4-channel UNets too,
    which do not use it)."""
    in_channels = int(folder.unet_config.get("in_channels", 4))
    nine = in_channels == 9
    if not nine and in_channels != folder.latent_channels:
        raise UsageError(
            f"--mask: this model's UNet takes {folder.unet_config.get('in_channels')} input channels; "
            "inpainting needs 4 (an ordinary model) or 9 (an inpainting model)"
        )
    f = folder.vae_scale_factor
    shape = latent_shape(folder, width, height)
    family.set_timesteps(request, scheduler)
    timesteps = strength_timesteps(request, scheduler)
    strength_max = request.strength == 1.0
    image = image_io.resize(request.init_image, width, height)
    pixels = image_io.to_model_input(image)
    soft, binary = prepare_mask(request.mask, width, height, request.mask_blur)
    scaling_factor = folder.vae(request.vae).scaling_factor

    sampled = []  # whether the encoder gives a distribution to sample from

    def encode_sample(x):
        mean, logvar = encode(x)
        sampled.append(logvar is not None)
        return latent_sample(mean, logvar, rng, scaling_factor)

    image_latents = None
    if not nine or not strength_max:
        image_latents = encode_sample(pixels)
    noise = rng.randn(shape)
    if strength_max:
        latents = noise * np.float32(scheduler.init_noise_sigma)
    else:
        latents = scheduler.add_noise(image_latents, noise, timesteps[0])
    masked_latents = None
    if nine:
        masked_latents = encode_sample((pixels * (binary < 0.5)[None, None]).astype(np.float32))
    elif sampled[0]:
        rng.randn(image_latents.shape)  # diffusers draws the unused masked-image sample too
    state = Inpainting(
        nine_channel=nine,
        mask_latent=np.ascontiguousarray(binary[::f, ::f])[None, None].astype(np.float32),
        masked_image_latents=masked_latents,
        image_latents=None if nine else image_latents,
        noise=noise,
        original=image,
        soft_mask=soft,
        overlay=request.mask_blur > 0,
    )
    return latents.astype(np.float32), timesteps, state
