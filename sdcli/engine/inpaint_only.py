"""inpaint_only without A1111 inpainting: how the ControlNet extension keeps the unmasked area
when a unit brings its own mask to a txt2img (or mask-less img2img) request.

With A1111's own inpainting (`--mask`) the extension turns inpaint_only into inpaint
(inpaint_global_harmonious) and the inpainting keeps the area; without it, for each inpaint_only
unit, it

(a) after every UNet call (every step, whatever the unit's start and end), replaces the
    predicted clean latents outside the mask with the control image's latents, blended by the
    unit's weight (the hook's "post-processing for restore"):

        x0  = sqrt(1 / a) * x_t - sqrt(1 / a - 1) * eps      (a: alphas_cumprod[round(t)])
        x0  = x0 * M + c * (1 - M)                            (c: the control image's latents)
        eps = w * (sqrt(1 / a) * x_t - x0) / sqrt(1 / a - 1) + (1 - w) * eps

    M is the unit's mask (the picture's size, 1: repainted) max-pooled over 10 x 10 windows at
    a stride of 8 with one pixel of padding: the latent pixels the mask touches, and a little
    around them;

(b) lays the decoded picture over the control image through the mask dilated by a 7 x 7 square
    and box-blurred by 7 x 7 (the setting control_net_inpaint_blur_sigma, 7):
    picture = m * picture + (1 - m) * control image, in [0, 1].

As for the colour fix (engine/colorfix.py) the UNet's output is taken as noise and the control
image's latents are the VAE encoder's mean, scaled.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from sdcli.engine.colorfix import through_x0

BLUR_SIGMA = 7  # the extension's control_net_inpaint_blur_sigma default


def latent_mask(mask: np.ndarray, factor: int = 8) -> np.ndarray:
    """[1, 1, H/8, W/8]: `mask` [H, W] max-pooled over 10 x 10 windows, stride 8, one pixel of
    padding (which never wins: torch's max_pool2d pads with -inf) — for the VAE's factor 8;
    another factor keeps the window two pixels wider than the stride."""
    k = factor + 2
    padded = np.pad(np.asarray(mask, np.float32), 1, constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k))[::factor, ::factor]
    return windows.max(axis=(2, 3))[None, None]


@dataclass(frozen=True)
class Restore:
    """One inpaint_only unit's keeping of the unmasked latents: `latents` the control image's
    [1, C, h, w], `mask` latent_mask's [1, 1, h, w], `weight` the unit's."""

    latents: np.ndarray
    mask: np.ndarray
    weight: float

    @cached_property
    def _blend(self) -> tuple[np.ndarray, np.ndarray]:
        """(M, c * (1 - M)) in float64, the same at every call."""
        m = self.mask.astype(np.float64)
        return m, self.latents.astype(np.float64) * (1.0 - m)

    def __call__(self, eps: np.ndarray, x_t: np.ndarray, timestep, alphas_cumprod: np.ndarray) -> np.ndarray:
        m, kept = self._blend
        return through_x0(eps, x_t, timestep, alphas_cumprod, self.weight, lambda x0: x0 * m + kept)


def overlay_mask(mask: np.ndarray, sigma: int = BLUR_SIGMA) -> np.ndarray:
    """The final overlay's mask [H, W]: `mask` dilated by a sigma x sigma square, then its
    sigma x sigma box mean (OpenCV's dilate and blur, as the extension calls them)."""
    import cv2

    m = cv2.dilate(np.asarray(mask, np.float32), np.ones((sigma, sigma), np.uint8))
    return cv2.blur(m, (sigma, sigma))


@dataclass(frozen=True)
class Overlay:
    """inpaint_only's final step: the picture laid over `image` (the fitted control image, RGB
    uint8 [H, W, 3]) through `mask` (overlay_mask's)."""

    image: np.ndarray
    mask: np.ndarray

    def __call__(self, picture: np.ndarray) -> np.ndarray:
        if picture.shape != self.image.shape:  # (as the extension: a picture of another size is left as it is)
            return picture
        m = self.mask[:, :, None].astype(np.float32)
        x = picture.astype(np.float32) / np.float32(255.0)
        r = self.image.astype(np.float32) / np.float32(255.0)
        y = np.clip(m * x + (np.float32(1.0) - m) * r, 0.0, 1.0)
        return np.clip(np.round(y * np.float32(255.0)), 0, 255).astype(np.uint8)


def keeps_unmasked(unit, request_mask) -> bool:
    """Whether `unit` is an inpaint_only unit with its own mask in a request without A1111's
    inpainting (whose inpainting keeps the area itself: the extension then runs it as inpaint)."""
    return unit.preprocessor == "inpaint_only" and unit.mask is not None and request_mask is None
