"""ControlNet control images: fitted to the picture's size as A1111's ControlNet resize modes
do, and the built-in preprocessors (numpy/OpenCV, no model: imaging/preprocessors.py, re-exported
here: PREPROCESSORS, preprocess, detect).

Resize modes (A1111's names): just-resize stretches the image to the size; crop-and-resize
scales it to cover the size and crops the middle; resize-and-fill scales it to fit inside
and fills the rest with the median colour of its border pixels.
"""
from __future__ import annotations

import numpy as np

from sdcli.imaging.image_io import resize
from sdcli.imaging.preprocessors import (PREPROCESSORS, Preprocessor, Slider, UnknownPreprocessor,  # noqa: F401
                                         detect, inpaint_map, preprocess, resolve)

RESIZE_MODES = {"just-resize": "Just Resize", "crop-and-resize": "Crop and Resize", "resize-and-fill": "Resize and Fill"}
CANNY_LOW, CANNY_HIGH = 100, 200  # A1111's ControlNet canny slider defaults (PREPROCESSORS["canny"])


def fit(image: np.ndarray, width: int, height: int, mode: str) -> np.ndarray:
    """RGB uint8 [H, W, 3] `image` at width x height by resize mode `mode` (RESIZE_MODES)."""
    h, w = image.shape[:2]
    if (w, h) == (width, height) or mode == "just-resize":
        return resize(image, width, height)
    if mode == "crop-and-resize":
        k = max(width / w, height / h)
        sw, sh = max(width, round(w * k)), max(height, round(h * k))
        scaled = resize(image, sw, sh)
        x, y = (sw - width) // 2, (sh - height) // 2
        return np.ascontiguousarray(scaled[y:y + height, x:x + width])
    if mode == "resize-and-fill":
        k = min(width / w, height / h)
        sw, sh = min(width, max(1, round(w * k))), min(height, max(1, round(h * k)))
        scaled = resize(image, sw, sh)
        border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]], axis=0)
        out = np.empty((height, width, 3), np.uint8)
        out[:] = np.median(border, axis=0).astype(np.uint8)
        x, y = (width - sw) // 2, (height - sh) // 2
        out[y:y + sh, x:x + sw] = scaled
        return out
    raise ValueError(f"unknown resize mode {mode!r}")


def fit_mask(mask: np.ndarray, width: int, height: int, mode: str) -> np.ndarray:
    """An inpaint unit's uint8 mask [H, W] fitted as `fit` fits its control image; with
    resize-and-fill the added border is masked (255: repainted), as the extension fills it."""
    h, w = mask.shape[:2]
    rgb = np.repeat(np.asarray(mask, np.uint8)[:, :, None], 3, axis=2)
    if mode != "resize-and-fill" or (w, h) == (width, height):
        return fit(rgb, width, height, mode)[:, :, 0]
    k = min(width / w, height / h)
    sw, sh = min(width, max(1, round(w * k))), min(height, max(1, round(h * k)))
    out = np.full((height, width), 255, np.uint8)
    x, y = (width - sw) // 2, (height - sh) // 2
    out[y:y + sh, x:x + sw] = resize(rgb, sw, sh)[:, :, 0]
    return out


def control_input(image: np.ndarray) -> np.ndarray:
    """RGB uint8 [H, W, 3] to the ControlNet's controlnet_cond: float32 [1, 3, H, W] in [0, 1]
    (diffusers' control image processor: no normalisation to [-1, 1])."""
    return (image.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
