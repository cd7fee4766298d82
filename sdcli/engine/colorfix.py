"""tile_colorfix and tile_colorfix+sharp: A1111's ControlNet extension's colour fix, which
works on the UNet's output, not on the ControlNet's input.

After every UNet call (every step, whatever the unit's start and end, as the extension's hook
does it), for each such unit in order:

    x0     = sqrt(1 / a) * x_t - sqrt(1 / a - 1) * eps        (a: alphas_cumprod[round(t)])
    x0     = x0 - blur(x0, k) + blur(c, k)                     (c: the control image's latents)
    +sharp: the unconditional rows' x0 = s * blur(x0, k) + (1 - s) * x0, s = sharpness / 100
    eps'   = (sqrt(1 / a) * x_t - x0) / sqrt(1 / a - 1)
    eps    = w * eps' + (1 - w) * eps                          (w: the unit's weight, clipped to 0..1)

blur(x, k): the mean over the (2k + 1)² window around each latent pixel, the edges repeated
(torch's replicate pad and avg_pool2d); k = int(Variation).  So the picture's low frequencies
come from the control image (its colours), the details from the model.  As in the extension
the UNet's output is taken as noise (epsilon); the control image's latents are the VAE
encoder's mean, scaled (the extension draws one sample of the encoder's distribution, whose
spread is of the order of 1e-4 for SD's VAE).  The scheduler's alphas_cumprod stand for the
model's (the same betas).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

COLORFIX_MODULES = ("tile_colorfix", "tile_colorfix+sharp")


def box_blur(x: np.ndarray, k: int) -> np.ndarray:
    """The mean of each (2k + 1)² window of [N, C, H, W] `x`, its edges repeated (float64 sums)."""
    if k <= 0:
        return x.copy()
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (k, k), (k, k)), mode="edge")
    sums = padded.cumsum(axis=2).cumsum(axis=3)
    sums = np.pad(sums, ((0, 0), (0, 0), (1, 0), (1, 0)))
    n = 2 * k + 1
    h, w = x.shape[2:]
    window = sums[:, :, n:n + h, n:n + w] - sums[:, :, :h, n:n + w] - sums[:, :, n:n + h, :w] + sums[:, :, :h, :w]
    return (window / (n * n)).astype(x.dtype)


@dataclass(frozen=True)
class ColorFix:
    """One unit's colour fix: `latents` the control image's [1, C, h, w], `k` the blur's reach,
    `sharpness` (+sharp's slider, else None), `weight` the unit's."""

    latents: np.ndarray
    k: int
    weight: float
    sharpness: float | None = None

    @cached_property
    def low(self) -> np.ndarray:
        """The control image's latents' low frequencies (the same at every call)."""
        return box_blur(self.latents.astype(np.float64), self.k)

    def __call__(self, eps: np.ndarray, x_t: np.ndarray, timestep, alphas_cumprod: np.ndarray) -> np.ndarray:
        """The UNet's output `eps` [rows, C, h, w] for its input latents `x_t` at `timestep`,
        fixed; with several rows the first half is the unconditional one (guidance)."""
        def fix(x0: np.ndarray) -> np.ndarray:
            x0 = x0 - box_blur(x0, self.k) + self.low
            if self.sharpness is not None and len(x0) > 1:
                s = self.sharpness * 0.01
                uncond = len(x0) // 2
                x0[:uncond] = s * box_blur(x0[:uncond], self.k) + (1.0 - s) * x0[:uncond]
            return x0

        return through_x0(eps, x_t, timestep, alphas_cumprod, self.weight, fix)


def through_x0(eps: np.ndarray, x_t: np.ndarray, timestep, alphas_cumprod: np.ndarray, weight: float,
               edit) -> np.ndarray:
    """The extension's edits of the UNet's output through the predicted clean latents: x0 from
    noise `eps` and `x_t` at `timestep` (a = alphas_cumprod[round(t)]), `edit(x0)`, the noise
    that gives the edited x0, blended with `eps` by `weight` (clipped to 0..1); float64 inside."""
    a = np.float64(alphas_cumprod[int(np.clip(np.round(float(timestep)), 0, len(alphas_cumprod) - 1))])
    recip, recipm1 = np.sqrt(1.0 / a), np.sqrt(1.0 / a - 1.0)
    x_t = x_t.astype(np.float64)
    x0 = edit(recip * x_t - recipm1 * eps.astype(np.float64))
    fixed = (recip * x_t - x0) / recipm1
    w = min(max(float(weight), 0.0), 1.0)
    return (fixed * w + eps.astype(np.float64) * (1.0 - w)).astype(eps.dtype)


def colorfix_for(unit, latents: np.ndarray) -> ColorFix | None:
    """The colour fix of ControlUnit `unit` (None unless its preprocessor is a colorfix one),
    with its sliders (Variation, Sharpness) given or their defaults."""
    if unit.preprocessor not in COLORFIX_MODULES:
        return None
    from sdcli.imaging.control import PREPROCESSORS

    spec = PREPROCESSORS[unit.preprocessor]
    sliders = {**spec.defaults, **unit.sliders}
    sharpness = sliders.get("threshold_b") if unit.preprocessor.endswith("+sharp") else None
    return ColorFix(latents, int(sliders["threshold_a"]), float(unit.weight), sharpness)
