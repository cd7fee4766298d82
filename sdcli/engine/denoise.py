"""Stage 3, denoise: the scheduler loop in numpy around the compiled UNet, yielding after
every step (the per-step callback's progress, interrupt and previews hang on that)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from sdcli.engine.families.base import Conditioning


@dataclass
class StepInfo:
    index: int  # 0-based
    total: int
    timestep: float
    seconds: float  # this step's wall time
    latents: np.ndarray | None = None  # the latents after this step (read-only: for previews)


def rescale_guidance(noise_cfg: np.ndarray, noise_text: np.ndarray, phi: float) -> np.ndarray:
    """diffusers' rescale_noise_cfg (guidance_rescale; "Common Diffusion Noise Schedules and Sample
    Steps are Flawed", section 3.4): the guided prediction scaled to the text prediction's
    standard deviation (over all but the batch axis, with Bessel's correction as torch's std),
    mixed in by `phi`, which keeps high guidance from over-exposing."""
    axes = tuple(range(1, noise_cfg.ndim))
    std_text = noise_text.astype(np.float64).std(axis=axes, keepdims=True, ddof=1).astype(np.float32)
    std_cfg = noise_cfg.astype(np.float64).std(axis=axes, keepdims=True, ddof=1).astype(np.float32)
    rescaled = noise_cfg * (std_text / std_cfg)
    return (np.float32(phi) * rescaled + np.float32(1 - phi) * noise_cfg).astype(np.float32)


def denoise(unet: Callable, latents: np.ndarray, timesteps: list, scheduler, conditioning: Conditioning,
            guidance_scale: float, rng, inpaint=None, clock: dict | None = None, guidance_rescale: float = 0.0
            ) -> Iterator[tuple[np.ndarray, StepInfo]]:
    """Yield the latents after every step (`inpaint`: the Inpainting of inpaint.prepare).
    `clock["unet"]` accumulates the seconds spent inside the UNet.  `guidance_rescale`: phi of
    rescale_guidance, applied after classifier-free guidance (where there is none, it does nothing)."""
    guidance = conditioning.guidance_batch
    context = conditioning.hidden_states
    extra = conditioning.unet_inputs
    for i, t in enumerate(timesteps):
        started = time.perf_counter()
        x = scheduler.scale_model_input(latents, t).astype(np.float32)
        if inpaint is not None:
            x = inpaint.unet_input(x)
        if guidance:
            x = np.concatenate([x, x], axis=0)
        t_unet = time.perf_counter()
        out = unet(x, t, context, **extra)
        if clock is not None:
            clock["unet"] = clock.get("unet", 0.0) + time.perf_counter() - t_unet
        if guidance:
            uncond, cond = out[0:1], out[1:2]
            out = uncond + np.float32(guidance_scale) * (cond - uncond)
            if guidance_rescale > 0.0:
                out = rescale_guidance(out, cond, guidance_rescale)
        latents = scheduler.step(out, t, latents, rng).astype(np.float32)
        if inpaint is not None:
            latents = inpaint.after_step(latents, i, timesteps, scheduler)
        yield latents, StepInfo(i, len(timesteps), float(t), time.perf_counter() - started, latents)
