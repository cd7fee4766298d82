"""Stage 2, prepare the latents: pure noise for text-to-image; the init image's latents
noised to the first timestep for image-to-image (inpainting: see inpaint.py)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from sdcli.imaging import image_io
from sdcli.util.errors import UsageError

# pixels [1, 3, H, W] in [-1, 1] -> (mean, log-variance or None), from the VAE encoder
Encode = Callable[[np.ndarray], tuple[np.ndarray, "np.ndarray | None"]]


def resolve_size(folder, request) -> tuple[int, int]:
    """(width, height): the request's, else the init image's (cut to multiples of 8; of twice the
    VAE's factor for a transformer, which takes 2x2 patches of latents, as its pipelines cut it),
    else the first reference image's as FLUX.2-klein sizes it (references.py; only the missing side
    where one is given, as its pipeline), else the model's."""
    references = getattr(request, "reference_images", ())
    if references and (request.width is None or request.height is None):
        from sdcli.engine.references import reference_size

        first = references[0]
        if isinstance(first, np.ndarray):
            w, h = reference_size(first, 2 * folder.vae_scale_factor)
            return request.width or w, request.height or h
    if request.init_image is not None and request.width is None and request.height is None:
        step = 2 * folder.vae_scale_factor if folder.denoiser == "transformer" else 8
        h, w = request.init_image.shape[:2]
        w, h = w - w % step, h - h % step
        if w == 0 or h == 0:
            raise UsageError(f"the init image must be at least {step}x{step} pixels")
        return w, h
    size = folder.default_size
    return request.width or size, request.height or size


def latent_shape(folder, width: int, height: int) -> tuple[int, int, int, int]:
    f = folder.vae_scale_factor
    return (1, folder.latent_channels, height // f, width // f)


def strength_timesteps(request, scheduler) -> list:
    """The timesteps left to run at `request.strength` (diffusers' img2img get_timesteps);
    sets the scheduler's begin index."""
    init_steps = min(int(request.steps * request.strength), request.steps)
    t_start = max(request.steps - init_steps, 0)
    timesteps = list(scheduler.timesteps[t_start * scheduler.order :])
    if init_steps < 1 or not timesteps:
        raise UsageError(
            f"--strength {request.strength} with --steps {request.steps} leaves no step to run; raise either"
        )
    scheduler.set_begin_index(t_start * scheduler.order)
    return timesteps


def latent_sample(mean: np.ndarray, logvar: np.ndarray | None, rng, scaling_factor: float) -> np.ndarray:
    """The VAE encoder's latents, scaled: a sample of its distribution (one draw from
    `rng`, as diffusers' latent_dist.sample(generator)), or its output as it is (no
    draw: the tiny VAE's encoder, as diffusers' retrieve_latents with AutoencoderTiny)."""
    if logvar is None:
        sample = mean
    else:
        std = np.exp(0.5 * np.clip(logvar, -30.0, 20.0))
        sample = mean + std * rng.randn(mean.shape)
    return (np.float32(scaling_factor) * sample).astype(np.float32)


def prepare_latents(folder, family, request, scheduler, rng, width: int, height: int,
                    encode: Encode) -> tuple[np.ndarray, list]:
    """Return (latents, timesteps to run)."""
    shape = latent_shape(folder, width, height)
    family.set_timesteps(request, scheduler)
    init_latents = getattr(request, "init_latents", None)
    if request.init_image is None and init_latents is None:
        latents = rng.randn(shape) * np.float32(scheduler.init_noise_sigma)
        return latents.astype(np.float32), list(scheduler.timesteps)

    timesteps = family.img2img_timesteps(request, scheduler)
    if init_latents is None:
        image = image_io.resize(request.init_image, width, height)
        mean, logvar = encode(image_io.to_model_input(image))
        init_latents = family.image_latents(mean, logvar, rng, folder.vae(request.vae))
    elif tuple(init_latents.shape) != shape:
        raise UsageError(f"the init latents are {tuple(init_latents.shape)}, not {shape} for {width}x{height}")
    noise = rng.randn(shape)
    latents = scheduler.add_noise(init_latents, noise, timesteps[0])
    return latents.astype(np.float32), timesteps
