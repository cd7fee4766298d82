"""Stage 3, denoise: the scheduler loop in numpy around the compiled denoiser (a UNet or a
transformer), yielding after every step (the per-step callback's progress, interrupt and
previews hang on that).  How the denoiser is fed and what its output means is the model
family's (families/base.py: denoiser_inputs, denoiser_output)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from sdcli.engine.families.base import Conditioning, ModelFamily
from sdcli.engine.guidance import rescale_guidance  # noqa: F401  (tests import it from here)


@dataclass
class StepInfo:
    index: int  # 0-based
    total: int
    timestep: float
    seconds: float  # this step's wall time
    latents: np.ndarray | None = None  # the latents after this step (read-only: for previews)


def denoise(unet: Callable, latents: np.ndarray, timesteps: list, scheduler, conditioning: Conditioning,
            guidance_scale: float, rng, inpaint=None, clock: dict | None = None, guidance_rescale: float = 0.0,
            family: ModelFamily | None = None) -> Iterator[tuple[np.ndarray, StepInfo]]:
    """Yield the latents after every step (`inpaint`: the Inpainting of inpaint.prepare).
    `unet` is the denoiser, called as (sample, timestep, context, **extra); `family` says how
    it is fed and how its output becomes what the scheduler steps with (default: a UNet's, as
    ModelFamily does).  `clock["unet"]` accumulates the seconds spent inside the denoiser.
    `guidance_rescale`: phi of rescale_guidance, applied after classifier-free guidance
    (where there is none, it does nothing)."""
    family = family or ModelFamily(None)
    context = conditioning.hidden_states
    extra = conditioning.unet_inputs
    for i, t in enumerate(timesteps):
        started = time.perf_counter()
        x = scheduler.scale_model_input(latents, t).astype(np.float32)
        if inpaint is not None:
            x = inpaint.unet_input(x)
        sample, timestep = family.denoiser_inputs(x, t, conditioning)
        t_unet = time.perf_counter()
        out = unet(sample, timestep, context, **extra)
        if clock is not None:
            clock["unet"] = clock.get("unet", 0.0) + time.perf_counter() - t_unet
        out = family.denoiser_output(out, conditioning, guidance_scale, guidance_rescale, timestep)
        latents = scheduler.step(out, t, latents, rng).astype(np.float32)
        if inpaint is not None:
            latents = inpaint.after_step(latents, i, timesteps, scheduler)
        yield latents, StepInfo(i, len(timesteps), float(t), time.perf_counter() - started, latents)
