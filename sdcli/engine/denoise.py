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


def denoise(unet: Callable, latents: np.ndarray, timesteps: list, scheduler, conditioning: Conditioning,
            guidance_scale: float, rng, inpaint=None, clock: dict | None = None
            ) -> Iterator[tuple[np.ndarray, StepInfo]]:
    """Yield the latents after every step (`inpaint`: the Inpainting of inpaint.prepare).
    `clock["unet"]` accumulates the seconds spent inside the UNet."""
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
        latents = scheduler.step(out, t, latents, rng).astype(np.float32)
        if inpaint is not None:
            latents = inpaint.after_step(latents, i, timesteps, scheduler)
        yield latents, StepInfo(i, len(timesteps), float(t), time.perf_counter() - started, latents)
