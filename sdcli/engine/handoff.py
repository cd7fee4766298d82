"""Base-to-refiner handoff (SDXL's ensemble of experts): the base model runs the noisy first
part of the schedule and hands its latents to the refiner at a fraction of it, as diffusers'
`denoising_end` / `denoising_start` cut it (A1111's "Refiner switch at").

The cut is in training timesteps: with 1000 of them, a switch at 0.8 sends the timesteps
>= 200 to the base and the rest to the refiner, whatever the number of steps.
"""
from __future__ import annotations

from sdcli.util.errors import UsageError


def _cutoff(scheduler, switch: float) -> int:
    steps = int(scheduler.config.get("num_train_timesteps", 1000))
    return int(round(steps - switch * steps))


def until_switch(timesteps: list, scheduler, switch: float) -> list:
    """The base's part of `timesteps` (diffusers' denoising_end)."""
    cutoff = _cutoff(scheduler, switch)
    kept = [t for t in timesteps if t >= cutoff]
    if not kept:
        raise UsageError(f"--refiner-switch {switch:g} leaves the base model no step; raise it or --steps")
    return timesteps[:len(kept)]


def from_switch(scheduler, switch: float) -> list:
    """The refiner's part of the schedule set by set_timesteps (diffusers' img2img
    get_timesteps with denoising_start); sets the scheduler's begin index."""
    timesteps = list(scheduler.timesteps)
    cutoff = _cutoff(scheduler, switch)
    count = sum(1 for t in timesteps if t < cutoff)
    if scheduler.order == 2 and count % 2 == 0:
        count += 1  # a second-order scheduler must start on a first-order step (diffusers' rule)
    if count == 0:
        raise UsageError(f"--refiner-switch {switch:g} leaves the refiner no step; lower it or raise --steps")
    start = len(timesteps) - count
    scheduler.set_begin_index(start)
    return timesteps[start:]


def refiner_request(request):
    """The request as the refiner runs it: without the base's LoRAs and embeddings (they are
    the base model's; the prompt is already without its tags) and without its ControlNet units
    (they steer the base's steps only, as diffusers' ControlNet pipeline with denoising_end)."""
    if request.mask is not None:
        raise UsageError("--refiner does not take --mask (inpainting): run the inpainting without it")
    return request.replace(networks=None, controlnets=())


def check_refiner(base, refiner) -> None:
    """UsageError unless the folder `refiner` can take over `base`'s latents."""
    if not refiner.is_sdxl:
        raise UsageError(f"--refiner {refiner.root}: not an SDXL model folder")
    if (refiner.latent_channels, refiner.vae_scale_factor) != (base.latent_channels, base.vae_scale_factor):
        raise UsageError(f"--refiner {refiner.root}: its latents differ from the model's (another family?)")
